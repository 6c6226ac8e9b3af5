"""AdaSVD: the adaComp trap (fixed point at H' = C = H), error compensation on real
compressed-model inputs, adaCR ratios, stack-of-batch, and the two ablations."""

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
from svdzoo.linalg import NumericsError
from svdzoo.methods import get_method, requirements
from svdzoo.methods.adasvd import AdaComp, AdaCompCompensated, AdaCR
from svdzoo.methods.base import AllocationContext
from svdzoo.methods.parts import Whitened
from svdzoo.methods.sequential import stacked_accumulator
from svdzoo.models import adapter_for, replace_module

CALIB = dict(corpus="pydoc", nsamples=16, seqlen=64, seed=3)
FAST = {"seq_nsamples": 4}  # the sequential pass on 4 of the 16 windows keeps tests quick


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def llama(tiny_llama_dir):
    return load_calibrated(tiny_llama_dir, progress=False, **CALIB)


@pytest.fixture(scope="module")
def compressed_inputs(llama):
    """Layer-1 statistics `(W, H, H', C)` per target once layer 0 is SVD-LLM-compressed at 60%."""
    model, tok, stats = llama
    m = copy.deepcopy(model)
    adapter = adapter_for(m)
    windows = calibration_windows(tok, CALIB["corpus"], 16, CALIB["seqlen"], CALIB["seed"])
    seq = SequentialCalibrator(m, windows, progress=False)
    out = {}
    for i, layer in seq.layers():
        if i == 0:
            for t, lin in adapter.target_modules(layer).items():
                W = lin.weight.detach().double()
                H = stats.gram(0, adapter.group_of(t))
                fac = Whitened("cholesky")(matrix_ctx(W, H), linalg.rank_for_ratio(*W.shape, 0.6))
                replace_module(layer, t, build_module(lin, fac))
        else:
            st = seq.layer_stats(i)
            for t, lin in adapter.target_modules(layer).items():
                g = st[adapter.group_of(t)]
                out[t] = (lin.weight.detach().double(), g.H, g.H_actual, g.C)
            break
    return out


def test_registered():
    assert requirements("adasvd") == requirements("adasvd-comp") == {"gram"}
    assert get_method("adasvd").sequential and get_method("adasvd-comp").sequential
    assert get_method("adasvd-compensated").sequential
    assert get_method("adasvd-compensated-comp").sequential
    assert not get_method("adasvd-cr").sequential
    assert get_method("adasvd-cr").factoriser == Whitened("cholesky")
    assert get_method("adasvd").factoriser == AdaComp(tau=1, whitening="cholesky")
    assert get_method("adasvd").options["tau"] == 1


def test_paper_adacomp_on_the_original_inputs_is_svd_llm():
    """With the original inputs, SVD-LLM's factors already minimise the data loss (U-step
    fixed point) and, for an invertible H, A^+ W gives back B (V-step fixed point): the
    paper's procedure only acts through inputs that differ from the whitening's."""
    W, X, _ = correlated_data()
    H = X @ X.T
    start = Whitened("cholesky")(matrix_ctx(W, H), 5)
    A = linalg.adacomp_u_step(W, start.B, H)
    assert torch.allclose(A, start.A, atol=1e-8 * float(start.A.norm()))
    assert torch.allclose(linalg.adacomp_v_step(W, start.A), start.B, atol=1e-8)
    got = AdaComp(tau=3)(matrix_ctx(W, H), 5)
    assert torch.allclose(got.A @ got.B, start.A @ start.B, atol=1e-8)


def test_paper_adacomp_acts_on_compressed_model_inputs():
    W, X, Xp = correlated_data()
    H, Hp = X @ X.T, Xp @ Xp.T
    start = Whitened("cholesky")(matrix_ctx(W, H), 5)
    got = AdaComp(tau=1)(matrix_ctx(W, H, Hp, X @ Xp.T), 5)
    A = linalg.adacomp_u_step(W, start.B, Hp)
    assert torch.allclose(got.A, A) and torch.allclose(got.B, torch.linalg.pinv(A) @ W)
    assert not torch.allclose(got.A @ got.B, start.A @ start.B, atol=1e-4)


