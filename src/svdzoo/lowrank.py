"""Drop-in replacements for `nn.Linear` (their parameter counts: `svdzoo.param_counts`).

`LowRankLinear`: `y = A (B x) + b`. `ColumnPreservingLinear` (Duo-SVD):
`y = A (B x[rest]) + W_c x[kept] + b`. Both rebuild from a small JSON-able spec
(`module_spec` / `build_from_spec`) so a compressed model is recreated from its manifest
and then filled by `load_state_dict`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from svdzoo.errors import SvdzooError

__all__ = [
    "LowRankLinear",
    "ColumnPreservingLinear",
    "module_spec",
    "build_from_spec",
]


class SpecError(SvdzooError, ValueError):
    """A module spec (manifest entry) or factor set that cannot describe a valid module."""


# ---------------------------------------------------------------- modules


def _linear(i: int, o: int, bias: bool, dtype: Any, device: Any, init: bool) -> nn.Linear:
    if init:
        return nn.Linear(i, o, bias=bias, device=device, dtype=dtype)
    # uninitialised storage: random init of large matrices is wasted work when every
    # weight is about to be overwritten from factors or a state dict
    lin = nn.Linear(i, o, bias=bias, device="meta", dtype=dtype)
    return lin.to_empty(device=device if device is not None else "cpu")


def _param(t: torch.Tensor, dtype: Any, device: Any) -> nn.Parameter:
    """A parameter with storage of its own: `to` returns `t` itself when nothing changes,
    and a module sharing the dense layer's bias (or the caller's factors) would change
    them under any in-place update, e.g. fine-tuning."""
    t = t.detach().to(dtype=dtype, device=device, memory_format=torch.contiguous_format, copy=True)
    return nn.Parameter(t)


def _check_bias(bias: torch.Tensor | None, m: int) -> None:
    if bias is not None and bias.shape != (m,):
        raise SpecError(f"bias has shape {tuple(bias.shape)}, expected ({m},)")


def _set_factors(
    mod: nn.Module, A: torch.Tensor, B: torch.Tensor, bias: torch.Tensor | None, dtype: Any,
    device: Any,
) -> None:  # fmt: skip
    """Fill an uninitialised module's `B`, `A` (and the bias, which lives on `A`)."""
    mod.B.weight = _param(B, dtype, device)
    mod.A.weight = _param(A, dtype, device)
    if bias is not None:
        mod.A.bias = _param(bias, dtype, device)


