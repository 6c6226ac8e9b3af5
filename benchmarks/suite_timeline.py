"""Where the test suite's wall time goes, worker by worker: a pytest plugin that records
each test phase, and a summary of what each pytest-xdist worker ran when.

The slowest-durations list says what is slow, not what is on the critical path: with one
module per worker at a time (`--dist loadfile`), the suite ends when the busier worker does.

    SUITE_TIMELINE=/tmp/timeline.jsonl PYTHONPATH=benchmarks \\
        bash workflow/scripts/run.sh test -p suite_timeline
    python benchmarks/suite_timeline.py /tmp/timeline.jsonl --label <commit>

The summary goes to benchmarks/results/suite-timeline.md (modules over `--min-s` seconds)
and the same as a figure to suite-timeline.png.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

OUT = Path(__file__).parent / "results" / "suite-timeline.md"


def _record(item: pytest.Item, phase: str, start: float) -> None:
    path = os.environ.get("SUITE_TIMELINE")
    if not path:
        return
    row = {
        "worker": os.environ.get("PYTEST_XDIST_WORKER", "main"),
        "test": item.nodeid,
        "phase": phase,
        "start": start,
        "stop": time.time(),
    }
    with open(path, "a") as f:  # one short line per write: workers' lines do not interleave
        f.write(json.dumps(row) + "\n")


def _timed(phase: str):
    """A wrapper of the `pytest_runtest_<phase>` hook that records how long the phase took."""

    @pytest.hookimpl(wrapper=True)
    def hook(item: pytest.Item) -> Iterator[None]:
        start = time.time()
        try:
            return (yield)
        finally:
            _record(item, phase, start)

    return hook


pytest_runtest_setup = _timed("setup")
pytest_runtest_call = _timed("call")
pytest_runtest_teardown = _timed("teardown")


def worker_spans(rows: list[dict]) -> dict[str, tuple[list[list], float]]:
    """Per worker: its modules in the order it ran them, each `[module, start, stop]` in
    seconds from the first test's start, and the seconds it spent in tests."""
    t0 = min(r["start"] for r in rows)
    by_worker: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_worker[r["worker"]].append(r)
    out = {}
    for worker, runs in sorted(by_worker.items()):
        runs.sort(key=lambda r: r["start"])
        spans: list[list] = []
        for r in runs:
            module = r["test"].split("::")[0]
            if spans and spans[-1][0] == module:
                spans[-1][2] = r["stop"] - t0
            else:
                spans.append([module, r["start"] - t0, r["stop"] - t0])
        out[worker] = (spans, sum(r["stop"] - r["start"] for r in runs))
    return out


def summarise(rows: list[dict], min_s: float) -> str:
    """Per worker: the modules it ran, in order, with start, end and duration (seconds
    from the first test's start)."""
    lines = []
    for worker, (spans, busy) in worker_spans(rows).items():
        lines += [
            f"### {worker}: ends at {spans[-1][2]:.0f} s, in tests for {busy:.0f} s",
            "",
            "| from (s) | to (s) | seconds | module |",
            "|---:|---:|---:|---|",
        ]
        shorter = 0.0
        for module, start, stop in spans:
            if stop - start < min_s:
                shorter += stop - start
                continue
            lines.append(f"| {start:.0f} | {stop:.0f} | {stop - start:.0f} | `{module}` |")
        lines += [f"| | | {shorter:.0f} | modules under {min_s:g} s each |", ""]
    return "\n".join(lines)


def plot(rows: list[dict], min_s: float, out: Path, title: str) -> None:
    """The same spans as bars, a row per worker: the modules over `min_s` named and
    coloured, the short ones grey."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    spans = worker_spans(rows)
    fig, ax = plt.subplots(figsize=(11, 0.9 * len(spans) + 1.4))
    colours = itertools.cycle(plt.get_cmap("tab20").colors)
    for y, (runs, _) in enumerate(spans.values()):
        for module, start, stop in runs:
            long = stop - start >= min_s
            ax.barh(y, stop - start, left=start, height=0.6, edgecolor="white", linewidth=0.5,
                    color=next(colours) if long else "0.8")  # fmt: skip
            if long:
                name = Path(module).stem.removeprefix("test_")
                ax.text((start + stop) / 2, y, name, ha="center", va="center", fontsize=7,
                        rotation=90 if stop - start < 60 else 0)  # fmt: skip
    ax.set_yticks(range(len(spans)), list(spans))
    ax.invert_yaxis()
    ax.set_xlabel("seconds since the first test started")
    ax.set_title(title, fontsize=9)
    ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    tmp = out.with_name(f".{out.name}.tmp")
    fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    tmp.replace(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("timeline", type=Path, help="the SUITE_TIMELINE file of one run")
    ap.add_argument("--label", default="", help="what was run (commit, host)")
    ap.add_argument("--min-s", type=float, default=15.0)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    rows = [json.loads(line) for line in args.timeline.read_text().splitlines() if line]
    if not rows:
        raise SystemExit(f"{args.timeline}: no test phases recorded")
    text = f"# The test suite, worker by worker{f' ({args.label})' if args.label else ''}\n\n"
    text += summarise(rows, args.min_s)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(text + f"\n![each worker's modules over time]({args.out.stem}.png)\n")
    tmp.replace(args.out)
    png = args.out.with_suffix(".png")
    plot(rows, args.min_s, png, f"The test suite, worker by worker ({args.label})")
    print(f"wrote {args.out} and {png}")


if __name__ == "__main__":
    main()
