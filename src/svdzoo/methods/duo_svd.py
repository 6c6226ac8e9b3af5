"""Duo-SVD (seed 000; public code Pupu792/CPSVD): column-preserving factorisation plus
module-adaptive allocation, and one ablation per component.

- `duo-svd`: `ColumnPreserving` factoriser + `KnapsackKL` allocator over the per-ratio
  KL table (every other module at the target ratio: the official code's protocol; one
  table per ratio, `svdzoo sensitivity --kind duo --base-ratio R`).
- `duo-svd-independent`: the same over the ratio-independent table (every other module
  dense; one table serves every ratio). Cheaper; the default run uses it.
- `duo-svd-columns`: column-preserving factoriser at a uniform ratio (no sensitivity table).
- `duo-svd-allocation`: plain whitened (SVD-LLM) truncation at the knapsack's ranks.

Choices (see also `svdzoo.sensitivity` for how the KL table is read):
- The knapsack picks one retained ratio per module from the table's grid (`p = 1.0` keeps
  the module dense) as the official code does: the parameter total closest to the
  budget that the grid reaches, and at that total the least summed KL
  (`allocation.knapsack`). The grid's totals rarely hit the budget to the parameter, so
  `allocation.fit_budget` then shifts every non-dense module's ratio by one common amount
  (dense picks stay dense) until the achieved ratio over the targeted linears is within
  0.5% of the target. The knapsack's own choice and its summed cost are recorded in the
  manifest (`allocation.knapsack`).
- Whitening: Cholesky of `H` in float64; when it fails (rank-deficient `H`), the official
  code's damping `0.05 * mean(diag H) I` (`fallback="diag-damp"`, logged), also for each
  rest's `H_RR` in the split and for the KL table's probes; `--option fallback=eigen-shift`
  gives SVD-LLM's fix instead.
- Minimum retained ratio 0.1 (the public code's `min_ratio`): grid points below it are
  not offered. Option `min_retained` overrides it.
- `base` (option, default None): subtract each module's KL at this retained ratio before
  the knapsack, as the public code does with its base state. It shifts all options of a
  module by one constant, so the chosen ratios cannot change; it only changes the reported
  cost.
- The column split keeps the rank budget the allocator gave: it trades `delta_r` rank units
  for dense columns without ever increasing the parameter count (`column_split.column_counts`),
  and is kept only when the layer error drops by more than `accept` (1%); otherwise the
  layer is plain whitened truncation at the same rank.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from svdzoo import allocation, column_split, linalg
from svdzoo.errors import ConfigError
from svdzoo.lazy import torch
from svdzoo.methods.base import (
    GRAM,
    POSITIVE_INT,
    SENS_DUO,
    AllocationContext,
    MatrixContext,
    Method,
    Range,
    register,
)
from svdzoo.methods.parts import Uniform, Whitened, check_table_kind

log = logging.getLogger(__name__)

MIN_RETAINED = 0.1
# plain whitened truncation as Duo-SVD's code does it: a Cholesky that fails is damped by
# `0.05 * mean(diag H)` (methods.md, "Code defaults"); SVD-LLM's own fix is eigen-shift
DUO_WHITENED = Whitened("cholesky", fallback="diag-damp")


@dataclass(frozen=True)
class ColumnPreserving:
    """Whitened truncation with Duo-SVD's dense-column trade (golden-section over `delta_r`)."""

    accept: float = 0.01
    whitening: str = "cholesky"
    search: str = "exact"  # or "ritz" (column_split.column_preserving_split)
    oversample: float = 0.25
    schedule: str = "official"  # or "golden", "rounded" (column_split.column_preserving_split)
    probes: str = "float32"  # the candidates' eigenvalue solves (column_preserving_split)
    # Cholesky fallback for a singular `H` (and each rest's `H_RR`): the official code's
    # `0.05 * mean(diag H) I` (methods.md), not SVD-LLM's eigen-shift
    fallback: str = "diag-damp"
    option_ranges = {"accept": Range(0.0, 1.0), "oversample": Range(0.0)}  # `base.check_options`
    option_needs = Whitened.option_needs  # the same whitening's fallback

    def __post_init__(self) -> None:  # refused when configured, before any compute
        if self.search not in column_split.SEARCHES:
            raise ConfigError(f"search must be one of {column_split.SEARCHES}, got {self.search!r}")
        Whitened(self.whitening, fallback=self.fallback)  # refuses an unknown whitening/fallback
        if self.schedule not in column_split.SCHEDULES:
            raise ConfigError(
                f"schedule must be one of {column_split.SCHEDULES}, got {self.schedule!r}"
            )
        if self.probes not in linalg.PROBE_PRECISIONS:
            raise ConfigError(
                f"probes must be one of {linalg.PROBE_PRECISIONS}, got {self.probes!r}"
            )
        if not float(self.oversample) >= 0:
            raise ConfigError(f"oversample must be >= 0, got {self.oversample!r}")

    @property
    def precision(self) -> str:
        """The whitened SVD's arithmetic (recorded in the manifest): `auto`, the float64 SVD
        on a CPU and `float64-eigh` with re-orthonormalised `U` on a GPU. Not an option: the
        search works in the SVD's coordinates, which must be orthonormal to float64's
        accuracy for the losses it compares (`column_split.rest_problem`), so float32 is never
        used. On all 630 SmolLM2 splits (20/40/60 %) the eigh path chose the float64 SVD's
        split, with losses within 3.1e-11 and `U` orthonormal to 7.3e-15."""
        return "auto"

    def _svd(self, ctx: MatrixContext, S: linalg.Whitener):
        precision = linalg.resolve_precision(self.precision, ctx.W.device)
        plain = Whitened(self.whitening, precision, self.fallback)
        if precision == "float64":
            return plain.svd_of(ctx, S)  # shared with a spectrum allocator's
        make = lambda: linalg.whitened_svd(ctx.W, S, precision, orthonormal=True)  # noqa: E731
        if ctx.svds is None:
            return make()
        return ctx.svds.get((self.whitening, plain._damping, precision, "U", ctx.name), make)

    def __call__(self, ctx: MatrixContext, rank: int):
        base, split = self.alternatives(ctx, rank)
        return base if split is None else split

    def alternatives(self, ctx: MatrixContext, rank: int):
        """`(plain truncation, split or None)` at `rank`: both, for a selector that keeps a
        split only where the model's output says it pays (`methods.split_probe`)."""
        ctx.require("H")
        plain = Whitened(self.whitening, "float64", self.fallback)
        S = plain.whitener_of(ctx)  # shared by the matrices that read the same input
        svd = self._svd(ctx, S)
        base = linalg.truncate(ctx.W, S, rank, svd=svd)  # what the split must beat
        split = column_split.column_preserving_split(
            ctx.W,
            ctx.H,
            rank,
            accept=self.accept,
            whitener=self.whitening,
            S=S,
            svd=svd,
            search=self.search,
            oversample=float(self.oversample),
            schedule=self.schedule,
            probes=self.probes,
            base=base,
            fallback=self.fallback,
        )
        if split is None:  # the trade does not pay on this layer: plain whitened truncation
            return base, None
        log.debug(
            "%s: kept %d columns, rank %d -> %d, loss %.4g -> %.4g",
            ctx.name,
            split.n_kept,
            rank,
            split.rank,
            split.baseline_loss,
            split.loss,
        )
        return base, split

    def spectrum(self, ctx: MatrixContext) -> torch.Tensor:
        # the SVD __call__ reuses
        return Whitened(self.whitening, "float64", self.fallback).spectrum(ctx)


