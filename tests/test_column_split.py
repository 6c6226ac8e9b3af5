"""Duo-SVD's column split (`svdzoo.column_split`): the fast searches against the reference
(whitening each candidate's rest afresh), the schedules, float32 probes' decisions, and the
kernels they are made of."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import OUTLIER_FEATURES, layer_data, outlier_data, rel_error

from svdzoo import column_split, lapack, linalg
from svdzoo.column_split import kernels, rest_problem, schedules, split_search

F64 = torch.float64


def test_column_counts_never_exceed_plain_budget():
    for m, n in ((64, 64), (32, 64), (172, 64), (64, 172)):
        for k in range(1, min(m, n) + 1, 3):
            for dr in range(0, k + 1):
                c, kr = column_split.column_counts(m, n, k, dr)
                assert 0 <= c <= n and 0 <= kr <= k
                assert c * m + kr * (m + n - c) <= k * (m + n)
    # the paper's exchange rate where rounding is harmless
    c, kr = column_split.column_counts(64, 64, 36, 4)
    assert (c, kr) == (16, 32) and c * 64 + kr * (128 - c) == 36 * 128
    # rounding up would overshoot (round(10.67) = 11 costs 2576 > 2560): lowered to 10
    assert column_split.column_counts(64, 64, 20, 4) == (10, 16)


def test_column_split_pays_off_on_outlier_features():
    W, X, H = outlier_data()
    k = 6
    split = column_split.column_preserving_split(W, H, k)
    assert split is not None
    m, n = W.shape
    assert split.params <= k * (m + n)
    assert split.params == split.n_kept * m + split.rank * (m + n - split.n_kept)
    assert torch.equal(split.kept_idx, torch.sort(split.kept_idx).values)
    # the kept columns are the outliers (here all but one: the search's optimum, dr 5 of a
    # curve with a bump at 3, keeps 9 columns, and outlier 5 is absorbed by the baseline)
    kept = set(split.kept_idx.tolist())
    assert (
        split.n_kept > 0
        and len(kept & set(OUTLIER_FEATURES)) >= min(split.n_kept, len(OUTLIER_FEATURES)) - 1
    )
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
    exact = rest_problem._RestProblem(W, H, U, sigma, order, None, Vh=Vh, L=S.factor)
    ritz = rest_problem._RestProblem(W, H, U, sigma, order, 3, Vh=Vh, L=S.factor)
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
            got = float((D @ H[rest][:, rest] * D).sum())
            assert loss == pytest.approx(got, rel=1e-8, abs=floor)


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

    problem = rest_problem._RestProblem(
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
    problem = rest_problem._RestProblem(
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

    problem = rest_problem._RestProblem(
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
        mu, E = kernels._top_eigh(T, k)
        want, V = torch.linalg.eigh(T)
        want, V = want.flip(0)[:k], V.flip(1)[:, :k]
        assert torch.allclose(mu, want, rtol=0, atol=1e-12 * float(lam[0]))
        assert torch.allclose(E.T @ E, torch.eye(k, dtype=F64), atol=1e-12)
        tail = float(T.trace() - want.sum())
        # the plain `eigh` it falls back to (k = 60, 150) is scipy's LAPACK on a CPU, so the
        # two differ by the float64 round-off of the trace (1e7 here), not by 1e-10 of `tail`
        floor = 1e-15 * float(T.trace())
        assert float(T.trace() - mu.sum()) == pytest.approx(tail, rel=1e-10, abs=floor)
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
    mu, E = kernels._top_eigh(T, k)
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
    got = kernels._lower_congruence(S, A)
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
            got = kernels._times_lower_rows(M, L, idx, block=block)
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
        monkeypatch.setattr(rest_problem._RestProblem, "OWN_SIDE_SOLVE", weight)
        monkeypatch.setattr(rest_problem._RestProblem, "OWN_SIDE_FORM", weight)
        monkeypatch.setattr(rest_problem._RestProblem, "OWN_SIDE_GRAM", 0.0)
        monkeypatch.setattr(rest_problem._RestProblem, "OWN_SIDE_CHOLESKY", 0.0)
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
        ref = column_split.column_preserving_split(W, H, k, search="reference", accept=0.0)
        fast = column_split.column_preserving_split(W, H, k, accept=0.0, **options)
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
        assert rel_error(fast.product(), ref.product()) < 1e-3
    assert seen >= 1


@pytest.mark.parametrize("shape", [(85, 38), (40, 30), (30, 40)])
@pytest.mark.parametrize("schedule", column_split.SCHEDULES)
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
        ref = column_split.column_preserving_split(W, H, k, search="reference", schedule=schedule)
        for probes in ("float32", "float64"):
            fast = column_split.column_preserving_split(W, H, k, schedule=schedule, probes=probes)
            assert (fast is None) == (ref is None)
            if ref is not None:
                assert fast.delta_r == ref.delta_r
                assert fast.loss == pytest.approx(ref.loss, rel=1e-9, abs=1e-13 * energy)


def test_split_search_is_refused_unless_known():
    W, _, H = outlier_data()
    with pytest.raises(linalg.NumericsError, match="search"):
        column_split.column_preserving_split(W, H, 6, search="fast")
    with pytest.raises(linalg.NumericsError, match="oversample"):
        column_split.column_preserving_split(W, H, 6, oversample=-1.0)


def test_fast_split_searches_on_a_shifted_whitener_fall_back_to_the_reference():
    """The fast searches need a Cholesky factor of `H` itself; a rank-deficient Gram is
    factored shifted, so the reference search runs (same bytes as asking for it)."""
    W, X, H = outlier_data()
    H = H.clone()
    H[3, :] = 0.0
    H[:, 3] = 0.0
    S = linalg.cholesky_whitener(H)
    assert S.shift > 0 or S.fallback is not None
    b = column_split.column_preserving_split(W, H, 6, S=S, search="reference")
    for search in ("ritz", "exact"):
        a = column_split.column_preserving_split(W, H, 6, S=S, search=search)
        assert (a is None) == (b is None)
        if a is not None:
            assert torch.equal(a.A, b.A) and torch.equal(a.B, b.B)


def test_column_split_rejected_when_it_cannot_help():
    g = torch.Generator().manual_seed(5)
    W = torch.randn(30, 6, generator=g, dtype=F64) @ torch.randn(6, 20, generator=g, dtype=F64)
    _, X, H = layer_data(m=30, n=20, N=100)
    assert column_split.column_preserving_split(W, H, 6) is None  # exact at rank 6: nothing to gain
    assert column_split.column_preserving_split(W, H, 0) is None


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

        assert schedules._golden_int(f, 0, hi) == target
        assert len(calls) == len(set(calls))  # nothing evaluated twice
        assert all(0 <= x <= hi for x in calls)
        assert len(calls) <= max(hi + 1, 1) and len(calls) <= math.log(max(hi, 1), phi) + 3


def test_official_schedule_gives_up_after_two_probes_when_no_split_pays():
    """Duo-SVD's official search: when neither pre-check point (phi^-2 k, phi^-5 k) beats
    the plain error, it stops there, as on most matrices of a real model."""
    for k in (1, 6, 251):
        calls: list[int] = []
        assert schedules._official_schedule(lambda x, c=calls: c.append(x) or 1.0 + x, k, 1.0) == 0
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

        best = schedules._official_schedule(f, k, f(0))
        assert abs(best - target) <= 2
        assert len(calls) == len(set(calls)) and len(calls) <= math.log(k, phi) + 5


def _same_decisions(a, b, *, loss_rel: float, product_rel: float) -> bool:
    """Both searches rejected the split, or chose the same one with factors equal to
    rounding; whether there was a split to compare."""
    assert (a is None) == (b is None)
    if a is None:
        return False
    assert a.delta_r == b.delta_r and torch.equal(a.kept_idx, b.kept_idx)
    assert b.loss == pytest.approx(a.loss, rel=loss_rel)
    assert rel_error(b.product(), a.product()) < product_rel
    return True


@pytest.mark.parametrize("shape", [(48, 40), (40, 96), (64, 64)])
@pytest.mark.parametrize("schedule", column_split.SCHEDULES)
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
        a = column_split.column_preserving_split(W, H, k, probes="float64", **args)
        b = column_split.column_preserving_split(W, H, k, probes="float32", **args)
        seen += _same_decisions(a, b, loss_rel=1e-12, product_rel=1e-10)
    assert seen >= 1
    with pytest.raises(linalg.NumericsError, match="precision"):
        column_split.column_preserving_split(W, H, 4, probes="float16")


@pytest.mark.parametrize("probes", ["float32", "float64"])
def test_search_does_not_depend_on_the_cpu_lapack(probes, monkeypatch):
    """The candidates' eigenvalue solves and the chosen split's eigenpairs go through scipy's
    LAPACK on a CPU (`svdzoo.lapack`). With torch's instead (`SVDZOO_CPU_LAPACK=torch`,
    where the chosen split's pairs come from `_top_eigh`) the decisions are the same, so
    the split, and its factors' product and loss to rounding."""
    seen = 0
    for shape, seed in (((48, 40), 3), ((40, 96), 4), ((96, 40), 5), ((64, 64), 6)):
        W, H = _split_data(shape, seed)
        for k in (6, min(shape) // 3, min(shape) // 2):
            out = {}
            for backend in lapack.BACKENDS:
                monkeypatch.setenv(lapack.ENV, backend)
                out[backend] = column_split.column_preserving_split(
                    W, H, k, accept=0.0, probes=probes
                )
            seen += _same_decisions(out["torch"], out["scipy"], loss_rel=1e-9, product_rel=1e-9)
    assert seen >= 6


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
    solve64 = rest_problem._RestProblem.loss
    resolved = [0]

    def noisy(problem, c, kr):
        value = solve64(problem, c, kr)
        bound = width * value
        u = 2.0 * float(torch.rand(1, generator=g, dtype=F64)) - 1.0
        return value + within * u * bound, bound

    def counted(problem, c, kr):
        resolved[0] += 1
        return solve64(problem, c, kr)

    monkeypatch.setattr(rest_problem._RestProblem, "loss_f32", noisy)
    monkeypatch.setattr(rest_problem._RestProblem, "loss", counted)
    return resolved


@pytest.mark.parametrize("schedule", column_split.SCHEDULES)
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
        want[shape, k] = column_split.column_preserving_split(
            W, H, k, accept=0.0, schedule=schedule, probes="float64"
        )
    with monkeypatch.context() as mp:
        resolved = _noisy_probes(mp, width=5e-3, within=0.99)
        for shape, k in cases:
            W, H = _split_data(shape, sum(shape) + k)
            got = column_split.column_preserving_split(
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
                got = column_split.column_preserving_split(
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
            a = column_split.column_preserving_split(W, H, k, probes="float64", **args)
            b = column_split.column_preserving_split(W, H, k, probes="float32", **args)
            assert _same_split(a, b)


def test_an_asymmetric_gram_is_symmetrised_and_a_transposed_one_is_not_touched():
    """The split search reads blocks of `H` as if symmetric: a visibly asymmetric one is
    symmetrised first (same split and loss as its symmetric part), and `_check_gram` on a
    transposed view returns a new symmetric tensor without writing into the caller's."""
    W, H = _split_data((40, 96), 3)
    g = torch.Generator().manual_seed(0)
    skew = torch.randn(96, 96, generator=g, dtype=F64)
    skew = (skew - skew.T) * 1e-4 * float(H.abs().max())
    a = column_split.column_preserving_split(W, H, 12, accept=0.0)
    b = column_split.column_preserving_split(W, H + skew, 12, accept=0.0)
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
        return split_search._CloseCall(value, error, lambda: solved.append(name) or exact)

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
            for solve in (torch.linalg.eigvalsh, lapack.eigvalsh):  # torch's and scipy's
                got = float(solve(T.float()).to(F64)[:tail].sum())
                assert abs(got - want) <= kernels._f32_error(T, tail)

    m, n, k = 40, 30, 10
    U = torch.linalg.qr(torch.randn(m, n, generator=g, dtype=F64))[0]
    V = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=F64))[0]
    s = torch.ones(n, dtype=F64)
    s[0] = 1e7
    W = (U * s) @ V.T
    H = torch.eye(n, dtype=F64)
    S = linalg.cholesky_whitener(H)
    Uw, sigma, Vh = linalg.whitened_svd(W, S)
    problem = rest_problem._RestProblem(W, H, Uw, sigma, torch.arange(n), None, Vh=Vh, L=S.factor)
    solves: list[torch.dtype] = []
    eigvalsh = lapack.eigvalsh

    def counted(T, *args, **kwargs):
        solves.append(T.dtype)
        return eigvalsh(T, *args, **kwargs)

    monkeypatch.setattr(lapack, "eigvalsh", counted)
    value, bound = problem.loss_f32(3, k)
    assert bound == 0.0 and value == problem.loss(3, k)
    assert solves == [torch.float32, F64, F64]  # tried, too wide: solved in float64
    value, bound = problem.loss_f32(4, k)  # a neighbour: float64 at once, no wasted solve
    assert bound == 0.0 and solves[3:] == [F64]


def test_split_schedule_is_refused_unless_known():
    W, _, H = outlier_data()
    with pytest.raises(linalg.NumericsError, match="schedule"):
        column_split.column_preserving_split(W, H, 6, schedule="brent")


def test_rounded_schedule_is_the_first_form():
    """`schedule=rounded` keeps the search that made the results recorded before
    2026-12-03: on the outlier data's bumpy curve it stops at dr 2 (the official schedule
    too), where the exact golden-section finds the curve's minimum at dr 5."""
    W, _, H = outlier_data()
    picks = {
        s: column_split.column_preserving_split(W, H, 6, schedule=s).delta_r
        for s in column_split.SCHEDULES
    }
    assert picks == {"official": 2, "golden": 5, "rounded": 2}


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
    a = column_split.column_preserving_split(W, H, k, S=S, svd=ref, probes="float64")
    b = column_split.column_preserving_split(W, H, k, S=S, svd=eig, probes="float64")
    assert (a is None) == (b is None)
    if a is not None:
        assert a.delta_r == b.delta_r
        assert b.loss == pytest.approx(a.loss, rel=1e-9)
