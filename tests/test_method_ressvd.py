"""ResSVD: the residual trap (same whitening = plain truncation), the compensated residual
stage on real compressed-model inputs, last-K partial compression, and the ablations."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import actual_loss, correlated_data, load_calibrated, matrix_ctx

from svdzoo import linalg
from svdzoo.allocation import achieved_ratio
from svdzoo.calibration import SequentialCalibrator
from svdzoo.compression import Statistics, build_module, compress, matrix_infos
from svdzoo.data import calibration_windows
from svdzoo.errors import ConfigError
from svdzoo.methods import get_method, requirements
from svdzoo.methods.adasvd import AdaCompCompensated
from svdzoo.methods.base import AllocationContext
from svdzoo.methods.parts import Whitened
from svdzoo.methods.ressvd import LastK, LastKSearch, Residual, ResidualCompensated, split_rank
from svdzoo.models import adapter_for, replace_module

CALIB = dict(corpus="pydoc", nsamples=16, seqlen=64, seed=3)
FAST = {"seq_nsamples": 4}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def llama(tiny_llama_dir):
    return load_calibrated(tiny_llama_dir, progress=False, **CALIB)


def test_registered():
    assert requirements("ressvd") == {"gram"}
    assert not get_method("ressvd").sequential and get_method("ressvd").probes
    assert isinstance(get_method("ressvd").factoriser, Residual)
    assert isinstance(get_method("ressvd").allocator, LastKSearch)
    assert get_method("ressvd-compensated").sequential
    assert get_method("ressvd-compensated-residual").sequential
    assert isinstance(get_method("ressvd-compensated").allocator, LastK)
    assert not get_method("ressvd-lastk").sequential
    assert get_method("ressvd-lastk").factoriser == Whitened("cholesky")


def test_paper_residual_ranks_and_stages():
    """r2 = round(beta mn/(m+n)); stage 1 whitened at r1, stage 2 plain SVD of the weight
    residual; beta = 0 is SVD-LLM; the joined pair differs from whitened truncation at r."""
    W, X, _ = correlated_data(m=40, n=30, seed=2)
    H = X @ X.T
    assert Residual(beta=0.05).ranks(40, 30, 10) == (9, 1)
    assert Residual(beta=0.2).ranks(40, 30, 10) == (7, 3)
    assert Residual(beta=1.0).ranks(40, 30, 10) == (0, 10)
    got = Residual(beta=0.2)(matrix_ctx(W, H), 10)
    wh = Whitened("cholesky").whitener(H)
    s1 = linalg.truncate(W, wh, 7)
    s2 = linalg.svd_truncate(W - s1.A @ s1.B, 3)
    assert got.rank == 10
    assert torch.allclose(got.A @ got.B, s1.A @ s1.B + s2.A @ s2.B, atol=1e-8)
    plain = linalg.truncate(W, wh, 10)
    assert not torch.allclose(got.A @ got.B, plain.A @ plain.B, atol=1e-4)
    zero = Residual(beta=0.0)(matrix_ctx(W, H), 10)
    assert torch.allclose(zero.A @ zero.B, plain.A @ plain.B, atol=1e-8)
    with pytest.raises(ConfigError, match="beta"):
        Residual(beta=2.0)(matrix_ctx(W, H), 10)


def test_split_rank():
    assert split_rank(10, 0.5) == (5, 5)
    assert split_rank(7, 0.0) == (0, 7) and split_rank(7, 1.0) == (7, 0)
    with pytest.raises(ConfigError, match="k1_fraction"):
        split_rank(7, 1.5)


@pytest.mark.parametrize("whitening", ["cholesky", "eigen"])
def test_trap_residual_stage_with_the_same_whitening_is_plain_truncation(whitening):
    """methods.md trap: stage 2 under stage 1's whitening just takes the next directions."""
    W, X, _ = correlated_data(seed=1)
    H = X @ X.T
    wh = Whitened(whitening).whitener(H)
    for k1, k2 in ((3, 4), (0, 6), (6, 0), (2, 9)):
        res = linalg.residual_truncate(W, wh, wh, k1, k2)
        ref = linalg.truncate(W, wh, k1 + k2)
        assert torch.allclose(res.A @ res.B, ref.A @ ref.B, atol=1e-8)
    # and so does our factoriser whenever the layer sees its original inputs (H' = C = H)
    got = ResidualCompensated()(matrix_ctx(W, H, H, H), 7)
    ref = Whitened("cholesky")(matrix_ctx(W, H), 7)
    assert torch.allclose(got.A @ got.B, ref.A @ ref.B, atol=1e-8)


