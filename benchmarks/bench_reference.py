"""How the reference models react to compression: the evidence that they behave like LLMs.

For each trained reference model (default: every `data/models/*` the workflow wrote) it
measures test perplexity on the full test split of each offline corpus, dense, with every
decoder-block linear zeroed, and with the registered `svd` method (plain truncated SVD) at
60 % of the targeted parameters removed, and writes

    benchmarks/results/reference.json   one record per model x corpus
    benchmarks/results/reference.md     the table quoted in docs/results.md

    python benchmarks/bench_reference.py                 # after the default run
    python benchmarks/bench_reference.py --models data/models/ref-llama
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402

from svdzoo.compression import compress  # noqa: E402
from svdzoo.data import evaluation_windows, window_prefix  # noqa: E402
from svdzoo.evaluation.perplexity import perplexity  # noqa: E402
from svdzoo.io import write_json, write_text  # noqa: E402
from svdzoo.models import adapter_for, count_params, load_model, load_tokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT = Path(__file__).resolve().parent / "results" / "reference"
CORPORA = ("pydoc", "pysource")


def zero_targets(model: torch.nn.Module) -> None:
    for *_, lin in adapter_for(model).iter_targets(model):
        torch.nn.init.zeros_(lin.weight)


def measure(path: Path, seqlen: int, ratio: float, batch_size: int) -> list[dict]:
    tok = load_tokenizer(path)
    variants = {"dense": load_model(path), "zeroed": load_model(path), "svd": load_model(path)}
    zero_targets(variants["zeroed"])
    compress(variants["svd"], "svd", ratio)
    rows = []
    prefix = window_prefix(variants["dense"].config)  # as `svdzoo evaluate` does
    for corpus in CORPORA:
        windows = evaluation_windows(tok, corpus, seqlen, prefix=prefix)
        ppl = {k: perplexity(m, windows, batch_size=batch_size) for k, m in variants.items()}
        rows.append(
            {
                "model": path.name,
                "params": count_params(variants["dense"]),
                "corpus": corpus,
                "windows": len(windows),
                "seqlen": seqlen,
                "ppl_dense": ppl["dense"],
                "ppl_zeroed": ppl["zeroed"],
                f"ppl_svd{round(ratio * 100)}": ppl["svd"],
                "zeroed_factor": ppl["zeroed"] / ppl["dense"],
                "svd_factor": ppl["svd"] / ppl["dense"],
            }
        )
    return rows


def to_markdown(rows: list[dict], ratio: float) -> str:
    pct = round(ratio * 100)
    head = (
        "| model | params | corpus | test ppl (dense) | zeroing decoder linears |"
        f" plain SVD at {pct} % |\n| --- | ---: | --- | ---: | ---: | ---: |"
    )
    body = [
        f"| {r['model']} | {r['params'] / 1e6:.2f} M | {r['corpus']} | {r['ppl_dense']:.2f} |"
        f" x {r['zeroed_factor']:,.0f} | x {r['svd_factor']:.2f} |"
        for r in rows
    ]
    return "\n".join([head, *body])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=Path, nargs="*", help="model dirs (default: data/models/*)")
    ap.add_argument("--seqlen", type=int, default=128)
    ap.add_argument("--ratio", type=float, default=0.6)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)

    models = args.models or sorted(p for p in (ROOT / "data" / "models").glob("*") if p.is_dir())
    if not models:
        raise SystemExit("no reference models under data/models: run the default workflow first")
    torch.manual_seed(0)
    t0 = time.perf_counter()
    rows = [r for path in models for r in measure(path, args.seqlen, args.ratio, args.batch_size)]
    wall = time.perf_counter() - t0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out.with_suffix(".json"), {"rows": rows, "wall_s": wall})
    text = [
        "# Reference models under compression",
        "",
        f"Full test split of each corpus, seqlen {args.seqlen}; `python {Path(__file__).name}`"
        f" on {platform.platform()}, {os.cpu_count()} CPUs, {wall:.0f} s.",
        "",
        to_markdown(rows, args.ratio),
        "",
    ]
    write_text(args.out.with_suffix(".md"), "\n".join(text))
    print("\n".join(text))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
