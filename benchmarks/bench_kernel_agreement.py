"""How closely calibration, compression and evaluation of the real model agree when the CPU
kernels differ, on SmolLM2-135M, whose weights are a fixed, checksummed file.

Each variant runs the whole chain in its own process: `svdzoo calibrate` (its own Gram),
`svdzoo compress`, `svdzoo evaluate`. Variants on this machine:

    1-thread   the reference
    2-threads  another reduction order in the BLAS and OpenMP kernels
    no-avx     1 thread with the vector units an older processor has: ATen's scalar kernels
               (ATEN_CPU_CAPABILITY=default), MKL limited to SSE4.2, oneDNN to SSE4.1

`--recorded CSV` adds a real second machine: perplexities another machine wrote for the same
jobs (a long CSV with model, method, ratio, metric, dataset, value, seed, such as
benchmarks/results/compose.csv, made by the workflow on an earlier session's machine).

    python benchmarks/bench_kernel_agreement.py --project DIR \\
        --recorded benchmarks/results/compose.csv [--methods svd-llm adasvd] [--jobs 2]

DIR is a project where data/models/smollm2-135m exists (the workflow's prepare_model).
Writes benchmarks/results/kernel-agreement.{csv,md}: per variant and method, the largest
relative difference from the reference of the Gram, the compressed weights (each low-rank
layer's product, which is sign-free) and the perplexities.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import torch
from safetensors.torch import load_file

from svdzoo.io import write_text

OUT = Path(__file__).resolve().parent / "results"
MODEL = "smollm2-135m"
CORPORA = ("pydoc", "pysource")
NO_AVX = {"ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
          "ONEDNN_MAX_CPU_ISA": "SSE41"}  # fmt: skip
VARIANTS: dict[str, tuple[int, dict[str, str]]] = {
    "1-thread": (1, {}),
    "2-threads": (2, {}),
    "no-avx": (1, NO_AVX),
}


def job(project: Path, threads: int, extra_env: dict[str, str], argv: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", **extra_env}  # fmt: skip
    done = subprocess.run([sys.executable, "-m", "svdzoo.cli", *argv], cwd=project, env=env,
                          capture_output=True, text=True)  # fmt: skip
    if done.returncode:
        raise RuntimeError(f"svdzoo {argv[0]} failed:\n{done.stderr[-3000:]}")


def capability(extra_env: dict[str, str]) -> str:
    env = {**os.environ, **extra_env}
    code = "import torch; print(torch.backends.cpu.get_cpu_capability())"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, check=True).stdout.strip()  # fmt: skip


def tensors(path: Path) -> dict[str, torch.Tensor]:
    """A Gram cache's tensors as stored."""
    out: dict[str, torch.Tensor] = {}
    for f in sorted(path.rglob("*.safetensors")):
        out.update({f"{f.relative_to(path)}:{k}": v for k, v in load_file(str(f)).items()})
    return out


@torch.no_grad()
def effective_weights(path: Path) -> dict[str, torch.Tensor]:
    """A compressed model's weights as the products its low-rank layers compute: the factors
    themselves are only defined up to the signs of singular-vector pairs, which kernels may
    flip (`A B = (-A)(-B)`)."""
    from svdzoo.models import load_model

    model = load_model(str(path))
    out: dict[str, torch.Tensor] = {}
    covered: set[str] = set()
    for name, mod in model.named_modules():
        if hasattr(mod, "weight_product"):
            out[f"{name}.weight_product"] = mod.weight_product().detach().double()
            covered |= {f"{name}.{p}" for p, _ in mod.named_parameters()}
    for name, p in model.named_parameters():
        if name not in covered:
            out[name] = p.detach().double()
    return out


