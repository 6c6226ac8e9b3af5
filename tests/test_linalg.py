"""The numerical core: identities, fallbacks and the collapse traps of methods.md."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from helpers import layer_data, outlier_data, rel_error

from svdzoo import column_split, linalg
from svdzoo.linalg import NumericsError

F64 = torch.float64


# ---------------------------------------------------------------- ranks


def test_rank_for_ratio():
    assert linalg.rank_for_ratio(64, 64, 0.5) == 16  # exact product must not floor to 15
    assert linalg.rank_for_ratio(64, 64, 0.2) == math.floor(0.8 * 64 * 64 / 128)
    assert linalg.rank_for_ratio(32, 64, 0.6) == math.floor(0.4 * 32 * 64 / 96)
    assert linalg.rank_for_ratio(10, 10, 1.0) == 0
    assert linalg.rank_for_ratio(10, 10, -5.0) == 10  # clamped to min(m, n)
    with pytest.raises(NumericsError):
        linalg.rank_for_ratio(0, 10, 0.2)


# ---------------------------------------------------------------- SVD-LLM identities


@pytest.mark.parametrize("kind", ["cholesky", "eigen"])
@pytest.mark.parametrize("k", [1, 5, 12])
def test_truncation_loss_identity(kind, k):
    W, X, H = layer_data()
    wh = linalg.cholesky_whitener(H) if kind == "cholesky" else linalg.eigen_whitener(H)
    assert wh.fallback is None
    f = linalg.truncate(W, wh, k)
    assert f.A.shape == (24, k) and f.B.shape == (k, 16)
    direct = float(((W - f.A @ f.B) @ X).square().sum())
    assert f.loss == pytest.approx(direct, rel=1e-6)
    assert f.loss == pytest.approx(float(f.sigma[k:].square().sum()), rel=1e-12)
    assert linalg.layer_loss(W, f.A, f.B, H) == pytest.approx(direct, rel=1e-6)
    # symmetric split: both factors carry sqrt(sigma)
    assert torch.allclose(f.A.norm(dim=0).square(), f.sigma[:k], rtol=1e-8)


def test_eigen_and_cholesky_agree_on_pd_gram():
    W, _, H = layer_data()
    for k in (3, 8, 15):
        a = linalg.truncate(W, linalg.cholesky_whitener(H), k)
        b = linalg.truncate(W, linalg.eigen_whitener(H), k)
        assert rel_error(a.product(), b.product()) < 1e-8
        assert a.loss == pytest.approx(b.loss, rel=1e-8)


def test_full_rank_reconstructs():
    W, _, H = layer_data()
    k = 16
    s = torch.linspace(0.5, 2.0, 16, dtype=F64)
    r = torch.linspace(0.3, 3.0, 24, dtype=F64)
    for f in (
        linalg.truncate(W, linalg.cholesky_whitener(H), k),
        linalg.truncate(W, linalg.eigen_whitener(H), k),
        linalg.svd_truncate(W, k),
        linalg.input_scaled_truncate(W, s, k),
        linalg.output_scaled_truncate(W, r, k),
    ):
        assert rel_error(f.product(), W) < 1e-10
        assert f.loss == pytest.approx(0.0, abs=1e-12 * float(f.sigma.square().sum()))


def test_whitened_truncation_is_optimal_under_H():
    W, _, H = layer_data(seed=3)
    k = 6
    best = linalg.truncate(W, linalg.cholesky_whitener(H), k)
    plain = linalg.svd_truncate(W, k)
    assert best.loss < linalg.layer_loss(W, plain.A, plain.B, H)
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        A = best.A + 1e-3 * torch.randn(best.A.shape, generator=g, dtype=F64)
        assert linalg.layer_loss(W, A, best.B, H) >= best.loss


def test_plain_and_scaled_losses():
    W, _, _ = layer_data()
    k = 5
    f = linalg.svd_truncate(W, k)
    assert f.loss == pytest.approx(float((W - f.product()).square().sum()), rel=1e-10)
    s = torch.linspace(0.5, 2.0, 16, dtype=F64)
    f = linalg.input_scaled_truncate(W, s, k)
    assert f.loss == pytest.approx(float(((W - f.product()) * s).square().sum()), rel=1e-10)
    r = torch.linspace(0.3, 3.0, 24, dtype=F64)
    f = linalg.output_scaled_truncate(W, r, k)
    assert f.loss == pytest.approx(
        float((r[:, None] * (W - f.product())).square().sum()), rel=1e-10
    )
    # the scaling matters: heavier rows are reproduced better than by plain SVD
    plain = linalg.svd_truncate(W, k)
    err = lambda P: float((r[:, None] * (W - P)).square().sum())  # noqa: E731
    assert err(f.product()) < err(plain.product())


def test_whitener_algebra():
    W, _, H = layer_data()
    for wh in (
        linalg.cholesky_whitener(H),
        linalg.eigen_whitener(H),
        linalg.diag_whitener(torch.linspace(1, 2, 16, dtype=F64)),
        linalg.identity_whitener(16),
    ):
        assert rel_error(wh.unapply(wh.apply(W)), W) < 1e-10
        assert rel_error(wh.solve_gram(W @ wh.gram()), W) < 1e-8
    assert rel_error(linalg.cholesky_whitener(H).gram(), H) < 1e-12
    assert rel_error(linalg.eigen_whitener(H).gram(), H) < 1e-12


# ---------------------------------------------------------------- rank-deficient Grams


def _deficient():
    W, X, _ = layer_data(m=20, n=16, N=200)
    X = X.clone()
    X[3] = 0.0  # a dead feature
    X = X[:, :10]  # fewer tokens than features: rank 10 at most
    return W, X, X @ X.T


def test_cholesky_fallback_eigen_shift_is_logged_and_finite(caplog):
    W, X, H = _deficient()
    with caplog.at_level(logging.WARNING, logger="svdzoo.linalg"):
        wh = linalg.cholesky_whitener(H)
    assert wh.fallback == "eigen-shift"
    lam_min = float(torch.linalg.eigvalsh(H)[0])
    assert wh.shift >= -lam_min + 1e-6 * float(torch.diagonal(H).mean()) * 0.999
    assert any("fallback" in r.message for r in caplog.records)
    f = linalg.truncate(W, wh, 6)
    assert torch.isfinite(f.A).all() and torch.isfinite(f.B).all()
    # exact identity for the shifted Gram the whitener represents
    assert f.loss == pytest.approx(linalg.layer_loss(W, f.A, f.B, wh.gram()), rel=1e-6)


def test_cholesky_fallback_diag_damp_and_raise():
    _, _, H = _deficient()
    wh = linalg.cholesky_whitener(H, fallback="diag-damp")
    assert wh.fallback == "diag-damp"
    assert wh.shift == pytest.approx(0.05 * float(torch.diagonal(H).mean()))
    with pytest.raises(NumericsError):
        linalg.cholesky_whitener(H, fallback="raise")
    with pytest.raises(NumericsError):
        linalg.cholesky_whitener(H, fallback="nope")
    # a healthy Gram takes no fallback
    assert linalg.cholesky_whitener(layer_data()[2], fallback="raise").fallback is None


def test_eigen_whitener_on_rank_deficient_gram():
    W, X, H = _deficient()
    wh = linalg.eigen_whitener(H)
    assert wh.rank <= 10 and wh.fallback is not None
    for k in (3, 6):
        f = linalg.truncate(W, wh, k)
        direct = float(((W - f.product()) @ X).square().sum())
        assert f.loss == pytest.approx(direct, rel=1e-6, abs=1e-9 * float(H.trace()))
        # no damping: at least as good on the real data as the shifted Cholesky
        g = linalg.truncate(W, linalg.cholesky_whitener(H), k)
        assert direct <= float(((W - g.product()) @ X).square().sum()) * (1 + 1e-9)
    # rank above the whitened rank: zero loss, spare rank filled, shapes honest
    f = linalg.truncate(W, wh, 12)
    assert f.A.shape == (20, 12) and f.B.shape == (12, 16)
    assert float(((W - f.product()) @ X).square().sum()) < 1e-9 * float(H.trace())
    assert (W - f.product()).norm() < (W - linalg.truncate(W, wh, wh.rank).product()).norm()


def test_zero_gram_never_nan():
    W = layer_data()[0]
    H = torch.zeros(16, 16, dtype=F64)
    f = linalg.truncate(W, linalg.cholesky_whitener(H), 4)
    assert torch.isfinite(f.product()).all()
    f = linalg.truncate(W, linalg.eigen_whitener(H), 4)
    assert torch.isfinite(f.product()).all() and f.A.shape == (24, 4)


def test_bad_input_is_rejected_before_compute():
    W, _, H = layer_data()
    with pytest.raises(NumericsError, match="rank"):
        linalg.truncate(W, linalg.cholesky_whitener(H), 17)
    with pytest.raises(NumericsError, match="inputs"):
        linalg.truncate(W.T, linalg.cholesky_whitener(H), 2)
    with pytest.raises(NumericsError, match="NaN"):
        linalg.svd_truncate(W * float("nan"), 2)
    with pytest.raises(NumericsError, match="square"):
        linalg.cholesky_whitener(H[:, :3])
    with pytest.raises(NumericsError, match="positive"):
        linalg.input_scaled_truncate(W, torch.zeros(16, dtype=F64), 2)
    with pytest.raises(NumericsError):
        linalg.output_scaled_truncate(W, torch.ones(5, dtype=F64), 2)


# ---------------------------------------------------------------- AdaSVD compensation


def _shifted_inputs(seed: int = 0):
    """Original inputs X and the inputs X' a compressed earlier layer would produce."""
    W, X, H = layer_data(m=24, n=16, N=300, seed=seed)
    g = torch.Generator().manual_seed(seed + 100)
    E = 0.3 * torch.randn(16, 16, generator=g, dtype=F64) / 4
    Xp = X + E @ X + 0.05 * X.std() * torch.randn(X.shape, generator=g, dtype=F64)
    return W, X, Xp, H, Xp @ Xp.T, X @ Xp.T


