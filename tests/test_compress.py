"""The compression engine end to end: registry, driver, save/load, budgets, errors."""

from __future__ import annotations

import copy
import json
from types import SimpleNamespace

import pytest
import torch

import svdzoo
from svdzoo.calibration import calibrate
from svdzoo.calibration.cache import save_stats
from svdzoo.compression import Statistics, compress, load_compressed, save_compressed
from svdzoo.data import evaluation_windows
from svdzoo.errors import CacheError, ConfigError, ModelError
from svdzoo.evaluation.perplexity import perplexity
from svdzoo.methods import REGISTRY, get_method, requirements
from svdzoo.models import load_model, load_tokenizer

CALIB = dict(corpus="pydoc", nsamples=16, seqlen=64, seed=3)


@pytest.fixture(scope="module")
def llama(tiny_llama_dir):
    model = load_model(tiny_llama_dir)
    tok = load_tokenizer(tiny_llama_dir)
    stats = calibrate(model, tok, **CALIB)
    windows = evaluation_windows(tok, "pydoc", 64)
    return model, tok, stats, windows


def _compressed(llama, method, ratio, **kw):
    model, tok, stats, _ = llama
    m = copy.deepcopy(model)
    manifest = compress(m, method, ratio, stats=Statistics(gram=stats, **kw), tokenizer=tok)
    return m, manifest


def test_registry_lists_the_baselines_with_their_needs():
    for name in ("svd", "fwsvd", "asvd", "asvd-uniform", "svd-llm"):
        assert name in REGISTRY
    assert requirements("svd") == set()
    assert requirements("svd-llm") == {"gram"}
    assert requirements("fwsvd") == {"fisher"}
    assert "sensitivity-asvd" in requirements("asvd")
    with pytest.raises(ConfigError, match="unknown method 'nope'"):
        get_method("nope")


@pytest.mark.parametrize("ratio", [0.2, 0.4, 0.6, 0.8])
def test_uniform_budget_is_met(llama, ratio):
    _, manifest = _compressed(llama, "svd-llm", ratio)
    assert abs(manifest["achieved_ratio"] - ratio) <= 0.005
    mods = manifest["modules"]
    assert sum(r["params"] for r in mods.values()) == manifest["params_compressed"]
    assert all(r["rank"] > 0 for r in mods.values())
    assert (
        manifest["model_params_dense"] - manifest["model_params_compressed"]
        == manifest["params_dense"] - manifest["params_compressed"]
    )


def test_bad_inputs_fail_before_compute(llama):
    model, tok, stats, _ = llama
    for bad in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ConfigError, match="ratio must be in"):
            compress(copy.deepcopy(model), "svd", bad)
    with pytest.raises(ConfigError, match="needs statistics"):
        compress(copy.deepcopy(model), "svd-llm", 0.4)
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.model.layers[0].mlp.up_proj.weight.mul_(1.01)
    with pytest.raises(CacheError, match="another model"):
        compress(other, "svd-llm", 0.4, stats=Statistics(gram=stats))


def test_an_unknown_cpu_lapack_is_refused_before_loading(monkeypatch, tmp_path):
    """`SVDZOO_CPU_LAPACK` (svdzoo.lapack) is read at the first eigenvalue solve, deep in a
    compression: a typo is refused before the model or the statistics load."""
    monkeypatch.setenv("SVDZOO_CPU_LAPACK", "mkl")
    (tmp_path / "gram").mkdir()
    with pytest.raises(ConfigError, match="SVDZOO_CPU_LAPACK='mkl'"):
        svdzoo.compress_to_dir(
            str(tmp_path / "no-model"), "duo-svd", 0.4, tmp_path / "out", stats=tmp_path / "gram"
        )
    assert not (tmp_path / "out").exists()


def test_save_load_roundtrip_gives_identical_logits(llama, tmp_path):
    model, tok, _, windows = llama
    m, manifest = _compressed(llama, "svd-llm", 0.4)
    save_compressed(m, manifest, tmp_path / "c", tok)
    back = load_compressed(tmp_path / "c")
    x = windows[:2]
    with torch.no_grad():
        assert torch.equal(m(input_ids=x).logits, back(input_ids=x).logits)
    # the generic loader recognises compressed directories, and generate() works
    again = svdzoo.load_model(tmp_path / "c")
    out = again.generate(x[:1, :8], max_new_tokens=5, do_sample=False)
    assert out.shape == (1, 13)
    saved = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert saved["method"] == "svd-llm" and saved["ratio"] == 0.4


