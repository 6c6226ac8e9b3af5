"""The default run's cost per stage: each job's exact CPU time from its log's usage line,
never Snakemake's sampled CPU column (which lost a third of the 2026-12-06 run's time)."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import load_benchmark

from svdzoo.usage import Usage


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("bench_default_run")


def job(
    project: Path, rule: str, name: str, wall: float, sampled: float, cpu: float | None
) -> None:
    tsv = project / "results" / "benchmarks" / rule / f"{name}.tsv"
    tsv.parent.mkdir(parents=True, exist_ok=True)
    tsv.write_text(f"s\tcpu_time\tmax_rss\n{wall}\t{sampled}\t500.0\n")
    log = project / "results" / "logs" / rule / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    usage = Usage(rule, wall, cpu, 700.0).line() if cpu is not None else "no usage line"
    log.write_text(f"2026 INFO svdzoo.cli: {usage}\n")


def test_the_cost_is_the_logged_cpu_time_else_the_wall_time(bench, tmp_path):
    job(tmp_path, "compress", "smollm2-135m-svd-r0.20", 60.0, 15.0, 58.5)
    job(tmp_path, "evaluate", "smollm2-135m-svd-r0.20", 45.0, 14.5, None)
    df = bench.read_benchmarks(tmp_path, ["smollm2-135m"]).set_index("rule")
    assert df.loc["compress", "cost_s"] == 58.5 and df.loc["compress", "cost_source"] == "cpu (log)"
    assert df.loc["compress", "max_rss_mb"] == 700.0  # the process's own peak, when larger
    assert df.loc["evaluate", "cost_s"] == 45.0
    assert df.loc["evaluate", "cost_source"] == "wall (no usage line)"
    assert list(df.sampled_cpu_s) == [15.0, 14.5]
    assert bench.cost_words(df) == "CPU time from 1 job's usage line, wall time for the other 1"


def test_the_report_bounds_the_run_by_the_cost_not_the_samples(bench, tmp_path):
    job(tmp_path, "compress", "smollm2-135m-svd-r0.20", 60.0, 15.0, 58.5)
    job(tmp_path, "compress", "smollm2-135m-svd-r0.40", 61.5, 15.0, 61.5)
    out = tmp_path / "out" / "default-run"
    assert bench.main(["--project", str(tmp_path), "--out", str(out), "--cores", "2"]) == 0
    md = out.with_suffix(".md").read_text()
    assert "the jobs' cost: **2.0 min**" in md and "CPU time from each job's usage line" in md
    assert "cannot take less than **1.0 min**" in md
    assert "Snakemake's benchmark files count 0.5 CPU-min" in md
    assert md.startswith("# The default run: time per stage")
    assert out.with_suffix(".png").stat().st_size > 0
    bench.main(["--project", str(tmp_path), "--out", str(out), "--title", "The Gemma grid"])
    assert out.with_suffix(".md").read_text().startswith("# The Gemma grid: time per stage")


def test_snakemakes_own_cpu_is_reported_when_its_log_has_it(bench, tmp_path):
    job(tmp_path, "compress", "smollm2-135m-svd-r0.20", 60.0, 15.0, 58.5)
    out = tmp_path / "out" / "default-run"
    bench.main(["--project", str(tmp_path), "--out", str(out)])
    assert "Snakemake itself" not in out.with_suffix(".md").read_text()
    logs = tmp_path / ".snakemake" / "log"
    logs.mkdir(parents=True)
    line = "Snakemake itself used 300.00 s CPU, the jobs it ran (with their shells) 66.00 s"
    (logs / "2026-12-06T214658.539121.snakemake.log").write_text(f"...\n{line}\n")
    bench.main(["--project", str(tmp_path), "--out", str(out)])
    md = out.with_suffix(".md").read_text()
    assert "used **5.0 CPU-min**; the processes it ran, 1.1 CPU-min" in md
    assert "the jobs' own usage lines hold 1.0" in md