def _objective(W, X, Xp, P):
    return float((W @ X - P @ Xp).square().sum())


def test_compensated_truncate_collapses_to_truncate_without_shift():
    W, _, H = layer_data()
    for k in (3, 9):
        a = linalg.compensated_truncate(W, H, H, k)
        b = linalg.truncate(W, linalg.cholesky_whitener(H), k)
        assert rel_error(a.product(), b.product()) < 1e-8
        c = linalg.compensated_truncate(W, H, H, k, whitening="cholesky")
        assert rel_error(c.product(), b.product()) < 1e-8


def test_compensated_truncate_beats_uncompensated_on_actual_inputs():
    W, X, Xp, H, Hp, C = _shifted_inputs()
    for k in (4, 10):
        comp = linalg.compensated_truncate(W, Hp, C, k)
        plain = linalg.truncate(W, linalg.cholesky_whitener(H), k)
        actual = linalg.truncate(W, linalg.cholesky_whitener(Hp), k)
        o = _objective(W, X, Xp, comp.product())
        assert o < _objective(W, X, Xp, plain.product())
        assert o < _objective(W, X, Xp, actual.product())
        # loss = objective minus the rank-independent part ||W X - T X'||^2
        T = linalg.compensated_target(W, C, linalg.eigen_whitener(Hp))
        assert comp.loss + _objective(W, X, Xp, T) == pytest.approx(o, rel=1e-8)


