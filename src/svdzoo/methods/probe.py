"""Measure a trial allocation end to end: compress, run calibration windows, restore.

Searching allocators (ResSVD's choice of how many last layers to compress) need the
error a whole allocation causes, not a per-matrix proxy. `OutputErrorProbe` compresses
the model in place at the given ranks with the method's own factoriser, compares the
final hidden state (the decoder's output, after its final norm, before the LM head) with
the original model's on a few calibration windows, and puts the original linears back.

Options: `search_nsamples` (4): calibration windows per probe, the first of the Gram
cache's set; `calibration_corpus`: as for the sequential pass.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

from svdzoo.errors import ConfigError
from svdzoo.lazy import nn, torch
from svdzoo.models import replace_module
from svdzoo.param_counts import worth_factoring

log = logging.getLogger(__name__)

SEARCH_NSAMPLES = 4


def decoder_of(model: nn.Module) -> nn.Module:
    """The base model whose output is the final hidden state (no LM head)."""
    get = getattr(model, "get_decoder", None)
    decoder = get() if callable(get) else None
    if not isinstance(decoder, nn.Module):
        raise ConfigError(f"{type(model).__name__} exposes no decoder (get_decoder) to probe")
    return decoder


class OutputErrorProbe:
    """`probe(ranks)`: relative squared error `||Y' - Y||^2 / ||Y||^2` of the final hidden
    state over the probe windows, with the model compressed at `ranks`."""

    def __init__(
        self,
        model: nn.Module,
        windows: torch.Tensor,
        modules: Mapping[str, nn.Linear],
        factorise_at: Callable[[str, int], Any],
        build: Callable[[nn.Linear, Any], nn.Module],
        *,
        batch_size: int = 4,
        keep_bytes: int = 0,
    ) -> None:
        self.model = model
        self.windows = windows
        self.modules = dict(modules)
        self.factorise_at = factorise_at
        self.build = build
        self.batch_size = batch_size
        self._reference: list[torch.Tensor] | None = None
        # the built modules of the lowest-error trial so far, on the CPU, up to `keep_bytes`:
        # a search's choice is usually one of its trials, whose factorisations are then
        # not redone (`kept`)
        self.keep_bytes = keep_bytes
        self._best = math.inf
        self._kept: dict[tuple[str, int], nn.Module] = {}

    def kept(self, name: str, rank: int) -> nn.Module | None:
        """The module the best trial built for `name` at `rank` (None if none was kept);
        the same factoriser at the same rank on the same weights and statistics, so the
        same module the final pass would build."""
        return self._kept.get((name, int(rank)))

    def _keep(self, error: float, trial: dict[tuple[str, int], nn.Module]) -> None:
        if not error < self._best:  # NaN never replaces a kept trial
            return
        self._best = error
        self._kept = {}
        size = sum(p.numel() * p.element_size() for mod in trial.values() for p in mod.parameters())
        if size <= self.keep_bytes:
            self._kept = {key: mod.to("cpu") for key, mod in trial.items()}

    def _outputs(self) -> list[torch.Tensor]:
        decoder = decoder_of(self.model)
        device = next(self.model.parameters()).device
        out = []
        with torch.no_grad():
            for start in range(0, self.windows.shape[0], self.batch_size):
                ids = self.windows[start : start + self.batch_size].to(device)
                hidden = decoder(input_ids=ids, use_cache=False).last_hidden_state
                out.append(hidden.detach().to(torch.float64).cpu())
        return out

    def reference(self) -> list[torch.Tensor]:
        if self._reference is None:
            self._reference = self._outputs()
        return self._reference

    def __call__(self, ranks: Mapping[str, int]) -> float:
        reference = self.reference()
        swapped: dict[str, nn.Linear] = {}
        built: dict[tuple[str, int], nn.Module] = {}
        try:
            for name, lin in self.modules.items():
                k = int(ranks[name])
                m, n = lin.out_features, lin.in_features
                if k >= min(m, n) or not worth_factoring(m, n, k):
                    continue
                new = self.build(lin, self.factorise_at(name, k))
                replace_module(self.model, name, new)
                swapped[name] = lin
                built[(name, k)] = new
            trial = self._outputs()
        finally:
            for name, lin in swapped.items():
                replace_module(self.model, name, lin)
        num = sum(float((y - r).square().sum()) for y, r in zip(trial, reference, strict=True))
        den = sum(float(r.square().sum()) for r in reference)
        error = num / den if den > 0 else float("inf")
        self._keep(error, built)
        return error


def probe_windows(manifest: Mapping[str, Any], tokenizer: Any, opts: Mapping[str, Any]):
    """The first `search_nsamples` windows of the Gram cache's calibration set."""
    from svdzoo.methods.sequential import int_option, replay_windows

    want = int_option(opts, "search_nsamples", SEARCH_NSAMPLES, minimum=1)
    nsamples = int(manifest.get("nsamples") or 0)
    return replay_windows(
        manifest, tokenizer, {**opts, "seq_nsamples": min(want, nsamples) if nsamples else want}
    )
