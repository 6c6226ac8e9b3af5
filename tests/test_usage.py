"""Each job command's log ends with what it cost, exactly (not Snakemake's samples)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from svdzoo import usage
from svdzoo.usage import Usage, parse_usage, read_usage

pytestmark = pytest.mark.skipif(usage.resource is None, reason="no getrusage on this platform")


def test_the_line_reads_back_and_the_last_one_wins() -> None:
    first = Usage("compress", 12.34, 11.5, 1234.0)
    second = Usage("evaluate", 50.0, 49.25, 2048.0)
    text = f"INFO something\n2026 INFO svdzoo.cli: {first.line()}\nmore\n{second.line()}\n"
    assert parse_usage(text) == second
    assert parse_usage(first.line()) == first
    assert parse_usage("no usage here\nsvdzoo compress: error: bad ratio\n") is None


def test_read_usage_of_a_missing_log_is_none(tmp_path: Path) -> None:
    assert read_usage(tmp_path / "absent.log") is None


def test_cpu_spent_between_start_and_measure_is_counted() -> None:
    since = usage.start()
    until = time.process_time() + 0.3
    while time.process_time() < until:
        pass
    cost = usage.measure("compress", since)
    assert cost is not None
    assert 0.28 <= cost.cpu_s <= cost.wall_s + 0.05
    assert cost.max_rss_mb > 10


def test_cpu_of_waited_for_children_is_counted() -> None:
    since = usage.start()
    burn = "import time\nt=time.process_time()+0.4\nwhile time.process_time()<t: pass"
    subprocess.run([sys.executable, "-c", burn], check=True)
    cost = usage.measure("compress", since)
    assert cost is not None and cost.cpu_s >= 0.38


def _svdzoo(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "svdzoo.cli", *argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


def test_a_job_command_logs_its_cost_and_a_question_does_not(tmp_path: Path) -> None:
    job = _svdzoo("build-tasks", "--n-examples", "4", "--out", str(tmp_path / "t"), cwd=tmp_path)
    assert job.returncode == 0, job.stderr
    cost = parse_usage(job.stderr)
    assert cost is not None and cost.command == "build-tasks"
    assert cost.cpu_s > 0 and cost.wall_s > 0 and cost.max_rss_mb > 10
    question = _svdzoo("methods", cwd=tmp_path)
    assert question.returncode == 0, question.stderr
    assert parse_usage(question.stderr) is None


def test_a_failed_job_logs_no_cost(tmp_path: Path) -> None:
    bad = _svdzoo("build-tasks", "--n-examples", "0", "--out", str(tmp_path / "t"), cwd=tmp_path)
    assert bad.returncode != 0
    assert parse_usage(bad.stderr) is None


def test_the_scheduler_line_reads_back() -> None:
    line = usage.scheduler_line()
    own, jobs = usage.parse_scheduler(f"[Sun Dec  6 22:31:31 2026]\n{line}\n")
    assert own > 0 and jobs >= 0
    assert usage.parse_scheduler("Finished jobid: 3\n") is None