def test_als_is_a_fixed_point_at_the_whitened_optimum():
    W, _, H = layer_data()
    f = linalg.truncate(W, linalg.cholesky_whitener(H), 6)
    g = linalg.als_refine(W, f.A, f.B, H, H, iters=3)
    assert rel_error(g.product(), f.product()) < 1e-8
    assert g.loss == pytest.approx(f.loss, rel=1e-8)


def test_als_improves_plain_start_monotonically():
    W, X, _, H, _, _ = _shifted_inputs(1)
    f = linalg.svd_truncate(W, 5)
    losses = [linalg.layer_loss(W, f.A, f.B, H)]
    A, B = f.A, f.B
    for _ in range(4):
        g = linalg.als_refine(W, A, B, H, H, iters=1)
        A, B = g.A, g.B
        losses.append(g.loss)
    assert all(b <= a * (1 + 1e-10) for a, b in zip(losses, losses[1:], strict=False))
    assert losses[1] < 0.99 * losses[0]
    opt = linalg.truncate(W, linalg.cholesky_whitener(H), 5).loss
    assert losses[-1] >= opt * (1 - 1e-9)


def test_als_compensation_reduces_loss_on_compressed_inputs():
    W, X, Xp, H, Hp, C = _shifted_inputs(2)
    f = linalg.truncate(W, linalg.cholesky_whitener(H), 6)
    g = linalg.als_refine(W, f.A, f.B, Hp, C, iters=1)
    assert _objective(W, X, Xp, g.product()) < _objective(W, X, Xp, f.product())
    best = linalg.compensated_truncate(W, Hp, C, 6)
    assert g.loss >= best.loss * (1 - 1e-9)