@pytest.mark.parametrize("tau", [1, 2, 5])
def test_paper_adacomp_steps_minimise_their_own_objectives(tau):
    """Each U-step never raises the data loss (given B); each V-step never raises the
    weight-space error (given A). From the data optimum the data loss can only rise."""
    W, X, _ = correlated_data(seed=4)
    H = X @ X.T
    fac = linalg.svd_truncate(W, 6)  # any start
    svdllm = Whitened("cholesky")(matrix_ctx(W, H), 6)
    A, B = fac.A, fac.B
    for _ in range(tau):
        before = linalg.layer_loss(W, A, B, H)
        A = linalg.adacomp_u_step(W, B, H)
        assert linalg.layer_loss(W, A, B, H) <= before * (1 + 1e-10)
        werr = float((W - A @ B).norm())
        B = linalg.adacomp_v_step(W, A)
        assert float((W - A @ B).norm()) <= werr * (1 + 1e-10)
    ref = linalg.adacomp_steps(W, fac.A, fac.B, H, iters=tau)
    assert torch.allclose(ref.A @ ref.B, A @ B, atol=1e-8)
    assert ref.loss >= linalg.layer_loss(W, svdllm.A, svdllm.B, H) * (1 - 1e-10)
    with pytest.raises(ConfigError, match="tau"):
        AdaComp(tau=-1)(matrix_ctx(W, H), 3)


@pytest.mark.parametrize("ridge", [0.0, 1e-12])
def test_paper_adacomp_on_a_rank_deficient_gram_is_the_minimum_norm_fit_and_fits_float16(ridge):
    """A Gram of many tokens over few distinct inputs (rank 10 < k = 100), as a byte-level
    corpus gives a random LLaMA-7B-wide layer 0 (rank 43 < k = 1228). The U-step's
    pseudo-inverse of the singular `B H B^T` used to invert `H`'s round-off: `A` got O(1)
    columns along directions the data never saw, the V-step's `A^+` blew `B` up (6e7 at
    LLaMA-7B widths) and the float16 factors were inf. The U-step is the minimum-norm
    solution, of rank <= rank(H), and both factors fit a float16 model."""
    g = torch.Generator().manual_seed(1)
    n, k, distinct, f64 = 256, 100, 10, torch.float64
    E = torch.randn(distinct, n, generator=g, dtype=f64)
    E = E / E.square().mean(1, keepdim=True).sqrt()  # RMS-normalised, like a norm's output
    X = E[torch.randint(distinct, (4096,), generator=g)]  # tokens x n
    H = X.T @ X  # unnormalised sum over the tokens
    # a ridge of round-off's size lets a Cholesky factor through, which keeps it: the
    # U-step must drop it all the same
    H = H + ridge * float(H.diagonal().mean()) * torch.eye(n, dtype=f64)
    assert (int(torch.linalg.cholesky_ex(H).info) == 0) == (ridge > 0)
    W = 0.02 * torch.randn(n, n, generator=g, dtype=f64)
    start = linalg.truncate(W, linalg.cholesky_whitener(H), k)  # eigen-shift fallback
    got = linalg.adacomp_steps(W, start.A, start.B, H)
    # the exact minimum-norm U-step, from the tokens themselves (no Gram, nothing squared)
    ref = (W @ X.T) @ torch.linalg.pinv(start.B @ X.T)
    assert torch.allclose(got.A, ref, atol=1e-8 * float(ref.norm()))
    sv = torch.linalg.svdvals(got.A)
    assert float(sv[distinct]) <= 1e-10 * float(sv[0])
    assert got.loss <= 1e-12 * float(((W @ H) * W).sum())
    lin = torch.nn.Linear(n, n, bias=False, dtype=torch.float16)
    for name, p in build_module(lin, got).named_parameters():
        assert bool(torch.isfinite(p).all()), name


def test_paper_adacomp_u_step_is_the_same_through_either_factor():
    """The Cholesky factor (the fast path) and the eigen whitener give one U-step when
    `B H B^T` is invertible: the least-squares solution is unique."""
    W, X, Xp = correlated_data(seed=5)
    H, Hp = X @ X.T, Xp @ Xp.T
    start = Whitened("cholesky")(matrix_ctx(W, H), 5)
    chol, eig = linalg.adacomp_whitener(Hp), linalg.eigen_whitener(Hp)
    assert chol.kind == "cholesky"
    fast = linalg.adacomp_steps(W, start.A, start.B, Hp, S=chol)
    slow = linalg.adacomp_steps(W, start.A, start.B, Hp, S=eig)
    assert torch.allclose(fast.A, slow.A, atol=1e-9 * float(slow.A.norm()))
    assert abs(fast.loss - slow.loss) <= 1e-10 * slow.loss
    # a `B` with a zero row (a spare direction): the minimum-norm `A` has a zero column there
    Bz = start.B.clone()
    Bz[2] = 0
    A = linalg._u_step(chol.apply(W), Bz, chol)
    ref = (W @ Xp) @ torch.linalg.pinv(Bz @ Xp)
    assert torch.allclose(A, ref, atol=1e-9 * float(ref.norm()))
    assert float(A[:, 2].abs().max()) <= 1e-12 * float(A.norm())
    shifted = linalg.Whitener("cholesky", chol.n, factor=chol.factor, shift=1.0)
    with pytest.raises(NumericsError, match="exact factor"):  # a damped factor is another H
        linalg.adacomp_steps(W, start.A, start.B, Hp, S=shifted)


