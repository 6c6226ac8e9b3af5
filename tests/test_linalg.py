"""The numerical core: identities, fallbacks and the collapse traps of methods.md."""

from __future__ import annotations

import logging
import math

import pytest
import torch

from svdzoo import linalg
from svdzoo.linalg import NumericsError

F64 = torch.float64


def _data(m: int = 24, n: int = 16, N: int = 200, seed: int = 0):
    """A weight and correlated, unevenly scaled inputs (like real activations)."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(m, n, generator=g, dtype=F64)
    mix = torch.randn(n, n, generator=g, dtype=F64) / math.sqrt(n)
    scale = torch.logspace(0, 1.5, n, dtype=F64)
    X = (torch.eye(n, dtype=F64) + mix) @ (
        scale[:, None] * torch.randn(n, N, generator=g, dtype=F64)
    )
    return W, X, X @ X.T


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


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
    W, X, H = _data()
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
    W, _, H = _data()
    for k in (3, 8, 15):
        a = linalg.truncate(W, linalg.cholesky_whitener(H), k)
        b = linalg.truncate(W, linalg.eigen_whitener(H), k)
        assert _rel(a.product(), b.product()) < 1e-8
        assert a.loss == pytest.approx(b.loss, rel=1e-8)


def test_full_rank_reconstructs():
    W, _, H = _data()
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
        assert _rel(f.product(), W) < 1e-10
        assert f.loss == pytest.approx(0.0, abs=1e-12 * float(f.sigma.square().sum()))


def test_whitened_truncation_is_optimal_under_H():
    W, _, H = _data(seed=3)
    k = 6
    best = linalg.truncate(W, linalg.cholesky_whitener(H), k)
    plain = linalg.svd_truncate(W, k)
    assert best.loss < linalg.layer_loss(W, plain.A, plain.B, H)
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        A = best.A + 1e-3 * torch.randn(best.A.shape, generator=g, dtype=F64)
        assert linalg.layer_loss(W, A, best.B, H) >= best.loss


def test_plain_and_scaled_losses():
    W, _, _ = _data()
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
    W, _, H = _data()
    for wh in (
        linalg.cholesky_whitener(H),
        linalg.eigen_whitener(H),
        linalg.diag_whitener(torch.linspace(1, 2, 16, dtype=F64)),
        linalg.identity_whitener(16),
    ):
        assert _rel(wh.unapply(wh.apply(W)), W) < 1e-10
        assert _rel(wh.solve_gram(W @ wh.gram()), W) < 1e-8
    assert _rel(linalg.cholesky_whitener(H).gram(), H) < 1e-12
    assert _rel(linalg.eigen_whitener(H).gram(), H) < 1e-12


# ---------------------------------------------------------------- rank-deficient Grams


def _deficient():
    W, X, _ = _data(m=20, n=16, N=200)
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
    assert linalg.cholesky_whitener(_data()[2], fallback="raise").fallback is None


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
    W = _data()[0]
    H = torch.zeros(16, 16, dtype=F64)
    f = linalg.truncate(W, linalg.cholesky_whitener(H), 4)
    assert torch.isfinite(f.product()).all()
    f = linalg.truncate(W, linalg.eigen_whitener(H), 4)
    assert torch.isfinite(f.product()).all() and f.A.shape == (24, 4)


def test_bad_input_is_rejected_before_compute():
    W, _, H = _data()
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
    W, X, H = _data(m=24, n=16, N=300, seed=seed)
    g = torch.Generator().manual_seed(seed + 100)
    E = 0.3 * torch.randn(16, 16, generator=g, dtype=F64) / 4
    Xp = X + E @ X + 0.05 * X.std() * torch.randn(X.shape, generator=g, dtype=F64)
    return W, X, Xp, H, Xp @ Xp.T, X @ Xp.T


def _objective(W, X, Xp, P):
    return float((W @ X - P @ Xp).square().sum())


def test_compensated_truncate_collapses_to_truncate_without_shift():
    W, _, H = _data()
    for k in (3, 9):
        a = linalg.compensated_truncate(W, H, H, k)
        b = linalg.truncate(W, linalg.cholesky_whitener(H), k)
        assert _rel(a.product(), b.product()) < 1e-8
        c = linalg.compensated_truncate(W, H, H, k, whitening="cholesky")
        assert _rel(c.product(), b.product()) < 1e-8


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
    W, _, H = _data()
    f = linalg.truncate(W, linalg.cholesky_whitener(H), 6)
    g = linalg.als_refine(W, f.A, f.B, H, H, iters=3)
    assert _rel(g.product(), f.product()) < 1e-8
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
    W, _, H = _data()
    f = linalg.svd_truncate(W, 3)
    with pytest.raises(NumericsError):
        linalg.als_refine(W, f.A, f.B.T, H, H)
    with pytest.raises(NumericsError):
        linalg.als_refine(W, f.A, f.B, H, H[:4, :4])


# ---------------------------------------------------------------- ResSVD


def test_residual_with_same_whitening_is_plain_truncation():
    W, _, H = _data()
    wh = linalg.cholesky_whitener(H)
    for k1, k2 in ((2, 3), (5, 5), (0, 4)):
        r = linalg.residual_truncate(W, wh, wh, k1, k2)
        p = linalg.truncate(W, wh, k1 + k2)
        assert r.A.shape == (24, k1 + k2) and r.B.shape == (k1 + k2, 16)
        assert _rel(r.product(), p.product()) < 1e-8
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


# ---------------------------------------------------------------- Duo-SVD


def test_column_counts_never_exceed_plain_budget():
    for m, n in ((64, 64), (32, 64), (172, 64), (64, 172)):
        for k in range(1, min(m, n) + 1, 3):
            for dr in range(0, k + 1):
                c, kr = linalg.column_counts(m, n, k, dr)
                assert 0 <= c <= n and 0 <= kr <= k
                assert c * m + kr * (m + n - c) <= k * (m + n)
    # the paper's exchange rate where rounding is harmless
    c, kr = linalg.column_counts(64, 64, 36, 4)
    assert (c, kr) == (16, 32) and c * 64 + kr * (128 - c) == 36 * 128
    # rounding up would overshoot (round(10.67) = 11 costs 2576 > 2560): lowered to 10
    assert linalg.column_counts(64, 64, 20, 4) == (10, 16)


OUTLIERS = [2, 5, 11, 17, 23, 29, 30, 36]


def _outlier_data(seed=0):
    """More outlier features than the rank can absorb: Duo-SVD's motivating case.

    (A handful of outliers would simply take the top singular directions, leaving no
    residual on their columns to preserve.)"""
    g = torch.Generator().manual_seed(seed)
    m, n, N = 48, 40, 400
    W = torch.randn(m, n, generator=g, dtype=F64)
    X = torch.randn(n, N, generator=g, dtype=F64)
    X[OUTLIERS] *= 10.0
    return W, X, X @ X.T


def test_column_split_pays_off_on_outlier_features():
    W, X, H = _outlier_data()
    k = 6
    split = linalg.column_preserving_split(W, H, k)
    assert split is not None
    m, n = W.shape
    assert split.params <= k * (m + n)
    assert split.params == split.n_kept * m + split.rank * (m + n - split.n_kept)
    assert torch.equal(split.kept_idx, torch.sort(split.kept_idx).values)
    # the kept columns are the outliers (here all but one: the search's optimum, dr 5 of a
    # curve with a bump at 3, keeps 9 columns, and outlier 5 is absorbed by the baseline)
    kept = set(split.kept_idx.tolist())
    assert split.n_kept > 0 and len(kept & set(OUTLIERS)) >= min(split.n_kept, len(OUTLIERS)) - 1
    both = torch.cat([split.kept_idx, split.rest_idx]).sort().values
    assert torch.equal(both, torch.arange(n))
    P = split.product()
    assert torch.equal(P[:, split.kept_idx], W[:, split.kept_idx])
    direct = float(((W - P) @ X).square().sum())
    assert split.loss == pytest.approx(direct, rel=1e-6)
    assert split.loss < 0.5 * split.baseline_loss  # measured: 0.19
    assert split.baseline_loss == pytest.approx(
        linalg.truncate(W, linalg.cholesky_whitener(H), k).loss, rel=1e-10
    )


def _rest_case(seed: int, m: int, n: int, width: int, dead: int | None = None):
    """`(W, H, S, (U, sigma, Vh), order)` for the rest-problem tests: a random layer, the
    Gram of `width * n` random inputs (the feature at position `dead` of `order` zeroed,
    so every block holding it is singular) and its whitened SVD."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(m, n, generator=g, dtype=F64)
    X = torch.randn(n, width * n, generator=g, dtype=F64)
    order = torch.randperm(n, generator=g)
    if dead is not None:
        X[order[dead]] = 0.0
    H = X @ X.T
    S = linalg.cholesky_whitener(H, fallback="diag-damp")
    return W, H, S, linalg.whitened_svd(W, S), order


