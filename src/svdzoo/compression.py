"""Apply a registered method to a model; save and load compressed models.

Everything that can be wrong with the request (ratio, method, statistics from another
model or calibration set) is checked before any matrix is touched.
"""

from __future__ import annotations

import copy
import functools
import logging
import numbers
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from svdzoo import (
    allocation,
    codehash,
    column_split,
    lapack,
    linalg,
    lowrank,
    param_counts,
)
from svdzoo.errors import CacheError, ConfigError
from svdzoo.io import COMPRESSED_MODEL, atomic_dir, read_json_object, write_json
from svdzoo.methods import get_method, plugin_of
from svdzoo.methods.base import (
    FISHER,
    GRAM,
    SENS_ASVD,
    SENS_DUO,
    AllocationContext,
    MatrixContext,
    Method,
    WhitenerCache,
    check_options,
    factorise,
    with_options,
)
from svdzoo.model_card import write_model_card
from svdzoo.models import (
    adapter_for,
    check_finite_weights,
    count_params,
    eval_mode,
    fingerprint,
    replace_module,
    resolve_device,
)
from svdzoo.paths import MANIFEST, WEIGHTS
from svdzoo.provenance import cpu_threads, made_with

log = logging.getLogger(__name__)

# Not transformers' `model.safetensors`: a plain `AutoModelForCausalLM.from_pretrained` of a
# compressed directory must fail (no weights file it knows) instead of silently returning a
# randomly initialised dense model. `load_compressed` is the loader.
CONFIG = "config.json"
GENERATION_CONFIG = "generation_config.json"
REMOTE_MODULE = "modeling_svdzoo"  # svdzoo/hf/modeling_svdzoo.py, copied into each model
# whitened SVDs kept for allocators that revisit matrices (search, spectra); the whiteners
# get half as much again. Beyond that, recomputed.
REVISIT_CACHE_BYTES = 2 << 30
# a search's best trial's modules (in the model's dtype, on the CPU), reused by the final
# pass when the choice is that trial: SmolLM2-135M's take about 0.2 GB in float32
PROBE_KEEP_BYTES = 4 << 30


@dataclass
class Statistics:
    """The cached calibration products a method may read, keyed by kind."""

    gram: Any = None  # calibration.CalibrationStats
    fisher: Any = None  # calibration fisher stats
    sensitivity: dict[str, Any] = field(default_factory=dict)  # "duo"/"asvd" -> table

    def has(self, kind: str) -> bool:
        return {
            GRAM: self.gram is not None,
            FISHER: self.fisher is not None,
            SENS_DUO: "duo" in self.sensitivity,
            SENS_ASVD: "asvd" in self.sensitivity,
        }[kind]

    def products(self) -> dict[str, Any]:
        """Every product by kind (`gram`, `fisher`, `sensitivity-duo`, ...), None where absent."""
        return {
            "gram": self.gram,
            "fisher": self.fisher,
            **{f"sensitivity-{k}": v for k, v in self.sensitivity.items()},
        }


def _identity(product: Any) -> dict[str, Any]:
    m = getattr(product, "manifest", None) or {}
    gram = m.get("gram") or {}
    return {
        "corpus": m.get("corpus"),
        "nsamples": m.get("nsamples") if "sensitivity" not in m else gram.get("nsamples"),
        "seqlen": m.get("seqlen"),
        "seed": m.get("seed"),
        "sha256": m.get("sha256"),
        "manifest_sha256": m.get("manifest_sha256"),
    }


def statistics_identity(stats: Statistics, paths: Mapping[str, Any]) -> dict[str, Any]:
    """What each statistics product was computed from, for the compressed model's manifest;
    `path` is None for a product whose directory the caller does not know (the in-memory
    `compress`)."""
    return {
        kind: {"path": str(paths[kind]) if paths.get(kind) else None, **_identity(product)}
        for kind, product in stats.products().items()
        if product is not None
    }


