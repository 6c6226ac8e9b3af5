"""Collect every per-run JSON into one tidy table: model, method, ratio, metric, dataset,
value, stderr (one row per model x method x ratio x metric x corpus/task).

Runs are found under the results directory with the layout of `svdzoo.paths.Layout`
(`metrics/<model>/<method>/r<ratio>/{ppl,zeroshot,efficiency}.json`, compressed manifests
under `compressed/<model>/<method>/r<ratio>/`). Labels come from the path, which the
layout makes authoritative; a JSON whose own labels disagree is reported in the log.

Metric names (column `metric`; `dataset` is `-` where none applies):
- `perplexity` per corpus; `acc`, `acc_norm` per task, and `acc` for dataset `mean`
- `params_total`, `params_targets`, `weight_bytes`, `peak_memory_bytes`,
  `compression_time_s`; `prefill_tokens_per_s`, `decode_tokens_per_s` per `bs<N>`
- from manifests: `achieved_ratio` (targeted linears), `model_achieved_ratio` (whole
  model), and `compression_time_s` when efficiency.json has none
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from svdzoo.errors import SvdzooError
from svdzoo.io import not_there, read_json_object
from svdzoo.paths import Layout, ratio_tag

log = logging.getLogger(__name__)

COLUMNS = ["model", "method", "ratio", "metric", "dataset", "value", "stderr"]
KINDS = ("ppl", "zeroshot", "efficiency")
NO_DATASET = "-"
LOWER_IS_BETTER = {
    "perplexity",
    "params_total",
    "params_targets",
    "weight_bytes",
    "peak_memory_bytes",
    "compression_time_s",
}


class MetricsError(SvdzooError, ValueError):
    pass


def _under_results(path: Path) -> tuple[str, ...]:
    """Parts of a Layout path below `results/`, so any directory can play `results`."""
    return path.relative_to(Layout(Path("/__root__")).results).parts


def metric_file(results_dir: Path, kind: str, model: str, method: str, ratio: float) -> Path:
    """Where `kind` (ppl/zeroshot/efficiency) of a run lives under `results_dir`."""
    layout = Layout(Path("/__root__"))
    fn = {"ppl": layout.ppl, "zeroshot": layout.zeroshot, "efficiency": layout.efficiency}[kind]
    return Path(results_dir, *_under_results(fn(model, method, ratio)))


def manifest_file(results_dir: Path, model: str, method: str, ratio: float) -> Path:
    layout = Layout(Path("/__root__"))
    return Path(results_dir, *_under_results(layout.compressed_manifest(model, method, ratio)))


def _glob_pattern(path_fn) -> tuple[str, int, int, int]:
    """Turn a Layout path function into a glob and the indices of model/method/ratio."""
    parts = list(_under_results(path_fn("__M__", "__X__", 0.0)))
    im, ix, ir = parts.index("__M__"), parts.index("__X__"), parts.index("r0.00")
    parts[im] = parts[ix] = "*"
    parts[ir] = "r*"
    return "/".join(parts), im, ix, ir


def _parse_ratio(tag: str) -> float | None:
    """`r0.40 -> 0.4`; None for anything but the layout's own tag (`ratio_tag`): `r0.4`
    beside `r0.40` would be one run twice (one silently replacing the other), `rnan` no
    ratio at all."""
    try:
        ratio = float(tag[1:]) if tag.startswith("r") else None
    except ValueError:
        return None
    if ratio is None or not math.isfinite(ratio) or ratio_tag(ratio) != tag:
        return None
    return ratio


@dataclass
class Run:
    model: str
    method: str
    ratio: float
    files: dict[str, Path] = field(default_factory=dict)  # kind -> existing file
    manifest: Path | None = None


def discover(results_dir: str | Path) -> dict[tuple[str, str, float], Run]:
    """Every run with at least one metric file, keyed by (model, method, ratio)."""
    results_dir = Path(results_dir)
    layout = Layout(Path("/__root__"))
    runs: dict[tuple[str, str, float], Run] = {}
    for kind, fn in (
        ("ppl", layout.ppl),
        ("zeroshot", layout.zeroshot),
        ("efficiency", layout.efficiency),
    ):
        pattern, im, ix, ir = _glob_pattern(fn)
        for path in sorted(results_dir.glob(pattern)):
            parts = path.relative_to(results_dir).parts
            ratio = _parse_ratio(parts[ir])
            if ratio is None:
                log.warning("skipping %s: %r is not a ratio tag like r0.40", path, parts[ir])
                continue
            key = (parts[im], parts[ix], ratio)
            run = runs.setdefault(key, Run(*key))
            run.files[kind] = path
    for (model, method, ratio), run in runs.items():
        mpath = manifest_file(results_dir, model, method, ratio)
        if mpath.exists():
            run.manifest = mpath
    return runs


def _sealed(path: Path) -> dict:
    """A compressed model's manifest, refused when edited after it was written (its
    `manifest_sha256`; manifests of svdzoo before the seal carry none and are read as
    they are): an edited ratio or allocation went into the tables and heatmaps."""
    from svdzoo.calibration.cache import SEAL, check_seal

    obj = _read(path)
    if SEAL in obj:
        check_seal(obj, str(path), "re-run the compress stage that writes it")
    return obj


def _read(path: Path) -> dict:
    return read_json_object(
        path, MetricsError, "re-run the stage that writes it", kind="a metric file"
    )


def _need(obj: dict, key: str, path: Path, kind: type = object):
    if key not in obj:
        raise MetricsError(f"{path}: missing key {key!r}")
    return _kind(obj[key], kind, path, key)


def _kind(x, kind: type, path: Path, where: str):
    """`x` if it is a `kind` (a dict of corpora, a list of throughput rows); a string or
    number there raised an AttributeError from deep inside the reader."""
    if not isinstance(x, kind):
        want = {dict: "an object", list: "a list"}.get(kind, kind.__name__)
        raise MetricsError(
            f"{path}: {where} should be {want}, found {json.dumps(x)[:60]}; "
            "re-run the stage that writes it"
        )
    return x


def _value(x, path: Path, where: str, low: float = -math.inf, high: float = math.inf) -> float:
    """A metric value: a number in [low, high], or null (not measured, or diverged). A
    string ("abc") used to become NaN silently, a negative perplexity a table row."""
    if x is None:
        return math.nan
    if isinstance(x, bool) or not isinstance(x, int | float):
        raise MetricsError(
            f"{path}: {where} is {json.dumps(x)[:60]}, not a number; "
            "re-run the stage that writes it"
        )
    v = float(x)
    if not low <= v <= high and not math.isnan(v):
        raise MetricsError(
            f"{path}: {where} is {v:g}, outside [{low:g}, {high:g}]; "
            "re-run the stage that writes it"
        )
    return v


def _num(x) -> float:
    if x is None:
        return math.nan
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def _check_labels(obj: dict, run: Run, path: Path) -> None:
    """A file at another run's path: its model name may differ (`evaluate --model-name`),
    a warning; another method or ratio is an error (svd-llm's r0.40 copied to r0.50 made a
    second svd-llm row at 0.50 with the 0.40 numbers)."""
    for key, want in (("model", run.model), ("method", run.method), ("ratio", run.ratio)):
        got = obj.get(key)
        if got is None:
            continue
        same = abs(_num(got) - want) < 5e-3 if key == "ratio" else got == want
        if same:
            continue
        if key == "model":
            log.warning(
                "%s says %s=%r but sits at %s=%r; using the path", path, key, got, key, want
            )
        else:
            raise MetricsError(
                f"{path} says {key}={got!r} but sits at {key}={want!r}: it is another run's "
                "file; move it back, or evaluate this run again"
            )


def _check_measured(obj: dict, manifest: dict | None, path: Path, where: Path | None) -> None:
    """A metric file measured on another compressed model than the one now at its run's
    path (compressed again, not evaluated again) is refused: its numbers would sit beside
    the new manifest's ratios. Files from before evaluate recorded this are read as they are."""
    measured = obj.get("compressed_manifest_sha256")
    now = (manifest or {}).get("manifest_sha256")
    if measured and now and measured != now:
        raise MetricsError(
            f"{path} was measured on an earlier compressed model than the one at {where.parent} "
            f"(manifest_sha256 {measured[:12]}, now {now[:12]}); re-run `svdzoo evaluate` on it"
        )


