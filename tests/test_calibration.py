"""Gram calibration and its cache: exactness against whole-model hooks, sharing, determinism, errors."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from helpers import kill_when_ready, random_tiny  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from svdzoo.calibration import (  # noqa: E402
    calibrate,
    calibrate_to_dir,
    expected,
    load_fisher,
    load_stats,
    save_stats,
    stream_gram_stats,
)
from svdzoo.data import calibration_windows, window_prefix  # noqa: E402
from svdzoo.errors import CacheError, OutputError  # noqa: E402
from svdzoo.models import adapter_for, fingerprint  # noqa: E402

BATCH = 3  # does not divide nsamples: the last batch is smaller


def direct_stats(model, windows: torch.Tensor, batch_size: int):
    """Inputs of every group's first linear and every layer's in/out, from a whole-model forward."""
    adapter = adapter_for(model)
    xs: dict[tuple[int, str], list[torch.Tensor]] = {}
    io: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    handles = []
    for i, layer in enumerate(adapter.layers(model)):
        for g, members in adapter.groups.items():
            for t in members:

                def pre(_m, args, key=(i, g, t)):
                    xs.setdefault(key, []).append(args[0].reshape(-1, args[0].shape[-1]))

                handles.append(layer.get_submodule(t).register_forward_pre_hook(pre))

        def fwd(_m, args, kwargs, out, i=i):
            h = args[0] if args else kwargs["hidden_states"]
            y = out[0] if isinstance(out, tuple) else out
            io.setdefault(i, []).append((h, y))

        handles.append(layer.register_forward_hook(fwd, with_kwargs=True))
    with torch.no_grad():
        for s in range(0, windows.shape[0], batch_size):
            model(input_ids=windows[s : s + batch_size], use_cache=False)
    for h in handles:
        h.remove()
    return {k: torch.cat(v) for k, v in xs.items()}, io


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize(
    "family",
    ["llama", "opt", "gemma3", "qwen2"],
    ids=["llama-gqa", "opt", "gemma3-sliding", "qwen2-sliding"],
)
def test_gram_equals_whole_model_hooks(family, tok, windows):
    """Layer-by-layer calibration sees exactly what a full forward feeds each linear; for
    Gemma 3 and Qwen2 with sliding layers that needs each layer kind's own mask (and for
    Gemma 3 rotary table; sliding window 4 < 32). Qwen2's sliding layers were given layer
    0's full-attention mask."""
    model = random_tiny(family, layers=3)
    stats = calibrate(
        model, tok, corpus="pydoc", nsamples=4, seqlen=32, seed=0, batch_size=BATCH,
        device="cpu", progress=False,
    )  # fmt: skip
    prefix = window_prefix(model.config)  # Gemma's windows start with its BOS
    assert prefix == ((2,) if family == "gemma3" else ())
    if prefix:
        windows = calibration_windows(tok, "pydoc", nsamples=4, seqlen=32, seed=0, prefix=prefix)
    xs, io = direct_stats(model, windows, BATCH)
    adapter = adapter_for(model)
    for i in range(len(adapter.layers(model))):
        for g, members in adapter.groups.items():
            X = xs[(i, g, members[0])].double()
            H = stats.gram(i, g)
            assert H.dtype == torch.float64
            assert rel(H, X.T @ X) < 1e-10
            assert rel(stats.absmean(i, g), X.abs().mean(0)) < 1e-10
            assert stats.count(i, g) == X.shape[0] == 4 * (32 + len(prefix))
            for t in members[1:]:  # every member reads the same input, so one Gram is right
                assert torch.equal(xs[(i, g, t)], xs[(i, g, members[0])])
        pairs = io[i]
        cos = torch.cat(
            [
                torch.nn.functional.cosine_similarity(h.double(), y.double(), dim=-1).reshape(-1)
                for h, y in pairs
            ]
        )
        assert stats.cosine(i) == pytest.approx(float(cos.mean()), rel=1e-12)


HALF = [torch.float16, torch.bfloat16]