def check_ratio(ratio: float) -> float:
    """`ratio` as a plain float, or ConfigError before any compute (np.float32 and
    Fraction passed here and failed in the allocator after the statistics were computed)."""
    if isinstance(ratio, bool) or not isinstance(ratio, numbers.Real):
        # a ratio read from params.yaml is the string "0.40"; it was "must be in (0, 1)"
        hint = f"; convert it: float({ratio!r})" if isinstance(ratio, str) else ""
        raise ConfigError(
            f"compression ratio must be a number (the fraction of parameters removed, in "
            f"(0, 1)), got the {type(ratio).__name__} {ratio!r}{hint}"
        )
    if not 0.0 < float(ratio) < 1.0:
        raise ConfigError(
            f"compression ratio must be in (0, 1) (fraction of parameters removed), got {ratio!r}"
        )
    return float(ratio)


def check_reachable(infos: list[allocation.MatrixInfo], ratio: float) -> None:
    """The ratio is one the targeted matrices can lose: at rank 1 each still keeps `m + n`
    parameters (or stays dense where that is not smaller). `--ratio 0.999` was refused
    only after the statistics were computed and the allocation had run."""
    total = sum(i.m * i.n for i in infos)
    floor = sum(min(i.m + i.n, i.m * i.n) for i in infos)
    most = 1.0 - floor / total if total else 0.0
    if float(ratio) > most:
        raise ConfigError(
            f"compression ratio {ratio:g} cannot be reached: at rank 1 the targeted matrices "
            f"keep {floor:,} of their {total:,} parameters, so at most {most:.4f} can be removed"
        )


def check_statistics(method: Method, stats: Statistics, model_fp: str, config: Any) -> None:
    """Every product the method needs is present and was computed on this very model (its
    fingerprint `model_fp`), on the windows it reads (its `config`: `data.window_prefix`)."""
    from svdzoo.calibration.cache import check_window_prefix

    missing = [k for k in sorted(method.needs) if not stats.has(k)]
    if missing:
        raise ConfigError(
            f"method {method.name!r} needs statistics {missing}; compute them first (svdzoo calibrate/sensitivity)"
        )
    products = stats.products()
    for kind, product in products.items():
        if product is None:
            continue
        manifest = getattr(product, "manifest", None) or {}
        # a table filed under the other key (an ASVD perplexity table given as Duo-SVD's KL
        # table, or the reverse) would be read as the other metric without complaint
        have = manifest.get("sensitivity")
        if kind.startswith("sensitivity-") and have is not None and f"sensitivity-{have}" != kind:
            raise CacheError(
                f"the {kind} statistics are a sensitivity-{have} table ({manifest.get('metric')}); "
                f"pass a sensitivity-{kind.removeprefix('sensitivity-')} table "
                f"(svdzoo sensitivity --kind {kind.removeprefix('sensitivity-')})"
            )
        fp = manifest.get("model_fingerprint")
        if fp is not None and fp != model_fp:
            raise CacheError(
                f"{kind} statistics were computed on another model (fingerprint {fp}, this model is {model_fp})"
            )
        if kind in ("gram", "fisher"):
            check_window_prefix(manifest, config, f"the {kind} statistics")
    if stats.gram is not None:
        calib = _calib_key(stats.gram.manifest)
        for kind, product in products.items():
            other = getattr(product, "manifest", None) or {}
            if (
                kind != "gram"
                and other
                and _calib_key(other) != calib
                and other.get("calibration") is None
            ):
                raise CacheError(
                    f"{kind} statistics come from another calibration set than the Gram cache: {_calib_key(other)} vs {calib}"
                )
            # a sensitivity table is measured with one Gram cache's whitening and names it
            made_with = (other.get("gram") or {}).get("sha256") if kind != "gram" else None
            gram_sha = stats.gram.manifest.get("sha256")
            if made_with is not None and gram_sha is not None and made_with != gram_sha:
                made_n = (other.get("gram") or {}).get("nsamples")
                raise CacheError(
                    f"{kind} statistics were measured with another Gram cache (sha256 "
                    f"{made_with[:12]}, {made_n} windows) than the one given ({gram_sha[:12]}, "
                    f"{stats.gram.manifest.get('nsamples')} windows); recompute the table "
                    "with this Gram cache (svdzoo sensitivity --stats ... --force)"
                )


def check_statistics_dtype(stats: Statistics, dtype: str) -> None:
    """Statistics computed with the model in another dtype (`calibrate --dtype float16`)
    fingerprint another model: say so before the weights load (it was refused afterwards
    as "computed on another model", the same model)."""
    from svdzoo.calibration.cache import check_made_in_dtype

    for kind, product in stats.products().items():
        manifest = getattr(product, "manifest", None) or {}
        check_made_in_dtype(manifest, dtype, f"the {kind} statistics", "compression")


