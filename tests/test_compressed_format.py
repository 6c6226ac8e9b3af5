"""A compressed directory behaves as the model that was saved: its generation config, the
device a plain-transformers load asks for, and no save_pretrained that would write a
checkpoint reloading with random weights (from a bug hunt; each failed on the old code)."""

from __future__ import annotations

import pytest
import torch
from helpers import random_tiny
from torch import nn

from svdzoo.compression import compress, load_compressed, save_compressed

pytestmark = pytest.mark.usefixtures("one_thread")


def test_compressed_directory_keeps_the_generation_config(tmp_path):
    """A dense checkpoint's generation_config.json (eos ids, sampling, penalties) survives
    compression: the compressed model generates what the in-memory one does, through
    svdzoo's loader and through plain transformers."""
    from transformers import AutoModelForCausalLM

    model = random_tiny("llama")
    manifest = compress(model, "svd", 0.4)
    x = torch.tensor([[10, 20, 30, 40]])
    free = model.generate(x, max_new_tokens=8, do_sample=False)
    new = free[0, x.shape[1] :].tolist()
    stop = next(t for i, t in enumerate(new) if i >= 2 and t not in new[:i])
    # as a hub model's generation_config.json says (e.g. Llama 3's extra eos id)
    model.generation_config.eos_token_id = stop
    want = model.generate(x, max_new_tokens=8, do_sample=False)
    assert want.shape[1] < free.shape[1]
    save_compressed(model, manifest, tmp_path / "c")
    back = load_compressed(tmp_path / "c")
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "c", trust_remote_code=True)
    for loaded in (back, plain):
        assert loaded.generation_config.eos_token_id == stop
        assert torch.equal(loaded.generate(x, max_new_tokens=8, do_sample=False), want)


def test_plain_transformers_loader_honours_device_map(tmp_path):
    """`from_pretrained(dir, trust_remote_code=True, device_map="cuda")` returns the model
    on the GPU, or raises where there is none: never a CPU model in silence."""
    from transformers import AutoModelForCausalLM

    model = random_tiny("llama")
    save_compressed(model, compress(model, "svd", 0.4), tmp_path / "c")
    if torch.cuda.is_available():
        plain = AutoModelForCausalLM.from_pretrained(
            tmp_path / "c", trust_remote_code=True, device_map="cuda"
        )
        assert {p.device.type for p in plain.parameters()} == {"cuda"}
        assert {b.device.type for b in plain.buffers()} == {"cuda"}
    else:
        with pytest.raises((RuntimeError, AssertionError, ValueError)):
            AutoModelForCausalLM.from_pretrained(
                tmp_path / "c", trust_remote_code=True, device_map="cuda"
            )
    # an explicit CPU map works and places everything there
    plain = AutoModelForCausalLM.from_pretrained(
        tmp_path / "c", trust_remote_code=True, device_map={"": "cpu"}
    )
    assert {p.device.type for p in plain.parameters()} == {"cpu"}


def test_svdzoo_loaded_compressed_model_refuses_save_pretrained(tmp_path):
    """The base architecture's save_pretrained writes A/B factors that reload as a dense
    model with random weights: refused for svdzoo's loader as for the remote-code one."""
    model = random_tiny("llama")
    save_compressed(model, compress(model, "svd", 0.4), tmp_path / "c")
    back = load_compressed(tmp_path / "c")
    with pytest.raises(NotImplementedError, match="save_compressed"):
        back.save_pretrained(tmp_path / "out")
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_plain_transformers_loader_initialises_no_factor_at_random(tmp_path, monkeypatch):
    """The remote-code loader builds the model with its parameters on the meta device (no
    memory, no random init) and fills them from the weights file. The factored modules
    were built outside that: each factor was allocated for real, in float32 whatever the
    checkpoint's dtype, and randomly initialised, then thrown away (for a 7B model at 40 %,
    about 15 GB on top of the weights being read)."""
    from transformers import AutoModelForCausalLM

    model = random_tiny("llama")
    manifest = compress(model, "svd", 0.4)
    save_compressed(model, manifest, tmp_path / "c")
    initialised = []
    reset = nn.Linear.reset_parameters

    def spy(self: nn.Linear) -> None:
        if not self.weight.is_meta:
            initialised.append(tuple(self.weight.shape))
        reset(self)

    monkeypatch.setattr(nn.Linear, "reset_parameters", spy)
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "c", trust_remote_code=True)
    monkeypatch.undo()
    assert initialised == []
    x = torch.tensor([[10, 20, 30, 40, 50]])
    with torch.no_grad():
        assert torch.equal(plain(input_ids=x).logits, model(input_ids=x).logits)


