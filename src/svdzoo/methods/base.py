"""What a compression method is: the statistics it needs, a factoriser, an allocator.

Named methods (one small module per paper) are `Method` records over shared parts, so
an ablation or a new combination is a new record, never a copy of the algorithm.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
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


class WhitenerCache:
    """Whiteners of the input Grams, keyed by (whitening, layer, group), for the last few groups.

    q/k/v read one input Gram and gate/up another, so a Cholesky or eigendecomposition is
    done once per group instead of once per matrix. Matrices are visited layer by layer,
    so a small LRU bound keeps memory flat even at 7B scale (a 11008^2 float64 factor is
    ~1 GB)."""

    def __init__(self, size: int = 4) -> None:
        self.size = size
        self.hits = 0
        self.misses = 0
        self._items: OrderedDict[Hashable, Any] = OrderedDict()

    def get(self, key: Hashable, make: Callable[[], Any]) -> Any:
        if key in self._items:
            self.hits += 1
            self._items.move_to_end(key)
            return self._items[key]
        self.misses += 1
        value = make()
        self._items[key] = value
        while len(self._items) > self.size:
            self._items.popitem(last=False)
        return value


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
    whiteners: WhitenerCache | None = field(default=None, repr=False, compare=False)

    def require(self, *names: str) -> None:
        missing = [n for n in names if getattr(self, n) is None]
        if missing:
            raise ConfigError(
                f"{self.name}: this factoriser needs {missing}, which the statistics do not provide"
            )


def factorise(factoriser: Factoriser, ctx: MatrixContext, rank: int) -> Any:
    """`factoriser(ctx, rank)`, with numerical failures naming the matrix they hit."""
    from svdzoo.linalg import NumericsError

    try:
        return factoriser(ctx, rank)
    except NumericsError as exc:
        raise NumericsError(f"{ctx.name} (rank {rank}): {exc}") from exc


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
