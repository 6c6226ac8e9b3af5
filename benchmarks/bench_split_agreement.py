"""Duo-SVD's fast split searches against the reference on a seeded random sweep (issue 16).

The tests check the fast searches on a few fixed matrices; this sweeps thousands of small
random ones, built to be hard: anisotropic Grams (activation scales over 0-6 decades),
outlier features, near-low-rank weights with heavy columns, Grams exactly symmetric or only
to round-off, every schedule, ranks over `[1, min(m, n)]` (past the break-even rank
`m n / (m + n)` too, which no compression ratio asks for but the function accepts).

For each case `exact` (float32 probes, the default, and float64 probes) is compared with
`reference`, which whitens every candidate's rest afresh (the definition): the same split
(`delta_r`), and the loss within 1e-6 relative. A differing split is classed a **tie** when
both losses are numerically zero (at most 1e-12 of the layer's energy `tr(W H W^T)`): the
rest is then represented exactly at several splits, and which one a schedule takes is
decided by round-off in either search. Anything else is a **mismatch**, a bug; so is a
reported loss that is not the returned factors' layer loss computed directly.

Writes benchmarks/results/split-agreement.{csv,md,png}.

    python benchmarks/bench_split_agreement.py --cases 4000
"""

from __future__ import annotations

import argparse
import platform
import random
import time
from pathlib import Path

import pandas as pd
import torch
from tqdm import tqdm

from svdzoo import column_split, linalg
from svdzoo.io import atomic_path, write_text

OUT = Path(__file__).resolve().parent / "results" / "split-agreement"
F64 = torch.float64
FAST = {"exact (float32 probes)": "float32", "exact (float64 probes)": "float64"}
LOSS_RTOL = 1e-6
ZERO = 1e-12  # of the layer's energy: a loss this small is round-off of an exact fit


