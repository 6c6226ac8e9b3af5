from __future__ import annotations

import copy

import pytest
import torch
import transformers as tf
from helpers import random_tiny

from svdzoo import models
from svdzoo.errors import CacheError, ModelError
from svdzoo.models import (
    adapter_for,
    fingerprint,
    fingerprint_known,
    load_model,
    load_tokenizer,
    replace_module,
)

SMALL = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4)


def _tiny(kind: str):
    if kind == "llama":
        cfg = tf.LlamaConfig(**SMALL, num_key_value_heads=2, intermediate_size=48)
    elif kind == "mistral":
        cfg = tf.MistralConfig(**SMALL, num_key_value_heads=2, intermediate_size=48)
    elif kind == "qwen2":
        cfg = tf.Qwen2Config(**SMALL, num_key_value_heads=2, intermediate_size=48)
    elif kind == "opt":
        cfg = tf.OPTConfig(
            vocab_size=64,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            ffn_dim=48,
            word_embed_proj_dim=32,
        )
    elif kind == "gpt_neox":
        cfg = tf.GPTNeoXConfig(**SMALL, intermediate_size=48)
    else:
        raise AssertionError(kind)
    torch.manual_seed(0)
    return tf.AutoModelForCausalLM.from_config(cfg)


EXPECTED = {
    "llama": {
        "self_attn.q_proj": (32, 32),
        "self_attn.k_proj": (16, 32),
        "self_attn.v_proj": (16, 32),
        "self_attn.o_proj": (32, 32),
        "mlp.gate_proj": (48, 32),
        "mlp.up_proj": (48, 32),
        "mlp.down_proj": (32, 48),
    },
    "opt": {
        "self_attn.q_proj": (32, 32),
        "self_attn.k_proj": (32, 32),
        "self_attn.v_proj": (32, 32),
        "self_attn.out_proj": (32, 32),
        "fc1": (48, 32),
        "fc2": (32, 48),
    },
    "gpt_neox": {
        "attention.query_key_value": (96, 32),
        "attention.dense": (32, 32),
        "mlp.dense_h_to_4h": (48, 32),
        "mlp.dense_4h_to_h": (32, 48),
    },
}
EXPECTED["mistral"] = EXPECTED["qwen2"] = EXPECTED["llama"]


@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_adapter_finds_every_decoder_linear(kind):
    model = _tiny(kind)
    ad = adapter_for(model)
    found = list(ad.iter_targets(model))
    assert len(found) == 2 * len(EXPECTED[kind])
    for name, layer, target, lin in found:
        assert name == f"{ad.layers_path}.{layer}.{target}"
        assert (lin.out_features, lin.in_features) == EXPECTED[kind][target]
    # every nn.Linear inside the decoder blocks is a target, nothing else is
    in_blocks = {
        n
        for n, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and n.startswith(ad.layers_path + ".")
    }
    assert in_blocks == {n for n, *_ in found}


def test_shared_input_groups():
    ad = adapter_for(_tiny("llama"))
    assert ad.groups["attn_in"] == ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
    assert ad.group_of("mlp.up_proj") == ad.group_of("mlp.gate_proj") == "mlp_in"
    assert ad.matrix_type("self_attn.k_proj") == "k_proj"


def test_unknown_family_is_a_clear_error():
    cfg = tf.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=32)
    with pytest.raises(ModelError, match="unsupported model family 'gpt2'"):
        adapter_for(tf.GPT2LMHeadModel(cfg))


def test_fingerprint_is_stable_and_weight_sensitive():
    a, b = _tiny("llama"), _tiny("llama")
    assert fingerprint(a) == fingerprint(b)
    with torch.no_grad():
        b.model.layers[0].mlp.up_proj.weight[0, 0] += 1e-3
    assert fingerprint(a) != fingerprint(b)


def test_fingerprint_does_not_depend_on_the_hashing_threads():
    model, threads = _tiny("llama"), torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = fingerprint(model)
        torch.set_num_threads(3)
        assert fingerprint(model) == one
    finally:
        torch.set_num_threads(threads)
    # a tied head is the embedding's storage, hashed once but named under both names
    cfg = tf.LlamaConfig(**SMALL, num_key_value_heads=2, intermediate_size=48,
                         tie_word_embeddings=True)  # fmt: skip
    tied = tf.LlamaForCausalLM(cfg)
    assert tied.lm_head.weight.data_ptr() == tied.model.embed_tokens.weight.data_ptr()
    before = fingerprint(tied)
    with torch.no_grad():
        tied.lm_head.weight[0, 0] += 1e-3
    assert fingerprint(tied) != before


