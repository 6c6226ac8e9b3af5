"""Which of Duo-SVD's column splits hurt the model at a ratio where they fail as a set?

At 80 % on SmolLM2, `duo-svd` (35 splits kept at the official 1 %) scores worse than the
same allocation without splits (`duo-svd-allocation`), although every split cuts its
layer's error on held-out tokens (bench_split_heldout.py). This puts the splits into the
no-split model one at a time: each row is the no-split model with exactly one matrix
taken from `duo-svd`'s model (same rank budget, its column split), scored by perplexity on
the evaluation windows. The last row takes them all, which must give `duo-svd`'s own
perplexity. A split whose one-at-a-time perplexity is above the no-split model's hurts by
itself; if none does, the damage is their combination.

Writes OUT.{csv,md,png}. Run in a project that has run workflow/configs/ablations.yaml:

    python benchmarks/bench_split_one_at_a_time.py --ratio 0.80
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pandas as pd  # noqa: E402
from results_io import run_or_rebuild, save_figure, write_results  # noqa: E402
from tqdm import tqdm  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "split-one-at-a-time"
MODEL = "smollm2-135m"
ALL = "(all splits)"
NONE = "(no split)"


def measure(args: argparse.Namespace) -> pd.DataFrame:
    from svdzoo.data import evaluation_windows, window_prefix
    from svdzoo.evaluation.perplexity import perplexity
    from svdzoo.models import load_model, load_tokenizer, replace_module

    root = args.results / "compressed" / MODEL
    plain_dir = root / "duo-svd-allocation" / f"r{args.ratio}"
    split_dir = root / "duo-svd" / f"r{args.ratio}"
    split_manifest = json.loads((split_dir / "manifest.json").read_text())
    names = sorted(n for n, m in split_manifest["modules"].items() if m.get("kept_columns"))
    model, donor = load_model(plain_dir), load_model(split_dir)
    windows = {
        c: evaluation_windows(
            load_tokenizer(plain_dir), c, 256, max_windows=args.max_windows,
            prefix=window_prefix(model.config),
        )
        for c in args.corpora
    }  # fmt: skip
    gains = {}
    if args.gains is not None:  # the calibration-Gram gain of each split (bench_split_heldout)
        g = pd.read_csv(args.gains)
        g = g[g["ratio"] == float(args.ratio)]
        gains = dict(zip(g["matrix"], g["gain"], strict=True))

    def score(label: str) -> dict:
        row = {"swapped": label, "calibration_gain": gains.get(label, float("nan"))}
        for c, w in windows.items():
            row[c] = perplexity(model, w, desc=f"{label} {c}")
        return row

    rows = [score(NONE)]
    for name in tqdm(names, desc="one split at a time"):
        plain = model.get_submodule(name)
        replace_module(model, name, donor.get_submodule(name))
        rows.append(score(name))
        replace_module(model, name, plain)
    for name in names:
        replace_module(model, name, donor.get_submodule(name))
    rows.append(score(ALL))
    return pd.DataFrame(rows)


def agreement(df: pd.DataFrame, args: argparse.Namespace) -> str:
    """The harness's check: no split and all splits must be the workflow's own
    `duo-svd-allocation` and `duo-svd` perplexities (its ppl.json, same windows)."""
    worst = 0.0
    for label, method in ((NONE, "duo-svd-allocation"), (ALL, "duo-svd")):
        f = args.results / "metrics" / MODEL / method / f"r{args.ratio}" / "ppl.json"
        if not f.is_file():
            return f"(not checked against the workflow: {f} is missing)"
        want = json.loads(f.read_text())["perplexity"]
        row = df[df["swapped"] == label].iloc[0]
        worst = max(worst, *(abs(row[c] / want[c] - 1) for c in args.corpora))
    return (
        "No split and all splits against the workflow's `duo-svd-allocation` and `duo-svd` "
        f"ppl.json: largest relative difference {worst:.1e}."
    )


def report(df: pd.DataFrame, how: str, args: argparse.Namespace) -> str:
    base = df[df["swapped"] == NONE].iloc[0]
    one = df[~df["swapped"].isin([NONE, ALL])].copy()
    lines = [
        f"# Duo-SVD's splits one at a time ({MODEL}, {float(args.ratio):.0%})",
        "",
        f"`python benchmarks/bench_split_one_at_a_time.py --ratio {args.ratio}` ({how}, "
        f"{platform.machine()}); perplexity on at most {args.max_windows} windows of 256.",
        "",
    ]
    lines += [agreement(df, args), ""]
    for c in args.corpora:
        one[f"{c} / no split"] = one[c] / base[c]
        worse = int((one[c] > base[c]).sum())
        all_row = df[df["swapped"] == ALL].iloc[0]
        ratio = one[f"{c} / no split"]
        rho = one["calibration_gain"].corr(ratio, method="spearman")
        lines.append(
            f"- {c}: no split {base[c]:,.2f}; all {len(one)} splits {all_row[c]:,.2f} "
            f"(x{all_row[c] / base[c]:.3f}; the product of the single effects x"
            f"{ratio.prod():.3f}); {worse} of {len(one)} splits alone are worse than none, "
            f"the largest x{ratio.max():.3f}, the median x{ratio.median():.3f}; Spearman "
            f"correlation of a split's calibration gain with its effect {rho:.2f}"
        )
    cols = ["swapped", "calibration_gain", *[f"{c} / no split" for c in args.corpora]]
    lines += ["", one[cols].to_markdown(index=False, floatfmt=".4f"), ""]
    return "\n".join(lines)


def plot(df: pd.DataFrame, args: argparse.Namespace, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = df[df["swapped"] == NONE].iloc[0]
    one = df[~df["swapped"].isin([NONE, ALL])]
    fig, ax = plt.subplots(figsize=(6, 4))
    for c in args.corpora:
        ax.scatter(100 * one["calibration_gain"], one[c] / base[c], s=14, label=c)
    ax.axhline(1.0, color="grey", lw=0.8, ls="--", label="no split")
    ax.set_xscale("log")
    ax.set_xlabel("the split's layer-error cut on the calibration Gram (%)")
    ax.set_ylabel("perplexity with this split alone / no split")
    ax.set_title(f"{MODEL}, {float(args.ratio):.0%} removed: one split at a time")
    ax.legend(fontsize=8)
    save_figure(fig, path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--results", type=Path, default=Path("results"))
    p.add_argument("--ratio", default="0.80")
    p.add_argument("--corpora", nargs="+", default=["pydoc", "pysource"])
    p.add_argument("--max-windows", type=int, default=8)
    p.add_argument("--gains", type=Path, default=None, help="bench_split_heldout's CSV")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--from-csv", type=Path, default=None)
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args()
    df, how = run_or_rebuild(args, measure)
    write_results(args.out, df, report(df, how, args), lambda path: plot(df, args, path))


if __name__ == "__main__":
    main()
