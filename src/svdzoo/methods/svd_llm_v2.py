"""SVD-LLM V2 (Wang et al., arXiv 2503.12340): loss-optimised truncation + heterogeneous ratios.

- Truncation: eigen whitening `H = Q Lambda Q^T`, SVD of `W Q Lambda^{1/2}`,
  `B = sqrt(S_k) V_k^T Lambda^{-1/2} Q^T`. Eigenvalues at or below `1e-10 lambda_max`
  carry no energy and are dropped (pseudo-inverse), never damped, so a rank-deficient `H`
  needs no fallback; where `H` is positive definite this is SVD-LLM's optimum
  (`parts.Whitened("eigen")`, `linalg.eigen_whitener`).
- Allocation: per matrix the theoretical loss at the target ratio,
  `L_i = sqrt(sum_{j>k} sigma_j^2)` of its whitened spectrum; within each matrix type
  (all q_proj, all k_proj, ...) `l_i = 1/log L_i` and `r_i = G R l_i / sum(l)`, so higher
  loss means less compression; clamped to `[0, rmax]` and re-balanced to the exact budget
  (`allocation.heterogeneous_by_type`, `fit_budget`). UNCERTAIN in the paper: the guard for
  `L <= e` (see `heterogeneous_by_type`) and the clamp range (option `rmax`, 0.95).

Ablations (the paper's Table 5): `svd-llm-v2-truncation` (eigen truncation, uniform
ratios) and `svd-llm-v2-allocation` (SVD-LLM Cholesky truncation, heterogeneous ratios).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from svdzoo import allocation
from svdzoo.errors import ConfigError
from svdzoo.methods.base import GRAM, POSITIVE_INT, AllocationContext, Method, Range, register
from svdzoo.methods.parts import Uniform, Whitened

log = logging.getLogger(__name__)

PAPER = "Wang et al., SVD-LLM V2, arXiv 2503.12340"


@dataclass(frozen=True)
class HeterogeneousByType:
    """Ranks from the truncation loss each matrix would suffer at the target ratio."""

    rmax: float = 0.95
    # `L_i` as if the Gram summed this many tokens (None: the calibration's own count).
    # `L` grows with the square root of the token count and `1 / log L` does not scale, so
    # the ratios depend on the calibration size; the paper calibrated on 256 x 2048 tokens
    loss_tokens: int | None = None
    option_ranges = {"rmax": Range(0.0, 1.0, low_open=True), "loss_tokens": POSITIVE_INT}
    reads_spectra = True  # every matrix's spectrum, before the factorisation: cache SVDs

    def __call__(self, infos: list, target: float, ctx: AllocationContext) -> dict[str, int]:
        if ctx.spectrum is None:
            raise ConfigError(
                "heterogeneous allocation needs the whitened spectrum of every matrix"
            )
        rmax = max(float(ctx.options.get("rmax", self.rmax)), target)
        want = ctx.options.get("loss_tokens", self.loss_tokens)
        scale, tokens = 1.0, None
        if want is not None:
            tokens = calibration_tokens(ctx.stats)
            scale = math.sqrt(int(want) / tokens)
        spectra = {i.name: ctx.spectrum(i.name) for i in infos}
        measured = allocation.truncation_losses(infos, spectra, target)
        losses = {name: scale * v for name, v in measured.items()}
        ranks = allocation.heterogeneous_by_type(infos, losses, target, rmax=rmax)
        ctx.report.update(
            kind="heterogeneous-by-type",
            rmax=rmax,
            calibration_tokens=tokens,
            loss_tokens=None if want is None else int(want),
            losses={name: float(v) for name, v in losses.items()},
        )
        return ranks


def calibration_tokens(stats) -> int:
    """The tokens the Gram cache summed: the same for every layer and input group of a
    decoder, where each token passes every layer."""
    if stats is None:
        raise ConfigError("loss_tokens needs the Gram statistics (their token count)")
    counts = {int(c) for c in stats.manifest.get("counts", {}).values()}
    if len(counts) != 1 or min(counts) < 1:
        raise ConfigError(
            f"loss_tokens needs one token count for every input group; the Gram cache "
            f"has {sorted(counts) or 'none'}"
        )
    return counts.pop()


register(
    Method(
        name="svd-llm-v2",
        description="loss-optimised (eigen, pseudo-inverse) truncation + heterogeneous ratios by matrix type",
        paper=PAPER,
        needs=frozenset({GRAM}),
        factoriser=Whitened(whitening="eigen"),
        allocator=HeterogeneousByType(),
    )
)
register(
    Method(
        name="svd-llm-v2-truncation",
        description="SVD-LLM V2 ablation: loss-optimised eigen truncation only, uniform ratio",
        paper=f"{PAPER} (ablation)",
        needs=frozenset({GRAM}),
        factoriser=Whitened(whitening="eigen"),
        allocator=Uniform(),
    )
)
register(
    Method(
        name="svd-llm-v2-allocation",
        description="SVD-LLM V2 ablation: heterogeneous ratios by type over SVD-LLM Cholesky truncation",
        paper=f"{PAPER} (ablation)",
        needs=frozenset({GRAM}),
        factoriser=Whitened(whitening="cholesky"),
        allocator=HeterogeneousByType(),
    )
)