def test_a_tensors_digest_is_that_of_its_values_whatever_its_layout():
    w = torch.randn(4, 5)
    one = models._tensor_digest(w[2:3, 1].clone())
    for view in (w[2:3, 1], w.t()[1:2, 2:3], w[2, 1]):  # strides 5, (1, 5) and a 0-dim
        assert models._tensor_digest(view) == one
    assert models._tensor_digest(w.t()) == models._tensor_digest(w.t().contiguous())


def test_a_known_fingerprint_is_hashed_once_and_only_inside_its_block(monkeypatch):
    hashed = []
    real = models._hash_model
    monkeypatch.setattr(models, "_hash_model", lambda m: hashed.append(m) or real(m))
    a = _tiny("llama")
    before = fingerprint(a)
    with fingerprint_known(a) as fp:
        assert fp == before
        with fingerprint_known(a) as inner:  # a nested block keeps the outer one's value
            assert inner == fp
        assert fingerprint(a) == fp
        with torch.no_grad():  # what the caller vouches will not happen inside the block
            a.model.layers[0].mlp.up_proj.weight[0, 0] += 1e-3
        assert fingerprint(a) == fp
    assert len(hashed) == 2  # the call before the block, and the block's own
    assert fingerprint(a) != fp  # outside the block the weights are hashed again
    # a copy's fingerprint is vouched for, not hashed again
    twin = copy.deepcopy(a)
    hashed.clear()
    fp_a = fingerprint(a)
    with fingerprint_known(twin, fp_a) as fp_twin:
        assert fingerprint(twin) == fp_twin == fp_a
    assert hashed == [a]
    assert fingerprint(twin) == fp_a  # and it is the copy's: hashed now, outside the block
    with pytest.raises(RuntimeError), fingerprint_known(a):
        raise RuntimeError
    hashed.clear()
    fingerprint(a)
    assert hashed == [a]  # a block left by an error is forgotten too


def test_replace_module():
    model = _tiny("opt")
    new = torch.nn.Identity()
    replace_module(model, "model.decoder.layers.1.fc1", new)
    assert model.model.decoder.layers[1].fc1 is new


def test_missing_model_offline_says_what_to_do(monkeypatch, tmp_path):
    """transformers' own reason first (offline, gated, no such repository: each needs
    something else), then the commands of the installed hub client (`hf`; the old
    `huggingface-cli` is gone from huggingface_hub 1.0 on)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError) as err:
        load_model("someone/definitely-not-cached-model")
    text = str(err.value)
    assert text.startswith("We couldn't connect") or "cached" in text.split("(model")[0]
    assert "hf download someone/definitely-not-cached-model" in text
    assert "hf auth login" in text and "huggingface-cli" not in text


@pytest.mark.parametrize("name", ["/no/such/model", "./no-such-model", "results/no/such"])
def test_a_missing_local_path_is_named_as_a_path_not_a_hub_download(monkeypatch, name):
    """A name that cannot be a hub id (absolute, relative with './', or with two slashes)
    gets 'no such directory', not the advice to download it from the hub."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for load in (load_model, load_tokenizer):
        with pytest.raises(ModelError, match="no such directory") as err:
            load(name)
        assert "hf download" not in str(err.value)


