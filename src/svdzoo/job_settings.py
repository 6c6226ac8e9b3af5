"""The settings the workflow's jobs would use for one model and method, read from a params
file, as `calibrate_and_compress` keyword arguments (`svdzoo calibrate-compress --params`).

The workflow runs `calibrate`, `sensitivity` and `compress` with the flags of the params'
`calibration`, `sensitivity` and `compress` sections, `execution.<command>` and
`method_options.<method>`; the one command takes the same values, so it computes what
those jobs would and finds their caches. A setting that changes what a job computes but
that the one command cannot mirror is refused: silently dropping it would make statistics
the workflow's manifests disagree with.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from svdzoo.errors import ConfigError

# params section -> {flag: calibrate_and_compress keyword}
TAKEN = {
    "calibration": {"corpus": "corpus", "nsamples": "nsamples", "seqlen": "seqlen", "seed": "seed"},
    "sensitivity": {"nsamples": "sensitivity_nsamples", "ratios": "sensitivity_ratios"},
    "compress": {},
}
# validated to equal the calibration's (`config.validate_params`), or not a result at all
IGNORED = {
    "calibration": frozenset({"force"}),
    "sensitivity": frozenset({"corpus", "seqlen", "seed", "force"}),
    "compress": frozenset({"force"}),
}
DEFAULT_DTYPE = "float32"  # `svdzoo calibrate`, `sensitivity` and `compress` alike


def settings_from_params(
    params: Mapping[str, Any],
    model: str,
    method: str,
    root: str | Path = ".",
    model_path: str | None = None,
    dtype: str | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """`calibrate_and_compress` keywords for `method` on the model `model` of validated
    `params` (`config.load_params`), with `model` the path or hub id the workflow passes
    as `--model` (its directory under `root` for a model the workflow makes). `model_path`,
    `dtype` and `device`, where given, replace the params' (the user's choice).

    The device is the compress job's (it decides the factorisations' precision); a table's
    precision follows the sensitivity job's, so the two must agree. The calibration job's
    device and the batch sizes change only round-off, which no manifest records."""
    from svdzoo.commands.compress import parse_options
    from svdzoo.config import LOCAL_SOURCES, method_requirements, model_arg, option_flags
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
    out: dict[str, Any] = {"model": path}
    for section, taken in TAKEN.items():
        for flag, value in (params.get(section) or {}).items():
            if flag in taken:
                out[taken[flag]] = value
            elif flag != "dtype" and flag not in IGNORED[section]:
                _check_other(section, flag, value, needs)
    # the jobs this method's statistics come from, and the compress job itself
    jobs = ["calibration"] if needs else []  # every statistics product reads the calibration set
    jobs += [*(["sensitivity"] if tables else []), "compress"]
    out["dtype"] = dtype or _one_dtype(params, jobs)
    out["device"] = device or _compress_device(params, tables)
    # as the workflow hands them over: `--option KEY=VALUE` text, read back as YAML
    out["options"] = parse_options(option_flags(params, method)[1::2])
    return out


def _one_dtype(params: Mapping[str, Any], jobs: list[str]) -> str:
    dtypes = {s: (params.get(s) or {}).get("dtype", DEFAULT_DTYPE) for s in jobs}
    if len(set(dtypes.values())) > 1:
        raise ConfigError(
            "the params load the model in "
            + ", ".join(f"{v} for {s}" for s, v in dtypes.items())
            + "; calibrate-compress loads it once, in one dtype: give --dtype to use one "
            "for all (the workflow's own caches are then not this request's)"
        )
    return dtypes["compress"]


def _compress_device(params: Mapping[str, Any], tables: bool) -> str:
    execution = params.get("execution") or {}
    device = str((execution.get("compress") or {}).get("device", "auto"))
    if tables:
        from svdzoo.models import resolve_device

        probes = str((execution.get("sensitivity") or {}).get("device", "auto"))
        if resolve_device(probes).type != resolve_device(device).type:
            raise ConfigError(
                f"the params probe the sensitivity tables on {probes} and compress on "
                f"{device}, and a table's precision follows its device; calibrate-compress "
                "runs both on one: give --device"
            )
    return device


def check_corpus_path(corpus: str, root: str | Path) -> None:
    """A corpus file the params name is relative to the workflow's root, and its path as
    given names its statistics (`paths.calib_tag`): from another directory the command
    would read another file (or none) under the workflow's cache names, and rewritten to
    reach the root's file, the workflow's caches would not be found. Refused unless the
    path reaches the root's file from here."""
    from svdzoo.data import is_corpus_file

    path, there = Path(corpus), Path(root) / corpus
    if not is_corpus_file(corpus) or path.is_absolute() or not there.is_file():
        return
    if not path.is_file() or path.resolve() != there.resolve():
        raise ConfigError(
            f"calibration.corpus {corpus} is a path relative to the workflow's root "
            f"{root}: run this command from there (cd {root}), as the workflow does"
        )


def _check_other(section: str, flag: str, value: Any, needs: frozenset[str]) -> None:
    """A flag the one command does not take: fine where it cannot matter to this method,
    refused where it would change the statistics."""
    if section == "calibration" and flag == "fisher-batch-size":
        if "fisher" not in needs or int(value) == 1:
            return
        why = f"Fisher is summed over batches of {value} (calibrate-compress: per sample)"
    else:
        why = f"{section}.{flag} changes what the job computes"
    raise ConfigError(
        f"the params cannot be mirrored by calibrate-compress: {why}; run the workflow "
        "(snakemake / dvc repro), or the steps svdzoo calibrate, sensitivity and compress"
    )