# what must agree among one model's runs for their numbers to be compared: perplexity's
# windows, the zero-shot tasks with their sample counts (a mean over other tasks), the
# dtype, and where and how efficiency was measured (bfloat16 halves the weight bytes of
# any model; another device changes every time). Files without a key (written before it
# was recorded) are not compared on it. The thread count is recorded, not compared: DVC
# runs its stages on torch's default threads and Snakemake on the rule's, so one
# project's evaluations legitimately mix them.
_SETTINGS = {
    "ppl": ("seqlen", "n_windows", "window_prefix", "dtype"),
    "zeroshot": ("n_samples", "task_names", "dtype"),
    "efficiency": ("device", "dtype", "prompt_len", "gen_len", "prefill_logits"),
}


def _check_settings(seen: dict, kind: str, obj: dict, path: Path) -> None:
    if kind == "zeroshot" and isinstance(obj.get("tasks"), dict):
        # the task set itself: a file without `n_samples` (an older one) missing a task was
        # compared by a mean over other tasks
        obj = {**obj, "task_names": sorted(obj["tasks"])}
    for key in _SETTINGS.get(kind, ()):
        if key not in obj:
            continue
        first = seen.setdefault((kind, key), (path, obj[key]))
        if first[1] != obj[key]:
            raise MetricsError(
                f"{path} and {first[0]} were evaluated differently ({key}: "
                f"{json.dumps(obj[key])[:80]} vs {json.dumps(first[1])[:80]}), so their "
                "numbers cannot be compared; re-run `svdzoo evaluate` on one with the other's "
                "settings (an execution setting such as the device reruns "
                "nothing by itself in the workflow: force the evaluations, e.g. `snakemake "
                "--forcerun evaluate evaluate_dense`)"
            )