def test_gemma3_compresses_with_every_kind_of_method(tok):
    """Gemma 3 (sliding + full layers): a whitened, a sequential and a table-driven method
    run end to end and keep the tiny model's perplexity finite."""
    from svdzoo.calibration import calibrate, calibrate_fisher
    from svdzoo.compression import Statistics, compress
    from svdzoo.errors import ConfigError
    from svdzoo.models import check_window_seqlen
    from svdzoo.sensitivity import compute_sensitivity

    base = random_tiny("gemma3", layers=3)
    assert adapter_for(base).name == "gemma3"
    assert adapter_for(base).layer_kinds(base) == ["sliding_attention", "full_attention"] * 1 + [
        "sliding_attention"
    ]
    gram = calibrate(base, tok, corpus="pydoc", nsamples=4, seqlen=16, seed=0, device="cpu",
                     progress=False)  # fmt: skip
    # every window starts with Gemma's BOS, and the cache says so (data.window_prefix)
    assert gram.manifest["window_prefix"] == [2] and gram.manifest["tokens"] == 4 * 17
    assert next(iter(gram.manifest["counts"].values())) == 4 * 17
    duo = compute_sensitivity(base, tok, gram, "duo", nsamples=2, batch_size=2, ratios=[0.3, 0.6])
    # statistics made on windows without it (before this was known) are refused, not used
    stale = copy.copy(gram)
    stale.manifest = {k: v for k, v in gram.manifest.items() if k != "window_prefix"}
    with pytest.raises(CacheError, match=r"windows starting with no prefix.*start with \[2\]"):
        compress(copy.deepcopy(base), "svd-llm", 0.4, stats=Statistics(gram=stale))
    with pytest.raises(CacheError, match="windows starting with no prefix"):
        compute_sensitivity(base, tok, stale, "duo", nsamples=2, batch_size=2, ratios=[0.3])
    fisher = calibrate_fisher(base, tok, corpus="pydoc", nsamples=2, seqlen=16, seed=0,
                              progress=False)  # fmt: skip
    assert fisher.manifest["window_prefix"] == [2] and fisher.manifest["tokens"] == 2 * 17
    stale_fisher = copy.copy(fisher)
    stale_fisher.manifest = {k: v for k, v in fisher.manifest.items() if k != "window_prefix"}
    with pytest.raises(CacheError, match="fisher statistics were computed on windows starting"):
        compress(copy.deepcopy(base), "fwsvd", 0.4, stats=Statistics(fisher=stale_fisher))
    # the BOS takes a position: a window may hold one token less than the position range
    check_window_seqlen(base.config, 127)
    with pytest.raises(ConfigError, match="plus the BOS token.*use at most 127"):
        check_window_seqlen(base.config, 128)
    for method in ("svd-llm", "adasvd", "duo-svd-independent"):
        model = copy.deepcopy(base)
        stats = Statistics(gram=gram, sensitivity={"duo": duo})
        manifest = compress(model, method, 0.4, stats=stats, tokenizer=tok)
        assert 0.3 < manifest["achieved_ratio"] < 0.5, method
        with torch.no_grad():
            logits = model(input_ids=torch.arange(16).unsqueeze(0)).logits
        assert torch.isfinite(logits).all(), method


def test_multimodal_gemma3_checkpoint_is_supported(tok):
    """Gemma 3 4B and up ship as model_type 'gemma3' (Gemma3ForConditionalGeneration): the
    text decoder sits under model.language_model and its layer_types and
    max_position_embeddings in config.text_config. The adapter accepted the model type but
    pointed at model.layers (calibration died with 'has no submodule'), and read
    layer_types from the top-level config, where there are none (sliding layers would be
    replayed with the full-attention mask)."""
    from svdzoo.calibration import calibrate
    from svdzoo.errors import ConfigError
    from svdzoo.models import check_seqlen

    kinds = ["sliding_attention", "full_attention", "sliding_attention"]
    text = dict(
        hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        intermediate_size=128, num_hidden_layers=3, vocab_size=300, sliding_window=4,
        layer_types=kinds, max_position_embeddings=128,
    )  # fmt: skip
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                  num_attention_heads=2, image_size=28, patch_size=14)  # fmt: skip
    cfg = tf.Gemma3Config(
        text_config=text, vision_config=vision, mm_tokens_per_image=4,
        image_token_index=299, boi_token_index=297, eoi_token_index=298,
    )  # fmt: skip
    torch.manual_seed(0)
    model = tf.AutoModelForCausalLM.from_config(cfg).eval()
    assert cfg.model_type == "gemma3"
    ad = adapter_for(model)
    layers = ad.layers(model)
    assert layers is model.model.language_model.layers
    assert ad.layer_kinds(model) == kinds
    # every linear of the text decoder is a target (the vision tower is not compressed)
    in_blocks = {
        n for n, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and n.startswith(ad.layers_path + ".")
    }  # fmt: skip
    assert in_blocks == {n for n, *_ in ad.iter_targets(model)} and len(in_blocks) == 21
    with pytest.raises(ConfigError, match="max_position_embeddings"):
        check_seqlen(model, 256)
    gram = calibrate(model, tok, corpus="pydoc", nsamples=2, seqlen=16, seed=0, device="cpu",
                     progress=False)  # fmt: skip
    assert gram.num_layers == 3


@pytest.mark.parametrize(
    ("text", "compressed"),
    [
        ('{"method": "svd-llm"}', True),
        ('\ufeff{"method": "svd-llm"}', True),  # re-saved by an editor with a byte-order mark
        ('{"model": "x"}', False),  # another tool's manifest
        ('["method"]', False),
        ("{not json", False),
    ],
)
def test_a_compressed_directory_is_told_by_its_manifest(tmp_path, text, compressed):
    """Without its weights file (a damaged copy) a directory is compressed when its
    manifest names a method; read through `io.read_json_object`, as every manifest is."""
    (tmp_path / "manifest.json").write_text(text, encoding="utf-8")
    assert models.is_compressed_dir(tmp_path) is compressed
    assert models.is_compressed_dir(tmp_path / "missing") is False
