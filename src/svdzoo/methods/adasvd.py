"""AdaSVD (Li et al., arXiv 2502.01403): adaComp error compensation + adaCR layer ratios.

adaComp, as the paper states it (`adasvd`, `adasvd-comp`). Start from SVD-LLM's whitened
truncation (Cholesky of the original model's Gram `H`), `sqrt(Sigma)` folded into both
factors (`W ~ A B`). Then `tau` alternations (`tau = 1`, the paper's best) of a U-step,
least squares against the data `X`, `A = W H_X B^T (B H_X B^T)^+` (computed as
`(W S)(B S)^+`, `H_X = S S^T`: its Cholesky factor when `H_X` is well-conditioned, else
its eigen whitener, so a rank-deficient `H_X` stays exact; `linalg.adacomp_whitener`), and
a V-step in weight space, `B = A^+ W` (`linalg.adacomp_steps`). The paper does not say whose inputs `X` are.
With the original model's inputs (`H_X = H`) the procedure is an exact no-op: SVD-LLM's
factors are the data optimum (U-step fixed point) and `A^+ W` gives back `B` whenever `H`
is invertible (V-step fixed point; both tested). So `X` must be what the layer sees in
the compressed model: the model is compressed layer by layer (`sequential=True`) and
`H_X` is the Gram of the inputs the already-compressed earlier layers and groups produce
(`ctx.H_actual`), which is what makes adaComp "compensate".

The compensating extension (`adasvd-compensated`, `adasvd-compensated-comp`), svdzoo's own:
the model is compressed layer by layer (`sequential=True`, `methods.sequential`) and each
linear is fitted to the original outputs `W X` from the inputs `X'` that the
already-compressed earlier layers and groups produce. `start="compensated"` (default)
takes the closed-form optimum of that objective, `linalg.compensated_truncate`, then `tau`
ALS steps (`linalg.als_refine`, both steps on the data; a fixed point there);
`start="whitened"` starts from SVD-LLM's factors instead. Stack-of-batch is the option
`mini_bsz` of the sequential pass.

adaCR. Layer importance `I_l = 1 - mean cos(x_in, x_out)` from the Gram cache's layer
cosines, `I_n = I / mean(I)`, retained ratio `CR_l = mrr + I_n (trr - mrr)` with
`trr = 1 - target` (`allocation.adacr`, clamped and re-balanced to the exact budget).
`1 - cos` (not `cos`) fits the paper's figure, where the first and last blocks are the
most important: on SmolLM2-135M the cosines are lowest at the first and last blocks
(docs/methods.md). The paper gives no `mrr` valid at every ratio (an absolute `mrr` must
stay below `trr`, which is 0.2 at 80%). Default `mrr = mrr_fraction * trr` with
`mrr_fraction = 0.5`, i.e. retained ratios spread over `trr (0.5 + 0.5 I_n)`; the
options `mrr` (absolute) or `mrr_fraction` override it. Not tuned on our models.

Ablations: `adasvd-comp` (adaComp, uniform ratios), `adasvd-cr` (SVD-LLM truncation,
adaCR ratios).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from svdzoo import allocation, linalg
from svdzoo.errors import ConfigError
from svdzoo.lazy import torch
from svdzoo.methods.base import (
    FRACTION,
    GRAM,
    AllocationContext,
    MatrixContext,
    Method,
    Needs,
    register,
)
from svdzoo.methods.parts import Uniform, Whitened

log = logging.getLogger(__name__)

PAPER = "Li et al., AdaSVD, arXiv 2502.01403"
STARTS = ("compensated", "whitened")


@dataclass(frozen=True)
class AdaComp:
    """The paper's adaComp: SVD-LLM's truncation, then `tau` U-steps (data) and V-steps (weights)."""

    # the SVD of its start, a `Whitened` at its default: the manifest's `precision`
    precision = "auto"

    tau: int = 1
    whitening: str = "cholesky"
    # of the sequential pass it reads only the compressed stream's Gram (ctx.H stays the
    # cached Gram SVD-LLM's start uses): the pass skips the original stream
    sequential_stats = ("H_actual",)

    def __post_init__(self) -> None:  # refused when configured, not after the replay began
        _check_tau(self.tau)
        Whitened(whitening=self.whitening)  # refuses an unknown whitening

    def __call__(self, ctx: MatrixContext, rank: int) -> linalg.LowRankFactors:
        ctx.require("H")
        fac = Whitened(whitening=self.whitening)(ctx, rank)
        if self.tau > 0 and rank > 0:
            data, S = adacomp_data(ctx)
            fac = linalg.adacomp_steps(ctx.W, fac.A, fac.B, data, iters=int(self.tau), S=S)
        return fac

    def spectrum(self, ctx: MatrixContext):
        return Whitened(whitening=self.whitening).spectrum(ctx)


def adacomp_gram(ctx: MatrixContext) -> torch.Tensor:
    """The Gram adaComp's U-step fits: the compressed model's inputs' in sequential mode,
    else the cached one (original inputs: adaComp is then a no-op)."""
    return ctx.H_actual if ctx.H_actual is not None else ctx.H


def adacomp_data(ctx: MatrixContext) -> tuple[torch.Tensor, linalg.Whitener]:
    """`adacomp_gram(ctx)` and its U-step factor (`linalg.adacomp_whitener`), computed once
    per input group: the sequential pass gathers each group's `H_actual` once per layer."""
    actual = ctx.H_actual is not None
    data = adacomp_gram(ctx)
    if ctx.whiteners is None:
        return data, linalg.adacomp_whitener(data)
    key = ("adacomp", "H_actual" if actual else None, ctx.layer, ctx.group)
    return data, ctx.whiteners.get(key, lambda: linalg.adacomp_whitener(data))


