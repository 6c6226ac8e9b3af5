"""Where the default run's time goes: Snakemake's per-job benchmarks, summed per stage.

Every rule writes Snakemake's `benchmark:` file (wall s, CPU s, peak RSS) under
`results/benchmarks/<rule>/<job>.tsv`. This script reads them from a project directory
(default: this checkout; a fresh clone that ran `bash workflow/scripts/run.sh reproduce`
gives the from-scratch numbers) and writes

    benchmarks/results/default-run.csv   one row per job: rule, model, job, wall_s, cpu_s, max_rss_mb
    benchmarks/results/default-run.md    per stage and model: jobs, CPU time, wall time, peak RSS;
                                         the total CPU time and the 2-core lower bound on wall time
    benchmarks/results/default-run.png   CPU minutes per stage, one bar per model

    python benchmarks/bench_default_run.py --project /tmp/fresh [--wall-s 1234]

CPU time is the honest cost measure on a shared machine: wall time of one job grows with
whatever else runs (the default run executes two jobs at once on 2 cores). The lower bound
on the run's wall time with N cores is total CPU / N (perfect packing, no idle core).
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
        rows.append(
            {
                "rule": rule,
                "model": model,
                "job": job,
                "wall_s": float(last["s"]),
                "cpu_s": float(last["cpu_time"]),
                "max_rss_mb": float(last["max_rss"]),
            }
        )
    return pd.DataFrame(rows)


def per_stage(df: pd.DataFrame) -> pd.DataFrame:
    g = df.groupby(["rule", "model"])
    out = pd.DataFrame(
        {
            "jobs": g.size(),
            "cpu_min": g.cpu_s.sum() / 60,
            "wall_min": g.wall_s.sum() / 60,
            "cpu_s_per_job": g.cpu_s.mean(),
            "max_rss_mb": g.max_rss_mb.max(),
        }
    ).reset_index()
    return out.sort_values("cpu_min", ascending=False).reset_index(drop=True)


def figure(stages: pd.DataFrame, path: Path) -> None:
    pivot = stages.pivot_table(index="rule", columns="model", values="cpu_min", aggfunc="sum")
    pivot = pivot.loc[pivot.sum(axis=1).sort_values().index]
    ax = pivot.plot.barh(stacked=True, figsize=(7, 4))
    ax.set_xlabel("CPU minutes (sum over jobs)")
    ax.set_ylabel("")
    ax.set_title("Default run: where the CPU time goes")
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
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)

    df = read_benchmarks(args.project, args.models)
    if df.empty:
        raise SystemExit(f"no Snakemake benchmarks under {args.project}/results/benchmarks")
    stages = per_stage(df)
    total_cpu = df.cpu_s.sum()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text(args.out.with_suffix(".csv"), df.to_csv(index=False))
    lines = [
        "# The default run: time per stage",
        "",
        f"Machine: {platform.platform()}, {os.cpu_count()} CPUs. {len(df)} jobs measured."
        + (f" {args.note}" if args.note else ""),
        "",
        f"- total CPU time: **{total_cpu / 60:.1f} min**; with {args.cores} cores the run "
        f"cannot take less than **{total_cpu / 60 / args.cores:.1f} min** of wall time",
    ]
    if args.wall_s:
        lines.append(f"- measured wall time of the run: **{args.wall_s / 60:.1f} min**")
    lines += [
        "",
        stages.to_markdown(index=False, floatfmt=".1f"),
        "",
        f"![CPU per stage]({args.out.with_suffix('.png').name})",
        "",
    ]
    write_text(args.out.with_suffix(".md"), "\n".join(lines))
    figure(stages, args.out.with_suffix(".png"))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