def test_als_rejects_bad_shapes():
    W, _, H = layer_data()
    f = linalg.svd_truncate(W, 3)
    with pytest.raises(NumericsError):
        linalg.als_refine(W, f.A, f.B.T, H, H)
    with pytest.raises(NumericsError):
        linalg.als_refine(W, f.A, f.B, H, H[:4, :4])


# ---------------------------------------------------------------- ResSVD


def test_residual_with_same_whitening_is_plain_truncation():
    W, _, H = layer_data()
    wh = linalg.cholesky_whitener(H)
    for k1, k2 in ((2, 3), (5, 5), (0, 4)):
        r = linalg.residual_truncate(W, wh, wh, k1, k2)
        p = linalg.truncate(W, wh, k1 + k2)
        assert r.A.shape == (24, k1 + k2) and r.B.shape == (k1 + k2, 16)
        assert rel_error(r.product(), p.product()) < 1e-8
        assert r.loss == pytest.approx(p.loss, rel=1e-6)


def test_residual_with_different_stages():
    W, X, Xp, H, Hp, C = _shifted_inputs(3)
    wh = linalg.cholesky_whitener(H)
    # plain first stage, whitened second: never better than the joint whitened optimum
    r = linalg.residual_truncate(W, None, wh, 4, 4)
    assert r.loss >= linalg.truncate(W, wh, 8).loss * (1 - 1e-9)
    assert r.loss == pytest.approx(linalg.layer_loss(W, r.A, r.B, H), rel=1e-6)
    # residual fitted to the compressed model's inputs reduces that objective
    whp = linalg.eigen_whitener(Hp)
    T = linalg.compensated_target(W, C, whp)
    comp = linalg.residual_truncate(W, wh, whp, 4, 4, target=T)
    base = linalg.truncate(W, wh, 8)
    assert _objective(W, X, Xp, comp.product()) < _objective(W, X, Xp, base.product())
    with pytest.raises(NumericsError):
        linalg.residual_truncate(W, wh, wh, 10, 10)


@pytest.mark.parametrize("shape", [(96, 64), (64, 160)])
def test_float32_svd_keeps_the_layer_loss_within_a_thousandth(shape):
    """Issue 16's float32 path: only the SVD of `W S` runs in float32; on an anisotropic
    Gram (activations spanning four decades) the factors' float64 layer loss stays within
    0.1 % of the float64 path's, and the factors come back in float64."""
    g = torch.Generator().manual_seed(11)
    m, n = shape
    W = torch.randn(m, n, generator=g, dtype=F64)
    X = torch.randn(n, 4 * n, generator=g, dtype=F64) * torch.logspace(0, -4, n, dtype=F64)[:, None]
    H = X @ X.T
    S = linalg.cholesky_whitener(H)
    for k in (4, 20, 40):
        ref = linalg.truncate(W, S, k)
        got = linalg.truncate(W, S, k, svd=linalg.whitened_svd(W, S, "float32"))
        assert got.A.dtype == F64
        loss = linalg.layer_loss(W, got.A, got.B, H)
        assert loss == pytest.approx(linalg.layer_loss(W, ref.A, ref.B, H), rel=1e-3)
        assert loss >= ref.loss * (1 - 1e-9)  # float64's is the optimum
    with pytest.raises(linalg.NumericsError, match="precision"):
        linalg.whitened_svd(W, S, "float16")