@pytest.mark.parametrize("shape", [(10, 20), (20, 20), (30, 20)])
def test_rest_problem_matches_whitening_the_rest(shape):
    """The split search's evaluator: the rest's loss in the whitened SVD's coordinates, by
    the low-rank correction (few kept; updated from the candidates before it, up and down,
    with the kept columns' coordinates from the Cholesky factor) or directly
    (more kept than left), and reduced to a Ritz subspace, equals (Ritz: bounds from above)
    whitening the rest and truncating it."""
    m, n = shape
    W, H, S, (U, sigma, Vh), order = _rest_case(sum(shape), m, n, 3)
    exact = linalg._RestProblem(W, H, U, sigma, order, None, Vh=Vh, L=S.factor)
    ritz = linalg._RestProblem(W, H, U, sigma, order, 3, Vh=Vh, L=S.factor)
    # a zero loss comes out of cancellations: its round-off is relative to the energy
    # `tr(W H W^T)` (1.4e-12 against 0 with one BLAS build), not to zero
    floor = 1e-13 * float((W @ H * W).sum())
    for c, k in ((2, 3), (4, 4), (1, 0), (14, 2), (17, 3), (3, 2), (5, 1)):
        rest = order[c:].sort().values
        want = linalg.truncation_loss(W[:, rest], linalg.cholesky_whitener(H[rest][:, rest]), k)
        assert exact.loss(c, k) == pytest.approx(want, rel=1e-9, abs=floor)
        assert ritz.loss(c, k) >= want * (1 - 1e-9)
        for problem in (exact, ritz):
            A, B, loss = problem.factors(c, rest, k)
            D = W[:, rest] - A @ B
            assert loss == pytest.approx(float((D @ H[rest][:, rest] * D).sum()), rel=1e-8)


