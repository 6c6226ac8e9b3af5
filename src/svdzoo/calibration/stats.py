"""Float64 accumulators and the read-only statistics objects the methods consume.

Sums, not means: `H = sum_t x_t x_t^T` with its token count beside it, so caches built on
different batch sizes or merged later stay exact. The per-feature `mean |x|` (ASVD) is the
one quantity stored as a mean, because that is how every consumer reads it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from svdzoo.errors import CacheError
from svdzoo.models import FAMILIES, FamilyAdapter


class GramAccumulator:
    """`H = sum x x^T`, `sum |x|` and the token count of one input group."""

    def __init__(self, n: int, device: torch.device):
        self.H = torch.zeros(n, n, dtype=torch.float64, device=device)
        self.abssum = torch.zeros(n, dtype=torch.float64, device=device)
        self.count = 0

    def add(self, x: torch.Tensor) -> None:
        """`x`: (tokens, n) inputs of the group's linear."""
        x = x.detach().to(torch.float64)
        self.H.addmm_(x.T, x)
        self.abssum += x.abs().sum(0)
        self.count += x.shape[0]

    def absmean(self) -> torch.Tensor:
        return self.abssum / max(self.count, 1)


class GramCollector(dict):
    """`{group: GramAccumulator}`, filled by calling it as a hook callback `(group, x)`."""

    def __call__(self, group: str, x: torch.Tensor) -> None:
        if group not in self:
            self[group] = GramAccumulator(x.shape[-1], x.device)
        self[group].add(x)


class CrossGramAccumulator:
    """Original inputs `X`, actual inputs `X'`: `H = X X^T`, `H' = X' X'^T`, `C = X X'^T`.

    `original=False` keeps only `H'` (then `H` and `C` are None): a third of the products,
    for methods that never read the original stream."""

    def __init__(self, n: int, device: torch.device, original: bool = True):
        self.H_actual = torch.zeros(n, n, dtype=torch.float64, device=device)
        self.H = torch.zeros_like(self.H_actual) if original else None
        self.C = torch.zeros_like(self.H_actual) if original else None
        self.count = 0

    def add(self, x: torch.Tensor | None, x_actual: torch.Tensor | None) -> None:
        """Rows are tokens. `x_actual=None` means the two streams coincide for this batch;
        `x` is not read (may be None) when the accumulator keeps only `H'`."""
        if self.H is None or self.C is None:
            src = x if x_actual is None else x_actual
            if src is None:
                raise ValueError("no inputs to accumulate")
            xa = src.detach().to(torch.float64)
            self.H_actual.addmm_(xa.T, xa)
            self.count += xa.shape[0]
            return
        if x is None:
            raise ValueError("the original inputs are needed for H and C")
        x = x.detach().to(torch.float64)
        self.H.addmm_(x.T, x)
        if x_actual is None:
            self.H_actual.addmm_(x.T, x)
            self.C.addmm_(x.T, x)
        else:
            xa = x_actual.detach().to(torch.float64)
            self.H_actual.addmm_(xa.T, xa)
            self.C.addmm_(x.T, xa)
        self.count += x.shape[0]


class CosineAccumulator:
    """Mean over tokens of cos(layer input, layer output): AdaSVD's layer importance."""

    def __init__(self) -> None:
        self.total = 0.0
        self.count = 0

    def add(self, x_in: torch.Tensor, x_out: torch.Tensor) -> None:
        cos = F.cosine_similarity(x_in.to(torch.float64), x_out.to(torch.float64), dim=-1)
        self.total += float(cos.sum())
        self.count += cos.numel()

    def mean(self) -> float:
        return self.total / max(self.count, 1)


# ---------------------------------------------------------------- tensor naming


def gram_name(layer: int, group: str) -> str:
    return f"layers.{layer}.{group}.gram"


def absmean_name(layer: int, group: str) -> str:
    return f"layers.{layer}.{group}.absmean"


def cosine_name(layer: int) -> str:
    return f"layers.{layer}.cosine"


