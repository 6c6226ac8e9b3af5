"""Where the default run's time goes: each job's cost, summed per stage.

Every rule writes Snakemake's `benchmark:` file (wall s, CPU s, peak RSS) under
`results/benchmarks/<rule>/<job>.tsv` and its log under `results/logs/<rule>/<job>.log`.
This script reads both from a project directory (default: this checkout; a fresh clone
that ran `bash workflow/scripts/run.sh reproduce` gives the from-scratch numbers) and writes

    benchmarks/results/default-run.csv   one row per job: rule, model, job, wall_s, cpu_s,
                                         cost_s, cost_source, sampled_cpu_s, max_rss_mb
    benchmarks/results/default-run.md    per stage and model: jobs, cost, wall time, peak RSS;
                                         the total cost and the N-core lower bound on wall time
    benchmarks/results/default-run.png   minutes per stage, one bar per model

    python benchmarks/bench_default_run.py --project /tmp/fresh [--wall-s 1234]

A job's cost is its CPU time, read from the usage line in its log (svdzoo.usage:
`getrusage`, exact). Snakemake's own CPU column is sampled (every 0.5 s for the first 15 s,
then every 30 s) and loses the end of every job longer than 15 s, so it is kept only as
`sampled_cpu_s`. A run made before that line existed has no CPU time to read; its jobs' cost
is their wall time, an upper bound on a one-thread job's CPU time (for compress and evaluate
jobs two at a time on 2 cores, benchmarks/results/job-costs.md measured CPU within 1 % of
wall), and the report says which was used. The lower bound on the run's wall time with N
cores is the total cost / N (perfect packing, no idle core).
"""

from __future__ import annotations

import argparse
import os
import platform
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from svdzoo.io import write_text  # noqa: E402
from svdzoo.usage import parse_scheduler, read_usage  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT = Path(__file__).resolve().parent / "results" / "default-run"


def read_benchmarks(project: Path, models: list[str]) -> pd.DataFrame:
    rows = []
    for tsv in sorted((project / "results" / "benchmarks").glob("*/*.tsv")):
        rule, job = tsv.parent.name, tsv.stem
        frame = pd.read_csv(tsv, sep="\t")
        if frame.empty:
            continue
        last = frame.iloc[-1]  # Snakemake appends one row per repeat; we run once
        model = next((m for m in sorted(models, key=len, reverse=True) if job.startswith(m)), "-")
        used = read_usage(project / "results" / "logs" / rule / f"{job}.log")
        wall = float(last["s"])
        rows.append(
            {
                "rule": rule,
                "model": model,
                "job": job,
                "wall_s": wall,
                "cpu_s": used.cpu_s if used else float("nan"),
                "cost_s": used.cpu_s if used else wall,
                "cost_source": "cpu (log)" if used else "wall (no usage line)",
                "sampled_cpu_s": float(last["cpu_time"]),
                "max_rss_mb": max(float(last["max_rss"]), used.max_rss_mb if used else 0.0),
            }
        )
    return pd.DataFrame(rows)


def per_stage(df: pd.DataFrame) -> pd.DataFrame:
    g = df.groupby(["rule", "model"])
    out = pd.DataFrame(
        {
            "jobs": g.size(),
            "cost_min": g.cost_s.sum() / 60,
            "wall_min": g.wall_s.sum() / 60,
            "sampled_cpu_min": g.sampled_cpu_s.sum() / 60,
            "cost_s_per_job": g.cost_s.mean(),
            "max_rss_mb": g.max_rss_mb.max(),
        }
    ).reset_index()
    return out.sort_values("cost_min", ascending=False).reset_index(drop=True)


def scheduler_split(project: Path) -> tuple[float, float] | None:
    """Snakemake's own CPU s and its jobs' (with their shells), from the newest Snakemake
    log that has the line (the Snakefile's `onsuccess`), or None for an older run."""
    for log in sorted((project / ".snakemake" / "log").glob("*.snakemake.log"), reverse=True):
        split = parse_scheduler(log.read_text(errors="replace"))
        if split is not None:
            return split
    return None