# ---------------------------------------------------------------- device


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    W, X, H = layer_data(m=96, n=64, N=400)
    Wc, Hc = W.cuda(), H.cuda()
    for make in (linalg.cholesky_whitener, linalg.eigen_whitener):
        a = linalg.truncate(W, make(H), 10)
        b = linalg.truncate(Wc, make(Hc), 10)
        assert b.A.device.type == "cuda" and b.A.dtype == F64
        assert rel_error(b.product().cpu(), a.product()) < 1e-8
        assert b.loss == pytest.approx(a.loss, rel=1e-8)
    # rank-deficient fallback stays finite on the device
    Hd = Hc.clone()
    Hd[5, :] = 0.0
    Hd[:, 5] = 0.0
    wh = linalg.cholesky_whitener(Hd)
    assert wh.fallback == "eigen-shift"
    assert torch.isfinite(linalg.truncate(Wc, wh, 10).product()).all()
    # compensation, ALS, residual and column split run where the inputs live
    W2, X2, Xp, H2, Hp, C = _shifted_inputs(4)
    cpu = linalg.compensated_truncate(W2, Hp, C, 6)
    gpu = linalg.compensated_truncate(W2.cuda(), Hp.cuda(), C.cuda(), 6)
    assert rel_error(gpu.product().cpu(), cpu.product()) < 1e-8
    f = linalg.svd_truncate(W2.cuda(), 6)
    g = linalg.als_refine(W2.cuda(), f.A, f.B, Hp.cuda(), C.cuda())
    assert g.A.device.type == "cuda" and g.loss < linalg.layer_loss(W2, f.A.cpu(), f.B.cpu(), H2)
    Wo, _, Ho = outlier_data()
    s_cpu = column_split.column_preserving_split(Wo, Ho, 6)
    s_gpu = column_split.column_preserving_split(Wo.cuda(), Ho.cuda(), 6)
    assert s_gpu is not None and s_cpu is not None
    assert torch.equal(s_gpu.kept_idx.cpu(), s_cpu.kept_idx)
    assert s_gpu.loss == pytest.approx(s_cpu.loss, rel=1e-8)


@pytest.mark.parametrize("shape", [(90, 40), (40, 90), (60, 60)])
def test_top_svd_matches_the_full_svd_on_the_leading_directions(shape):
    g = torch.Generator().manual_seed(7)
    M = torch.randn(*shape, generator=g, dtype=torch.float64)
    M = M * torch.logspace(0, -4, shape[1], dtype=torch.float64)  # a decaying spectrum
    U, S, Vh = torch.linalg.svd(M, full_matrices=False)
    for k in (0, 1, 5, 12):
        u, s, vh = linalg.top_svd(M, k)
        assert u.shape == (shape[0], k) and vh.shape == (k, shape[1])
        assert torch.allclose(s, S[:k], rtol=1e-10, atol=1e-12 * float(S[0]))
        ref = (U[:, :k] * S[:k]) @ Vh[:k]
        assert torch.allclose((u * s) @ vh, ref, atol=1e-10 * float(S[0]))


def test_residual_stage_by_top_svd_equals_the_full_svd():
    g = torch.Generator().manual_seed(3)
    W = torch.randn(80, 64, generator=g, dtype=torch.float64)
    X = torch.randn(64, 300, generator=g, dtype=torch.float64)
    wh = linalg.cholesky_whitener(X @ X.T)
    fast = linalg.residual_truncate(W, wh, linalg.identity_whitener(64), 20, 3)  # top_svd path
    s1 = linalg.truncate(W, wh, 20)
    s2 = linalg.svd_truncate(W - s1.A @ s1.B, 3)
    assert torch.allclose(fast.A @ fast.B, s1.A @ s1.B + s2.A @ s2.B, atol=1e-10)


