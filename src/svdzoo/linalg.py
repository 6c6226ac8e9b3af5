"""The numerical core: whitening, truncation, ALS refinement and residual splits (Duo-SVD's
column split, built on it: `svdzoo.column_split`).

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
from dataclasses import dataclass
from typing import TYPE_CHECKING

from svdzoo.errors import SvdzooError
from svdzoo.lazy import torch

if TYPE_CHECKING:
    from torch import Tensor

log = logging.getLogger(__name__)


__all__ = [
    "NumericsError",
    "all_finite",
    "Whitener",
    "LowRankFactors",
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
    "resolve_precision",
    "resolve_probe_precision",
]


class NumericsError(SvdzooError, ValueError):
    """Bad numerical input (shape, NaN, rank out of range) or a factorisation that cannot succeed."""


# ---------------------------------------------------------------- validation


def _as64(x: Tensor) -> Tensor:
    return x.detach().to(dtype=torch.float64)


def all_finite(x: Tensor) -> bool:
    """Whether every element of `x` is finite, in one pass: a NaN or an infinity makes the
    sum NaN or infinite, so a finite sum proves it, and only a sum that overflowed is
    checked element by element. 17x faster than `isfinite(x).all()` (10.6 against 182 ms on
    SmolLM2's 49152 x 576 float32 embedding, one thread), which every model load pays."""
    if x.numel() == 0 or not (x.is_floating_point() or x.is_complex()):
        return True
    wide = torch.float64 if x.dtype == torch.float64 else torch.float32
    if not x.is_complex() and bool(torch.isfinite(x.detach().sum(dtype=wide))):
        return True
    return bool(torch.isfinite(x.detach()).all())


def _check_matrix(W: Tensor, what: str = "W") -> Tensor:
    if not isinstance(W, torch.Tensor) or W.dim() != 2:
        raise NumericsError(f"{what} must be a 2-D tensor, got {getattr(W, 'shape', type(W))}")
    W = _as64(W)
    if not all_finite(W):  # checked on every call: one pass, no mask
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
            return torch.eye(self.n, dtype=torch.float64)
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
    if int(info) == 0 and all_finite(L):
        return Whitener("cholesky", n, factor=L)
    if fallback == "raise":
        raise NumericsError(f"Cholesky of the {n}x{n} Gram failed (leading minor {int(info)})")
    mean_diag = float(torch.diagonal(H).mean())
    scale = mean_diag if mean_diag > 0 else 1.0
    eye = torch.eye(n, dtype=torch.float64, device=H.device)
    if fallback == "eigen-shift":
        lam_min = float(torch.linalg.eigvalsh(H)[0])
        base, extra = max(-lam_min, 0.0), 1e-6 * scale
    else:
        lam_min, base, extra = float("nan"), 0.0, 0.05 * scale
    for _ in range(max_tries):
        shift = base + extra
        L, info = torch.linalg.cholesky_ex(H + shift * eye)
        if int(info) == 0 and all_finite(L):
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
    if not isinstance(s, torch.Tensor) or s.dim() != 1:
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
        return U.to(torch.float64), s.to(torch.float64), Vh.to(torch.float64)
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
        return torch.linalg.svdvals(M.to(torch.float32), **_f32_driver(M)).to(torch.float64)
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
    A = (U[:, :k] * r).to(torch.float64)
    B = ((r[:, None] * Vh[:k]) @ L_inv).to(torch.float64)
    return LowRankFactors(
        A, B, sigma.to(torch.float64), layer_loss(W, A, B, whitener.gram().to(W.device))
    )


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


def svd_truncate(W: Tensor, k: int, precision: str = "float64") -> LowRankFactors:
    """Plain truncated SVD (the `SVD` baseline); `loss = ||W - A B||_F^2`. `precision`: how
    the SVD is computed (`resolve_precision`)."""
    W = _check_matrix(W)
    _check_rank(k, *W.shape)  # before the SVD, not after it
    identity = identity_whitener(W.shape[1])
    return truncate(W, identity, k, svd=whitened_svd(W, identity, precision))


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
    if not isinstance(r, torch.Tensor) or r.dim() != 1 or r.numel() != m:
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
        x = torch.randn(n, 1, generator=g, dtype=torch.float64).to(H.device)
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


# ---------------------------------------------------------------- a whitener by name


def _whitener(H: Tensor, kind: str, fallback: str = "eigen-shift") -> Whitener:
    if kind == "cholesky":
        return cholesky_whitener(H, fallback=fallback)
    if kind == "eigen":
        return eigen_whitener(H)
    raise NumericsError(f"unknown whitening {kind!r}; use 'cholesky' or 'eigen'")