def test_readme_python_api(llama, tiny_llama_dir, tmp_path):
    """The README's example, through the package's top-level names only."""
    import svdzoo.compression  # noqa: F401  (a submodule must not shadow the API function)

    _, _, stats, windows = llama  # statistics of the model saved in tiny_llama_dir
    save_stats(stats, tmp_path / "gram")

    m = svdzoo.load_model(tiny_llama_dir)
    t = svdzoo.load_tokenizer(tiny_llama_dir)
    s = svdzoo.load_statistics(gram=tmp_path / "gram")
    manifest = svdzoo.compress(m, "svd-llm", 0.4, stats=s)
    svdzoo.save_compressed(m, manifest, tmp_path / "out", t)
    back = svdzoo.load_compressed(tmp_path / "out")
    x = windows[:2]
    with torch.no_grad():
        assert torch.equal(m(input_ids=x).logits, back(input_ids=x).logits)
    assert manifest["method"] == "svd-llm" and abs(manifest["achieved_ratio"] - 0.4) <= 0.005
    assert svdzoo.load_tokenizer(tmp_path / "out")("def f").input_ids == t("def f").input_ids
    # what it was made from, as the CLI's models record it (the API's lacked both)
    saved = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert saved["base_model"] == str(tiny_llama_dir)
    assert saved["threads"] == torch.get_num_threads()  # LAPACK's bits follow it
    gram = saved["statistics"]["gram"]
    assert gram["path"] is None and gram["corpus"] == "pydoc" and gram["nsamples"] == 16
    assert gram["manifest_sha256"] == s.gram.manifest["manifest_sha256"]


def test_the_api_names_a_wrong_input_instead_of_a_traceback(llama, tiny_llama_dir):
    """Found by a new-user audit: each was an AttributeError, a TypeError or a message
    about something else."""
    model, _, stats, _ = llama
    with pytest.raises(ConfigError, match=r"must be a number .* got the str '0.40'.*float"):
        compress(copy.deepcopy(model), "svd", "0.40")  # a ratio as params.yaml spells it
    with pytest.raises(ConfigError, match="must be a number"):
        compress(copy.deepcopy(model), "svd", True)
    with pytest.raises(ConfigError, match="compresses a loaded model .*svdzoo.load_model"):
        compress(str(tiny_llama_dir), "svd", 0.4)
    twice = copy.deepcopy(model)
    compress(twice, "svd", 0.4)
    with pytest.raises(ModelError, match="already compressed .*load the dense model again"):
        compress(twice, "svd", 0.2)
    import numpy as np

    from svdzoo.calibrate_compress import _integer

    # numpy scalars pass as the plain numbers they are (np.float32 failed in the allocator
    # after the statistics were computed, np.int64 when the cache's manifest was written)
    m32 = copy.deepcopy(model)
    assert compress(m32, "svd", np.float32(0.4))["ratio"] == pytest.approx(0.4)
    assert type(_integer("nsamples", np.int64(4))) is int
    with pytest.raises(ConfigError, match="seed must be an integer, got the bool"):
        _integer("seed", True)
    with pytest.raises(ConfigError, match="nsamples must be an integer, got the str '4'"):
        svdzoo.calibrate_and_compress(
            tiny_llama_dir, "svd-llm", 0.4, "never", corpus="pydoc", nsamples="4", seqlen=64,
            seed=3,
        )  # fmt: skip


def test_compression_is_deterministic(llama):
    model, _, _, windows = llama
    a, _ = _compressed(llama, "svd-llm", 0.4)
    b, _ = _compressed(llama, "svd-llm", 0.4)
    x = windows[:2]
    with torch.no_grad():
        assert torch.equal(a(input_ids=x).logits, b(input_ids=x).logits)


