"""ResSVD (Bai et al., arXiv 2505.20112): residual compensation + last-K partial compression.

Residual compensation. The rank budget is split `k = k1 + k2`. Stage 1: SVD-LLM's
whitened truncation of `W` on the original inputs (`H`, Cholesky) at rank `k1`, giving
`W1`. Stage 2: the residual is fitted on the inputs the compressed model actually feeds
this layer (`methods.sequential`): target `T - W1` with `T = W C H'^+` under `H'`
(eigen whitening, pseudo-inverse), rank `k2`. The result `W1 + R2` is stored as one
rank-`k` pair (the two pairs stacked; parameters are the same as two pairs).

Why the stages differ (methods.md's trap): if stage 2 used the same whitening and target
as stage 1 it would only pick the next `k2` singular directions, i.e. plain whitened
truncation at rank `k` (tested). Here stage 2 sees `H'`, `C`; where no earlier layer is
compressed yet (`H' = C = H`) the method does reduce to SVD-LLM, by construction.
Because `W_k - W1` is one candidate for stage 2, the loss on the compressed-model inputs
never exceeds SVD-LLM's. UNCERTAIN: the paper's split; `k1 = round(k1_fraction * k)`,
`k1_fraction = 0.5` by default (option `k1_fraction`; 1 gives SVD-LLM, 0 gives AdaSVD's
closed-form compensation).

Partial compression. Only the last `K` decoder layers are compressed, at the uniform
ratio that meets the overall budget; `K` is the smallest whose per-matrix ratio stays
`<= max_ratio` (option, default 0.9: UNCERTAIN, the paper sweeps `K` by hand), or the
option `K`. `K`, the layers and their ratio go to the manifest's `allocation`.

Ablations: `ressvd-residual` (residual compensation, uniform ratios), `ressvd-lastk`
(SVD-LLM truncation, last-K allocation).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from svdzoo import allocation, linalg
from svdzoo.errors import ConfigError
from svdzoo.methods.base import GRAM, AllocationContext, MatrixContext, Method, register
from svdzoo.methods.parts import Uniform, Whitened

log = logging.getLogger(__name__)

PAPER = "Bai et al., ResSVD, arXiv 2505.20112"


def split_rank(rank: int, k1_fraction: float) -> tuple[int, int]:
    """`(k1, k2)` with `k1 = round(k1_fraction * rank)`, `k1 + k2 = rank`."""
    if not 0.0 <= float(k1_fraction) <= 1.0:
        raise ConfigError(f"k1_fraction must be in [0, 1], got {k1_fraction!r}")
    k1 = min(rank, max(0, round(float(k1_fraction) * rank)))
    return k1, rank - k1


@dataclass(frozen=True)
class ResidualCompensated:
    """Stage 1 on original inputs, stage 2 (the residual) on compressed-model inputs."""

    k1_fraction: float = 0.5
    first: str = "cholesky"
    second: str = "eigen"

    def __call__(self, ctx: MatrixContext, rank: int) -> linalg.LowRankFactors:
        ctx.require("H", "H_actual", "C")
        k1, k2 = split_rank(rank, self.k1_fraction)
        w1 = Whitened(whitening=self.first).whitener_of(ctx)
        w2 = Whitened(whitening=self.second).whitener(ctx.H_actual)
        target = linalg.compensated_target(ctx.W, ctx.C, w2)
        return linalg.residual_truncate(ctx.W, w1, w2, k1, k2, target=target)


@dataclass(frozen=True)
class LastK:
    """Only the last `K` decoder layers are compressed; earlier ones stay dense."""

    max_ratio: float = 0.9
    k: int | None = None

    def __call__(self, infos: list, target: float, ctx: AllocationContext) -> dict[str, int]:
        max_ratio = float(ctx.options.get("max_ratio", self.max_ratio))
        k = ctx.options.get("K", self.k)
        if not 0.0 < max_ratio < 1.0:
            raise ConfigError(f"max_ratio must be in (0, 1), got {max_ratio}")
        if target > max_ratio:
            raise ConfigError(
                f"target ratio {target} exceeds the per-layer maximum {max_ratio}: "
                "even compressing every layer cannot meet it (raise the option max_ratio)"
            )
        ranks, K = allocation.last_k_layers(
            infos, target, max_ratio=max_ratio, k=None if k is None else int(k)
        )
        layers = sorted({i.layer for i in infos})
        chosen = layers[len(layers) - K :]
        sub = [i for i in infos if i.layer in set(chosen)]
        ctx.report.update(
            kind="last-k",
            K=K,
            num_layers=len(layers),
            compressed_layers=chosen,
            max_ratio=max_ratio,
            layer_ratio=allocation.achieved_ratio(sub, ranks) if sub else 0.0,
        )
        return ranks


register(
    Method(
        name="ressvd",
        description="residual compensation (stage 2 on compressed-model inputs) + compression of the last K layers only",
        paper=PAPER,
        needs=frozenset({GRAM}),
        factoriser=ResidualCompensated(),
        allocator=LastK(),
        sequential=True,
        options={"k1_fraction": 0.5, "max_ratio": 0.9},
    )
)
register(
    Method(
        name="ressvd-residual",
        description="ResSVD ablation: residual compensation only, uniform ratio over all layers",
        paper=f"{PAPER} (ablation)",
        needs=frozenset({GRAM}),
        factoriser=ResidualCompensated(),
        allocator=Uniform(),
        sequential=True,
        options={"k1_fraction": 0.5},
    )
)
register(
    Method(
        name="ressvd-lastk",
        description="ResSVD ablation: SVD-LLM truncation of the last K layers only",
        paper=f"{PAPER} (ablation)",
        needs=frozenset({GRAM}),
        factoriser=Whitened(whitening="cholesky"),
        allocator=LastK(),
        options={"max_ratio": 0.9},
    )
)
