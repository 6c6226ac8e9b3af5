"""The real pretrained model (SmolLM2-135M) under every method: tables, figure, and the
papers' claims checked on it, from the workflow's own results.

The numbers are the pipeline's (no separate code path): `--run` executes
`snakemake --cores all --config params=<params>` (default: params.yaml, the default
reproduction) and times it; the script then reads the per-run JSONs under `results/`
and writes

    benchmarks/results/real-model.csv   tidy: model, method, ratio, metric, dataset, value
    benchmarks/results/real-model.md    ppl per corpus, mean zero-shot accuracy, compression
                                        time per ratio; the claims, each marked holds / fails
    benchmarks/results/real-model.png   perplexity vs ratio per corpus

    python benchmarks/bench_real_model.py --run                       # default run, timed
    python benchmarks/bench_real_model.py --params workflow/configs/ablations.yaml
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pandas as pd  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_methods import figure, run_workflow, to_markdown, wide  # noqa: E402

from svdzoo.config import load_params, ratios  # noqa: E402
from svdzoo.io import read_json_object, write_text  # noqa: E402
from svdzoo.report.metrics import collect  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
MODEL = "smollm2-135m"
# duo-svd-independent: the default run's Duo-SVD (ratio-independent KL table)
SEED_METHODS = ("svd-llm-v2", "adasvd", "ressvd", "duo-svd", "duo-svd-independent")
CLAIM_RATIOS = (0.2, 0.4, 0.6, 0.8)


def select(df: pd.DataFrame, params: dict, model: str) -> pd.DataFrame:
    keep = (
        (df["model"] == model)
        & df["method"].isin(set(params["methods"]) | {"dense"})
        & (df["ratio"].isin(ratios(params)) | (df["method"] == "dense"))
    )
    return df[keep].reset_index(drop=True)


def ppl(df: pd.DataFrame, method: str, ratio: float, corpus: str) -> float | None:
    s = df[
        (df.method == method)
        & (df.metric == "perplexity")
        & (df.dataset == corpus)
        & ((df.ratio - ratio).abs() < 1e-9)
    ]["value"]
    return float(s.iloc[0]) if len(s) else None


def dense_note(project: Path, model: str) -> str:
    """What "dense" is, from the prepared model's own provenance record (prepare-model)."""
    source = project / "data" / "models" / model / "svdzoo_source.json"
    try:
        weights = read_json_object(source, ValueError).get("weights")
    except ValueError:  # none (a model trained here), unreadable or damaged: nothing to say
        return ""
    return f" The dense model is the {weights}." if weights else ""


def zeroshot_mean(df: pd.DataFrame) -> pd.DataFrame:
    """Mean accuracy over the tasks (the report's `acc` of dataset `mean`), per method x ratio."""
    acc = df[(df.metric == "acc") & (df.dataset == "mean")]
    if acc.empty:
        return pd.DataFrame()
    return acc.pivot_table(index="method", columns="ratio", values="value")


def factor(x: float, decimals: int) -> str:
    """`x1,234.5`-style factor; below 1 in significant digits (x0.0 hid 0.018)."""
    return f"x{x:,.{decimals}f}" if abs(x) >= 1 else f"x{x:.2g}"