@pytest.mark.parametrize("dtype", HALF, ids=["float16", "bfloat16"])
def test_a_half_precision_gram_is_exact_products_summed_in_float32_chunks(dtype, tok):
    """A float16/bfloat16 model's Grams: every product exact, float32's rounding only within
    a 2048-token chunk, so each entry is within `2048 * 2^-24` of `|X|^T |X|` of the exact
    float64 sum of the same activations, and far closer in norm (products or sums rounded
    to half precision miss both by ~100x). 2,304 tokens: two chunks, batches crossing."""
    from svdzoo.calibration.stats import HALF_CHUNK_TOKENS
    from svdzoo.data import calibration_windows

    model = random_tiny("llama", layers=2).to(dtype)
    nsamples, seqlen = 72, 32
    assert HALF_CHUNK_TOKENS < nsamples * seqlen < 2 * HALF_CHUNK_TOKENS
    stats = calibrate(
        model, tok, corpus="pydoc", nsamples=nsamples, seqlen=seqlen, seed=0, batch_size=5,
        device="cpu", progress=False,
    )  # fmt: skip
    assert stats.manifest["gram_sums"].startswith("exact products, float32 within 2048")
    xs, _ = direct_stats(model, calibration_windows(tok, "pydoc", nsamples, seqlen, 0), 5)
    adapter = adapter_for(model)
    for i in range(2):
        for g, members in adapter.groups.items():
            X = xs[(i, g, members[0])]
            assert X.dtype == dtype
            X = X.double()
            exact, scale = X.T @ X, X.abs().T @ X.abs()
            H = stats.gram(i, g)
            assert H.dtype == torch.float64
            assert bool(((H - exact).abs() <= HALF_CHUNK_TOKENS * 2.0**-24 * scale).all())
            assert rel(H, exact) < 1e-6
            assert rel(stats.absmean(i, g), X.abs().mean(0)) < 1e-12


def test_a_half_precision_gram_does_not_depend_on_the_batch_size(tok):
    model = random_tiny("llama", layers=1).to(torch.bfloat16)
    kw = dict(corpus="pydoc", nsamples=72, seqlen=32, seed=0, device="cpu", progress=False)
    a, b = calibrate(model, tok, batch_size=5, **kw), calibrate(model, tok, batch_size=8, **kw)
    for g in adapter_for(model).groups:
        assert torch.equal(a.gram(0, g), b.gram(0, g))
        assert torch.equal(a.absmean(0, g), b.absmean(0, g))


def test_the_cross_gram_sums_half_precision_inputs_like_the_cached_gram():
    """AdaSVD's sequential pass compares its `H` with the cached Gram's: for half-precision
    inputs both sum exact products over the same chunks, so they agree bytewise; inputs
    that mix precisions are refused."""
    from svdzoo.calibration.stats import CrossGramAccumulator, GramAccumulator

    gen = torch.Generator().manual_seed(0)
    X = (torch.randn(3000, 24, generator=gen) * 3).to(torch.float16)
    gram, cross = GramAccumulator(24, X.device, half=True), CrossGramAccumulator(24, X.device)
    for s in range(0, 3000, 700):
        gram.add(X[s : s + 700])
    for s in range(0, 3000, 1100):
        cross.add(X[s : s + 1100], None)
    assert torch.equal(gram.finish().H, cross.H)
    assert torch.equal(cross.C, cross.H) and torch.equal(cross.H_actual, cross.H)
    with pytest.raises(TypeError, match="mix half and full"):
        cross.add(X[:10].float(), None)
    with pytest.raises(TypeError, match="inputs for a Gram"):
        gram.add(X[:10].float())


