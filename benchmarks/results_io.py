"""What the benchmarks that can be cut off share: a CSV saved atomically after every row,
and a run that can be redone from that CSV (`--from-csv`) without computing again."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from svdzoo.io import atomic_path


def save_csv(df: pd.DataFrame, out: Path) -> None:
    """`out` with a `.csv` suffix, written atomically (a cut-off run keeps what it measured)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out.with_suffix(".csv")) as tmp:
        df.to_csv(tmp, index=False)


def run_or_rebuild(
    args: argparse.Namespace, run: Callable[[argparse.Namespace], pd.DataFrame]
) -> tuple[pd.DataFrame, str]:
    """`(rows, how they were made)`: `args.from_csv`'s rows, else `run(args)` timed, on
    `args.threads` threads (if given) and seeded."""
    if args.from_csv is not None:
        return pd.read_csv(args.from_csv), f"rebuilt from `{args.from_csv.name}`"
    import torch

    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    df = run(args)
    return df, f"{time.perf_counter() - t0:.0f} s"


def save_figure(fig, path: Path) -> None:
    """A matplotlib figure as PNG, laid out, written atomically, then closed."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def write_results(out: Path, df: pd.DataFrame, text: str, draw: Callable[[Path], None]) -> None:
    """OUT.csv, OUT.md (`text`, also printed) and OUT.png (`draw(path)`); `out` is a stem
    that may hold dots (`...-r0.40`), which `with_suffix` would cut."""
    from svdzoo.io import write_text

    save_csv(df, out.with_name(out.name + ".csv"))  # its with_suffix keeps ".csv"
    write_text(out.with_name(out.name + ".md"), text)
    draw(out.with_name(out.name + ".png"))
    print(text)
