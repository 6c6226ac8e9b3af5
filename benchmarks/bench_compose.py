"""Issue 18: svdzoo's compositions against every paper method on the real model, with the
selection made on one corpus and the claim checked on the other.

Reads the workflow's own results (`snakemake --cores all --config
params=workflow/configs/compose.yaml`, or `--run` here). The candidates are the methods
named `svdzoo-*` in the params; the one with the lowest mean log perplexity on
`--select-on` (default pysource, which calibration never sees) over the ratios is chosen,
and reported on `--report-on` (pydoc) and the zero-shot tasks. Paper methods the config
does not run (`duo-svd` with its per-ratio tables) come from `--extra`, a CSV in this
format (default: the fidelity benchmark's, same calibration and evaluation), marked as
such. A second calibration seed, run in another project directory with a config that changes
`calibration.seed` (workflow/configs/compose-seed4.yaml), is added with `--seed-results DIR
--seed-params workflow/configs/compose-seed4.yaml`. `--results` and `--seed-results` also
take this script's own CSV, so the report can be rebuilt after the projects are gone.

    benchmarks/results/compose.csv  long: model, method, ratio, metric, dataset, value, seed
    benchmarks/results/compose.md   the tables, the selection, the goal, each marked
    benchmarks/results/compose.png  perplexity vs ratio, both corpora

    python benchmarks/bench_compose.py --results /path/to/project/results
    python benchmarks/bench_compose.py --results benchmarks/results/compose.csv --extra \
        --seed-results /path/to/seed4-project/results \
        --seed-params workflow/configs/compose-seed4.yaml
"""

from __future__ import annotations

import argparse
import json
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
from svdzoo.usage import read_usage  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
MODEL = "smollm2-135m"
PAPER_METHODS = ("svd", "fwsvd", "asvd", "svd-llm", "svd-llm-v2", "adasvd", "ressvd", "duo-svd")
# the methods whose parts the candidates use (the time budget: 2x the slowest). Duo-SVD's
# parts come from `duo-svd-independent` (the ratio-independent KL table); the paper's
# per-ratio `duo-svd` only adds a ~17 CPU-min table per ratio, so leaving it out can only
# make the budget stricter.
COMBINES = ("adasvd", "duo-svd-independent")
GOAL_RATIOS = (0.4, 0.6)
METRICS = ("perplexity", "acc", "compression_time_s", "achieved_ratio")
# methods whose algorithm did not change since benchmarks/results/real-model.csv was made
UNCHANGED = ("svd", "fwsvd", "asvd", "svd-llm", "svd-llm-v2", "duo-svd-independent")
CPU = "compress_cpu_s"  # the compress job's CPU seconds, exact (its log's usage line)
# Snakemake's benchmark value: sampled every 30 s after a job's first 15 s, so it loses up
# to SAMPLE_GAP s of a job's end (a compress job is one process on one thread: 30 s of CPU
# at most); a lower bound, and verdicts built on it carry that margin
SAMPLED = "compress_cpu_s_sampled"
SAMPLE_GAP = 30.0


def cpu_rows(results: Path, params: dict) -> list[tuple]:
    """Each compress job's CPU seconds: exact from its log's usage line, else Snakemake's
    sampled value under its own metric name. Wall time depends on what else ran; the
    job's CPU time (one thread) much less."""
    rows = []
    for method in params["methods"]:
        for r in ratios(params):
            job = f"{MODEL}-{method}-r{float(r):.2f}"
            used = read_usage(results / "logs" / "compress" / f"{job}.log")
            tsv = results / "benchmarks" / "compress" / f"{job}.tsv"
            if used is not None:
                rows.append((MODEL, method, float(r), CPU, "-", used.cpu_s))
            elif tsv.is_file():
                cpu = float(pd.read_csv(tsv, sep="\t")["cpu_time"].iloc[0])
                rows.append((MODEL, method, float(r), SAMPLED, "-", cpu))
    return rows


