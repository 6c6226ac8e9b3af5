"""Duo-SVD's column-split threshold on SmolLM2: the table and figure of
`run_duo_accept.sh`'s models (perplexity over `accept`, one line per ratio).

`run_duo_accept.sh` compresses and scores; this collects what it wrote in its output
folder (`duo-svd-a<accept>-r<ratio>/manifest.json` beside `<same>.ppl.json`) into
OUT.{csv,md,png}, or redraws them from a CSV:

    python benchmarks/bench_duo_accept.py --dir OUTDIR
    python benchmarks/bench_duo_accept.py --from-csv benchmarks/results/duo-accept.csv
"""

from __future__ import annotations

import argparse
import json
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import pandas as pd
from results_io import save_csv, save_figure

from svdzoo.io import write_text

OUT = Path(__file__).resolve().parent / "results" / "duo-accept"
OFFICIAL = 0.01


def collect(folder: Path) -> pd.DataFrame:
    """One row per scored model: accept, ratio, both perplexities, splits kept, ratio reached."""
    rows = []
    for f in sorted(folder.glob("duo-svd-a*-r*.ppl.json")):
        d = folder / f.name.removesuffix(".ppl.json")
        ppl = json.loads(f.read_text())["perplexity"]
        m = json.loads((d / "manifest.json").read_text())
        accept, ratio = d.name.removeprefix("duo-svd-a").split("-r")
        rows.append(
            {
                "accept": float(accept),
                "ratio": float(ratio),
                "pydoc": round(float(ppl["pydoc"]), 4),
                "pysource": round(float(ppl["pysource"]), 4),
                "splits": sum(1 for x in m["modules"].values() if x.get("kept_columns")),
                "achieved": round(float(m["achieved_ratio"]), 4),
            }
        )
    if not rows:
        raise SystemExit(f"no duo-svd-a*-r*.ppl.json in {folder}: run run_duo_accept.sh first")
    return pd.DataFrame(rows).sort_values(["ratio", "accept"], ignore_index=True)


def _two(x: float) -> str:
    """Two decimals rounded half up from the CSV's text (67.1450 is 67.15, as docs say)."""
    return f"{Decimal(str(x)).quantize(Decimal('0.01'), ROUND_HALF_UP):,}"


def markdown(df: pd.DataFrame) -> str:
    """Perplexity pydoc / pysource and splits kept, accept by ratio; each ratio's best bold."""
    ratios = sorted(df["ratio"].unique())
    lines = [
        "# Duo-SVD's column-split threshold (SmolLM2-135M)",
        "",
        "`bash benchmarks/run_duo_accept.sh` then `python benchmarks/bench_duo_accept.py`. "
        "Perplexity pydoc / pysource, and how many matrices kept a split; `accept` = 0.01 "
        "is the official threshold, 1.0 keeps no split (`duo-svd-allocation`). The best "
        "pydoc perplexity per ratio is bold.",
        "",
        "| accept | " + " | ".join(f"{r:.0%}" for r in ratios) + " |",
        "| --- |" + " --- |" * len(ratios),
    ]
    best = df.loc[df.groupby("ratio")["pydoc"].idxmin()].set_index("ratio")["accept"]
    for accept, g in df.groupby("accept"):
        cells = []
        for r in ratios:
            row = g[g["ratio"] == r]
            if row.empty:
                cells.append("")
                continue
            row = row.iloc[0]
            text = f"{_two(row['pydoc'])} / {_two(row['pysource'])}"
            text = f"**{text}**" if best[r] == accept else text
            cells.append(f"{text}, {int(row['splits'])}")
        label = f"{accept:g}" + (" (official)" if accept == OFFICIAL else "")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(df: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8))
    for ax, corpus in zip(axes, ("pydoc", "pysource"), strict=True):
        for ratio, g in df.groupby("ratio"):
            # each ratio over its own no-split model: below 1, the splits help
            base = g.loc[g["accept"] == g["accept"].max(), corpus].iloc[0]
            ax.plot(g["accept"], g[corpus] / base, marker="o", label=f"{ratio:.0%} removed")
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax.axvline(OFFICIAL, color="red", lw=0.8, ls=":", label="official 1 %")
        ax.set_xscale("log")
        ax.set_xlabel("accept: the layer-error cut a split must reach")
        ax.set_title(f"{corpus} perplexity over no split (accept = 1)")
    axes[0].set_ylabel("perplexity / no-split perplexity")
    axes[0].legend(fontsize=8)
    save_figure(fig, path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--dir", type=Path, help="run_duo_accept.sh's output folder")
    src.add_argument("--from-csv", type=Path)
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args()
    df = pd.read_csv(args.from_csv) if args.from_csv else collect(args.dir)
    if args.from_csv is None or args.from_csv.resolve() != args.out.with_suffix(".csv").resolve():
        save_csv(df, args.out)
    text = markdown(df)
    write_text(args.out.with_suffix(".md"), text)
    plot(df, args.out.with_suffix(".png"))
    print(text)


if __name__ == "__main__":
    main()
