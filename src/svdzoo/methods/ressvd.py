"""ResSVD (Bai et al., arXiv 2505.20112): residual compensation + last-K partial compression.

As the paper defines it (`ressvd`, `ressvd-residual`, `ressvd-lastk`):

- Residual compensation (`Residual`). The rank budget `r` is split `r = r1 + r2` with the
  authors' later rule `r2 = round(beta m n / (m + n))`, `beta = 0.05` (option `beta`).
  Stage 1: SVD-LLM's whitened truncation (Cholesky of the original model's Gram) at `r1`,
  `W1`. Stage 2: a plain, unwhitened SVD of the weight-space residual `W - W1` at `r2`.
  The two pairs are joined into one rank-`r` pair (`linalg.residual_truncate`). The stages
  use different metrics, so this is not plain truncation at `r` (with the same metric in
  both stages it would be: tested).
- Partial compression (`LastKSearch`). Only the last `k` blocks are compressed, every
  matrix in them at the ratio that meets the overall budget (`R_l = R_o * total / params of
  the last k blocks`, the paper's `N R_o / k` for equal blocks). `k` is searched over
  `{s, 2s, ..., N - s}` (`step` option; the paper gives no `s`, default `max(1, N // 8)`,
  whose grid holds the paper's reported choice, the last 16 of LLaMA-7B's 32 blocks at 20 %):
  each candidate is compressed with the method's own factoriser and scored by the relative
  error of the final hidden state against the original model on calibration windows
  (`methods.probe`, option `search_nsamples`); the lowest error wins. Candidates whose
  per-matrix ratio would exceed `max_ratio` (0.95) are not tried; if none is left, all `N`
  blocks are compressed (logged). The candidates, their errors and the choice go to the
  manifest's `allocation`. Option `K` fixes `k` and skips the search.

svdzoo's extension (`ressvd-compensated`, `ressvd-compensated-residual`): stage 2 fitted
on the inputs the compressed model actually feeds the layer (`methods.sequential`:
target `T = W C H'^+` under `H'`, eigen whitening), with `k1 = round(k1_fraction r)`
(`k1_fraction = 0.5`), and `K` the smallest number of last blocks whose ratio stays
`<= max_ratio` (0.9) (`LastK`). Where no earlier layer is compressed (`H' = C = H`) its
residual stage reduces to SVD-LLM.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from tqdm.auto import tqdm

from svdzoo import allocation, linalg
from svdzoo.errors import ConfigError
from svdzoo.methods.base import (
    GRAM,
    POSITIVE_INT,
    AllocationContext,
    MatrixContext,
    Method,
    Range,
    register,
)
from svdzoo.methods.parts import Uniform, Whitened

log = logging.getLogger(__name__)

PAPER = "Bai et al., ResSVD, arXiv 2505.20112"


def split_rank(rank: int, k1_fraction: float) -> tuple[int, int]:
    """`(k1, k2)` with `k1 = round(k1_fraction * rank)`, `k1 + k2 = rank`."""
    if not 0.0 <= float(k1_fraction) <= 1.0:
        raise ConfigError(f"k1_fraction must be in [0, 1], got {k1_fraction!r}")
    k1 = min(rank, max(0, round(float(k1_fraction) * rank)))
    return k1, rank - k1


MAX_RATIO = Range(0.0, 1.0, low_open=True, high_open=True)  # a layer's share removed


@dataclass(frozen=True)
class Residual:
    """The paper's residual compensation: whitened stage 1, plain SVD of the weight residual."""

    # both truncations are `Whitened` at its default: the manifest's `precision`
    precision = "auto"

    beta: float = 0.05
    whitening: str = "cholesky"

    def __post_init__(self) -> None:  # refused when configured, not after a search began
        if not 0.0 <= float(self.beta) <= 1.0:
            raise ConfigError(f"beta must be in [0, 1], got {self.beta!r}")
        Whitened(whitening=self.whitening)  # refuses an unknown whitening

    def ranks(self, m: int, n: int, rank: int) -> tuple[int, int]:
        """`(r1, r2)`, `r2 = round(beta m n / (m + n))` capped at `rank`."""
        r2 = min(rank, round(float(self.beta) * m * n / (m + n)))
        return rank - r2, r2

    def __call__(self, ctx: MatrixContext, rank: int) -> linalg.LowRankFactors:
        ctx.require("H")
        m, n = ctx.W.shape
        r1, r2 = self.ranks(m, n, rank)
        part = Whitened(whitening=self.whitening)
        whitener = part.whitener_of(ctx)
        return linalg.residual_truncate(
            ctx.W,
            whitener,
            linalg.identity_whitener(n),
            r1,
            r2,
            first_svd=part.svd_of(ctx, whitener),
        )