def max_rel(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    if a.keys() != b.keys():
        raise ValueError("the two runs wrote different tensors")
    worst = 0.0
    for key, x in a.items():
        y = b[key]
        if x.is_floating_point():
            scale = float(x.abs().max()) or 1.0
            worst = max(worst, float((x.double() - y.double()).abs().max()) / scale)
    return worst


def chain(project: Path, tmp: Path, name: str, args: argparse.Namespace) -> dict:
    """Calibrate, compress with each method, evaluate: one variant, its own files."""
    threads, env = VARIANTS[name]
    t0 = time.perf_counter()
    calib = f"{args.corpus}-n{args.nsamples}-l{args.seqlen}-s{args.seed}"
    gram = tmp / name / "gram"
    job(project, threads, env, ["calibrate", "--model", f"data/models/{MODEL}", "--model-name",
        MODEL, "--corpus", args.corpus, "--nsamples", str(args.nsamples), "--seqlen",
        str(args.seqlen), "--seed", str(args.seed), "--out", str(gram)])  # fmt: skip
    out: dict = {"gram": tensors(gram), "methods": {}}
    for method in args.methods:
        model = tmp / name / method
        job(project, threads, env, ["compress", "--model", f"data/models/{MODEL}", "--stats",
            str(gram), "--method", method, "--ratio", args.ratio, "--calibration", calib,
            "--device", "cpu", "--out", str(model)])  # fmt: skip
        ppl = tmp / name / f"{method}.ppl.json"
        job(project, threads, env, ["evaluate", "--model", str(model), "--corpora", *CORPORA,
            "--seqlen", str(args.seqlen), "--max-windows", "8", "--ppl-out", str(ppl)])  # fmt: skip
        out["methods"][method] = (
            effective_weights(model),
            json.loads(ppl.read_text())["perplexity"],
        )
    print(f"{name}: done in {time.perf_counter() - t0:.0f} s", flush=True)
    return out


def recorded(path: Path, seed: int, ratio: float, methods: list[str]) -> pd.DataFrame:
    df = pd.read_csv(path)
    keep = (
        (df.model == MODEL)
        & (df.metric == "perplexity")
        & df.method.isin(methods)
        & ((df.ratio - ratio).abs() < 1e-9)
        & (df.seed == seed)
        & (df.source == "workflow" if "source" in df.columns else True)
    )
    return df[keep]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--project", required=True, type=Path)
    ap.add_argument("--methods", nargs="+", default=["svd-llm", "adasvd"])
    ap.add_argument("--ratio", default="0.40")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--corpus", default="pydoc")
    ap.add_argument("--nsamples", type=int, default=32)
    ap.add_argument("--seqlen", type=int, default=256)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--recorded", type=Path, default=None, help="another machine's long CSV")
    ap.add_argument("--recorded-capability", default="not recorded", help="that machine's vector units, if known")  # fmt: skip
    ap.add_argument("--jobs", type=int, default=1, help="variants run side by side")
    ap.add_argument("--out", type=Path, default=OUT / "kernel-agreement")
    args = ap.parse_args()
    project = args.project.resolve()
    if not (project / "data" / "models" / MODEL / "config.json").is_file():
        raise SystemExit(f"{project}: no data/models/{MODEL}; run the workflow's prepare_model")
    if args.variants[0] != "1-thread":
        raise SystemExit("the first variant is the reference: start --variants with 1-thread")
    caps = {name: capability(VARIANTS[name][1]) for name in args.variants}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(args.jobs) as pool:
        runs = dict(zip(args.variants, pool.map(
            lambda n: chain(project, Path(tmp), n, args), args.variants), strict=True))  # fmt: skip
    wall = time.perf_counter() - t0
    ref = runs["1-thread"]
    rows = []
    for name, run in runs.items():
        gram_diff = max_rel(ref["gram"], run["gram"])
        for method, (weights, ppl) in run["methods"].items():
            w_ref, p_ref = ref["methods"][method]
            for corpus in CORPORA:
                rows.append({
                    "variant": name, "cpu_capability": caps[name], "method": method,
                    "ratio": float(args.ratio), "corpus": corpus, "ppl": ppl[corpus],
                    "ppl_rel_diff": abs(ppl[corpus] - p_ref[corpus]) / p_ref[corpus],
                    "weights_max_rel_diff": max_rel(w_ref, weights),
                    "gram_max_rel_diff": gram_diff,
                })  # fmt: skip
    if args.recorded is not None:
        other = recorded(args.recorded, args.seed, float(args.ratio), args.methods)
        if other.empty:
            raise SystemExit(f"{args.recorded}: no perplexities for {args.methods} at {args.ratio}")
        for _, r in other.iterrows():
            p_ref = ref["methods"][r.method][1][r.dataset]
            rows.append({
                "variant": f"another machine ({args.recorded.name})", "cpu_capability": args.recorded_capability,
                "method": r.method, "ratio": float(args.ratio), "corpus": r.dataset,
                "ppl": r.value, "ppl_rel_diff": abs(r.value - p_ref) / p_ref,
            })  # fmt: skip
    df = pd.DataFrame(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text(args.out.with_suffix(".csv"), df.to_csv(index=False))
    worst = df[df.variant != "1-thread"].groupby("variant")[["ppl_rel_diff"]].max()
    text = (
        "# Real-model agreement under different CPU kernels\n\n"
        f"`python benchmarks/bench_kernel_agreement.py`, {MODEL} at {args.ratio}, each variant"
        f" calibrating its own Gram ({args.corpus}, {args.nsamples} x {args.seqlen}, seed"
        f" {args.seed}); perplexity over 8 x {args.seqlen} tokens per corpus; differences"
        " relative to the 1-thread run on this machine. This machine: "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, ATen CPU"
        f" capability {caps['1-thread']}; {wall:.0f} s.\n\n"
        + df.to_markdown(index=False, floatfmt=".4g")
        + "\n\nLargest perplexity difference per variant:\n\n"
        + worst.to_markdown(floatfmt=".2g")
        + "\n"
    )
    write_text(args.out.with_suffix(".md"), text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
