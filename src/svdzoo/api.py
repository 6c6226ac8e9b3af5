"""The Python API: what the CLI calls, and what a practitioner imports.

import svdzoo
model = svdzoo.load_model("data/models/smollm2-135m")
stats = svdzoo.load_statistics(gram="data/stats/smollm2-135m/pydoc-n32-l256-s3/gram")
manifest = svdzoo.compress(model, "svd-llm", 0.4, stats=stats)
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from svdzoo import lapack
from svdzoo.calibration.cache import check_same_architecture
from svdzoo.compression import KIND as COMPRESSED
from svdzoo.compression import (
    Statistics,
    check_allocator_table,
    check_ratio,
    check_statistics_dtype,
    check_statistics_tokenizer,
    compress,
    load_compressed,
    save_compressed,
    statistics_identity,
    with_options,
    write_compressed,
)
from svdzoo.errors import CacheError, ConfigError
from svdzoo.io import atomic_dir, not_there
from svdzoo.methods import get_method
from svdzoo.methods.base import FISHER, GRAM, SENS_ASVD, SENS_DUO, check_options
from svdzoo.models import (
    check_not_compressed,
    count_params,
    load_config,
    load_model,
    load_tokenizer,
    resolve_device,
    resolve_dtype,
)

log = logging.getLogger(__name__)

__all__ = [
    "compress",
    "compress_to_dir",
    "load_compressed",
    "load_model",
    "load_statistics",
    "load_tokenizer",
    "save_compressed",
]


def load_statistics(
    gram: str | Path | None = None,
    fisher: str | Path | None = None,
    sensitivity_duo: str | Path | None = None,
    sensitivity_asvd: str | Path | None = None,
    *,
    verify: bool = True,
) -> Statistics:
    """Load (and integrity-check) whichever cached calibration products are given.
    `verify=False` skips the tensor files' sha256 (minutes for a 7B Gram cache), for checks
    of their manifests that should come first; sizes and manifests are still checked."""
    stats = Statistics()
    if gram is not None:
        from svdzoo.calibration import load_stats

        stats.gram = load_stats(gram, verify=verify)
    if fisher is not None:
        from svdzoo.calibration import load_fisher

        stats.fisher = load_fisher(fisher, verify=verify)
    for kind, path in (("duo", sensitivity_duo), ("asvd", sensitivity_asvd)):
        if path is not None:
            from svdzoo.sensitivity import load_sensitivity

            stats.sensitivity[kind] = load_sensitivity(path, kind=kind)
    return stats


def check_calibration(stats: Statistics, tag: str) -> None:
    """Every product must come from the calibration set `tag` names (corpus-nN-lL-sS)."""
    from svdzoo.paths import calib_tag

    for kind, ident in statistics_identity(
        stats, {k: k for k in ("gram", "fisher", "sensitivity-duo", "sensitivity-asvd")}
    ).items():
        got = calib_tag(ident["corpus"], ident["nsamples"], ident["seqlen"], ident["seed"])
        if got != tag:
            raise CacheError(
                f"{kind} statistics were computed on {got}, but the caller expects {tag}; "
                "recompute them (svdzoo calibrate/sensitivity --force)"
            )


def _require_paths(method_name: str, given: Mapping[str, Any]) -> None:
    """Fail before loading anything when the method's statistics were not passed or do not exist."""
    flags = {
        GRAM: "--stats",
        FISHER: "--fisher",
        SENS_DUO: "--sensitivity-duo",
        SENS_ASVD: "--sensitivity-asvd",
    }
    for kind in sorted(get_method(method_name).needs):
        path = given.get(kind)
        if path is None:
            raise ConfigError(
                f"method {method_name!r} needs {kind} statistics: pass {flags[kind]} DIR"
            )
        if not Path(path).is_dir():
            raise ConfigError(
                f"{kind} statistics directory {str(path)!r} {not_there(path, 'directory')}"
            )


def _read_by(method: Any, given: Mapping[str, Any]) -> dict[str, Any]:
    """`given` without the statistics `method` does not read, each named in a warning: they
    were loaded, hash-checked (a 45-80 GB Gram at 7B) and recorded in the manifest and the
    model card as the statistics it used (plain `svd` with a Gram cache)."""
    needed = set(method.needs)
    if getattr(method.allocator, "reads_table", False):  # the table its allocator reads
        needed.add(f"sensitivity-{method.allocator.kind}")
    out = dict(given)
    for k, path in given.items():
        if path is not None and k not in needed:
            log.warning("method %r reads no %s statistics: %s is neither read nor recorded",
                        method.name, k, path)  # fmt: skip
            out[k] = None
    return out