def test_paper_adacomp_uniform_ranks_differs_from_svd_llm(llama):
    model, tok, stats = llama
    m, ref = copy.deepcopy(model), copy.deepcopy(model)
    man = compress(m, "adasvd-comp", 0.4, stats=Statistics(gram=stats), tokenizer=tok,
                   options=FAST)  # fmt: skip
    uni = compress(ref, "svd-llm", 0.4, stats=Statistics(gram=stats))
    assert {n: r["rank"] for n, r in man["modules"].items()} == {
        n: r["rank"] for n, r in uni["modules"].items()
    }
    name = "model.layers.1.mlp.up_proj"
    got, base = m.get_submodule(name).weight_product(), ref.get_submodule(name).weight_product()
    assert not torch.allclose(got, base, atol=1e-4)


@pytest.mark.parametrize("start", ["compensated", "whitened"])
def test_trap_adacomp_with_original_inputs_is_plain_whitened_truncation(start):
    """methods.md trap: with H' = C = H the whitened SVD is already optimal, ALS changes nothing."""
    W, X, _ = correlated_data()
    H = X @ X.T
    for k in (2, 7):
        ref = Whitened("cholesky")(matrix_ctx(W, H), k)
        for tau in (0, 1, 3):
            got = AdaCompCompensated(tau=tau, start=start)(matrix_ctx(W, H, H, H), k)
            assert torch.allclose(got.A @ got.B, ref.A @ ref.B, atol=1e-8)
        als = linalg.als_refine(W, ref.A, ref.B, H, H, iters=2)
        assert torch.allclose(als.A @ als.B, ref.A @ ref.B, atol=1e-8)


def test_als_on_exactly_singular_actual_gram_stays_bounded():
    """Compressed-model inputs can be exactly rank-deficient (o_proj after a low-rank v_proj):
    ALS must use the pseudo-inverse of H', not a Cholesky that 'succeeds' on round-off."""
    W, X, _ = correlated_data()
    g = torch.Generator().manual_seed(5)
    Xp = torch.randn(16, 6, generator=g, dtype=torch.float64) @ X[:6]  # rank 6 of 16
    H, Hp, C = X @ X.T, Xp @ Xp.T, X @ Xp.T
    cf = linalg.compensated_truncate(W, Hp, C, 4)
    als = linalg.als_refine(W, cf.A, cf.B, Hp, C, iters=2)
    assert torch.isfinite(als.A).all() and torch.isfinite(als.B).all()
    assert (als.A @ als.B).norm() < 10 * (cf.A @ cf.B).norm()
    assert torch.allclose(als.A @ als.B, cf.A @ cf.B, atol=1e-6 * float((cf.A @ cf.B).norm()))
    got = AdaCompCompensated(tau=1)(matrix_ctx(W, H, Hp, C), 4)
    assert torch.allclose(got.A @ got.B, cf.A @ cf.B, atol=1e-6 * float((cf.A @ cf.B).norm()))


def test_als_helps_from_a_plain_svd_start():
    """The paper's figure: from plain SVD factors, one ALS step lowers the loss a lot."""
    W, X, _ = correlated_data()
    H = X @ X.T
    plain = linalg.svd_truncate(W, 5)
    als = linalg.als_refine(W, plain.A, plain.B, H, H, iters=1)
    best = Whitened("cholesky")(matrix_ctx(W, H), 5)
    lp, la, lb = (linalg.layer_loss(W, f.A, f.B, H) for f in (plain, als, best))
    assert lb <= la < 0.9 * lp


