"""The report's two small outputs for DVC: one summary metrics file and the plot data.

`results/summary.json` holds the headline numbers of every run, model -> method -> ratio
(`r0.40`; the dense model is `dense` / `r0.00`) -> metric, so `dvc metrics diff` and
`dvc exp show` compare experiments on a few readable columns instead of hundreds of per-job
files. `results/plots/<model>/<metric>.csv` has one row per ratio and one column per
method (each series starts at the dense model's value at ratio 0): the data of the paper
figures, which dvc.yaml declares as plots with `x: ratio` (svdzoo.dvc_render). The metric
names come from the params alone (`plot_metrics`), so dvc.yaml can be rendered before any
result exists.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from svdzoo.io import write_text
from svdzoo.paths import DENSE, PLOTS, ratio_tag

ACC = "acc"  # mean zero-shot accuracy over the configured tasks


def plot_metrics(corpora: Iterable[str], has_tasks: bool) -> list[str]:
    """Headline metric names: `ppl-<corpus>` per evaluation corpus, `acc` with tasks."""
    return [f"ppl-{c}" for c in corpora] + ([ACC] if has_tasks else [])


def plot_file(results: str | Path, model: str, metric: str) -> Path:
    """`plots/<model>/<metric>.csv`, the metric made a file name: a corpus given by path
    (`ppl-../../corpus.txt`) wrote outside the report's folder."""
    name = re.sub(r"[^A-Za-z0-9_.+-]+", "_", metric).lstrip(".")
    return Path(results) / PLOTS / model / f"{name}.csv"


def _headline(tidy: pd.DataFrame) -> pd.DataFrame:
    """model, method, ratio, metric, value of the headline metrics only."""
    ppl = tidy[tidy.metric == "perplexity"].assign(name=lambda d: "ppl-" + d.dataset)
    acc = tidy[(tidy.metric == "acc") & (tidy.dataset == "mean")].assign(name=ACC)
    out = pd.concat([ppl, acc], ignore_index=True)
    return out[["model", "method", "ratio", "name", "value"]]


def _number(x: float) -> float | None:
    """JSON-safe (a diverged perplexity is null), six significant digits."""
    x = float(x)
    return float(f"{x:.6g}") if math.isfinite(x) else None


def summary(tidy: pd.DataFrame) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for row in _headline(tidy).itertuples(index=False):
        ratio = ratio_tag(0.0 if row.method == DENSE else float(row.ratio))
        run = out.setdefault(row.model, {}).setdefault(row.method, {}).setdefault(ratio, {})
        run[row.name] = _number(row.value)
    return out


def write_summary(tidy: pd.DataFrame, path: str | Path) -> Path:
    write_text(path, json.dumps(summary(tidy), indent=1, sort_keys=True) + "\n")
    return Path(path)


def plot_frames(tidy: pd.DataFrame) -> dict[tuple[str, str], pd.DataFrame]:
    """(model, metric) -> ratio x method table, every method's series starting at dense."""
    head = _headline(tidy)
    frames: dict[tuple[str, str], pd.DataFrame] = {}
    for (model, name), part in head.groupby(["model", "name"], sort=True):
        dense = part[part.method == DENSE]
        runs = part[part.method != DENSE]
        if runs.empty:
            continue
        wide = runs.pivot_table(index="ratio", columns="method", values="value", aggfunc="first")
        if not dense.empty:
            wide.loc[0.0] = float(dense.value.iloc[0])
        wide = wide.sort_index().replace([math.inf, -math.inf], math.nan)
        wide.index = [f"{r:.2f}" for r in wide.index]
        wide.index.name = "ratio"
        wide.columns.name = None
        frames[(str(model), str(name))] = wide
    return frames


def write_plot_data(tidy: pd.DataFrame, results: str | Path) -> list[Path]:
    """Write every plot table. `build_report` removes the tables an earlier report wrote
    for metrics no longer reported (it records them; any CSV under plots/ went before)."""
    written = []
    for (model, name), frame in plot_frames(tidy).items():
        path = plot_file(results, model, name)
        write_text(path, frame.to_csv(float_format="%.6g"))
        written.append(path)
    return written


def expected_runs(params: Mapping[str, Any]) -> list[tuple[str, str, float]]:
    """(model, method, ratio) of every run a params file asks for, dense included."""
    ratios = [float(r) for r in params["ratios"]]
    return [
        (model, method, ratio)
        for model in params["models"]
        for method, ratio in [(DENSE, 0.0)] + [(m, r) for m in params["methods"] for r in ratios]
    ]
