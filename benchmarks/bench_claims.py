"""Each paper's claim against SVD-LLM, on every real model at once: does it hold on both?

A claim made on LLaMA should survive a change of family; one model cannot say whether it
does. This script reads the tidy CSVs that `bench_real_model.py` writes, one per model
(columns model, method, ratio, metric, dataset, value), and writes

    benchmarks/results/claims.csv   model, method, ratio, corpus, ppl, svd_llm_ppl, ratio_to_svd_llm
    benchmarks/results/claims.md    per method and ratio: the factor against SVD-LLM on each
                                    model and corpus, and whether the claim holds everywhere
    benchmarks/results/claims.png   heatmap of log2(perplexity / SVD-LLM's): blue, the method
                                    wins; red, it loses; one panel per corpus

    python benchmarks/bench_claims.py --csv benchmarks/results/real-model.csv \
        --csv benchmarks/results/real-model-gemma3.csv

`--methods` compares other methods the same way, e.g. each seed method's ablations (its
parts alone) from a `gemma3-270m-ablations.yaml` run, to see which part carries a claim.

Perplexity only: with 15 questions per task, the zero-shot means have a standard error of
about 0.06, too coarse to rank methods that are close.
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from results_io import save_figure  # noqa: E402

from svdzoo.io import write_text  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
BASE = "svd-llm"
# the seed papers' methods as the default run names them (duo-svd-independent: Duo-SVD with
# the ratio-independent KL table the default run computes)
SEED = ("svd-llm-v2", "adasvd", "ressvd", "duo-svd", "duo-svd-independent")
CLIP_LOG2 = 4.0


def against_base(df: pd.DataFrame, methods: tuple[str, ...] = SEED) -> pd.DataFrame:
    """One row per model, method, ratio and corpus: its perplexity over SVD-LLM's."""
    ppl = df[df.metric == "perplexity"].rename(columns={"dataset": "corpus", "value": "ppl"})
    ppl = ppl.assign(ratio=ppl.ratio.round(6))
    base = ppl[ppl.method == BASE][["model", "ratio", "corpus", "ppl"]]
    base = base.rename(columns={"ppl": "svd_llm_ppl"})
    out = ppl[ppl.method.isin(methods)].merge(base, on=["model", "ratio", "corpus"], how="inner")
    out["ratio_to_svd_llm"] = out.ppl / out.svd_llm_ppl
    cols = ["model", "method", "ratio", "corpus", "ppl", "svd_llm_ppl", "ratio_to_svd_llm"]
    return out[cols].sort_values(["method", "ratio", "model", "corpus"]).reset_index(drop=True)


def verdicts(claims: pd.DataFrame) -> pd.DataFrame:
    """Per method and ratio: each model x corpus factor, and 'everywhere' / 'nowhere' / 'mixed'."""
    claims = claims.assign(where=claims.model + " " + claims.corpus)
    wide = claims.pivot_table(
        index=["method", "ratio"], columns="where", values="ratio_to_svd_llm", sort=False
    )
    wins = (wide < 1).sum(axis=1)
    counted = wide.notna().sum(axis=1)
    verdict = [
        "holds everywhere" if w == n else "fails everywhere" if w == 0 else f"mixed ({w} of {n})"
        for w, n in zip(wins, counted, strict=True)
    ]
    table = wide.map(lambda v: "" if math.isnan(v) else f"x{v:.2f}")
    table["claim"] = verdict
    return table