def _rows_ppl(obj: dict, path: Path) -> Iterable[tuple]:
    diverged = set(_kind(obj.get("diverged") or [], list, path, "diverged"))
    for corpus, v in _need(obj, "perplexity", path, dict).items():
        # perplexity = exp(mean negative log-likelihood) >= 1
        value = math.inf if corpus in diverged else _value(v, path, f"perplexity.{corpus}", 1.0)
        yield "perplexity", corpus, value, math.nan


def _rows_zeroshot(obj: dict, path: Path) -> Iterable[tuple]:
    for task, vals in _need(obj, "tasks", path, dict).items():
        _kind(vals, dict, path, f"tasks.{task}")
        acc = [_value(vals.get(k), path, f"tasks.{task}.{k}", 0.0, 1.0) for k in _ACC_KEYS]
        yield "acc", task, acc[0], acc[1]
        if vals.get("acc_norm") is not None:
            yield "acc_norm", task, acc[2], acc[3]
    if obj.get("mean_acc") is not None:
        yield "acc", "mean", _value(obj["mean_acc"], path, "mean_acc", 0.0, 1.0), math.nan


_ACC_KEYS = ("acc", "acc_stderr", "acc_norm", "acc_norm_stderr")


_EFF_SCALARS = (
    "params_total",
    "params_targets",
    "weight_bytes",
    "peak_memory_bytes",
    "compression_time_s",
)


def _rows_efficiency(obj: dict, path: Path) -> Iterable[tuple]:
    for key in _EFF_SCALARS:
        if obj.get(key) is not None:
            yield key, NO_DATASET, _value(obj[key], path, key, 0.0), math.nan
    for i, row in enumerate(_kind(obj.get("throughput", []), list, path, "throughput")):
        where = f"throughput[{i}]"
        _kind(row, dict, path, where)
        bs = f"bs{int(_value(_need(row, 'batch_size', path), path, f'{where}.batch_size', 1))}"
        for key in ("prefill_tokens_per_s", "decode_tokens_per_s"):
            if row.get(key) is not None:
                yield key, bs, _value(row[key], path, f"{where}.{key}", 0.0), math.nan


def _rows_manifest(obj: dict, path: Path) -> Iterable[tuple]:
    if obj.get("achieved_ratio") is not None:
        yield "achieved_ratio", NO_DATASET, _num(obj["achieved_ratio"]), math.nan
    dense, comp = obj.get("model_params_dense"), obj.get("model_params_compressed")
    if dense and comp is not None:
        yield "model_achieved_ratio", NO_DATASET, 1.0 - _num(comp) / _num(dense), math.nan
    if obj.get("compression_time_s") is not None:
        yield "compression_time_s", NO_DATASET, _num(obj["compression_time_s"]), math.nan


_READERS = {"ppl": _rows_ppl, "zeroshot": _rows_zeroshot, "efficiency": _rows_efficiency}


def missing_files(
    runs: dict[tuple[str, str, float], Run], kinds: Iterable[str] = KINDS
) -> list[Path]:
    """Metric files a run lacks although other runs of the tree have that kind: partial
    results (a crashed or still-running job), not a deliberate choice of metrics."""
    present = {k for run in runs.values() for k in run.files}
    wanted = [k for k in kinds if k in present]
    out = []
    for run in runs.values():
        any_file = next(iter(run.files.values()))
        for k in wanted:
            if k not in run.files:
                out.append(any_file.with_name(f"{k}.json"))
    return sorted(out)


