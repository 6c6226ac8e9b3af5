"""Duo-SVD's fast split searches against the reference on seeded random matrices built to
be hard (benchmarks/bench_split_agreement.py, whose 4,000-case sweep found the two cases
pinned here): the same split and loss, or a round-off tie, and every reported loss equal to
its factors' layer loss computed directly."""

from __future__ import annotations

import pytest
from helpers import load_benchmark

BAD = {"mismatch", "loss not the factors'"}


@pytest.fixture(scope="module")
def sweep():
    return load_benchmark("bench_split_agreement")


# 3051: a 157 x 135 layer whose Gram comes from 140 tokens; the chosen split's factors from
# a float32 basis with two fixed subspace iterations were 0.71 % above the reference's
# loss. 2789: the same, 6.4e-5. The rest: the sweep's first seeds.
@pytest.mark.parametrize("seed", [3051, 2789, *range(150)])
def test_fast_searches_agree_with_the_reference(sweep, seed):
    rows = sweep.compare(seed)
    assert rows, seed
    for row in rows:
        assert row["outcome"] not in BAD, row
    assert {row["search"] for row in rows} == set(sweep.FAST)


def test_the_sweep_classes_a_worse_loss_at_the_same_split_as_a_mismatch(sweep, monkeypatch):
    """The check can fail: with the chosen split's eigenpairs made coarse (its float32 basis, no subspace
    iteration or residual check), seed 3051's split is still the reference's but its loss is
    not, and the sweep says mismatch."""
    import torch

    from svdzoo.column_split import rest_problem

    def coarse(T, k):
        mu, E = torch.linalg.eigh(T.to(torch.float32))
        E = torch.linalg.qr(E.flip(1)[:, :k].to(T.dtype)).Q
        return torch.diagonal(E.T @ T @ E), E

    monkeypatch.setattr(rest_problem, "top_eigenpairs", coarse)
    outcomes = {row["outcome"] for row in sweep.compare(3051)}
    assert outcomes == {"mismatch"}