def test_a_compressed_directory_carries_a_model_card(tmp_path):
    """README.md says how to load it (plain transformers without trust_remote_code finds
    no weights it knows) and what made it; its metadata is what the Hub reads."""
    from huggingface_hub import ModelCard

    from svdzoo.model_card import _hub_id

    model = random_tiny("llama")
    manifest = compress(model, "svd", 0.4)
    save_compressed(model, manifest, tmp_path / "c")
    card = ModelCard.load(tmp_path / "c" / "README.md")
    assert card.data.library_name == "transformers" and "svd" in card.data.tags
    assert card.data.base_model is None  # built in memory: nothing to name
    text = " ".join(card.text.split())
    assert "trust_remote_code=True" in text and "`svd`" in text
    assert f"{manifest['achieved_ratio']:.1%}" in text and "(target 40 %)" in text
    assert "a rerun replaces an edited card" in text  # it is written anew with the model
    # the Hub's base_model is a valid hub id, never a local path
    assert _hub_id("HuggingFaceTB/SmolLM2-135M") == "HuggingFaceTB/SmolLM2-135M"
    assert _hub_id("gpt2") == "gpt2"
    assert _hub_id(str(tmp_path)) is None and _hub_id("data/models/smollm2-135m") is None
    for not_an_id in ("./a", "~/m", "user/my model", "C:/m", "", None):
        assert _hub_id(not_an_id) is None, not_an_id


def test_a_compressed_model_loads_by_hub_id_from_the_hub_cache(tmp_path):
    """What the model card promises: `from_pretrained("owner/repo", trust_remote_code=True)`
    of a compressed model on the Hub (here, as the Hub cache holds a downloaded one; tests
    run offline). The loader refused every id that was not a local directory."""
    import shutil

    from transformers import AutoModelForCausalLM

    model = random_tiny("llama")
    manifest = compress(model, "svd", 0.4)
    save_compressed(model, manifest, tmp_path / "c")
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--someone--tiny-svd"
    shutil.copytree(tmp_path / "c", repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    plain = AutoModelForCausalLM.from_pretrained(
        "someone/tiny-svd", trust_remote_code=True, cache_dir=tmp_path / "hub"
    )
    x = torch.tensor([[10, 20, 30, 40, 50]])
    with torch.no_grad():
        assert torch.equal(plain(input_ids=x).logits, model(input_ids=x).logits)
    from svdzoo.hf.modeling_svdzoo import SvdzooForCausalLM

    with pytest.raises(OSError, match="someone/absent: not a local directory.*from the Hub"):
        SvdzooForCausalLM.from_pretrained("someone/absent", cache_dir=tmp_path / "hub")


def test_saving_a_model_that_is_not_the_manifests_is_refused(tmp_path):
    """The dense original saved with a compressed manifest was written, sealed and hashed,
    and failed only when loaded, perhaps in another job."""
    import copy

    from svdzoo.errors import ConfigError

    model = random_tiny("llama")
    dense = copy.deepcopy(model)
    manifest = compress(model, "svd", 0.4)
    with pytest.raises(ConfigError, match="not the one the manifest describes .*dense here"):
        save_compressed(dense, manifest, tmp_path / "c")
    assert not (tmp_path / "c").exists()
    save_compressed(model, manifest, tmp_path / "c")
    other = compress(copy.deepcopy(dense), "svd", 0.6)
    with pytest.raises(ConfigError, match="modules differ"):
        save_compressed(model, other, tmp_path / "d")


def test_loading_allocates_no_factor_before_the_files(tmp_path, monkeypatch):
    """The factored modules are built on meta, as the rest of the model is: built in float32
    on the CPU, a 7B model's factors were gigabytes allocated only to be replaced."""
    from svdzoo import lowrank

    model = random_tiny("llama")
    manifest = compress(model, "svd", 0.4)
    save_compressed(model, manifest, tmp_path / "c")
    built = []
    build = lowrank.build_from_spec

    def spy(*args, **kwargs):
        module = build(*args, **kwargs)
        built.append(all(p.is_meta for p in module.parameters()))
        return module

    monkeypatch.setattr(lowrank, "build_from_spec", spy)
    back = load_compressed(tmp_path / "c")
    assert built and all(built)
    assert not any(p.is_meta for p in back.parameters())
    x = torch.tensor([[10, 20, 30, 40, 50]])
    with torch.no_grad():
        assert torch.equal(back(input_ids=x).logits, model(input_ids=x).logits)