def test_residual_stage_on_actual_inputs_differs_and_helps():
    W, X, Xp = correlated_data(seed=1)
    H, Hp, C = X @ X.T, Xp @ Xp.T, X @ Xp.T
    k = 8
    base = Whitened("cholesky")(matrix_ctx(W, H), k)
    res = ResidualCompensated()(matrix_ctx(W, H, Hp, C), k)
    W0, W1 = base.A @ base.B, res.A @ res.B
    assert res.rank == k
    assert (W0 - W1).norm() > 1e-3 * W0.norm()
    assert actual_loss(W, W1, H, Hp, C) < 0.99 * actual_loss(W, W0, H, Hp, C)


def test_residual_on_real_compressed_model_inputs(llama):
    """Layer 1 of the tiny LLaMA once layer 0 is SVD-LLM-compressed: on the inputs the
    compressed model really produces, SVD-LLM >= ResSVD >= the closed-form compensation."""
    model, tok, stats = llama
    m = copy.deepcopy(model)
    adapter = adapter_for(m)
    windows = calibration_windows(tok, CALIB["corpus"], 16, CALIB["seqlen"], CALIB["seed"])
    seq = SequentialCalibrator(m, windows, progress=False)
    checked = 0
    for i, layer in seq.layers():
        if i == 0:
            for t, lin in adapter.target_modules(layer).items():
                W = lin.weight.detach().double()
                fac = Whitened("cholesky")(
                    matrix_ctx(W, stats.gram(0, adapter.group_of(t))),
                    linalg.rank_for_ratio(*W.shape, 0.6),
                )
                replace_module(layer, t, build_module(lin, fac))
            continue
        st = seq.layer_stats(i)
        for t, lin in adapter.target_modules(layer).items():
            g = st[adapter.group_of(t)]
            W, H, Hp, C = lin.weight.detach().double(), g.H, g.H_actual, g.C
            k = linalg.rank_for_ratio(*W.shape, 0.4)
            losses = [
                actual_loss(W, f.A @ f.B, H, Hp, C)
                for f in (
                    Whitened("cholesky")(matrix_ctx(W, H), k),
                    ResidualCompensated()(matrix_ctx(W, H, Hp, C), k),
                    AdaCompCompensated(tau=0)(matrix_ctx(W, H, Hp, C), k),
                )
            ]
            assert losses[1] < losses[0], t
            assert losses[2] <= losses[1] * (1 + 1e-9), t
            checked += 1
        break
    assert checked == 7


def _lastk(model, target, **options):
    infos = matrix_infos(model)
    actx = AllocationContext(options={"max_ratio": 0.9, **options})
    return infos, LastK()(infos, target, actx), actx.report


@pytest.mark.parametrize("ratio,K", [(0.2, 1), (0.4, 1), (0.6, 2), (0.8, 2)])
def test_lastk_chooses_K_from_the_budget(llama, ratio, K):
    """Two equal layers: one layer alone can carry 0.2 and 0.4 (at 0.4 and 0.8 <= 0.9)."""
    model, _, _ = llama
    infos, ranks, report = _lastk(model, ratio)
    assert abs(achieved_ratio(infos, ranks) - ratio) <= 0.005
    assert report["K"] == K and report["compressed_layers"] == list(range(2 - K, 2))
    dense = [i for i in infos if ranks[i.name] >= min(i.m, i.n)]
    assert {i.layer for i in dense} == set(range(2 - K))


def test_lastk_configured_K_and_infeasible_budgets(llama):
    model, _, _ = llama
    infos, ranks, report = _lastk(model, 0.2, K=2)
    assert report["K"] == 2 and all(ranks[i.name] < min(i.m, i.n) for i in infos)
    with pytest.raises(Exception, match="needs ratio"):
        _lastk(model, 0.6, K=1)
    with pytest.raises(ConfigError, match="max_ratio"):
        _lastk(model, 0.95)


def test_ressvd_lastk_leaves_first_layers_dense_and_truncates_like_svd_llm(llama):
    model, tok, stats = llama
    m = copy.deepcopy(model)
    man = compress(m, "ressvd-lastk", 0.4, stats=Statistics(gram=stats), tokenizer=tok)
    assert abs(man["achieved_ratio"] - 0.4) <= 0.005
    assert man["allocation"]["K"] == 1 and man["allocation"]["kind"] == "last-k-search"
    mods = man["modules"]
    assert all(r["dense"] for r in mods.values() if r["layer"] == 0)
    assert not any(r["dense"] for r in mods.values() if r["layer"] == 1)
    assert isinstance(m.model.layers[0].mlp.up_proj, torch.nn.Linear)
    name = "model.layers.1.mlp.up_proj"
    W = model.get_submodule(name).weight.detach().double()
    ref = Whitened("cholesky")(matrix_ctx(W, stats.gram(1, "mlp_in")), mods[name]["rank"])
    assert torch.allclose(m.get_submodule(name).weight_product().double(), ref.A @ ref.B, atol=1e-5)


