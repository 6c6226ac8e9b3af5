"""How closely compression and evaluation of the real model agree when the CPU kernels
differ: the same job with 1 and with 2 BLAS threads (another reduction order, as on another
machine's kernels) on SmolLM2-135M, whose weights are a fixed, checksummed file.

    python benchmarks/bench_kernel_agreement.py --project DIR [--methods svd-llm adasvd]

DIR is a project where the default run has made data/models/smollm2-135m and its Gram
statistics. Writes benchmarks/results/kernel-agreement.{csv,md}: per method, the largest
relative difference of the compressed weights and of the perplexities. A proxy for
cross-machine agreement, not a measurement on another machine (none was available).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import torch
from safetensors.torch import load_file

OUT = Path(__file__).resolve().parent / "results"
MODEL = "smollm2-135m"
CALIB = "pydoc-n32-l256-s3"


def job(project: Path, threads: int, argv: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}  # fmt: skip
    subprocess.run([sys.executable, "-m", "svdzoo.cli", *argv], cwd=project, env=env,
                   check=True, capture_output=True)  # fmt: skip


def max_rel(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    worst = 0.0
    for key, x in a.items():
        y = b[key]
        if x.is_floating_point():
            scale = float(x.abs().max()) or 1.0
            worst = max(worst, float((x.double() - y.double()).abs().max()) / scale)
    return worst


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--project", required=True, type=Path)
    ap.add_argument("--methods", nargs="+", default=["svd-llm", "adasvd"])
    ap.add_argument("--ratio", default="0.40")
    args = ap.parse_args()
    project = args.project.resolve()
    stats = project / "data" / "stats" / MODEL / CALIB / "gram"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods:
            runs = {}
            for threads in (1, 2):
                out = Path(tmp) / f"{method}-t{threads}"
                job(project, threads, ["compress", "--model", f"data/models/{MODEL}",
                    "--stats", str(stats), "--method", method, "--ratio", args.ratio,
                    "--calibration", CALIB, "--device", "cpu", "--out", str(out)])  # fmt: skip
                ppl = out.with_suffix(".ppl.json")
                job(project, threads, ["evaluate", "--model", str(out), "--corpora",
                    "pydoc", "pysource", "--seqlen", "256", "--max-windows", "8",
                    "--ppl-out", str(ppl)])  # fmt: skip
                weights = {}
                for f in sorted(out.glob("*.safetensors")):
                    weights.update(load_file(str(f)))
                runs[threads] = (
                    weights,
                    json.loads(ppl.read_text())["perplexity"],
                )
            (w1, p1), (w2, p2) = runs[1], runs[2]
            for corpus in p1:
                rows.append({
                    "method": method, "ratio": args.ratio, "corpus": corpus,
                    "ppl_1_thread": p1[corpus], "ppl_2_threads": p2[corpus],
                    "ppl_rel_diff": abs(p1[corpus] - p2[corpus]) / p1[corpus],
                    "weights_max_rel_diff": max_rel(w1, w2),
                })  # fmt: skip
            print(rows[-2:], flush=True)
    df = pd.DataFrame(rows)
    OUT.mkdir(parents=True, exist_ok=True)
    df.to_csv(OUT / "kernel-agreement.csv", index=False)
    (OUT / "kernel-agreement.md").write_text(
        "# Real-model agreement under different CPU kernels (1 vs 2 threads)\n\n"
        f"`python benchmarks/bench_kernel_agreement.py --project DIR`, {MODEL} at "
        f"{args.ratio}, Gram {CALIB}, perplexity over 8 x 256 tokens per corpus.\n\n"
        + df.to_markdown(index=False, floatfmt=".3g")
        + "\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
