"""Shared factorisers and allocators; named methods are compositions of these."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from svdzoo import allocation, linalg
from svdzoo.errors import ConfigError
from svdzoo.lazy import torch
from svdzoo.methods.base import AllocationContext, MatrixContext, Needs, Range

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- factorisers


def _finite(stat: torch.Tensor, ctx: MatrixContext, what: str) -> torch.Tensor:
    """`stat`, refused if it holds NaN or inf: the floors below would otherwise turn a NaN
    entry (every comparison with it is False) into a "dead" one without a word, and an
    all-NaN statistic into the data-free SVD."""
    if not linalg.all_finite(stat):
        raise linalg.NumericsError(f"{ctx.name}: the {what} statistic holds NaN or inf")
    return stat


def _check_precision(precision: str) -> None:
    if precision not in linalg.PRECISIONS:
        raise ConfigError(f"precision must be one of {linalg.PRECISIONS}, got {precision!r}")


@dataclass(frozen=True)
class PlainSVD:
    """Truncated SVD of W: ignores the data entirely."""

    # the SVD's arithmetic, as `Whitened.precision`: "auto" is the float64 SVD on a CPU
    # (every recorded result) and the eigendecomposition of the smaller Gram on a GPU
    precision: str = "auto"

    def __post_init__(self) -> None:
        _check_precision(self.precision)

    def __call__(self, ctx: MatrixContext, rank: int):
        return linalg.svd_truncate(ctx.W, rank, self.precision)


@dataclass(frozen=True)
class FisherWeighted:
    """FWSVD, the paper's form: SVD of diag(sqrt(I_row)) W, scaling undone on A."""

    def __call__(self, ctx: MatrixContext, rank: int):
        ctx.require("fisher_row")
        r = _finite(ctx.fisher_row.to(ctx.W), ctx, "Fisher row importance").clamp_min(0).sqrt()
        floor = r[r > 0].min() if bool((r > 0).any()) else torch.tensor(1.0, dtype=r.dtype)
        r = torch.where(
            r > 0, r, floor * 1e-3
        )  # rows with no gradient keep a tiny weight, never zero
        return linalg.output_scaled_truncate(ctx.W, r, rank)


@dataclass(frozen=True)
class ActivationScaled:
    """ASVD: SVD of W diag(s), s_j = mean|x_j|^alpha, scaling undone on B."""

    alpha: float = 0.5
    option_ranges = {"alpha": Range(0.0)}  # `base.check_options`

    def whitener(self, ctx: MatrixContext) -> linalg.Whitener:
        """`S = diag(s)`; exposed so one SVD can serve several ranks (sensitivity probes)."""
        ctx.require("absmean")
        s = _finite(ctx.absmean.to(ctx.W), ctx, "activation mean |x|").clamp_min(0).pow(self.alpha)
        floor = s[s > 0].min() if bool((s > 0).any()) else torch.tensor(1.0, dtype=s.dtype)
        s = torch.where(s > 0, s, floor * 1e-3)  # dead features: tiny scale, no division by zero
        return linalg.diag_whitener(s)

    def __call__(self, ctx: MatrixContext, rank: int):
        return linalg.truncate(ctx.W, self.whitener(ctx), rank)