def claims(df: pd.DataFrame, corpora: list[str], methods: list[str]) -> list[str]:
    """Each claim at each ratio and corpus: the numbers and whether it holds."""
    out = ["### SVD-LLM's Table 1 ordering: SVD >> ASVD > SVD-LLM", ""]
    out += ["| ratio | corpus | svd | asvd | svd-llm | SVD > ASVD | ASVD > SVD-LLM |", "|---|---|---:|---:|---:|---|---|"]  # fmt: skip
    for r in CLAIM_RATIOS:
        for c in corpora:
            s, a, l_ = (ppl(df, m, r, c) for m in ("svd", "asvd", "svd-llm"))
            if None in (s, a, l_):
                continue
            out.append(
                f"| {r:.0%} | {c} | {s:,.1f} | {a:,.1f} | {l_:,.2f} | "
                f"{'holds' if s > a else 'FAILS'} ({factor(s / a, 1)}) | "
                f"{'holds' if a > l_ else 'FAILS'} ({factor(a / l_, 2)}) |"
            )
    out += ["", "### Each seed method against SVD-LLM (lower perplexity = the claim holds)", ""]
    out += ["| method | ratio | corpus | method ppl | svd-llm ppl | ratio to svd-llm | claim |", "|---|---|---|---:|---:|---:|---|"]  # fmt: skip
    for m in (x for x in SEED_METHODS if x in methods):
        for r in CLAIM_RATIOS:
            for c in corpora:
                v, base = ppl(df, m, r, c), ppl(df, "svd-llm", r, c)
                if v is None or base is None:
                    continue
                out.append(
                    f"| {m} | {r:.0%} | {c} | {v:,.2f} | {base:,.2f} | {v / base:.3f} | "
                    f"{'holds' if v < base else 'FAILS'} |"
                )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    ap.add_argument("--model", default=MODEL)
    ap.add_argument("--results", type=Path, default=ROOT / "results")
    ap.add_argument("--out", type=Path, default=RESULTS / "real-model")
    ap.add_argument("--run", action="store_true", help="run the workflow first (timed)")
    ap.add_argument("--cores", default="all")
    args = ap.parse_args(argv)

    params = load_params(args.params)
    if args.model not in params["models"]:
        sys.exit(f"{args.params} has no model {args.model!r}")
    t0 = time.perf_counter()
    wall = run_workflow(args.params.resolve(), args.cores) if args.run else None
    df = select(collect(args.results), params, args.model)
    if df.empty:
        sys.exit(f"no results for {args.model} under {args.results}: run with --run first")
    corpora = list(params["evaluation"]["corpora"])
    methods = list(params["methods"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text(args.out.with_suffix(".csv"), df.to_csv(index=False))
    perf = df[df.metric.isin(["perplexity", "compression_time_s"])]
    zs = zeroshot_mean(df)
    lines = [
        f"# {args.model}: every method, and the papers' claims",
        "",
        f"Params: `{args.params.name}` (calibration {params['calibration']}). Perplexity on the"
        f" test split of each corpus (seqlen {params['evaluation']['seqlen']}, at most"
        f" {params['evaluation'].get('max-windows', 'all')} windows); time = `svdzoo compress`"
        " wall time of that run, shared statistics excluded."
        + dense_note(args.results.resolve().parent, args.model),
        f"Machine: {platform.platform()}, {os.cpu_count()} CPUs."
        + (f" Workflow wall time: {wall / 60:.1f} min." if wall else ""),
        "",
        "## Perplexity and compression time",
        "",
        to_markdown(wide(perf, args.model, methods, corpora)),
        "",
    ]
    if not zs.empty:
        zs.columns = [f"{c:.0%}" for c in zs.columns]
        lines += [
            "## Mean zero-shot accuracy (offline tasks: "
            + ", ".join(params["evaluation"]["tasks"])
            + ")",
            "",
            zs.reindex([m for m in ["dense", *methods] if m in zs.index]).to_markdown(
                floatfmt=".3f"
            ),
            "",
        ]
    lines += ["## The papers' claims on the real model", ""]
    lines += claims(df, corpora, methods)
    lines += ["", f"![perplexity vs ratio]({args.out.with_suffix('.png').name})", ""]
    write_text(args.out.with_suffix(".md"), "\n".join(lines))
    figure(
        perf,
        {**params, "models": {args.model: params["models"][args.model]}},
        args.out.with_suffix(".png"),
    )
    print("\n".join(lines))
    print(json.dumps({"wall_s": wall, "rows": len(df), "took_s": time.perf_counter() - t0}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
