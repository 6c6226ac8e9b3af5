"""Do Duo-SVD's column splits hold on tokens they were not chosen on?

Duo-SVD keeps a split when it cuts the whitened layer error `sqrt(tr(D H D^T))` by more
than `accept` (1 %) on the calibration Gram. On SmolLM2 at 80 % the official threshold
makes Duo-SVD worse than keeping no split at all, while `accept=0.05` helps
(docs/results.md, "Duo-SVD's split threshold"). One reading: a gain of a few percent,
measured on 8,192 calibration tokens at a low rank, is noise. This measures it directly.

For every matrix that a workflow run's `duo-svd-allocation` model left low-rank (its
ranks are `duo-svd`'s: the same per-ratio table and knapsack), the best split is searched
on the calibration Gram with `accept=0` (the split the search finds, however small its
gain), and both the plain rank-`k` factors and the split are scored on the calibration
Gram and on a held-out Gram (other windows of the same corpus's train split). The gain is
`1 - err_split / err_plain`, as `accept` reads it. The splits recomputed at `accept=0.01`
must be `duo-svd`'s own (its manifest's kept columns), which checks that this
recomputation is the workflow's.

Writes OUT.{csv,md,png}. Run in a project that has run workflow/configs/ablations.yaml,
with a held-out Gram from `svdzoo calibrate ... --seed 4`:

    python benchmarks/bench_split_heldout.py --ratios 0.40 0.60 0.80 \\
        --heldout data/stats/smollm2-135m/pydoc-n128-l256-s4/gram
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pandas as pd  # noqa: E402
from results_io import run_or_rebuild, save_figure, write_results  # noqa: E402
from tqdm import tqdm  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "split-heldout"
MODEL = "smollm2-135m"
OFFICIAL = 0.01
BINS = [(0.0, 0.01), (0.01, 0.05), (0.05, 0.10), (0.10, 1.0)]


def _manifest(path: Path) -> dict:
    f = path / "manifest.json"
    if not f.is_file():
        raise SystemExit(f"{f} is missing: run the workflow's {path} first (ablations.yaml)")
    return json.loads(f.read_text())


def _gain(err_split: float, err_plain: float) -> float:
    return 1.0 - err_split / err_plain if err_plain > 0 else 0.0


class CapturedGrams:
    """`H = sum x x^T` of every target group's input in another model (a compressed one:
    what each layer sees once the layers before it are compressed), on calibration windows
    of `corpus`; `gram(layer, group)` as a cache's."""

    def __init__(self, model_dir: Path, corpus: str, nsamples: int, seqlen: int, seed: int):
        import torch

        from svdzoo.calibration.capture import group_input_hooks
        from svdzoo.data import calibration_windows, window_prefix
        from svdzoo.models import adapter_for, load_model, load_tokenizer

        model = load_model(model_dir)
        adapter = adapter_for(model)
        windows = calibration_windows(
            load_tokenizer(model_dir), corpus, nsamples, seqlen, seed,
            prefix=window_prefix(model.config),
        )  # fmt: skip
        self.grams: dict[tuple[int, str], torch.Tensor] = {}
        with torch.no_grad(), contextlib.ExitStack() as hooks:
            for i, layer in enumerate(adapter.layers(model)):

                def add(group: str, x: torch.Tensor, i: int = i) -> None:
                    x = x.to(torch.float64)
                    self.grams[(i, group)] = self.grams.get((i, group), 0) + x.T @ x

                hooks.enter_context(group_input_hooks(layer, adapter, add))
            for w in tqdm(windows.split(4), desc=f"inputs of {model_dir.name}"):
                model(w)

    def gram(self, layer: int, group: str):
        return self.grams[(layer, group)]


def measure(args: argparse.Namespace) -> pd.DataFrame:
    import torch

    from svdzoo import column_split, linalg
    from svdzoo.calibration import load_stats
    from svdzoo.models import adapter_for, load_model

    model = load_model(args.model)
    adapter = adapter_for(model)
    cal = load_stats(args.gram)
    if args.inputs_of is None:
        held = load_stats(args.heldout)
        if cal.manifest.get("model_fingerprint") != held.manifest.get("model_fingerprint"):
            raise SystemExit("the two Grams are of different models")
    targets = list(adapter.iter_targets(model))
    rows = []
    for ratio in args.ratios:
        if args.inputs_of is not None:
            other = Path(str(args.inputs_of).format(ratio=ratio))
            held = CapturedGrams(other, "pydoc", args.nsamples, 256, args.seed)
        alloc = _manifest(args.results / "compressed" / MODEL / "duo-svd-allocation" / f"r{ratio}")
        duo = _manifest(args.results / "compressed" / MODEL / "duo-svd" / f"r{ratio}")
        whiteners: dict = {}
        for name, layer, target, lin in tqdm(targets, desc=f"r{ratio}"):
            spec = alloc["modules"][name]
            if spec["dense"]:
                continue
            group = adapter.group_of(target)
            H = cal.gram(layer, group).to(torch.float64)
            Hh = held.gram(layer, group).to(torch.float64)
            S = whiteners.setdefault(
                (layer, group), linalg.cholesky_whitener(H, fallback="diag-damp")
            )
            W = lin.weight.detach().to(torch.float64)
            k = int(spec["rank"])
            svd = linalg.whitened_svd(W, S)
            plain = linalg.truncate(W, S, k, svd=svd)
            split = column_split.column_preserving_split(
                W, H, k, accept=0.0, S=S, svd=svd, base=plain, fallback="diag-damp"
            )
            row = {"ratio": float(ratio), "matrix": name, "type": adapter.matrix_type(target)}
            row.update(layer=layer, rank=k, duo_kept=int(duo["modules"][name]["kept_columns"]))
            row["plain_loss"] = linalg.layer_loss(W, plain.A, plain.B, H)
            row["plain_heldout"] = linalg.layer_loss(W, plain.A, plain.B, Hh)
            if split is None:
                row.update(kept=0, gain=0.0, gain_heldout=0.0)
            else:
                D = W - split.product()
                row["kept"] = split.n_kept
                row["gain"] = _gain(math.sqrt(split.loss), math.sqrt(row["plain_loss"]))
                heldout = float(torch.einsum("ij,jk,ik->", D, Hh, D))
                row["gain_heldout"] = _gain(math.sqrt(heldout), math.sqrt(row["plain_heldout"]))
            rows.append(row)
    return pd.DataFrame(rows)


