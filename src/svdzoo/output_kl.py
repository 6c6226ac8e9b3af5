"""Duo-SVD's measure of a compression: the mean over tokens of `KL(p_original || p_model)`
of the next-token distributions. One definition, so Duo-SVD's sensitivity table (both its
probes) and svdzoo-duo-probed's selector measure the same number, round-off included."""

from __future__ import annotations

from collections.abc import Iterable

from svdzoo.lazy import torch


def window_kls(ref_logprobs: torch.Tensor, logprobs: torch.Tensor) -> list[float]:
    """Each window's summed per-token KL, from `(windows, tokens, vocab)` log-probabilities:
    each token's sum over the vocabulary in float32, the window's tokens in float64 (a
    float32 sum over millions of tokens loses the digits that split decisions come down
    to). Per window, so that `add_up` gives the same total however the windows were
    batched."""
    ref = ref_logprobs.to(logprobs.device)
    return (ref.exp() * (ref - logprobs)).sum(-1).double().sum(-1).tolist()


def add_up(total: float, values: Iterable[float]) -> float:
    """`total` plus `values`, one at a time in order: a sum over windows whose bytes do
    not depend on the batch size (a batch's subtotal added at once regrouped the sum)."""
    for v in values:
        total += v
    return total


def mean_token_kl(total: float, tokens: int) -> float:
    """`total / tokens`, where a tiny negative round-off (the model unchanged) is 0."""
    return max(total / tokens, 0.0)
