"""Duo-SVD's split search on the real model: the fast searches against the reference
(issue 16, goal 1).

For every matrix of SmolLM2-135M (its cached Gram) at uniform 20/40/60 % removal it runs
`linalg.column_preserving_split` with each search, all from the same whitener and
whitened SVD (as `compress` shares them), and records

- the chosen split (`delta_r`, or none accepted) and its loss, against `reference`,
  which whitens every candidate's rest afresh (the definition);
- the time of the search, and of the whitened SVD, which is SVD-LLM's whole cost, so
  that Duo-SVD / SVD-LLM = (SVD + search) / SVD.

The CSV is rewritten after every matrix, so a cut-off run keeps what it measured.
Writes benchmarks/results/split-search.{csv,md}.

    python benchmarks/bench_split_search.py --model data/models/smollm2-135m \\
        --gram data/stats/smollm2-135m/pydoc-n32-l256-s3/gram --threads 1
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pandas as pd  # noqa: E402
import torch  # noqa: E402
from bench_precision import real_matrices, write_results  # noqa: E402

from svdzoo import linalg  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "split-search"
SEARCHES = ("reference", "exact", "ritz")
TOLERANCE = 1e-3


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def measure(W, H, S, ratios, **labels) -> list[dict]:
    m, n = W.shape
    svd, t_svd = _timed(lambda: linalg.whitened_svd(W, S))
    rows = []
    for ratio in ratios:
        k = linalg.rank_for_ratio(m, n, ratio)
        row = {**labels, "m": m, "n": n, "ratio": ratio, "rank": k, "svd_s": t_svd}
        for search in SEARCHES:
            split, t = _timed(
                lambda search=search, k=k: linalg.column_preserving_split(
                    W, H, k, S=S, svd=svd, search=search
                )
            )
            row[f"{search}_s"] = t
            row[f"{search}_delta_r"] = -1 if split is None else int(split.delta_r)
            row[f"{search}_kept"] = 0 if split is None else split.n_kept
            row[f"{search}_loss"] = linalg.truncate(W, S, k, svd=svd).loss if split is None else (
                split.loss
            )  # fmt: skip
        rows.append(row)
    return rows


def report(df: pd.DataFrame, wall: float) -> str:
    df = df.copy()
    lines = [
        "# Duo-SVD split search on SmolLM2-135M: fast searches against the reference",
        "",
        f"`python benchmarks/{Path(__file__).name}` on {platform.platform()}, "
        f"{torch.get_num_threads()} threads, {wall:.0f} s. Uniform rank per ratio; each search "
        "from the same whitener and whitened SVD. `reference` whitens every candidate's rest "
        "afresh; `exact` solves it in the whitened SVD's coordinates; `ritz` reduces that to "
        "a subspace when smaller.",
        "",
    ]
    summary = []
    for search in ("exact", "ritz"):
        same = df[f"{search}_delta_r"] == df["reference_delta_r"]
        rel = (df[f"{search}_loss"] / df["reference_loss"] - 1).where(df["reference_loss"] > 0, 0.0)
        for ratio, g in df.groupby("ratio"):
            idx = g.index
            summary.append(
                {
                    "search": search,
                    "ratio": ratio,
                    "matrices": len(g),
                    "splits accepted (reference)": int((g["reference_delta_r"] >= 0).sum()),
                    "same split": int(same[idx].sum()),
                    "max |loss rel diff|": float(rel[idx].abs().max()),
                }
            )
    lines += [pd.DataFrame(summary).to_markdown(index=False, floatfmt=".1e"), ""]
    speed = df.groupby(["type"])[["svd_s", *[f"{s}_s" for s in SEARCHES]]].sum()
    speed.loc["all"] = speed.sum()
    for search in SEARCHES:
        speed[f"Duo ({search}) / SVD-LLM"] = (speed.svd_s + speed[f"{search}_s"]) / speed.svd_s
    lines += [
        "Seconds summed over matrices and ratios (the SVD once per matrix and ratio, as a "
        "compression computes it), and Duo-SVD's time over SVD-LLM's, (SVD + search) / SVD:",
        "",
        speed.to_markdown(floatfmt=".2f"),
        "",
    ]
    ok = all(s["same split"] == s["matrices"] and s["max |loss rel diff|"] <= TOLERANCE
             for s in summary)  # fmt: skip
    lines += [
        f"Same split and loss within {TOLERANCE:.1%} everywhere: **{'yes' if ok else 'no'}**.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--gram", type=Path, required=True)
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.2, 0.4, 0.6])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=OUT)
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    rows: list[dict] = []
    for name, kind, W, H, S in real_matrices(a.model, a.gram):
        rows += measure(W, H, S, a.ratios, matrix=name, type=kind)
        write_results(rows, a.out)  # a cut-off run keeps what it measured
    write_results(rows, a.out, lambda df: report(df, time.perf_counter() - t0))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