@pytest.mark.parametrize("method", ["svd-llm", "svd-llm-v2"])
def test_shared_whiteners_change_nothing(llama, method, caplog):
    """One whitener per (layer, input group) gives the factors a fresh per-matrix whitener
    gives, and q/k/v and gate/up really share it."""
    import logging

    from svdzoo import linalg
    from svdzoo.methods.base import WhitenerCache

    model, _, stats, _ = llama
    with caplog.at_level(logging.INFO, logger="svdzoo.compression"):
        compressed, manifest = _compressed(llama, method, 0.4)
    reuse = [r.getMessage() for r in caplog.records if "whiteners:" in r.getMessage()]
    layers = len(model.model.layers)
    # V2's allocator reads every spectrum first; the factorisation then finds each group's
    # whitener (and each matrix's SVD) kept: 7 more reuses per layer, nothing recomputed
    reused = 10 * layers if method == "svd-llm-v2" else 3 * layers
    assert reuse == [
        f"whiteners: {4 * layers} computed, {reused} reused across matrices of one input group"
    ]
    whitening = "eigen" if method == "svd-llm-v2" else "cholesky"
    make = linalg.eigen_whitener if whitening == "eigen" else linalg.cholesky_whitener
    name = "model.layers.1.self_attn.k_proj"
    rank = manifest["modules"][name]["rank"]
    W = model.get_submodule(name).weight.detach().double()
    fresh = linalg.truncate(W, make(stats.gram(1, "attn_in")), rank)
    got = compressed.get_submodule(name)
    assert torch.equal(got.A.weight, fresh.A.float()) and torch.equal(got.B.weight, fresh.B.float())
    cache = WhitenerCache(size=2)
    made = []
    for key in ("a", "b", "a", "c", "b"):
        cache.get(key, lambda k=key: made.append(k) or k)
    assert made == ["a", "b", "c", "b"] and (cache.hits, cache.misses) == (1, 4)
    # kept entries (first come, within keep_bytes) survive a sweep longer than the LRU
    t = torch.zeros(4, dtype=torch.float64)  # 32 bytes each
    cache, made = WhitenerCache(size=1, keep_bytes=64), []
    for key in ("a", "b", "c", "d") * 2:
        cache.get(key, lambda k=key: made.append(k) or t.clone())
    assert made == ["a", "b", "c", "d", "c", "d"] and cache.hits == 2


def test_layer_loss_ordering_on_real_calibration_data(llama):
    """On real activations, whitening minimises the layer loss: svd-llm < asvd, svd."""
    from svdzoo import linalg

    model, _, stats, _ = llama
    lin = model.model.layers[1].mlp.up_proj
    W = lin.weight.detach().double()
    H = stats.gram(1, "mlp_in")
    k = linalg.rank_for_ratio(*W.shape, 0.6)
    losses = {}
    for name in ("svd", "asvd-uniform", "svd-llm"):
        from svdzoo.methods.base import MatrixContext

        ctx = MatrixContext(
            name="x",
            layer=1,
            type="up_proj",
            group="mlp_in",
            W=W,
            H=H,
            absmean=stats.absmean(1, "mlp_in"),
        )
        f = get_method(name).factoriser(ctx, k)
        losses[name] = linalg.layer_loss(W, f.A, f.B, H)
    assert losses["svd-llm"] < losses["asvd-uniform"] < losses["svd"]


@pytest.mark.parametrize("ratio", [0.4, 0.6])
def test_svd_llm_beats_asvd_and_svd_end_to_end(llama, ratio):
    _, _, _, windows = llama
    ppl = {}
    for name in ("svd", "asvd-uniform", "svd-llm"):
        m, _ = _compressed(llama, name, ratio)
        ppl[name] = perplexity(m, windows, batch_size=32)
    assert ppl["svd-llm"] < ppl["asvd-uniform"]
    assert ppl["svd-llm"] < ppl["svd"]


@pytest.mark.parametrize("method", ["ressvd", "adasvd"])
def test_compression_ignores_dropout_and_restores_the_mode(method, tok, windows):
    """A model handed over in training mode (OPT, dropout 0.1) compresses as in eval mode,
    the same twice (ResSVD's search of K replays calibration data, AdaSVD its sequential
    pass), and comes back training (adasvd used to leave it in eval mode, ressvd's K to
    vary between identical runs)."""
    from helpers import random_tiny

    model = random_tiny("opt", layers=3)
    stats = Statistics(gram=calibrate(model, tok, corpus="pydoc", nsamples=4, seqlen=32, seed=0))
    options = {"seq_nsamples": 2} if method == "adasvd" else {}
    ref = compress(copy.deepcopy(model), method, 0.3, stats=stats, tokenizer=tok, options=options)
    model.train()
    runs = []
    for _ in range(2):
        trained = copy.deepcopy(model)
        runs.append(compress(trained, method, 0.3, stats=stats, tokenizer=tok, options=options))
        assert trained.training
    for run in runs:
        assert run["allocation"] == ref["allocation"] and run["modules"] == ref["modules"]
    assert perplexity(trained.eval(), windows) > 0


def test_a_compressed_model_keeps_its_buffers_dtypes_as_the_dense_one(tiny_llama_dir, tmp_path):
    """Loaded in float16 (by svdzoo or plain transformers), a compressed model's rotary
    frequencies are the dense model's float32 values (`to(dtype)` used to round them, so
    dense and compressed rows of a float16 evaluation used different position encodings)."""
    model = load_model(tiny_llama_dir)
    manifest = compress(model, "svd", 0.4)
    save_compressed(model, manifest, tmp_path / "c")
    dense = load_model(tiny_llama_dir, dtype="float16")
    comp = load_compressed(tmp_path / "c", dtype="float16")
    want = dict(dense.named_buffers())
    got = {n: b for n, b in comp.named_buffers() if n in want}
    assert got.keys() == want.keys() and any(b.dtype == torch.float32 for b in want.values())
    for name, b in want.items():  # the values too: a cast back to float32 kept the rounding
        assert got[name].dtype == b.dtype and torch.equal(got[name], b), name
    assert all(p.dtype == torch.float16 for p in comp.parameters())
    # the same through plain transformers (the directory's own loader)
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(
        tmp_path / "c", trust_remote_code=True, dtype=torch.float16
    )
    for name, b in plain.named_buffers():
        if name in want:
            assert b.dtype == want[name].dtype and torch.equal(b, want[name]), name