def check_seed(results: Path, params: dict, seed: int) -> None:
    """Every compressed run of `results` that read statistics made them with `seed`: the
    runs' paths do not name the seed, so a second seed's config run in the same project
    replaced the first seed's runs, which were then labelled with the wrong seed."""
    wrong = []
    for manifest in sorted((results / "compressed" / MODEL).glob("*/r*/manifest.json")):
        stats = json.loads(manifest.read_text()).get("statistics") or {}
        seeds = {s.get("seed") for s in stats.values() if isinstance(s, dict)} - {None}
        if seeds and seeds != {seed}:
            wrong.append(f"{manifest.parent} (seed {sorted(seeds)})")
    if wrong:
        sys.exit(f"{results}: runs calibrated on another seed than {seed}: " + ", ".join(wrong)
                 + "; run each seed's config in its own clone")  # fmt: skip


def tidy(results: Path, params: dict, seed: int) -> pd.DataFrame:
    check_seed(results, params, seed)
    df = collect(results)
    keep = (
        (df["model"] == MODEL)
        & df["method"].isin(set(params["methods"]) | {"dense"})
        & (df["ratio"].isin(ratios(params)) | (df["method"] == "dense"))
        & df["metric"].isin(METRICS)
        & ((df["metric"] != "acc") | (df["dataset"] == "mean"))
    )
    out = df[keep][["model", "method", "ratio", "metric", "dataset", "value"]].copy()
    rows = cpu_rows(results, params)
    out = pd.concat([out, pd.DataFrame(rows, columns=out.columns)])
    out["seed"], out["source"] = seed, "workflow"
    return out.reset_index(drop=True)


def load(results: Path, params: dict, seed: int) -> pd.DataFrame:
    """One seed's rows: from a project's `results/` directory, or from this script's own
    CSV (so a report can be rebuilt, or a second seed added, after the project is gone)."""
    if results.suffix != ".csv":
        return tidy(results, params, seed)
    if not results.is_file():
        sys.exit(f"{results}: no such file")
    df = pd.read_csv(results)
    missing = {"model", "method", "ratio", "metric", "dataset", "value", "seed", "source"} - set(df.columns)  # fmt: skip
    if missing:
        sys.exit(f"{results}: not a compose CSV (no column {', '.join(sorted(missing))})")
    df = df[df.seed == seed]
    if df.empty:
        sys.exit(f"{results}: no rows for calibration seed {seed}")
    return df.reset_index(drop=True)


def extra_rows(paths: list[Path], have: pd.DataFrame, seed: int) -> pd.DataFrame:
    """Rows for (method, ratio) pairs the workflow results lack, from earlier runs, first
    source first: a results directory (runs made with the CLI), a long CSV (model, method,
    ratio, metric, dataset, value) or a fidelity CSV (method, ratio, pydoc, pysource,
    achieved, compress_s). Each row names where it came from in `source`. A long CSV
    `real-model.csv` predates the paper-faithful AdaSVD, ResSVD and Duo-SVD (its rows
    under those names are the earlier mechanisms), so only the unchanged methods are taken
    from it."""
    done = {(m, round(float(r), 4)) for m, r in zip(have.method, have.ratio, strict=True)}
    out = []
    for path in paths:
        if not path.exists():
            continue
        src = collect(path) if path.is_dir() else pd.read_csv(path)
        if "metric" in src.columns:
            src = src[(src.model == MODEL) & src.metric.isin(METRICS)]
            src = src[(src.metric != "acc") | (src.dataset == "mean")]
            long = src[["model", "method", "ratio", "metric", "dataset", "value"]]
        else:
            rows = []
            for _, r in src.iterrows():
                for corpus in ("pydoc", "pysource"):
                    rows.append((MODEL, r["method"], r["ratio"], "perplexity", corpus, r[corpus]))
                rows.append((MODEL, r["method"], r["ratio"], "compression_time_s", "-", r["compress_s"]))  # fmt: skip
            long = pd.DataFrame(rows, columns=["model", "method", "ratio", "metric", "dataset", "value"])  # fmt: skip
        if path.name == "real-model.csv":
            long = long[long.method.isin(UNCHANGED)]
        keys = [(m, round(float(r), 4)) for m, r in zip(long.method, long.ratio, strict=True)]
        new = long[[k not in done and k[0] != "dense" for k in keys]].copy()
        if new.empty:
            continue
        new["seed"], new["source"] = seed, f"CLI runs in {path}" if path.is_dir() else path.name
        out.append(new)
        done |= {(m, round(float(r), 4)) for m, r in zip(new.method, new.ratio, strict=True)}
    return pd.concat(out) if out else pd.DataFrame()


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


