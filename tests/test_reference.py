"""Reference models: deterministic, loadable like hub models, and LLM-like under compression."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from svdzoo import linalg
from svdzoo.data import evaluation_windows
from svdzoo.errors import ConfigError
from svdzoo.evaluation.perplexity import perplexity
from svdzoo.models import adapter_for, load_model, load_tokenizer
from svdzoo.reference import TrainConfig, train_reference

MICRO = dict(
    hidden=32, layers=1, heads=2, kv_heads=1, ffn=64, seqlen=32, batch=4, steps=3, warmup=1
)


def test_training_is_deterministic(tmp_path):
    threads = 1 if torch.get_num_threads() > 1 else 2  # not the process's own count
    for d in ("a", "b"):
        train_reference(TrainConfig(family="llama", seed=7, threads=threads, **MICRO), tmp_path / d)
    wa = load_file(tmp_path / "a" / "model.safetensors")
    wb = load_file(tmp_path / "b" / "model.safetensors")
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    log = json.loads((tmp_path / "a" / "train_log.json").read_text())
    assert len(log["curve"]) == 3 and log["summary"]["n_params"] > 0
    # what else the bits depend on: the thread count and the library versions
    assert log["summary"]["threads"] == threads
    assert log["summary"]["software"]["torch"] == torch.__version__


@pytest.mark.parametrize("family", ["llama", "opt"])
def test_saved_like_a_hub_model(tmp_path, family):
    train_reference(TrainConfig(family=family, **MICRO), tmp_path / "m")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    tok = AutoTokenizer.from_pretrained(tmp_path / "m")
    ids = tok("def f(x):", return_tensors="pt").input_ids
    assert model(ids).logits.shape[-1] == len(tok)
    assert adapter_for(model).name == family
    if family == "llama":  # grouped-query attention: fewer k/v heads than q heads
        assert model.config.num_key_value_heads < model.config.num_attention_heads


def test_bad_config_is_rejected():
    with pytest.raises(ConfigError, match="unknown reference family"):
        TrainConfig(family="gpt2").validate()
    with pytest.raises(ConfigError, match="divisible"):
        TrainConfig(hidden=30, heads=4).validate()


def _zeroed(model):
    m = copy.deepcopy(model)
    for *_, lin in adapter_for(m).iter_targets(m):
        torch.nn.init.zeros_(lin.weight)
    return m


def _svd(model, ratio):
    m = copy.deepcopy(model)
    for *_, lin in adapter_for(m).iter_targets(m):
        f = linalg.svd_truncate(
            lin.weight.detach().double(), linalg.rank_for_ratio(*lin.weight.shape, ratio)
        )
        lin.weight.data = (f.A @ f.B).float()
    return m


@pytest.mark.parametrize("fixture", ["tiny_llama_dir", "tiny_opt_dir"])
def test_trained_model_behaves_like_an_llm_under_compression(request, fixture):
    path = request.getfixturevalue(fixture)
    model, tok = load_model(path), load_tokenizer(path)
    windows = evaluation_windows(tok, "pydoc", 128)
    dense = perplexity(model, windows, batch_size=32)
    assert perplexity(_zeroed(model), windows, batch_size=32) > 10 * dense
    assert perplexity(_svd(model, 0.6), windows, batch_size=32) > 1.03 * dense


def test_validation_split_shorter_than_seqlen_is_refused_before_training(tmp_path):
    """train_reference checked only the train split's length: a corpus whose validation
    split is shorter than seqlen trained to the end, then divided by zero windows
    (ZeroDivisionError in _mean_loss) and wrote nothing."""
    docs = [("lorem ipsum dolor sit amet " * 8).strip() for _ in range(21)]
    docs[10] = "short"  # document 10 is the whole validation split
    corpus = tmp_path / "tiny.txt"
    corpus.write_text("\n\n".join(docs))
    cfg = TrainConfig(family="llama", corpus=str(corpus), **MICRO)
    with pytest.raises(ConfigError, match="validation"):
        train_reference(cfg, tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_a_diverging_training_is_one_error_and_writes_nothing(tmp_path):
    """`--lr 60` ended in `OverflowError: math range error` (exp of the validation loss), or
    in an error naming the hidden temporary directory when the loss was NaN."""
    from svdzoo.errors import ModelError

    cfg = TrainConfig(family="opt", corpus="pydoc", **{**MICRO, "lr": 60.0, "warmup": 0})
    with pytest.raises(ModelError, match=r"diverged: .*lower --lr \(now 60\)"):
        train_reference(cfg, tmp_path / "m")
    assert not (tmp_path / "m").exists()
    assert not [p for p in tmp_path.iterdir()]  # no temporary left either


def test_training_threads_do_not_outlive_the_training(tmp_path):
    """`threads` set torch's thread count for the rest of the process (an API caller, or
    the test session, then ran everything after on one thread)."""
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        cfg = TrainConfig(family="llama", corpus="pydoc", **{**MICRO, "threads": 1})
        train_reference(cfg, tmp_path / "m")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