def case(seed: int, max_dim: int = 320) -> tuple[torch.Tensor, torch.Tensor, int, str, dict]:
    """`(W, H, k, schedule, description)` of one random case, from its seed alone; sides
    log-uniform in `[6, max_dim]` (the float32 probes and both sides of the cost model need
    the larger ones)."""
    rnd = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    m, n = (round(6 * (max_dim / 6) ** rnd.random()) for _ in range(2))
    tokens = rnd.choice([n + 5, 2 * n, 4 * n])
    decades = rnd.choice([0, 1, 3, 6])
    X = torch.randn(n, tokens, generator=g, dtype=F64)
    X *= torch.logspace(0, -decades, n, dtype=F64)[:, None]
    outliers = rnd.random() < 0.5
    if outliers:
        X[torch.randperm(n, generator=g)[: max(1, n // 10)]] *= rnd.choice([10.0, 100.0, 1e3])
    H = X @ X.T
    symmetric = rnd.random() < 0.5
    if symmetric:
        H = 0.5 * (H + H.T)
    W = torch.randn(m, n, generator=g, dtype=F64)
    low_rank = rnd.random() < 0.5
    if low_rank:  # a few directions plus heavy columns: where splits pay
        r0 = rnd.randint(1, min(m, n))
        W = 0.01 * W + torch.randn(m, r0, generator=g, dtype=F64) @ torch.randn(
            r0, n, generator=g, dtype=F64
        )
        cols = torch.randperm(n, generator=g)[: rnd.randint(1, max(1, n // 5))]
        W[:, cols] += rnd.choice([1.0, 10.0]) * torch.randn(m, cols.numel(), generator=g, dtype=F64)
    k = rnd.randint(1, min(m, n))
    schedule = rnd.choice(column_split.SCHEDULES)
    about = dict(m=m, n=n, k=k, schedule=schedule, tokens=tokens, decades=decades)
    about.update(outliers=outliers, symmetric=symmetric, low_rank=low_rank)
    about["past_break_even"] = k > m * n / (m + n)
    return W, H, k, schedule, about


def _honest(W: torch.Tensor, H: torch.Tensor, split, energy: float) -> bool:
    """Whether a split's reported loss is its factors' layer loss `tr(D H D^T)`,
    `D = W - W'`, computed directly (to the direct form's round-off)."""
    if split is None:
        return True
    D = W - split.product()
    direct = float(torch.trace(D @ H @ D.T))
    return abs(split.loss - direct) <= 1e-8 * max(split.loss, direct) + ZERO * energy


def compare(seed: int, max_dim: int = 320) -> list[dict]:
    W, H, k, schedule, about = case(seed, max_dim)
    energy = float(torch.trace(W @ H @ W.T))
    try:
        ref = column_split.column_preserving_split(W, H, k, search="reference", schedule=schedule)
    except linalg.NumericsError as exc:  # e.g. a Gram too singular to whiten
        return [dict(seed=seed, **about, search="reference", outcome=f"refused: {exc}")]
    rows = []
    ref_honest = _honest(W, H, ref, energy)
    for label, probes in FAST.items():
        fast = column_split.column_preserving_split(W, H, k, schedule=schedule, probes=probes)
        dr_ref = 0 if ref is None else ref.delta_r
        dr = 0 if fast is None else fast.delta_r
        loss_ref = None if ref is None else ref.loss
        loss = None if fast is None else fast.loss
        if not (ref_honest and _honest(W, H, fast, energy)):
            outcome = "loss not the factors'"
        elif dr == dr_ref:
            close = loss_ref is None or abs(loss - loss_ref) <= LOSS_RTOL * loss_ref + ZERO * energy
            outcome = "same split" if close else "mismatch"
        else:
            zero = all(x is None or x <= ZERO * energy for x in (loss, loss_ref))
            outcome = "tie" if zero else "mismatch"
        rows.append(
            dict(seed=seed, **about, search=label, outcome=outcome, delta_r=dr)
            | dict(delta_r_reference=dr_ref, loss=loss, loss_reference=loss_ref, energy=energy)
        )
    return rows


def report(df: pd.DataFrame, wall: float, command: str) -> str:
    tried = df[~df.outcome.str.startswith("refused")]
    table = (
        tried.assign(range=tried.past_break_even.map({False: "k <= mn/(m+n)", True: "past it"}))
        .groupby(["search", "range"])
        .outcome.value_counts()
        .unstack(fill_value=0)
        .reset_index()
    )
    bad = tried[tried.outcome.isin(["mismatch", "loss not the factors'"])]
    lines = [
        "# Duo-SVD split search: fast searches against the reference, random sweep",
        "",
        f"`{command}` on "
        f"{platform.platform()}, torch {torch.__version__}, {wall:.0f} s. Every case is "
        "rebuilt from its seed (`case(seed)`). **same split**: the reference's `delta_r` and "
        f"a loss within {LOSS_RTOL:g} relative; **tie**: another split, both losses "
        f"numerically zero (<= {ZERO:g} of `tr(W H W^T)`: the rest is fitted exactly at "
        "several splits, and round-off picks one); **mismatch**: anything else; **loss not "
        "the factors'**: a reported loss (the fast search's or the reference's) that is not "
        "`tr(D H D^T)` of its factors, computed directly, to 1e-8.",
        "",
        table.to_markdown(index=False),
        "",
        f"Refused by the reference (Gram not whitenable): {int((df.search == 'reference').sum())}.",
        "",
        f"**Mismatches and wrong losses: {len(bad)}.**",
    ]
    if len(bad):
        lines += ["", bad.head(20).to_markdown(index=False)]
    lines += ["", "![loss agreement](split-agreement.png)", ""]
    return "\n".join(lines)


def figure(df: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    same = df[(df.outcome == "same split") & df.loss_reference.notna()]
    fig, ax = plt.subplots(figsize=(6, 3.6), layout="tight")
    for label, g in same.groupby("search"):
        allowed = LOSS_RTOL * g.loss_reference + ZERO * g.energy
        used = ((g.loss - g.loss_reference).abs() / allowed).clip(lower=1e-12)
        ax.hist(used, bins=[10.0**e for e in range(-12, 2)], alpha=0.6, label=label)
    ax.axvline(1.0, color="grey", ls="--", lw=1, label="tolerance")
    ax.set_xscale("log")
    ax.set_xlabel(f"|loss - reference| / ({LOSS_RTOL:g} reference + {ZERO:g} tr(W H W^T))")
    ax.set_ylabel("cases with the reference's split")
    ax.legend(fontsize=7)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=4000)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--max-dim", type=int, default=320)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    rows: list[dict] = []
    seeds = range(args.first_seed, args.first_seed + args.cases)
    for seed in tqdm(seeds, desc="cases", mininterval=5):
        rows += compare(seed, args.max_dim)
    df = pd.DataFrame(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.out.with_suffix(".csv")) as tmp:
        df.to_csv(tmp, index=False)
    figure(df, args.out.with_suffix(".png"))
    command = f"python benchmarks/{Path(__file__).name} --cases {args.cases}"
    command += f" --first-seed {args.first_seed} --max-dim {args.max_dim}"
    text = report(df, time.perf_counter() - t0, command)
    write_text(args.out.with_suffix(".md"), text)
    print(text)
    return 1 if df.outcome.isin(["mismatch", "loss not the factors'"]).any() else 0


if __name__ == "__main__":
    raise SystemExit(main())
