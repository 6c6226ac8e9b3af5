"""svdzoo-duo-probed against Duo-SVD with all its splits and with none, on SmolLM2.

Duo-SVD keeps every column split that cuts its layer's error by 1 %; at 80 % those splits
together raise perplexity x1.8-2.0 (bench_split_one_at_a_time.py). `svdzoo-duo-probed`
keeps a split only if it lowers the model's KL on calibration windows. Each ratio
compares three models at the same knapsack ranks:

- all splits: the workflow's `duo-svd-independent` (or `duo-svd` for the per-ratio table);
- no split: `duo-svd-allocation` with the same table (the workflow's for the per-ratio
  table; `--option protocol=independent` for the ratio-independent one, which no workflow
  run has);
- probed: `svdzoo-duo-probed` (`--option protocol=per-ratio` for the per-ratio table).

The last two are made here with the CLI (`svdzoo compress`, then `svdzoo evaluate` with
the ablation config's evaluation settings) into `--work`, reusing what is already there.
Run in a project that has run workflow/configs/ablations.yaml:

    python benchmarks/bench_split_probe.py --work split-probe-runs

Writes OUT.{csv,md,png}.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
from pathlib import Path

import pandas as pd
from results_io import run_or_rebuild, save_figure, write_results

OUT = Path(__file__).resolve().parent / "results" / "split-probe"
TABLES = {"independent": "sensitivity-duo", "per-ratio": "sensitivity-duo-r{ratio}"}
ALL = {"independent": "duo-svd-independent", "per-ratio": "duo-svd"}
MADE = {"no split": "duo-svd-allocation", "probed": "svdzoo-duo-probed"}


def _run(cmd: list[str], log: Path) -> None:
    print("+", " ".join(cmd), flush=True)
    with log.open("w") as f:
        subprocess.run(cmd, check=True, stdout=f, stderr=subprocess.STDOUT)


def _made(args, table: str, variant: str, ratio: str) -> tuple[Path, Path]:
    """The compressed model and its ppl.json, made unless `--work` has them."""
    method, stats = MADE[variant], Path("data/stats") / args.model / args.calibration
    out = args.work / f"{method}-{'ind' if table == 'independent' else 'pr'}-r{ratio}"
    ppl = out.with_name(out.name + ".ppl.json")
    if not (out / "manifest.json").is_file():
        _run(["svdzoo", "compress", "--model", f"data/models/{args.model}",
              "--stats", str(stats / "gram"),
              "--sensitivity-duo", str(stats / TABLES[table].format(ratio=ratio)),
              "--method", method, "--ratio", ratio, "--option", f"protocol={table}",
              "--out", str(out), "--force"], out.with_name(out.name + ".log"))  # fmt: skip
    if not ppl.is_file():
        _run(["svdzoo", "evaluate", "--model", str(out), "--corpora", *args.corpora,
              "--seqlen", "256", "--max-windows", str(args.max_windows), "--ppl-out", str(ppl)],
             out.with_name(out.name + ".eval.log"))  # fmt: skip
    return out, ppl


def measure(args: argparse.Namespace) -> pd.DataFrame:
    args.work.mkdir(parents=True, exist_ok=True)
    rows = []
    for table, ratios in (("independent", args.ratios), ("per-ratio", args.per_ratio)):
        for ratio in ratios:
            metrics = args.results / "metrics" / args.model
            files = {"all splits": (None, metrics / ALL[table] / f"r{ratio}" / "ppl.json")}
            for variant in MADE:
                if table == "per-ratio" and variant == "no split":  # a workflow method
                    files[variant] = (None, metrics / MADE[variant] / f"r{ratio}" / "ppl.json")
                else:
                    files[variant] = _made(args, table, variant, ratio)
            for variant, (model, ppl) in files.items():
                row = {"table": table, "ratio": float(ratio), "variant": variant}
                row.update(json.loads(ppl.read_text())["perplexity"])
                if model is not None:  # made here: its compression time
                    manifest = json.loads((model / "manifest.json").read_text())
                    row["compress_s"] = manifest["compression_time_s"]
                if variant == "probed":
                    probe = manifest["allocation"]["split_probe"]
                    row.update(kept=probe["kept"], candidates=len(probe["candidates"]),
                               kl_without=probe["kl_without_splits"], kl=probe["kl"])  # fmt: skip
                rows.append(row)
    return pd.DataFrame(rows)


def report(df: pd.DataFrame, how: str, args: argparse.Namespace) -> str:
    lines = [
        f"# Duo-SVD's column splits kept by a KL probe ({args.model})",
        "",
        f"`python benchmarks/bench_split_probe.py --model {args.model}` ({how}, {platform.machine()}); perplexity "
        f"on at most {args.max_windows} windows of 256 tokens; the probe reads 8 calibration "
        "windows (pydoc, the calibration corpus). `compress_s`: the manifest's compression "
        "time of the models made here (the probe's forward passes included), on this host "
        "and whatever else ran on it.",
        "",
    ]
    for (table, ratio), g in df.groupby(["table", "ratio"], sort=False):
        by = g.set_index("variant")
        none, probed = by.loc["no split"], by.loc["probed"]
        cells = "; ".join(
            f"{c} {by.loc['all splits', c]:,.2f} / {none[c]:,.2f} / {probed[c]:,.2f} "
            f"(x{probed[c] / none[c]:.3f} of no split, x{probed[c] / by.loc['all splits', c]:.3f}"
            " of all)"
            for c in args.corpora
        )
        lines.append(
            f"- {table} table, {ratio:.0%}: all / no split / probed: {cells}; kept "
            f"{int(probed['kept'])} of {int(probed['candidates'])} splits, calibration KL "
            f"{probed['kl_without']:.4f} -> {probed['kl']:.4f}"
        )
    cols = ["table", "ratio", "variant", *args.corpora, "kept", "candidates", "compress_s"]
    lines += ["", df[cols].to_markdown(index=False, floatfmt=".2f"), ""]
    return "\n".join(lines)


def plot(df: pd.DataFrame, args: argparse.Namespace, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(args.corpora), figsize=(5 * len(args.corpora), 3.8))
    for ax, c in zip(list(axes), args.corpora, strict=True):
        for (table, variant), g in df.groupby(["table", "variant"], sort=False):
            none = df[(df["table"] == table) & (df["variant"] == "no split")].set_index("ratio")
            y = g.set_index("ratio")[c] / none[c]
            ax.plot(100 * y.index, y.values, marker="o", ls="-" if table == "independent" else
                    ":", label=f"{variant} ({table})")  # fmt: skip
        ax.set_yscale("log")
        ax.set_xlabel("parameters removed (%)")
        ax.set_ylabel(f"{c} perplexity / no split")
        ax.set_title(f"{args.model}: {c}")
        ax.legend(fontsize=7)
    save_figure(fig, path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--results", type=Path, default=Path("results"))
    p.add_argument("--work", type=Path, default=Path("split-probe-runs"))
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--calibration", default="pydoc-n32-l256-s3", help="the stats directory")
    p.add_argument("--ratios", nargs="+", default=["0.20", "0.40", "0.60", "0.80"])
    p.add_argument("--per-ratio", nargs="*", default=["0.40", "0.80"])
    p.add_argument("--corpora", nargs="+", default=["pydoc", "pysource"])
    p.add_argument("--max-windows", type=int, default=8)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--from-csv", type=Path, default=None)
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args()
    df, how = run_or_rebuild(args, measure)
    write_results(args.out, df, report(df, how, args), lambda path: plot(df, args, path))


if __name__ == "__main__":
    main()
