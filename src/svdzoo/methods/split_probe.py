"""svdzoo's own: Duo-SVD whose column splits are kept by their effect on the model's output.

Duo-SVD keeps a column split wherever it cuts its layer's whitened error by more than
`accept` (1 %). On SmolLM2-135M that criterion fails at high ratios: at 80 % all 35 kept
splits together raise perplexity x1.81 (pydoc) / x1.96 (pysource) over the same ranks
without splits, although each cuts its layer's error on held-out tokens too, and a
split's layer gain barely predicts its effect on the model (Spearman -0.1 to -0.2;
benchmarks/results/split-one-at-a-time-*.md).

`svdzoo-duo-probed` asks the model instead. Every matrix is factored as `duo-svd-independent`
factors it, but a split is first installed as the plain truncation at the same rank (the
same parameter count). Then, greedily in the order of their layer gain, each split is put
in and kept only if it lowers the KL of the model's next-token distributions from the
original model's on `search_nsamples` (8) calibration windows by more than `margin` (0,
relative); otherwise its plain truncation goes back. One forward pass per candidate
split, after the factorisation; the ranks are the knapsack's, untouched. The manifest's
`allocation.split_probe` records every candidate's gain and KL and which were kept.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from svdzoo.lazy import nn
from svdzoo.methods.base import GRAM, SENS_DUO, Method, Range, register
from svdzoo.methods.duo_svd import MIN_RETAINED, ColumnPreserving, KnapsackKL
from svdzoo.methods.probe import Candidate

log = logging.getLogger(__name__)

SEARCH_NSAMPLES = 8


@dataclass(frozen=True)
class ProbedSplits:
    """Selector: keeps each column split only where the model's calibration KL drops."""

    margin: float = 0.0
    option_ranges = {"margin": Range(0.0, 1.0)}  # `base.check_options`

    def offer(self, factoriser: Any, ctx: Any, rank: int) -> tuple[Any, Any | None, float]:
        """`(what to install now, a candidate to decide later or None, its layer gain)`:
        the plain truncation and the split, when `factoriser` found a split that pays."""
        base, split = factoriser.alternatives(ctx, rank)
        if split is None:
            return base, None, 0.0
        return base, split, 1.0 - split.loss / split.baseline_loss

    def select(
        self,
        candidates: list[Candidate],
        probe: Callable[[], float],
        current: Callable[[str], nn.Module],
        install: Callable[[str, nn.Module], None],
    ) -> dict[str, Any]:
        """Greedy by layer gain: put each split in, keep it if the KL drops by more than
        `margin` of its current value, else put the plain module back."""
        from tqdm.auto import tqdm

        kl = start = probe()
        rows = []
        order = sorted(candidates, key=lambda c: (-c.gain, c.name))
        for c in tqdm(order, desc="split probe", unit="split"):
            plain = current(c.name)
            install(c.name, c.module)
            trial = probe()
            kept = trial < kl * (1.0 - float(self.margin))
            if kept:
                kl = trial
            else:
                install(c.name, plain)
            rows.append({"matrix": c.name, "gain": c.gain, "kl": trial, "kept": kept})
        log.info(
            "split probe: kept %d of %d splits; KL %.5g without any -> %.5g",
            sum(r["kept"] for r in rows),
            len(rows),
            start,
            kl,
        )
        return {
            "kl_without_splits": start,
            "kl": kl,
            "kept": sum(r["kept"] for r in rows),
            "candidates": rows,
        }


register(
    Method(
        name="svdzoo-duo-probed",
        description="svdzoo: duo-svd-independent with each column split kept only if it lowers the model's KL on calibration windows (greedy by layer gain)",
        paper="svdzoo extension of Duo-SVD (seed 000; code Pupu792/CPSVD)",
        needs=frozenset({GRAM, SENS_DUO}),
        factoriser=ColumnPreserving(),
        allocator=KnapsackKL(protocol="independent"),
        selector=ProbedSplits(),
        options={"min_retained": MIN_RETAINED, "search_nsamples": SEARCH_NSAMPLES},
    )
)