def check_statistics_tokenizer(stats: Statistics, tokenizer: Any) -> None:
    """The Gram and Fisher statistics were measured on the tokens `tokenizer` makes
    (`calibration.cache.check_tokenizer`)."""
    from svdzoo.calibration.cache import check_tokenizer

    for kind, product in (("gram", stats.gram), ("fisher", stats.fisher)):
        if product is not None:
            check_tokenizer(product.manifest, tokenizer, f"the {kind} statistics")


def check_allocator_table(method: Method, stats: Statistics, ratio: float) -> None:
    """The sensitivity table the (configured) allocator reads is there and fits it (Duo-SVD:
    its protocol and, per ratio, its base ratio), from the table's manifest: checked once
    the statistics are read, before the model loads (it failed after "allocating ranks")."""
    if not getattr(method.allocator, "reads_table", False):
        return
    kind = method.allocator.kind
    table = stats.sensitivity.get(kind)
    if table is None:
        raise ConfigError(
            f"method {method.name!r} allocates by the sensitivity-{kind} table: pass "
            f"--sensitivity-{kind} DIR (svdzoo sensitivity --kind {kind})"
        )
    check = getattr(method.allocator, "check_table", None)
    if check is not None:
        check(table, ratio)


def _check_table_alpha(method: Method, stats: Statistics) -> None:
    """ASVD allocates by a perplexity table measured with its own activation scaling
    (`svdzoo sensitivity --kind asvd`: alpha 0.5, as the manifest's `factoriser` says);
    factorising at another alpha by that table would be neither ASVD nor a measured
    variant. `asvd-uniform` takes any alpha (it reads no table)."""
    table = stats.sensitivity.get("asvd")
    alpha = getattr(method.factoriser, "alpha", None)
    if table is None or alpha is None or SENS_ASVD not in method.needs:
        return
    made = str((getattr(table, "manifest", None) or {}).get("factoriser", ""))
    if not made.startswith("asvd-alpha"):
        return
    if float(made.removeprefix("asvd-alpha")) != float(alpha):
        raise ConfigError(
            f"method {method.name!r} at alpha {alpha}: its sensitivity-asvd table was measured "
            f"at alpha {made.removeprefix('asvd-alpha')}; use that alpha, or asvd-uniform for "
            "another one"
        )


def _calib_key(manifest: Mapping[str, Any]) -> tuple:
    return tuple(manifest.get(k) for k in ("corpus", "seqlen", "seed"))


def matrix_infos(model: nn.Module) -> list[allocation.MatrixInfo]:
    adapter = adapter_for(model)
    return [
        allocation.MatrixInfo(
            name=name,
            layer=layer,
            type=adapter.matrix_type(t),
            m=lin.out_features,
            n=lin.in_features,
        )
        for name, layer, t, lin in adapter.iter_targets(model)
    ]


def _context(
    model: nn.Module,
    name: str,
    layer: int,
    target: str,
    lin: nn.Linear,
    stats: Statistics,
    device,
    whiteners: WhitenerCache | None = None,
    svds: WhitenerCache | None = None,
) -> MatrixContext:
    adapter = adapter_for(model)
    group = adapter.group_of(target)
    ctx = MatrixContext(
        name=name,
        layer=layer,
        type=adapter.matrix_type(target),
        group=group,
        W=lin.weight.detach().to(device=device, dtype=torch.float64),
        bias=None if lin.bias is None else lin.bias.detach(),
        whiteners=whiteners,
        svds=svds,
    )
    if stats.gram is not None:
        ctx.H = stats.gram.gram(layer, group).to(device=device, dtype=torch.float64)
        ctx.absmean = stats.gram.absmean(layer, group).to(device=device, dtype=torch.float64)
        ctx.count = int(stats.gram.count(layer, group))
    if stats.fisher is not None:
        ctx.fisher_row = stats.fisher.row(name).to(device=device, dtype=torch.float64)
        ctx.fisher_col = stats.fisher.col(name).to(device=device, dtype=torch.float64)
    return ctx


