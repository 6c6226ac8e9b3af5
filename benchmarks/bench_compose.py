"""Issue 18: svdzoo's compositions against every paper method on the real model, with the
selection made on one corpus and the claim checked on the other.

Reads the workflow's own results (`snakemake --cores all --config
params=workflow/configs/compose.yaml`, or `--run` here). The candidates are the methods
named `svdzoo-*` in the params; the one with the lowest mean log perplexity on
`--select-on` (default pysource, which calibration never sees) over the ratios is chosen,
and reported on `--report-on` (pydoc) and the zero-shot tasks. Paper methods the config
does not run (`duo-svd` with its per-ratio tables) come from `--extra`, a CSV in this
format (default: the fidelity benchmark's, same calibration and evaluation), marked as
such. A second calibration seed, run in another project directory with the same config
but `calibration.seed` changed, is added with `--seed-results DIR --seed N`.

    benchmarks/results/compose.csv  long: model, method, ratio, metric, dataset, value, seed
    benchmarks/results/compose.md   the tables, the selection, the goal, each marked
    benchmarks/results/compose.png  perplexity vs ratio, both corpora

    python benchmarks/bench_compose.py --results /path/to/project/results
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pandas as pd  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_methods import run_workflow  # noqa: E402

from svdzoo.config import load_params, ratios  # noqa: E402
from svdzoo.io import write_text  # noqa: E402
from svdzoo.report.metrics import collect  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
MODEL = "smollm2-135m"
PAPER_METHODS = ("svd", "fwsvd", "asvd", "svd-llm", "svd-llm-v2", "adasvd", "ressvd", "duo-svd")
# the paper methods each candidate borrows its parts from (its time budget: 2x the slowest)
COMBINES = ("adasvd", "duo-svd", "duo-svd-independent")
GOAL_RATIOS = (0.4, 0.6)
METRICS = ("perplexity", "acc", "compression_time_s", "achieved_ratio")


def tidy(results: Path, params: dict, seed: int) -> pd.DataFrame:
    df = collect(results)
    keep = (
        (df["model"] == MODEL)
        & df["method"].isin(set(params["methods"]) | {"dense"})
        & (df["ratio"].isin(ratios(params)) | (df["method"] == "dense"))
        & df["metric"].isin(METRICS)
        & ((df["metric"] != "acc") | (df["dataset"] == "mean"))
    )
    out = df[keep][["model", "method", "ratio", "metric", "dataset", "value"]].copy()
    out["seed"] = seed
    return out.reset_index(drop=True)


def extra_rows(path: Path, methods: list[str], seed: int) -> pd.DataFrame:
    """Rows for paper methods the config does not run, from a fidelity-format CSV
    (method, ratio, pydoc, pysource, achieved, compress_s)."""
    if not path.is_file():
        return pd.DataFrame()
    src = pd.read_csv(path)
    rows = []
    for _, r in src[src["method"].isin(methods)].iterrows():
        for corpus in ("pydoc", "pysource"):
            rows.append((MODEL, r["method"], r["ratio"], "perplexity", corpus, r[corpus], seed))
        rows.append((MODEL, r["method"], r["ratio"], "compression_time_s", "-", r["compress_s"], seed))  # fmt: skip
    return pd.DataFrame(rows, columns=["model", "method", "ratio", "metric", "dataset", "value", "seed"])  # fmt: skip


def value(df: pd.DataFrame, method: str, ratio: float, metric: str, dataset: str) -> float | None:
    s = df[
        (df.method == method)
        & (df.metric == metric)
        & (df.dataset == dataset)
        & (((df.ratio - ratio).abs() < 1e-9) | (df.method == "dense"))
    ]["value"]
    return float(s.iloc[0]) if len(s) else None


def choose(
    df: pd.DataFrame, candidates: list[str], rs: list[float], corpus: str
) -> tuple[str, dict]:
    """The candidate with the lowest mean log perplexity on `corpus` over `rs`."""
    score = {}
    for c in candidates:
        vals = [value(df, c, r, "perplexity", corpus) for r in rs]
        if None not in vals:
            score[c] = sum(math.log(v) for v in vals) / len(vals)  # type: ignore[arg-type]
    if not score:
        sys.exit(f"no candidate has {corpus} perplexity at every ratio {rs}")
    return min(score, key=score.get), score  # type: ignore[arg-type]


def table(df: pd.DataFrame, methods: list[str], r: float, corpora: list[str]) -> list[str]:
    head = "| method | " + " | ".join(f"ppl {c}" for c in corpora) + " | zero-shot | time s |"
    lines = [head, "|---|" + "---:|" * (len(corpora) + 2)]
    for m in ["dense", *methods]:
        ppl = [value(df, m, r, "perplexity", c) for c in corpora]
        if all(v is None for v in ppl):
            continue
        acc = value(df, m, r, "acc", "mean")
        t = value(df, m, r, "compression_time_s", "-")
        cells = [f"{v:,.2f}" if v is not None else "" for v in ppl]
        cells += [f"{acc:.3f}" if acc is not None else "", f"{t:.0f}" if t is not None else ""]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return lines


def goal(df: pd.DataFrame, pick: str, corpus: str, methods: list[str]) -> list[str]:
    out = ["| ratio | " + pick + f" {corpus} | best paper method | its {corpus} | lower? | time s | 2x slowest combined (s) | within? |", "|---|---:|---|---:|---|---:|---:|---|"]  # fmt: skip
    for r in GOAL_RATIOS:
        mine = value(df, pick, r, "perplexity", corpus)
        papers = {m: value(df, m, r, "perplexity", corpus) for m in PAPER_METHODS if m in methods}
        papers = {m: v for m, v in papers.items() if v is not None}
        if mine is None or not papers:
            continue
        best = min(papers, key=papers.get)  # type: ignore[arg-type]
        t = value(df, pick, r, "compression_time_s", "-")
        slow = [value(df, m, r, "compression_time_s", "-") for m in COMBINES]
        cap = (
            2 * max(s for s in slow if s is not None) if any(s is not None for s in slow) else None
        )
        out.append(
            f"| {r:.0%} | {mine:,.2f} | {best} | {papers[best]:,.2f} | "
            f"{'yes' if mine < papers[best] else 'NO'} | {t:.0f} | "
            f"{cap:.0f} | {'yes' if t is not None and cap is not None and t <= cap else 'NO'} |"
            if t is not None and cap is not None
            else f"| {r:.0%} | {mine:,.2f} | {best} | {papers[best]:,.2f} | "
            f"{'yes' if mine < papers[best] else 'NO'} | | | |"
        )
    return out


def figure(df: pd.DataFrame, methods: list[str], candidates: list[str], corpora: list[str], out: Path) -> None:  # fmt: skip
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(corpora), figsize=(5.8 * len(corpora), 4.4), squeeze=False)
    ppl = df[(df.metric == "perplexity") & (df.seed == df.seed.min())]
    colours = plt.get_cmap("tab10").colors
    for ax, corpus in zip(axes[0], corpora, strict=True):
        sub = ppl[ppl.dataset == corpus]
        for i, m in enumerate(methods):
            s = sub[sub.method == m].sort_values("ratio")
            if s.empty or s["value"].max() > 1e4:  # plain SVD/FWSVD collapse: off the scale
                continue
            mine = m in candidates
            ax.plot(
                s.ratio * 100, s.value, marker="o", lw=2.5 if mine else 1.2,
                ls="-" if mine else "--", color=colours[i % 10], label=m,
            )  # fmt: skip
        dense = sub[sub.method == "dense"]["value"]
        if len(dense):
            ax.axhline(float(dense.iloc[0]), color="k", lw=0.8, ls=":", label="dense")
        ax.set_yscale("log")
        ax.set_title(f"{MODEL}: {corpus} perplexity")
        ax.set_xlabel("parameters removed (%)")
        ax.set_ylabel("perplexity (log)")
        ax.grid(alpha=0.3, which="both")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 0.84, 1))
    tmp = out.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=130)
    plt.close(fig)
    tmp.replace(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=Path, default=ROOT / "workflow" / "configs" / "compose.yaml")
    ap.add_argument("--results", type=Path, default=ROOT / "results")
    ap.add_argument("--seed", type=int, default=None, help="calibration seed of --results (default: the params')")  # fmt: skip
    ap.add_argument("--seed-results", type=Path, default=None, help="results of a second calibration seed")  # fmt: skip
    ap.add_argument("--second-seed", type=int, default=None)
    ap.add_argument("--extra", type=Path, default=RESULTS / "fidelity.csv")
    ap.add_argument("--select-on", default="pysource")
    ap.add_argument("--report-on", default="pydoc")
    ap.add_argument("--out", type=Path, default=RESULTS / "compose")
    ap.add_argument("--run", action="store_true", help="run the workflow first")
    ap.add_argument("--cores", default="all")
    args = ap.parse_args(argv)

    params = load_params(args.params)
    if args.run:
        run_workflow(args.params.resolve(), args.cores)
    seed = args.seed if args.seed is not None else int(params["calibration"]["seed"])
    methods = list(params["methods"])
    candidates = [m for m in methods if m.startswith("svdzoo-")]
    missing = [m for m in PAPER_METHODS if m not in methods]
    df = pd.concat([tidy(args.results, params, seed), extra_rows(args.extra, missing, seed)])
    shown = [*PAPER_METHODS, *(m for m in methods if m not in PAPER_METHODS)]
    shown = [m for m in shown if m in set(df.method)]
    rs = [float(r) for r in ratios(params)]
    corpora = list(params["evaluation"]["corpora"])
    pick, score = choose(df[df.seed == seed], candidates, rs, args.select_on)
    lines = [
        f"# svdzoo's compositions against the paper methods ({MODEL})",
        "",
        f"Params: `{args.params.name}` (calibration {params['calibration']}); perplexity on"
        f" {params['evaluation'].get('max-windows')} x {params['evaluation']['seqlen']} test"
        " tokens per corpus; zero-shot: mean accuracy over the offline tasks; time: `svdzoo"
        " compress` wall time (shared statistics excluded; jobs ran two at a time on 2 cores).",
        f"Rows for {', '.join(m for m in missing if m in set(df.method)) or 'none'} come from"
        f" `{args.extra.name}` (same calibration and evaluation, run with the CLI), not from"
        " this run.",
        "",
        f"## Selection on {args.select_on} (mean log perplexity over {', '.join(f'{r:.0%}' for r in rs)})",  # fmt: skip
        "",
        *(
            f"- `{c}`: {math.exp(s):,.2f} (geometric mean)"
            for c, s in sorted(score.items(), key=lambda x: x[1])
        ),  # fmt: skip
        "",
        f"Chosen: **`{pick}`**. Everything below reports it on {args.report_on} and the"
        " zero-shot tasks, which played no part in the choice.",
        "",
        f"## The goal: at 40 % and 60 %, lower {args.report_on} perplexity than every paper method, in at most 2x the slowest combined method's time",  # fmt: skip
        "",
        *goal(df[df.seed == seed], pick, args.report_on, shown),
        "",
    ]
    for r in rs:
        lines += [
            f"## {r:.0%} (seed {seed})",
            "",
            *table(df[df.seed == seed], shown, r, corpora),
            "",
        ]
    if args.seed_results is not None:
        second = args.second_seed if args.second_seed is not None else seed + 1
        df2 = tidy(args.seed_results, params, second)
        df = pd.concat([df, df2])
        shown2 = [m for m in shown if m in set(df2.method)]
        lines += [f"## Second calibration seed ({second})", ""]
        for r in sorted(set(df2[df2.method != "dense"].ratio)):
            lines += [f"### {r:.0%}", "", *table(df2, shown2, r, corpora), ""]
    lines += [f"![perplexity vs ratio]({args.out.with_suffix('.png').name})", ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text(args.out.with_suffix(".csv"), df.to_csv(index=False))
    write_text(args.out.with_suffix(".md"), "\n".join(lines))
    figure(df, shown, candidates, corpora, args.out.with_suffix(".png"))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