PROTOCOLS = ("per-ratio", "independent")  # KnapsackKL's tables (sensitivity --base-ratio or not)


@dataclass(frozen=True)
class KnapsackKL:
    """Duo-SVD module-adaptive allocation: knapsack over the KL sensitivity table."""

    kind: str = "duo"
    min_retained: float = MIN_RETAINED
    resolution: int = 8192
    protocol: str = "per-ratio"  # or "independent": which table it accepts
    reads_table = True  # the sensitivity-<kind> table (compression.check_allocator_table)
    extra_options = {"base": "a number"}  # option -> its kind (`base.check_options`)
    option_ranges = {
        "min_retained": Range(0.0, 1.0),
        "resolution": POSITIVE_INT,
        "base": Range(0.0, 1.0, low_open=True),
    }

    def __post_init__(self) -> None:  # refused when configured, before anything loads
        check_table_kind(self.kind)
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"protocol must be one of {PROTOCOLS}, got {self.protocol!r}")

    def check_table(self, table, target: float) -> None:
        """The table must follow this allocator's protocol (and be for this ratio)."""
        have = table.manifest.get("protocol", "independent") if hasattr(table, "manifest") else None
        if have is None:
            return  # a plain mapping (tests, API users): taken as given
        if have != self.protocol:
            raise ConfigError(
                f"this method needs a {self.protocol} sensitivity-{self.kind} table, got "
                f"{'an' if have[:1] in 'aeiou' else 'a'} {have} one ({'svdzoo sensitivity --kind duo --base-ratio R' if self.protocol == 'per-ratio' else 'svdzoo sensitivity --kind duo'})"
            )
        base = table.manifest.get("base_ratio")
        if self.protocol == "per-ratio" and (base is None or abs(float(base) - target) > 1e-6):
            raise ConfigError(
                f"the per-ratio sensitivity-{self.kind} table was measured around ratio {base}, "
                f"this compression is at {target:.2f}: svdzoo sensitivity --kind duo --base-ratio {target:.2f}"
            )

    def costs(self, infos: list, ctx: AllocationContext) -> dict[str, dict[float, float]]:
        table = ctx.sensitivity.get(self.kind)
        if table is None:
            raise ConfigError(
                f"this allocator needs the sensitivity-{self.kind} table (svdzoo sensitivity --kind {self.kind})"
            )
        pmin = float(ctx.options.get("min_retained", self.min_retained))
        base = ctx.options.get("base")
        missing = [i.name for i in infos if i.name not in table]
        if missing:
            raise allocation.AllocationError(
                f"the sensitivity-{self.kind} table has no entry for {len(missing)} matrices, "
                f"e.g. {missing[:3]} (was it computed on this model?)"
            )
        out: dict[str, dict[float, float]] = {}
        for i in infos:
            row = {float(p): float(v) for p, v in table[i.name].items()}
            shift = 0.0
            if base is not None:
                key = next((p for p in row if abs(p - float(base)) < 1e-9), None)
                if key is None:
                    raise ConfigError(f"base ratio {base} is not on the table's grid {sorted(row)}")
                shift = row[key]
            opts = {p: v - shift for p, v in row.items() if p >= pmin - 1e-9}
            opts.setdefault(1.0, 0.0 - shift)  # dense is always an option (independent: no KL)
            out[i.name] = opts
        return out

    def __call__(self, infos: list, target: float, ctx: AllocationContext) -> dict[str, int]:
        table = ctx.sensitivity.get(self.kind)
        if table is not None:
            self.check_table(table, target)
        cost = self.costs(infos, ctx)
        total = sum(i.params for i in infos)
        budget = math.floor((1.0 - target) * total)
        retained = allocation.knapsack(infos, cost, budget, resolution=self.resolution)
        ranks = allocation.fit_retained(infos, retained, target)
        grid_ratio = allocation.achieved_ratio(
            infos, allocation.ranks_for_retained(infos, retained)
        )
        ctx.report["knapsack"] = {
            "retained": retained,
            "cost": float(sum(cost[n][p] for n, p in retained.items())),
            "grid_ratio": grid_ratio,
            "dense_modules": sorted(n for n, p in retained.items() if p >= 1.0),
            "min_retained": float(ctx.options.get("min_retained", self.min_retained)),
        }
        log.info(
            "knapsack: grid choice removes %.4f (target %.4f); %d modules dense; fit_budget -> %.4f",
            grid_ratio,
            target,
            len(ctx.report["knapsack"]["dense_modules"]),
            allocation.achieved_ratio(infos, ranks),
        )
        return ranks