def build_module(lin: nn.Linear, result: Any) -> nn.Module:
    """The drop-in replacement for `lin` from a factoriser's result."""
    dtype, device = lin.weight.dtype, lin.weight.device
    bias = None if lin.bias is None else lin.bias.detach()
    if isinstance(result, column_split.ColumnSplit):
        return lowrank.ColumnPreservingLinear.from_split(
            result, bias=bias, dtype=dtype, device=device
        )
    return lowrank.LowRankLinear.from_factors(
        result.A, result.B, bias=bias, dtype=dtype, device=device
    )


def _weight_params(module: nn.Module) -> int:
    """Parameters excluding biases: biases are never compressed, so they stay out of ratios."""
    return sum(p.numel() for n, p in module.named_parameters() if not n.endswith("bias"))


def _module_record(info: allocation.MatrixInfo, module: nn.Module, dense: bool) -> dict[str, Any]:
    dense_w = info.m * info.n
    if dense:
        kept, rank, params = 0, min(info.m, info.n), dense_w
    else:
        spec = lowrank.module_spec(module)
        rank, kept = int(spec.get("rank", 0)), int(spec.get("kept_columns", 0))
        params = _weight_params(module)
    return {
        "m": info.m,
        "n": info.n,
        "layer": info.layer,
        "type": info.type,
        "rank": rank,
        "kept_columns": kept,
        "params_dense": dense_w,
        "params": params,
        "ratio": 1.0 - params / dense_w,
        "dense": dense,
        "spec": None if dense else lowrank.module_spec(module),
    }


def _probe_windows(method, stats, tokenizer, opts, does: str, what: str):
    """The calibration windows a search or a selector runs the model on (`probe_windows`),
    which the Gram cache's manifest names."""
    from svdzoo.methods.probe import probe_windows

    if stats.gram is None:
        raise ConfigError(
            f"method {method.name!r} {does} on calibration data: it needs the Gram statistics"
        )
    windows = probe_windows(stats.gram.manifest, tokenizer, opts)
    log.info("%s: probing %s on %d calibration windows", method.name, what, windows.shape[0])
    return windows


def _probe(model, method, stats, tokenizer, modules, context, device, opts):
    """The end-to-end error oracle of searching allocators (`methods.probe`)."""
    from svdzoo.methods.probe import OutputErrorProbe

    windows = _probe_windows(method, stats, tokenizer, opts, "searches", "allocations")

    def factorise_at(name: str, rank: int):
        layer, t, lin = modules[name]
        return factorise(
            method.factoriser, context(model, name, layer, t, lin, stats, device), rank
        )

    return OutputErrorProbe(
        model,
        windows,
        {n: lin for n, (_, _, lin) in modules.items()},
        factorise_at,
        build_module,
        keep_bytes=PROBE_KEEP_BYTES,
    )


def _selector_probe(model, method, stats, tokenizer, opts):
    """The selector's measure of the model as it is now against the model as it was when
    this is called (before any matrix is replaced), on calibration windows."""
    windows = _probe_windows(method, stats, tokenizer, opts, "probes", "candidates")
    return method.selector.probe(model, windows)


