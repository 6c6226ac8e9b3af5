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
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from svdzoo.lazy import nn, torch
from svdzoo.linalg import NumericsError
from svdzoo.methods.base import FRACTION, GRAM, SENS_DUO, Method, register
from svdzoo.methods.duo_svd import MIN_RETAINED, ColumnPreserving, KnapsackKL
from svdzoo.output_kl import add_up, mean_token_kl, window_kls

log = logging.getLogger(__name__)

SEARCH_NSAMPLES = 8


class KLProbe:
    """`probe()`: mean per-token `KL(p_original || p_model)` of the next-token distributions
    over the probe windows, the model as it is now against the model as it was when the
    probe was made. The reference log-probabilities are kept on the CPU in float32:
    windows x seqlen x vocab, 0.38 GB for 8 x 256 tokens of SmolLM2, 2.1 GB for 8 x 2048
    of a 32k vocabulary. Duo-SVD's own sensitivity measure (`output_kl`, as its table
    computes it), on the whole model."""

    def __init__(self, model: nn.Module, windows: torch.Tensor, *, batch_size: int = 4) -> None:
        self.model = model
        self.windows = windows
        self.batch_size = batch_size
        self.reference = [lp.cpu() for lp in self._logprobs()]
        log.info(
            "KL probe: reference log-probabilities of %d windows (%.2f GB)",
            windows.shape[0],
            sum(r.numel() * r.element_size() for r in self.reference) / 2**30,
        )

    def _logprobs(self):
        device = next(self.model.parameters()).device
        with torch.no_grad():
            for start in range(0, self.windows.shape[0], self.batch_size):
                ids = self.windows[start : start + self.batch_size].to(device)
                logits = self.model(input_ids=ids, use_cache=False).logits
                yield torch.log_softmax(logits.to(torch.float32), dim=-1)

    def __call__(self) -> float:
        total, count = 0.0, 0
        for ref, lp in zip(self.reference, self._logprobs(), strict=True):
            total = add_up(total, window_kls(ref, lp))
            count += ref.shape[0] * ref.shape[1]
        return mean_token_kl(total, count)


@dataclass(frozen=True)
class ProbedSplits:
    """Selector: keeps each column split only where the model's calibration KL drops."""

    margin: float = 0.0
    option_ranges = {"margin": FRACTION}  # `base.check_options`

    def offer(self, factoriser: Any, ctx: Any, rank: int) -> tuple[Any, Any | None, float]:
        """`(what to install now, a candidate to decide later or None, its layer gain)`:
        the plain truncation and the split, when `factoriser` found a split that pays."""
        base, split = factoriser.alternatives(ctx, rank)
        if split is None:
            return base, None, 0.0
        return base, split, 1.0 - split.loss / split.baseline_loss

    def probe(self, model: nn.Module, windows: torch.Tensor) -> KLProbe:
        """Made before any matrix is replaced: the original model is the reference."""
        return KLProbe(model, windows)

    def select(
        self,
        candidates: list[tuple[str, float, nn.Module]],
        probe: KLProbe,
        current: Callable[[str], nn.Module],
        install: Callable[[str, nn.Module], None],
    ) -> dict[str, Any]:
        """Greedy by layer gain over `(name, gain, module)`: put each split in, keep it if
        the KL drops by more than `margin` of its current value, else put the plain module
        back. A trial whose KL is not finite is not kept (recorded as null)."""
        from tqdm.auto import tqdm

        kl = start = probe()
        if not math.isfinite(start):
            raise NumericsError(
                f"the model without any column split has a calibration KL of {start}: its "
                "outputs overflow or are NaN, so no split can be judged"
            )
        rows = []
        for name, gain, module in tqdm(
            sorted(candidates, key=lambda c: (-c[1], c[0])), desc="split probe", unit="split"
        ):
            plain = current(name)
            install(name, module)
            trial = probe()
            kept = trial < kl * (1.0 - float(self.margin))  # False for NaN
            if kept:
                kl = trial
            else:
                install(name, plain)
            finite = trial if math.isfinite(trial) else None
            rows.append({"matrix": name, "gain": gain, "kl": finite, "kept": kept})
        kept = sum(r["kept"] for r in rows)
        log.info(
            "split probe: kept %d of %d splits; KL %.5g without any -> %.5g",
            kept,
            len(rows),
            start,
            kl,
        )
        return {
            "windows": int(probe.windows.shape[0]),
            "kl_without_splits": start,
            "kl": kl,
            "kept": kept,
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