@pytest.mark.parametrize("singular", [False, True])
def test_rest_problem_own_side_matches_whitening_the_rest(singular):
    """The rest's own side (`_own`: `S_R^T (W^T W)_RR S_R`) has the whitened rest's loss,
    for any kept prefix: from leading blocks of one Cholesky factor of the reordered `H`,
    or, when that fails (a dead feature), from each rest's own `rest_factor` (the
    reference's, with its fallback). `own_factors` returns factors whose layer loss is the
    one reported and equals plain truncation of the rest; each formed `G` is reused."""
    m, n = 30, 24
    W, H, S, (U, sigma, Vh), order = _rest_case(5, m, n, 3, dead=22 if singular else None)
    calls = []

    def whiten(rest):
        return linalg.cholesky_whitener(H[rest][:, rest], fallback="diag-damp")

    def rest_factor(rest):
        calls.append(rest)
        return whiten(rest).factor

    problem = linalg._RestProblem(
        W, H, U, sigma, order, None, Vh=Vh, L=S.factor, rest_factor=rest_factor
    )
    cases = ((2, 3), (10, 1), (20, 2), (5, 0))
    for c, k in cases:
        rest = order[c:].sort().values
        Wr, Sr = W[:, rest], whiten(rest)
        want = linalg.truncation_loss(Wr, Sr, k)
        G, tr = problem._own(c)
        top = torch.linalg.eigvalsh(G).flip(0)[:k].sum()
        assert tr - float(top) == pytest.approx(want, rel=1e-9)
        if k:
            A, B, loss = problem.own_factors(c, rest, k)
            D = Wr - A @ B  # the loss on the Gram the whitener represents (damped if singular)
            assert loss == pytest.approx(float((D @ Sr.gram() * D).sum()), rel=1e-8)
            assert loss == pytest.approx(linalg.truncate(Wr, Sr, k).loss, rel=1e-9)
    assert (problem._own_factor is None) == singular
    assert len(calls) == (len(cases) if singular else 0)  # own_factors reused its G


def test_own_side_updates_match_forming_afresh():
    """`_own_update` (a formed `G` moved to a nearby kept prefix by a rank-`2|w|` term, in
    either direction) gives the `G` that `S_R^T (W^T W)_RR S_R` forms afresh, along a
    search-like walk whose later candidates are updated from updated ones; and the walk
    does use updates."""
    W, H, S, (U, sigma, Vh), order = _rest_case(8, 50, 80, 2)
    problem = linalg._RestProblem(
        W, H, U, sigma, order, None, Vh=Vh, L=S.factor, rest_factor=lambda r: r
    )
    updated = 0
    for c in (30, 44, 40, 52, 51, 47, 60, 20):
        updated += problem._own_form_cost(c)[0] is not None and bool(problem._own_formed)
        G, tr = problem._own(c)
        rest = order[c:].flip(0)
        Lr = torch.linalg.cholesky(H[rest][:, rest])
        want = Lr.T @ (W[:, rest].T @ W[:, rest]) @ Lr
        scale = float(want.abs().max())
        assert torch.allclose(G, want, rtol=0, atol=1e-12 * scale), c
        assert tr == pytest.approx(float(want.trace()), rel=1e-12)
    assert updated >= 5


def test_own_side_block_that_stops_factoring_falls_back():
    """`_prepare_own` factors only the leading block the largest rest needs; when a later,
    larger rest takes in a dead feature, its extension fails and every later candidate is
    whitened by `rest_factor` (the reference's fallback), while the earlier ones keep
    their exact `G`: each loss still equals whitening that rest afresh."""
    # the dead feature is in the rest of every candidate keeping fewer than 6 columns
    W, H, S, (U, sigma, Vh), order = _rest_case(9, 30, 24, 3, dead=5)

    def whiten(rest):
        return linalg.cholesky_whitener(H[rest][:, rest], fallback="diag-damp")

    problem = linalg._RestProblem(
        W, H, U, sigma, order, None, Vh=Vh, L=S.factor, rest_factor=lambda r: whiten(r).factor
    )
    for c, k, fast in ((10, 3, True), (8, 2, True), (3, 2, False), (9, 4, False), (10, 1, False)):
        rest = order[c:].sort().values
        G, tr = problem._own(c)
        top = torch.linalg.eigvalsh(G).flip(0)[:k].sum()
        want = linalg.truncation_loss(W[:, rest], whiten(rest), k)
        assert tr - float(top) == pytest.approx(want, rel=1e-9), c
        assert (problem._own_factor is not None) == fast


