"""svdzoo's own compositions of the papers' parts: no paper combines them.

The ablations on SmolLM2-135M (docs/results.md) say where each seed method's gain comes
from, and the candidates follow from that:

- **Allocation is most of every gain.** Duo-SVD's KL knapsack over the ratio-independent
  table is the strongest allocator measured (`duo-svd-independent`, 0.27-0.53 x SVD-LLM's
  perplexity at 20-40 %), ahead of adaCR (`adasvd-cr`) and ResSVD's searched last-k blocks
  (`ressvd-lastk`). Both of those also choose ratios, so they cannot be stacked on the
  knapsack: each candidate keeps the knapsack and nothing else as its allocator.
- **adaComp adds on top of any allocation** (`adasvd-comp`: 0.95 / 0.91 x at 20 % with
  uniform ratios): it refits the factors to the inputs the already-compressed layers
  produce, which the knapsack's per-module table cannot see. The closed-form compensation
  (`adasvd-compensated`) and ResSVD's residual stage (`ressvd-residual`, 1.02-1.17 x) made
  things worse on this model, so neither is a candidate.
- **Column preservation** kept 12k dense columns in 32 of 210 matrices of
  `duo-svd-independent` at 40 %, mostly `down_proj`, whose inputs carry SmolLM2's
  activation outliers. Whether it still pays once adaComp refits the factors is what the
  two candidates tell apart.

`svdzoo-duo-ada`: KL knapsack (ratio-independent table) -> Duo-SVD's column split of each
matrix under the original Gram -> `tau` adaComp alternations on the low-rank part, with the
Gram of the compressed model's inputs restricted to the columns the split did not keep
(the kept columns are exact, so the data loss is the rest's alone). Layer by layer, as
`adasvd`. `svdzoo-kl-ada`: the same without the column split (SVD-LLM's truncation as
adaComp's start). Search config: workflow/configs/compose.yaml.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from svdzoo import column_split, linalg
from svdzoo.methods.adasvd import PAPER as ADASVD_PAPER
from svdzoo.methods.adasvd import AdaComp, _check_tau, adacomp_data, adacomp_gram
from svdzoo.methods.base import GRAM, SENS_DUO, MatrixContext, Method, Needs, Range, register
from svdzoo.methods.duo_svd import MIN_RETAINED, ColumnPreserving, KnapsackKL
from svdzoo.methods.parts import Whitened

DUO_PAPER = "Duo-SVD (seed 000; code Pupu792/CPSVD)"


@dataclass(frozen=True)
class ColumnAdaComp:
    """Duo-SVD's column split (or SVD-LLM's truncation when `columns` is off), then AdaSVD's
    adaComp steps on the low-rank part against the compressed model's inputs."""

    tau: int = 1
    columns: bool = True
    accept: float = 0.01
    whitening: str = "cholesky"
    # like adaComp, it reads only the compressed stream's Gram from the sequential pass
    sequential_stats = ("H_actual",)
    option_ranges = {"accept": Range(0.0, 1.0)}  # `base.check_options`
    option_needs = {  # `base.inert_options`
        "accept": Needs("columns", True, "with columns off there is no split to accept")
    }

    def __post_init__(self) -> None:  # refused when configured, not after the replay began
        _check_tau(self.tau)
        Whitened(self.whitening)  # refuses an unknown whitening

    @property
    def precision(self) -> str:
        """The whitened SVDs' arithmetic for the manifest: `auto` in both of its paths (the
        split's `ColumnPreserving.precision`, adaComp's start `Whitened`'s default)."""
        return "auto"

    def __call__(self, ctx: MatrixContext, rank: int):
        if not self.columns:
            return AdaComp(tau=self.tau, whitening=self.whitening)(ctx, rank)
        start = ColumnPreserving(accept=self.accept, whitening=self.whitening)(ctx, rank)
        if self.tau == 0 or start.rank == 0:
            return start
        if not isinstance(start, column_split.ColumnSplit):
            # the split did not pay: `start` is SVD-LLM's truncation, adaComp's own start,
            # so refit it rather than truncate again (one whitened SVD per matrix)
            data, S = adacomp_data(ctx)
            return linalg.adacomp_steps(ctx.W, start.A, start.B, data, iters=int(self.tau), S=S)
        data = adacomp_gram(ctx)
        rest = start.rest_idx.to(ctx.W.device)
        fac = linalg.adacomp_steps(
            ctx.W.index_select(1, rest),
            start.A,
            start.B,
            data.to(ctx.W.device).index_select(0, rest).index_select(1, rest),
            iters=int(self.tau),
        )
        return dataclasses.replace(start, A=fac.A, B=fac.B, loss=fac.loss)

    def spectrum(self, ctx: MatrixContext):
        return Whitened(self.whitening).spectrum(ctx)


register(
    Method(
        name="svdzoo-duo-ada",
        description="svdzoo composition: Duo-SVD's KL knapsack (ratio-independent table) + Duo-SVD's column split + AdaSVD's adaComp (tau=1) on the low-rank part, on the compressed model's inputs",
        paper=f"svdzoo composition of {DUO_PAPER} and {ADASVD_PAPER}",
        needs=frozenset({GRAM, SENS_DUO}),
        factoriser=ColumnAdaComp(),
        allocator=KnapsackKL(protocol="independent"),
        sequential=True,
        options={"tau": 1, "min_retained": MIN_RETAINED},
    )
)
register(
    Method(
        name="svdzoo-kl-ada",
        description="svdzoo composition: Duo-SVD's KL knapsack (ratio-independent table) + SVD-LLM truncation + AdaSVD's adaComp (tau=1), on the compressed model's inputs; no column split",
        paper=f"svdzoo composition of {DUO_PAPER} and {ADASVD_PAPER}",
        needs=frozenset({GRAM, SENS_DUO}),
        factoriser=ColumnAdaComp(columns=False),
        allocator=KnapsackKL(protocol="independent"),
        sequential=True,
        options={"tau": 1, "min_retained": MIN_RETAINED},
    )
)