register(
    Method(
        name="duo-svd",
        description="column-preserving whitened SVD + knapsack over the per-ratio KL table (others at the target, as the official code)",
        paper="Duo-SVD (seed 000; code Pupu792/CPSVD)",
        needs=frozenset({GRAM, SENS_DUO}),
        factoriser=ColumnPreserving(),
        allocator=KnapsackKL(),
        options={"min_retained": MIN_RETAINED},
    )
)
register(
    Method(
        name="duo-svd-independent",
        description="Duo-SVD with the ratio-independent KL table (others dense; one table for every ratio)",
        paper="Duo-SVD (variant: ratio-independent sensitivity)",
        needs=frozenset({GRAM, SENS_DUO}),
        factoriser=ColumnPreserving(),
        allocator=KnapsackKL(protocol="independent"),
        options={"min_retained": MIN_RETAINED},
    )
)
register(
    Method(
        name="duo-svd-columns",
        description="Duo-SVD ablation: column-preserving whitened SVD at a uniform ratio",
        paper="Duo-SVD (ablation: columns only)",
        needs=frozenset({GRAM}),
        factoriser=ColumnPreserving(),
        allocator=Uniform(),
    )
)
register(
    Method(
        name="duo-svd-allocation",
        description="Duo-SVD ablation: plain whitened SVD at the per-ratio KL-knapsack ranks",
        paper="Duo-SVD (ablation: allocation only)",
        needs=frozenset({GRAM, SENS_DUO}),
        factoriser=DUO_WHITENED,
        allocator=KnapsackKL(),
        options={"min_retained": MIN_RETAINED},
    )
)