@pytest.mark.parametrize("start", ["compensated", "whitened"])
def test_compensation_differs_and_lowers_the_loss_on_actual_inputs(start):
    W, X, Xp = correlated_data()
    H, Hp, C = X @ X.T, Xp @ Xp.T, X @ Xp.T
    k = 6
    svdllm = Whitened("cholesky")(matrix_ctx(W, H), k)
    comp = AdaCompCompensated(start=start)(matrix_ctx(W, H, Hp, C), k)
    W0, W1 = svdllm.A @ svdllm.B, comp.A @ comp.B
    assert (W0 - W1).norm() > 1e-3 * W0.norm()
    assert actual_loss(W, W1, H, Hp, C) < 0.99 * actual_loss(W, W0, H, Hp, C)


def test_compensation_lowers_the_loss_on_real_compressed_model_inputs(compressed_inputs):
    """Layer 1 of the tiny LLaMA after layer 0 was compressed: adaComp vs SVD-LLM on X'."""
    for t, (W, H, Hp, C) in compressed_inputs.items():
        assert not torch.allclose(Hp, H)  # the streams really differ
        k = linalg.rank_for_ratio(*W.shape, 0.4)
        base = Whitened("cholesky")(matrix_ctx(W, H), k)
        comp = AdaCompCompensated()(matrix_ctx(W, H, Hp, C), k)
        paper = AdaCompCompensated(start="whitened")(matrix_ctx(W, H, Hp, C), k)
        l0 = actual_loss(W, base.A @ base.B, H, Hp, C)
        l1 = actual_loss(W, comp.A @ comp.B, H, Hp, C)
        l2 = actual_loss(W, paper.A @ paper.B, H, Hp, C)
        assert l1 < l0, t
        assert l1 <= l2 * (1 + 1e-9) and l2 <= l0 * (1 + 1e-9), t


def test_adacomp_needs_sequential_statistics_and_valid_options():
    W, X, _ = correlated_data()
    H = X @ X.T
    with pytest.raises(ConfigError, match="H_actual"):
        AdaCompCompensated()(matrix_ctx(W, H), 3)
    with pytest.raises(ConfigError, match="tau"):
        AdaCompCompensated(tau=-1)(matrix_ctx(W, H, H, H), 3)
    with pytest.raises(ConfigError, match="start"):
        AdaCompCompensated(start="nope")(matrix_ctx(W, H, H, H), 3)


def _cr(model, stats, target, **options):
    infos = matrix_infos(model)
    actx = AllocationContext(stats=stats, options=options)
    return infos, AdaCR()(infos, target, actx), actx


@pytest.mark.parametrize("ratio", [0.2, 0.4, 0.6, 0.8])
def test_adacr_meets_the_budget_and_favours_the_important_layer(llama, ratio):
    model, _, stats = llama
    infos, ranks, actx = _cr(model, stats, ratio, mrr_fraction=0.5)
    assert abs(achieved_ratio(infos, ranks) - ratio) <= 0.005
    imp = {int(k): v for k, v in actx.report["importance"].items()}
    assert imp == {i: pytest.approx(1 - stats.cosine(i)) for i in imp}
    assert actx.report["mrr"] == pytest.approx(0.5 * (1 - ratio))
    hi, lo = max(imp, key=imp.get), min(imp, key=imp.get)
    kept = {layer: sum(ranks[i.name] for i in infos if i.layer == layer) for layer in imp}
    assert kept[hi] > kept[lo]


def test_adacr_mrr_controls_the_spread(llama):
    model, _, stats = llama
    infos = matrix_infos(model)

    def spread(mrr):
        ranks = _cr(model, stats, 0.4, mrr=mrr)[1]
        r = [ranks[i.name] for i in infos if i.type == "up_proj"]
        return max(r) - min(r)

    assert spread(0.1) > spread(0.55) >= 0
    with pytest.raises(Exception, match="minimum retained ratio"):
        _cr(model, stats, 0.4, mrr=0.7)


def test_adasvd_cr_is_svd_llm_at_layer_ratios(llama):
    """adasvd-cr: adaCR ranks (constant within a layer's types, varying across layers),
    SVD-LLM's Cholesky factors at those ranks."""
    model, tok, stats = llama
    m = copy.deepcopy(model)
    man = compress(m, "adasvd-cr", 0.4, stats=Statistics(gram=stats), tokenizer=tok)
    assert abs(man["achieved_ratio"] - 0.4) <= 0.005
    assert man["allocation"]["kind"] == "adacr"
    _, ranks, _ = _cr(model, stats, 0.4, mrr_fraction=0.5)
    assert {n: r["rank"] for n, r in man["modules"].items()} == ranks
    name = "model.layers.1.mlp.up_proj"
    W = model.get_submodule(name).weight.detach().double()
    ref = Whitened("cholesky")(matrix_ctx(W, stats.gram(1, "mlp_in")), ranks[name])
    assert torch.allclose(m.get_submodule(name).weight_product().double(), ref.A @ ref.B, atol=1e-5)


