"""Duo-SVD's column-preserving factorisation: keep the top-scored columns dense, truncate the
rest, and search the trade between the two (`column_preserving_split`)."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from svdzoo.column_split.rest_problem import _RestProblem
from svdzoo.column_split.schedules import (
    SCHEDULES,
    _golden_int,
    _official_schedule,
    _rounded_golden,
)
from svdzoo.lazy import torch
from svdzoo.linalg import (
    LowRankFactors,
    NumericsError,
    Whitener,
    _check_gram,
    _check_matrix,
    _check_rank,
    _looks_symmetric,
    _plain_cholesky,
    _symmetrised,
    _whitener,
    resolve_probe_precision,
    truncate,
    truncation_loss,
    whitened_svd,
)

if TYPE_CHECKING:
    from torch import Tensor

log = logging.getLogger(__name__)


@dataclass
class ColumnSplit:
    """`W ~ [W_kept on kept_idx] + A B on rest_idx` (Duo-SVD column-preserving form).

    `rank` = `k - delta_r`; `params` excludes the bias; `loss` = `tr(D H D^T)` (whitened,
    exact for the Gram the whitener represents); `baseline_loss` = plain rank-`k` loss.
    """

    kept_idx: Tensor
    W_kept: Tensor
    rest_idx: Tensor
    A: Tensor
    B: Tensor
    params: int
    loss: float
    baseline_loss: float
    delta_r: int

    @property
    def rank(self) -> int:
        return int(self.A.shape[1])

    @property
    def n_kept(self) -> int:
        return int(self.kept_idx.numel())

    def product(self) -> Tensor:
        """The dense `m x n` approximation (for tests)."""
        m, n = self.W_kept.shape[0], self.kept_idx.numel() + self.rest_idx.numel()
        out = torch.zeros(m, n, dtype=self.A.dtype, device=self.A.device)
        out[:, self.kept_idx] = self.W_kept
        out[:, self.rest_idx] = self.A @ self.B
        return out


def column_counts(m: int, n: int, k: int, delta_r: int) -> tuple[int, int]:
    """`(c, k')`: dense columns bought with `delta_r` rank units, and the remaining rank.

    `c = round(delta_r (m+n) / (m - (k - delta_r)))`, then lowered until
    `c m + k' (m + n - c) <= k (m + n)` (never more parameters than plain rank `k`);
    `k'` is clamped to what the remaining columns allow.
    """
    kr = k - delta_r
    if delta_r <= 0:
        return 0, k
    denom = m - kr
    c = n if denom <= 0 else min(n, round(delta_r * (m + n) / denom))
    budget = k * (m + n)
    while c > 0 and c * m + min(kr, m, n - c) * (m + n - c) > budget:
        c -= 1
    return c, max(0, min(kr, m, n - c))


class _CloseCall:
    """A split candidate's error from a float32 eigenvalue solve, with an error bound, that
    re-solves in float64 when a comparison is too close to call: two values whose gap is
    within the sum of their bounds are compared on their float64 values, so the schedule
    takes the decisions a float64 search takes. Supports the comparisons the schedules
    make, against floats (exact: a zero bound) too."""

    __slots__ = ("value", "error", "_exact")

    def __init__(self, value: float, error: float, exact: Callable[[], float]) -> None:
        self.value, self.error, self._exact = value, error, exact

    def refined(self) -> float:
        if self._exact is not None:
            self.value, self.error, self._exact = self._exact(), 0.0, None
        return self.value

    @staticmethod
    def _pair(x: _CloseCall | float, y: _CloseCall | float) -> tuple[float, float]:
        vx, ex = (x.value, x.error) if isinstance(x, _CloseCall) else (float(x), 0.0)
        vy, ey = (y.value, y.error) if isinstance(y, _CloseCall) else (float(y), 0.0)
        if x is y:  # a schedule comparing a candidate with itself (c == d late on)
            return vx, vy
        if abs(vx - vy) <= ex + ey and math.isfinite(vx) and math.isfinite(vy):
            vx = x.refined() if isinstance(x, _CloseCall) else vx
            vy = y.refined() if isinstance(y, _CloseCall) else vy
        return vx, vy

    def __lt__(self, other: _CloseCall | float) -> bool:
        a, b = self._pair(self, other)
        return a < b

    def __le__(self, other: _CloseCall | float) -> bool:
        a, b = self._pair(self, other)
        return a <= b

    def __gt__(self, other: _CloseCall | float) -> bool:
        a, b = self._pair(self, other)
        return a > b

    def __ge__(self, other: _CloseCall | float) -> bool:
        a, b = self._pair(self, other)
        return a >= b

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, (_CloseCall, float, int)):
            return NotImplemented
        a, b = self._pair(self, other)
        return a == b

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"_CloseCall({self.value!r}, +-{self.error!r}, exact={self._exact is None})"


SEARCHES = ("exact", "ritz", "reference")


def column_preserving_split(
    W: Tensor,
    H: Tensor,
    k: int,
    *,
    accept: float = 0.01,
    whitener: str = "cholesky",
    S: Whitener | None = None,
    svd: tuple[Tensor, Tensor, Tensor] | None = None,
    search: str = "exact",
    oversample: float = 0.25,
    schedule: str = "official",
    probes: str = "float32",
    base: LowRankFactors | None = None,
    fallback: str = "eigen-shift",
) -> ColumnSplit | None:
    """Duo-SVD column-preserving factorisation, or None when it does not pay off.

    1. Whitened rank-`k` baseline; residual `R = W - A B`; column score
       `imp_j = ||R[:, j]||^2 H_jj`.
    2. For `delta_r` rank units traded, keep the `c` top-scored columns dense
       (`column_counts`), and approximate the rest by whitened rank-`(k - delta_r)`
       truncation under `H` restricted to the rest.
    3. `f(delta_r) = sqrt(sum of truncated sigma^2)` of the rest. Because kept columns are
       reproduced exactly, `W - W'` is zero on them and the cross terms `H[kept, rest]`
       of the full-layer loss vanish: `f^2` IS the full-layer loss `tr(D H D^T)` (for the
       Gram the whitener represents), so the paper's criterion and the honest one agree.
    4. Golden-section search over integer `delta_r in [0, k]`; accept only if the error
       drops by more than `accept` (1%) relative to plain. `schedule`: `official` (the
       default) is the official code's, with its early exit (`_official_schedule`);
       `golden` the exact integer golden-section (Fibonacci) search, which finds the
       minimum of any unimodal curve and costs ~13 evaluations on every matrix;
       `rounded` svdzoo's first form (`_rounded_golden`), which made the results
       recorded before 2026-12-03.

    `fallback`: the Cholesky fallback (`cholesky_whitener`) of `H` (when `S` is not given)
    and of each rest's `H_RR`; Duo-SVD's factoriser passes its official `diag-damp`.

    `S` (the `whitener` factorisation of `H`), `svd` (`whitened_svd(W, S)` in float64) and
    `base` (`truncate(W, S, k, svd=svd)`, the plain factorisation the split must beat) skip
    recomputing what the caller already has, e.g. a whitener shared by the matrices that
    read the same input; when the split is rejected, `base` is the answer.

    `search`: how each candidate's rest truncation is solved.
      - `exact` (default): one `r x r` eigenvalue solve per candidate in the whitened
        SVD's coordinates (`_RestProblem`), the chosen one's factors from its eigenvectors;
        or, once few columns are left, the rest's own `(n - c)`-sized whitening, whichever
        the cost model (`_RestProblem.own_side_cheaper`) finds cheaper.
      - `ritz`: the same, reduced to the subspace of the `k + max(8, oversample k)`
        leading whitened directions and the kept columns' span whenever that is smaller
        than `r`; the loss reported is the returned factors' exact loss.
      - `reference`: the definition: whiten each candidate's rest afresh (its own
        Cholesky factor of `H_RR`) and truncate it. The others are tested against it.
      `exact` and `ritz` need a Cholesky factor of `H` itself (no shift, no fallback);
      otherwise `reference` is used. Timings: `bench_compress.py`, docs/results.md.

    `probes`: the precision of the `exact`/`ritz` candidates' eigenvalue solves. `float32`
    (the default) solves the float64-formed problem in float32 with an error bound
    (`_f32_error`) and re-solves in float64 any two candidates whose gap is within the sum
    of their bounds (`_CloseCall`), so the decisions are float64's; a candidate whose bound
    is wide against its loss is re-solved in float64, and its neighbours go straight to
    float64 (`_RestProblem.loss_f32`). `H` must be symmetric to rounding; a sample of its
    rows is checked, and it is symmetrised when they differ. `float64` solves every one in
    float64; `auto` is float32 on a GPU, float64 otherwise (`resolve_probe_precision`). The chosen
    split's factors and loss are always computed in float64. On this CPU float32 saves
    ~14 % of the search on SmolLM2-135M with the same splits (docs/results.md); GPUs, slow
    in float64, are where it pays most.
    """
    if search not in SEARCHES:
        raise NumericsError(f"unknown split search {search!r}; use one of {SEARCHES}")
    if schedule not in SCHEDULES:
        raise NumericsError(f"unknown search schedule {schedule!r}; use one of {SCHEDULES}")
    if not oversample >= 0:
        raise NumericsError(f"oversample must be >= 0, got {oversample}")
    W = _check_matrix(W)
    probes = resolve_probe_precision(probes, W.device)
    m, n = W.shape
    _check_rank(k, m, n)
    # symmetrised only when a sample of its rows is not symmetric (at n = 1536, on every
    # call: 6-9 ms for a full pass against 0.25 ms for the sample): the updates read blocks
    # of rows as columns, and an asymmetry moves the losses by ~10x its size; an
    # accumulated float64 Gram is exactly symmetric
    H = _check_gram(H, n, symmetrise=False).to(W.device)
    if not _looks_symmetric(H):
        H = _symmetrised(H)
    S = _whitener(H, whitener, fallback) if S is None else S
    svd = whitened_svd(W, S) if svd is None else svd
    base = truncate(W, S, k, svd=svd) if base is None else base
    f0 = math.sqrt(max(base.loss, 0.0))
    if k == 0:
        return None
    sigma_k = svd[1][:k]
    if S.kind == "cholesky" and base.B.shape[0] == k == sigma_k.numel():
        # `A B = U_k U_k^T W` (an orthogonal projection, `S` invertible) and
        # `U_k^T W = Sigma_k^{1/2} B`: the residual's column norms without forming it
        # (`m k n` flops saved; 25 ms of a 4096x11008 / 4 split)
        res2 = (W.square().sum(0) - (sigma_k.sqrt()[:, None] * base.B).square().sum(0)).clamp_min(0)
    else:
        res2 = (W - base.A @ base.B).square().sum(0)
    score = res2 * torch.diagonal(H).clamp_min(0)
    order = torch.argsort(score, descending=True, stable=True)

    def split(dr: int) -> tuple[int, int, Tensor, Tensor]:
        """`(c, k - dr, kept, rest)`: the `c` top-scored columns kept dense, the rest."""
        c, kr = column_counts(m, n, k, dr)
        kept = torch.sort(order[:c]).values
        mask = torch.ones(n, dtype=torch.bool, device=W.device)
        mask[kept] = False
        return c, kr, kept, torch.nonzero(mask).squeeze(1)

    def rest_whitener(rest: Tensor) -> Whitener:
        return _whitener(H.index_select(0, rest).index_select(1, rest), whitener, fallback)

    # (a Cholesky whitener without fallback or shift is exactly a factor of H: H is PD,
    # so every H_RR is too and the rest problem lives in the coordinates of `svd`)
    exact_factor = whitener == "cholesky" and _plain_cholesky(S)
    problem = None
    if search != "reference" and exact_factor:
        U, sigma = svd[0], svd[1]
        d = None
        if search == "ritz":
            d = min(int(sigma.numel()), k + max(8, math.ceil(oversample * k)))
        problem = _RestProblem(
            W,
            H,
            U,
            sigma,
            order,
            d,
            Vh=svd[2],
            L=S.factor,
            rest_factor=lambda rest: rest_whitener(rest).factor,
        )

    def in_coordinates(c: int) -> bool:
        """Whether `problem` solves this candidate; otherwise the rest is whitened on its
        own `(n - c)` side (as `reference` does), which is exact too and cheaper once few
        columns are left (`_RestProblem.own_side_cheaper`)."""
        return problem is not None and not problem.own_side_cheaper(c)

    def fit(dr: int) -> tuple[float, Tensor, Tensor, tuple[Tensor, Tensor] | None, int]:
        c, kr, kept, rest = split(dr)
        if rest.numel() == 0:
            return 0.0, kept, rest, None, c
        if in_coordinates(c):
            A, B, loss = problem.factors(c, rest, kr)
            return math.sqrt(loss), kept, rest, (A, B), c
        if problem is not None and problem.rest_factor is not None:
            own = problem.own_factors(c, rest, kr)
            if own is not None:
                return math.sqrt(own[2]), kept, rest, own[:2], c
        fac = truncate(W.index_select(1, rest), rest_whitener(rest), kr)
        return math.sqrt(max(fac.loss, 0.0)), kept, rest, (fac.A, fac.B), c

    def evaluate(dr: int) -> float | _CloseCall:
        c, kr = column_counts(m, n, k, dr)
        if dr == 0 or c == 0:
            return f0
        # the rest fits in rank `kr` (or every column is kept): exactly 0, as the reference's
        # truncation drops nothing; a solve gives round-off, which the schedules would then
        # compare. Only past the break-even rank `m n / (m + n)`, which no ratio asks for
        if kr >= min(m, n - c):
            return 0.0
        if problem is not None:  # either side, whichever the cost model picks
            if probes == "float64":
                return math.sqrt(problem.loss(c, kr))
            loss, bound = problem.loss_f32(c, kr)
            if bound == 0.0:
                return math.sqrt(loss)
            # the bound on the loss, carried to its square root
            error = math.sqrt(loss + bound) - math.sqrt(max(loss - bound, 0.0))
            return _CloseCall(math.sqrt(loss), error, lambda: math.sqrt(problem.loss(c, kr)))
        rest = split(dr)[3]
        return math.sqrt(truncation_loss(W.index_select(1, rest), rest_whitener(rest), kr))

    if schedule == "official":
        best = _official_schedule(evaluate, k, f0)
    elif schedule == "golden":
        best = _golden_int(evaluate, 0, k)
    else:
        best = _rounded_golden(evaluate, 0, k)
    if best == 0 or column_counts(m, n, k, best)[0] == 0:
        return None
    err, kept, rest, fac, c = fit(best)
    if not err < (1.0 - accept) * f0:
        log.debug("column split rejected: error %.4g vs plain %.4g", err, f0)
        return None
    if fac is None:  # every column kept
        A = torch.zeros(m, 0, dtype=torch.float64, device=W.device)
        B = torch.zeros(0, 0, dtype=torch.float64, device=W.device)
    else:
        A, B = fac
    params = c * m + A.shape[1] * (m + rest.numel())
    assert params <= k * (m + n)
    return ColumnSplit(
        kept_idx=kept.to(torch.long),
        W_kept=W.index_select(1, kept),
        rest_idx=rest.to(torch.long),
        A=A,
        B=B,
        params=int(params),
        loss=err * err,
        baseline_loss=base.loss,
        delta_r=best,
    )
