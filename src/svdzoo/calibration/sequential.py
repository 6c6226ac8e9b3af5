"""Sequential (error-compensating) calibration for AdaSVD's adaComp and ResSVD.

Two hidden-state streams flow through the decoder layers side by side:

- the *original* stream: the uncompressed model (each layer is deep-copied before the caller
  touches it, and the copy processes this stream);
- the *actual* stream: the model as compressed so far (earlier layers already replaced).

For the layer being compressed, `layer_stats` gives per input group

- `H  = X X^T`    inputs of the group's linear in the original model,
- `H_actual = X' X'^T` inputs of that linear when the actual stream goes through the layer
  *as it currently is* (before the caller edits it: the uncompressed layer, as AdaSVD's
  compensation needs; after compressing some of its linears: their effect is included,
  so callers may compress a layer group by group, asking for fresh statistics in between),
- `C  = X X'^T`   the cross-Gram, so the layer can be fitted to `W X` from `X'`.

These are computed on the fly and never cached. While no layer has been changed the two
streams coincide and only one is stored; they split at the first layer whose output changes.

`original=False` drops the original stream altogether, for methods that read only `H'`
(AdaSVD's adaComp): no reference copy of the layer, no second forward, one Gram product
instead of three; `H` and `C` are then None and `divergence()` is not tracked.

Memory: the model stays where it is (usually host memory); the current layer and its
reference copy sit on the device during their turn (two layers: ~0.8 GB for LLaMA-7B in
fp16), plus three n x n float64 matrices per requested group; the streams live in activation
stores sharing one byte budget, offloaded to disk beyond it.

Use::

    seq = SequentialCalibrator(model, windows, device="cuda")
    for i, layer in seq.layers():            # `layer` is on the device during its turn
        st = seq.layer_stats(i)              # {group: GroupStats}
        ...replace linears inside `layer`...
        seq.advance(i)                       # optional: the loop advances if you do not
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from svdzoo.calibration.capture import (
    CallArgsOnDevice,
    call_layer,
    capture_layer_inputs,
    group_input_hooks,
    module_device,
)
from svdzoo.calibration.stats import CrossGramAccumulator
from svdzoo.calibration.store import (
    DEFAULT_BUDGET_BYTES,
    ActivationStore,
    MemoryBudget,
    as_budget,
    to_host,
)
from svdzoo.errors import SvdzooError
from svdzoo.models import adapter_for, eval_mode, resolve_device

log = logging.getLogger(__name__)


class SequentialError(SvdzooError, RuntimeError):
    """The sequential calibrator was driven out of order."""


class _Captured(Exception):  # noqa: N818 (control flow, not an error)
    """Raised by a capture hook to stop a layer's forward once its inputs are in hand."""


def _until(store: dict, want: tuple[str, ...], stop: bool):
    """A hook callback that records `store[group] = x`, then (if `stop`) ends the forward
    when every group in `want` has been recorded."""

    def put(group: str, x: torch.Tensor) -> None:
        store[group] = x
        if stop and all(g in store for g in want):
            raise _Captured

    return put


@dataclass(frozen=True)
class GroupStats:
    """Input statistics of one input group of the current layer (float64, on the device)."""

    H: torch.Tensor | None  # None when the calibrator does not track the original stream
    H_actual: torch.Tensor
    C: torch.Tensor | None
    count: int