def figure(claims: pd.DataFrame, out: Path, methods: tuple[str, ...] = SEED) -> None:
    corpora = sorted(claims.corpus.unique())
    height = 3.6 + 0.25 * max(0, len(methods) - len(SEED))
    fig, axes = plt.subplots(1, len(corpora), figsize=(6.5 * len(corpora), height), squeeze=False)
    # colours saturate at 16 x either way, so that one collapsed method (ASVD without its
    # allocation: 1e7 x) does not wash out the differences of 0.5-2 x between the others
    spread = float(claims.ratio_to_svd_llm.map(math.log2).abs().max())
    vmax = min(max(1.0, spread), CLIP_LOG2)
    for ax, corpus in zip(axes[0], corpora, strict=True):
        sub = claims[claims.corpus == corpus]
        grid = sub.pivot_table(
            index="method", columns=["model", "ratio"], values="ratio_to_svd_llm"
        )
        grid = grid.reindex([m for m in methods if m in grid.index])
        im = ax.imshow(grid.map(math.log2).to_numpy(), cmap="RdBu_r", vmin=-vmax, vmax=vmax,
                       aspect="auto")  # fmt: skip
        for (i, j), v in np.ndenumerate(grid.to_numpy()):
            if not math.isnan(v):
                dark = abs(math.log2(v)) > 0.6 * vmax
                ax.text(j, i, f"{v:.2g}", ha="center", va="center", fontsize=7,
                        color="white" if dark else "black")  # fmt: skip
        ax.set_yticks(range(len(grid.index)), grid.index, fontsize=8)
        ax.set_xticks(range(grid.shape[1]), [f"{r:.0%}" for _, r in grid.columns], fontsize=7)
        models = list(dict.fromkeys(m for m, _ in grid.columns))
        for m in models:  # each model's name over its block of ratios, blocks separated
            cols = [j for j, (mm, _) in enumerate(grid.columns) if mm == m]
            ax.text((cols[0] + cols[-1]) / 2, -0.65, m, ha="center", va="bottom", fontsize=8)
            if cols[0] > 0:
                ax.axvline(cols[0] - 0.5, color="k", lw=1.5)
        ax.set_title(
            f"perplexity / SVD-LLM's, {corpus} (below 1: the claim holds)", fontsize=9, pad=22
        )
        fig.colorbar(im, ax=ax, label="log2", extend="both" if spread > vmax else "neither")
    save_figure(fig, out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--csv", type=Path, action="append", required=True,
                    help="a bench_real_model.py CSV (repeatable, one per model)")  # fmt: skip
    ap.add_argument("--methods", nargs="+", default=list(SEED),
                    help=f"methods to compare with {BASE} (default: the seed papers')")  # fmt: skip
    ap.add_argument("--out", type=Path, default=RESULTS / "claims")
    args = ap.parse_args(argv)
    missing = [str(p) for p in args.csv if not p.is_file()]
    if missing:
        ap.error(f"no such CSV: {', '.join(missing)} (run bench_real_model.py first)")
    df = pd.concat([pd.read_csv(p) for p in args.csv], ignore_index=True)
    methods = tuple(dict.fromkeys(args.methods))
    if BASE in methods:
        ap.error(f"{BASE} is what every method is compared with; leave it out of --methods")
    claims = against_base(df, methods)
    absent = [m for m in methods if m not in set(claims.method)]
    if absent and methods != SEED:  # a mistyped name would quietly lose its row
        ap.error(f"no perplexities beside {BASE}'s for {absent} in {[str(p) for p in args.csv]}")
    if claims.empty:
        ap.error(f"none of {list(methods)} has perplexities beside {BASE}'s in {args.csv}")
    write_text(args.out.with_suffix(".csv"), claims.to_csv(index=False))
    table = verdicts(claims).reset_index()
    table["ratio"] = table["ratio"].map("{:.0%}".format)
    cmd = " ".join(["python benchmarks/bench_claims.py", *(sys.argv[1:] if argv is None else argv)])
    lines = [
        "# The seed papers' claims against SVD-LLM, on every real model"
        if methods == SEED
        else f"# {', '.join(methods)} against SVD-LLM",
        "",
        f"`{cmd}` ({platform.platform()}). Each cell is the method's perplexity over SVD-LLM's at"
        " the same ratio, model and corpus (below 1: the claim holds); `claim` counts the cells"
        " where it holds.",
        "",
        table.to_markdown(index=False),
        "",
        f"![claims heatmap]({args.out.with_suffix('.png').name})",
        "",
    ]
    write_text(args.out.with_suffix(".md"), "\n".join(lines))
    figure(claims, args.out.with_suffix(".png"), methods)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
