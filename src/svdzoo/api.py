"""The Python API: what the CLI calls, and what a practitioner imports.

import svdzoo
model = svdzoo.load_model("data/models/ref-llama")
stats = svdzoo.load_statistics(gram="data/stats/ref-llama/pydoc-n64-l128-s3/gram")
manifest = svdzoo.compress(model, "svd-llm", 0.4, stats=stats)
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from svdzoo.compression import KIND as COMPRESSED
from svdzoo.compression import (
    Statistics,
    check_ratio,
    compress,
    load_compressed,
    save_compressed,
    write_compressed,
)
from svdzoo.errors import ConfigError
from svdzoo.io import atomic_dir
from svdzoo.methods import get_method
from svdzoo.methods.base import FISHER, GRAM, SENS_ASVD, SENS_DUO
from svdzoo.models import count_params, load_model, load_tokenizer

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
) -> Statistics:
    """Load (and integrity-check) whichever cached calibration products are given."""
    stats = Statistics()
    if gram is not None:
        from svdzoo.calibration import load_stats

        stats.gram = load_stats(gram)
    if fisher is not None:
        from svdzoo.calibration import load_fisher

        stats.fisher = load_fisher(fisher)
    for kind, path in (("duo", sensitivity_duo), ("asvd", sensitivity_asvd)):
        if path is not None:
            from svdzoo.sensitivity import load_sensitivity

            stats.sensitivity[kind] = load_sensitivity(path)
    return stats


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
            raise ConfigError(f"{kind} statistics directory {str(path)!r} does not exist")


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
) -> dict[str, Any]:
    """Load, compress and save in one call; every input is checked before any compute.

    `out` is claimed first (`io.atomic_dir`): it must not be an input, and an existing `out`
    must be an earlier compressed model unless `force`; a second process writing the same
    `out` meanwhile is refused.
    """
    check_ratio(ratio)
    get_method(method)
    _require_paths(
        method,
        {GRAM: stats, FISHER: fisher, SENS_DUO: sensitivity_duo, SENS_ASVD: sensitivity_asvd},
    )
    inputs = (model, stats, fisher, sensitivity_duo, sensitivity_asvd)
    with atomic_dir(out, COMPRESSED, force=force, protect=inputs) as tmp:
        statistics = load_statistics(stats, fisher, sensitivity_duo, sensitivity_asvd)
        lm = load_model(model, dtype=dtype, device=device)
        tokenizer = load_tokenizer(model)
        dense_total = count_params(lm)
        manifest = compress(
            lm, method, ratio, stats=statistics, tokenizer=tokenizer, options=options
        )
        manifest["model_params_dense"] = dense_total
        manifest["base_model"] = str(model)
        manifest["statistics"] = {
            k: str(v)
            for k, v in (
                ("gram", stats),
                ("fisher", fisher),
                ("sensitivity-duo", sensitivity_duo),
                ("sensitivity-asvd", sensitivity_asvd),
            )
            if v
        }
        write_compressed(lm, manifest, tmp, tokenizer)
    log.info("wrote %s (achieved ratio %.4f)", out, manifest["achieved_ratio"])
    return manifest
