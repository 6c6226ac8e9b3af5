"""What one `svdzoo` command cost, as one line in its log.

Snakemake's `benchmark:` files sample a job's CPU time (every 0.5 s for the first 15 s,
then every 30 s), so a job that ends between two samples loses up to 30 s of it: in the
default run of 2026-12-06 they counted 61 CPU-minutes for jobs that ran 88 minutes on one
thread each. The process itself knows exactly: `getrusage` for itself and the children it
waited for. Every job command that succeeds logs that line as it ends, and `parse_usage`
reads it back (benchmarks/)."""

from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

try:
    import resource
except ImportError:  # Windows: no getrusage, no line
    resource = None  # type: ignore[assignment]

_LINE = re.compile(
    r"svdzoo (?P<command>[\w-]+) finished: (?P<wall>[\d.]+) s wall, (?P<cpu>[\d.]+) s CPU "
    r"\(user \+ sys, with child processes\), peak RSS (?P<rss>[\d.]+) MB"
)


@dataclass(frozen=True)
class Usage:
    command: str
    wall_s: float
    cpu_s: float
    max_rss_mb: float

    def line(self) -> str:
        return (
            f"svdzoo {self.command} finished: {self.wall_s:.2f} s wall, {self.cpu_s:.2f} s "
            f"CPU (user + sys, with child processes), peak RSS {self.max_rss_mb:.0f} MB"
        )


@dataclass(frozen=True)
class Start:
    wall: float
    cpu: float


def _rusage() -> tuple:
    """`getrusage` of this process and of the children it waited for."""
    return resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)


def _cpu_s(own, kids) -> float:
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def start() -> Start:
    """Where a command's count starts: a job is a fresh process, so this misses only the
    interpreter's own start-up; a command run in-process (tests, the Python API) counts
    from here, not from the process's start."""
    return Start(time.perf_counter(), _cpu_s(*_rusage()) if resource is not None else 0.0)


def measure(command: str, since: Start) -> Usage | None:
    """CPU and wall time since `since`, and the process's peak RSS (children included)."""
    if resource is None:
        return None
    own, kids = _rusage()
    # ru_maxrss is KiB on Linux, bytes on macOS
    scale = 1 / 2**20 if sys.platform == "darwin" else 1 / 2**10
    rss = max(own.ru_maxrss, kids.ru_maxrss) * scale
    return Usage(command, time.perf_counter() - since.wall, _cpu_s(own, kids) - since.cpu, rss)


_SCHEDULER = re.compile(
    r"Snakemake itself used (?P<own>[\d.]+) s CPU, the jobs it ran \(with their shells\) "
    r"(?P<jobs>[\d.]+) s"
)


def scheduler_line() -> str:
    """For a Snakemake run's end (the Snakefile's `onsuccess`): the CPU of the scheduler
    process itself (its benchmark sampling, DAG updates, job bookkeeping) and that of the
    jobs it waited for, so that a run's CPU splits into jobs, their shells and Snakemake."""
    if resource is None:
        return "Snakemake itself used an unknown CPU time (no getrusage here)"
    own, kids = _rusage()
    return (
        f"Snakemake itself used {own.ru_utime + own.ru_stime:.2f} s CPU, the jobs it ran "
        f"(with their shells) {kids.ru_utime + kids.ru_stime:.2f} s"
    )


def _last(pattern: re.Pattern[str], text: str) -> re.Match[str] | None:
    found = list(pattern.finditer(text))
    return found[-1] if found else None


def parse_scheduler(text: str) -> tuple[float, float] | None:
    """`(Snakemake's own CPU s, its jobs' CPU s)` from a Snakemake log, or None."""
    m = _last(_SCHEDULER, text)
    return (float(m["own"]), float(m["jobs"])) if m else None


def parse_usage(text: str) -> Usage | None:
    """The last usage line in a log's text, or None when it has none (an older svdzoo, a
    job that failed)."""
    m = _last(_LINE, text)
    return Usage(m["command"], float(m["wall"]), float(m["cpu"]), float(m["rss"])) if m else None


def read_usage(log: Path) -> Usage | None:
    """`parse_usage` of a log file; None when the file does not exist."""
    try:
        return parse_usage(log.read_text(errors="replace"))
    except FileNotFoundError:
        return None