class _UnusedTokenizer:
    """A tokenizer `compress` may hold but must not use: it tokenizes only to replay
    calibration windows (a sequential pass, a search's probe), i.e. once compute began."""

    def __getattr__(self, name):
        raise AssertionError(f"compress started replaying calibration data (tokenizer.{name})")

    def __call__(self, *args, **kwargs):
        raise AssertionError("compress started replaying calibration data (tokenizer called)")


BAD_VALUES = [
    ("adasvd", {"tau": -1}, "tau"),
    ("adasvd", {"whitening": "bogus"}, "whitening"),
    ("adasvd-compensated", {"start": "bogus"}, "start"),
    ("adasvd-compensated", {"tau": 0.5}, "tau"),
    ("svdzoo-duo-ada", {"tau": -1}, "tau"),
    ("ressvd", {"beta": 2.0}, "beta"),
    ("ressvd-compensated", {"second": "bogus"}, "second"),
    ("ressvd-compensated-residual", {"k1_fraction": 2.0}, "k1_fraction"),
]


@pytest.mark.parametrize("method,options,match", BAD_VALUES)
def test_a_bad_option_value_is_refused_before_the_calibration_replay(method, options, match, tok):
    """A bad value of a sequential or searching method's option (tau, start, beta,
    k1_fraction, a whitening) is a ConfigError before any calibration data is replayed;
    it used to pass configuration and fail at the first factorisation, after the
    sequential pass or the search had started running the model."""
    from helpers import random_tiny

    model = random_tiny("llama")
    stats = Statistics(gram=calibrate(model, tok, corpus="pydoc", nsamples=2, seqlen=16, seed=0))
    if method == "svdzoo-duo-ada":  # a table it never reaches: the option is refused first
        stats.sensitivity["duo"] = SimpleNamespace(manifest={})
    with pytest.raises(ConfigError, match=match):
        compress(model, method, 0.4, stats=stats, tokenizer=_UnusedTokenizer(), options=options)


@pytest.mark.parametrize("method,options,match", BAD_VALUES[:2])
def test_compress_to_dir_refuses_a_bad_option_value_before_loading(
    method, options, match, tmp_path
):
    """`compress_to_dir` checks option values, not only their names, before it loads the
    statistics or the model (here neither is loadable: the value is the first error)."""
    (tmp_path / "gram").mkdir()
    with pytest.raises(ConfigError, match=match):
        svdzoo.compress_to_dir(
            str(tmp_path / "no-model"), method, 0.4, tmp_path / "out",
            stats=tmp_path / "gram", options=options,
        )  # fmt: skip
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "setting,match",
    [({"dtype": "float61"}, "unknown dtype"), ({"device": "bogus"}, "unknown device")],
)
def test_compress_to_dir_refuses_a_bad_dtype_or_device_before_loading(setting, match, tmp_path):
    """An unknown dtype or device is refused before the statistics or the model load (here
    neither is loadable: the setting is the first error). The device used to be resolved
    only once the model's weights had loaded, after the statistics."""
    (tmp_path / "gram").mkdir()
    with pytest.raises(ModelError, match=match):
        svdzoo.compress_to_dir(
            str(tmp_path / "no-model"), "svd-llm", 0.4, tmp_path / "out",
            stats=tmp_path / "gram", **setting,
        )  # fmt: skip
    assert not (tmp_path / "out").exists()


def test_compress_refuses_bare_statistics_with_a_clear_error(tok):
    """`stats=` given the Gram product itself (what `calibrate` / `load_stats` return)
    rather than a `Statistics`: a ConfigError saying what to pass, not an AttributeError
    ("'CalibrationStats' object has no attribute 'has'")."""
    from helpers import random_tiny

    model = random_tiny("llama")
    gram = calibrate(model, tok, corpus="pydoc", nsamples=2, seqlen=16, seed=0)
    with pytest.raises(ConfigError, match="Statistics.*got CalibrationStats"):
        compress(model, "svd-llm", 0.4, stats=gram)
    manifest = compress(model, "svd-llm", 0.4, stats=Statistics(gram=gram))
    assert manifest["method"] == "svd-llm"