def borrowed(df: pd.DataFrame, method: str, ratio: float) -> bool:
    s = df[(df.method == method) & ((df.ratio - ratio).abs() < 1e-9)]
    return bool(len(s)) and bool((s.source != "workflow").all())


def table(df: pd.DataFrame, methods: list[str], r: float, corpora: list[str]) -> list[str]:
    head = "| method | " + " | ".join(f"ppl {c}" for c in corpora) + " | zero-shot | wall s | CPU s |"  # fmt: skip
    lines = [head, "|---|" + "---:|" * (len(corpora) + 3)]
    for m in ["dense", *methods]:
        ppl = [value(df, m, r, "perplexity", c) for c in corpora]
        if all(v is None for v in ppl):
            continue
        acc = value(df, m, r, "acc", "mean")
        t = value(df, m, r, "compression_time_s", "-")
        cpu, sampled = value(df, m, r, CPU, "-"), value(df, m, r, SAMPLED, "-")
        cells = [f"{v:,.2f}" if v is not None else "" for v in ppl]
        cells += [f"{acc:.3f}" if acc is not None else ""]
        cells += [f"{t:.0f}" if t is not None else ""]
        cells += [f"{cpu:.0f}" if cpu is not None else f"≥ {sampled:.0f}" if sampled is not None else ""]  # fmt: skip
        mark = " †" if m != "dense" and borrowed(df, m, r) else ""
        lines.append(f"| {m}{mark} | " + " | ".join(cells) + " |")
    return lines


def goal(df: pd.DataFrame, pick: str, corpus: str, methods: list[str]) -> list[str]:
    """One row per goal ratio: the pick's perplexity against the best paper method's, and its
    compression time against 2x the slowest paper method it combines. The cap is only given
    when every combined method that ran at that ratio was timed the same way (CPU time where
    the pick has it): a cap over the ones that happen to be timed would be too low."""
    out = ["| ratio | " + pick + f" {corpus} | best paper method | its {corpus} | lower? | time s (CPU if measured) | 2x slowest combined (s) | within? |", "|---|---:|---|---:|---|---:|---:|---|"]  # fmt: skip
    for r in GOAL_RATIOS:
        mine = value(df, pick, r, "perplexity", corpus)
        papers = {m: value(df, m, r, "perplexity", corpus) for m in PAPER_METHODS if m in methods}
        papers = {m: v for m, v in papers.items() if v is not None}
        if mine is None or not papers:
            continue
        best = min(papers, key=papers.get)  # type: ignore[arg-type]
        lower = "yes" if mine < papers[best] else "NO"
        t = timing(df, pick, r)
        ran = [m for m in COMBINES if value(df, m, r, "perplexity", corpus) is not None]
        # the cap's methods timed the way the pick is: CPU (exact or sampled), else wall
        cpu_mode = t is not None and t[2] != "compression_time_s"
        slow = {m: timing(df, m, r, cpu_mode) for m in ran}
        untimed = [m for m, s in slow.items() if s is None]
        timed = [s for s in slow.values() if s is not None]
        head = f"| {r:.0%} | {mine:,.2f} | {best} | {papers[best]:,.2f} | {lower} |"
        if t is None or not timed:
            out.append(f"{head} | | |")
            continue
        low = 2 * max(v for v, _, _ in timed)
        sampled = t[2] == SAMPLED or any(k == SAMPLED for _, _, k in timed)
        at_least = "≥ " if sampled else ""
        shown = f"{head} {'≥ ' if t[2] == SAMPLED else ''}{t[0]:.0f} |"
        if untimed:
            what = "CPU time" if cpu_mode else "time"
            out.append(
                f"{shown} ≥ {low:.0f} | unknown: no {what} for "
                + ", ".join(f"`{m}`" for m in untimed)
                + " |"
            )
        else:
            high = 2 * max(v + gap for v, gap, _ in timed)
            out.append(f"{shown} {at_least}{low:.0f} | {verdict(t[0], t[1], low, high)} |")
    return out


