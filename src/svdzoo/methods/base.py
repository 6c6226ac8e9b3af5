"""What a compression method is: the statistics it needs, a factoriser, an allocator.

Named methods (one small module per paper) are `Method` records over shared parts, so
an ablation or a new combination is a new record, never a copy of the algorithm.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from svdzoo.errors import ConfigError

# Statistics products a method may need (each is a separate cached calibration output).
GRAM = "gram"  # Gram matrices, abs-means, layer cosines (svdzoo calibrate)
FISHER = "fisher"  # squared-gradient Fisher (svdzoo calibrate --kind fisher)
SENS_DUO = "sensitivity-duo"  # Duo-SVD KL sensitivity table (svdzoo sensitivity --kind duo)
SENS_ASVD = "sensitivity-asvd"  # ASVD perplexity sensitivity table (svdzoo sensitivity --kind asvd)
STATS_KINDS = (GRAM, FISHER, SENS_DUO, SENS_ASVD)


@dataclass
class MatrixContext:
    """Everything a factoriser may read about one target matrix.

    `H_actual` and `C` are set only in sequential mode: the Gram of the inputs the layer
    sees once earlier layers are compressed, and the cross-Gram `X X'^T` with the
    original inputs.
    """

    name: str
    layer: int
    type: str
    group: str
    W: torch.Tensor  # float64, m x n, on the compute device
    bias: torch.Tensor | None = None
    H: torch.Tensor | None = None
    absmean: torch.Tensor | None = None
    fisher_row: torch.Tensor | None = None
    fisher_col: torch.Tensor | None = None
    H_actual: torch.Tensor | None = None
    C: torch.Tensor | None = None
    count: int = 0

    def require(self, *names: str) -> None:
        missing = [n for n in names if getattr(self, n) is None]
        if missing:
            raise ConfigError(
                f"{self.name}: this factoriser needs {missing}, which the statistics do not provide"
            )


class Factoriser(Protocol):
    """Approximates one matrix at a given rank; returns `linalg.LowRankFactors` or `linalg.ColumnSplit`."""

    def __call__(self, ctx: MatrixContext, rank: int) -> Any: ...


@dataclass
class AllocationContext:
    """What allocators may consult: the method's statistics and a spectrum oracle."""

    stats: Any = None  # calibration.CalibrationStats
    sensitivity: Mapping[str, Any] = field(default_factory=dict)  # kind -> table
    spectrum: Callable[[str], torch.Tensor] | None = None  # target name -> whitened singular values
    options: Mapping[str, Any] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)  # allocators record choices here (e.g. K)


class Allocator(Protocol):
    """Chooses a rank per matrix so the targeted linears lose `target` of their parameters."""

    def __call__(self, infos: list, target: float, ctx: AllocationContext) -> dict[str, int]: ...


@dataclass(frozen=True)
class Method:
    name: str
    description: str
    paper: str
    needs: frozenset[str]
    factoriser: Factoriser
    allocator: Allocator
    sequential: bool = False  # factorise layer by layer on compressed-model inputs
    options: Mapping[str, Any] = field(default_factory=dict)
    spectrum_factoriser: Factoriser | None = None  # what an allocator's spectrum oracle uses


REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    if method.name in REGISTRY:
        raise ValueError(f"method {method.name!r} registered twice")
    unknown = set(method.needs) - set(STATS_KINDS)
    if unknown:
        raise ValueError(f"method {method.name!r} needs unknown statistics {sorted(unknown)}")
    REGISTRY[method.name] = method
    return method