def compress(
    model: nn.Module,
    method: str | Method,
    ratio: float,
    *,
    stats: Statistics | None = None,
    tokenizer: Any = None,
    device: str | torch.device | None = None,
    options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Compress `model` in place; returns the manifest (ranks, columns, parameter counts).

    The model runs in evaluation mode throughout (searches and sequential methods replay
    calibration data through it: dropout would make them random) and is returned in the
    mode it came in."""
    if not isinstance(model, nn.Module):
        # a path or hub id failed with "'str' object has no attribute 'training'"
        raise ConfigError(
            f"compress() compresses a loaded model in place, got the {type(model).__name__} "
            f"{model!r}: load it first (svdzoo.load_model), or give the directory or hub id "
            "to svdzoo.compress_to_dir or svdzoo.calibrate_and_compress"
        )
    with eval_mode(model):
        return _compress(
            model, method, ratio, stats=stats, tokenizer=tokenizer, device=device, options=options
        )


def _compress(
    model: nn.Module,
    method: str | Method,
    ratio: float,
    *,
    stats: Statistics | None,
    tokenizer: Any,
    device: str | torch.device | None,
    options: Mapping[str, Any] | None,
) -> dict[str, Any]:
    ratio = check_ratio(ratio)
    lapack.check_environment()
    method = get_method(method) if isinstance(method, str) else method
    check_options(method, options)
    if stats is not None and not isinstance(stats, Statistics):
        # a bare product (`calibrate(...)`, `load_stats(...)`) failed with an AttributeError
        raise ConfigError(
            f"stats must be a Statistics (svdzoo.load_statistics(gram=DIR), or "
            f"Statistics(gram=...)), got {type(stats).__name__}"
        )
    stats = stats or Statistics()
    adapter = adapter_for(model)
    check_finite_weights(model, "the model to compress")
    model_fp = fingerprint(model)
    check_statistics(method, stats, model_fp, model.config)
    if tokenizer is not None:  # the tokens the statistics were measured on
        check_statistics_tokenizer(stats, tokenizer)
    if method.replays_calibration and tokenizer is None:
        raise ConfigError(
            f"method {method.name!r} runs the model on calibration data and needs the tokenizer"
        )
    opts = {**method.options, **(options or {})}
    method = with_options(method, opts)
    _check_table_alpha(method, stats)
    device = resolve_device(device) if device is not None else next(model.parameters()).device
    t0 = time.perf_counter()
    infos = matrix_infos(model)
    check_reachable(infos, ratio)
    by_name = {i.name: i for i in infos}
    modules = {name: (layer, t, lin) for name, layer, t, lin in adapter.iter_targets(model)}
    # a search factorises each matrix at several ranks, a spectrum allocator reads every
    # matrix before the factorisation does: keep whitened SVDs and whiteners (bounded)
    if method.probes or getattr(method.allocator, "reads_spectra", False):
        whiteners = WhitenerCache(keep_bytes=REVISIT_CACHE_BYTES // 2)
        svds = WhitenerCache(size=0, keep_bytes=REVISIT_CACHE_BYTES)
    else:
        whiteners, svds = WhitenerCache(), None
    context = functools.partial(_context, whiteners=whiteners, svds=svds)

    def spectrum(name: str) -> torch.Tensor:
        layer, t, lin = modules[name]
        fact = method.spectrum_factoriser or method.factoriser
        try:
            return fact.spectrum(context(model, name, layer, t, lin, stats, device))
        except linalg.NumericsError as exc:
            raise linalg.NumericsError(f"{name} (spectrum): {exc}") from exc

    actx = AllocationContext(
        stats=stats.gram, sensitivity=stats.sensitivity, spectrum=spectrum, options=opts
    )
    if method.probes:
        actx.probe = _probe(model, method, stats, tokenizer, modules, context, device, opts)
    # taken before any matrix is replaced: the original model's output is the reference
    probe = _selector_probe(model, method, stats, tokenizer, opts) if method.selector else None
    log.info(
        "allocating ranks for %s at ratio %.2f over %d matrices", method.name, ratio, len(infos)
    )
    ranks = method.allocator(infos, ratio, actx)
    records: dict[str, dict[str, Any]] = {}

    def replace(name: str, result: Any) -> None:
        replace_built(name, build_module(modules[name][2], result))

    def replace_built(name: str, new: nn.Module) -> None:
        info = by_name[name]
        for pname, p in new.named_parameters():
            if not linalg.all_finite(p):
                raise linalg.NumericsError(
                    f"{method.name}: the factors of {name} ({pname}) are not finite; its "
                    "statistics or weights hold NaN/inf or the factorisation diverged"
                )
        dense = _weight_params(new) >= info.m * info.n
        if dense:
            log.debug("%s: factored form is not smaller (rank %d); kept dense", name, ranks[name])
        else:
            replace_module(model, name, new)
        records[name] = _module_record(info, new, dense)

    if method.sequential:
        from svdzoo.methods.sequential import run_sequential

        summary = run_sequential(
            model, method, ranks, stats, tokenizer, device, replace, context, opts
        )
        actx.report.setdefault("sequential", summary)
        for name, (_, _, lin) in modules.items():  # matrices the allocation left dense
            if name not in records:
                records[name] = _module_record(by_name[name], lin, True)
    else:
        reused, kept_of = 0, getattr(actx.probe, "kept", None)
        candidates: list[tuple[str, float, nn.Module]] = []  # a selector's, on the CPU
        for name in tqdm(list(modules), desc=f"compress {method.name}", unit="matrix"):
            layer, t, lin = modules[name]
            info, rank = by_name[name], ranks[name]
            dense = rank >= min(info.m, info.n)
            if dense or not param_counts.worth_factoring(info.m, info.n, rank):
                records[name] = _module_record(info, lin, True)
                continue
            kept = kept_of(name, rank) if kept_of is not None else None
            if kept is not None:  # the search's choice: built by its best trial
                reused += 1
                replace_built(name, kept.to(lin.weight.device))
                continue
            ctx = context(model, name, layer, t, lin, stats, device)
            if method.selector is None:
                replace(name, factorise(method.factoriser, ctx, rank))
                continue
            now, later, gain = factorise(
                functools.partial(method.selector.offer, method.factoriser), ctx, rank
            )
            replace(name, now)
            if later is not None:
                candidates.append((name, gain, build_module(lin, later).to("cpu")))
        if reused:
            log.info("%d matrices as the search's best trial built them", reused)
        if method.selector is not None:
            actx.report["split_probe"] = method.selector.select(
                candidates,
                probe,
                model.get_submodule,
                lambda name, new: replace_built(name, new.to(modules[name][2].weight.device)),
            )
    elapsed = time.perf_counter() - t0
    if whiteners.misses:
        log.info(
            "whiteners: %d computed, %d reused across matrices of one input group",
            whiteners.misses,
            whiteners.hits,
        )
    params_dense = sum(i.m * i.n for i in infos)
    params_comp = sum(r["params"] for r in records.values())
    source = getattr(getattr(model, "config", None), "_name_or_path", None)
    manifest = {
        "method": method.name,
        "ratio": float(ratio),
        "achieved_ratio": 1.0 - params_comp / params_dense,
        "params_dense": params_dense,
        "params_compressed": params_comp,
        "model_params_dense": None,  # filled by the caller that still knows the dense count
        "model_params_compressed": count_params(model),
        "compression_time_s": elapsed,
        "allocation": actx.report,
        "options": {k: v for k, v in opts.items() if isinstance(v, int | float | str | bool)},
        # the factorisation's arithmetic (the `precision` of `Whitened` and `PlainSVD`)
        "precision": linalg.resolve_precision(
            getattr(method.factoriser, "precision", "float64"), device
        ),
        "base_fingerprint": model_fp,
        # what it was made from, as the CLI's models record it (`api.compress_loaded`
        # replaces both with the paths it was given): saved through the API, a model
        # named neither
        "base_model": str(source) if source else None,
        "statistics": statistics_identity(stats or Statistics(), {}),
        "family": adapter.name,
        **made_with(),
        "threads": cpu_threads(device),
        "code": codehash.recorded("compress", method.name),
        # the package a method registered through an entry point came from (svdzoo.plugins)
        "plugin": plugin.record() if (plugin := plugin_of(method.name)) else None,
        "modules": records,
    }
    manifest["model_params_dense"] = (
        manifest["model_params_compressed"] + params_dense - params_comp
    )
    log.info(
        "%s r=%.2f: achieved %.4f over targets in %.1fs",
        method.name,
        ratio,
        manifest["achieved_ratio"],
        elapsed,
    )
    return manifest


# ---------------------------------------------------------------- persistence


KIND = COMPRESSED_MODEL  # the output kind `io.atomic_dir` recognises (and replaces)


def save_compressed(
    model: nn.Module,
    manifest: Mapping[str, Any],
    out_dir: str | Path,
    tokenizer: Any = None,
    *,
    force: bool = False,
) -> None:
    """Weights (safetensors), config, tokenizer and manifest, written atomically as one directory.

    An existing `out_dir` is replaced only if it is an earlier compressed model (or `force`).
    """
    check_model_fits(model, manifest)
    with atomic_dir(out_dir, KIND, force=force) as tmp:
        write_compressed(model, manifest, tmp, tokenizer)


def check_model_fits(model: nn.Module, manifest: Mapping[str, Any]) -> None:
    """Refuse to save a model whose modules are not the manifest's (another model, or the
    dense original): the directory would be written and sealed, and fail only on load."""
    wrong = []
    for name, rec in (manifest.get("modules") or {}).items():
        try:
            module = model.get_submodule(name)
        except AttributeError:
            wrong.append(f"{name} (absent)")
            continue
        try:  # plain ints and bools, as the manifest holds them in memory and in JSON
            spec = lowrank.module_spec(module)
        except lowrank.SpecError:
            spec = None  # a dense linear
        if spec != (None if rec.get("dense") else rec.get("spec")):
            wrong.append(f"{name} ({'dense' if spec is None else spec['type']} here)")
    if wrong:
        raise ConfigError(
            f"this model is not the one the manifest describes ({len(wrong)} modules differ, "
            f"e.g. {', '.join(wrong[:3])}): save the model compress() returned this manifest for"
        )


def write_compressed(
    model: nn.Module, manifest: Mapping[str, Any], out_dir: Path, tokenizer: Any = None
) -> None:
    """The files of a compressed model, into an existing (temporary) directory."""
    from safetensors.torch import save_file

    from svdzoo.calibration.cache import file_sha256, seal

    # config.json names the loader svdzoo ships beside the weights (`auto_map`), so plain
    # transformers loads the compressed model with trust_remote_code=True (and, without
    # it, finds no weights it knows and raises instead of building a random dense model)
    config = copy.deepcopy(model.config)
    config.auto_map = {"AutoModelForCausalLM": f"{REMOTE_MODULE}.SvdzooForCausalLM"}
    config.save_pretrained(out_dir)
    shutil.copyfile(
        Path(__file__).parent / "hf" / f"{REMOTE_MODULE}.py", out_dir / f"{REMOTE_MODULE}.py"
    )
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)
    # generation_config.json (eos ids, sampling, penalties of the dense checkpoint), as
    # transformers' save_pretrained writes it: without it generate() falls back to the
    # defaults derived from config.json and produces other tokens than the dense model
    generation = getattr(model, "generation_config", None)
    if generation is not None and getattr(model, "can_generate", lambda: False)():
        generation.save_pretrained(out_dir)
    save_file(_state_without_tied(model), str(out_dir / WEIGHTS), metadata={"format": "pt"})
    write_model_card(out_dir, manifest)  # README.md: how to load it, what made it
    # the weights' hash ties them to this manifest: another run's file is refused on load;
    # so does the config's (rope_theta, norm eps, tied embeddings change no shape: another
    # config would load without an error, as another model)
    # sealed: an edited `ratio` or `method` would relabel every metric of this model
    write_json(
        out_dir / MANIFEST,
        seal(
            {
                **manifest,
                "weights_sha256": file_sha256(out_dir / WEIGHTS),
                "config_sha256": file_sha256(out_dir / CONFIG),
            }
        ),
    )


def read_manifest(path: str | Path) -> dict[str, Any]:
    """A compressed model's manifest, checked before anything is computed from it: readable,
    sealed as written (`check_seal`), naming a method and a ratio in [0, 1). CacheError
    otherwise (an edited ratio was recorded in every metric file; bytes that are not JSON
    made the directory pass for a dense model)."""
    from svdzoo.calibration.cache import check_seal

    mpath = Path(path) / MANIFEST
    manifest = read_json_object(
        mpath, CacheError, "compress the model again", kind="a compressed model's manifest"
    )
    check_seal(manifest, str(mpath), "compress the model again")
    method, ratio = manifest.get("method"), manifest.get("ratio")
    if (
        not isinstance(method, str)
        or isinstance(ratio, bool)
        or not isinstance(ratio, int | float)
        or not 0.0 <= ratio < 1.0
    ):
        raise CacheError(
            f"{mpath}: method {method!r} and ratio {ratio!r} are not a compression's "
            "(a method name and a ratio in [0, 1)); compress the model again"
        )
    return manifest


def _tied_output_keys(model: nn.Module) -> set[str]:
    """State-dict keys of an output embedding that shares its tensor with the input one."""
    out_emb, in_emb = model.get_output_embeddings(), model.get_input_embeddings()
    if out_emb is None or in_emb is None or out_emb.weight is not in_emb.weight:
        return set()
    return {f"{name}.weight" for name, mod in model.named_modules() if mod is out_emb}


def _state_without_tied(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with tied duplicates dropped (re-tied on load), contiguous for safetensors."""
    tied = _tied_output_keys(model)
    return {k: v.detach().contiguous() for k, v in model.state_dict().items() if k not in tied}


