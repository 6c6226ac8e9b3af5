"""Perplexity as the SVD-compression papers measure it.

The split is tokenised whole and cut into non-overlapping `seqlen` windows (remainder
dropped), each after the model's `data.window_prefix` (Gemma's BOS; none for the papers'
families); perplexity is exp of the mean next-token negative log-likelihood over every
predicted token of every window.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from svdzoo.models import eval_mode

log = logging.getLogger(__name__)


@torch.no_grad()
def window_nll(
    model, windows: torch.Tensor, *, batch_size: int = 8, device=None, desc: str = "ppl"
) -> tuple[float, int]:
    """Summed next-token NLL (float64) and number of predicted tokens over `windows`, in
    evaluation mode (a model left training would add dropout noise)."""
    device = device or next(model.parameters()).device
    total = torch.zeros((), dtype=torch.float64)
    count = 0
    with eval_mode(model):
        steps = range(0, windows.shape[0], batch_size)
        for i in tqdm(steps, desc=desc, unit="batch", leave=False):
            batch = windows[i : i + batch_size].to(device)
            logits = model(input_ids=batch, use_cache=False).logits
            shift_logits = logits[:, :-1, :].float()
            shift_labels = batch[:, 1:]
            nll = F.cross_entropy(
                shift_logits.reshape(-1, shift_logits.shape[-1]),
                shift_labels.reshape(-1),
                reduction="sum",
            )
            total += nll.double().cpu()
            count += shift_labels.numel()
    return float(total), count


def perplexity(
    model, windows: torch.Tensor, *, batch_size: int = 8, device=None, desc: str = "ppl"
) -> float:
    """exp(mean NLL) over all windows; `inf` where the model's loss overflows."""
    nll, n = window_nll(model, windows, batch_size=batch_size, device=device, desc=desc)
    mean = nll / n
    return math.exp(mean) if mean < 700 else float("inf")
