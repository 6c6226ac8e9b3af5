"""Gram calibration: `H`, `mean |x|` per input group and the input/output cosine per layer.

Streams layer by layer (see `capture`): memory on the device is one decoder layer plus one
batch of activations plus that layer's float64 Grams; host memory is the model, the
activation store (bounded by its budget, the rest offloaded to disk) and, for the
in-memory API, the finished statistics. `calibrate_to_dir` writes each layer's tensors to
the cache file as soon as the layer is done, so host memory does not hold them all.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from svdzoo.calibration.cache import CacheDirWriter, model_manifest
from svdzoo.calibration.capture import (
    CallArgsOnDevice,
    call_layer,
    capture_layer_inputs,
    group_input_hooks,
    on_device,
)
from svdzoo.calibration.stats import (
    CalibrationStats,
    CosineAccumulator,
    GramCollector,
    absmean_name,
    cosine_name,
    count_key,
    gram_name,
    gram_sums,
)
from svdzoo.calibration.store import (
    DEFAULT_BUDGET_BYTES,
    ActivationStore,
    MemoryBudget,
    as_budget,
    to_host_pageable,
)
from svdzoo.errors import ModelError
from svdzoo.linalg import all_finite
from svdzoo.models import adapter_for, eval_mode, resolve_device

log = logging.getLogger(__name__)

Sink = Callable[[str, torch.Tensor], None]
LayerCallback = Callable[[int, float], None]


def stream_gram_stats(
    model: nn.Module,
    windows: torch.Tensor,
    sink: Sink,
    *,
    device: str | torch.device | None = None,
    batch_size: int = 8,
    memory_budget: int | MemoryBudget = DEFAULT_BUDGET_BYTES,
    offload_dir: str | os.PathLike[str] | None = None,
    layer_callback: LayerCallback | None = None,
    progress: bool = True,
) -> dict[str, int]:
    """Compute every layer's statistics and hand each tensor to `sink(name, tensor)`.

    Returns the token count per `layers.{i}.{group}`. `layer_callback(i, seconds)` runs
    after each layer (the benchmark uses it for per-layer time and memory).
    """
    adapter = adapter_for(model)
    device = resolve_device(device)
    budget = as_budget(memory_budget, offload_dir)
    counts: dict[str, int] = {}
    stores: list[ActivationStore] = []  # closed on failure too: a caller's budget is whole
    with eval_mode(model):
        try:
            inputs = capture_layer_inputs(model, adapter, windows, batch_size, budget)
            hidden = inputs.hidden
            stores.append(hidden)
            layers = adapter.layers(model)
            for i, layer in enumerate(
                tqdm(layers, desc="calibrate", unit="layer", disable=not progress)
            ):
                t0 = time.perf_counter()
                with on_device(layer, device), torch.no_grad():
                    accs = GramCollector()
                    cos = CosineAccumulator()
                    out = ActivationStore(budget)
                    stores.append(out)
                    to_dev = CallArgsOnDevice(device)
                    with group_input_hooks(layer, adapter, accs):
                        for b, call in enumerate(inputs.calls_for(i)):
                            h = hidden[b].to(device)
                            y = call_layer(layer, h, to_dev(call))
                            cos.add(h, y)
                            out.append(y)
                    hidden.close()
                    hidden = out
                    for group in adapter.groups:
                        acc = accs[group].finish()
                        if not all_finite(acc.H):
                            raise ModelError(
                                f"layer {i} ({group} inputs): the calibration statistics are not "
                                "finite, so the model's activations overflow there (a float16 or "
                                "bfloat16 model: calibrate with --dtype float32); nothing was cached"
                            )
                        sink(gram_name(i, group), to_host_pageable(acc.H))
                        sink(absmean_name(i, group), to_host_pageable(acc.absmean()))
                        counts[count_key(i, group)] = acc.count
                    # an overflowing output: of the last layer, no later Gram would show it
                    if not math.isfinite(cos.mean()):
                        raise ModelError(
                            f"layer {i}: its output hidden states are not finite (input/output "
                            "cosine NaN), so the model's activations overflow there (a float16 "
                            "model: calibrate with --dtype float32); nothing was cached"
                        )
                    sink(cosine_name(i), torch.tensor(cos.mean(), dtype=torch.float64))
                    del accs
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                dt = time.perf_counter() - t0
                log.debug("layer %d: %.2fs, cosine %.4f", i, dt, cos.mean())
                if layer_callback is not None:
                    layer_callback(i, dt)
            hidden.close()
            if budget.offloaded_bytes:
                log.info(
                    "activation store: peak %.1f MiB in memory, %.1f MiB offloaded in total",
                    budget.peak / 2**20,
                    budget.offloaded_bytes / 2**20,
                )
        finally:
            for store in stores:
                store.close()
            budget.cleanup()
    return counts


def gram_manifest(
    model: nn.Module,
    *,
    corpus: Any,
    nsamples: int,
    seqlen: int,
    seed: int,
    model_id: str | None,
    tokenizer_fingerprint: str | None = None,
) -> dict[str, Any]:
    """Everything that identifies a Gram cache (tensor names and hash are added on write).

    Not the batch size, device or memory budget: they change how the statistics are
    computed, never their bytes (`GramAccumulator` sums fixed token chunks in order).
    `gram_sums` records how the products were summed (`stats.gram_sums`; the activations
    take the model's dtype)."""
    return model_manifest(
        "gram", model, corpus=corpus, nsamples=nsamples, seqlen=seqlen, seed=seed,
        model_id=model_id, tokenizer_fingerprint=tokenizer_fingerprint,
        groups={g: list(m) for g, m in adapter_for(model).groups.items()},
        gram_sums=gram_sums(next(model.parameters()).dtype),
    )  # fmt: skip


def calibrate(
    model: nn.Module,
    tokenizer: Any,
    *,
    corpus: Any,
    nsamples: int,
    seqlen: int,
    seed: int,
    device: str | torch.device | None = None,
    batch_size: int = 8,
    memory_budget: int | MemoryBudget = DEFAULT_BUDGET_BYTES,
    offload_dir: str | os.PathLike[str] | None = None,
    model_id: str | None = None,
    progress: bool = True,
) -> CalibrationStats:
    """Gram statistics of `model` on `nsamples` windows of `corpus`, held in memory."""
    from svdzoo.data import calibration_windows, tokenizer_fingerprint

    manifest = gram_manifest(
        model, corpus=corpus, nsamples=nsamples, seqlen=seqlen, seed=seed,
        tokenizer_fingerprint=tokenizer_fingerprint(tokenizer),
        model_id=model_id,
    )  # fmt: skip
    windows = calibration_windows(
        tokenizer, corpus, nsamples, seqlen, seed, prefix=manifest["window_prefix"]
    )
    tensors: dict[str, torch.Tensor] = {}
    counts = stream_gram_stats(
        model, windows, tensors.__setitem__, device=device, batch_size=batch_size,
        memory_budget=memory_budget, offload_dir=offload_dir, progress=progress,
    )  # fmt: skip
    manifest.update(counts=counts, tokens=windows.numel(), tensors=list(tensors))
    return CalibrationStats(manifest, tensors.__getitem__)


def calibrate_to_dir(
    model: nn.Module,
    tokenizer: Any,
    out: str | os.PathLike[str],
    *,
    corpus: Any,
    nsamples: int,
    seqlen: int,
    seed: int,
    device: str | torch.device | None = None,
    batch_size: int = 8,
    memory_budget: int | MemoryBudget = DEFAULT_BUDGET_BYTES,
    offload_dir: str | os.PathLike[str] | None = None,
    model_id: str | None = None,
    layer_callback: LayerCallback | None = None,
    progress: bool = True,
    force: bool = False,
) -> dict[str, Any]:
    """Like `calibrate`, but streams each layer's tensors into the cache at `out`.

    An existing `out` is replaced only if it is a Gram cache (or `force`)."""
    from svdzoo.data import calibration_windows, tokenizer_fingerprint

    manifest = gram_manifest(
        model, corpus=corpus, nsamples=nsamples, seqlen=seqlen, seed=seed,
        tokenizer_fingerprint=tokenizer_fingerprint(tokenizer),
        model_id=model_id,
    )  # fmt: skip
    windows = calibration_windows(
        tokenizer, corpus, nsamples, seqlen, seed, prefix=manifest["window_prefix"]
    )
    with CacheDirWriter(Path(out), manifest, force=force) as w:
        counts = stream_gram_stats(
            model, windows, w.add, device=device, batch_size=batch_size,
            memory_budget=memory_budget, offload_dir=offload_dir,
            layer_callback=layer_callback, progress=progress,
        )  # fmt: skip
        w.manifest.update(counts=counts, tokens=windows.numel())
    return w.manifest