def collect(
    results_dir: str | Path,
    *,
    expected: Iterable[str | Path] | None = None,
    require_complete: bool = False,
) -> pd.DataFrame:
    """The tidy table of every run under `results_dir`.

    `expected`: metric files that must exist (e.g. Snakemake's inputs); any missing is an
    error naming them all. Otherwise runs are globbed, and runs lacking a kind that other
    runs have are listed in a warning (an error with `require_complete`).
    """
    results_dir = Path(results_dir)
    if expected is not None:
        expected = [Path(p) for p in expected]
        absent = [p for p in expected if not p.exists()]
        if absent:
            raise MetricsError(
                f"{len(absent)} expected metric file(s) missing:\n  "
                + "\n  ".join(map(str, absent))
            )
    if not results_dir.is_dir():
        raise MetricsError(f"results directory {results_dir} {not_there(results_dir, 'directory')}")
    runs = discover(results_dir)
    if not runs:
        example = metric_file(results_dir, "ppl", "<model>", "<method>", 0.4)
        raise MetricsError(f"no metric files under {results_dir} (expected files like {example})")
    partial = missing_files(runs)
    if partial:
        msg = (
            f"{len(partial)} metric file(s) missing for runs that have other metrics:\n  "
            + "\n  ".join(map(str, partial))
        )
        if require_complete:
            raise MetricsError(msg)
        log.warning("%s", msg)
    rows = []
    settings: dict[str, dict[tuple[str, str], tuple[Path, object]]] = {}
    for (model, method, ratio), run in sorted(runs.items()):
        seen_time = False
        manifest, manifest_path = None, run.manifest
        current = _sealed(run.manifest) if run.manifest is not None else None
        if current is not None:
            _check_labels(current, run, run.manifest)  # it names no model: method, ratio
        for kind, path in sorted(run.files.items()):
            obj = _read(path)
            _check_labels(obj, run, path)
            _check_measured(obj, current, path, run.manifest)
            _check_settings(settings.setdefault(model, {}), kind, obj, path)
            if kind == "efficiency" and isinstance(obj.get("manifest"), dict):
                manifest, manifest_path = obj["manifest"], path  # the model may be deleted
            for metric, dataset, value, stderr in _READERS[kind](obj, path):
                seen_time |= metric == "compression_time_s"
                rows.append((model, method, ratio, metric, dataset, value, stderr))
        if current is not None:
            manifest, manifest_path = current, run.manifest
        if manifest is not None:
            for metric, dataset, value, stderr in _rows_manifest(manifest, manifest_path):
                if metric == "compression_time_s" and seen_time:
                    continue
                rows.append((model, method, ratio, metric, dataset, value, stderr))
    df = pd.DataFrame(rows, columns=COLUMNS)
    return df.sort_values(
        ["model", "method", "ratio", "metric", "dataset"], kind="stable"
    ).reset_index(drop=True)


def load_manifests(results_dir: str | Path) -> dict[tuple[str, str, float], dict]:
    """Every compressed manifest under `results_dir`, keyed by (model, method, ratio); for a
    run whose compressed model is gone, the manifest summary its efficiency.json kept."""
    results_dir = Path(results_dir)
    layout = Layout(Path("/__root__"))
    pattern, im, ix, ir = _glob_pattern(layout.compressed_manifest)
    out = {}
    for path in sorted(results_dir.glob(pattern)):
        parts = path.relative_to(results_dir).parts
        ratio = _parse_ratio(parts[ir])
        if ratio is not None:
            out[(parts[im], parts[ix], ratio)] = _sealed(path)
    # a compressed model deleted once evaluated (keep_compressed: false) left its
    # allocation in efficiency.json
    pattern, im, ix, ir = _glob_pattern(layout.efficiency)
    for path in sorted(results_dir.glob(pattern)):
        parts = path.relative_to(results_dir).parts
        ratio = _parse_ratio(parts[ir])
        key = (parts[im], parts[ix], ratio)
        if ratio is not None and key not in out:
            summary = _read(path).get("manifest")
            if isinstance(summary, dict):
                out[key] = summary
    return out


def write_tidy(df: pd.DataFrame, path: str | Path) -> None:
    from svdzoo.io import atomic_path

    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, float_format="%.10g")
