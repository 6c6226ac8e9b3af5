"""Layer-by-layer streaming: capture what decoder layer 0 receives, then run layers one at a time.

Only one decoder layer needs to sit on the accelerator: the model's embeddings run where
the model is (usually CPU), a pre-hook on layer 0 records the hidden states and the keyword
arguments the layer needs (attention mask, position ids, rotary position embeddings,
whatever the installed transformers passes) and raises to stop the forward. Each layer is
then moved to the device, fed every batch, and its outputs become the next layer's inputs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from svdzoo.calibration.store import ActivationStore, MemoryBudget
from svdzoo.errors import ModelError
from svdzoo.models import FamilyAdapter


class _StopForward(Exception):
    """Raised by the layer-0 pre-hook: everything after the embeddings is not needed."""


def map_tensors(obj: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """Apply `fn` to every tensor inside nested tuples/lists/dicts; other values pass through."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, tuple):
        return tuple(map_tensors(o, fn) for o in obj)
    if isinstance(obj, list):
        return [map_tensors(o, fn) for o in obj]
    if isinstance(obj, dict):
        return {k: map_tensors(v, fn) for k, v in obj.items()}
    return obj


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (
            isinstance(a, torch.Tensor)
            and isinstance(b, torch.Tensor)
            and a.shape == b.shape
            and a.dtype == b.dtype
            and torch.equal(a, b)
        )
    if isinstance(a, (tuple, list)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a is b or a == b


@dataclass
class LayerCall:
    """Everything but the hidden states that a decoder layer is called with, for one batch."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]


@dataclass
class LayerInputs:
    """Per batch: the hidden states (in a store) and the call arguments (deduplicated).

    `calls` are layer 0's. Families whose layers come in kinds with different call
    arguments (`FamilyAdapter.layer_kinds`) also have `by_kind`: each kind's calls, taken
    from the first layer of that kind; `calls_for(i)` picks layer `i`'s."""

    hidden: ActivationStore
    calls: list[LayerCall]
    kinds: list[str] | None = None
    by_kind: dict[str, list[LayerCall]] | None = None

    def __len__(self) -> int:
        return len(self.calls)

    def calls_for(self, layer: int) -> list[LayerCall]:
        if self.kinds is None or self.by_kind is None:
            return self.calls
        return self.by_kind[self.kinds[layer]]


def module_device(module: nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    for b in module.buffers():
        return b.device
    return torch.device("cpu")


def _dedup(calls: list[LayerCall], call: LayerCall) -> LayerCall:
    if calls and _same(calls[-1].args, call.args) and _same(calls[-1].kwargs, call.kwargs):
        return calls[-1]  # identical masks/positions: keep one copy
    return call


def capture_layer_inputs(
    model: nn.Module,
    adapter: FamilyAdapter,
    windows: torch.Tensor,
    batch_size: int,
    budget: MemoryBudget,
) -> LayerInputs:
    """Run the model up to decoder layer 0 for each batch and record that layer's inputs.

    When layers come in kinds (`adapter.layer_kinds`), the forward runs on to the first
    layer of the last kind to appear, recording each kind's call arguments there."""
    if windows.ndim != 2 or windows.shape[0] < 1:
        raise ModelError(
            f"calibration windows must be a (nsamples, seqlen) tensor, got {tuple(windows.shape)}"
        )
    if batch_size < 1:
        raise ModelError(f"batch size must be positive, got {batch_size}")
    layers = adapter.layers(model)
    kinds = adapter.layer_kinds(model)
    first: dict[str, int] = {}
    for i, k in enumerate(kinds or []):
        first.setdefault(k, i)
    watch = sorted(set(first.values()) | {0})
    stop_at = watch[-1]
    box: dict[str, Any] = {}

    def make_hook(index: int):
        def hook(_mod: nn.Module, args: tuple, kwargs: dict) -> None:
            if args:
                hidden, rest = args[0], args[1:]
            else:
                kwargs = dict(kwargs)
                hidden, rest = kwargs.pop("hidden_states"), ()
            if index == 0:
                box["hidden"] = hidden
            box[index] = LayerCall(
                args=map_tensors(rest, lambda t: t.detach().to("cpu")),
                kwargs=map_tensors(dict(kwargs), lambda t: t.detach().to("cpu")),
            )
            if index == stop_at:
                raise _StopForward

        return hook

    dev = model.get_input_embeddings().weight.device
    store = ActivationStore(budget)
    per_layer: dict[int, list[LayerCall]] = {i: [] for i in watch}
    handles = [layers[i].register_forward_pre_hook(make_hook(i), with_kwargs=True) for i in watch]
    try:
        with torch.no_grad():
            for start in range(0, windows.shape[0], batch_size):
                box.clear()
                ids = windows[start : start + batch_size].to(dev)
                with contextlib.suppress(_StopForward):
                    model(input_ids=ids, use_cache=False)
                if "hidden" not in box or stop_at not in box:
                    raise ModelError(f"the model's forward never reached decoder layer {stop_at}")
                store.append(box["hidden"])
                for i in watch:
                    per_layer[i].append(_dedup(per_layer[i], box[i]))
    except BaseException:
        store.close()  # its bytes back to the (possibly caller-owned) budget
        raise
    finally:
        for h in handles:
            h.remove()
    by_kind = {k: per_layer[i] for k, i in first.items()} if kinds else None
    return LayerInputs(store, per_layer[0], kinds, by_kind)


class CallArgsOnDevice:
    """Moves each distinct LayerCall to the device once per layer pass."""

    def __init__(self, device: torch.device):
        self.device = device
        self._cache: dict[int, LayerCall] = {}

    def __call__(self, call: LayerCall) -> LayerCall:
        key = id(call)
        if key not in self._cache:
            move = lambda t: t.to(self.device)  # noqa: E731
            self._cache[key] = LayerCall(
                map_tensors(call.args, move), map_tensors(call.kwargs, move)
            )
        return self._cache[key]


def call_layer(layer: nn.Module, hidden: torch.Tensor, call: LayerCall) -> torch.Tensor:
    """A decoder layer's output hidden states, whatever container the family returns."""
    out = layer(hidden, *call.args, **call.kwargs)
    return out[0] if isinstance(out, (tuple, list)) else out


@contextlib.contextmanager
def group_input_hooks(
    layer: nn.Module,
    adapter: FamilyAdapter,
    fn: Callable[[str, torch.Tensor], None],
    groups: tuple[str, ...] | None = None,
) -> Iterator[None]:
    """Call `fn(group, x)` with the 2-D input of the first linear of each group.

    Members of a group read the same tensor, so hooking the first one is enough. The
    module is looked up at call time, so a linear the caller has replaced is hooked too.
    """
    handles = []
    for group, members in adapter.groups.items():
        if groups is not None and group not in groups:
            continue
        mod = layer.get_submodule(members[0])

        def hook(_mod: nn.Module, args: tuple, group: str = group) -> None:
            x = args[0]
            fn(group, x.reshape(-1, x.shape[-1]))

        handles.append(mod.register_forward_pre_hook(hook))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def on_device(layer: nn.Module, device: torch.device) -> Iterator[nn.Module]:
    """Move one layer to the device for a block and back to where it was afterwards."""
    home = module_device(layer)
    layer.to(device)
    try:
        yield layer
    finally:
        layer.to(home)