class SequentialCalibrator:
    """Walks the decoder layers in order, giving original/actual input statistics per layer."""

    def __init__(
        self,
        model: nn.Module,
        windows: torch.Tensor,
        *,
        device: str | torch.device | None = None,
        batch_size: int = 8,
        memory_budget: int | MemoryBudget = DEFAULT_BUDGET_BYTES,
        offload_dir: str | os.PathLike[str] | None = None,
        progress: bool = True,
        accumulator: type[CrossGramAccumulator] = CrossGramAccumulator,
        original: bool = True,
    ):
        self.model = model
        self._accumulator = accumulator  # e.g. AdaSVD's stack-of-batch averaging
        self.original = original  # False: only the actual stream (see the module docstring)
        self.adapter = adapter_for(model)
        self.device = resolve_device(device)
        self.progress = progress
        self._budget = as_budget(memory_budget, offload_dir)
        self._closed = False
        self._mode = contextlib.ExitStack()  # eval mode until `close` gives the caller's back
        self._mode.enter_context(eval_mode(model))
        self._ref: nn.Module | None = None
        self._home: torch.device | None = None
        self._orig: ActivationStore | None = None
        self._actual: ActivationStore | None = None  # None: identical to the original stream
        self._orig_out: ActivationStore | None = None
        try:
            with torch.no_grad():
                inputs = capture_layer_inputs(
                    model, self.adapter, windows, batch_size, self._budget
                )
        except BaseException:
            self.close()
            raise
        self._inputs = inputs  # calls_for(i): layer i's call arguments, per batch
        self._orig = inputs.hidden
        self._next = 0

    @classmethod
    def from_manifest(
        cls, model: nn.Module, tokenizer: Any, manifest: Mapping[str, Any], **kwargs: Any
    ) -> SequentialCalibrator:
        """Replay the calibration windows of a cache (its corpus, nsamples, seqlen, seed).

        With the same model, `layer_stats(i)[g].H` then equals the cached Gram of layer `i`.
        A corpus whose text is not the cache's (an edited file, another Python's `pydoc`)
        would give other windows under the same name: refused by its fingerprint.
        """
        from svdzoo.calibration.cache import cached_windows

        windows = cached_windows(manifest, tokenizer)
        kwargs.setdefault("batch_size", manifest.get("batch_size", 8))
        return cls(model, windows, **kwargs)

    @property
    def num_layers(self) -> int:
        return len(self.adapter.layers(self.model))

    @property
    def streams_coincide(self) -> bool:
        """True while every layer so far produced exactly the original outputs."""
        return self._actual is None

    def layers(self) -> Iterator[tuple[int, nn.Module]]:
        """Yield `(index, layer)` in order; advances after each step unless the caller did."""
        layers = self.adapter.layers(self.model)
        try:
            for i in tqdm(
                range(self._next, len(layers)), desc="sequential", unit="layer",
                disable=not self.progress,
            ):  # fmt: skip
                self._begin(i)
                yield i, layers[i]
                if self._next == i:
                    self.advance(i)
        finally:
            self.close()

    def _check(self, i: int) -> None:
        if self._closed:  # its streams are freed: an IndexError or stale stores otherwise
            raise SequentialError("this SequentialCalibrator is closed; make a new one")
        if i != self._next:
            raise SequentialError(
                f"layer {i} requested, but the streams are at layer {self._next}: "
                "layers must be processed in order, each advanced once"
            )

    def _begin(self, i: int) -> None:
        """Snapshot the uncompressed layer and put both copies on the device."""
        self._check(i)
        if self._home is not None:
            return
        layer = self.adapter.layers(self.model)[i]
        self._home = module_device(layer)
        if self.original:
            self._ref = copy.deepcopy(layer).to(self.device)
        layer.to(self.device)

    def layer_stats(self, i: int, groups: tuple[str, ...] | None = None) -> dict[str, GroupStats]:
        """`{group: GroupStats}` for layer `i` (all groups unless `groups` names some)."""
        self._begin(i)
        layer = self.adapter.layers(self.model)[i].to(self.device)
        want = tuple(self.adapter.groups) if groups is None else tuple(groups)
        unknown = [g for g in want if g not in self.adapter.groups]
        if unknown:
            raise SequentialError(
                f"unknown groups {unknown}; this family has {list(self.adapter.groups)}"
            )
        if not self.original:
            return self._actual_stats(layer, i, want)
        assert self._ref is not None
        accs: dict[str, CrossGramAccumulator] = {}
        x_ref: dict[str, torch.Tensor] = {}
        x_cur: dict[str, torch.Tensor] = {}
        fill_out = self._orig_out is None
        out = ActivationStore(self._budget) if fill_out else None
        to_dev = CallArgsOnDevice(self.device)
        # Once every wanted group input is captured the rest of the layer is not needed:
        # the hook stops the forward there (about half the work of a pass, on average),
        # except on the original stream when its full output must be kept.
        with (
            torch.no_grad(),
            group_input_hooks(self._ref, self.adapter, _until(x_ref, want, not fill_out), want),
            group_input_hooks(layer, self.adapter, _until(x_cur, want, True), want),
        ):
            for b, call in enumerate(self._inputs.calls_for(i)):
                x_ref.clear()
                x_cur.clear()
                call = to_dev(call)
                h = self._orig[b].to(self.device)
                with contextlib.suppress(_Captured):
                    y = call_layer(self._ref, h, call)
                    if out is not None:
                        out.append(y)
                h_act = h if self._actual is None else self._actual[b].to(self.device)
                with contextlib.suppress(_Captured):
                    call_layer(layer, h_act, call)
                for g in want:
                    if g not in accs:
                        accs[g] = self._accumulator(x_ref[g].shape[-1], x_ref[g].device)
                    accs[g].add(x_ref[g], x_cur[g])
        if out is not None:
            self._orig_out = out
        return {g: GroupStats(a.H, a.H_actual, a.C, a.count) for g, a in accs.items()}

    def _actual_stats(self, layer: nn.Module, i: int, want: tuple[str, ...]):
        """`layer_stats` without the original stream: `H'` only."""
        accs: dict[str, CrossGramAccumulator] = {}
        x_cur: dict[str, torch.Tensor] = {}
        to_dev = CallArgsOnDevice(self.device)
        with (
            torch.no_grad(),
            group_input_hooks(layer, self.adapter, _until(x_cur, want, True), want),
        ):
            for b, call in enumerate(self._inputs.calls_for(i)):
                x_cur.clear()
                with contextlib.suppress(_Captured):
                    call_layer(layer, self._orig[b].to(self.device), to_dev(call))
                for g in want:
                    if g not in accs:
                        n = x_cur[g].shape[-1]
                        accs[g] = self._accumulator(n, x_cur[g].device, original=False)
                    accs[g].add(None, x_cur[g])
        return {g: GroupStats(None, a.H_actual, None, a.count) for g, a in accs.items()}

    def advance(self, i: int) -> None:
        """Run layer `i` as it is now on the actual stream, the original copy on the original one."""
        self._begin(i)
        layer = self.adapter.layers(self.model)[i].to(self.device)
        to_dev = CallArgsOnDevice(self.device)
        if not self.original:  # one stream: it is the actual one
            with torch.no_grad():
                stream = ActivationStore(self._budget)
                for b, call in enumerate(self._inputs.calls_for(i)):
                    y = call_layer(layer, self._orig[b].to(self.device), to_dev(call))
                    stream.append(to_host(y))
            self._orig.close()
            self._orig = stream
            self._finish(i, layer)
            return
        assert self._ref is not None
        with torch.no_grad():
            if self._orig_out is None:
                self._orig_out = ActivationStore(self._budget)
                for b, call in enumerate(self._inputs.calls_for(i)):
                    h = self._orig[b].to(self.device)
                    self._orig_out.append(call_layer(self._ref, h, to_dev(call)))
            actual = ActivationStore(self._budget)
            same = True
            for b, call in enumerate(self._inputs.calls_for(i)):
                src = self._orig if self._actual is None else self._actual
                y = to_host(call_layer(layer, src[b].to(self.device), to_dev(call)))
                same = same and torch.equal(y, self._orig_out[b])
                actual.append(y)
        if same:
            actual.close()
            actual = None
        elif self._actual is None:
            log.info("layer %d changed its outputs: the compressed stream now differs", i)
        self._orig.close()
        if self._actual is not None:
            self._actual.close()
        self._orig, self._actual, self._orig_out = self._orig_out, actual, None
        self._finish(i, layer)

    def _finish(self, i: int, layer: nn.Module) -> None:
        layer.to(self._home)
        self._ref = None
        self._home = None
        self._next = i + 1

    def divergence(self) -> float | None:
        """`||actual - original|| / ||original||` of the hidden states now entering layer
        `next`; None when the original stream is not tracked."""
        if not self.original:
            return None
        if self._actual is None:
            return 0.0
        num = den = 0.0
        for b in range(len(self._inputs)):
            o = self._orig[b].to(torch.float64)
            num += float((self._actual[b].to(torch.float64) - o).square().sum())
            den += float(o.square().sum())
        return (num / max(den, 1e-300)) ** 0.5

    def close(self) -> None:
        """Free the streams and their offload files. The model gets back the mode it came in,
        and a layer left mid-turn (the caller stopped or failed) goes back where it was."""
        if self._home is not None:
            self.adapter.layers(self.model)[self._next].to(self._home)
            self._ref = None
            self._home = None
        for s in (self._orig, self._actual, self._orig_out):
            if s is not None:
                s.close()
        self._actual = self._orig_out = None
        self._budget.cleanup()
        self._mode.close()
        self._closed = True