@dataclass(frozen=True)
class LastKSearch:
    """The paper's partial compression: search the number `k` of last blocks by the final
    hidden-state error of the compressed model on calibration data."""

    step: int | None = None
    max_ratio: float = 0.95
    probes = True
    extra_options = {"K": "an integer"}  # option -> its kind (`base.check_options`)
    option_ranges = {"K": POSITIVE_INT, "step": POSITIVE_INT, "max_ratio": MAX_RATIO}

    @staticmethod
    def inert_with(options: dict) -> dict[str, str]:
        """Options a fixed `K` makes idle (`base.inert_options`): nothing is searched."""
        if options.get("K") is None:
            return {}
        why = "a fixed K compresses its last K blocks with no search"
        return {key: why for key in ("step", "search_nsamples") if key in options}

    def candidates(self, num_layers: int) -> list[int]:
        step = self.step if self.step is not None else max(1, num_layers // 8)
        if isinstance(step, bool) or int(step) != step or not 1 <= step < max(num_layers, 2):
            raise ConfigError(
                f"step must be an integer in [1, {num_layers - 1}], got {self.step!r}"
            )
        return list(range(int(step), num_layers - int(step) + 1, int(step)))

    def __call__(self, infos: list, target: float, ctx: AllocationContext) -> dict[str, int]:
        if not 0.0 < float(self.max_ratio) < 1.0:
            raise ConfigError(f"max_ratio must be in (0, 1), got {self.max_ratio}")
        layers = sorted({i.layer for i in infos})
        N = len(layers)

        def layer_ratio(k: int) -> float:
            return allocation.last_k_ratio(infos, target, k)

        fixed = ctx.options.get("K")
        if fixed is not None:
            tried = [int(fixed)]
        else:
            tried = [k for k in self.candidates(N) if layer_ratio(k) <= self.max_ratio]
            if not tried:
                log.info(
                    "last-k search: no candidate in the grid meets the budget; all %d blocks", N
                )
                tried = [N]
        allocs = {
            k: allocation.last_k_layers(infos, target, max_ratio=self.max_ratio, k=k)[0]
            for k in tried
        }
        errors: dict[int, float] = {}
        if len(tried) > 1:
            if ctx.probe is None:
                raise ConfigError("the last-k search needs a probe (compress() sets one)")
            for k in tqdm(tried, desc="last-k search", unit="candidate"):
                errors[k] = float(ctx.probe(allocs[k]))
                log.info(
                    "last-k search: k=%d (ratio %.3f per matrix): output error %.4g",
                    k,
                    layer_ratio(k),
                    errors[k],
                )
            # a NaN error (outputs that overflowed) is no measurement, and `min` would keep
            # one that came first: every comparison with NaN is False
            finite = [k for k in tried if math.isfinite(errors[k])]
            if not finite:
                raise linalg.NumericsError(
                    f"last-k search: no candidate's output error is finite ({errors})"
                )
            best = min(finite, key=lambda k: (errors[k], k))
        else:
            best = tried[0]
        ctx.report.update(
            kind="last-k-search",
            K=best,
            num_layers=N,
            candidates=tried,
            errors={str(k): v for k, v in errors.items()},
            compressed_layers=layers[N - best :],
            layer_ratio=layer_ratio(best),
            max_ratio=float(self.max_ratio),
        )
        return allocs[best]


@dataclass(frozen=True)
class ResidualCompensated:
    """Stage 1 on original inputs, stage 2 (the residual) on compressed-model inputs."""

    k1_fraction: float = 0.5
    first: str = "cholesky"
    second: str = "eigen"

    def __post_init__(self) -> None:  # refused when configured, not after the replay began
        split_rank(0, self.k1_fraction)  # refuses a fraction outside [0, 1]
        for option in ("first", "second"):
            if getattr(self, option) not in ("cholesky", "eigen"):
                raise ConfigError(
                    f"{option} must be 'cholesky' or 'eigen', got {getattr(self, option)!r}"
                )

    def __call__(self, ctx: MatrixContext, rank: int) -> linalg.LowRankFactors:
        ctx.require("H", "H_actual", "C")
        k1, k2 = split_rank(rank, self.k1_fraction)
        w1 = Whitened(whitening=self.first).whitener_of(ctx)
        w2 = Whitened(whitening=self.second).whitener(ctx.H_actual)
        target = linalg.compensated_target(ctx.W, ctx.C, w2)
        return linalg.residual_truncate(ctx.W, w1, w2, k1, k2, target=target)


@dataclass(frozen=True)
class LastK:
    """The smallest `K` last decoder layers whose ratio stays `<= max_ratio`; earlier ones dense."""

    max_ratio: float = 0.9
    k: int | None = None
    extra_options = {"K": "an integer"}  # option -> its kind (`base.check_options`)
    option_ranges = {"K": POSITIVE_INT, "k": POSITIVE_INT, "max_ratio": MAX_RATIO}

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
        description="residual compensation as published (whitened stage 1, plain SVD of the weight residual, beta rule) + searched last-k blocks",
        paper=PAPER,
        needs=frozenset({GRAM}),
        factoriser=Residual(),
        allocator=LastKSearch(),
        options={"beta": 0.05},
    )
)
register(
    Method(
        name="ressvd-residual",
        description="ResSVD ablation: residual compensation as published only, uniform ratio over all layers",
        paper=f"{PAPER} (ablation)",
        needs=frozenset({GRAM}),
        factoriser=Residual(),
        allocator=Uniform(),
        options={"beta": 0.05},
    )
)
register(
    Method(
        name="ressvd-lastk",
        description="ResSVD ablation: SVD-LLM truncation of the searched last-k blocks only",
        paper=f"{PAPER} (ablation)",
        needs=frozenset({GRAM}),
        factoriser=Whitened(whitening="cholesky"),
        allocator=LastKSearch(),
    )
)
register(
    Method(
        name="ressvd-compensated",
        description="svdzoo extension: residual fitted on compressed-model inputs (layer by layer) + the smallest last-K within max_ratio",
        paper=f"{PAPER} (svdzoo extension)",
        needs=frozenset({GRAM}),
        factoriser=ResidualCompensated(),
        allocator=LastK(),
        sequential=True,
        options={"k1_fraction": 0.5, "max_ratio": 0.9},
    )
)
register(
    Method(
        name="ressvd-compensated-residual",
        description="svdzoo extension: residual fitted on compressed-model inputs only, uniform ratio",
        paper=f"{PAPER} (svdzoo extension, ablation)",
        needs=frozenset({GRAM}),
        factoriser=ResidualCompensated(),
        allocator=Uniform(),
        sequential=True,
        options={"k1_fraction": 0.5},
    )
)
