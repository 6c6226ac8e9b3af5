"""The numerical core: whitening, truncation, ALS refinement, residual and column splits.

Conventions (docs/architecture.md, /work/shared/methods.md): `W` is `m x n` (out x in),
`H = X X^T` is the plain-sum Gram of the layer inputs, a rank-`k` pair is `A` (`m x k`)
and `B` (`k x n`) with `W ~ A B`, singular values split symmetrically
(`A = U_k sqrt(S_k)`, `B = sqrt(S_k) V_k^T ...`).

Everything is computed in float64 on the device of the input tensors and returned in
float64; callers cast. Solves, never explicit inverses.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from svdzoo.errors import SvdzooError

log = logging.getLogger(__name__)

Tensor = torch.Tensor
F64 = torch.float64

__all__ = [
    "NumericsError",
    "Whitener",
    "LowRankFactors",
    "ColumnSplit",
    "rank_for_ratio",
    "cholesky_whitener",
    "eigen_whitener",
    "diag_whitener",
    "identity_whitener",
    "whitened_svd",
    "truncate",
    "svd_truncate",
    "input_scaled_truncate",
    "output_scaled_truncate",
    "layer_loss",
    "compensated_target",
    "compensated_truncate",
    "als_refine",
    "residual_truncate",
    "column_preserving_split",
    "column_counts",
    "resolve_precision",
    "resolve_probe_precision",
]


class NumericsError(SvdzooError, ValueError):
    """Bad numerical input (shape, NaN, rank out of range) or a factorisation that cannot succeed."""


# ---------------------------------------------------------------- validation


def _as64(x: Tensor) -> Tensor:
    return x.detach().to(dtype=F64)


def _check_matrix(W: Tensor, what: str = "W") -> Tensor:
    if not isinstance(W, Tensor) or W.dim() != 2:
        raise NumericsError(f"{what} must be a 2-D tensor, got {getattr(W, 'shape', type(W))}")
    W = _as64(W)
    # NaN propagates to both ends of aminmax, inf reaches one: one pass and no mask, 12x
    # faster than isfinite(W).all() on a 1536^2 Gram (checked on every call)
    if W.numel() and not bool(torch.isfinite(torch.stack(torch.aminmax(W))).all()):
        raise NumericsError(f"{what} contains NaN or inf")
    return W


def _check_gram(
    H: Tensor, n: int | None = None, what: str = "H", *, symmetrise: bool = True
) -> Tensor:
    """`H` in float64, finite and square (`n x n`), and symmetrised (a new tensor) unless
    the caller checks symmetry its own way."""
    H = _check_matrix(H, what)
    if H.shape[0] != H.shape[1]:
        raise NumericsError(f"{what} must be square, got {tuple(H.shape)}")
    if n is not None and H.shape[0] != n:
        raise NumericsError(f"{what} is {tuple(H.shape)} but the weight has {n} input features")
    return _symmetrised(H) if symmetrise else H


def _symmetrised(H: Tensor) -> Tensor:
    """`(H + H^T) / 2` as a new tensor: accumulated sums are symmetric only up to rounding.
    A contiguous transpose first (a blocked copy) is 1.8x faster than adding the strided
    view; a clone, as `contiguous()` of a transposed view would be the caller's storage."""
    return H.T.clone(memory_format=torch.contiguous_format).add_(H).mul_(0.5)


def _looks_symmetric(H: Tensor, rows: int = 16, rtol: float = 1e-13) -> bool:
    """Whether `rows` evenly spaced rows of `H` equal its columns to `rtol` of its largest
    diagonal entry (a Gram's largest entry): `O(rows n)` where a full check or
    symmetrisation is `O(n^2)` memory traffic."""
    n = H.shape[0]
    if n == 0:
        return True
    idx = torch.linspace(0, n - 1, min(rows, n), device=H.device).round().long().unique()
    gap = (H.index_select(0, idx) - H.index_select(1, idx).T).abs().max()
    return float(gap) <= rtol * float(H.diagonal().abs().max())


