"""CPU cost of one default-run job per method, on the real model: what the budget is made of.

Runs `svdzoo compress` for every method of the params file at one ratio, and one
`svdzoo evaluate` with the params' evaluation flags, each as its own process with one
thread (as the workflow runs them), `--parallel` at a time. It reads the CPU seconds and
peak RSS of each from the kernel (`resource.getrusage` of the finished child) and writes

    benchmarks/results/job-costs.csv   one row per job: job, cpu_s, wall_s, max_rss_mb
    benchmarks/results/job-costs.md    the table, and the default run's total extrapolated
                                       from it (jobs x ratios, plus the stages measured once)
    benchmarks/results/job-costs.png   CPU seconds per job

    python benchmarks/bench_job_costs.py --project /tmp/fresh [--ratio 0.40] [--parallel 2]

`--project` is a directory where the default run's model and statistics already exist
(`data/models/<model>`, `data/stats/<model>/<calib>/...`, `data/tasks`). CPU time is the
honest measure on a shared machine; wall time grows with whatever else runs.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from svdzoo import config as C  # noqa: E402
from svdzoo.io import write_text  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT = Path(__file__).resolve().parent / "results" / "job-costs"
STATS_FLAGS = {"gram": "--stats", "fisher": "--fisher",
               "sensitivity-duo": "--sensitivity-duo", "sensitivity-asvd": "--sensitivity-asvd"}  # fmt: skip


def timed(argv: list[str], log: Path) -> dict[str, float]:
    """Run `argv` with one thread; CPU and peak RSS of that child alone (wait4)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    t0 = time.perf_counter()
    with open(log, "wb") as f:
        proc = subprocess.Popen(argv, env=env, stdout=f, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(argv)} failed; see {log}")
    return {
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "wall_s": wall,
        "max_rss_mb": usage.ru_maxrss / 1024,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--project", type=Path, required=True)
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--ratio", type=float, default=0.40)
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--work", type=Path, default=Path("/tmp/svdzoo-job-costs"))
    args = ap.parse_args()
    P = C.load_params(args.params)
    proj, calib = args.project, C.calib_tag(P)
    model_dir = proj / "data" / "models" / args.model
    stats = proj / "data" / "stats" / args.model / calib
    args.work.mkdir(parents=True, exist_ok=True)
    jobs: dict[str, list[str]] = {}
    for method in P["methods"]:
        argv = ["svdzoo", "compress", "--model", str(model_dir), "--method", method,
                "--ratio", f"{args.ratio:.2f}", "--out", str(args.work / method), "--force"]  # fmt: skip
        for kind in sorted(C.method_requirements(method)):
            table = C.sensitivity_table(kind, method, f"{args.ratio:.2f}") if kind.startswith(
                "sensitivity-") else kind  # fmt: skip
            path = stats / (f"sensitivity-{table}" if kind.startswith("sensitivity-") else kind)
            argv += [STATS_FLAGS[kind], str(path)]
        jobs[f"compress {method}"] = argv
    results = {}
    with ThreadPoolExecutor(args.parallel) as pool:
        futures = {
            name: pool.submit(timed, argv, args.work / f"{name.replace(' ', '-')}.log")
            for name, argv in jobs.items()
        }
        for name, fut in futures.items():
            results[name] = fut.result()
            print(f"{name}: {results[name]['cpu_s']:.1f} CPU s", flush=True)
    first = P["methods"][0]
    evaluate = ["svdzoo", "evaluate", "--model", str(args.work / first), "--model-name",
                args.model, *C.cli_flags(P["evaluation"]),
                *C.cli_flags((P.get("execution") or {}).get("evaluate") or {}),
                "--task-dir", str(proj / "data" / "tasks"),
                "--ppl-out", str(args.work / "ppl.json"),
                "--zeroshot-out", str(args.work / "zs.json"),
                "--efficiency-out", str(args.work / "eff.json")]  # fmt: skip
    results[f"evaluate ({first})"] = timed(evaluate, args.work / "evaluate.log")
    frame = pd.DataFrame([{"job": k, **v} for k, v in results.items()])
    OUT.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(OUT.with_suffix(".csv"), index=False, float_format="%.1f")
    n_ratios = len(P["ratios"])
    n_eval = len(P["methods"]) * n_ratios + 1
    compress_cpu = frame[frame.job.str.startswith("compress")].cpu_s.sum() * n_ratios
    eval_cpu = float(frame[frame.job.str.startswith("evaluate")].cpu_s.iloc[0]) * n_eval
    lines = [
        "# CPU per default-run job on the real model",
        "",
        f"Machine: {platform.platform()}, {os.cpu_count()} CPUs; {args.model} at "
        f"{args.ratio:.0%}, one thread per job, {args.parallel} jobs at a time "
        f"(`python benchmarks/bench_job_costs.py --project {args.project}`).",
        "",
        frame.to_markdown(index=False, floatfmt=".1f"),
        "",
        f"Extrapolated to the default run's {len(P['methods'])} methods x {n_ratios} ratios: "
        f"compression ~{compress_cpu / 60:.0f} CPU-min, {n_eval} evaluations "
        f"~{eval_cpu / 60:.0f} CPU-min (ratios change a job's cost: read these as estimates). "
        "The sensitivity tables, calibration, the reference model and per-job start-up come "
        "on top (docs/results.md).",
        "",
        "![CPU per job](job-costs.png)",
        "",
    ]
    write_text(OUT.with_suffix(".md"), "\n".join(lines))
    fig, ax = plt.subplots(figsize=(7.5, 0.45 * len(frame) + 1.2))
    ordered = frame.sort_values("cpu_s")
    ax.barh(ordered.job, ordered.cpu_s, color="#4c72b0")
    for y, v in enumerate(ordered.cpu_s):
        ax.text(v, y, f" {v:.0f} s", va="center", fontsize=8)
    ax.set_xlabel("CPU seconds (one thread)")
    ax.set_title(f"One default-run job each: {args.model}, {args.ratio:.0%} removed")
    ax.margins(x=0.15)
    fig.tight_layout()
    fig.savefig(OUT.with_suffix(".png"), dpi=150)
    print(f"wrote {OUT.with_suffix('.md')}")


if __name__ == "__main__":
    main()