def test_the_exact_sums_set_their_matmul_flag_only_inside_and_put_it_back():
    """TF32 on CUDA, plain float32 on the CPU (a user's `set_float32_matmul_precision
    ("medium")` lets oneDNN round float32 inputs to bfloat16, which would not keep float16
    values exact), each through its backend's own flag and restored: a TF32 setting left
    half-changed makes torch >= 2.9 refuse to read it. Run in a child process, as the flags
    are process-wide."""
    import subprocess
    import sys

    code = """
import torch
from svdzoo.calibration.stats import _exact_matmul, exact_products
torch.set_float32_matmul_precision("medium")
cuda, cpu = torch.backends.cuda.matmul, torch.backends.mkldnn.matmul
new = hasattr(cuda, "fp32_precision")
name = "fp32_precision" if new else "allow_tf32"
before = (getattr(cuda, name), getattr(cpu, name, None))
with _exact_matmul(torch.device("cuda")):
    assert getattr(cuda, name) in ("tf32", True)
with _exact_matmul(torch.device("cpu")):
    assert not new or cpu.fp32_precision == "ieee"
assert (getattr(cuda, name), getattr(cpu, name, None)) == before
assert torch.get_float32_matmul_precision() == "medium"  # raises when two APIs disagree
# and the products are plain float32's under "medium" too (where oneDNN would split float32
# inputs into bfloat16 parts, as on this project's AVX512-BF16 CPUs at 2048 rows)
X = torch.randn(2048, 64, generator=torch.Generator().manual_seed(0)).half()
torch.set_float32_matmul_precision("highest")
plain = X.float().T @ X.float()
torch.set_float32_matmul_precision("medium")
assert torch.equal(exact_products(X, X), plain)
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_half_precision_inputs_are_summed_in_float32_over_2048_token_chunks_exactly():
    """The chunking itself, bytewise: the accumulator's `H` is the float64 sum, in order, of
    each 2048-token chunk's float32 product, whatever the batches; the cross Gram's three
    products too, for distinct streams and for `H'` alone."""
    from svdzoo.calibration.stats import (
        HALF_CHUNK_TOKENS,
        CrossGramAccumulator,
        GramAccumulator,
        exact_products,
    )

    gen = torch.Generator().manual_seed(1)
    X = (torch.randn(5000, 16, generator=gen) * 4).to(torch.bfloat16)
    Xa = (X.float() + 0.1 * torch.randn(5000, 16, generator=gen)).to(torch.bfloat16)

    def chunked(a, b):
        out = torch.zeros(16, 16, dtype=torch.float64)
        for s in range(0, a.shape[0], HALF_CHUNK_TOKENS):
            out += exact_products(a[s : s + HALF_CHUNK_TOKENS], b[s : s + HALF_CHUNK_TOKENS])
        return out

    gram, cross = GramAccumulator(16, X.device, half=True), CrossGramAccumulator(16, X.device)
    actual_only = CrossGramAccumulator(16, X.device, original=False)
    for s, e in [(0, 300), (300, 2100), (2100, 2101), (2101, 5000)]:
        gram.add(X[s:e])
        cross.add(X[s:e], Xa[s:e])
        actual_only.add(None, Xa[s:e])
    assert torch.equal(gram.finish().H, chunked(X, X))
    assert torch.equal(cross.H, chunked(X, X)) and torch.equal(cross.C, chunked(X, Xa))
    assert torch.equal(cross.H_actual, chunked(Xa, Xa))
    assert torch.equal(actual_only.H_actual, chunked(Xa, Xa)) and actual_only.H is None
    exact = X.double().T @ Xa.double()
    bound = HALF_CHUNK_TOKENS * 2.0**-24 * (X.double().abs().T @ Xa.double().abs())
    assert bool(((cross.C - exact).abs() <= bound).all())


def test_gram_products_do_not_depend_on_the_thread_count():
    """A narrow Gram over many rows is the shape MKL splits across threads by default: on an
    AVX-512 host a 64- or 192-wide Gram over 1,024 float32 rows (4,096 in float64) came out
    different on 1 and 2 threads, and with it a bfloat16 model's Gram cache. `import
    svdzoo` sets MKL's strict reproducibility mode, in which they agree."""
    import os

    from svdzoo.calibration.stats import exact_products

    if not os.environ["MKL_CBWR"].endswith("STRICT"):  # set, before svdzoo, to another mode
        pytest.skip(f"MKL_CBWR={os.environ['MKL_CBWR']} was set by the caller")
    before = torch.get_num_threads()
    gen = torch.Generator().manual_seed(0)
    try:
        for n in (64, 192):
            for rows in (1024, 2048, 4096):
                x = torch.randn(rows, n, generator=gen).to(torch.bfloat16)
                x64 = x.double()
                got = []
                for threads in (1, 2):
                    torch.set_num_threads(threads)
                    got.append((exact_products(x, x), x64.T @ x64))
                for one, two in zip(*got, strict=True):
                    assert torch.equal(one, two), (n, rows)
    finally:
        torch.set_num_threads(before)


def test_groups_share_one_tensor(tok):
    model = random_tiny("llama")
    stats = calibrate(model, tok, corpus="pydoc", nsamples=2, seqlen=16, seed=0, progress=False)
    names = stats.tensor_names()
    assert "layers.0.attn_in.gram" in names
    assert not any("q_proj" in n or "k_proj" in n or "v_proj" in n for n in names)
    assert len([n for n in names if n.endswith(".gram")]) == 2 * 4
    q = stats.stats_for_target("model.layers.1.self_attn.q_proj")
    k = stats.stats_for_target("model.layers.1.self_attn.k_proj")
    assert q.group == k.group == "attn_in" and torch.equal(q.gram, k.gram)
    assert stats.gram_for_target("model.layers.0.mlp.up_proj").shape == (64, 64)
    assert stats.gram_for_target("model.layers.0.mlp.down_proj").shape == (128, 128)
    with pytest.raises(CacheError, match="not a target"):
        stats.stats_for_target("model.layers.0.mlp.act_fn")


def test_offloaded_store_gives_identical_stats(tok, windows, tmp_path):
    """A zero memory budget puts every batch on disk; the statistics must not change."""
    model = random_tiny("llama")
    mem, disk = {}, {}
    stream_gram_stats(model, windows, mem.__setitem__, batch_size=2, device="cpu", progress=False)
    off = tmp_path / "offload"
    stream_gram_stats(
        model, windows, disk.__setitem__, batch_size=2, memory_budget=0, offload_dir=off,
        device="cpu", progress=False,
    )  # fmt: skip
    assert mem.keys() == disk.keys()
    assert all(torch.equal(mem[k], disk[k]) for k in mem)
    assert list(off.iterdir()) == []  # offload files are cleaned up


def test_same_seed_bitwise_identical_cache(tok, tmp_path):
    model = random_tiny("llama")
    kw = dict(
        corpus="pydoc",
        nsamples=4,
        seqlen=32,
        seed=0,
        batch_size=BATCH,
        device="cpu",
        progress=False,
    )
    m1 = calibrate_to_dir(model, tok, tmp_path / "a", **kw)
    m2 = calibrate_to_dir(model, tok, tmp_path / "b", **kw)
    assert (tmp_path / "a/stats.safetensors").read_bytes() == (
        tmp_path / "b/stats.safetensors"
    ).read_bytes()
    assert (tmp_path / "a/manifest.json").read_bytes() == (
        tmp_path / "b/manifest.json"
    ).read_bytes()
    assert m1 == m2
    # the in-memory API saved afterwards gives the same file
    save_stats(calibrate(model, tok, **kw), tmp_path / "c")
    assert (tmp_path / "c/stats.safetensors").read_bytes() == (
        tmp_path / "a/stats.safetensors"
    ).read_bytes()
    m3 = calibrate_to_dir(model, tok, tmp_path / "d", **{**kw, "seed": 1})
    assert m3["sha256"] != m1["sha256"]


@pytest.fixture
def cache_dir(tok, tmp_path) -> tuple[Path, torch.nn.Module]:
    model = random_tiny("llama")
    out = tmp_path / "gram"
    calibrate_to_dir(model, tok, out, corpus="pydoc", nsamples=2, seqlen=16, seed=0, progress=False)
    return out, model


def test_manifest_records_the_request(cache_dir):
    out, model = cache_dir
    m = json.loads((out / "manifest.json").read_text())
    for key in ("model_fingerprint", "corpus", "corpus_fingerprint", "nsamples", "seqlen", "seed",
                "dtype", "svdzoo_version", "groups", "counts", "sha256", "kind"):  # fmt: skip
        assert key in m, key
    assert m["model_fingerprint"] == fingerprint(model)
    assert m["kind"] == "gram" and m["dtype"] == "float32" and m["tokens"] == 32
    assert m["gram_sums"] == "float64 (chunks of 256 tokens)"
    assert m["groups"]["attn_in"] == ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"]
    stats = load_stats(out, expect=expected(model, corpus="pydoc", nsamples=2, seqlen=16, seed=0))
    assert stats.gram(0, "attn_in").shape == (64, 64)
    assert 0 < stats.cosine(1) <= 1


def test_manifest_mismatch_raises_naming_keys(cache_dir):
    out, _ = cache_dir
    with pytest.raises(CacheError, match="nsamples.*seed|seed.*nsamples") as err:
        load_stats(out, expect={"nsamples": 256, "seed": 3, "seqlen": 16})
    assert "seqlen" not in str(err.value)
    other = random_tiny("llama")
    with torch.no_grad():
        other.model.layers[0].mlp.up_proj.weight.mul_(2)
    with pytest.raises(CacheError, match="model_fingerprint"):
        load_stats(out, expect=expected(other))
    with pytest.raises(CacheError, match="'gram' cache"):
        load_fisher(out)


def test_corrupted_or_truncated_file_raises(cache_dir):
    out, _ = cache_dir
    f = out / "stats.safetensors"
    data = bytearray(f.read_bytes())
    data[-5] ^= 0xFF  # flip a byte of tensor data
    f.write_bytes(bytes(data))
    with pytest.raises(CacheError, match="sha256"):
        load_stats(out)
    f.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(CacheError, match="truncated"):
        load_stats(out)
    (out / "manifest.json").write_text("{not json")
    with pytest.raises(CacheError, match="is not valid JSON"):
        load_stats(out)
    with pytest.raises(CacheError, match="no manifest"):
        load_stats(out.parent / "nowhere")


def test_corrupted_header_raises_without_hash(cache_dir):
    out, _ = cache_dir
    f = out / "stats.safetensors"
    data = bytearray(f.read_bytes())
    data[10:20] = b"\x00" * 10  # garbage in the JSON header, same size
    f.write_bytes(bytes(data))
    with pytest.raises(CacheError, match="unreadable safetensors"):
        load_stats(out, verify=False)


def test_a_failed_pass_gives_back_a_caller_s_budget(tok, windows):
    """A budget the caller owns (to read its accounting, or to share it) is whole again after
    a pass that failed in a layer: the stores alive then gave back their bytes, so the next
    pass is not pushed to disk early by activations that no longer exist."""
    from svdzoo.calibration.store import MemoryBudget

    model = random_tiny("llama")
    budget = MemoryBudget(1 << 30)

    def boom(_m, _args):
        raise RuntimeError("layer 1 failed")

    handle = adapter_for(model).layers(model)[1].register_forward_pre_hook(boom)
    with pytest.raises(RuntimeError, match="layer 1 failed"):
        stream_gram_stats(model, windows, {}.__setitem__, batch_size=2, memory_budget=budget,
                          device="cpu", progress=False)  # fmt: skip
    handle.remove()
    assert budget.peak > 0 and budget.used == 0
    stream_gram_stats(model, windows, {}.__setitem__, batch_size=2, memory_budget=budget,
                      device="cpu", progress=False)  # fmt: skip
    assert budget.used == 0


def test_failed_calibration_leaves_no_cache(tok, tmp_path):
    model = random_tiny("llama")
    out = tmp_path / "gram"
    with pytest.raises(Exception, match="seqlen"):
        calibrate_to_dir(model, tok, out, corpus="pydoc", nsamples=2, seqlen=10**9, seed=0)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == []


def test_reference_model_calibrates_on_cpu_in_seconds(tok):
    """A reference-sized model (4 layers, hidden 128): 32 x 128 tokens in seconds (~5 s on 2 cores)."""
    torch.manual_seed(0)
    cfg = LlamaConfig(
        hidden_size=128, num_attention_heads=4, num_key_value_heads=2, intermediate_size=384,
        num_hidden_layers=4, vocab_size=258,
    )  # fmt: skip
    model = LlamaForCausalLM(cfg).eval()
    t0 = time.perf_counter()
    stats = calibrate(model, tok, corpus="pydoc", nsamples=32, seqlen=128, seed=0, progress=False)
    elapsed = time.perf_counter() - t0
    assert stats.count(3, "mlp_out") == 32 * 128
    assert elapsed < 20, f"calibration took {elapsed:.1f}s"


def test_cli_calibrate_gram_and_fisher(tok, tmp_path):
    from svdzoo.cli import main

    model = random_tiny("llama")
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    common = ["--model", str(tmp_path / "m"), "--corpus", "pydoc", "--nsamples", "3",
              "--seqlen", "16", "--seed", "0", "--device", "cpu"]  # fmt: skip
    assert main(["calibrate", *common, "--out", str(tmp_path / "g"), "--batch-size", "2"]) == 0
    assert main(["calibrate", "--kind", "fisher", *common, "--out", str(tmp_path / "f")]) == 0
    g = load_stats(tmp_path / "g", expect={"model_fingerprint": fingerprint(model), "nsamples": 3})
    assert g.manifest["model"] == str(tmp_path / "m")
    f = load_fisher(tmp_path / "f", expect={"nsamples": 3, "batch_size": 1})
    assert f.row("model.layers.0.self_attn.k_proj").shape == (32,)
    # bad input: a clear error (exit code 2) before any compute
    assert main(["calibrate", *common, "--nsamples", "0", "--out", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()


def test_a_bad_offload_dir_is_refused_before_any_compute(tok, tmp_path, capsys):
    """A file given as --offload-dir failed at the first offload, after the model had loaded
    and the capture had run, with a bare FileExistsError traceback."""
    from svdzoo.cli import main

    model = random_tiny("llama")
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    (tmp_path / "afile").write_text("not a folder\n")
    for bad in (tmp_path / "afile", tmp_path / "afile" / "sub"):
        rc = main(["calibrate", "--model", str(tmp_path / "m"), "--corpus", "pydoc",
                   "--nsamples", "2", "--seqlen", "16", "--seed", "0", "--device", "cpu",
                   "--out", str(tmp_path / "g"), "--memory-budget-mb", "0",
                   "--offload-dir", str(bad)])  # fmt: skip
        assert rc == 2
        assert f"offload directory {bad}" in capsys.readouterr().err
        assert not (tmp_path / "g").exists()
    with pytest.raises(OutputError, match="not a directory"):
        stream_gram_stats(
            model, torch.zeros(1, 4, dtype=torch.long), lambda *_: pytest.fail("computed"),
            memory_budget=0, offload_dir=tmp_path / "afile", device="cpu", progress=False,
        )  # fmt: skip


_KILLED_OFFLOADER = """
import sys, time, torch
from svdzoo.calibration.store import ActivationStore, MemoryBudget
store = ActivationStore(MemoryBudget(0, sys.argv[1]))
store.append(torch.ones(64, 64))
print("offloaded", flush=True)
time.sleep(60)
"""


def test_a_killed_job_s_offloaded_states_go_with_the_next_offload(tmp_path, caplog):
    """A calibration killed mid-run (SIGKILL, or SIGTERM from a cancelled workflow job: no
    `finally` runs) left its offloaded hidden states (GBs for a large model) in the offload
    folder for good; the next run there removes them, never a live run's."""
    from svdzoo.calibration.store import ActivationStore, MemoryBudget

    off = tmp_path / "offload"
    kill_when_ready(_KILLED_OFFLOADER, off, ready=b"offloaded")
    stale = list(off.iterdir())
    assert len(stale) == 1 and any(stale[0].rglob("*.safetensors"))
    live = MemoryBudget(0, off)
    ActivationStore(live).append(torch.ones(4))
    mine = set(off.iterdir()) - set(stale)
    with caplog.at_level(logging.WARNING, logger="svdzoo.calibration.store"):
        budget = MemoryBudget(0, off)
        store = ActivationStore(budget)
        store.append(torch.ones(4))
        assert torch.equal(store[0], torch.ones(4))
    assert not stale[0].exists()  # the killed job's states are gone
    assert all(d.exists() for d in mine)  # the live run's are not
    assert str(stale[0]) in " ".join(r.getMessage() for r in caplog.records)
    budget.cleanup()
    live.cleanup()
    assert list(off.iterdir()) == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_layer_streaming_matches_cpu(tok, windows):
    """The model stays on the host; each layer visits the GPU and goes back."""
    model = random_tiny("llama")
    cpu, gpu = {}, {}
    stream_gram_stats(
        model, windows, cpu.__setitem__, batch_size=BATCH, device="cpu", progress=False
    )
    stream_gram_stats(
        model, windows, gpu.__setitem__, batch_size=BATCH, device="cuda", progress=False
    )
    assert all(p.device.type == "cpu" for p in model.parameters())
    for k, v in cpu.items():
        assert gpu[k].device.type == "cpu" and gpu[k].dtype == v.dtype
        assert rel(gpu[k], v) < 1e-5, k


def test_an_overflowing_last_layer_is_refused_not_cached(tok, tmp_path):
    """The last layer's output feeds no Gram, so its overflow passed the finiteness check:
    the cache was written with a NaN cosine (adaCR refused it only at compress time)."""
    from svdzoo.errors import ModelError

    model = random_tiny("llama")
    mlp = model.model.layers[-1].mlp
    with torch.no_grad():  # finite inputs everywhere, an infinite last-layer output
        mlp.up_proj.weight.mul_(1e3)
        mlp.down_proj.weight.fill_(1e38)
    out = tmp_path / "gram"
    with pytest.raises(ModelError, match="layer 1: its output hidden states are not finite"):
        calibrate_to_dir(
            model, tok, out, corpus="pydoc", nsamples=2, seqlen=16, seed=0, device="cpu",
            progress=False,
        )  # fmt: skip
    assert not out.exists()
