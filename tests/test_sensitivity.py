"""Sensitivity tables (Duo-SVD KL, ASVD perplexity): shape, sanity, determinism, cache, CLI."""

from __future__ import annotations

import json
import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from helpers import load_calibrated  # noqa: E402

from svdzoo import linalg  # noqa: E402
from svdzoo.calibration import CalibrationStats, calibrate_to_dir  # noqa: E402
from svdzoo.cli import main as cli_main  # noqa: E402
from svdzoo.compression import Statistics, compress  # noqa: E402
from svdzoo.data import calibration_windows  # noqa: E402
from svdzoo.errors import CacheError, ConfigError  # noqa: E402
from svdzoo.evaluation.perplexity import perplexity  # noqa: E402
from svdzoo.methods.base import MatrixContext  # noqa: E402
from svdzoo.methods.parts import ActivationScaled, Whitened  # noqa: E402
from svdzoo.models import adapter_for, fingerprint, load_model, load_tokenizer  # noqa: E402
from svdzoo.sensitivity import (  # noqa: E402
    ASVD_RATIOS,
    DUO_RATIOS,
    SensitivityTable,
    compute_sensitivity,
    load_sensitivity,
    probe_rank,
    save_sensitivity,
    truncated_weight,
)

CALIB = dict(corpus="pydoc", nsamples=32, seqlen=64, seed=3)
NSENS = 16  # windows measured per probe (Duo-SVD's code uses 32)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def llama(tiny_llama_dir):
    return load_calibrated(tiny_llama_dir, **CALIB)


@pytest.fixture(scope="module")
def duo_table(llama) -> SensitivityTable:
    model, tok, gram = llama
    return compute_sensitivity(model, tok, gram, "duo", nsamples=NSENS, batch_size=NSENS)


@pytest.fixture(scope="module")
def asvd_table(llama) -> SensitivityTable:
    model, tok, gram = llama
    return compute_sensitivity(model, tok, gram, "asvd", nsamples=8, batch_size=8)


def test_duo_table_shape_and_sanity(llama, duo_table):
    model, _, gram = llama
    names = [name for name, *_ in adapter_for(model).iter_targets(model)]
    assert list(duo_table) == names
    assert duo_table.ratios == DUO_RATIOS
    for row in duo_table.values():
        assert sorted(row) == list(DUO_RATIOS)
        assert row[1.0] == 0.0  # the dense module
        assert all(math.isfinite(v) and v >= 0 for v in row.values())

    def mean(p: float) -> float:
        return sum(row[p] for row in duo_table.values()) / len(duo_table)

    # less retained -> larger KL, on average over modules
    assert mean(0.1) > mean(0.3) > mean(0.9) >= 0
    assert max(row[0.1] for row in duo_table.values()) > 1e-3  # the probes do perturb
    m = duo_table.manifest
    assert m["kind"] == "sensitivity-duo" and m["metric"] == "kl"
    assert m["model_fingerprint"] == fingerprint(model)
    assert (m["corpus"], m["seqlen"], m["seed"]) == (
        CALIB["corpus"],
        CALIB["seqlen"],
        CALIB["seed"],
    )
    assert m["nsamples"] == NSENS and m["gram"]["nsamples"] == CALIB["nsamples"]


def test_model_restored_and_deterministic(llama, duo_table):
    model, tok, gram = llama
    fp = fingerprint(model)
    again = compute_sensitivity(
        model, tok, gram, "duo", nsamples=NSENS, batch_size=NSENS, ratios=[0.2, 0.7]
    )
    assert fingerprint(model) == fp  # every probe undone
    assert again.ratios == (0.2, 0.7, 1.0)
    for name, row in again.items():
        # same windows and seed; another grid shares forward passes differently (ratios are
        # batched together), so equal up to float round-off, not bit for bit
        assert row[0.2] == pytest.approx(duo_table[name][0.2], rel=1e-5, abs=1e-9)
        assert row[0.7] == pytest.approx(duo_table[name][0.7], rel=1e-5, abs=1e-9)
    same = compute_sensitivity(
        model, tok, gram, "duo", nsamples=NSENS, batch_size=NSENS, ratios=[0.2, 0.7]
    )
    assert same.table == again.table  # the same request: bit-identical
    # and the same manifest (no run time in it): a rerun keeps the directory's DVC hash
    assert same.manifest == again.manifest