def check_recomputation(df: pd.DataFrame) -> int:
    """Matrices whose split at the official threshold is not `duo-svd`'s (must be 0)."""
    official = df["kept"].where(df["gain"] > OFFICIAL, 0)
    return int((official != df["duo_kept"]).sum())


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per ratio and calibration-gain bin: how many splits, how many lose on held-out
    tokens, and the median held-out gain."""
    out = []
    for ratio, g in df[df["kept"] > 0].groupby("ratio"):
        for lo, hi in BINS:
            b = g[(g["gain"] > lo) & (g["gain"] <= hi)]
            out.append(
                {
                    "ratio": ratio,
                    "calibration gain": f"{lo:.0%}-{hi:.0%}",
                    "splits": len(b),
                    "worse on held-out": int((b["gain_heldout"] < 0).sum()),
                    "median held-out gain": b["gain_heldout"].median() if len(b) else float("nan"),
                    "median calibration gain": b["gain"].median() if len(b) else float("nan"),
                }
            )
    return pd.DataFrame(out)


def plot(df: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ratios = sorted(df["ratio"].unique())
    fig, axes = plt.subplots(1, len(ratios), figsize=(4.2 * len(ratios), 4), sharey=True)
    axes = [axes] if len(ratios) == 1 else list(axes)
    for ax, ratio in zip(axes, ratios, strict=True):
        g = df[(df["ratio"] == ratio) & (df["kept"] > 0)]
        kept = g["gain"] > OFFICIAL
        ax.scatter(100 * g.loc[kept, "gain"], 100 * g.loc[kept, "gain_heldout"], s=12,
                   label="kept at accept = 1 %")  # fmt: skip
        ax.scatter(100 * g.loc[~kept, "gain"], 100 * g.loc[~kept, "gain_heldout"], s=12,
                   marker="x", label="rejected")  # fmt: skip
        top = max(1.0, 100 * float(g["gain"].max()) if len(g) else 1.0)
        xs = [top * i / 200 for i in range(201)]  # y = x, drawn as a curve on the symlog axis
        ax.plot(xs, xs, color="grey", lw=0.8, ls="--", label="held-out = calibration")
        ax.set_xlim(0, top * 1.3)
        ax.axhline(0, color="black", lw=0.6)
        ax.axvline(100 * OFFICIAL, color="red", lw=0.6, ls=":")
        ax.set_xscale("symlog", linthresh=1.0)
        ax.set_title(f"{MODEL}, {float(ratio):.0%} removed")
        ax.set_xlabel("error cut on the calibration Gram (%)")
    axes[0].set_ylabel("error cut on held-out tokens (%)")
    axes[0].legend(fontsize=8)
    save_figure(fig, path)


def scored(args: argparse.Namespace) -> str:
    if args.inputs_of is None:
        return f"held-out Gram `{args.heldout}`"
    return (
        f"the inputs of `{args.inputs_of}` ({args.nsamples} pydoc windows of 256, seed "
        f"{args.seed}; the ratio's own model when the path has `{{ratio}}`)"
    )


def report(df: pd.DataFrame, how: str, args: argparse.Namespace) -> str:
    s = summary(df)
    lines = [
        "# Duo-SVD's column splits on held-out tokens",
        "",
        f"`python benchmarks/bench_split_heldout.py` ({how}, {platform.machine()}). "
        f"Calibration Gram `{args.gram}`, scored on {scored(args)}. Gain: "
        "`1 - err_split / err_plain` of the whitened layer error, the quantity `accept` "
        "thresholds (1 %). Matrices whose split at 1 % differs from `duo-svd`'s: "
        f"{check_recomputation(df)}.",
        "",
        s.to_markdown(index=False, floatfmt=".4f"),
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, default=Path(f"data/models/{MODEL}"))
    p.add_argument("--gram", type=Path, default=Path(f"data/stats/{MODEL}/pydoc-n32-l256-s3/gram"))
    held = p.add_mutually_exclusive_group(required=True)
    held.add_argument("--heldout", type=Path, help="a held-out Gram cache of the same model")
    held.add_argument(
        "--inputs-of",
        type=Path,
        help="score on the inputs of this (compressed) model instead, captured here",
    )
    p.add_argument("--nsamples", type=int, default=64, help="--inputs-of: windows of 256")
    p.add_argument("--seed", type=int, default=4, help="--inputs-of: the windows' seed")
    p.add_argument("--results", type=Path, default=Path("results"))
    p.add_argument("--ratios", nargs="+", default=["0.40", "0.60", "0.80"])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--from-csv", type=Path, default=None, help="redo md/png from a CSV")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args()
    df, how = run_or_rebuild(args, measure)
    write_results(args.out, df, report(df, how, args), lambda path: plot(df, path))


if __name__ == "__main__":
    main()
