"""SVD-LLM V2's allocation against the calibration size its losses are summed over.

V2 gives each matrix the ratio `r_i = G R l_i / sum(l)` with `l_i = 1 / log L_i`, where
`L_i` is the matrix's theoretical truncation loss on the summed (unnormalised) Gram. `L`
grows with the square root of the calibration token count and `1 / log L` does not scale,
so the ratios depend on how many tokens were summed: the paper's 256 x 2048 gives flatter
ratios than the default run's 32 x 256. The option `loss_tokens=N` computes every `L_i` as
if the Gram had summed `N` tokens. For each `--loss-tokens` value (`calibration`: the
cache's own count) and ratio, this compresses the real model with `svd-llm-v2`, measures
the spread of the ratios within each matrix type and held-out perplexity on both offline
corpora, beside `svd-llm` (uniform ratios). Writes

    benchmarks/results/v2-loss-scale.csv   one row per setting x ratio x corpus
    benchmarks/results/v2-loss-scale.md    the table quoted in docs/results.md
    benchmarks/results/v2-loss-scale.png   perplexity / svd-llm's against the ratio

    python benchmarks/bench_v2_loss_scale.py --gram <run>/data/stats/smollm2-135m/pydoc-n32-l256-s3/gram
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
from results_io import run_or_rebuild, save_csv, save_figure  # noqa: E402

from svdzoo.calibration import load_stats  # noqa: E402
from svdzoo.compression import Statistics, compress  # noqa: E402
from svdzoo.data import evaluation_windows, window_prefix  # noqa: E402
from svdzoo.evaluation.perplexity import perplexity  # noqa: E402
from svdzoo.io import write_text  # noqa: E402
from svdzoo.methods.svd_llm_v2 import calibration_tokens  # noqa: E402
from svdzoo.models import load_config, load_model, load_tokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT = Path(__file__).resolve().parent / "results" / "v2-loss-scale"
CORPORA = ("pydoc", "pysource")
CALIBRATION = "calibration"


def type_spread(manifest: dict) -> float:
    """The largest spread (max - min) of the compressed ratios within one matrix type."""
    by_type: dict[str, list[float]] = {}
    for rec in manifest["modules"].values():
        by_type.setdefault(rec["type"], []).append(rec["ratio"])
    return max(max(r) - min(r) for r in by_type.values())


def settings(args: argparse.Namespace, tokens: int) -> list[tuple[str, str, int | None]]:
    """`(label, method, loss_tokens)`: svd-llm, then svd-llm-v2 at each `--loss-tokens`."""
    out: list[tuple[str, str, int | None]] = [("svd-llm", "svd-llm", None)]
    for value in args.loss_tokens:
        n = None if value == CALIBRATION else int(value)
        label = f"svd-llm-v2, L over {n or tokens:,} tokens" + (" (own)" if n is None else "")
        out.append((label, "svd-llm-v2", n))
    return out


def run(args: argparse.Namespace) -> pd.DataFrame:
    tok = load_tokenizer(args.model)
    gram = load_stats(args.gram)
    tokens = calibration_tokens(gram)
    prefix = window_prefix(load_config(args.model))  # Gemma's BOS, as `svdzoo evaluate` does
    windows = {
        c: evaluation_windows(tok, c, args.seqlen, max_windows=args.eval_windows, prefix=prefix)
        for c in CORPORA
    }
    rows = []
    for label, method, n in settings(args, tokens):
        for ratio in args.ratios:
            model = load_model(args.model)
            t0 = time.perf_counter()
            options = {} if n is None else {"loss_tokens": n}
            man = compress(model, method, ratio, stats=Statistics(gram=gram), options=options)
            took = time.perf_counter() - t0
            spread = type_spread(man)
            for c, w in windows.items():
                ppl = perplexity(model, w, batch_size=args.batch_size)
                rows.append(
                    {"setting": label, "method": method, "loss_tokens": n or tokens,
                     "calibration_tokens": tokens, "ratio": ratio, "corpus": c, "ppl": ppl,
                     "type_spread": spread, "compress_s": took}
                )  # fmt: skip
                print(f"{label} r={ratio} {c}: ppl {ppl:.2f}, spread {spread:.3f}", flush=True)
            save_csv(pd.DataFrame(rows), args.out)  # what is done survives a cut-off run
    return pd.DataFrame(rows)


def relative(df: pd.DataFrame) -> pd.DataFrame:
    """Each row's perplexity over svd-llm's at the same ratio and corpus."""
    base = df[df.method == "svd-llm"].set_index(["ratio", "corpus"]).ppl
    out = df.copy()
    out["vs_svd_llm"] = [
        p / base[(r, c)] for p, r, c in zip(df.ppl, df.ratio, df.corpus, strict=True)
    ]
    return out


def figure(df: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter

    df = relative(df)
    fig, axes = plt.subplots(1, len(CORPORA), figsize=(5.5 * len(CORPORA), 3.6), squeeze=False)
    for ax, corpus in zip(axes[0], CORPORA, strict=True):
        for label, g in df[(df.corpus == corpus) & (df.method != "svd-llm")].groupby(
            "setting", sort=False
        ):
            g = g.sort_values("ratio")
            ax.plot(g.ratio * 100, g.vs_svd_llm, marker="o", label=label)
        ax.axhline(1.0, color="grey", ls="--", lw=1, label="svd-llm (uniform)")
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(FormatStrFormatter("%g"))
        ax.set_title(f"{corpus}: perplexity / svd-llm's (below 1: V2 wins)")
        ax.set_xlabel("parameters removed (%)")
        ax.set_ylabel("ratio to svd-llm")
        ax.legend(fontsize=7)
    save_figure(fig, path)


def markdown(df: pd.DataFrame, args: argparse.Namespace, how: str) -> str:
    df = relative(df)
    df["cell"] = [f"{p:,.2f} ({v:.2f} x)" for p, v in zip(df.ppl, df.vs_svd_llm, strict=True)]
    order = list(dict.fromkeys(df.setting))
    table = df.pivot_table(
        index="setting", columns=["ratio", "corpus"], values="cell", aggfunc="first"
    ).reindex(order)
    table.columns = [f"{round(r * 100)} % {c}" for r, c in table.columns]
    spread = df.pivot_table(index="setting", columns="ratio", values="type_spread").reindex(order)
    spread.columns = [f"{round(r * 100)} %" for r in spread.columns]
    tokens = int(df.calibration_tokens.iloc[0])
    threads = torch.get_num_threads()
    return "\n".join(
        [
            "# SVD-LLM V2's allocation against the token count of its losses",
            "",
            f"`{args.model.name}`, Gram cache `{args.gram}` ({tokens:,} calibration tokens). "
            f"Perplexity on {args.eval_windows} held-out windows of {args.seqlen} tokens per "
            f"corpus, and in brackets over `svd-llm`'s (uniform ratios, the same Gram). "
            f"`python {Path(__file__).name}` on {platform.platform()}, {os.cpu_count()} CPUs, "
            f"{threads} thread{'s' if threads != 1 else ''}, {how}."
            + (f" {args.note}" if args.note else ""),
            "",
            table.to_markdown(),
            "",
            "The largest spread (max - min) of the ratios removed within one matrix type "
            "(0 for uniform ratios):",
            "",
            spread.to_markdown(floatfmt=".3f"),
            "",
            f"![perplexity over svd-llm's]({Path(args.out).with_suffix('.png').name})",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=ROOT / "data" / "models" / "smollm2-135m")
    ap.add_argument("--gram", type=Path, required=True, help="a Gram cache of that model")
    ap.add_argument(
        "--loss-tokens", nargs="+", default=[CALIBRATION, "65536", "524288"],
        help=f"token counts for V2's losses; '{CALIBRATION}': the cache's own "
        "(524288 = 256 x 2048, the paper's calibration)",
    )  # fmt: skip
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.2, 0.4, 0.6, 0.8])
    ap.add_argument("--seqlen", type=int, default=256)
    ap.add_argument("--eval-windows", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--from-csv", type=Path, default=None, help="rebuild from this CSV")
    ap.add_argument("--note", default="", help="a line about how the numbers were made")
    args = ap.parse_args(argv)
    for value in args.loss_tokens:
        if value != CALIBRATION and (not value.isdigit() or int(value) < 1):
            raise SystemExit(f"--loss-tokens: {value!r} is neither a positive integer nor "
                             f"'{CALIBRATION}'")  # fmt: skip
    if args.from_csv is None:
        if not (args.model / "config.json").is_file():
            raise SystemExit(f"{args.model}: no model there; run `svdzoo fetch-model`")
        if not (args.gram / "manifest.json").is_file():
            raise SystemExit(f"{args.gram}: no Gram cache there; run `svdzoo calibrate`")
    df, how = run_or_rebuild(args, run)
    save_csv(df, args.out)
    figure(df, args.out.with_suffix(".png"))
    write_text(args.out.with_suffix(".md"), markdown(df, args, how))
    print(f"wrote {args.out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