def test_ressvd_residual_uniform_ranks_compensated_weights(llama):
    model, tok, stats = llama
    m = copy.deepcopy(model)
    man = compress(m, "ressvd-compensated-residual", 0.6, stats=Statistics(gram=stats), tokenizer=tok,
                   options=FAST)  # fmt: skip
    ref = copy.deepcopy(model)
    uni = compress(ref, "svd-llm", 0.6, stats=Statistics(gram=stats))
    assert {n: r["rank"] for n, r in man["modules"].items()} == {
        n: r["rank"] for n, r in uni["modules"].items()
    }
    later = "model.layers.1.mlp.down_proj"
    assert not torch.allclose(
        m.get_submodule(later).weight_product(),
        ref.get_submodule(later).weight_product(),
        atol=1e-3,
    )


def test_ressvd_reports_K_and_compresses_only_the_last_layers(llama):
    model, tok, stats = llama
    m = copy.deepcopy(model)
    man = compress(
        m, "ressvd-compensated", 0.4, stats=Statistics(gram=stats), tokenizer=tok, options=FAST
    )
    assert abs(man["achieved_ratio"] - 0.4) <= 0.005
    assert man["allocation"]["K"] == 1
    assert list(man["allocation"]["sequential"]["divergence"]) == ["1"]
    assert all(r["dense"] for r in man["modules"].values() if r["layer"] == 0)
    assert man["options"]["k1_fraction"] == 0.5


@pytest.mark.parametrize("ratio", [0.4, 0.6])
def test_residual_compensation_beats_svd_llm_end_to_end(family_ppl, ratio):
    """ResSVD's residual claim holds on our reference models; its last-K part does not at
    40% (K=1 of 2 layers at 80%: worse than SVD-LLM), so only the residual stage is guarded."""
    if family_ppl("svd-llm", 0.6) < 1.05 * family_ppl(None):
        pytest.skip("the fixture model barely reacts to compression: the claim is untestable")
    assert family_ppl("ressvd-compensated-residual", ratio) < family_ppl("svd-llm", ratio)


@pytest.fixture(scope="module")
def deep(tok):
    """An untrained 6-layer LLaMA: enough blocks for the last-k search to have a choice."""
    from helpers import random_tiny

    from svdzoo.calibration import calibrate

    model = random_tiny("llama", layers=6, seed=1)
    return model, calibrate(model, tok, corpus="pydoc", nsamples=8, seqlen=32, seed=3,
                            progress=False)  # fmt: skip


def test_lastk_search_picks_the_lowest_of_its_recorded_errors(deep, tok):
    model, stats = deep
    m = copy.deepcopy(model)
    man = compress(m, "ressvd-lastk", 0.4, stats=Statistics(gram=stats), tokenizer=tok,
                   options={"search_nsamples": 2})  # fmt: skip
    a = man["allocation"]
    # 6 blocks, step 1: k in 1..5, feasible where 0.4 * 6 / k <= 0.95, i.e. k >= 3
    assert a["kind"] == "last-k-search" and a["candidates"] == [3, 4, 5]
    errors = {int(k): v for k, v in a["errors"].items()}
    assert sorted(errors) == [3, 4, 5] and len(set(errors.values())) == 3
    assert a["K"] == min(errors, key=errors.get)
    assert abs(man["achieved_ratio"] - 0.4) <= 0.005
    first = 6 - a["K"]
    assert a["compressed_layers"] == list(range(first, 6))
    for name, rec in man["modules"].items():
        assert rec["dense"] == (rec["layer"] < first), name
    # the probes put every original linear back: the uncompressed blocks are untouched
    for name, lin in model.named_modules():
        if isinstance(lin, torch.nn.Linear) and name.startswith(f"model.layers.{first - 1}."):
            assert torch.equal(m.get_submodule(name).weight, lin.weight)