@pytest.mark.parametrize("kind", ["duo", "asvd"])
def test_layerwise_probes_equal_full_forward_probes(llama, kind):
    """Starting each probe at its own layer (kept dense hidden states) and batching the
    ratio grid into one pass give the plain full-forward probe's values."""
    from svdzoo.sensitivity import _batches, _measure, _reference, _whitener

    model, tok, gram = llama
    grid = [0.2, 0.5]
    table = compute_sensitivity(
        model, tok, gram, kind, nsamples=4, batch_size=2, ratios=grid, max_tokens=10**6
    )
    windows = calibration_windows(tok, gram.manifest["corpus"], 4, gram.manifest["seqlen"], 3)
    batches = _batches(windows, 2)
    ref = _reference(model, batches, kind)
    adapter = adapter_for(model)
    targets = list(adapter.iter_targets(model))
    for name, layer, target, lin in (targets[0], targets[len(targets) // 2], targets[-1]):
        group = adapter.group_of(target)
        ctx = MatrixContext(
            name=name, layer=layer, type=adapter.matrix_type(target), group=group,
            W=lin.weight.detach().double(), H=gram.gram(layer, group),
            absmean=gram.absmean(layer, group), count=int(gram.count(layer, group)),
        )  # fmt: skip
        wh = _whitener(kind, ctx)
        svd = linalg.whitened_svd(ctx.W, wh)
        original = lin.weight.data
        for p in grid:
            lin.weight.data = truncated_weight(ctx.W, wh, svd, probe_rank(*ctx.W.shape, p)).float()
            try:
                full = _measure(model, batches, kind, ref)
            finally:
                lin.weight.data = original
            assert table[name][p] == pytest.approx(full, rel=1e-4), (name, p)


def test_probe_matches_the_factorisers(llama):
    """The one-SVD-per-module fast path is exactly the factoriser's product."""
    model, _, gram = llama
    name, layer, target, lin = next(iter(adapter_for(model).iter_targets(model)))
    group = adapter_for(model).group_of(target)
    ctx = MatrixContext(
        name=name, layer=layer, type="q_proj", group=group,
        W=lin.weight.detach().double(), H=gram.gram(layer, group),
        absmean=gram.absmean(layer, group),
    )  # fmt: skip
    m, n = ctx.W.shape
    k = probe_rank(m, n, 0.4)
    assert k == math.floor(0.4 * m * n / (m + n))
    for fact, wh in (
        (Whitened("cholesky"), Whitened("cholesky").whitener(ctx.H)),
        (ActivationScaled(0.5), ActivationScaled(0.5).whitener(ctx)),
    ):
        fast = truncated_weight(ctx.W, wh, linalg.whitened_svd(ctx.W, wh), k)
        ref = fact(ctx, k).product()
        torch.testing.assert_close(fast, ref, rtol=1e-9, atol=1e-10)


def test_asvd_table(llama, asvd_table):
    model, tok, _ = llama
    assert asvd_table.ratios == ASVD_RATIOS
    windows = calibration_windows(tok, "pydoc", 8, CALIB["seqlen"], CALIB["seed"])
    dense = perplexity(model, windows)
    for row in asvd_table.values():
        # 1.0 holds the dense perplexity; the table sums each window's NLL in float64 (the
        # same bytes for any batch size), evaluate a batch's in float32: round-off apart
        assert row[1.0] == pytest.approx(dense, rel=1e-6)
    mean04 = sum(r[0.4] for r in asvd_table.values()) / len(asvd_table)
    assert mean04 > dense
    assert asvd_table.manifest["metric"] == "ppl"
    assert asvd_table.manifest["precision"] == "float64"  # "auto" on a CPU


def test_asvd_method_reads_the_table(llama, asvd_table):
    import copy

    model, _, gram = llama
    m2 = copy.deepcopy(model)
    man = compress(m2, "asvd", 0.4, stats=Statistics(gram=gram, sensitivity={"asvd": asvd_table}))
    assert abs(man["achieved_ratio"] - 0.4) <= 0.005
    # the table was measured at alpha 0.5: allocating another alpha's factors by it is refused
    m3 = copy.deepcopy(model)
    with pytest.raises(ConfigError, match="measured at alpha 0.5"):
        compress(
            m3, "asvd", 0.4, options={"alpha": 1.0},
            stats=Statistics(gram=gram, sensitivity={"asvd": asvd_table}),
        )  # fmt: skip


def test_cache_round_trip_and_errors(tmp_path, duo_table):
    out = tmp_path / "sens"
    manifest = save_sensitivity(duo_table, out)
    assert sorted(p.name for p in out.iterdir()) == [
        ".svdzoo-files.json",
        "manifest.json",
        "table.json",
    ]
    loaded = load_sensitivity(
        out, kind="duo", expect={"model_fingerprint": manifest["model_fingerprint"]}
    )
    assert loaded.table == duo_table.table and loaded.ratios == duo_table.ratios
    assert loaded.manifest["threads"] == torch.get_num_threads()  # LAPACK's bits follow it
    with pytest.raises(CacheError, match="model_fingerprint"):
        load_sensitivity(out, expect={"model_fingerprint": "0" * 16})
    with pytest.raises(CacheError, match="nsamples"):
        load_sensitivity(out, expect={"nsamples": 32})
    with pytest.raises(CacheError, match="sensitivity"):
        load_sensitivity(out, kind="asvd")
    table = out / "table.json"
    obj = json.loads(table.read_text())
    first = next(iter(obj))
    obj[first]["0.1"] = 0.0  # an edited value
    table.write_text(json.dumps(obj))
    with pytest.raises(CacheError, match="sha256"):
        load_sensitivity(out)
    table.unlink()
    with pytest.raises(CacheError, match="missing"):
        load_sensitivity(out)
    (out / "manifest.json").write_text("{not json")
    with pytest.raises(CacheError, match="is not valid JSON .*; compute the table again"):
        load_sensitivity(out)
    (out / "manifest.json").write_text("[]")
    with pytest.raises(CacheError, match="expected a JSON object, found list"):
        load_sensitivity(out)
    with pytest.raises(CacheError, match="no manifest"):
        load_sensitivity(tmp_path / "nowhere")


def test_compress_rejects_a_table_from_another_model(llama, duo_table):
    import copy

    model, _, gram = llama
    stranger = SensitivityTable(
        {**duo_table.manifest, "model_fingerprint": "f" * 16}, duo_table.table
    )
    with pytest.raises(CacheError, match="another model"):
        compress(
            copy.deepcopy(model),
            "duo-svd",
            0.4,
            stats=Statistics(gram=gram, sensitivity={"duo": stranger}),
        )


def test_bad_requests_fail_before_compute(llama):
    model, tok, gram = llama
    with pytest.raises(ConfigError, match="kind"):
        compute_sensitivity(model, tok, gram, "kl")
    with pytest.raises(ConfigError, match="RETAINED"):
        compute_sensitivity(model, tok, gram, "duo", ratios=[0.0, 0.5])
    with pytest.raises(ConfigError, match="RETAINED"):
        compute_sensitivity(model, tok, gram, "duo", ratios=[1.5])
    other = CalibrationStats({**gram.manifest, "model_fingerprint": "0" * 16}, gram.tensor)
    with pytest.raises(CacheError, match="another model"):
        compute_sensitivity(model, tok, other, "duo")
    model.train()  # a refused request leaves the caller's mode (max_tokens left it in eval)
    try:
        with pytest.raises(ConfigError, match="max_tokens"):
            compute_sensitivity(model, tok, gram, "duo", max_tokens=0)
        assert model.training
    finally:
        model.eval()


def test_cli_computes_once_and_reuses(tmp_path, tiny_llama_dir):
    model, tok = load_model(tiny_llama_dir), load_tokenizer(tiny_llama_dir)
    gram_dir, out = tmp_path / "gram", tmp_path / "sens"
    calibrate_to_dir(model, tok, gram_dir, corpus="pydoc", nsamples=8, seqlen=32, seed=3)

    def argv(nsamples: int = 4, stats=gram_dir) -> list[str]:
        return ["sensitivity", "--model", str(tiny_llama_dir), "--stats", str(stats),
                "--kind", "duo", "--nsamples", str(nsamples), "--ratios", "0.3",
                "--out", str(out)]  # fmt: skip

    assert cli_main(argv()) == 0
    table = load_sensitivity(out, kind="duo", expect={"model_fingerprint": fingerprint(model)})
    assert table.ratios == (0.3, 1.0) and table.manifest["seqlen"] == 32
    stamp = (out / "table.json").stat().st_mtime_ns
    assert cli_main(argv()) == 0  # same request: reused, not recomputed
    assert (out / "table.json").stat().st_mtime_ns == stamp
    assert cli_main(argv(nsamples=5)) == 0  # another request: recomputed
    assert load_sensitivity(out).manifest["nsamples"] == 5
    assert cli_main(argv(stats=tmp_path / "missing")) == 2  # a clear error, no traceback