@dataclass(frozen=True)
class Whitened:
    """SVD-LLM (cholesky) or SVD-LLM V2 loss-optimised truncation (eigen)."""

    whitening: str = "cholesky"
    # the SVD's arithmetic: "auto" (float64-eigh on GPUs, float64 on CPUs), "float64",
    # "float32" or "float64-eigh" (linalg.resolve_precision)
    precision: str = "auto"
    # what Cholesky does when `H` is not positive definite (`linalg.cholesky_whitener`):
    # "eigen-shift" (SVD-LLM's official fix, the default), "diag-damp" (Duo-SVD's code:
    # `0.05 * mean(diag H) I`) or "raise"; unused by eigen whitening
    fallback: str = "eigen-shift"
    option_needs = {  # `base.inert_options` refuses an option whose need is unmet
        "fallback": Needs(
            "whitening", "cholesky", "eigen whitening drops the directions of no energy and "
            "never falls back; `fallback` is what Cholesky whitening does with a singular Gram"
        )
    }  # fmt: skip

    def __post_init__(self) -> None:  # refused when configured, before any compute
        if self.whitening not in ("cholesky", "eigen"):
            raise ConfigError(f"whitening must be 'cholesky' or 'eigen', got {self.whitening!r}")
        if self.fallback not in linalg.FALLBACKS:
            raise ConfigError(f"fallback must be one of {linalg.FALLBACKS}, got {self.fallback!r}")
        _check_precision(self.precision)

    def whitener(self, H: torch.Tensor):
        if self.whitening == "cholesky":
            return linalg.cholesky_whitener(H, fallback=self.fallback)
        if self.whitening == "eigen":
            return linalg.eigen_whitener(H)
        raise ConfigError(f"unknown whitening {self.whitening!r}")

    @property
    def _damping(self) -> str | None:
        """The fallback, where it can change the whitener (cache keys)."""
        return self.fallback if self.whitening == "cholesky" else None

    def whitener_of(self, ctx: MatrixContext):
        """The whitener of `ctx.H`, shared by the matrices of one input group when the
        context carries a cache (it depends only on the Gram, never on `W`)."""
        ctx.require("H")
        if ctx.whiteners is None:
            return self.whitener(ctx.H)
        key = (self.whitening, self._damping, ctx.layer, ctx.group)
        return ctx.whiteners.get(key, lambda: self.whitener(ctx.H))

    def svd_of(self, ctx: MatrixContext, whitener: linalg.Whitener | None = None):
        """`whitened_svd(W, S)`, once per matrix when the context carries an SVD cache."""
        whitener = self.whitener_of(ctx) if whitener is None else whitener
        precision = linalg.resolve_precision(self.precision, ctx.W.device)
        if ctx.svds is None:
            return linalg.whitened_svd(ctx.W, whitener, precision)
        return ctx.svds.get(  # keyed by the arithmetic used: "auto" shares its twin's SVD
            (self.whitening, self._damping, precision, ctx.name),
            lambda: linalg.whitened_svd(ctx.W, whitener, precision),
        )

    def __call__(self, ctx: MatrixContext, rank: int):
        whitener = self.whitener_of(ctx)
        return linalg.truncate(ctx.W, whitener, rank, svd=self.svd_of(ctx, whitener))

    def spectrum(self, ctx: MatrixContext) -> torch.Tensor:
        """The whitened singular values. With an SVD cache the full SVD is taken (and kept
        for the factorisation that follows); without one, only the values."""
        if ctx.svds is not None:
            return self.svd_of(ctx)[1]
        return linalg.whitened_spectrum(ctx.W, self.whitener_of(ctx), self.precision)


@dataclass(frozen=True)
class WhitenedOfficialFP32:
    """SVD-LLM's official factorisation numerics: float32 SVD of `W L`, float32-cast
    `inv(L)`. Not its Gram: the official hook sums `X^T X` in float32, svdzoo's cache in
    float64, and its Cholesky retry shifts by an absolute 1e-6 (svdzoo's is relative)."""

    precision = "float32"  # for the manifest (it recorded float64)

    def __call__(self, ctx: MatrixContext, rank: int):
        return linalg.truncate_fp32_official(ctx.W, Whitened("cholesky").whitener_of(ctx), rank)


# ---------------------------------------------------------------- allocators


@dataclass(frozen=True)
class Uniform:
    """Every matrix loses the same fraction of its parameters."""

    def __call__(self, infos: list, target: float, ctx: AllocationContext) -> dict[str, int]:
        return allocation.uniform(infos, target)


def check_table_kind(kind: str) -> None:
    """A sensitivity allocator's `kind` is a table `svdzoo sensitivity` makes."""
    if kind not in ("duo", "asvd"):
        raise ConfigError(f"kind must be a sensitivity table, duo or asvd, got {kind!r}")


@dataclass(frozen=True)
class SensitivityThreshold:
    """ASVD: one perplexity threshold over the (module, retained ratio) sensitivity table."""

    kind: str = "asvd"
    reads_table = True  # the sensitivity-<kind> table (compression.check_allocator_table)

    def __post_init__(self) -> None:  # refused when configured, before anything loads
        check_table_kind(self.kind)

    def __call__(self, infos: list, target: float, ctx: AllocationContext) -> dict[str, int]:
        table = ctx.sensitivity.get(self.kind)
        if table is None:
            raise ConfigError(f"this allocator needs the sensitivity-{self.kind} table")
        return allocation.threshold_allocation(infos, table, target)
