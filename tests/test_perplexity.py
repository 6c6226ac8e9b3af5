from __future__ import annotations

import math

import torch

from svdzoo.evaluation.perplexity import perplexity


class FixedLM(torch.nn.Module):
    """Predicts token t+1 with probability p for the next token in a fixed cycle."""

    def __init__(self, vocab: int, p: float):
        super().__init__()
        self.vocab, self.p = vocab, p
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, use_cache=False):
        b, t = input_ids.shape
        probs = torch.full((b, t, self.vocab), (1 - self.p) / (self.vocab - 1))
        nxt = (input_ids + 1) % self.vocab
        probs.scatter_(2, nxt[..., None], self.p)
        return type("Out", (), {"logits": probs.log()})()


def test_perplexity_matches_hand_computation():
    vocab, p = 5, 0.7
    # windows: a perfect cycle, except one window whose tokens never follow the cycle
    good = torch.arange(12).remainder(vocab).view(2, 6)
    bad = torch.zeros(1, 6, dtype=torch.long)  # 0 -> 0 is never predicted: prob (1-p)/(V-1)
    windows = torch.cat([good, bad])
    n_good, n_bad = 2 * 5, 5
    nll = -(n_good * math.log(p) + n_bad * math.log((1 - p) / (vocab - 1)))
    expected = math.exp(nll / (n_good + n_bad))
    got = perplexity(FixedLM(vocab, p), windows, batch_size=2)
    assert math.isclose(got, expected, rel_tol=1e-6)  # float32 logits


def test_perplexity_is_measured_without_dropout_and_the_mode_restored():
    """A model left in training mode (OPT's dropout is 0.1) gives the eval-mode value, the
    same on every call, and is handed back training (it used to measure with dropout on)."""
    from helpers import random_tiny

    model = random_tiny("opt")
    windows = torch.randint(0, 258, (4, 16), generator=torch.Generator().manual_seed(0))
    ref = perplexity(model, windows)
    model.train()
    assert perplexity(model, windows) == ref and perplexity(model, windows) == ref
    assert model.training