def test_top_eigh_matches_float64_eigh():
    """`_top_eigh` (float32 basis, float64 subspace iterations and Rayleigh-Ritz, checked by
    its residual) gives the top eigenpairs of a float64 `eigh` on a matrix whose spectrum
    spans twelve decades: values to 1e-12 of the largest, the truncation loss (the trace
    past them) to 1e-10, orthonormal vectors spanning the same subspace (to 1e-6: float32's
    angle after two subspace iterations; it enters the values squared)."""
    g = torch.Generator().manual_seed(3)
    r = 200
    Q = torch.linalg.qr(torch.randn(r, r, generator=g, dtype=F64)).Q
    lam = torch.logspace(6, -6, r, dtype=F64)
    T = (Q * lam) @ Q.T
    for k in (1, 20, 30, 60, 150):  # 30: the largest that iterates at r = 200
        mu, E = linalg._top_eigh(T, k)
        want, V = torch.linalg.eigh(T)
        want, V = want.flip(0)[:k], V.flip(1)[:, :k]
        assert torch.allclose(mu, want, rtol=0, atol=1e-12 * float(lam[0]))
        assert torch.allclose(E.T @ E, torch.eye(k, dtype=F64), atol=1e-12)
        tail = float(T.trace() - want.sum())
        assert float(T.trace() - mu.sum()) == pytest.approx(tail, rel=1e-10)
        assert float(torch.linalg.matrix_norm(E @ E.T - V @ V.T, 2)) < 1e-6


@pytest.mark.parametrize("k", [10, 40, 60])
def test_top_eigh_keeps_float64_accuracy_where_float32_cannot_resolve_the_spectrum(k):
    """Outlier directions (1e10) above a tail float32 cannot resolve (1e3 down to 1, under
    its error of ~1e4): the float32 basis there is noise, and two fixed subspace
    iterations had left the trace past the top `k` 0.06-0.5 % above a float64 `eigh`'s
    (a Duo-SVD split's factors that much worse than the reference's). `_top_eigh` sees that
    float32 shows no gap at `k` and solves in float64."""
    g = torch.Generator().manual_seed(5)
    r = 160
    Q = torch.linalg.qr(torch.randn(r, r, generator=g, dtype=F64)).Q
    lam = torch.cat([torch.full((4,), 1e10, dtype=F64), torch.logspace(3, 0, r - 4, dtype=F64)])
    T = (Q * lam) @ Q.T
    T = 0.5 * (T + T.T)
    mu, E = linalg._top_eigh(T, k)
    want = float(torch.linalg.eigvalsh(T).flip(0)[k:].sum())
    assert float(T.trace() - mu.sum()) == pytest.approx(want, rel=1e-7)
    assert torch.allclose(E.T @ E, torch.eye(k, dtype=F64), atol=1e-12)
    assert torch.allclose(E.T @ T @ E, torch.diag(mu), rtol=0, atol=1e-12 * 1e10)


@pytest.mark.parametrize("n", [1, 5, 127, 128, 129, 300])
def test_lower_congruence_is_the_plain_product(n):
    """`_lower_congruence` (block products that skip the triangular factor's zeros and the
    upper half of the symmetric result) equals `S^T A S` to rounding, exactly symmetric."""
    g = torch.Generator().manual_seed(n)
    M = torch.randn(n, n, generator=g, dtype=F64)
    A = M @ M.T
    S = torch.linalg.cholesky(A + n * torch.eye(n, dtype=F64))
    got = linalg._lower_congruence(S, A)
    want = S.T @ A @ S
    assert torch.allclose(got, want, rtol=0, atol=1e-14 * float(want.abs().max()))
    assert torch.equal(got, got.T)