def test_adasvd_comp_uniform_ranks_compensated_weights(llama):
    """adasvd-comp: the uniform ranks of svd-llm; the first group is plain (eigen) whitened
    truncation (nothing upstream is compressed yet), later ones are compensated."""
    model, tok, stats = llama
    m = copy.deepcopy(model)
    man = compress(m, "adasvd-compensated-comp", 0.4, stats=Statistics(gram=stats), tokenizer=tok,
                   options=FAST)  # fmt: skip
    ref = copy.deepcopy(model)
    uni = compress(ref, "svd-llm-v2-truncation", 0.4, stats=Statistics(gram=stats))
    assert {n: r["rank"] for n, r in man["modules"].items()} == {
        n: r["rank"] for n, r in uni["modules"].items()
    }
    assert man["options"]["seq_nsamples"] == 4 and man["allocation"]["sequential"]["windows"] == 4
    windows = calibration_windows(tok, CALIB["corpus"], 4, CALIB["seqlen"], CALIB["seed"])
    seq = SequentialCalibrator(copy.deepcopy(model), windows, progress=False)
    st = seq.layer_stats(0)
    seq.close()
    W = model.model.layers[0].self_attn.q_proj.weight.detach().double()
    k = man["modules"]["model.layers.0.self_attn.q_proj"]["rank"]
    first = Whitened("eigen")(matrix_ctx(W, st["attn_in"].H), k)
    got = m.model.layers[0].self_attn.q_proj.weight_product().double()
    assert torch.allclose(got, first.A @ first.B, atol=1e-4)
    later = "model.layers.1.mlp.down_proj"
    assert not torch.allclose(
        m.get_submodule(later).weight_product(),
        ref.get_submodule(later).weight_product(),
        atol=1e-3,
    )


def test_stacked_accumulator_averages_each_group_of_windows():
    seqlen, n = 5, 3
    x = torch.randn(4 * seqlen, n, dtype=torch.float64)  # 4 windows
    xa = x + 0.1
    acc = stacked_accumulator(2, seqlen)(n, torch.device("cpu"))
    acc.add(x, xa)
    xs = x.reshape(2, 2, seqlen, n).mean(1).reshape(-1, n)
    xas = xa.reshape(2, 2, seqlen, n).mean(1).reshape(-1, n)
    assert torch.allclose(acc.H, xs.T @ xs) and torch.allclose(acc.H_actual, xas.T @ xas)
    assert torch.allclose(acc.C, xs.T @ xas) and acc.count == 2 * seqlen


def test_stack_of_batch_averages_groups_of_windows(llama):
    model, tok, stats = llama
    m = copy.deepcopy(model)
    man = compress(m, "adasvd-compensated", 0.4, stats=Statistics(gram=stats), tokenizer=tok,
                   options={"seq_nsamples": 6, "mini_bsz": 4})  # fmt: skip
    assert abs(man["achieved_ratio"] - 0.4) <= 0.005
    assert man["allocation"]["kind"] == "adacr"
    assert man["allocation"]["sequential"]["windows"] == 4  # 6 windows: one group of 4 kept
    with pytest.raises(ConfigError, match="mini_bsz"):
        compress(copy.deepcopy(model), "adasvd-compensated", 0.4, stats=Statistics(gram=stats),
                 tokenizer=tok, options={"seq_nsamples": 2, "mini_bsz": 4})  # fmt: skip


@pytest.mark.parametrize("ratio", [0.4, 0.6])
def test_adasvd_beats_svd_llm_end_to_end(family_ppl, ratio):
    """The paper's claim, for svdzoo's compensating extension: it holds on our reference
    models (the paper-literal adaComp is measured on the real model, docs/results.md)."""
    if family_ppl("svd-llm", 0.6) < 1.05 * family_ppl(None):
        pytest.skip("the fixture model barely reacts to compression: the claim is untestable")
    assert family_ppl("adasvd-compensated", ratio) < family_ppl("svd-llm", ratio)
