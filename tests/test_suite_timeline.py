"""The suite timeline (benchmarks/suite_timeline.py): a real pytest run with the plugin
records every phase of every test, and the summary spans each worker's modules in order."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from helpers import BENCH, load_benchmark


def test_a_run_with_the_plugin_records_every_phase(tmp_path):
    (tmp_path / "test_a.py").write_text("def test_one():\n    pass\n\ndef test_two():\n    pass\n")
    timeline = tmp_path / "timeline.jsonl"
    env = {"SUITE_TIMELINE": str(timeline), "PYTHONPATH": str(BENCH)}
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "suite_timeline", "-p", "no:cacheprovider",
         "-p", "no:xdist", "test_a.py"],
        cwd=tmp_path, env={k: v for k, v in {**os.environ, **env}.items() if k != "PYTEST_XDIST_WORKER"}, capture_output=True, text=True,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    rows = [json.loads(line) for line in timeline.read_text().splitlines()]
    assert [(r["test"].split("::")[1], r["phase"]) for r in rows] == [
        (t, p) for t in ("test_one", "test_two") for p in ("setup", "call", "teardown")
    ]
    assert all(r["worker"] == "main" and r["stop"] >= r["start"] for r in rows)


def test_summary_spans_each_worker_s_modules_in_order():
    timeline = load_benchmark("suite_timeline")
    row = lambda w, t, a, b: {"worker": w, "test": t, "phase": "call", "start": a, "stop": b}  # noqa: E731
    rows = [
        row("gw0", "tests/test_a.py::x", 100, 130),
        row("gw0", "tests/test_a.py::y", 130, 150),
        row("gw0", "tests/test_b.py::z", 150, 152),
        row("gw1", "tests/test_c.py::w", 101, 200),
    ]
    text = timeline.summarise(rows, min_s=15)
    gw0, gw1 = text.split("### gw1")
    assert "ends at 52 s, in tests for 52 s" in gw0
    assert "| 0 | 50 | 50 | `tests/test_a.py` |" in gw0
    assert "test_b.py" not in gw0 and "| | | 2 | modules under 15 s each |" in gw0
    assert "ends at 100 s" in gw1 and "| 1 | 100 | 99 | `tests/test_c.py` |" in gw1


def test_the_figure_draws_the_same_spans(tmp_path):
    from matplotlib.image import imread

    timeline = load_benchmark("suite_timeline")
    row = lambda w, t, a, b: {"worker": w, "test": t, "phase": "call", "start": a, "stop": b}  # noqa: E731
    rows = [row("gw0", "tests/test_a.py::x", 0, 300), row("gw1", "tests/test_b.py::y", 0, 5)]
    assert [s for s, _ in timeline.worker_spans(rows).values()] == [
        [["tests/test_a.py", 0, 300]],
        [["tests/test_b.py", 0, 5]],
    ]
    out = tmp_path / "timeline.png"
    timeline.plot(rows, 15, out, "two workers")
    pixels = imread(out)
    assert pixels.shape[0] > 100 and pixels.std() > 0.05  # a chart, not a blank image
