"""An example svdzoo plugin: SVD-LLM's truncation on a damped Gram matrix.

GPTQ adds 1 % of the Gram's mean diagonal to it before its Cholesky factorisation
(`percdamp`); SVD-LLM whitens with the Cholesky factor of the undamped Gram and repairs it
only when that fails. The idea tested here: damp always, so directions the calibration
set hardly excites are not trusted to be unimportant. Importing this module registers
`damped-svd-llm` (svdzoo.plugins finds it through this package's entry point); its
`damp` option is a configuration, as any part's is
(`svdzoo compress --option damp=0.1`, params.yaml `method_options`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from svdzoo import linalg
from svdzoo.methods import Method, register
from svdzoo.methods.base import GRAM, MatrixContext, Range
from svdzoo.methods.parts import Uniform


@dataclass(frozen=True)
class DampedWhitened:
    """Truncation-aware whitening with `H + damp * mean(diag H) * I`."""

    damp: float = 0.01
    option_ranges = {"damp": Range(0.0)}  # svdzoo refuses a negative value before any work

    def __call__(self, ctx: MatrixContext, rank: int) -> linalg.LowRankFactors:
        ctx.require("H")
        H = ctx.H.to(ctx.W)
        shift = self.damp * H.diagonal().mean()
        H = H + shift * torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
        return linalg.truncate(ctx.W, linalg.cholesky_whitener(H), rank)


register(
    Method(
        name="damped-svd-llm",
        description="SVD-LLM on H + damp * mean(diag H) * I (example plugin)",
        paper="svdzoo plugin example (GPTQ's dampening in SVD-LLM's whitening)",
        needs=frozenset({GRAM}),
        factoriser=DampedWhitened(),
        allocator=Uniform(),
    )
)