def test_auto_precision_is_the_gram_eigh_on_gpus_only():
    """Issue 16's default: the Gram's float64 eigendecomposition where the SVD is slow
    (GPUs: 10x on an H200), the float64 SVD on CPUs, where the recorded results were made;
    an explicit choice is kept on any device. Duo-SVD's probes resolve on their own."""
    assert linalg.resolve_precision("auto", "cpu") == "float64"
    assert linalg.resolve_precision("auto", torch.device("cuda", 0)) == "float64-eigh"
    assert linalg.resolve_precision("float64", "cuda") == "float64"
    assert linalg.resolve_precision("float32", "cpu") == "float32"
    assert linalg.resolve_precision("float64-eigh", "cpu") == "float64-eigh"
    assert linalg.resolve_probe_precision("auto", "cuda") == "float32"
    assert linalg.resolve_probe_precision("auto", "cpu") == "float64"
    with pytest.raises(linalg.NumericsError, match="precision"):
        linalg.resolve_precision("bf16", "cpu")
    with pytest.raises(linalg.NumericsError, match="precision"):
        linalg.resolve_probe_precision("float64-eigh", "cpu")  # no meaning for a probe
    g = torch.Generator().manual_seed(2)
    W = torch.randn(12, 9, generator=g, dtype=F64)
    X = torch.randn(9, 30, generator=g, dtype=F64)
    S = linalg.cholesky_whitener(X @ X.T)
    auto, f64 = linalg.whitened_svd(W, S, "auto"), linalg.whitened_svd(W, S, "float64")
    assert all(torch.equal(a, b) for a, b in zip(auto, f64, strict=True))


@pytest.mark.parametrize("shape", [(40, 24), (24, 40), (30, 30)])
def test_gram_eigh_svd_matches_the_float64_svd(shape):
    """`float64-eigh` (the GPU default): the same truncations as the float64 SVD on an
    ill-conditioned whitened matrix, tall, wide and square: the kept factors' product and
    the loss to 1e-10, the spectrum to rounding of the largest value, and `truncate`'s
    factors stay a rank-k projection of `W S` (no NaN from a zero singular value)."""
    m, n = shape
    g = torch.Generator().manual_seed(5)
    W = torch.randn(m, n, generator=g, dtype=F64)
    X = torch.randn(n, 4 * n, generator=g, dtype=F64) * torch.logspace(0, -4, n, dtype=F64)[:, None]
    S = linalg.cholesky_whitener(X @ X.T)
    ref = linalg.whitened_svd(W, S, "float64")
    eig = linalg.whitened_svd(W, S, "float64-eigh")
    assert torch.allclose(eig[1], ref[1], rtol=0, atol=1e-12 * float(ref[1][0]))
    spec = linalg.whitened_spectrum(W, S, "float64-eigh")
    assert torch.allclose(spec, ref[1], rtol=0, atol=1e-12 * float(ref[1][0]))
    for k in (1, min(m, n) // 2, min(m, n) - 1):
        a = linalg.truncate(W, S, k, svd=ref)
        b = linalg.truncate(W, S, k, svd=eig)
        assert torch.allclose(a.A @ a.B, b.A @ b.B, rtol=0, atol=1e-10 * float(W.abs().max()))
        assert b.loss == pytest.approx(a.loss, rel=1e-10, abs=1e-12 * float(ref[1][0]) ** 2)
    # a rank-deficient W: zero singular values give zero directions, never NaN
    W2 = W[:, :1] @ torch.randn(1, n, generator=g, dtype=F64)
    U, s2, Vh = linalg.whitened_svd(W2, S, "float64-eigh")
    assert all(bool(torch.isfinite(t).all()) for t in (U, s2, Vh))
    t = linalg.truncate(W2, S, 3, svd=(U, s2, Vh))
    assert torch.allclose(t.A @ t.B, W2, atol=1e-9 * float(W2.abs().max()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_all_finite_agrees_with_isfinite_all(dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(257, 33, generator=g).to(dtype)
    assert linalg.all_finite(x)
    for bad in (math.nan, math.inf, -math.inf):
        for at in (0, 4000, x.numel() - 1):
            y = x.clone()
            y.view(-1)[at] = bad
            assert not linalg.all_finite(y), (bad, at)
    both = x.clone()
    both.view(-1)[[3, 9]] = torch.tensor([math.inf, -math.inf], dtype=dtype)  # sum: NaN
    assert not linalg.all_finite(both)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_all_finite_is_not_fooled_by_a_sum_that_overflows(dtype):
    big = torch.full((64,), torch.finfo(dtype).max / 2, dtype=dtype)
    assert not bool(torch.isfinite(big.sum()))  # the one-pass test fails; the fallback decides
    assert linalg.all_finite(big)
    big[7] = math.nan
    assert not linalg.all_finite(big)


def test_all_finite_of_empty_and_integer_tensors():
    assert linalg.all_finite(torch.empty(0, 5))
    assert linalg.all_finite(torch.arange(10))