def check_model_input(model: str | Path, dtype: str, device: str) -> None:
    """Refuse what `load_model` would refuse only after the statistics and the weights
    loaded: an unknown dtype or device (an unavailable GPU), and an svdzoo-compressed
    directory, whose factored linears no method can compress again (the error came from
    the first target, or, with statistics, as "computed on another model")."""
    resolve_dtype(dtype)
    resolve_device(device)
    check_not_compressed(model, "compress")


def compress_to_dir(
    model: str,
    method: str,
    ratio: float,
    out: str | Path,
    *,
    stats: str | Path | None = None,
    fisher: str | Path | None = None,
    sensitivity_duo: str | Path | None = None,
    sensitivity_asvd: str | Path | None = None,
    options: Mapping[str, Any] | None = None,
    device: str = "auto",
    dtype: str = "float32",
    force: bool = False,
    calibration: str | None = None,
) -> dict[str, Any]:
    """Load, compress and save in one call; every input is checked before any compute.

    `calibration` (a tag such as `pydoc-n32-l256-s3`, as the workflow names the statistics
    directory) is what the caller expects the statistics to come from; every product's own
    manifest must say the same.

    `out` is claimed first (`io.atomic_dir`): it must not be an input, and an existing `out`
    must be an earlier compressed model unless `force`; a second process writing the same
    `out` meanwhile is refused.
    """
    ratio = check_ratio(ratio)
    lapack.check_environment()  # SVDZOO_CPU_LAPACK, before the model loads
    registered = get_method(method)
    check_options(registered, options)
    # the values too (an unknown whitening, a negative tau): the parts refuse them when
    # configured, which `compress` does only after the statistics and the model loaded
    configured = with_options(registered, {**registered.options, **(options or {})})
    given = {GRAM: stats, FISHER: fisher, SENS_DUO: sensitivity_duo, SENS_ASVD: sensitivity_asvd}
    _require_paths(method, given)
    inputs = (model, *given.values())  # kept from --out, read or not
    used = _read_by(configured, given)
    check_model_input(model, dtype, device)
    products = [used[k] for k in (GRAM, FISHER, SENS_DUO, SENS_ASVD)]
    with atomic_dir(out, COMPRESSED, force=force, protect=inputs) as tmp:
        # the manifests' checks first: the tensors' sha256 takes minutes for a 7B Gram
        peek = load_statistics(*products, verify=False)
        if calibration is not None:
            check_calibration(peek, calibration)
        config = load_config(model)
        grams = [(k, p) for k, p in (("gram", peek.gram), ("fisher", peek.fisher)) if p]
        for kind, product in grams:  # another model's first: its dtype or tokenizer may differ too
            check_same_architecture(product.manifest, config, f"the {kind} statistics")
        check_statistics_dtype(peek, str(resolve_dtype(dtype)).removeprefix("torch."))
        check_allocator_table(configured, peek, ratio)  # protocol, base ratio
        tokenizer = load_tokenizer(model)  # a model without a tokenizer fails before loading
        check_statistics_tokenizer(peek, tokenizer)
        statistics = load_statistics(*products)
        lm = load_model(model, dtype=dtype, device=device)
        paths = {
            "gram": stats,
            "fisher": fisher,
            "sensitivity-duo": sensitivity_duo,
            "sensitivity-asvd": sensitivity_asvd,
        }
        manifest = compress_loaded(
            lm, tokenizer, method, ratio, tmp, statistics, paths, options=options, base=model
        )
    log.info("wrote %s (achieved ratio %.4f)", out, manifest["achieved_ratio"])
    return manifest


def compress_loaded(
    lm: Any,
    tokenizer: Any,
    method: str,
    ratio: float,
    tmp: Path,
    statistics: Statistics,
    paths: Mapping[str, Any],
    *,
    options: Mapping[str, Any] | None,
    base: str | Path,
) -> dict[str, Any]:
    """Compress a loaded model in place and write it to `tmp` (an `atomic_dir`'s staging
    directory), its manifest naming the base model and where each statistics product came
    from (`paths`: product kind -> directory)."""
    dense_total = count_params(lm)
    manifest = compress(lm, method, ratio, stats=statistics, tokenizer=tokenizer, options=options)
    manifest["model_params_dense"] = dense_total
    manifest["base_model"] = str(base)
    manifest["statistics"] = statistics_identity(statistics, paths)
    write_compressed(lm, manifest, tmp, tokenizer)
    return manifest
