"""Regressions from a review of the methods: a NaN statistic is refused, never floored
into a "dead" feature, and an unused spectrum part's options are refused."""

from __future__ import annotations

import pytest
import torch

from svdzoo import linalg
from svdzoo.errors import ConfigError
from svdzoo.methods import get_method
from svdzoo.methods.base import MatrixContext, check_options
from svdzoo.methods.parts import ActivationScaled, FisherWeighted


def _ctx(**stats: torch.Tensor) -> MatrixContext:
    W = torch.randn(8, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return MatrixContext("layers.0.q_proj", 0, "q_proj", "attn_in", W, **stats)


@pytest.mark.parametrize("everywhere", [False, True])
def test_fwsvd_refuses_a_nan_fisher(everywhere):
    # before: a NaN row got the floor weight, and an all-NaN Fisher gave plain SVD, silently
    nan = float("nan")
    row = torch.arange(1.0, 9.0, dtype=torch.float64)
    row = torch.full_like(row, nan) if everywhere else row.index_fill(0, torch.tensor([2]), nan)
    with pytest.raises(linalg.NumericsError, match="NaN or inf"):
        FisherWeighted()(_ctx(fisher_row=row), 2)


def test_asvd_refuses_a_nan_absmean():
    s = torch.ones(6, dtype=torch.float64).index_fill(0, torch.tensor([1]), float("nan"))
    with pytest.raises(linalg.NumericsError, match="NaN or inf"):
        ActivationScaled()(_ctx(absmean=s), 2)


@pytest.mark.parametrize("method", ["adasvd-compensated", "adasvd-compensated-comp"])
@pytest.mark.parametrize("option", [{"precision": "float32"}, {"fallback": "diag-damp"}])
def test_options_of_an_unused_spectrum_part_are_refused(method, option):
    # their allocators (adaCR, uniform) read no spectra, so the eigen spectrum part never runs
    with pytest.raises(ConfigError, match="takes no option"):
        check_options(get_method(method), option)
