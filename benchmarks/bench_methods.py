"""Every method and ablation on the reference models: perplexity per offline corpus and
compression time, per ratio, from the real workflow.

The numbers come from the pipeline itself (no separate code path): `--run` executes
`snakemake --cores all --config params=<params>` and times it; the script then reads the
per-run JSONs under `results/` (via `svdzoo.report.metrics.collect`), keeps the models,
methods and ratios the params file names, and writes

    benchmarks/results/methods.csv   tidy: model, method, ratio, metric, dataset, value
    benchmarks/results/methods.md    one table per model: ppl per corpus and time per ratio
    benchmarks/results/methods.png   perplexity vs ratio, method families in one colour

Compression time is the `svdzoo compress` wall time of that one model x method x ratio;
the shared statistics (Gram, Fisher, sensitivity tables) are computed once per model and
are not in it (their time is in `results/logs/`).

    python benchmarks/bench_methods.py --run                      # ablations.yaml, all 17
    python benchmarks/bench_methods.py --params params.yaml       # tabulate what exists
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pandas as pd  # noqa: E402

from svdzoo.config import load_params, ratios  # noqa: E402
from svdzoo.io import write_text  # noqa: E402
from svdzoo.report.metrics import collect  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_PARAMS = ROOT / "workflow" / "configs" / "ablations.yaml"


def family_of(method: str) -> str:
    """The seed method an ablation belongs to (ablations are named <method>-<part>)."""
    for base in ("svd-llm-v2", "adasvd", "ressvd", "duo-svd", "asvd", "fwsvd", "svd-llm"):
        if method == base or method.startswith(base + "-"):
            return base
    return method


def run_workflow(params: Path, cores: str) -> float:
    # The rules call `svdzoo` and this calls `snakemake`: take both from the environment this
    # script runs in, activated or not (`.venv/bin/python benchmarks/bench_methods.py --run`).
    bindir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": bindir + os.pathsep + os.environ.get("PATH", "")}
    cmd = ["snakemake", "--cores", cores, "--config", f"params={params}"]
    print("running:", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True, env=env)
    return time.perf_counter() - t0


def select(df: pd.DataFrame, params: dict) -> pd.DataFrame:
    wanted = set(params["methods"]) | {"dense"}
    keep = (
        df["model"].isin(list(params["models"]))
        & df["method"].isin(wanted)
        & (df["ratio"].isin(ratios(params)) | (df["method"] == "dense"))
        & df["metric"].isin(["perplexity", "compression_time_s", "achieved_ratio"])
    )
    return df[keep].reset_index(drop=True)


def wide(df: pd.DataFrame, model: str, methods: list[str], corpora: list[str]) -> pd.DataFrame:
    sub = df[df["model"] == model]
    cols: dict[str, pd.Series] = {}
    for r in sorted(sub.loc[sub["method"] != "dense", "ratio"].unique()):
        at = sub[sub["ratio"] == r]
        for c in corpora:
            s = at[(at["metric"] == "perplexity") & (at["dataset"] == c)]
            cols[f"{r:.0%} ppl {c}"] = s.set_index("method")["value"]
        t = at[at["metric"] == "compression_time_s"]
        cols[f"{r:.0%} time s"] = t.set_index("method")["value"]
    table = pd.DataFrame(cols).reindex(methods)
    dense = sub[(sub["method"] == "dense") & (sub["metric"] == "perplexity")]
    table.loc["dense", [k for k in cols if " ppl " in k]] = [
        dense.set_index("dataset")["value"].get(k.split(" ppl ")[1]) for k in cols if " ppl " in k
    ]
    return table


def to_markdown(table: pd.DataFrame) -> str:
    head = "| method | " + " | ".join(table.columns) + " |"
    rule = "|---|" + "---:|" * len(table.columns)
    rows = []
    for name, row in table.iterrows():
        cells = []
        for col, v in row.items():
            if pd.isna(v):
                cells.append("")
            elif "time" in col:
                cells.append(f"{v:.1f}")
            else:
                cells.append(f"{v:.2f}")
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join([head, rule, *rows])


def figure(df: pd.DataFrame, params: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models, corpora = list(params["models"]), list(params["evaluation"]["corpora"])
    fams = sorted({family_of(m) for m in params["methods"]})
    colours = dict(zip(fams, plt.get_cmap("tab10").colors, strict=False))
    fig, axes = plt.subplots(
        len(models), len(corpora), figsize=(5.5 * len(corpora), 4 * len(models)), squeeze=False
    )
    ppl = df[df["metric"] == "perplexity"]
    for i, model in enumerate(models):
        for j, corpus in enumerate(corpora):
            ax = axes[i][j]
            sub = ppl[(ppl["model"] == model) & (ppl["dataset"] == corpus)]
            for method in params["methods"]:
                s = sub[sub["method"] == method].sort_values("ratio")
                if s.empty:
                    continue
                full = family_of(method) == method
                ax.plot(
                    s["ratio"] * 100, s["value"], marker="o" if full else ".",
                    ls="-" if full else "--", lw=2 if full else 1,
                    color=colours[family_of(method)], label=method,
                )  # fmt: skip
            dense = sub[sub["method"] == "dense"]["value"]
            if len(dense):
                ax.axhline(float(dense.iloc[0]), color="k", lw=0.8, ls=":", label="dense")
            ax.set_yscale("log")
            ax.set_title(f"{model}: {corpus}")
            ax.set_xlabel("parameters removed (%)")
            ax.set_ylabel("perplexity (log)")
            ax.grid(alpha=0.3, which="both")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 0.87, 1))
    tmp = out.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=Path, default=DEFAULT_PARAMS)
    ap.add_argument("--results", type=Path, default=ROOT / "results")
    ap.add_argument("--out", type=Path, default=RESULTS / "methods")
    ap.add_argument("--run", action="store_true", help="run the workflow first (timed)")
    ap.add_argument("--cores", default="all")
    args = ap.parse_args(argv)

    params = load_params(args.params)
    wall = run_workflow(args.params.resolve(), args.cores) if args.run else None
    df = select(collect(args.results), params)
    if df.empty:
        sys.exit(f"no results for {args.params} under {args.results}: run with --run first")
    missing = sorted(
        (mo, me, r)
        for mo in params["models"]
        for me in params["methods"]
        for r in ratios(params)
        if df[(df.model == mo) & (df.method == me) & (df.ratio == r)].empty
    )

    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text(args.out.with_suffix(".csv"), df.to_csv(index=False))
    corpora = list(params["evaluation"]["corpora"])
    lines = [
        "# Every method and ablation on the reference models",
        "",
        f"Params: `{args.params.relative_to(ROOT) if args.params.is_absolute() else args.params}`"
        f" (calibration {params['calibration']}). Perplexity on the test split of each corpus"
        f" (seqlen {params['evaluation']['seqlen']}, at most"
        f" {params['evaluation'].get('max-windows', 'all')} windows); time = `svdzoo compress`"
        " wall time for that run, shared statistics excluded.",
        f"Machine: {platform.platform()}, {os.cpu_count()} CPUs."
        + (f" Workflow wall time for this run: {wall / 60:.1f} min." if wall else ""),
        "",
    ]
    if missing:
        lines += [f"Missing runs ({len(missing)}): {missing[:10]}", ""]
    for model in params["models"]:
        lines += [f"## {model}", "", to_markdown(wide(df, model, params["methods"], corpora)), ""]
    lines += [f"![perplexity vs ratio]({args.out.with_suffix('.png').name})", ""]
    write_text(args.out.with_suffix(".md"), "\n".join(lines))
    figure(df, params, args.out.with_suffix(".png"))
    meta = {"params": str(args.params), "wall_s": wall, "rows": len(df), "missing": len(missing)}
    print(json.dumps(meta))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
