"""Sequential (error-compensating) compression: layer by layer, on compressed-model inputs.

`compress()` calls `run_sequential` for methods with `sequential=True` (AdaSVD's adaComp,
ResSVD's residual stage). The calibration windows recorded in the Gram manifest are
replayed through a `SequentialCalibrator`; for each decoder layer, input group by input
group in forward order (attn_in, attn_out, mlp_in, mlp_out), it gives

- `H  = X X^T`   inputs of the original model,
- `H' = X' X'^T` inputs the linear actually sees, with every earlier layer and every
  earlier group of this layer already compressed,
- `C  = X X'^T`  the cross-Gram,

and the method's factoriser fits the group's linears to the original outputs `W X` from
`X'`. Fresh statistics per group (option `seq_granularity="group"`, the default) let
`o_proj` compensate for the compressed `q/k/v` of its own layer; `"layer"` takes one set
of statistics per layer (cheaper: one pass instead of four).

`ctx.H` is replaced by the calibrator's `H`, so `H`, `H'` and `C` come from the same
tokens (the cached `H` is used only for rank allocation). A factoriser that reads only `H'`
from the pass says so (`sequential_stats = ("H_actual",)`, AdaSVD's adaComp): the pass then
runs the compressed stream alone (about half the forward work, a third of the Gram
products), `ctx.H` stays the cached Gram and the manifest records no divergence.

Options (in `compress(..., options=...)` / `--option KEY=VALUE`):

- `seq_nsamples`: replay only the first N calibration windows (default: all recorded in
  the Gram manifest). Fewer samples make the pass cheaper; `H'` and `C` then rest on
  fewer tokens than the allocation statistics.
- `seq_batch_size` (8): windows per forward call.
- `mini_bsz` (0 = off): AdaSVD's stack-of-batch. The windows are shuffled (seed of the
  calibration set) and every group of `mini_bsz` consecutive windows is averaged into one
  before the Gram products (`X_stack = mean_j X_j`, same grouping for `X` and `X'`); a
  remainder that does not fill a group is dropped. The paper uses it to hold `X` in GPU
  memory; here the Grams are `n x n` anyway, so it only changes the statistic.
- `calibration_corpus`: path of the calibration corpus when the manifest names a local
  file (the manifest keeps only its name); checked against the recorded fingerprint.
- Any field of the method's factoriser (e.g. `tau`, `start`, `k1_fraction`) overrides it.
"""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import Callable, Mapping
from typing import Any

from svdzoo.errors import ConfigError
from svdzoo.lazy import nn, torch
from svdzoo.methods.base import Method, configured, factorise
from svdzoo.param_counts import worth_factoring

log = logging.getLogger(__name__)

GRANULARITIES = ("group", "layer")
ALL_STATS = ("H", "H_actual", "C")  # what the pass gives a factoriser that does not say


def int_option(opts: Mapping[str, Any], key: str, default: int, minimum: int) -> int:
    """Option `key` as a whole number `>= minimum` (`default` when absent or None).

    Refused with a ConfigError, before the replay: `int()` used to truncate `2.5` to 2 and
    read `true` as 1, and `value or default` turned an explicit 0 into the default."""
    value = opts.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        number = None
    elif isinstance(value, str):  # ASCII digits: `isdigit` passed "+-3" and "²" to `int()`
        number = int(value) if re.fullmatch(r"[+-]?[0-9]+", value.strip()) else None
    else:
        number = int(value) if float(value).is_integer() else None
    if number is None or number < minimum:
        raise ConfigError(f"{key} must be an integer >= {minimum}, got {value!r}")
    return number


def replay_windows(manifest: Mapping[str, Any], tokenizer: Any, opts: Mapping[str, Any]):
    """The calibration windows the Gram cache was computed on (first `seq_nsamples`)."""
    from svdzoo.calibration.cache import cached_windows

    total, want = manifest.get("nsamples"), None
    if total is not None:  # checked before the corpus is cut (cached_windows refuses None)
        want = int_option(opts, "seq_nsamples", int(total), 1)
        if want > int(total):
            raise ConfigError(f"seq_nsamples must be in [1, {total}], got {want}")
    windows = cached_windows(
        manifest,
        tokenizer,
        corpus=opts.get("calibration_corpus"),
        hint="pass its path with the option calibration_corpus=PATH",
    )
    return windows if want is None else windows[:want]