def count_key(layer: int, group: str) -> str:
    return f"layers.{layer}.{group}"


# ---------------------------------------------------------------- read-only views


class _Cached:
    """A manifest plus tensors fetched by name (from memory, or lazily from a file)."""

    def __init__(self, manifest: dict[str, Any], get: Callable[[str], torch.Tensor]):
        self.manifest = manifest
        self._get = get

    @property
    def kind(self) -> str:
        return self.manifest["kind"]

    @property
    def adapter(self) -> FamilyAdapter:
        return FAMILIES[self.manifest["family"]]

    def tensor(self, name: str) -> torch.Tensor:
        return self._get(name)

    def tensor_names(self) -> list[str]:
        return list(self.manifest["tensors"])

    def locate(self, full_name: str) -> tuple[int, str]:
        """`'model.layers.3.self_attn.q_proj' -> (3, 'self_attn.q_proj')`."""
        prefix = re.escape(self.manifest["layers_path"])
        m = re.fullmatch(rf"{prefix}\.(\d+)\.(.+)", full_name)
        if m is None or m.group(2) not in self.adapter.targets:
            raise CacheError(
                f"{full_name!r} is not a target linear of this {self.manifest['family']} cache "
                f"(expected '{self.manifest['layers_path']}.<i>.<one of {list(self.adapter.targets)}>')"
            )
        return int(m.group(1)), m.group(2)


@dataclass(frozen=True)
class TargetStats:
    """The input statistics one target linear reads (shared with its group)."""

    layer: int
    group: str
    gram: torch.Tensor
    absmean: torch.Tensor
    count: int


class CalibrationStats(_Cached):
    """Gram matrices, abs-means and layer cosines of one (model, calibration set)."""

    @property
    def num_layers(self) -> int:
        return int(self.manifest["num_layers"])

    @property
    def groups(self) -> tuple[str, ...]:
        return tuple(self.manifest["groups"])

    def gram(self, layer: int, group: str) -> torch.Tensor:
        """float64 `H = sum x x^T` (n x n) of the inputs of `group` in decoder layer `layer`."""
        return self.tensor(gram_name(layer, group))

    def absmean(self, layer: int, group: str) -> torch.Tensor:
        """float64 per-feature mean |x| over the calibration tokens (ASVD's scaling)."""
        return self.tensor(absmean_name(layer, group))

    def count(self, layer: int, group: str) -> int:
        key = count_key(layer, group)
        if key not in self.manifest["counts"]:
            raise CacheError(f"no statistics for layer {layer} group {group!r} in this cache")
        return int(self.manifest["counts"][key])

    def cosine(self, layer: int) -> float:
        """Mean cos(input, output) hidden state of decoder layer `layer` (AdaSVD adaCR)."""
        return float(self.tensor(cosine_name(layer)))

    def stats_for_target(self, full_name: str) -> TargetStats:
        """The statistics of a target linear by its full module name, via its input group."""
        layer, target = self.locate(full_name)
        group = self.adapter.group_of(target)
        return TargetStats(
            layer,
            group,
            self.gram(layer, group),
            self.absmean(layer, group),
            self.count(layer, group),
        )

    def gram_for_target(self, full_name: str) -> torch.Tensor:
        layer, target = self.locate(full_name)
        return self.gram(layer, self.adapter.group_of(target))


class FisherStats(_Cached):
    """FWSVD's squared-gradient importances of every target linear's weight (m x n).

    `row(name)[i] = sum_batches sum_j (dL/dW_ij)^2` (m,), the paper's reading;
    `col(name)[j] = sum_batches sum_i (dL/dW_ij)^2` (n,), the per-input-column variant.
    """

    def row(self, full_name: str) -> torch.Tensor:
        self.locate(full_name)
        return self.tensor(f"{full_name}.row")

    def col(self, full_name: str) -> torch.Tensor:
        self.locate(full_name)
        return self.tensor(f"{full_name}.col")

    @property
    def targets(self) -> list[str]:
        return list(self.manifest["targets"])