def test_times_lower_rows_is_the_plain_product():
    """`_times_lower_rows` (blocks of rows in index order, each against only the columns up
    to its largest index) equals `M @ L[idx].T`, in `idx`'s order."""
    g = torch.Generator().manual_seed(2)
    n = 50
    L = torch.tril(torch.randn(n, n, generator=g, dtype=F64))
    M = torch.randn(7, n, generator=g, dtype=F64)
    for idx in (torch.randperm(n, generator=g)[:23], torch.tensor([49, 0, 3]), torch.arange(n)):
        for block in (1, 4, 128):
            got = linalg._times_lower_rows(M, L, idx, block=block)
            assert torch.allclose(got, M @ L[idx].T, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", [(48, 40), (40, 96), (72, 40), (64, 64)])
@pytest.mark.parametrize(
    "search", ["exact", "ritz-0", "ritz-0.25", "exact-own", "exact-coordinates"]
)
def test_fast_split_searches_match_the_reference(shape, search, monkeypatch):
    """Issue 16's fast searches give the same split as whitening every candidate's rest
    afresh, a loss within 1e-9 (exact) or 1e-6 (Ritz) of it, and report the exact loss of
    the factors they return (so Ritz can only be above the optimum, by Ky Fan). `-own` and
    `-coordinates` force every candidate to one side of the cost model."""
    if search.endswith(("-own", "-coordinates")):
        search, side = search.split("-")
        weight = 0.0 if side == "own" else math.inf
        monkeypatch.setattr(linalg._RestProblem, "OWN_SIDE_SOLVE", weight)
        monkeypatch.setattr(linalg._RestProblem, "OWN_SIDE_FORM", weight)
        monkeypatch.setattr(linalg._RestProblem, "OWN_SIDE_GRAM", 0.0)
        monkeypatch.setattr(linalg._RestProblem, "OWN_SIDE_CHOLESKY", 0.0)
    g = torch.Generator().manual_seed(sum(shape))
    m, n = shape
    f64 = dict(generator=g, dtype=F64)
    W = torch.randn(m, n, **f64)
    X = torch.randn(n, 4 * n, **f64)
    X[torch.randperm(n, generator=g)[: n // 5]] *= 10.0  # outlier features: splits pay
    H = X @ X.T
    kind, _, over = search.partition("-")
    options = dict(search=kind, oversample=float(over or 0.25))
    seen = 0
    for k in (4, 6, min(m, n) // 2):
        ref = linalg.column_preserving_split(W, H, k, search="reference", accept=0.0)
        fast = linalg.column_preserving_split(W, H, k, accept=0.0, **options)
        assert (ref is None) == (fast is None)
        if ref is None:
            continue
        seen += 1
        assert fast.delta_r == ref.delta_r
        assert torch.equal(fast.kept_idx, ref.kept_idx)
        assert fast.loss == pytest.approx(ref.loss, rel=1e-9 if kind == "exact" else 1e-6)
        assert fast.loss >= ref.loss * (1 - 1e-9)
        direct = float(((W - fast.product()) @ X).square().sum())
        assert fast.loss == pytest.approx(direct, rel=1e-8)
        assert _rel(fast.product(), ref.product()) < 1e-3
    assert seen >= 1


@pytest.mark.parametrize("shape", [(85, 38), (40, 30), (30, 40)])
@pytest.mark.parametrize("schedule", linalg.SCHEDULES)
def test_fast_split_search_takes_the_reference_split_where_the_rest_fits_its_rank(shape, schedule):
    """At a rank past the break-even (`k > m n / (m + n)`, which no compression ratio asks
    for, but `column_preserving_split` accepts up to `min(m, n)`), late candidates keep so
    many columns that the rest fits in its rank (`k' = min(m, n - c)`): its loss is exactly
    0, as the reference's truncation drops nothing. The fast searches solved those
    candidates too and got round-off (1e-21-1e-9) instead of 0, which the schedules then
    compared, so they picked other splits than the reference (360 of 720 cases of a sweep
    over these shapes, 40 seeds)."""
    g = torch.Generator().manual_seed(0)
    m, n = shape
    W = torch.randn(m, n, generator=g, dtype=F64)
    X = torch.randn(n, 4 * n, generator=g, dtype=F64)
    X[torch.randperm(n, generator=g)[: n // 5]] *= 10.0
    H = X @ X.T
    energy = float(torch.trace(W @ H @ W.T))  # the chosen split's factors: round-off of it
    for k in (min(m, n) - 4, min(m, n) - 8):
        ref = linalg.column_preserving_split(W, H, k, search="reference", schedule=schedule)
        for probes in ("float32", "float64"):
            fast = linalg.column_preserving_split(W, H, k, schedule=schedule, probes=probes)
            assert (fast is None) == (ref is None)
            if ref is not None:
                assert fast.delta_r == ref.delta_r
                assert fast.loss == pytest.approx(ref.loss, rel=1e-9, abs=1e-13 * energy)


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


def test_split_search_is_refused_unless_known():
    W, _, H = _outlier_data()
    with pytest.raises(linalg.NumericsError, match="search"):
        linalg.column_preserving_split(W, H, 6, search="fast")
    with pytest.raises(linalg.NumericsError, match="oversample"):
        linalg.column_preserving_split(W, H, 6, oversample=-1.0)


def test_fast_split_searches_on_a_shifted_whitener_fall_back_to_the_reference():
    """The fast searches need a Cholesky factor of `H` itself; a rank-deficient Gram is
    factored shifted, so the reference search runs (same bytes as asking for it)."""
    W, X, H = _outlier_data()
    H = H.clone()
    H[3, :] = 0.0
    H[:, 3] = 0.0
    S = linalg.cholesky_whitener(H)
    assert S.shift > 0 or S.fallback is not None
    b = linalg.column_preserving_split(W, H, 6, S=S, search="reference")
    for search in ("ritz", "exact"):
        a = linalg.column_preserving_split(W, H, 6, S=S, search=search)
        assert (a is None) == (b is None)
        if a is not None:
            assert torch.equal(a.A, b.A) and torch.equal(a.B, b.B)


def test_column_split_rejected_when_it_cannot_help():
    g = torch.Generator().manual_seed(5)
    W = torch.randn(30, 6, generator=g, dtype=F64) @ torch.randn(6, 20, generator=g, dtype=F64)
    _, X, H = _data(m=30, n=20, N=100)
    assert linalg.column_preserving_split(W, H, 6) is None  # exact at rank 6: nothing to gain
    assert linalg.column_preserving_split(W, H, 0) is None


@pytest.mark.parametrize("hi", [0, 1, 2, 3, 4, 7, 20, 54, 55, 56, 251])
def test_golden_int_finds_the_minimum_of_unimodal(hi):
    """The integer golden-section (Fibonacci) search finds the argmin of any unimodal
    function, including one at either end, with one evaluation per bracket step: at most
    `log_phi(hi) + 3` evaluations (13 at hi = 251, the rounded continuous form took 17)."""
    phi = (1 + 5**0.5) / 2
    for target in sorted({0, 1, hi // 3, hi // 2, hi - 1, hi} & set(range(hi + 1))):
        calls: list[int] = []

        def f(x, t=target, seen=calls):
            seen.append(x)
            return (x - t) ** 2 + 0.5 * (x > t)  # asymmetric, no ties

        assert linalg._golden_int(f, 0, hi) == target
        assert len(calls) == len(set(calls))  # nothing evaluated twice
        assert all(0 <= x <= hi for x in calls)
        assert len(calls) <= max(hi + 1, 1) and len(calls) <= math.log(max(hi, 1), phi) + 3


def test_official_schedule_gives_up_after_two_probes_when_no_split_pays():
    """Duo-SVD's official search: when neither pre-check point (phi^-2 k, phi^-5 k) beats
    the plain error, it stops there, as on most matrices of a real model."""
    for k in (1, 6, 251):
        calls: list[int] = []
        assert linalg._official_schedule(lambda x, c=calls: c.append(x) or 1.0 + x, k, 1.0) == 0
        phi = (1 + 5**0.5) / 2
        assert sorted(calls) == sorted({max(1, round(k / phi**2)), max(1, round(k / phi**5))})


@pytest.mark.parametrize("k", [5, 20, 86, 251, 447])
def test_official_schedule_lands_next_to_a_unimodal_minimum(k):
    """Without a final scan it ends within 2 of the minimum (its last bracket spans <= 2),
    one new evaluation per golden step, every point at most once."""
    phi = (1 + 5**0.5) / 2
    for target in sorted({1, k // 10, k // 3, k // 2, k - 1}):
        calls: list[int] = []

        def f(x, t=target, seen=calls):
            seen.append(x)
            return 10.0 + (x - t) ** 2 / k

        best = linalg._official_schedule(f, k, f(0))
        assert abs(best - target) <= 2
        assert len(calls) == len(set(calls)) and len(calls) <= math.log(k, phi) + 5


@pytest.mark.parametrize("shape", [(48, 40), (40, 96), (64, 64)])
@pytest.mark.parametrize("schedule", linalg.SCHEDULES)
def test_float32_probes_take_float64_decisions(shape, schedule):
    """`probes=float32` solves each candidate in float32 but decides close calls in
    float64: the same split as float64 probes, and float64's factors (to rounding: a
    re-solved candidate may be updated from another one already formed)."""
    g = torch.Generator().manual_seed(sum(shape) + 1)
    m, n = shape
    W = torch.randn(m, n, generator=g, dtype=F64)
    X = torch.randn(n, 4 * n, generator=g, dtype=F64)
    X[torch.randperm(n, generator=g)[: n // 5]] *= 10.0
    H = X @ X.T
    seen = 0
    for k in (4, 6, min(m, n) // 2):
        args = dict(accept=0.0, schedule=schedule)
        a = linalg.column_preserving_split(W, H, k, probes="float64", **args)
        b = linalg.column_preserving_split(W, H, k, probes="float32", **args)
        assert (a is None) == (b is None)
        if a is not None:
            seen += 1
            assert a.delta_r == b.delta_r and torch.equal(a.kept_idx, b.kept_idx)
            assert b.loss == pytest.approx(a.loss, rel=1e-12)
            assert _rel(b.product(), a.product()) < 1e-10
    assert seen >= 1
    with pytest.raises(linalg.NumericsError, match="precision"):
        linalg.column_preserving_split(W, H, 4, probes="float16")


def _split_data(shape, seed):
    g = torch.Generator().manual_seed(seed)
    m, n = shape
    W = torch.randn(m, n, generator=g, dtype=F64)
    X = torch.randn(n, 4 * n, generator=g, dtype=F64)
    X[torch.randperm(n, generator=g)[: n // 5]] *= 10.0
    return W, X @ X.T


def _same_split(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return a.delta_r == b.delta_r and torch.equal(a.kept_idx, b.kept_idx)


def _noisy_probes(monkeypatch, width: float, within: float, seed: int = 0) -> list[int]:
    """`loss_f32` replaced by the float64 loss moved by up to `within` times a bound of
    `width` of it (random sign and size): the search must decide as float64 does whenever
    `within < 1`. Returns a one-element counter of float64 re-solves."""
    g = torch.Generator().manual_seed(seed)
    solve64 = linalg._RestProblem.loss
    resolved = [0]

    def noisy(problem, c, kr):
        value = solve64(problem, c, kr)
        bound = width * value
        u = 2.0 * float(torch.rand(1, generator=g, dtype=F64)) - 1.0
        return value + within * u * bound, bound

    def counted(problem, c, kr):
        resolved[0] += 1
        return solve64(problem, c, kr)

    monkeypatch.setattr(linalg._RestProblem, "loss_f32", noisy)
    monkeypatch.setattr(linalg._RestProblem, "loss", counted)
    return resolved


@pytest.mark.parametrize("schedule", linalg.SCHEDULES)
def test_errors_within_their_bounds_never_change_a_decision(monkeypatch, schedule):
    """The close-call rule, through the whole search: float32 values anywhere inside their
    bounds (here wide ones, 0.5 % of the loss, so that many comparisons are close) give
    float64's split in every case, with re-solves; errors past the bounds, with the
    re-solves still keyed to the stated bounds, give some other split (so the cases are
    sensitive to the errors and the check can fail)."""
    cases = [(shape, k) for shape in ((48, 40), (40, 96), (64, 64)) for k in (6, 12, 20)]
    want = {}
    for shape, k in cases:
        W, H = _split_data(shape, sum(shape) + k)
        want[shape, k] = linalg.column_preserving_split(
            W, H, k, accept=0.0, schedule=schedule, probes="float64"
        )
    with monkeypatch.context() as mp:
        resolved = _noisy_probes(mp, width=5e-3, within=0.99)
        for shape, k in cases:
            W, H = _split_data(shape, sum(shape) + k)
            got = linalg.column_preserving_split(
                W, H, k, accept=0.0, schedule=schedule, probes="float32"
            )
            assert _same_split(got, want[shape, k]), (shape, k)
        assert resolved[0] > 0
    differ = 0
    for seed in range(3):
        with monkeypatch.context() as mp:
            _noisy_probes(mp, width=1e-3, within=100.0, seed=seed)
            for shape, k in cases:
                W, H = _split_data(shape, sum(shape) + k)
                got = linalg.column_preserving_split(
                    W, H, k, accept=0.0, schedule=schedule, probes="float32"
                )
                differ += not _same_split(got, want[shape, k])
    assert differ > 0


@pytest.mark.parametrize("scale_w, scale_h, seed", [(1e-20, 1e-8, 89), (1e15, 1e10, 7)])
def test_float32_probes_survive_float32s_range(scale_w, scale_h, seed):
    """Problems far below or above float32's range (`||T||` ~ 1e-42 or 1e40) are scaled
    before the float32 solve: the same split as float64 probes, no overflow (unscaled,
    the first case picks other splits, the second raises)."""
    W, H = _split_data((48, 40), seed)
    W, H = W * scale_w, H * scale_h
    for k in (4, 20):
        for schedule in ("official", "golden"):
            args = dict(accept=0.0, schedule=schedule)
            a = linalg.column_preserving_split(W, H, k, probes="float64", **args)
            b = linalg.column_preserving_split(W, H, k, probes="float32", **args)
            assert _same_split(a, b)


def test_an_asymmetric_gram_is_symmetrised_and_a_transposed_one_is_not_touched():
    """The split search reads blocks of `H` as if symmetric: a visibly asymmetric one is
    symmetrised first (same split and loss as its symmetric part), and `_check_gram` on a
    transposed view returns a new symmetric tensor without writing into the caller's."""
    W, H = _split_data((40, 96), 3)
    g = torch.Generator().manual_seed(0)
    skew = torch.randn(96, 96, generator=g, dtype=F64)
    skew = (skew - skew.T) * 1e-4 * float(H.abs().max())
    a = linalg.column_preserving_split(W, H, 12, accept=0.0)
    b = linalg.column_preserving_split(W, H + skew, 12, accept=0.0)
    assert _same_split(a, b) and b.loss == pytest.approx(a.loss, rel=1e-12)
    assert not linalg._looks_symmetric(H + skew) and linalg._looks_symmetric(H)

    Ht = (H + skew).T  # a column-major view
    before = Ht.clone()
    out = linalg._check_gram(Ht)
    assert torch.equal(Ht, before) and torch.equal(out, out.T)
    assert torch.allclose(out, H, rtol=0, atol=1e-9 * float(H.abs().max()))


def test_a_close_call_is_decided_on_the_float64_values():
    """Values whose gap exceeds the sum of their error bounds compare as given (no float64
    solve); closer ones are re-solved and the float64 values decide, against floats (a
    zero bound) too; a candidate compared with itself is never re-solved."""
    solved: list[str] = []

    def close(value, exact, name, error=1e-3):
        return linalg._CloseCall(value, error, lambda: solved.append(name) or exact)

    a, b = close(1.0, 2.0, "a"), close(1.5, 1.0, "b")
    assert a < b and not solved  # 1.0 vs 1.5: far apart, the float32 values decide
    a, b = close(1.0, 1.0 + 1e-9, "a"), close(1.0 + 1e-4, 1.0, "b")
    assert b < a and sorted(solved) == ["a", "b"]  # too close: the float64 values decide
    assert close(1.0, 2.0, "w", error=1e-6) < close(1.0 + 1e-4, 0.0, "x", error=1e-6)
    assert "w" not in solved and "x" not in solved  # the same gap, tight bounds: as given
    assert close(2.0, 3.0, "c") < 2.5 and close(2.0, 3.0, "d") >= 2.0 + 5e-4
    assert "d" in solved and "c" not in solved
    assert min([close(1.0, 1.0, "e"), 1.0 + 1e-7]) == 1.0  # min, a tuple key: refined ==
    assert close(5.0, 5.0, "f") <= math.inf and "f" not in solved
    same = close(3.0, 4.0, "g")
    assert same <= same and not same < same and "g" not in solved


def test_float32_error_bound_holds_and_a_wide_one_solves_in_float64(monkeypatch):
    """`_f32_error` bounds the float32 solve's error on the tail sum, for flat, graded and
    low-rank-perturbed spectra; a candidate whose bound is wide against its loss (one
    direction 1e7 x the rest) is solved in float64 and carries no bound, and its
    neighbour skips the float32 solve."""
    g = torch.Generator().manual_seed(5)
    for r, decay in ((64, 0.0), (200, 1.0), (300, 2.0)):
        lam = torch.arange(1, r + 1, dtype=F64) ** -decay * 1e3
        Z = torch.randn(r, 8, generator=g, dtype=F64) * lam.sqrt()[:, None] * 0.2
        T = torch.diag(lam) - (Z[:, :4] @ Z[:, 4:].T + Z[:, 4:] @ Z[:, :4].T)
        for tail in (1, r // 3, r - 1):
            want = float(torch.linalg.eigvalsh(T)[:tail].sum())
            got = float(torch.linalg.eigvalsh(T.float()).to(F64)[:tail].sum())
            assert abs(got - want) <= linalg._f32_error(T, tail)

    m, n, k = 40, 30, 10
    U = torch.linalg.qr(torch.randn(m, n, generator=g, dtype=F64))[0]
    V = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=F64))[0]
    s = torch.ones(n, dtype=F64)
    s[0] = 1e7
    W = (U * s) @ V.T
    H = torch.eye(n, dtype=F64)
    S = linalg.cholesky_whitener(H)
    Uw, sigma, Vh = linalg.whitened_svd(W, S)
    problem = linalg._RestProblem(W, H, Uw, sigma, torch.arange(n), None, Vh=Vh, L=S.factor)
    solves: list[torch.dtype] = []
    eigvalsh = torch.linalg.eigvalsh

    def counted(T, *args, **kwargs):
        solves.append(T.dtype)
        return eigvalsh(T, *args, **kwargs)

    monkeypatch.setattr(torch.linalg, "eigvalsh", counted)
    value, bound = problem.loss_f32(3, k)
    assert bound == 0.0 and value == problem.loss(3, k)
    assert solves == [torch.float32, F64, F64]  # tried, too wide: solved in float64
    value, bound = problem.loss_f32(4, k)  # a neighbour: float64 at once, no wasted solve
    assert bound == 0.0 and solves[3:] == [F64]


def test_split_schedule_is_refused_unless_known():
    W, _, H = _outlier_data()
    with pytest.raises(linalg.NumericsError, match="schedule"):
        linalg.column_preserving_split(W, H, 6, schedule="brent")


# ---------------------------------------------------------------- device


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    W, X, H = _data(m=96, n=64, N=400)
    Wc, Hc = W.cuda(), H.cuda()
    for make in (linalg.cholesky_whitener, linalg.eigen_whitener):
        a = linalg.truncate(W, make(H), 10)
        b = linalg.truncate(Wc, make(Hc), 10)
        assert b.A.device.type == "cuda" and b.A.dtype == F64
        assert _rel(b.product().cpu(), a.product()) < 1e-8
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
    assert _rel(gpu.product().cpu(), cpu.product()) < 1e-8
    f = linalg.svd_truncate(W2.cuda(), 6)
    g = linalg.als_refine(W2.cuda(), f.A, f.B, Hp.cuda(), C.cuda())
    assert g.A.device.type == "cuda" and g.loss < linalg.layer_loss(W2, f.A.cpu(), f.B.cpu(), H2)
    Wo, _, Ho = _outlier_data()
    s_cpu = linalg.column_preserving_split(Wo, Ho, 6)
    s_gpu = linalg.column_preserving_split(Wo.cuda(), Ho.cuda(), 6)
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


def test_rounded_schedule_is_the_first_form():
    """`schedule=rounded` keeps the search that made the results recorded before
    2026-12-03: on the outlier data's bumpy curve it stops at dr 2 (the official schedule
    too), where the exact golden-section finds the curve's minimum at dr 5."""
    W, _, H = _outlier_data()
    picks = {
        s: linalg.column_preserving_split(W, H, 6, schedule=s).delta_r for s in linalg.SCHEDULES
    }
    assert picks == {"official": 2, "golden": 5, "rounded": 2}


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


@pytest.mark.parametrize("shape", [(40, 24), (24, 40), (30, 30)])
def test_duo_split_from_the_orthonormal_gram_eigh_svd_is_the_float64_svd_s(shape):
    """Duo-SVD's search on a GPU takes its coordinates from `float64-eigh` with `U`
    re-orthonormalised (QR): `U` orthonormal to rounding even where `M V / sigma` is not,
    and the same split with the same loss as from the float64 SVD."""
    m, n = shape
    g = torch.Generator().manual_seed(7)
    W = torch.randn(m, n, generator=g, dtype=F64)
    W[:, :3] *= 30  # columns worth keeping dense
    X = torch.randn(n, 4 * n, generator=g, dtype=F64) * torch.logspace(0, -5, n, dtype=F64)[:, None]
    H = X @ X.T
    S = linalg.cholesky_whitener(H)
    ref = linalg.whitened_svd(W, S, "float64")
    eig = linalg.whitened_svd(W, S, "float64-eigh", orthonormal=True)
    U = eig[0]
    assert float((U.T @ U - torch.eye(U.shape[1], dtype=F64)).abs().max()) < 1e-12
    k = min(m, n) // 2
    a = linalg.column_preserving_split(W, H, k, S=S, svd=ref, probes="float64")
    b = linalg.column_preserving_split(W, H, k, S=S, svd=eig, probes="float64")
    assert (a is None) == (b is None)
    if a is not None:
        assert a.delta_r == b.delta_r
        assert b.loss == pytest.approx(a.loss, rel=1e-9)
