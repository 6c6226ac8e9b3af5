"""Duo-SVD's measure of a compression: the mean over tokens of `KL(p_original || p_model)`
of the next-token distributions. One definition, so Duo-SVD's sensitivity table (both its
probes) and svdzoo-duo-probed's selector measure the same number, round-off included."""

from __future__ import annotations

from svdzoo.lazy import torch


def summed_token_kl(ref_logprobs: torch.Tensor, logprobs: torch.Tensor) -> float:
    """The per-token KLs of `(..., vocab)` log-probabilities, summed: each token's sum over
    the vocabulary in float32, the tokens' sum in float64 (a float32 sum over millions of
    tokens loses the digits that split decisions come down to)."""
    ref = ref_logprobs.to(logprobs.device)
    return float((ref.exp() * (ref - logprobs)).sum(-1).double().sum())


def mean_token_kl(total: float, tokens: int) -> float:
    """`total / tokens`, where a tiny negative round-off (the model unchanged) is 0."""
    return max(total / tokens, 0.0)