def _check_rank(k: int, m: int, n: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= min(m, n):
        raise NumericsError(f"rank {k!r} is outside [0, {min(m, n)}] for a {m}x{n} matrix")
    return k


def rank_for_ratio(m: int, n: int, ratio: float) -> int:
    """Rank that removes `ratio` of an `m x n` matrix's parameters: floor((1-r) m n / (m+n)).

    `ratio` is the fraction REMOVED (SVD-LLM/AdaSVD convention).
    """
    if m <= 0 or n <= 0:
        raise NumericsError(f"matrix shape must be positive, got {m}x{n}")
    if not math.isfinite(ratio):
        raise NumericsError(f"ratio must be finite, got {ratio}")
    # the tiny epsilon keeps exact products (e.g. 0.5 * 64*64/128 = 16) from flooring to 15
    k = math.floor((1.0 - ratio) * m * n / (m + n) + 1e-9)
    return max(0, min(k, min(m, n)))


# ---------------------------------------------------------------- whitening


@dataclass
class Whitener:
    """A right factor `S` of the Gram, `H ~ S S^T`, and the pseudo-inverse `S^+`.

    kind:
      - `cholesky`: `factor` is lower-triangular `L` (`n x n`), `S = L`.
      - `eigen`: `factor` is `Q_p` (`n x p`, kept eigenvectors), `scale` is `sqrt(lambda_p)`;
        `S = Q_p diag(scale)`, `S^+ = diag(1/scale) Q_p^T` (directions with no energy dropped).
      - `diag`: `factor` is the vector `s`, `S = diag(s)` (ASVD's activation scaling).
      - `identity`: `S = I` (plain SVD).
    `fallback` records what was done when the plain factorisation failed (None if nothing),
    `shift` the diagonal added to `H` before factorising.
    """

    kind: str
    n: int
    factor: Tensor | None = None
    scale: Tensor | None = None
    fallback: str | None = None
    shift: float = 0.0

    @property
    def rank(self) -> int:
        """Number of whitened directions (columns of `S`)."""
        if self.kind == "eigen":
            assert self.scale is not None
            return int(self.scale.numel())
        return self.n

    def apply(self, W: Tensor) -> Tensor:
        """`W @ S` (`m x rank`)."""
        W = _as64(W)
        if self.kind == "identity":
            return W.clone()
        f = self.factor.to(W.device)  # type: ignore[union-attr]
        if self.kind == "cholesky":
            return W @ f
        if self.kind == "eigen":
            return (W @ f) * self.scale.to(W.device)  # type: ignore[union-attr]
        if self.kind == "diag":
            return W * f
        raise NumericsError(f"unknown whitener kind {self.kind!r}")

    def unapply(self, M: Tensor) -> Tensor:
        """`M @ S^+` (`. x n`), by a triangular solve or the eigen pseudo-inverse."""
        M = _as64(M)
        if self.kind == "identity":
            return M.clone()
        f = self.factor.to(M.device)  # type: ignore[union-attr]
        if self.kind == "cholesky":
            return torch.linalg.solve_triangular(f, M, upper=False, left=False)
        if self.kind == "eigen":
            return (M / self.scale.to(M.device)) @ f.T  # type: ignore[union-attr]
        if self.kind == "diag":
            return M / f
        raise NumericsError(f"unknown whitener kind {self.kind!r}")

    def solve_gram(self, M: Tensor) -> Tensor:
        """`M @ H^+` with `H^+ = S^{+T} S^+` (the inverse when `H` is positive definite)."""
        M = _as64(M)
        if self.kind == "identity":
            return M.clone()
        f = self.factor.to(M.device)  # type: ignore[union-attr]
        if self.kind == "cholesky":
            # M L^{-T} = (L^{-1} M^T)^T, then one more right-solve with L
            Y = torch.linalg.solve_triangular(f, M.T, upper=False).T
            return torch.linalg.solve_triangular(f, Y, upper=False, left=False)
        if self.kind == "eigen":
            lam = self.scale.to(M.device).square()  # type: ignore[union-attr]
            return ((M @ f) / lam) @ f.T
        if self.kind == "diag":
            return M / f.square()
        raise NumericsError(f"unknown whitener kind {self.kind!r}")

    def gram(self) -> Tensor:
        """`S S^T`: the Gram this whitener actually represents (after any shift or truncation)."""
        if self.kind == "identity":
            return torch.eye(self.n, dtype=F64)
        f = self.factor
        if self.kind == "cholesky":
            return f @ f.T  # type: ignore[union-attr]
        if self.kind == "eigen":
            return (f * self.scale.square()) @ f.T  # type: ignore[union-attr]
        return torch.diag(f.square())  # type: ignore[union-attr]


FALLBACKS = ("eigen-shift", "diag-damp", "raise")


def cholesky_whitener(H: Tensor, *, fallback: str = "eigen-shift", max_tries: int = 8) -> Whitener:
    """SVD-LLM whitening: `H = L L^T` in float64.

    When Cholesky fails (rank-deficient `H`: dead features, fewer tokens than features)
    the fallback is explicit and logged, never silent, and never produces NaN:

    - `eigen-shift` (SVD-LLM's official fix, made scale-aware): add
      `(-lambda_min + 1e-6 * mean(diag H)) I`. The official code adds an absolute `1e-6`;
      our `H` is an unnormalised sum over tokens, so the damping is relative to its scale.
    - `diag-damp` (Duo-SVD / CPSVD code): add `0.05 * mean(diag H) I`.
    - `raise`: raise `NumericsError`.

    If the shifted matrix still fails (round-off), the extra damping grows 10x per retry.
    The truncation loss reported later is then exact for the shifted Gram, not for `H`.
    """
    if fallback not in FALLBACKS:
        raise NumericsError(f"unknown Cholesky fallback {fallback!r}; choose from {FALLBACKS}")
    H = _check_gram(H)
    n = H.shape[0]
    L, info = torch.linalg.cholesky_ex(H)
    if int(info) == 0 and bool(torch.isfinite(L).all()):
        return Whitener("cholesky", n, factor=L)
    if fallback == "raise":
        raise NumericsError(f"Cholesky of the {n}x{n} Gram failed (leading minor {int(info)})")
    mean_diag = float(torch.diagonal(H).mean())
    scale = mean_diag if mean_diag > 0 else 1.0
    eye = torch.eye(n, dtype=F64, device=H.device)
    if fallback == "eigen-shift":
        lam_min = float(torch.linalg.eigvalsh(H)[0])
        base, extra = max(-lam_min, 0.0), 1e-6 * scale
    else:
        lam_min, base, extra = float("nan"), 0.0, 0.05 * scale
    for _ in range(max_tries):
        shift = base + extra
        L, info = torch.linalg.cholesky_ex(H + shift * eye)
        if int(info) == 0 and bool(torch.isfinite(L).all()):
            log.warning(
                "Cholesky of the %dx%d Gram failed (rank-deficient); %s fallback added %.3e*I "
                "(lambda_min %.3e, mean diag %.3e)",
                n,
                n,
                fallback,
                shift,
                lam_min,
                mean_diag,
            )
            return Whitener("cholesky", n, factor=L, fallback=fallback, shift=shift)
        extra *= 10.0
    raise NumericsError(f"Cholesky of the {n}x{n} Gram failed even after {fallback} damping")


def eigen_whitener(H: Tensor, *, rtol: float = 1e-10) -> Whitener:
    """SVD-LLM V2 loss-optimised truncation: `H = Q Lambda Q^T`, `S = Q Lambda^{1/2}`.

    Eigenvalues `<= rtol * lambda_max` carry no energy; they are dropped (pseudo-inverse),
    not damped, so this works on rank-deficient `H` and leaves the objective untouched.
    """
    H = _check_gram(H)
    n = H.shape[0]
    lam, Q = torch.linalg.eigh(H)
    lam_max = float(lam[-1]) if n else 0.0
    keep = lam > rtol * lam_max if lam_max > 0 else torch.zeros_like(lam, dtype=torch.bool)
    dropped = n - int(keep.sum())
    if dropped:
        log.info(
            "eigen whitening: dropped %d of %d directions with eigenvalue <= %.1e * lambda_max",
            dropped,
            n,
            rtol,
        )
    return Whitener(
        "eigen",
        n,
        factor=Q[:, keep].contiguous(),
        scale=lam[keep].sqrt(),
        fallback=f"dropped {dropped}" if dropped else None,
    )


def diag_whitener(s: Tensor) -> Whitener:
    """`S = diag(s)`, `s > 0`: ASVD's per-input-feature activation scaling."""
    if not isinstance(s, Tensor) or s.dim() != 1:
        raise NumericsError("scale must be a 1-D tensor")
    s = _as64(s)
    if not bool(torch.isfinite(s).all()) or not bool((s > 0).all()):
        raise NumericsError("scale must be finite and strictly positive")
    return Whitener("diag", s.numel(), factor=s)


def identity_whitener(n: int) -> Whitener:
    """`S = I`: the plain (data-free) objective."""
    return Whitener("identity", n)


# ---------------------------------------------------------------- truncation


@dataclass
class LowRankFactors:
    """`W ~ A @ B`. `sigma`: the (whitened) spectrum the truncation came from (None for
    refinements that have no spectrum); `loss`: the objective's value (see each producer)."""

    A: Tensor
    B: Tensor
    sigma: Tensor | None
    loss: float

    @property
    def rank(self) -> int:
        return int(self.A.shape[1])

    def product(self) -> Tensor:
        return self.A @ self.B


PRECISIONS = ("auto", "float64", "float32", "float64-eigh")
PROBE_PRECISIONS = ("auto", "float64", "float32")  # Duo-SVD's candidate solves


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """How a whitened SVD is computed. `auto` is `float64-eigh` on a GPU, `float64` elsewhere.

    - `float64`: `torch.linalg.svd` in float64 (LAPACK's gesdd on a CPU).
    - `float32`: the SVD alone in float32; on a GPU through cuSOLVER's `gesvd`, because
      the default driver (gesvdj) missed float64's truncation error by 0.07-0.16 % at
      LLaMA-7B shapes on an H200, where gesvd was within 2.5e-6.
    - `float64-eigh`: the eigendecomposition of the smaller Gram of `W S` in float64
      (`top_svd`). On the H200 it took 0.10-0.12 s per LLaMA-7B matrix against 1.25-1.8 s
      for the float64 SVD and 0.8-1.3 s for float32, with the truncation error within
      3e-12 of the SVD's (benchmarks/results/svd-drivers.md): the Gram squares the small
      singular values' error, but a truncation only drops them, and the kept factors'
      product is a projection of `W S` whatever those values are.
    On CPUs the float64 SVD stays the default: any other path changes the bits of every
    recorded CPU result."""
    return _resolve(precision, device, PRECISIONS, on_gpu="float64-eigh")


def resolve_probe_precision(precision: str, device: torch.device | str) -> str:
    """Duo-SVD's candidate eigenvalue solves: `auto` is float32 on a GPU, float64 elsewhere
    (their float32 answers are checked against error bounds, `column_preserving_split`)."""
    return _resolve(precision, device, PROBE_PRECISIONS, on_gpu="float32")


def _resolve(precision: str, device: torch.device | str, choices: tuple, on_gpu: str) -> str:
    if precision not in choices:
        raise NumericsError(f"unknown precision {precision!r}; use one of {choices}")
    if precision != "auto":
        return precision
    return on_gpu if torch.device(device).type == "cuda" else "float64"


def _f32_driver(M: Tensor) -> dict[str, str]:
    """cuSOLVER's `gesvd` for float32 on a GPU: the default (gesvdj) missed float64's
    truncation error by up to 0.16 % on an H200 (`resolve_precision`)."""
    return {"driver": "gesvd"} if M.is_cuda else {}


def _thin_svd(
    M: Tensor, precision: str, orthonormal: bool = False
) -> tuple[Tensor, Tensor, Tensor]:
    """`(U, sigma, Vh)` of the float64 `M` by the resolved `precision`, returned in float64.

    `float64-eigh` computes the larger side's vectors as `M V / sigma`, orthonormal only to
    ~`eps sigma_1^2 / sigma_i^2` (0.54 off on one SmolLM2 `q_proj`'s smallest directions);
    `orthonormal` re-orthonormalises them by a QR of `M V` (`= U Sigma`), for callers that
    work in `U`'s coordinates (Duo-SVD's split search)."""
    if precision == "float64-eigh":
        U, sigma, Vh = top_svd(M, min(M.shape))
        if orthonormal and M.shape[0] >= M.shape[1]:
            Q, R = torch.linalg.qr(M @ Vh.T)
            sign = torch.where(torch.diagonal(R) < 0, -1.0, 1.0).to(Q)
            U = Q * sign
        return U, sigma, Vh
    if precision == "float32":
        U, s, Vh = torch.linalg.svd(M.to(torch.float32), full_matrices=False, **_f32_driver(M))
        return U.to(F64), s.to(F64), Vh.to(F64)
    return torch.linalg.svd(M, full_matrices=False)


def whitened_svd(
    W: Tensor, whitener: Whitener, precision: str = "float64", *, orthonormal: bool = False
) -> tuple[Tensor, Tensor, Tensor]:
    """Thin SVD of `W S`: `(U, sigma, Vh)`, sigma descending, returned in float64.

    `precision` (`resolve_precision`): `float32` runs only the SVD in float32 and
    `float64-eigh` takes it from the smaller Gram's eigendecomposition; the whitening
    factor, `W S` and everything after the SVD (the back-substitution through `S`) stay in
    float64, where round-off would be amplified."""
    W = _check_matrix(W)
    if W.shape[1] != whitener.n:
        raise NumericsError(f"W has {W.shape[1]} inputs but the whitener is for {whitener.n}")
    return _thin_svd(whitener.apply(W), resolve_precision(precision, W.device), orthonormal)


def whitened_spectrum(W: Tensor, whitener: Whitener, precision: str = "float64") -> Tensor:
    """The singular values of `W S` only (descending): what allocators read, at a fraction
    of a full SVD's cost."""
    W = _check_matrix(W)
    if W.shape[1] != whitener.n:
        raise NumericsError(f"W has {W.shape[1]} inputs but the whitener is for {whitener.n}")
    M = whitener.apply(W)
    precision = resolve_precision(precision, W.device)
    if precision == "float64-eigh":
        return _gram_eigvals(M).sqrt()
    if precision == "float32":
        return torch.linalg.svdvals(M.to(torch.float32), **_f32_driver(M)).to(F64)
    return torch.linalg.svdvals(M)


def _split(U: Tensor, sigma: Tensor, Vh: Tensor, k: int) -> tuple[Tensor, Tensor]:
    r = sigma[:k].clamp_min(0).sqrt()
    return U[:, :k] * r, r[:, None] * Vh[:k]


def truncate(
    W: Tensor, whitener: Whitener, k: int, *, svd: tuple[Tensor, Tensor, Tensor] | None = None
) -> LowRankFactors:
    """Optimal rank-`k` approximation under `||(W - A B) S||_F`.

    `A = U_k sqrt(S_k)`, `B = sqrt(S_k) V_k^T S^+`; `loss = sum_{i>k} sigma_i^2`, which is the
    layer loss `tr((W-AB) H (W-AB)^T)` exactly when `S S^T = H`. `svd`: the
    `whitened_svd(W, whitener)` already computed (one SVD serves every rank).

    If `k` exceeds the whitened rank (eigen whitening of a rank-deficient `H`) the loss is
    already zero; the spare rank then approximates, by plain SVD, the part of `W` acting on
    the directions `H` never saw, so the factor keeps rank `k` and generalises better than
    zeros would. This part adds nothing to the loss on `H`.
    """
    W = _check_matrix(W)
    m, n = W.shape
    _check_rank(k, m, n)
    U, sigma, Vh = whitened_svd(W, whitener) if svd is None else svd
    kk = min(k, sigma.numel())
    A, Bw = _split(U, sigma, Vh, kk)
    B = whitener.unapply(Bw)
    loss = float(sigma[kk:].square().sum())
    if k > kk:
        extra = svd_truncate(W - A @ B, k - kk)
        log.info(
            "rank %d exceeds whitened rank %d: %d spare directions from plain SVD", k, kk, k - kk
        )
        A, B = torch.cat([A, extra.A], 1), torch.cat([B, extra.B], 0)
    return LowRankFactors(A, B, sigma, loss)


def truncate_fp32_official(W: Tensor, whitener: Whitener, k: int) -> LowRankFactors:
    """SVD-LLM's official numeric path: the Cholesky factor `L` and `inv(L)` are formed in
    float64 and cast to float32, the SVD of `W L` runs in float32, `B = sqrt(S_k) V_k^T
    inv(L)` in float32. Same optimum as `truncate` in exact arithmetic; the difference is
    round-off (methods.md: where SVD-LLM V2's truncation gain may come from).
    `loss` is the float64 layer loss of the float32 factors on the whitener's Gram."""
    W = _check_matrix(W)
    m, n = W.shape
    _check_rank(k, m, n)
    if whitener.kind != "cholesky":
        raise NumericsError(f"the official path whitens by Cholesky, got {whitener.kind!r}")
    L = whitener.factor.to(W.device)  # type: ignore[union-attr]
    L_inv = torch.linalg.inv(L).to(torch.float32)
    U, sigma, Vh = torch.linalg.svd(W.to(torch.float32) @ L.to(torch.float32), full_matrices=False)
    r = sigma[:k].clamp_min(0).sqrt()
    A = (U[:, :k] * r).to(F64)
    B = ((r[:, None] * Vh[:k]) @ L_inv).to(F64)
    return LowRankFactors(A, B, sigma.to(F64), layer_loss(W, A, B, whitener.gram().to(W.device)))


def truncation_loss(W: Tensor, whitener: Whitener, k: int) -> float:
    """`sum_{i>k} sigma_i^2` of `W S` (what `truncate(W, whitener, k).loss` reports), from
    the eigenvalues of the smaller Gram of `W S`: no singular vectors, no factors."""
    return float(_gram_eigvals(whitener.apply(_check_matrix(W)))[k:].sum())


def _gram_eigvals(M: Tensor) -> Tensor:
    """The eigenvalues of the smaller Gram of `M` (`sigma^2`), descending, clamped at 0."""
    G = M.T @ M if M.shape[0] >= M.shape[1] else M @ M.T
    return torch.linalg.eigvalsh(0.5 * (G + G.T)).flip(0).clamp_min(0)


def top_svd(M: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """The leading `k` singular triplets of `M` (`U_k, sigma_k, Vh_k`), from the
    eigendecomposition of the smaller Gram (`M^T M` or `M M^T`) in float64: several times
    cheaper than a full SVD when only a few directions are kept (ResSVD's residual rank).
    Squaring costs accuracy only on the small singular values, which are not returned:
    the leading ones agree with `torch.linalg.svd` to ~1e-14 relative (tested)."""
    M = _check_matrix(M)
    m, n = M.shape
    _check_rank(k, m, n)
    if k == 0:
        return M.new_zeros(m, 0), M.new_zeros(0), M.new_zeros(0, n)
    tall = m >= n
    G = M.T @ M if tall else M @ M.T
    lam, Q = torch.linalg.eigh(0.5 * (G + G.T))
    lam, Q = lam.flip(0)[:k].clamp_min(0), Q.flip(1)[:, :k]
    sigma = lam.sqrt()
    safe = torch.where(sigma > 0, sigma, torch.ones_like(sigma))
    if tall:  # Q = V_k
        return (M @ Q) / safe, sigma, Q.T
    return Q, sigma, (Q.T @ M) / safe[:, None]


def svd_truncate(W: Tensor, k: int) -> LowRankFactors:
    """Plain truncated SVD (the `SVD` baseline); `loss = ||W - A B||_F^2`."""
    W = _check_matrix(W)
    return truncate(W, identity_whitener(W.shape[1]), k)


def input_scaled_truncate(W: Tensor, s: Tensor, k: int) -> LowRankFactors:
    """ASVD: SVD of `W diag(s)`, then `B <- B diag(s)^-1`; loss in the scaled norm."""
    W = _check_matrix(W)
    if s.numel() != W.shape[1]:
        raise NumericsError(f"input scale has {s.numel()} entries, W has {W.shape[1]} inputs")
    return truncate(W, diag_whitener(s), k)


def output_scaled_truncate(W: Tensor, r: Tensor, k: int) -> LowRankFactors:
    """FWSVD (paper form): SVD of `diag(r) W` with row importance `r = sqrt(I)`, then
    `A <- diag(r)^-1 A`; loss = `||diag(r)(W - A B)||_F^2`."""
    W = _check_matrix(W)
    m, n = W.shape
    _check_rank(k, m, n)
    if not isinstance(r, Tensor) or r.dim() != 1 or r.numel() != m:
        raise NumericsError(f"row scale must be a 1-D tensor of {m} entries")
    r = _as64(r).to(W.device)
    if not bool(torch.isfinite(r).all()) or not bool((r > 0).all()):
        raise NumericsError("row scale must be finite and strictly positive")
    U, sigma, Vh = torch.linalg.svd(r[:, None] * W, full_matrices=False)
    A, B = _split(U, sigma, Vh, k)
    return LowRankFactors(A / r[:, None], B, sigma, float(sigma[k:].square().sum()))


def layer_loss(W: Tensor, A: Tensor, B: Tensor, H: Tensor) -> float:
    """`tr((W - A B) H (W - A B)^T) = ||(W - A B) X||_F^2`."""
    W = _check_matrix(W)
    D = W - _as64(A).to(W.device) @ _as64(B).to(W.device)
    H = _check_gram(H, W.shape[1]).to(W.device)
    return float(((D @ H) * D).sum())


# ---------------------------------------------------------------- AdaSVD: error compensation


def _spd_solve(G: Tensor, R: Tensor, what: str) -> Tensor:
    """Solve `G X = R` for symmetric PSD `G` by Cholesky; if singular, add a tiny logged
    ridge (`1e-10 * mean diag`, growing 100x per retry)."""
    G = 0.5 * (G + G.T)
    L, info = torch.linalg.cholesky_ex(G)
    if int(info) == 0:
        return torch.cholesky_solve(R, L)
    md = float(torch.diagonal(G).mean())
    ridge = 1e-10 * (md if md > 0 else 1.0)
    eye = torch.eye(G.shape[0], dtype=G.dtype, device=G.device)
    for _ in range(8):
        L, info = torch.linalg.cholesky_ex(G + ridge * eye)
        if int(info) == 0:
            log.warning("%s is singular; solved with ridge %.3e", what, ridge)
            return torch.cholesky_solve(R, L)
        ridge *= 100.0
    raise NumericsError(f"{what} could not be factorised even with a ridge")


def _check_cross(H_actual: Tensor, C: Tensor, n: int) -> tuple[Tensor, Tensor]:
    Hp = _check_gram(H_actual, n, "H_actual")
    C = _check_matrix(C, "C")
    if C.shape != (n, n):
        raise NumericsError(f"C must be {n}x{n}, got {tuple(C.shape)}")
    return Hp, C


def compensated_target(W: Tensor, C: Tensor, whitener_actual: Whitener) -> Tensor:
    """`T = W C H'^+`: the full-rank map that best reproduces `W X` from the actual inputs `X'`."""
    return whitener_actual.solve_gram(_as64(W) @ _as64(C).to(W.device))


def compensated_truncate(
    W: Tensor, H_actual: Tensor, C: Tensor, k: int, *, whitening: str = "eigen"
) -> LowRankFactors:
    """Closed-form rank-`k` optimum of `||W X - A B X'||_F^2` (AdaSVD error compensation).

    With `H' = X' X'^T` and `C = X X'^T`, the objective splits exactly into
    `||W X - T X'||^2 + ||(T - A B) X'||^2` with `T = W C H'^+` (the cross term vanishes
    because `(W C - T H') = W C (I - H'^+ H')` and `X'^T H'^+ H' = X'^T`). The first part does
    not depend on the factors, so the optimum is the whitened truncation of `T` under `H'`.
    `loss` is the second, rank-induced part. With `H' = C = H` (no earlier compression),
    `T = W` and this is exactly `truncate(W, whitener(H), k)`: compensation only acts
    through the difference between `X` and `X'`.

    `whitening`: `eigen` (pseudo-inverse; default because `H'` of a compressed model is
    more often near-singular) or `cholesky` (with the logged eigen-shift fallback).
    """
    W = _check_matrix(W)
    m, n = W.shape
    _check_rank(k, m, n)
    Hp, C = _check_cross(H_actual, C, n)
    wh = _whitener(Hp.to(W.device), whitening)
    T = compensated_target(W, C.to(W.device), wh)
    return truncate(T, wh, k)


def _check_factors(W: Tensor, A: Tensor, B: Tensor, iters: int) -> tuple[Tensor, Tensor]:
    """`A`, `B` in float64 on `W`'s device, checked to fit `W` (`m x k`, `k x n`)."""
    m, n = W.shape
    A, B = _as64(A).to(W.device), _as64(B).to(W.device)
    if (
        A.dim() != 2
        or B.dim() != 2
        or A.shape[0] != m
        or B.shape[1] != n
        or A.shape[1] != B.shape[0]
    ):
        raise NumericsError(
            f"factor shapes {tuple(A.shape)} x {tuple(B.shape)} do not fit W {m}x{n}"
        )
    if iters < 0:
        raise NumericsError(f"iters must be >= 0, got {iters}")
    return A, B


def als_refine(
    W: Tensor, A: Tensor, B: Tensor, H_actual: Tensor, C: Tensor, iters: int = 1
) -> LowRankFactors:
    """AdaSVD adaComp: alternating least squares on `||W X - A B X'||_F^2`.

    Each iteration: `A = W C B^T (B H' B^T)^-1`, then `B = (A^T A)^-1 A^T W C H'^+`
    (Cholesky solves for the `k x k` systems, a tiny logged ridge if one is singular; the
    eigen pseudo-inverse for `H'`, which is often exactly singular on compressed-model
    inputs, e.g. `o_proj` after a low-rank `v_proj`: a Cholesky that "succeeds" on such an
    `H'` puts huge weights on directions the calibration never saw). Each half-step is an
    exact minimiser, so the objective never increases. Starting from the whitened optimum
    with `H' = C = H` this is a fixed point (methods.md's collapse trap); it helps from a
    plain-SVD start or when `H', C` come from the compressed model's inputs.

    `loss` = `||(T - A B) X'||^2`, `T = W C H'^+`: the objective minus its constant
    (rank-independent) part, comparable with `compensated_truncate`'s loss.
    """
    W = _check_matrix(W)
    m, n = W.shape
    A, B = _check_factors(W, A, B, iters)
    Hp, C = _check_cross(H_actual, C, n)
    Hp, C = Hp.to(W.device), C.to(W.device)
    WC = W @ C
    pinv = eigen_whitener(Hp)  # M @ H'^+ by solve_gram
    for _ in range(iters):
        # A^T = (B H' B^T)^-1 B C^T W^T
        A = _spd_solve(B @ Hp @ B.T, B @ WC.T, "B H' B^T").T
        # B = (A^T A)^-1 A^T W C H'^+
        Y = _spd_solve(A.T @ A, A.T @ WC, "A^T A")
        B = pinv.solve_gram(Y)
    T = pinv.solve_gram(WC)
    return LowRankFactors(A, B, None, layer_loss(T, A, B, Hp))


def adacomp_steps(
    W: Tensor, A: Tensor, B: Tensor, H: Tensor, iters: int = 1, *, S: Whitener | None = None
) -> LowRankFactors:
    """AdaSVD adaComp as the paper states it: `iters` alternations of

    - U-step, least squares against the data: `A = argmin ||(W - A B) X||_F`, i.e.
      `A = W H B^T (B H B^T)^+` (pseudo-inverse);
    - V-step, in weight space: `B = A^+ W` (no `X`).

    Only the U-step minimises the loss on the data; the V-step minimises `||W - A B||_F`, so
    from SVD-LLM's whitened optimum (where the U-step is a fixed point) the data loss can
    only rise: the V-step pulls the factors towards the weights, a regulariser. `loss` is
    the data loss `tr((W - A B) H (W - A B)^T)`. `S`: `adacomp_whitener(H)` if the caller
    has it (the matrices of one input group share it); one serves every U-step.
    """
    W = _check_matrix(W)
    m, n = W.shape
    A, B = _check_factors(W, A, B, iters)
    H = _check_gram(H, n).to(W.device)
    if S is None:
        S = adacomp_whitener(H)
    elif S.n != n or not (S.kind == "eigen" or _plain_cholesky(S)):
        raise NumericsError(
            f"adaComp's U-step needs an exact factor of H ({n}): adacomp_whitener's, got {S.kind}"
        )
    WS = S.apply(W)
    for _ in range(iters):
        A = _u_step(WS, B, S)
        B = adacomp_v_step(W, A)
    return LowRankFactors(A, B, None, layer_loss(W, A, B, H))


# `H` whose smallest eigenvalue is above this fraction of `||H||_F` is factored by Cholesky
# for adaComp; 100x above the eigen whitener's cut (`rtol = 1e-10` of `lambda_max`), so
# the two solve the same problem, nothing dropped
ADACOMP_RCOND = 1e-8


def adacomp_whitener(H: Tensor, *, iters: int = 4) -> Whitener:
    """The factor `H = S S^T` adaComp's U-step works in: the Cholesky factor (`n^3 / 3`
    flops; 0.06 s at n = 1536 on one CPU thread) when `H` is well-conditioned, else
    `eigen_whitener` (0.75 s there), which drops `H`'s null directions. A Cholesky factor
    succeeds on round-off too and keeps it, and the U-step would then fit it (the O(1)
    columns of `adacomp_u_step`), so `lambda_min` is estimated first, by `iters` inverse
    iterations through the factor (`n^2` each; from a seeded start, so an overestimate only
    by what the start left of the smallest eigenvectors, `(lambda_min / lambda_2)^iters`).
    Any exact factor gives one U-step wherever `B H B^T` is invertible."""
    H = _check_gram(H)
    n = H.shape[0]
    try:
        S = cholesky_whitener(H, fallback="raise") if n else None
    except NumericsError:
        S = None
    if S is not None:
        L = S.factor
        g = torch.Generator().manual_seed(0)
        x = torch.randn(n, 1, generator=g, dtype=F64).to(H.device)
        for _ in range(iters):
            x = torch.cholesky_solve(x / x.norm(), L)
        x = x / x.norm()
        lam_min = float((x * (H @ x)).sum())  # a Rayleigh quotient: >= lambda_min
        if lam_min > ADACOMP_RCOND * float(torch.linalg.matrix_norm(H)):
            return S
    return eigen_whitener(H)


def _plain_cholesky(S: Whitener) -> bool:
    """Whether `S` is exactly a Cholesky factor of `H`: no fallback, no shift."""
    return S.kind == "cholesky" and S.fallback is None and S.shift == 0.0


def adacomp_u_step(W: Tensor, B: Tensor, H: Tensor) -> Tensor:
    """`argmin_A ||(W - A B) X||_F`, the minimum-norm solution `W H B^T (B H B^T)^+`.

    Computed as `(W S) (B S)^+` with `H = S S^T` (`adacomp_whitener`), not through the
    pseudo-inverse of the `k x k` Gram `B H B^T`: when `H` is rank-deficient (few distinct
    inputs, or `k > rank H`) that Gram is singular and its null space holds `H`'s round-off
    (~1e-15 of `||H||`, but above `pinv`'s cut relative to `||B H B^T||` once `B` is small
    on `H`'s range); inverting it put O(1) columns into `A` along directions the data never
    saw, and the V-step's `A^+` then blew `B` up (to ~6e7 at LLaMA-7B widths: inf in
    float16). `adacomp_whitener` drops that round-off (eigen) unless `H` is well-conditioned."""
    W, H = _as64(W), _as64(H).to(W.device)
    S = adacomp_whitener(_check_gram(H, W.shape[1]))
    return _u_step(S.apply(W), B, S)


# a Cholesky-whitened `B S` whose QR has a diagonal entry below this fraction of its largest
# is solved by the pseudo-inverse instead (a rank-deficient `B`: zero rows, say)
U_STEP_RCOND = 1e-10


def _u_step(WS: Tensor, B: Tensor, S: Whitener) -> Tensor:
    """`argmin_A ||W S - A B S||_F` (minimum norm) given `W S`. Under a Cholesky factor
    `B S` has full row rank whenever `B` has, and the solution is unique: a QR of
    `(B S)^T`, `A = W S Q R^{-T}` (backward stable, 0.6x the pseudo-inverse's time over
    SmolLM2's 210 matrices at 40 %, the same `A` to 4.9e-14). The eigen whitener's `B S`
    may be rank-deficient, and so may a `B` with zero rows: the pseudo-inverse, which
    gives the minimum-norm solution."""
    BS = S.apply(_as64(B).to(WS.device))
    if S.kind == "cholesky" and BS.shape[0] <= BS.shape[1]:
        Q, R = torch.linalg.qr(BS.T)
        d = R.diagonal().abs()
        if (
            bool(torch.isfinite(d).all())
            and d.numel()
            and float(d.min()) > U_STEP_RCOND * float(d.max())
        ):
            return torch.linalg.solve_triangular(R.T, WS @ Q, upper=False, left=False)
    return WS @ torch.linalg.pinv(BS)


def adacomp_v_step(W: Tensor, A: Tensor) -> Tensor:
    """`argmin_B ||W - A B||_F = A^+ W` (the paper's `V^T = U^+ W`)."""
    W = _as64(W)
    return torch.linalg.pinv(_as64(A).to(W.device)) @ W


# ---------------------------------------------------------------- ResSVD: residual stages


def residual_truncate(
    W: Tensor,
    first: Whitener | None,
    second: Whitener,
    k1: int,
    k2: int,
    *,
    target: Tensor | None = None,
    first_svd: tuple[Tensor, Tensor, Tensor] | None = None,
) -> LowRankFactors:
    """ResSVD: rank-`k1` approximation `W1` of `W` under `first` (plain SVD when None),
    then rank-`k2` approximation of the residual `R = target - W1` under `second`;
    both pairs stacked into one rank-`(k1+k2)` pair (same parameters as two pairs).

    `target` defaults to `W`; pass `compensated_target(...)` to fit the residual to the
    compressed model's inputs. If both stages whiten with the same `S`, the result is
    exactly plain whitened truncation at rank `k1+k2` (the second stage just picks the
    next singular directions), so a gain needs the stages to differ.
    `sigma` is the second stage's (residual) spectrum (its leading `k2` values when only those
    are computed, `top_svd`); `loss` is `||(target - A B) S_2||_F^2`.
    """
    W = _check_matrix(W)
    m, n = W.shape
    _check_rank(k1, m, n)
    _check_rank(k2, m, n)
    _check_rank(k1 + k2, m, n)
    s1 = truncate(W, first, k1, svd=first_svd) if first is not None else svd_truncate(W, k1)
    tgt = W if target is None else _check_matrix(target, "target").to(W.device)
    if tgt.shape != W.shape:
        raise NumericsError(f"target is {tuple(tgt.shape)}, W is {tuple(W.shape)}")
    R = tgt - s1.A @ s1.B
    if second.kind == "identity" and 0 < k2 < min(m, n) // 4:  # plain SVD, few directions
        U, sig, Vh = top_svd(R, k2)
        A2, B2 = _split(U, sig, Vh, k2)
        s2 = LowRankFactors(A2, B2, sig, 0.0)
    else:
        s2 = truncate(R, second, k2)
    A = torch.cat([s1.A, s2.A], 1)
    B = torch.cat([s1.B, s2.B], 0)
    loss = float(second.apply(tgt - A @ B).square().sum())
    return LowRankFactors(A, B, s2.sigma, loss)


# ---------------------------------------------------------------- Duo-SVD: column preserving


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


def _whitener(H: Tensor, kind: str, fallback: str = "eigen-shift") -> Whitener:
    if kind == "cholesky":
        return cholesky_whitener(H, fallback=fallback)
    if kind == "eigen":
        return eigen_whitener(H)
    raise NumericsError(f"unknown whitening {kind!r}; use 'cholesky' or 'eigen'")


def _memoised(f: Callable[[int], float], cache: dict[int, float]) -> Callable[[int], float]:
    """`f` evaluated once per point, into `cache` (the search schedules read it back)."""

    def F(x: int) -> float:
        if x not in cache:
            cache[x] = f(x)
        return cache[x]

    return F


def _golden_int(f: Callable[[int], float], lo: int, hi: int) -> int:
    """Golden-section search for a minimum of `f` on the integers `[lo, hi]` (assumes
    unimodal, as Duo-SVD does), in its exact integer form (Fibonacci search): the bracket
    shrinks by consecutive Fibonacci numbers, so the interior point that survives a step is
    the next step's probe and every step costs one evaluation (rounding the continuous
    golden ratio misses that reuse: about 4 more evaluations at Duo-SVD's ranks). Points
    past `hi` pad the bracket and count as +inf. The last bracket of <= 3 points is
    scanned, `lo` (the plain factorisation) is always compared; returns the argmin seen,
    the smallest on ties."""
    cache: dict[int, float] = {}
    inner = _memoised(f, cache)

    def F(x: int) -> float:
        return math.inf if x > hi else inner(x)

    fib = [0, 1]
    while fib[-1] < hi - lo:
        fib.append(fib[-1] + fib[-2])
    a, n = lo, len(fib) - 1
    while n > 3:  # the bracket [a, a + fib[n]] holds a minimum
        if F(a + fib[n - 2]) <= F(a + fib[n - 1]):
            n -= 1  # keep [a, a + fib[n - 1]]: its right probe is the left one just used
        else:
            a, n = a + fib[n - 2], n - 1  # keep the right part: its left probe was the right
    for x in range(a, min(a + fib[n], hi) + 1):
        F(x)
    F(lo)
    return min(cache, key=lambda x: (cache[x], x))


def _rounded_golden(f: Callable[[int], float], lo: int, hi: int) -> int:
    """svdzoo's first integer golden-section search (`schedule=rounded`, kept so that the
    results recorded with it before 2026-12-03 reproduce): both probes rounded afresh from
    the bracket at every step (so the surviving one is often missed), the final bracket of
    <= 4 points scanned, `lo` always compared. Returns the argmin seen."""
    cache: dict[int, float] = {}
    F = _memoised(f, cache)

    invphi = (math.sqrt(5) - 1) / 2
    a, b = lo, hi
    while b - a > 3:
        c = b - round(invphi * (b - a))
        d = a + round(invphi * (b - a))
        if c >= d:
            c, d = (a + b) // 2, (a + b) // 2 + 1
        if F(c) <= F(d):
            b = d
        else:
            a = c
    for x in range(a, b + 1):
        F(x)
    F(lo)
    return min(cache, key=lambda x: (cache[x], x))


def _official_schedule(f: Callable[[int], float], k: int, f0: float) -> int:
    """Duo-SVD's own split search (official code, `component/cal_r.py`), re-implemented:

    1. A pre-check at `delta_r = round(0.382 k)` and `round(0.090 k)` (`phi^-2 k` and
       `phi^-5 k`, at least 1): if neither beats the plain error `f0`, no split is tried.
       Most matrices of a real model end here, after two evaluations.
    2. Otherwise golden-section on `[0, k]` with the interior probes rounded, the
       surviving one reused (one new evaluation per step, earlier values reused), while
       the bracket spans >= 3; `f(c) < f(d)` keeps the left part, ties the right.
    3. The answer is the better of the last two probes (no scan of the final bracket;
       the left one on ties). Returns 0 when the pre-check gives up.
    """
    F = _memoised(f, {0: f0})

    inv_phi = (math.sqrt(5) - 1) / 2
    inv_phi2 = inv_phi * inv_phi
    if F(max(1, round(k * inv_phi2))) >= f0 and F(max(1, round(k * inv_phi * inv_phi2**2))) >= f0:
        return 0
    low, high = 0, k
    c, d = low + round(inv_phi2 * (high - low)), low + round(inv_phi * (high - low))
    while high - low >= 3:
        if F(c) < F(d):
            high, d = d, c
            c = low + round(inv_phi2 * (high - low))
        else:
            low, c = c, d
            d = low + round(inv_phi * (high - low))
    return c if F(c) <= F(d) else d


SCHEDULES = ("official", "golden", "rounded")

F32_EPS = float(torch.finfo(torch.float32).eps)
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


def _eigh_top(T: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The top `k` eigenpairs of a float64 `eigh` (values descending)."""
    if k == 0:  # a split that trades all the rank: nothing to solve
        return T.new_empty(0), T.new_empty(T.shape[0], 0)
    mu, E = torch.linalg.eigh(T)
    return mu.flip(0)[:k], E.flip(1)[:, :k]


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
        return _eigh_top(T, k)
    norm = float(torch.linalg.matrix_norm(T))
    scaled = _scaled_f32(T, norm)
    if scaled is None:
        return _eigh_top(T, k)
    mu32, E32 = torch.linalg.eigh(scaled[0])
    if not (bool(torch.isfinite(mu32).all()) and bool(torch.isfinite(E32).all())):
        return _eigh_top(T, k)
    mu32 = mu32.to(F64) * scaled[1]
    error = 2.0 * _f32_error(T, 1, norm)  # on one of float32's eigenvalues, with a margin
    above = float(mu32[r - k - 1]) + error  # an upper bound on T's (k+1)-th eigenvalue
    if float(mu32[r - k]) - error <= above:  # no gap float32 can show: no bound to be had
        return _eigh_top(T, k)
    floor = 10 * r * torch.finfo(F64).eps * norm  # any float64 solve's round-off
    trace = float(T.diagonal().sum())
    first, most = TOP_EIGH_ITERATIONS
    Q = torch.linalg.qr(E32[:, r - s :].to(F64)).Q
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
    return _eigh_top(T, k)


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


class _RestProblem:
    """Duo-SVD's rest truncation, for the top-`c` scored columns kept, solved in the
    coordinates of the baseline's whitened SVD `W S = U Sigma V^T`.

    For kept columns `K` and the rest `R`, Duo-SVD truncates the rest under `H_RR`: the
    optimum keeps the top eigenvectors of `G_R = W_R H_RR W_R^T`. Every column of `W` lies
    in the span of `U` (`S` is invertible), so in the coordinates `W^ = U^T W` the problem
    is `r x r` (`r = min(m, n)`), whatever the shape:
    `T = U^T G_R U = diag(lam) - (a Q^T + Q a^T)`, with `a = W^_K`, `P^ = W^ H`,
    `Q = P^_K - a H_KK / 2` (a correction of rank <= 2c), or `T = W^_R H_RR W^_R^T`
    directly when few columns are left. One eigenvalue solve of `T` per candidate, no
    Cholesky, no whitened product; the kept columns' coordinates are computed once, as a
    prefix of the score order. Because the kept sets are nested, `T` is updated from the
    nearest candidate already formed (`_update`): moving the boundary from `c0` to `c`
    changes `T` by a rank-`2|c - c0|` term, `r x |c - c0| x (r + min(c, c0))` flops instead
    of `r x c x (r + c)`; the search's late probes sit a few columns apart.

    `d` (the `ritz` search): when `d + 2c < r`, the top eigenvectors lie, up to a coupling
    bounded by `lam` past `d`, in the first `d` coordinates plus the span of the kept
    columns' coordinates, so a `(d + 2c)`-sized Rayleigh-Ritz problem replaces `T`.

    What it returns is not an estimate: the top `kr` eigen- (or Ritz) vectors `E` give the
    factors `A B = U E E^T U^T W_R`, whose loss `tr(G_R) - sum(top kr)` is the loss
    reported. With `d=None` it is the exact truncation's; the Ritz one bounds it from above
    (Ky Fan), tight to the coupling's square (tests and `bench_compress.py` compare both
    with `search="reference"`, which whitens every rest afresh).
    """

    def __init__(
        self,
        W: Tensor,
        H: Tensor,
        U: Tensor,
        sigma: Tensor,
        order: Tensor,
        d: int | None,
        *,
        Vh: Tensor,
        L: Tensor,
        rest_factor: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        self.W, self.H, self.U, self.order, self.d = W, H, U, order, d
        self.rest_factor = rest_factor  # rest indices -> a Cholesky factor of H_RR
        self._WtW: Tensor | None = None  # W^T W, made once the own side is used
        self._own_formed: dict[int, tuple[Tensor, Tensor, Tensor]] = {}  # c -> (G, S_R, R)
        self._own_factor: Tensor | None = None  # `_prepare_own`'s Cholesky factor
        self._own_size = 0  # the leading block `_prepare_own` has made (n: the fallback)
        self.solved = 0  # candidates whose loss was asked for
        # row-major: LAPACK's `Vh` comes column-major, and a product with a slice of that
        # layout ran 20x slower than with a row-major copy (4 ms against 92 ms for 11 kept
        # columns at r = 1024, n = 2752), which the search's late probes make many of
        self.sigma, self.Vh, self.L = sigma, Vh.contiguous(), L
        self.lam = sigma.square()
        self.tr_g = float(self.lam.sum())
        # the kept prefix's coordinates `U^T W_K` and `U^T W H_K`, in buffers that grow by
        # doubling (re-concatenating at every extension copied them ~12 times per search)
        self._have = 0
        self._Wc = W.new_empty(U.shape[1], 0)
        self._Pc = W.new_empty(U.shape[1], 0)
        self._W_hat: Tensor | None = None  # U^T W, made once the direct form is used
        self._formed: dict[int, Tensor] = {}  # c -> T(c), the few most recently formed
        self._Wt: Tensor | None = None
        self._Ut: Tensor | None = None
        self._last_loss: float | None = None  # the latest candidate's, for `loss_f32`

    KEEP_FORMED = 3  # r x r float64 each: 0.4 GB at r = 4096
    NARROW = 64  # columns: `_update` adds a narrower block as two GEMMs

    def _update_cost(self, c: int) -> tuple[int, int]:
        """`(c0, flops / 2)`: the formed candidate to update `T(c)` from (0: `diag(lam)`)."""
        r = self.lam.numel()
        best, cost = 0, r * c * (r + c)
        for c0 in self._formed:
            step = abs(c - c0)
            if r * step * (r + min(c, c0) + step) < cost:
                best, cost = c0, r * step * (r + min(c, c0) + step)
        return best, cost

    def _direct_cost(self, c: int) -> int:
        left = self.W.shape[1] - c
        return self.lam.numel() * left * (self.lam.numel() + left)

    def _update(self, c: int) -> Tensor:
        """`T(c)` from `T(c0)`: with the kept prefix split into `o = [0, lo)` and
        `w = [lo, hi)`, `T(hi) = T(lo) - (a_w Y^T + Y a_w^T)`, where
        `Y = P^_w - a_o H_ow - a_w H_ww / 2` (the cross terms with the columns kept before).
        A narrow `w` (the search's late probes) adds both halves to `T(c0)` as GEMMs; a
        wide one forms `X = a_w Y^T` once and adds `X` and its transpose (one GEMM and a
        strided pass instead of two GEMMs: cheaper past ~64 columns at r = 192 and 576)."""
        c0, _ = self._update_cost(c)
        lo, hi = min(c, c0), max(c, c0)
        a, b = self._coordinates(hi)
        kept = self.order[:hi]
        a_w = a[:, lo:hi]
        # rows w of H, read as its columns (H symmetric), restricted to the kept prefix
        H_w = self.H.index_select(0, kept[lo:]).index_select(1, kept)
        Y = torch.addmm(b[:, lo:], a_w, H_w[:, lo:].T, alpha=-0.5)
        if lo > 0:
            Y.addmm_(a[:, :lo], H_w[:, :lo].T, alpha=-1.0)
        sign = -1.0 if c > c0 else 1.0
        if c0 > 0 and hi - lo <= self.NARROW:
            T = torch.addmm(self._formed[c0], a_w, Y.T, alpha=sign).addmm_(Y, a_w.T, alpha=sign)
        elif c0 > 0:
            X = a_w @ Y.T
            T = torch.add(self._formed[c0], X, alpha=sign).add_(X.T, alpha=sign)
        else:
            X = a_w @ Y.T
            T = -(X + X.T)
            T.diagonal().add_(self.lam)
        self._formed[c] = T
        while len(self._formed) > self.KEEP_FORMED:
            del self._formed[next(iter(self._formed))]
        return T

    def _coordinates(self, c: int) -> tuple[Tensor, Tensor]:
        have = self._have
        if c > have:
            new = self.order[have:c]
            if self._Wt is None:
                self._Wt = self.W.T.contiguous()  # columns of W as rows: gathers are memcpys
            if c > self._Wc.shape[1]:
                size = min(max(c, 2 * self._Wc.shape[1]), self.W.shape[1])
                Wc, Pc = (self._Wc.new_empty(self._Wc.shape[0], size) for _ in range(2))
                Wc[:, :have], Pc[:, :have] = self._Wc[:, :have], self._Pc[:, :have]
                self._Wc, self._Pc = Wc, Pc
            if self._Ut is None:  # `U^T` row-major: the product with the transposed view
                self._Ut = self.U.T.contiguous()  # ran 1.8x slower (70 -> 39 ms, r = 1024)
            torch.mm(self._Ut, self._Wt.index_select(0, new).T, out=self._Wc[:, have:c])
            # U^T W H = Sigma V^T L^T, as W L = U Sigma V^T and H = L L^T: an r x n x c
            # product instead of m x n x c plus r x m x c (5x less for gate/up)
            self._Pc[:, have:c] = self.sigma[:, None] * _times_lower_rows(self.Vh, self.L, new)
            self._have = c
        return self._Wc[:, :c], self._Pc[:, :c]

    def _direct(self, c: int) -> tuple[Tensor, float]:
        if self._W_hat is None:
            self._W_hat = self.U.T @ self.W
        rest = self.order[c:]  # T does not depend on the rest's order
        Wr = self._W_hat.index_select(1, rest)
        T = (Wr @ self.H.index_select(0, rest).index_select(1, rest)) @ Wr.T
        T = 0.5 * (T + T.T)
        return T, float(T.diagonal().sum())

    def _reduces(self, c: int) -> bool:
        """Whether the Ritz subspace (`ritz` search) is smaller than the coordinates."""
        return self.d is not None and self.d + 2 * c < self.lam.numel()

    def _problem(self, c: int) -> tuple[Tensor | None, Tensor, float]:
        """`(V, V^T T V, tr G_R)`; `V` None means the full coordinates."""
        d = self.d
        reduce = self._reduces(c)
        if not reduce:
            if c in self._formed:
                T = self._formed[c]
            elif self._direct_cost(c) < self._update_cost(c)[1]:
                return (None, *self._direct(c))
            else:
                T = self._update(c)
            return None, T, float(T.diagonal().sum())
        a, b = self._coordinates(c)
        kept = self.order[:c]
        Q = b - 0.5 * (a @ self.H.index_select(0, kept).index_select(1, kept))
        tr = self.tr_g - 2.0 * float((a * Q).sum())
        assert d is not None
        Uz, sz, _ = torch.linalg.svd(torch.cat([a[d:], Q[d:]], 1), full_matrices=False)
        tol = (float(sz[0]) if sz.numel() else 0.0) * max(Uz.shape) * torch.finfo(F64).eps
        V = Uz[:, sz > tol]  # orthonormal, in the coordinates past d
        a = torch.cat([a[:d], V.T @ a[d:]], 0)
        Q = torch.cat([Q[:d], V.T @ Q[d:]], 0)
        X = a @ Q.T
        T = -(X + X.T)
        T.diagonal()[:d] += self.lam[:d]
        T[d:, d:] += (V.T * self.lam[d:]) @ V
        return V, T, tr

    def _prepare_own(self, left: int) -> None:
        """The own side's shared work, for rests of up to `left` columns. Taken in the
        reverse score order, every candidate's rest is a leading block, and the Cholesky
        factor of a leading block of `H` is the leading block of its Cholesky factor: one
        factorisation of the reordered `H` and one `W^T W`, each as large as the largest
        rest asked for so far (extended by blocks when a larger one is asked: the search
        rarely needs all of `H`), serve every candidate, as views. When the factorisation
        fails, each rest is whitened by `rest_factor` (the reference's, with its fallback)
        instead, against the whole `W^T W`."""
        size = self._own_size
        if left <= size:
            return
        rev = self.order.flip(0)
        new = rev[size:left]
        H_new = self.H.index_select(0, new).index_select(1, rev[:left])  # rows `[size, left)`
        L = H_new.new_zeros(left, left)
        if size:
            old = self._own_factor
            assert old is not None
            L[:size, :size] = old
            L21 = torch.linalg.solve_triangular(old.T, H_new[:, :size], upper=True, left=False)
            L[size:, :size] = L21
            H_new[:, size:].sub_(L21 @ L21.T)
        L22, info = torch.linalg.cholesky_ex(H_new[:, size:])
        if int(info) != 0 or not bool(torch.isfinite(L22).all()):
            self._own_factor, self._own_size = None, self.W.shape[1]
            self._WtW = self.W.T @ self.W  # symmetric to rounding; each `G` is symmetrised
            return
        L[size:, size:] = L22
        Wl = self.W.index_select(1, rev[:left])
        A = Wl.new_empty(left, left)
        B = Wl[:, size:].T @ Wl
        if size:
            assert self._WtW is not None
            A[:size, :size] = self._WtW
            A[:size, size:] = B[:, :size].T
        A[size:] = B
        self._own_factor, self._WtW, self._own_size = L, A, left

    def _own(self, c: int) -> tuple[Tensor, float]:
        """The rest's own `L x L` problem, `L = n - c`: `G = S_R^T (W^T W)_RR S_R` for a
        Cholesky factor `S_R` of `H_RR`, whose eigenvalues are those of the whitened rest's
        Gram `(W_R S_R)^T (W_R S_R)` (in any column order). With `_prepare_own`'s views a
        candidate costs two `L x L` GEMMs, no gather and no factorisation, instead of
        `m L^2` flops and a Cholesky. The last few are kept for `own_factors` (the chosen
        candidate was formed by the search)."""
        assert self.rest_factor is not None
        if c in self._own_formed:
            G = self._own_formed[c][0]
            return G, float(G.diagonal().sum())
        left = self.order.numel() - c
        self._prepare_own(left)
        assert self._WtW is not None
        if self._own_factor is not None:  # leading blocks, in the reverse score order
            cols = self.order.flip(0)[:left]
            S = self._own_factor[:left, :left]
            c0, _ = self._own_form_cost(c)
            if c0 is not None:
                G = self._own_update(self._own_formed[c0][0], left)
            else:
                G = _lower_congruence(S, self._WtW[:left, :left])
        else:
            cols = torch.sort(self.order[c:]).values  # the reference's order and Cholesky
            S = self.rest_factor(cols)
            G = _congruence(S, self._WtW.index_select(0, cols).index_select(1, cols))
        self._own_formed[c] = (G, S, cols)
        while len(self._own_formed) > self.KEEP_FORMED:
            del self._own_formed[next(iter(self._own_formed))]
        return G, float(G.diagonal().sum())

    def _own_form_cost(self, c: int) -> tuple[int | None, int]:
        """`(c0, flops)`: the formed own-side candidate to update `G(c)` from, or None to form
        it afresh (`4 L^3` flops). Updates need `_prepare_own`'s shared factor."""
        left = self.order.numel() - c
        best, cost = None, 4 * left**3
        if self._WtW is not None and self._own_factor is None:
            return best, cost
        for c0, (G0, _, _) in self._own_formed.items():
            lo, step = min(left, G0.shape[0]), abs(left - G0.shape[0])
            flops = 4 * step * lo * (lo + step) + 3 * lo * lo
            if flops < cost:
                best, cost = c0, flops
        return best, cost

    def _own_update(self, G0: Tensor, left: int) -> Tensor:
        """`G` for `left` columns from a formed `G0` (its `L0` columns): in the reverse
        score order the two rests are nested leading blocks, `o = [0, lo)` and the
        difference `w = [lo, hi)`. With `P = A_wo S_oo` and `Y = P + A_ww S_wo / 2`,
        `G(hi)_oo = G(lo) + X + X^T` for `X = S_wo^T Y`, `G(hi)_wo = S_ww^T (2 Y - P)` and
        `G(hi)_ww = S_ww^T A_ww S_ww` (`S` the shared Cholesky factor, `A = W^T W`): about
        `4 |w| lo^2` flops instead of `4 L^3`; the search's late probes sit a few columns
        apart."""
        S, A = self._own_factor, self._WtW
        assert S is not None and A is not None
        lo, hi = min(left, G0.shape[0]), max(left, G0.shape[0])
        S_wo, S_ww, A_ww = S[lo:hi, :lo], S[lo:hi, lo:hi], A[lo:hi, lo:hi]
        P = A[lo:hi, :lo] @ S[:lo, :lo]
        Y = torch.addmm(P, A_ww, S_wo, alpha=0.5)
        X = S_wo.T @ Y
        if left < G0.shape[0]:
            return (G0[:lo, :lo] - X).sub_(X.T)
        G = G0.new_empty(hi, hi)
        torch.add(G0, X, out=G[:lo, :lo])
        G[:lo, :lo] += X.T
        G_wo = S_ww.T @ (2.0 * Y - P)
        G[lo:, :lo] = G_wo
        G[:lo, lo:] = G_wo.T
        G[lo:, lo:] = _lower_congruence(S_ww, A_ww)
        return G

    def own_factors(self, c: int, rest: Tensor, kr: int) -> tuple[Tensor, Tensor, float] | None:
        """`(A, B, loss)` for the rest columns (`rest` ascending) from the eigenvectors of
        the own side's `G`, split like `truncate` (`A = W_R S_R V_k s^{-1/2}`,
        `B = s^{1/2} V_k^T S_R^{-1}`, `s` the singular values of `W_R S_R`); the loss is
        `tr G - sum(top kr)`, exact for these factors. None when a kept singular value is
        numerically zero (the caller then truncates the rest by its own SVD)."""
        G, tr = self._own(c)
        _, S, cols = self._own_formed[c]
        to_rest = torch.argsort(cols)  # rest = cols[to_rest]
        if not torch.equal(cols[to_rest], rest):
            raise NumericsError("own_factors: the rest is not the candidate's")
        mu, V = _top_eigh(G, kr)
        if kr and not float(mu[-1]) > G.shape[0] * torch.finfo(F64).eps * float(mu[0]):
            return None
        s = mu.sqrt()
        A = (self.W.index_select(1, cols) @ (S @ V)) / s.sqrt()
        B = torch.linalg.solve_triangular(S, s.sqrt()[:, None] * V.T, upper=False, left=False)
        return A, B.index_select(1, to_rest), max(tr - float(mu.sum()), 0.0)

    # the cost model's weights, in units of a float32 eigenvalue-solve flop (an `N x N`
    # solve costs `N^3`), measured on CPU at LLaMA-7B shapes / 4 (r = 1024, L = 300-2500):
    # the own side's solve per `L^3` (1.0 at L = 600 to 1.6 at L = 300) and a flop of
    # forming its `G` (a float64 GEMM flop: 0.25; formed afresh, the own side came to 2.0
    # per `L^3` at L = 922 to 4.0 at L = 410), `_prepare_own`'s `W^T W` per `m n^2` and
    # Cholesky per `n^3`, and a GEMM flop of the coordinates or of forming `T`
    OWN_SIDE_SOLVE = 1.2
    OWN_SIDE_FORM = 0.25
    OWN_SIDE_GRAM = 0.6
    OWN_SIDE_CHOLESKY = 0.8
    GEMM_FLOP = 0.4
    # the candidates `_prepare_own` is shared by, once two have been solved: the official
    # schedule's pre-check makes two and often stops (most matrices of a real model); past
    # it, a golden-section search makes ~log_phi(k / 3) more, 8-10 at ranks 100-500
    AMORTISE = 4

    def own_side_cheaper(self, c: int) -> bool:
        """The cost model for one candidate: the rest's own side (`_own`) costs
        `OWN_SIDE_SOLVE L^3` (`L = n - c` columns left) and forming its `G` (afresh or
        updated, `_own_form_cost`), plus `_prepare_own` the first time; the
        `r x r` problem `r^3` plus forming `T` (the cheaper of an update and the direct
        product) and the coordinates of the kept columns not yet computed, at `GEMM_FLOP`
        each. A Ritz reduction, when it applies, is kept, and so is a `T` already formed.
        Without `rest_factor` there is no own side."""
        if self.rest_factor is None:
            return False
        m, n = self.W.shape
        r, left = self.lam.numel(), n - c
        if self._reduces(c) or c in self._formed:
            return False
        form = 2 * min(self._update_cost(c)[1], self._direct_cost(c))
        new = max(0, c - self._have)
        coordinates = r**3 + self.GEMM_FLOP * (form + 2 * r * (m + n) * new)
        once, size = 0.0, self._own_size
        if left > size:  # `_prepare_own`'s block made or extended
            once = self.OWN_SIDE_GRAM * m * (left**2 - size**2)
            once += self.OWN_SIDE_CHOLESKY * (left**3 - size**3)
            if self.solved >= 2:  # past Duo-SVD's pre-check: a search follows
                once /= self.AMORTISE
        own = self.OWN_SIDE_SOLVE * left**3 + self.OWN_SIDE_FORM * self._own_form_cost(c)[1]
        return own + once <= coordinates

    def _side(self, c: int) -> tuple[Tensor, float]:
        """`(T, tr)` of the cheaper exact form of the candidate's problem."""
        if self.own_side_cheaper(c):
            return self._own(c)
        _, T, tr = self._problem(c)
        return T, tr

    def _solve64(self, T: Tensor, tr: float, kr: int) -> float:
        """`tr - sum(top kr)` from one float64 eigenvalue solve."""
        top = torch.linalg.eigvalsh(T).flip(0)[:kr].clamp_min(0)
        self._last_loss = max(tr - float(top.sum()), 0.0)
        return self._last_loss

    def _solve32(self, T: Tensor, norm: float) -> Tensor | None:
        """`T`'s eigenvalues (ascending, float64) from one float32 solve of `T` scaled by a
        power of two near `||T||_F` (exact both ways, so float32's range cannot underflow or
        overflow it; `norm` is `||T||_F`); None when the scale or the result is not finite."""
        scaled = _scaled_f32(T, norm)
        if scaled is None:
            return None
        T32, scale = scaled
        mu = torch.linalg.eigvalsh(T32).to(F64)
        if not bool(torch.isfinite(mu).all()):
            return None
        return mu * scale

    def loss(self, c: int, kr: int) -> float:
        """The candidate's loss from one float64 eigenvalue solve: `tr - sum(top kr)`."""
        self.solved += 1
        T, tr = self._side(c)
        return self._solve64(T, tr, kr)

    def loss_f32(self, c: int, kr: int) -> tuple[float, float]:
        """`(loss, error bound)` from one float32 eigenvalue solve of the float64-formed
        problem (forming it in float32 loses up to 0.3 % to cancellation against `lam`).
        The loss is the sum of the eigenvalues past `kr` plus the trace a Ritz basis leaves
        out, in float64 (the form `tr - sum(top kr)` would amplify float32's error by
        `tr / loss`); its error bound is `_f32_error`'s. The float64 solve is returned
        instead, with a zero bound, when that bound exceeds `F32_MAX_ERROR` of the loss
        (a float32 value would be re-solved at almost every comparison) or the float32
        solve fails; and without trying float32 first when the bound exceeds half that
        of the latest loss solved (the search's neighbouring candidates differ by a few %)."""
        self.solved += 1
        T, tr = self._side(c)
        size = T.shape[0]
        norm = float(torch.linalg.matrix_norm(T))
        bound = _f32_error(T, size - kr, norm)
        if self._last_loss is not None and bound > 0.5 * F32_MAX_ERROR * self._last_loss:
            return self._solve64(T, tr, kr), 0.0
        mu = self._solve32(T, norm)
        if mu is None:
            return self._solve64(T, tr, kr), 0.0
        outside = tr - float(T.diagonal().sum())  # 0 up to rounding unless reduced
        value = max(outside + float(mu[: max(size - kr, 0)].clamp_min(0).sum()), 0.0)
        if bound > F32_MAX_ERROR * value:
            return self._solve64(T, tr, kr), 0.0
        self._last_loss = value
        return value, bound

    def factors(self, c: int, rest: Tensor, kr: int) -> tuple[Tensor, Tensor, float]:
        """`(A, B, loss)` for the rest columns, split like `truncate` (`A = U_kr sqrt(s)`,
        `B = s^{-1/2} U_kr^T W_R`, which is `sqrt(s) V^T S_R^+` of the whitened SVD)."""
        V, T, tr = self._problem(c)
        mu, E = _top_eigh(T, kr)
        mu = mu.clamp_min(0)
        if V is not None:  # back from the Ritz basis to the coordinates
            d = self.d
            E = torch.cat([E[:d], V @ E[d:]], 0)
        r = mu.sqrt().sqrt()  # the square roots of the singular values
        safe = torch.where(r > 0, r, torch.ones_like(r))
        Uk = self.U @ E
        A = Uk * r
        B = (Uk.T @ self.W.index_select(1, rest)) / safe[:, None]
        B = torch.where(r[:, None] > 0, B, torch.zeros_like(B))
        return A, B, max(tr - float(mu.sum()), 0.0)


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
        A = torch.zeros(m, 0, dtype=F64, device=W.device)
        B = torch.zeros(0, 0, dtype=F64, device=W.device)
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