def cost_words(df: pd.DataFrame) -> str:
    """What the cost column is, in this run."""
    exact = int(df.cpu_s.notna().sum())
    if exact == len(df):
        return "CPU time from each job's usage line"
    if exact == 0:
        return (
            "each job's wall time, at least its CPU time: this run's logs have no usage "
            "line (svdzoo before svdzoo.usage), and its jobs run one thread each"
        )
    other = len(df) - exact
    lines = "job's usage line" if exact == 1 else "jobs' usage lines"
    return f"CPU time from {exact} {lines}, wall time for the other {other}"


def figure(stages: pd.DataFrame, path: Path, title: str) -> None:
    pivot = stages.pivot_table(index="rule", columns="model", values="cost_min", aggfunc="sum")
    pivot = pivot.loc[pivot.sum(axis=1).sort_values().index]
    ax = pivot.plot.barh(stacked=True, figsize=(7, 4))
    ax.set_xlabel("minutes, summed over jobs (CPU time; wall time where no usage line)")
    ax.set_ylabel("")
    ax.set_title(f"{title}: where the time goes")
    plt.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    plt.savefig(tmp, dpi=120)
    plt.close()
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--project", type=Path, default=ROOT, help="project dir that ran the workflow")
    ap.add_argument("--models", nargs="+", default=["smollm2-135m", "ref-opt"])
    ap.add_argument("--cores", type=int, default=2, help="cores the run had (for the bound)")
    ap.add_argument("--wall-s", type=float, help="measured wall time of the whole run, if known")
    ap.add_argument("--note", default="", help="a line about how the run was made")
    ap.add_argument("--title", default="The default run", help="which run the project made")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)

    df = read_benchmarks(args.project, args.models)
    if df.empty:
        raise SystemExit(f"no Snakemake benchmarks under {args.project}/results/benchmarks")
    stages = per_stage(df)
    total = df.cost_s.sum()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text(args.out.with_suffix(".csv"), df.to_csv(index=False))
    lines = [
        f"# {args.title}: time per stage",
        "",
        f"Machine: {platform.platform()}, {os.cpu_count()} CPUs. {len(df)} jobs measured."
        + (f" {args.note}" if args.note else ""),
        "",
        f"- the jobs' cost: **{total / 60:.1f} min**, summed over jobs ({cost_words(df)}); "
        + (
            f"with {args.cores} cores the run cannot take less than "
            f"**{total / 60 / args.cores:.1f} min** of wall time"
            if df.cpu_s.notna().all()
            else f"divided by {args.cores} cores, **{total / 60 / args.cores:.1f} min**: a "
            "lower bound on the run's wall time only as far as wall time stands for CPU"
        ),
        f"- Snakemake's benchmark files count {df.sampled_cpu_s.sum() / 60:.1f} CPU-min: they "
        "sample CPU time (every 30 s after a job's first 15 s) and lose the end of every "
        "longer job, so they are not used",
    ]
    split = scheduler_split(args.project)
    if split is not None:
        own, jobs = split
        lines.append(
            f"- Snakemake itself (scheduling, benchmark sampling, bookkeeping) used "
            f"**{own / 60:.1f} CPU-min**; the processes it ran, {jobs / 60:.1f} CPU-min, of "
            f"which the jobs' own usage lines hold {df.cpu_s.sum() / 60:.1f} (the rest: each "
            "job's process start and exit around svdzoo's main, where it frees its memory, "
            "and the job shells)"
        )
    if args.wall_s:
        lines.append(f"- measured wall time of the run: **{args.wall_s / 60:.1f} min**")
    lines += [
        "",
        stages.to_markdown(index=False, floatfmt=".1f"),
        "",
        f"![time per stage]({args.out.with_suffix('.png').name})",
        "",
    ]
    write_text(args.out.with_suffix(".md"), "\n".join(lines))
    figure(stages, args.out.with_suffix(".png"), args.title)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