def timing(df: pd.DataFrame, method: str, r: float, cpu: bool = True) -> tuple | None:
    """`(seconds, how many more seconds the truth can be, metric)`: the exact CPU time, else
    the sampled one (up to SAMPLE_GAP s more), else, when `cpu` is false, the wall time."""
    for metric, gap in ((CPU, 0.0), (SAMPLED, SAMPLE_GAP)):
        v = value(df, method, r, metric, "-")
        if v is not None:
            return v, gap, metric
    if cpu:
        return None
    v = value(df, method, r, "compression_time_s", "-")
    return None if v is None else (v, 0.0, "compression_time_s")


def verdict(t: float, t_gap: float, low: float, high: float) -> str:
    """Within the cap? The pick's true time is in [t, t + t_gap] and the cap's in [low,
    high] (sampled CPU times are up to SAMPLE_GAP s low each): only a verdict that holds
    over both whole ranges is given."""
    if t_gap == 0 and low == high:
        return "yes" if t <= low else "NO"
    if t + t_gap <= low:
        return "yes (sampled CPU: holds with its 30 s margin)"
    if t > high:
        return "NO (sampled CPU: holds with its 30 s margin)"
    return "unsure: sampled CPU times, within their 30 s margin"


def figure(df: pd.DataFrame, methods: list[str], candidates: list[str], corpora: list[str], out: Path) -> None:  # fmt: skip
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(1, len(corpora), figsize=(5.8 * len(corpora), 4.4), squeeze=False)
    ppl = df[(df.metric == "perplexity") & (df.seed == df.seed.min())]
    colours = plt.get_cmap("tab10").colors
    for ax, corpus in zip(axes[0], corpora, strict=True):
        sub = ppl[ppl.dataset == corpus]
        for i, m in enumerate(methods):
            s = sub[sub.method == m].sort_values("ratio")
            if s.empty or s["value"].max() > 1e4:  # plain SVD/FWSVD/ASVD collapse: off the scale
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
        plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain)
        ax.tick_params(axis="y", which="minor", labelsize=7)
        ax.set_title(
            f"{MODEL}: {corpus} perplexity\n(methods above 10,000 left out: svd, fwsvd, asvd at 60 %)",
            fontsize=10,
        )
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
    ap.add_argument("--results", type=Path, default=ROOT / "results", help="a project's results/ directory, or a CSV this script wrote")  # fmt: skip
    ap.add_argument("--seed", type=int, default=None, help="calibration seed of --results (default: the params')")  # fmt: skip
    ap.add_argument("--seed-results", type=Path, default=None, help="results of a second calibration seed (directory or CSV)")  # fmt: skip
    ap.add_argument("--second-seed", type=int, default=None)
    ap.add_argument("--seed-params", type=Path, default=None, help="the second seed's params (default: its calibration.seed, else --params)")  # fmt: skip
    ap.add_argument(
        "--extra", type=Path, nargs="*", default=[RESULTS / "fidelity.csv", RESULTS / "real-model.csv"],
        help="earlier benchmark CSVs for runs the workflow results lack (first file first)",
    )  # fmt: skip
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
    wanted = [*methods, *(m for m in PAPER_METHODS if m not in methods)]
    ours = load(args.results, params, seed)
    extra = extra_rows(args.extra, ours, seed)
    if not extra.empty:
        keep = extra.method.isin(wanted) & extra.ratio.round(4).isin([round(float(r), 4) for r in ratios(params)])  # fmt: skip
        extra = extra[keep]
    df = pd.concat([ours, extra]).reset_index(drop=True)
    shown = [*PAPER_METHODS, *(m for m in methods if m not in PAPER_METHODS)]
    shown = [m for m in shown if m in set(df.method)]
    rs = [float(r) for r in ratios(params)]
    corpora = list(params["evaluation"]["corpora"])
    pick, score = choose(df[df.seed == seed], candidates, rs, args.select_on)
    lent = df[(df.seed == seed) & (df.source != "workflow") & (df.method != "dense")]
    lines = [
        f"# svdzoo's compositions against the paper methods ({MODEL})",
        "",
        f"Params: `{args.params.name}` (calibration {params['calibration']}); perplexity on"
        f" {params['evaluation'].get('max-windows')} x {params['evaluation']['seqlen']} test"
        " tokens per corpus; zero-shot: mean accuracy over the offline tasks; wall s: `svdzoo"
        " compress` wall time (shared statistics excluded; it depends on what else ran);"
        " CPU s: the compress job's CPU time (one thread) from its log's usage line, what the"
        " time goal is checked on where it was measured; `≥ N` where the run predates that"
        " line and only Snakemake's benchmark value exists, which samples CPU time every"
        " 30 s and so loses up to 30 s of a job's end.",
        "Runs marked † are not from this workflow run but from earlier runs with the same"
        " calibration and evaluation settings (`source` in the CSV): "
        + (
            ", ".join(
                f"`{m}` {r:.0%} ({src})"
                for (m, r, src) in sorted(
                    {
                        (a, b, c)
                        for a, b, c in zip(lent.method, lent.ratio, lent.source, strict=True)
                    }
                )
            )
            or "none"
        )  # fmt: skip
        + ".",
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
        params2 = load_params(args.seed_params) if args.seed_params else params
        second = args.second_seed
        if second is None:
            second = int(params2["calibration"]["seed"]) if args.seed_params else seed + 1
        if second == seed:
            sys.exit(f"the second seed ({second}) is the first one's; pass --second-seed")
        df2 = load(args.seed_results, params2, second)
        df = pd.concat([df[df.seed != second], df2])
        shown2 = [m for m in shown if m in set(df2.method)]
        rs2 = sorted(float(r) for r in set(df2[df2.method != "dense"].ratio))
        lines += [f"## Second calibration seed ({second})", ""]
        if args.seed_params:
            lines += [f"Params: `{args.seed_params.name}` (calibration {params2['calibration']}).", ""]  # fmt: skip
        cands2 = [c for c in candidates if c in set(df2.method)]
        if cands2:
            pick2, score2 = choose(df2, cands2, rs2, args.select_on)
            lines += [
                f"Selection on {args.select_on} with this seed (mean log perplexity over "
                + ", ".join(f"{r:.0%}" for r in rs2)
                + "): "
                + ", ".join(
                    f"`{c}` {math.exp(v):,.2f}"
                    for c, v in sorted(score2.items(), key=lambda x: x[1])
                )  # fmt: skip
                + f". It would choose `{pick2}`"
                + (" too." if pick2 == pick else f", not `{pick}`."),
                "",
            ]
        if pick in set(df2.method):
            lines += [
                f"The goal with this seed (against the paper methods it ran: {', '.join(f'`{m}`' for m in shown2 if m in PAPER_METHODS or m == 'duo-svd-independent')}):",  # fmt: skip
                "",
                *goal(df2, pick, args.report_on, shown2),
                "",
            ]
        for r in rs2:
            lines += [f"### {r:.0%} (seed {second})", "", *table(df2, shown2, r, corpora), ""]
    lines += [f"![perplexity vs ratio]({args.out.with_suffix('.png').name})", ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text(args.out.with_suffix(".csv"), df.to_csv(index=False))
    write_text(args.out.with_suffix(".md"), "\n".join(lines))
    figure(df, shown, candidates, corpora, args.out.with_suffix(".png"))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