class LowRankLinear(nn.Module):
    """`y = A(B(x))`, `B = Linear(n, k, bias=False)`, `A = Linear(k, m, bias)`."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        rank: int,
        bias: bool = True,
        dtype: Any = None,
        device: Any = None,
        init: bool = True,
    ) -> None:
        super().__init__()
        if min(in_features, out_features) <= 0 or rank < 0:
            raise SpecError(f"invalid low-rank shape {out_features}x{in_features} rank {rank}")
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.B = _linear(in_features, rank, False, dtype, device, init)
        self.A = _linear(rank, out_features, bias, dtype, device, init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.A(self.B(x))

    @classmethod
    def from_factors(
        cls,
        A: torch.Tensor,
        B: torch.Tensor,
        bias: torch.Tensor | None = None,
        dtype: Any = None,
        device: Any = None,
    ) -> LowRankLinear:
        """Module with weights `A` (`m x k`), `B` (`k x n`) cast to `dtype`/`device`."""
        if A.dim() != 2 or B.dim() != 2 or A.shape[1] != B.shape[0]:
            raise SpecError(f"factor shapes {tuple(A.shape)} x {tuple(B.shape)} do not chain")
        m, k = A.shape
        n = B.shape[1]
        _check_bias(bias, m)
        dtype = dtype or A.dtype
        device = device if device is not None else A.device
        mod = cls(n, m, k, bias=bias is not None, dtype=dtype, device=device, init=False)
        _set_factors(mod, A, B, bias, dtype, device)
        return mod

    def weight_product(self) -> torch.Tensor:
        """The equivalent dense weight `A @ B` (for tests and diagnostics)."""
        return self.A.weight @ self.B.weight

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}"


class ColumnPreservingLinear(nn.Module):
    """Duo-SVD: `y = A(B(x[..., rest])) + kept(x[..., kept])`; the bias lives on `A`."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        rank: int,
        n_kept: int,
        bias: bool = True,
        dtype: Any = None,
        device: Any = None,
        init: bool = True,
    ) -> None:
        super().__init__()
        if min(in_features, out_features) <= 0 or rank < 0 or not 0 <= n_kept <= in_features:
            raise SpecError(
                f"invalid column-preserving shape {out_features}x{in_features} rank {rank} kept {n_kept}"
            )
        dev = device if device is not None else "cpu"
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.n_kept = n_kept
        # placeholders with the right shapes; real indices come from from_split or a state dict
        self.register_buffer("kept_idx", torch.arange(n_kept, dtype=torch.long, device=dev))
        self.register_buffer(
            "rest_idx", torch.arange(n_kept, in_features, dtype=torch.long, device=dev)
        )
        self.kept = _linear(n_kept, out_features, False, dtype, device, init)
        self.B = _linear(in_features - n_kept, rank, False, dtype, device, init)
        self.A = _linear(rank, out_features, bias, dtype, device, init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rest = x.index_select(-1, self.rest_idx)
        return self.A(self.B(rest)) + self.kept(x.index_select(-1, self.kept_idx))

    @classmethod
    def from_split(
        cls, split: Any, bias: torch.Tensor | None = None, dtype: Any = None, device: Any = None
    ) -> ColumnPreservingLinear:
        """Module from a `column_split.ColumnSplit` (kept_idx, W_kept, rest_idx, A, B)."""
        A, B, Wk = split.A, split.B, split.W_kept
        kept, rest = split.kept_idx, split.rest_idx
        m, k = A.shape
        c = kept.numel()
        n = c + rest.numel()
        if Wk.shape != (m, c) or B.shape != (k, rest.numel()):
            raise SpecError(
                f"column split shapes do not fit: W_kept {tuple(Wk.shape)}, A {tuple(A.shape)}, B {tuple(B.shape)}"
            )
        if not torch.equal(torch.sort(torch.cat([kept, rest]).cpu()).values, torch.arange(n)):
            raise SpecError("kept and rest indices must partition the input features")
        _check_bias(bias, m)
        dtype = dtype or A.dtype
        device = device if device is not None else A.device
        mod = cls(n, m, k, c, bias=bias is not None, dtype=dtype, device=device, init=False)
        mod.kept_idx = kept.to(device=device, dtype=torch.long).contiguous()
        mod.rest_idx = rest.to(device=device, dtype=torch.long).contiguous()
        mod.kept.weight = _param(Wk, dtype, device)
        _set_factors(mod, A, B, bias, dtype, device)
        return mod

    def weight_product(self) -> torch.Tensor:
        """The equivalent dense `m x n` weight."""
        W = self.A.weight.new_zeros(self.out_features, self.in_features)
        W[:, self.kept_idx] = self.kept.weight
        W[:, self.rest_idx] = self.A.weight @ self.B.weight
        return W

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"rank={self.rank}, kept_columns={self.n_kept}"
        )


# ---------------------------------------------------------------- manifest specs

SPEC_LOWRANK = "lowrank"
SPEC_COLUMN = "column"


def module_spec(module: nn.Module) -> dict[str, Any]:
    """JSON-able description that `build_from_spec` turns back into an empty module."""
    if isinstance(module, (ColumnPreservingLinear, LowRankLinear)):
        column = isinstance(module, ColumnPreservingLinear)
        return {
            "type": SPEC_COLUMN if column else SPEC_LOWRANK,
            "in_features": module.in_features,
            "out_features": module.out_features,
            "rank": module.rank,
            "kept_columns": module.n_kept if column else 0,
            "bias": module.A.bias is not None,
        }
    raise SpecError(f"no spec for module type {type(module).__name__}")


def build_from_spec(spec: dict[str, Any], dtype: Any = None, device: Any = None) -> nn.Module:
    """Module of the right shapes with uninitialised weights; fill it with `load_state_dict`."""
    try:
        kind = spec["type"]
        n, m, k = int(spec["in_features"]), int(spec["out_features"]), int(spec["rank"])
        bias = bool(spec["bias"])
    except (KeyError, TypeError, ValueError) as exc:
        raise SpecError(f"malformed module spec {spec!r}: {exc}") from exc
    if kind == SPEC_LOWRANK:
        return LowRankLinear(n, m, k, bias=bias, dtype=dtype, device=device, init=False)
    if kind == SPEC_COLUMN:
        c = int(spec.get("kept_columns", 0))
        return ColumnPreservingLinear(n, m, k, c, bias=bias, dtype=dtype, device=device, init=False)
    raise SpecError(f"unknown module spec type {kind!r}")
