"""The split search's numerical kernels: float32 solves with error bounds, a certified top-`k`
eigendecomposition, and products that skip a triangular factor's zeros."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from svdzoo import lapack
from svdzoo.lazy import torch
from svdzoo.linalg import all_finite

if TYPE_CHECKING:
    from torch import Tensor

F32_EPS = 2.0**-23  # torch.finfo(torch.float32).eps, without importing torch
F32_MAX_ERROR = 1e-2  # relative; past it a candidate's float32 solve is not worth making


def _f32_error(T: Tensor, tail: int, norm: float | None = None) -> float:
    """A bound on the error of the sum of `T`'s `tail` smallest eigenvalues when `T` is
    rounded to float32 and solved there: for a backward error `E` (rounding included), the
    sum moves by at most `sqrt(tail) ||E||_F` (Lidskii), and `||E||_F` is taken as
    `sqrt(r) eps32 ||T||_F / 2`, the size Householder tridiagonalisation's rounding
    accumulates to. The errors measured on SmolLM2-135M's candidates stay under 1/12 of it
    (at most 0.081 of it over the 2,552 probes of 630 matrix-ratio cases, r = 192 and 576);
    on graded synthetic spectra (r = 576-4096) at most 0.003 of it."""
    r = T.shape[0]
    norm = float(torch.linalg.matrix_norm(T)) if norm is None else norm  # Frobenius
    return 0.5 * math.sqrt(r * max(tail, 1)) * F32_EPS * norm


def _scaled_f32(T: Tensor, norm: float) -> tuple[Tensor, float] | None:
    """`(T / scale` in float32, `scale)`, `scale` a power of two near `norm = ||T||_F`: exact
    both ways, so float32's range cannot underflow or overflow it. None when `norm` is not
    finite and positive."""
    if not 0.0 < norm < math.inf:
        return None
    scale = 2.0 ** math.frexp(norm)[1]
    T32 = torch.empty(T.shape, dtype=torch.float32, device=T.device)
    torch.mul(T, 1.0 / scale, out=T32)  # one pass: exact, as `scale` is a power of two
    return T32, scale


def top_eigenpairs(T: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The chosen split's top `k` eigenpairs of the float64 `T` (values descending). On a
    CPU, LAPACK's float64 solve of only the wanted pairs (`lapack.eigh_top`) is faster than
    `_top_eigh`'s certified float32 route at every `k` (one thread, r = 1024: 55 against 136
    ms at k = 1, 107 against 172 at k = 128, 161 against 221 at k = 256; r = 576: 13 against
    25 at k = 16) and exact to float64; `_top_eigh` is for a GPU, where float64 is slow."""
    if lapack.on_scipy(T):
        return lapack.eigh_top(T, k)
    return _top_eigh(T, k)


TOP_EIGH_RTOL = 1e-10  # of the trace past the top `k`: what `_top_eigh` may lose of it
TOP_EIGH_ITERATIONS = (2, 4)  # subspace iterations before the first check, and at most


