"""The settings the workflow's jobs would use for one model and method, read from a params
file, as `calibrate_and_compress` keyword arguments (`svdzoo calibrate-compress --params`).

The workflow runs `calibrate`, `sensitivity` and `compress` with the flags of the params'
`calibration`, `sensitivity` and `compress` sections and `method_options.<method>`; the one
command takes the same values, so it computes what those jobs would and finds their caches.
A flag that changes what a job computes but that the one command cannot mirror is refused:
silently dropping it would make statistics the workflow's manifests disagree with.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from svdzoo.errors import ConfigError

# params section -> {flag: calibrate_and_compress keyword}
TAKEN = {
    "calibration": {
        "corpus": "corpus",
        "nsamples": "nsamples",
        "seqlen": "seqlen",
        "seed": "seed",
        "dtype": "dtype",
    },
    "sensitivity": {"nsamples": "sensitivity_nsamples", "ratios": "sensitivity_ratios"},
    "compress": {},
}
# flags that set how a job runs, never what it computes (devices, batching, memory)
RUN_TIME = frozenset({"device", "batch-size", "memory-budget-mb", "offload-dir", "max-tokens"})
DEFAULT_DTYPE = "float32"  # `svdzoo calibrate`, `sensitivity` and `compress` alike


def settings_from_params(
    params: Mapping[str, Any],
    model: str,
    method: str,
    root: str | Path = ".",
    model_path: str | None = None,
    dtype: str | None = None,
) -> dict[str, Any]:
    """`calibrate_and_compress` keywords for `method` on the params' model `model`, with
    `model` the path or hub id the workflow passes as `--model` (its directory under
    `root` for a model the workflow makes); ConfigError for what cannot be mirrored.
    `model_path` and `dtype`, where given, replace the params' (the user's choice)."""
    from svdzoo.config import LOCAL_SOURCES, method_requirements, model_arg
    from svdzoo.paths import Layout

    if model not in params["models"]:
        raise ConfigError(
            f"--model-name {model!r} is not a model of the params file, which has "
            f"{', '.join(params['models'])}"
        )
    path = model_path or model_arg(params, model, Layout(Path(root)))
    local = params["models"][model]["source"] in LOCAL_SOURCES
    if model_path is None and local and not Path(path).is_dir():
        raise ConfigError(
            f"model {model!r} is made by the workflow and is not there yet ({path}): run "
            f"`snakemake --cores all {path}` first (with --config params=FILE for another "
            "params file than params.yaml), or give --model"
        )
    needs = method_requirements(method)
    tables = any(k.startswith("sensitivity-") for k in needs)
    sections = {s: dict(params.get(s) or {}) for s in TAKEN}
    out: dict[str, Any] = {"model": path}
    for section, flags in sections.items():
        for flag, value in flags.items():
            if flag in TAKEN[section]:
                out[TAKEN[section][flag]] = value
            elif flag not in RUN_TIME and flag != "dtype":
                _check_other(section, flag, value, sections["calibration"], needs)
    dtypes = {
        s: sections[s].get("dtype", DEFAULT_DTYPE)
        for s in ("calibration", "sensitivity", "compress")
        if s != "sensitivity" or tables
    }
    if dtype is None and len(set(dtypes.values())) > 1:
        raise ConfigError(
            "the params load the model in "
            + ", ".join(f"{v} for {s}" for s, v in dtypes.items())
            + "; calibrate-compress loads it once, in one dtype: run the workflow, or "
            "give --dtype to use one for all"
        )
    out["dtype"] = dtype or dtypes["calibration"]
    out["options"] = dict((params.get("method_options") or {}).get(method) or {})
    return out


def _check_other(
    section: str, flag: str, value: Any, calibration: Mapping[str, Any], needs: frozenset[str]
) -> None:
    """A flag the one command does not take: fine where it repeats the calibration set or
    cannot matter to this method, refused where it would change the statistics."""
    if section == "sensitivity" and flag in ("seqlen", "seed", "corpus"):
        if value == calibration.get(flag):
            return
        why = f"the tables' {flag} {value!r} is not the calibration's {calibration.get(flag)!r}"
    elif section == "calibration" and flag == "fisher-batch-size":
        if "fisher" not in needs or int(value) == 1:
            return
        why = f"Fisher is summed over batches of {value} (calibrate-compress: per sample)"
    else:
        why = f"{section}.{flag} changes what the job computes"
    raise ConfigError(
        f"the params cannot be mirrored by calibrate-compress: {why}; run the workflow "
        "(snakemake / dvc repro), or the steps svdzoo calibrate, sensitivity and compress"
    )