def stacked_accumulator(mini_bsz: int, seqlen: int) -> Callable[[int, torch.device], Any]:
    """Factory of cross-Gram accumulators that average every `mini_bsz` windows first."""
    from svdzoo.calibration.stats import CrossGramAccumulator

    class StackedCrossGram(CrossGramAccumulator):
        def add(self, x: torch.Tensor, x_actual: torch.Tensor | None) -> None:
            def stack(t: torch.Tensor | None) -> torch.Tensor | None:
                if t is None:
                    return None
                t = t.reshape(-1, mini_bsz, seqlen, t.shape[-1]).to(torch.float64)
                return t.mean(1).reshape(-1, t.shape[-1])

            super().add(stack(x), stack(x_actual))

    return StackedCrossGram


def _shuffle(windows: torch.Tensor, mini_bsz: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    windows = windows[torch.randperm(windows.shape[0], generator=gen)]
    keep = windows.shape[0] // mini_bsz * mini_bsz
    if keep == 0:
        raise ConfigError(f"mini_bsz={mini_bsz} exceeds the {windows.shape[0]} calibration windows")
    if keep < windows.shape[0]:
        log.info(
            "stack-of-batch: dropping %d windows that fill no group of %d",
            windows.shape[0] - keep,
            mini_bsz,
        )
    return windows[:keep]


def run_sequential(
    model: nn.Module,
    method: Method,
    ranks: Mapping[str, int],
    stats: Any,
    tokenizer: Any,
    device: Any,
    replace: Callable[[str, Any], None],
    make_context: Callable[..., Any],
    opts: Mapping[str, Any],
) -> dict[str, Any]:
    """Compress `model` in place, layer by layer; returns a summary for the manifest.

    Matrices whose rank leaves them dense are not touched (the driver records them).
    """
    from svdzoo.calibration import SequentialCalibrator
    from svdzoo.models import adapter_for

    if stats is None or stats.gram is None:
        raise ConfigError(f"method {method.name!r} is sequential and needs the Gram statistics")
    granularity = opts.get("seq_granularity", "group")
    if granularity not in GRANULARITIES:
        raise ConfigError(f"seq_granularity must be one of {GRANULARITIES}, got {granularity!r}")
    mini_bsz = int_option(opts, "mini_bsz", 0, 0)
    batch_size = int_option(opts, "seq_batch_size", 8, 1)
    factoriser = configured(method.factoriser, opts)
    manifest = stats.gram.manifest
    windows = replay_windows(manifest, tokenizer, opts)
    kwargs: dict[str, Any] = {}
    if mini_bsz > 1:
        windows = _shuffle(windows, mini_bsz, int(manifest["seed"]))
        batch_size = max(1, batch_size // mini_bsz) * mini_bsz  # groups never straddle calls
        kwargs["accumulator"] = stacked_accumulator(mini_bsz, windows.shape[1])
        if "accumulator" not in inspect.signature(SequentialCalibrator).parameters:
            raise ConfigError(
                "stack-of-batch (mini_bsz) needs SequentialCalibrator(accumulator=...)"
            )
    adapter = adapter_for(model)
    plan: dict[int, dict[str, list[tuple[str, str]]]] = {}
    for name, layer, target, lin in adapter.iter_targets(model):
        k = int(ranks[name])
        if k >= min(lin.out_features, lin.in_features) or not worth_factoring(
            lin.out_features, lin.in_features, k
        ):
            continue
        plan.setdefault(layer, {}).setdefault(adapter.group_of(target), []).append((name, target))
    log.info(
        "sequential %s: %d windows x %d tokens, %d layers to compress, stats per %s",
        method.name, windows.shape[0], windows.shape[1], len(plan), granularity,
    )  # fmt: skip
    needs = set(getattr(factoriser, "sequential_stats", ALL_STATS))
    original = bool(needs & {"H", "C"})
    seq = SequentialCalibrator(
        model, windows, device=device, batch_size=batch_size, original=original, **kwargs
    )
    divergence: dict[str, float] = {}
    for i, layer in seq.layers():
        todo = plan.get(i)
        if not todo:
            continue
        d = seq.divergence()
        if d is not None:
            divergence[str(i)] = d
        groups = [g for g in adapter.groups if g in todo]
        batches = [[g] for g in groups] if granularity == "group" else [groups]
        for batch in batches:
            st = seq.layer_stats(i, tuple(batch))
            for g in batch:
                for name, target in todo[g]:
                    lin = layer.get_submodule(target)
                    ctx = make_context(model, name, i, target, lin, stats, device)
                    gs = st[g]
                    ctx.H_actual = gs.H_actual
                    if original:
                        ctx.H, ctx.C, ctx.count = gs.H, gs.C, gs.count
                    replace(name, factorise(factoriser, ctx, int(ranks[name])))
    summary: dict[str, Any] = {"windows": int(windows.shape[0]), "streams": 2 if original else 1}
    if original:
        summary["divergence"] = divergence
    return summary
