"""Parameter counts, weight bytes, peak memory and throughput of a (compressed) model.

Peak memory, and why it differs by device:
- CUDA: `torch.cuda.max_memory_allocated` over the measurement, after resetting the peak
  counter; the model lives on the device, so this is weights + activations + KV cache.
- CPU: torch has no allocator statistics and `ru_maxrss` cannot be reset, so a thread
  samples the process RSS (psutil) every few milliseconds during the runs; reported
  value = weight bytes + (peak RSS - RSS before the runs). It is approximate: the
  allocator keeps freed memory, so earlier work in the same process can hide growth.
  The field `peak_memory_method` says which one was used.

Throughput is greedy decoding with the KV cache and no sampling: prefill = one forward
over `batch x prompt_len` random tokens (seeded), logits of the last position only, as
`generate` computes them; decode = `gen_len` single-token steps
feeding back the argmax. Each is timed `repeats` times after `warmup` untimed runs, and
the median is reported.
"""

from __future__ import annotations

import inspect
import logging
import statistics
import threading
import time
from collections.abc import Sequence

import torch
from torch import nn

from svdzoo.errors import SvdzooError
from svdzoo.models import eval_mode, text_config

log = logging.getLogger(__name__)


class EfficiencyError(SvdzooError, ValueError):
    pass


def _unique_params(module: nn.Module) -> list[nn.Parameter]:
    return list(module.parameters())  # parameters() already skips tied duplicates


def count_target_params(model: nn.Module) -> int:
    """Parameters now sitting where the family's target linears were (dense or low-rank).

    Compressed models replace target `nn.Linear`s with other modules, so look them up by
    path rather than with `iter_targets` (which insists on `nn.Linear`)."""
    from svdzoo.models import adapter_for

    adapter = adapter_for(model)
    seen: set[int] = set()
    total = 0
    for layer in adapter.layers(model):
        for target in adapter.targets:
            for p in layer.get_submodule(target).parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    total += p.numel()
    return total


def weight_bytes(model: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in _unique_params(model))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _last_logits_only(model: nn.Module) -> dict:
    """The prefill's keyword for logits of the last position only, as `generate` asks for
    them (`logits_to_keep=1`): the LM head over every prompt position is work and memory
    (16 x 128 x 49,152 float32 logits are 384 MiB) that no decoder spends, and the head is
    never compressed, so it would shrink every model's measured gain."""
    params = inspect.signature(model.forward).parameters
    return {"logits_to_keep": 1} if "logits_to_keep" in params else {}