def test_lastk_search_with_a_fixed_K_or_a_coarse_step(deep, tok):
    model, stats = deep
    man = compress(copy.deepcopy(model), "ressvd", 0.4, stats=Statistics(gram=stats),
                   tokenizer=tok, options={"K": 5})  # fmt: skip
    assert man["allocation"]["K"] == 5 and man["allocation"]["errors"] == {}
    assert man["options"]["beta"] == 0.05
    search = LastKSearch(step=2)
    assert search.candidates(6) == [2, 4] and LastKSearch().candidates(30) == list(range(3, 28, 3))
    with pytest.raises(ConfigError, match="step"):
        LastKSearch(step=0).candidates(6)
    # 80% on 6 blocks: no grid point within max_ratio -> all blocks, recorded
    man = compress(copy.deepcopy(model), "ressvd-lastk", 0.8, stats=Statistics(gram=stats),
                   tokenizer=tok, options={"step": 2})  # fmt: skip
    assert man["allocation"]["candidates"] == [6] and man["allocation"]["K"] == 6


def test_lastk_default_grid_holds_the_papers_choice_on_32_blocks():
    """methods.md: ResSVD's best layer choice at 20 % on LLaMA-7B (32 blocks) was the last
    16, so the paper's grid {s, 2s, ..., N - s} holds 16; the default step must not
    exclude it (N // 10 = 3 gives 3, 6, ..., 27, which cannot reproduce the paper)."""
    assert 16 in LastKSearch().candidates(32)
    # and 16 is feasible there: 0.2 * 32 / 16 = 0.4 <= max_ratio
    from svdzoo.allocation import MatrixInfo, last_k_ratio

    infos = [MatrixInfo(f"l{j}.{t}", j, t, 64, 64) for j in range(32) for t in "qkvo"]
    assert last_k_ratio(infos, 0.2, 16) == pytest.approx(0.4)


def test_lastk_search_never_picks_a_candidate_whose_error_is_not_finite():
    """A probe whose outputs overflowed (NaN error) is no measurement: `min` over
    `(error, k)` kept a NaN that came first (every comparison with NaN is False), so the
    most aggressive candidate won with error NaN. All errors non-finite is an error."""
    from svdzoo.allocation import MatrixInfo

    infos = [MatrixInfo(f"model.layers.{j}.{t}", j, t, 64, 64) for j in range(6) for t in "qo"]

    def probe_of(errors):
        def probe(ranks):  # k = number of compressed (non-dense) layers
            return errors[len({n.split(".")[2] for n, r in ranks.items() if r < 64})]

        return probe

    ctx = AllocationContext(probe=probe_of({3: float("nan"), 4: 0.2, 5: 0.1}))
    LastKSearch()(infos, 0.4, ctx)  # 6 blocks, step 1: candidates 3, 4, 5
    assert ctx.report["candidates"] == [3, 4, 5] and ctx.report["K"] == 5
    ctx = AllocationContext(probe=probe_of({3: float("nan"), 4: float("inf"), 5: float("nan")}))
    with pytest.raises(linalg.NumericsError, match="finite"):
        LastKSearch()(infos, 0.4, ctx)


@pytest.mark.parametrize("value", [0, 2.5, True])
def test_search_nsamples_must_be_a_whole_number(deep, tok, value):
    """`search_nsamples=0` used to become the default silently, and 2.5 to become 2."""
    from svdzoo.errors import ConfigError

    model, stats = deep
    # 0 is out of the option's range, checked before compute; 2.5 and True are no integers
    with pytest.raises(ConfigError, match="search_nsamples' must be|search_nsamples must be"):
        compress(copy.deepcopy(model), "ressvd-lastk", 0.4, stats=Statistics(gram=stats),
                 tokenizer=tok, options={"search_nsamples": value})  # fmt: skip


@pytest.mark.parametrize("method", ["ressvd", "ressvd-lastk"])
def test_the_searchs_best_trial_is_reused_bit_for_bit(deep, tok, method, monkeypatch, caplog):
    """The final pass takes the modules the search's best trial built instead of factorising
    again: the same model, byte for byte, as without them (PROBE_KEEP_BYTES = 0)."""
    import logging

    from svdzoo import compression

    model, stats = deep
    kw = dict(stats=Statistics(gram=stats), tokenizer=tok, options={"search_nsamples": 2})
    with caplog.at_level(logging.INFO, logger="svdzoo.compression"):
        kept = copy.deepcopy(model)
        man_kept = compress(kept, method, 0.4, **kw)
    assert "as the search's best trial built them" in caplog.text
    caplog.clear()
    monkeypatch.setattr(compression, "PROBE_KEEP_BYTES", 0)
    with caplog.at_level(logging.INFO, logger="svdzoo.compression"):
        again = copy.deepcopy(model)
        man_again = compress(again, method, 0.4, **kw)
    assert "best trial built them" not in caplog.text
    a, b = kept.state_dict(), again.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert man_kept["modules"] == man_again["modules"]
    assert man_kept["allocation"] == man_again["allocation"]