def load_compressed(path: str | Path, dtype: Any = "float32", device: Any = "cpu") -> nn.Module:
    """Rebuild the architecture from config + manifest, then load the saved weights."""
    from accelerate import init_empty_weights
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    from svdzoo.calibration.cache import file_sha256
    from svdzoo.models import is_compressed_dir, resolve_dtype

    path = Path(path)
    # before the weights are hashed and read: an unknown dtype or device fails at once
    target, dev = resolve_dtype(dtype), resolve_device(device)
    if not is_compressed_dir(path):
        raise CacheError(
            f"{path} is not an svdzoo compressed model (no {MANIFEST} naming a method); "
            "a dense model loads with svdzoo.models.load_model"
        )
    manifest = read_manifest(path)
    if not (path / WEIGHTS).exists():
        raise CacheError(
            f"compressed model {path} has a manifest but no {WEIGHTS} (an unfinished write, "
            "or a directory from an older svdzoo): compress it again"
        )
    want = manifest.get("weights_sha256")
    if want is None:
        raise CacheError(f"{path / MANIFEST} records no weights_sha256: compress it again")
    if file_sha256(path / WEIGHTS) != want:
        raise CacheError(
            f"compressed model {path}: {WEIGHTS} is not the file this manifest was written "
            "with (replaced by another run's, or corrupted); compress it again"
        )
    want = manifest.get("config_sha256")  # absent in directories of older svdzoo
    if want is not None and (not (path / CONFIG).is_file() or file_sha256(path / CONFIG) != want):
        raise CacheError(
            f"compressed model {path}: {CONFIG} is not the config this manifest was written "
            "with (edited, or replaced by another run's); compress it again"
        )
    config = AutoConfig.from_pretrained(str(path))
    config.__dict__.pop("auto_map", None)  # the base architecture, not the remote loader
    with init_empty_weights(include_buffers=False):
        # built under the target dtype as `from_pretrained(dtype=...)` builds the dense
        # model, so that the buffers (rotary frequencies) come out as they do there
        model = AutoModelForCausalLM.from_config(config, dtype=target)
        for name, rec in manifest["modules"].items():
            if rec.get("dense"):
                continue
            try:
                # on meta like the rest: every factor is then assigned from the file
                new = lowrank.build_from_spec(rec["spec"], dtype=torch.float32, device="meta")
                replace_module(model, name, new)
            except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as exc:
                raise CacheError(
                    f"{path / MANIFEST}: module {name!r} has an unusable spec ({exc}); the "
                    "manifest was edited or is damaged: compress again"
                ) from exc
    try:
        state = load_file(str(path / WEIGHTS))
    except Exception as exc:
        raise CacheError(f"compressed model {path}: cannot read {WEIGHTS} ({exc})") from exc
    try:
        result = model.load_state_dict(state, strict=False, assign=True)
    except RuntimeError as exc:
        raise CacheError(
            f"compressed model {path}: the weights do not fit the manifest's modules ({exc}); "
            "compress again"
        ) from exc
    model.tie_weights()
    tied = _tied_output_keys(model)
    missing = [k for k in result.missing_keys if k not in tied]
    if missing or result.unexpected_keys:
        raise CacheError(
            f"compressed model {path}: weights do not match the manifest (missing {missing[:5]}, unexpected {result.unexpected_keys[:5]})"
        )
    left = [n for n, p in model.named_parameters() if p.is_meta]
    if left:
        raise CacheError(f"compressed model {path}: {WEIGHTS} holds no values for {left[:5]}")
    model.to(device=dev)
    # the parameters in `dtype`, the buffers as built (not `to(dtype)`, which would round
    # the rotary frequencies to float16 where the dense model keeps them float32)
    for param in model.parameters():
        param.data = param.data.to(target)
    if (path / GENERATION_CONFIG).is_file():
        from transformers import GenerationConfig

        model.generation_config = GenerationConfig.from_pretrained(str(path))
    # the base architecture's save_pretrained would write the factors under names that
    # reload as a dense model with random weights: refused, as the remote-code loader does
    from svdzoo.hf.modeling_svdzoo import _no_save_pretrained

    model.save_pretrained = _no_save_pretrained.__get__(model)
    model.eval()
    check_finite_weights(model, f"compressed model {path}")
    return model