def _top_eigh(T: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The top `k` eigenpairs of the symmetric float64 `T` (values descending), with the
    sum of the values (what a truncation's loss is computed from) certified to float64
    accuracy: a float32 eigendecomposition gives a basis of the top `k + p` directions
    (`p = max(16, k / 8)`), orthonormalised, refined by two subspace iterations and
    Rayleigh-Ritz-projected in float64. The Ritz pairs `(mu, X)` are returned once the
    residual `R = T X - X diag(mu)` bounds what their sum can miss below
    `TOP_EIGH_RTOL` of the trace past them: by Ky Fan the top-`k` sum is at least
    `sum(mu)`, and by a block Kato-Temple bound at most `||R||_F^2 / gap` above it, for
    `gap = mu_k - lambda_{k+1}(T) > 0`; `lambda_{k+1}` is bounded by float32's value plus
    twice its error estimate (`_f32_error` is a typical size, not a bound: float32 missed
    by up to 1.6 times it on small matrices whose `lambda_{k+1}` dominates `||T||_F`).
    Otherwise more iterations, up to `TOP_EIGH_ITERATIONS[1]`, then a plain float64 `eigh`.
    A spectrum float32 cannot resolve at `k` (no gap above its error, as in an
    ill-conditioned rest) goes straight to the float64 `eigh`: the fixed two iterations had
    left such a split's loss up to 0.7 % above the optimum. Also a plain `eigh` when
    `k + p` is over a quarter of `T` (the iterations' `r^2 (k + p)` products and the
    `(k + p)`-sized solve then cost more: on one CPU thread, at `k = 0.4 r` this took 58 ms
    against `eigh`'s 37 at r = 576 and 328 against 210 at r = 1024; they break even near
    `k = 0.2 r`, and at `k = 0.05 r` this takes 0.6 of `eigh`), or the float32 solve fails."""
    r = T.shape[0]
    s = k + max(16, k // 8)
    if k == 0 or 4 * s > r:
        return lapack.eigh_top(T, k)
    norm = float(torch.linalg.matrix_norm(T))
    scaled = _scaled_f32(T, norm)
    if scaled is None:
        return lapack.eigh_top(T, k)
    mu32, E32 = torch.linalg.eigh(scaled[0])
    if not (all_finite(mu32) and all_finite(E32)):
        return lapack.eigh_top(T, k)
    mu32 = mu32.to(torch.float64) * scaled[1]
    error = 2.0 * _f32_error(T, 1, norm)  # on one of float32's eigenvalues, with a margin
    above = float(mu32[r - k - 1]) + error  # an upper bound on T's (k+1)-th eigenvalue
    if float(mu32[r - k]) - error <= above:  # no gap float32 can show: no bound to be had
        return lapack.eigh_top(T, k)
    floor = 10 * r * torch.finfo(torch.float64).eps * norm  # any float64 solve's round-off
    trace = float(T.diagonal().sum())
    first, most = TOP_EIGH_ITERATIONS
    Q = torch.linalg.qr(E32[:, r - s :].to(torch.float64)).Q
    for done in range(most + 1):
        Y = T @ Q
        if done >= first:
            M = Q.T @ Y
            mu, Z = torch.linalg.eigh(0.5 * (M + M.T))
            mu, Z = mu.flip(0)[:k], Z.flip(1)[:, :k]
            X = Q @ Z
            gap = float(mu[-1]) - above
            if gap <= 0:
                break
            missed = float((Y @ Z - X * mu).square().sum()) / gap
            if missed <= TOP_EIGH_RTOL * max(trace - float(mu.sum()), 0.0) + floor:
                return mu, X
            if done == most:
                break
        Q = torch.linalg.qr(Y).Q
    return lapack.eigh_top(T, k)


def _times_lower_rows(M: Tensor, L: Tensor, idx: Tensor, block: int = 128) -> Tensor:
    """`M @ L[idx].T` for a lower-triangular `L`: row `j` of `L` is zero past column `j`,
    so the rows are taken in index order, `block` at a time, each block against only the
    columns up to its largest index (about half the flops of the full product for indices
    spread over `[0, n)`). Computed as its transpose, `L[idx] M^T` by row blocks into a
    row-major buffer, whose rows are put back in `idx`'s order at the end: 1.45x faster
    on one CPU thread than the blocks of `M L^T` scattered into columns (576 x 1536 by 682
    rows: 26.9 -> 18.5 ms; 1024 x 2752 by 863: 98 -> 68 ms). Returns a transposed view."""
    sorted_idx, perm = torch.sort(idx)
    rows_first = M.new_empty(idx.numel(), M.shape[0])
    for start in range(0, idx.numel(), block):
        rows = sorted_idx[start : start + block]
        width = int(rows[-1]) + 1
        torch.mm(L[:, :width][rows], M[:, :width].T, out=rows_first[start : start + rows.numel()])
    out = torch.empty_like(rows_first)
    out[perm] = rows_first
    return out.T


def _lower_congruence(S: Tensor, A: Tensor, block: int = 128) -> Tensor:
    """`S^T A S` for a lower-triangular `S` and a symmetric `A`, exactly symmetric: `X = A S`
    by column blocks, each against only the rows of `S` at or below it, then the lower
    block triangle of `S^T X` by row blocks, each against only those rows and the columns
    up to its diagonal, mirrored. About a third of the two dense products' flops (1.8x
    faster than `_congruence` at L = 595-948 on one CPU thread; the rest's own side forms
    one when few columns are left)."""
    n = S.shape[0]
    X = A.new_empty(n, n)
    for j0 in range(0, n, block):
        j1 = min(j0 + block, n)
        torch.mm(A[:, j0:], S[j0:, j0:j1], out=X[:, j0:j1])
    G = A.new_empty(n, n)
    for i0 in range(0, n, block):
        i1 = min(i0 + block, n)
        torch.mm(S[i0:, i0:i1].T, X[i0:, :i1], out=G[i0:i1, :i1])
    G = G.tril_()
    return G.add_(G.T.triu(1))


def _congruence(S: Tensor, A: Tensor) -> Tensor:
    """`S^T A S` for a symmetric `A`, symmetrised (the products leave it so only to
    rounding, and the eigensolvers read one triangle)."""
    G = S.T @ (A @ S)
    return 0.5 * (G + G.T)