def _check_tau(tau) -> None:
    if isinstance(tau, bool) or not isinstance(tau, int | float) or int(tau) != tau or tau < 0:
        raise ConfigError(f"adaComp tau must be a non-negative integer, got {tau!r}")


@dataclass(frozen=True)
class AdaCompCompensated:
    """svdzoo's extension: factors fitted on the compressed model's inputs (needs `H_actual`, `C`)."""

    tau: int = 1
    start: str = "compensated"
    whitening: str = "eigen"
    option_needs = {  # `base.inert_options`
        "whitening": Needs(
            "start",
            "compensated",
            "the whitened start is SVD-LLM's Cholesky truncation; "
            "`whitening` is the compensated start's",
        )
    }

    def __post_init__(self) -> None:  # refused when configured, not after the replay began
        if self.start not in STARTS:
            raise ConfigError(f"adaComp start must be one of {STARTS}, got {self.start!r}")
        _check_tau(self.tau)
        Whitened(whitening=self.whitening)  # refuses an unknown whitening

    def __call__(self, ctx: MatrixContext, rank: int) -> linalg.LowRankFactors:
        ctx.require("H_actual", "C")
        if self.start == "compensated":
            fac = linalg.compensated_truncate(
                ctx.W, ctx.H_actual, ctx.C, rank, whitening=self.whitening
            )
        else:
            ctx.require("H")
            fac = linalg.truncate(ctx.W, Whitened(whitening="cholesky").whitener_of(ctx), rank)
        if self.tau > 0 and rank > 0:
            fac = linalg.als_refine(ctx.W, fac.A, fac.B, ctx.H_actual, ctx.C, iters=int(self.tau))
        return fac


@dataclass(frozen=True)
class AdaCR:
    """Layer-wise retained ratios from how much each decoder layer turns its hidden state."""

    mrr_fraction: float = 0.5
    extra_options = {"mrr": "a number"}  # option -> its kind (`base.check_options`)
    option_ranges = {"mrr": FRACTION, "mrr_fraction": FRACTION}

    def mrr(self, target: float, options) -> float:
        trr = 1.0 - target
        if options.get("mrr") is not None:
            return float(options["mrr"])
        frac = float(options.get("mrr_fraction", self.mrr_fraction))
        if not 0.0 <= frac < 1.0:
            raise ConfigError(f"mrr_fraction must be in [0, 1), got {frac}")
        return frac * trr

    def __call__(self, infos: list, target: float, ctx: AllocationContext) -> dict[str, int]:
        if ctx.stats is None:
            raise ConfigError("adaCR needs the layer cosines of the Gram statistics")
        layers = sorted({i.layer for i in infos})
        cos = {layer: float(ctx.stats.cosine(layer)) for layer in layers}
        bad = [layer for layer, c in cos.items() if not math.isfinite(c)]
        if bad:
            raise ConfigError(f"layer cosines are not finite for layers {bad}")
        importance = {layer: max(0.0, 1.0 - c) for layer, c in cos.items()}
        mrr = self.mrr(target, ctx.options)
        ranks = allocation.adacr(infos, importance, target, mrr, rmax=max(0.95, target))
        mean = sum(importance.values()) / len(importance)
        ctx.report.update(
            kind="adacr",
            mrr=mrr,
            trr=1.0 - target,
            importance={str(k): v for k, v in importance.items()},
            retained={
                str(k): mrr + (v / mean) * (1.0 - target - mrr) if mean > 0 else 1.0 - target
                for k, v in importance.items()
            },
        )
        return ranks


register(
    Method(
        name="adasvd",
        description="adaComp as published (SVD-LLM start, tau U-steps on the compressed model's inputs, V-steps B = A^+ W) + adaCR layer ratios",
        paper=PAPER,
        needs=frozenset({GRAM}),
        factoriser=AdaComp(),
        allocator=AdaCR(),
        sequential=True,
        options={"tau": 1, "mrr_fraction": 0.5},
    )
)
register(
    Method(
        name="adasvd-comp",
        description="AdaSVD ablation: adaComp as published only, uniform ratio",
        paper=f"{PAPER} (ablation)",
        needs=frozenset({GRAM}),
        factoriser=AdaComp(),
        allocator=Uniform(),
        sequential=True,
        options={"tau": 1},
    )
)
register(
    Method(
        name="adasvd-cr",
        description="AdaSVD ablation: adaCR layer ratios over SVD-LLM Cholesky truncation",
        paper=f"{PAPER} (ablation)",
        needs=frozenset({GRAM}),
        factoriser=Whitened(whitening="cholesky"),
        allocator=AdaCR(),
        options={"mrr_fraction": 0.5},
    )
)
register(
    Method(
        name="adasvd-compensated",
        description="svdzoo extension: closed-form compensation on compressed-model inputs (layer by layer) + tau ALS steps + adaCR",
        paper=f"{PAPER} (svdzoo extension)",
        needs=frozenset({GRAM}),
        factoriser=AdaCompCompensated(),
        allocator=AdaCR(),
        sequential=True,
        options={"tau": 1, "mrr_fraction": 0.5},
        spectrum_factoriser=Whitened(whitening="eigen"),
    )
)
register(
    Method(
        name="adasvd-compensated-comp",
        description="svdzoo extension: closed-form compensation on compressed-model inputs only, uniform ratio",
        paper=f"{PAPER} (svdzoo extension, ablation)",
        needs=frozenset({GRAM}),
        factoriser=AdaCompCompensated(),
        allocator=Uniform(),
        sequential=True,
        options={"tau": 1},
        spectrum_factoriser=Whitened(whitening="eigen"),
    )
)
