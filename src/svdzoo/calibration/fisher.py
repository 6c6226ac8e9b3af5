"""FWSVD's Fisher statistics: squared gradients of the LM loss w.r.t. each target weight.

For each calibration batch the loss (mean next-token cross-entropy over the batch) is
back-propagated and, for every target linear `W` (m x n), the squared gradient is reduced
two ways and summed over batches:

- row importance `I_i = sum_b sum_j (dL_b/dW_ij)^2` (m,): the FWSVD paper's reading;
- column importance `J_j = sum_b sum_i (dL_b/dW_ij)^2` (n,): the per-input-column variant
  used by the ASVD repository's FWSVD baseline.

With the default `batch_size=1` each batch is one sample, i.e. the empirical Fisher over
samples that the paper defines. Unlike the Gram statistics this needs a backward pass
through the whole model, so the whole model sits on the device (as in the FWSVD and ASVD
code): fine for the reference models; LLaMA-7B needs a GPU that holds the model in its
dtype plus activations for one sample (about 40 GB at fp32/2048 tokens, less in bf16).
Gradients are reduced and freed as soon as each one is accumulated (post-accumulate-grad
hooks), and only target weights require grad, so no full gradient set is ever held.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from svdzoo.calibration.cache import model_manifest, save_stats
from svdzoo.calibration.capture import module_device
from svdzoo.errors import ModelError
from svdzoo.io import check_output
from svdzoo.models import adapter_for, eval_mode, resolve_device

log = logging.getLogger(__name__)


def fisher_information(
    model: nn.Module,
    windows: torch.Tensor,
    *,
    device: str | torch.device | None = None,
    batch_size: int = 1,
    progress: bool = True,
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """`{full_target_name: (row (m,), col (n,))}` float64 squared-gradient sums."""
    if windows.ndim != 2 or windows.shape[0] < 1 or windows.shape[1] < 2:
        raise ModelError(f"Fisher needs (nsamples, seqlen>=2) windows, got {tuple(windows.shape)}")
    if batch_size < 1:
        raise ModelError(f"batch size must be positive, got {batch_size}")
    adapter = adapter_for(model)
    device = resolve_device(device)
    home = module_device(model)
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    # gradients the caller left would be summed into the first batch's and squared with
    # it: set aside for the passes (not moved to the device) and given back afterwards
    grads = {name: p.grad for name, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = None
    acc: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    handles = []
    model.to(device)
    with eval_mode(model):  # no dropout: deterministic gradients
        try:
            for p in model.parameters():
                p.requires_grad_(False)
            for full, _i, _t, lin in adapter.iter_targets(model):
                w = lin.weight
                m, n = w.shape
                acc[full] = (
                    torch.zeros(m, dtype=torch.float64, device=device),
                    torch.zeros(n, dtype=torch.float64, device=device),
                )
                w.requires_grad_(True)

                def hook(p: torch.Tensor, full: str = full) -> None:
                    g2 = p.grad.detach().to(torch.float64).square()
                    acc[full][0].add_(g2.sum(1))
                    acc[full][1].add_(g2.sum(0))
                    p.grad = None  # free it now: memory stays one gradient at a time

                handles.append(w.register_post_accumulate_grad_hook(hook))
            starts = range(0, windows.shape[0], batch_size)
            for s in tqdm(starts, desc="fisher", unit="batch", disable=not progress):
                ids = windows[s : s + batch_size].to(device)
                loss = model(input_ids=ids, labels=ids, use_cache=False).loss
                loss.backward()
        finally:
            for h in handles:
                h.remove()
            for name, p in model.named_parameters():
                p.requires_grad_(flags[name])
                p.grad = None
            model.to(home)
            for name, p in model.named_parameters():
                p.grad = grads[name]
    return {k: (r.cpu(), c.cpu()) for k, (r, c) in acc.items()}


def fisher_manifest(
    model: nn.Module, *, corpus: Any, nsamples: int, seqlen: int, seed: int,
    model_id: str | None, batch_size: int, tokenizer_fingerprint: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    return model_manifest(
        "fisher", model, corpus=corpus, nsamples=nsamples, seqlen=seqlen, seed=seed,
        model_id=model_id, batch_size=batch_size, tokenizer_fingerprint=tokenizer_fingerprint,
        targets=[full for full, *_ in adapter_for(model).iter_targets(model)],
        batches=-(-nsamples // batch_size),
        reduction="row = sum_batches sum_j (dL/dW_ij)^2; col = sum_batches sum_i (dL/dW_ij)^2",
    )  # fmt: skip


def calibrate_fisher(
    model: nn.Module,
    tokenizer: Any,
    *,
    corpus: Any,
    nsamples: int,
    seqlen: int,
    seed: int,
    device: str | torch.device | None = None,
    batch_size: int = 1,
    model_id: str | None = None,
    progress: bool = True,
):
    """Fisher statistics of `model` on `nsamples` windows of `corpus`, held in memory."""
    from svdzoo.calibration.stats import FisherStats
    from svdzoo.data import calibration_windows, tokenizer_fingerprint

    manifest = fisher_manifest(
        model, corpus=corpus, nsamples=nsamples, seqlen=seqlen, seed=seed,
        tokenizer_fingerprint=tokenizer_fingerprint(tokenizer),
        model_id=model_id, batch_size=batch_size,
    )  # fmt: skip
    windows = calibration_windows(
        tokenizer, corpus, nsamples, seqlen, seed, prefix=manifest["window_prefix"]
    )
    info = fisher_information(
        model, windows, device=device, batch_size=batch_size, progress=progress
    )
    tensors = {}
    for full, (row, col) in info.items():
        tensors[f"{full}.row"] = row
        tensors[f"{full}.col"] = col
    manifest.update(tokens=windows.numel(), tensors=list(tensors))  # as the Gram's
    return FisherStats(manifest, tensors.__getitem__)


def fisher_to_dir(
    model: nn.Module,
    tokenizer: Any,
    out: str | os.PathLike[str],
    *,
    force: bool = False,
    **kwargs: Any,
) -> dict[str, Any]:
    """`calibrate_fisher` written to a cache directory; returns its manifest.

    `out` is checked first: an existing `out` that is not a Fisher cache is refused before
    the backward passes (unless `force`)."""
    check_output(out, "fisher", force=force)
    return save_stats(calibrate_fisher(model, tokenizer, **kwargs), out, force=force)