def _cache_name(model: nn.Module) -> str:
    """The key-value cache's name in the forward's arguments and outputs: transformers 5
    renamed `past_key_values` to `cache` (the old name warns, and goes in 5.40)."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


@torch.no_grad()
def _prefill_and_decode(model: nn.Module, ids: torch.Tensor, gen_len: int) -> tuple[float, float]:
    """Seconds for one prefill and for `gen_len` greedy cached decode steps."""
    device = ids.device
    name = _cache_name(model)  # outside the timed steps
    last = _last_logits_only(model)
    _sync(device)
    t0 = time.perf_counter()
    out = model(input_ids=ids, use_cache=True, **last)
    _sync(device)
    t1 = time.perf_counter()
    nxt = out.logits[:, -1].argmax(-1, keepdim=True)
    for _ in range(gen_len):
        out = model(input_ids=nxt, use_cache=True, **{name: out[name]})
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
    _sync(device)
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1


class _RssSampler:
    """Peak RSS of this process while the block runs, sampled by a daemon thread."""

    def __init__(self, interval_s: float = 0.002) -> None:
        import psutil

        self._proc = psutil.Process()
        self._interval = interval_s
        self._stop = threading.Event()
        self.start_rss = self.peak_rss = self._proc.memory_info().rss

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_rss = max(self.peak_rss, self._proc.memory_info().rss)
            self._stop.wait(self._interval)

    def __enter__(self) -> _RssSampler:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_rss = max(self.peak_rss, self._proc.memory_info().rss)


def _model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def manifest_summary(manifest: dict | None) -> dict | None:
    """What the report reads from a compressed model's manifest (achieved ratios, time, the
    per-matrix allocation), kept in efficiency.json: with `keep_compressed: false` the
    model directory, manifest included, is deleted as soon as it is evaluated."""
    if not manifest:
        return None
    keys = (
        "method",
        "ratio",
        "achieved_ratio",
        "model_params_dense",
        "model_params_compressed",
        "compression_time_s",
    )
    out: dict = {k: manifest.get(k) for k in keys}
    # shape and rank too: the report tells rounding from allocation by them (a uniform
    # method's heatmap of rounding noise came back once its model was deleted)
    fields = ("layer", "type", "ratio", "dense", "m", "n", "rank", "kept_columns")
    out["modules"] = {
        name: {k: mod.get(k) for k in fields}
        for name, mod in (manifest.get("modules") or {}).items()
    }
    return out


def check_settings(
    batch_sizes: Sequence[int], prompt_len: int, gen_len: int, repeats: int, warmup: int = 1
) -> None:
    """The model-independent checks of `measure_efficiency`, for callers that check first."""
    if not batch_sizes or any(int(b) < 1 for b in batch_sizes):
        raise EfficiencyError(f"batch sizes must be positive integers, got {list(batch_sizes)}")
    if prompt_len < 1 or gen_len < 0 or repeats < 1 or warmup < 0:
        raise EfficiencyError("need prompt_len >= 1, gen_len >= 0, repeats >= 1, warmup >= 0")


def measure_efficiency(
    model: nn.Module,
    *,
    batch_sizes: Sequence[int] = (1, 4, 16),
    prompt_len: int = 128,
    gen_len: int = 32,
    device: str | torch.device | None = None,
    warmup: int = 1,
    repeats: int = 3,
    manifest: dict | None = None,
    seed: int = 0,
) -> dict:
    """Measure `model`; returns the body of efficiency.json (minus model/method/ratio).

    Keys: params_total, params_targets, weight_bytes, peak_memory_bytes,
    peak_memory_method, throughput [{batch_size, prefill_tokens_per_s,
    decode_tokens_per_s, prefill_s, decode_s}], compression_time_s (from `manifest`,
    else None), device, dtype, prompt_len, gen_len, repeats.
    """
    check_settings(batch_sizes, prompt_len, gen_len, repeats, warmup)
    config = text_config(model)  # a multimodal wrapper keeps these in its text config
    max_pos = getattr(config, "max_position_embeddings", None)
    if max_pos is not None and prompt_len + gen_len > max_pos:
        raise EfficiencyError(
            f"prompt_len + gen_len = {prompt_len + gen_len} exceeds the model's "
            f"max_position_embeddings {max_pos}"
        )
    vocab = getattr(config, "vocab_size", None)
    if not vocab:
        raise EfficiencyError("model has no config.vocab_size to draw prompt tokens from")
    if device is not None:
        model.to(device)
    dev = _model_device(model)
    with eval_mode(model):
        params_total = sum(p.numel() for p in _unique_params(model))
        params_targets = count_target_params(model)
        wbytes = weight_bytes(model)
        gen = torch.Generator().manual_seed(seed)

        rows = []
        if dev.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(dev)
        sampler = _RssSampler() if dev.type != "cuda" else None
        try:
            if sampler is not None:
                sampler.__enter__()
            for bs in batch_sizes:
                ids = torch.randint(0, vocab, (int(bs), prompt_len), generator=gen).to(dev)
                for _ in range(warmup):
                    _prefill_and_decode(model, ids, gen_len)
                timings = [_prefill_and_decode(model, ids, gen_len) for _ in range(repeats)]
                prefill_s = statistics.median(t[0] for t in timings)
                decode_s = statistics.median(t[1] for t in timings)
                row = {
                    "batch_size": int(bs),
                    "prefill_s": prefill_s,
                    "decode_s": decode_s,
                    "prefill_tokens_per_s": int(bs) * prompt_len / prefill_s,
                    "decode_tokens_per_s": (int(bs) * gen_len / decode_s) if gen_len else None,
                }
                rows.append(row)
                log.info(
                    "batch %d: prefill %.0f tok/s, decode %s tok/s",
                    bs,
                    row["prefill_tokens_per_s"],
                    f"{row['decode_tokens_per_s']:.0f}" if gen_len else "-",
                )
        finally:
            if sampler is not None:
                sampler.__exit__(None, None, None)
    if dev.type == "cuda":
        peak = int(torch.cuda.max_memory_allocated(dev))
        method = "cuda_max_memory_allocated"
    else:
        assert sampler is not None
        peak = wbytes + max(0, sampler.peak_rss - sampler.start_rss)
        method = "cpu_weight_bytes_plus_rss_delta"
    comp_time = (manifest or {}).get("compression_time_s")
    dtype = next((p.dtype for p in model.parameters()), None)
    return {
        "params_total": params_total,
        "params_targets": params_targets,
        "weight_bytes": wbytes,
        "peak_memory_bytes": peak,
        "peak_memory_method": method,
        "throughput": rows,
        "compression_time_s": float(comp_time) if comp_time is not None else None,
        "device": str(dev),
        "dtype": str(dtype).replace("torch.", "") if dtype is not None else None,
        "prompt_len": prompt_len,
        "gen_len": gen_len,
        "warmup": warmup,
        "repeats": repeats,
        "torch_threads": torch.get_num_threads(),
        # the prefill's logits: `last` (as `generate`) or `all` (a model without the option)
        "prefill_logits": "last" if _last_logits_only(model) else "all",
        "manifest": manifest_summary(manifest),
    }
