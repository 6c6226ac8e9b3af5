"""How much calibration data the real model needs: perplexity against calibration size.

The papers calibrate on 256 x 2048 tokens; a 2-core default run cannot. Methods that fit
compensation to the calibration data (AdaSVD) may overfit a small set where plain
whitening (SVD-LLM) does not, so the default size is chosen from this curve: for each
calibration size (`--sizes NxL`: N windows of L tokens; or `--nsamples` at `--seqlen`),
calibrate, compress with each method at each ratio, and measure held-out perplexity on both
offline corpora (windows of `--seqlen` tokens, whatever the calibration length). Writes

    benchmarks/results/calibration-size.csv   one row per nsamples x method x ratio x corpus
    benchmarks/results/calibration-size.md    the table quoted in docs/results.md
    benchmarks/results/calibration-size.png   perplexity against calibration tokens

    python benchmarks/bench_calibration_size.py --model data/models/smollm2-135m

Duo-SVD's KL table is one forward probe per module and ratio on its own window (the
`sensitivity` params), not the Gram's calibration set, so `--sensitivity-duo` passes the
default run's table to every size.
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
from results_io import run_or_rebuild, save_csv, save_figure  # noqa: E402

from svdzoo.calibration import calibrate  # noqa: E402
from svdzoo.compression import Statistics, compress  # noqa: E402
from svdzoo.data import evaluation_windows, window_prefix  # noqa: E402
from svdzoo.evaluation.perplexity import perplexity  # noqa: E402
from svdzoo.io import write_text  # noqa: E402
from svdzoo.models import load_config, load_model, load_tokenizer  # noqa: E402
from svdzoo.sensitivity import load_sensitivity  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT = Path(__file__).resolve().parent / "results" / "calibration-size"
CORPORA = ("pydoc", "pysource")


def sizes(args: argparse.Namespace) -> list[tuple[int, int]]:
    """`(nsamples, seqlen)` pairs from `--sizes NxL ...`, else `--nsamples` at `--seqlen`."""
    if not args.sizes:
        return [(n, args.seqlen) for n in args.nsamples]
    out = []
    for spec in args.sizes:
        try:
            n, length = (int(x) for x in spec.lower().split("x"))
        except ValueError:
            raise SystemExit(f"--sizes: {spec!r} is not NxL (e.g. 128x512)") from None
        if n < 1 or length < 1:
            raise SystemExit(f"--sizes: {spec!r} needs positive N and L")
        out.append((n, length))
    return out


def run(args: argparse.Namespace) -> pd.DataFrame:
    tok = load_tokenizer(args.model)
    prefix = window_prefix(load_config(args.model))  # Gemma's BOS, as `svdzoo evaluate` does
    windows = {
        c: evaluation_windows(tok, c, args.seqlen, max_windows=args.eval_windows, prefix=prefix)
        for c in CORPORA
    }
    dense = load_model(args.model)
    rows = [
        {"nsamples": 0, "seqlen": 0, "size": "-", "tokens": 0, "method": "dense", "ratio": 0.0, "corpus": c,
         "ppl": perplexity(dense, w, batch_size=args.batch_size), "compress_s": 0.0}
        for c, w in windows.items()
    ]  # fmt: skip
    sensitivity = {}
    if args.sensitivity_duo is not None:
        sensitivity["duo"] = load_sensitivity(args.sensitivity_duo, kind="duo")
    for n, length in sizes(args):
        gram = calibrate(
            dense, tok, corpus=args.corpus, nsamples=n, seqlen=length, seed=args.seed,
            model_id=str(args.model), progress=False,
        )  # fmt: skip
        for method in args.methods:
            for ratio in args.ratios:
                model = load_model(args.model)
                t0 = time.perf_counter()
                compress(
                    model, method, ratio, tokenizer=tok,
                    stats=Statistics(gram=gram, sensitivity=sensitivity if method.startswith("duo") else {}),
                )  # fmt: skip
                took = time.perf_counter() - t0
                for c, w in windows.items():
                    ppl = perplexity(model, w, batch_size=args.batch_size)
                    rows.append(
                        {"nsamples": n, "seqlen": length, "size": f"{n}x{length}",
                         "tokens": n * length, "method": method, "ratio": ratio, "corpus": c,
                         "ppl": ppl, "compress_s": took}
                    )  # fmt: skip
                    print(
                        f"{n}x{length} {method} r={ratio} {c}: ppl {ppl:.2f} ({took:.0f} s)",
                        flush=True,
                    )
                save_csv(pd.DataFrame(rows), args.out)  # what is done survives a cut-off run
    return pd.DataFrame(rows)


def figure(df: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = df[df.method != "dense"]
    ratios = sorted(cells.ratio.unique())
    fig, axes = plt.subplots(
        len(CORPORA), len(ratios), figsize=(4 * len(ratios), 3.2 * len(CORPORA)), squeeze=False
    )
    for i, corpus in enumerate(CORPORA):
        dense = df[(df.method == "dense") & (df.corpus == corpus)].ppl.iloc[0]
        for j, ratio in enumerate(ratios):
            ax = axes[i][j]
            for method, g in cells[(cells.corpus == corpus) & (cells.ratio == ratio)].groupby(
                "method"
            ):
                g = g.sort_values("tokens")
                ax.plot(g.tokens, g.ppl, marker="o", label=method)
            ax.axhline(dense, color="grey", ls="--", lw=1, label="dense")
            ax.set_xscale("log", base=2)
            ax.set_title(f"{corpus}, {round(ratio * 100)} % removed")
            ax.set_xlabel("calibration tokens")
            ax.set_ylabel("perplexity")
            ax.legend(fontsize=7)
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=ROOT / "data" / "models" / "smollm2-135m")
    ap.add_argument("--corpus", default="pydoc")
    ap.add_argument("--seqlen", type=int, default=256)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--nsamples", type=int, nargs="+", default=[8, 16, 32, 64])
    ap.add_argument(
        "--sizes", nargs="+", default=None,
        help="calibration sizes as NxL (windows x tokens), e.g. 32x256 128x256 128x512; "
        "overrides --nsamples",
    )  # fmt: skip
    ap.add_argument("--methods", nargs="+", default=["svd-llm", "adasvd"])
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.2, 0.4])
    ap.add_argument("--eval-windows", type=int, default=16)
    ap.add_argument(
        "--sensitivity-duo", type=Path, default=None,
        help="a Duo-SVD KL table (the default run's) for duo-svd methods: only their column"
        " split and truncation then see the varied Gram; the table keeps its own calibration",
    )  # fmt: skip
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument(
        "--from-csv", type=Path, default=None,
        help="rebuild the table and figure from this script's CSV (e.g. a cut-off run's)",
    )  # fmt: skip
    ap.add_argument("--note", default="", help="a line about how the numbers were made")
    args = ap.parse_args(argv)
    if args.from_csv is None and not (args.model / "config.json").is_file():
        raise SystemExit(f"{args.model}: no model there; run `svdzoo fetch-model` or the workflow")
    df, how = run_or_rebuild(args, run)
    save_csv(df, args.out)
    figure(df, args.out.with_suffix(".png"))
    cells = df[df.method != "dense"]
    order = cells.drop_duplicates("size").sort_values(["tokens", "seqlen"])["size"].tolist()
    table = cells.pivot_table(index=["method", "ratio", "corpus"], columns="size", values="ppl")
    table = table[order]
    table.columns = [f"{c} ({int(c.split('x')[0]) * int(c.split('x')[1]):,} tokens)" for c in order]
    cost = cells.pivot_table(index=["method", "ratio"], columns="size", values="compress_s")[order]
    text = [
        "# Calibration size on the real model",
        "",
        f"`{args.model.name}`, calibration on `{args.corpus}` (seed "
        f"{args.seed}), perplexity on {args.eval_windows} test windows of {args.seqlen} tokens"
        f" per corpus; columns are calibration windows x tokens. `python {Path(__file__).name}` on "
        f"{platform.platform()}, {os.cpu_count()} CPUs, {how}."
        + (f" {args.note}" if args.note else ""),
        "",
        table.to_markdown(floatfmt=".2f"),
        "",
        "Compression time (s, CPU, including the sequential methods' calibration passes):",
        "",
        cost.to_markdown(floatfmt=".0f"),
        "",
        f"Dense: {', '.join(f'{r.corpus} {r.ppl:.2f}' for r in df[df.method == 'dense'].itertuples())}.",
        "",
        f"![perplexity against calibration tokens]({args.out.with_suffix('.png').name})",
        "",
    ]
    write_text(args.out.with_suffix(".md"), "\n".join(text))
    print("\n".join(text))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
