"""What MKL's strict reproducibility mode (`MKL_CBWR=AUTO,STRICT`, set by `import svdzoo`)
buys and costs on this host: whether the kernels a calibration and a compression run give
the same bits on 1 and 2 threads, and how long each takes, against MKL's default mode.

MKL reads `MKL_CBWR` once, at its first call, so every mode runs in its own process
(without importing svdzoo, which would set it). Writes

    benchmarks/results/mkl-cnr.csv   one row per mode and kernel: ms (median) on all cores,
                                     and whether 1 and 2 threads gave the same bits
    benchmarks/results/mkl-cnr.md    the same as a table, with the host's CPU flags
    benchmarks/results/mkl-cnr.png   time per kernel in each mode, kernels whose bits follow
                                     the thread count marked

    python benchmarks/bench_mkl_cnr.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from svdzoo.io import write_text  # noqa: E402  (the probes' MKL_CBWR is set per process)

OUT = Path(__file__).resolve().parent / "results" / "mkl-cnr"
MODES = ("AUTO", "AUTO,STRICT")

# runs in a fresh process per mode; prints one JSON row per kernel
PROBE = r"""
import json, sys, time
import torch

repeats = int(sys.argv[1])
torch.manual_seed(0)
torch.backends.mkldnn.matmul.fp32_precision = "ieee"  # as svdzoo's exact Gram products
cores = torch.get_num_threads()
narrow = torch.randn(2048, 64).to(torch.bfloat16).float()   # a tiny model's Gram chunk
narrow64 = torch.randn(4096, 64, dtype=torch.float64)
acts = torch.randn(2048, 576)                                 # SmolLM2's hidden width
acts64 = acts.double()
w = torch.randn(576, 1536)
gram = (lambda h: h.T @ h)(torch.randn(4096, 1536, dtype=torch.float64))
weight = torch.randn(576, 1536, dtype=torch.float64)
kernels = {
    "Gram float32, 64 wide x 2048 rows": lambda: narrow.T @ narrow,
    "Gram float64, 64 wide x 4096 rows": lambda: narrow64.T @ narrow64,
    "Gram float32, 576 wide x 2048 rows": lambda: acts.T @ acts,
    "Gram float64, 576 wide x 2048 rows": lambda: acts64.T @ acts64,
    "linear 2048x576 @ 576x1536 float32": lambda: acts @ w,
    "eigh 1536 float64": lambda: torch.linalg.eigh(gram)[0],
    "cholesky 1536 float64": lambda: torch.linalg.cholesky(gram),
    "svd 576x1536 float64": lambda: torch.linalg.svd(weight, full_matrices=False)[1],
}
for name, fn in kernels.items():
    got = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        got.append(fn())
    torch.set_num_threads(cores)
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    print(json.dumps({"kernel": name, "ms": sorted(times)[len(times) // 2] * 1e3,
                      "same_bits_1_2_threads": bool(torch.equal(*got)), "threads": cores}))
"""


def cpu_flags() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines()
                  if line.startswith("flags")), [])  # fmt: skip
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
    return ", ".join(f for f in wanted if f in flags) or "none of " + ", ".join(wanted)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    rows = []
    for mode in MODES:
        env = {**os.environ, "MKL_CBWR": mode}
        out = subprocess.run([sys.executable, "-c", PROBE, str(args.repeats)], env=env,
                             capture_output=True, text=True, check=True)  # fmt: skip
        for line in out.stdout.splitlines():
            rows.append({"mode": mode, **json.loads(line)})
        print(f"[mkl-cnr] {mode}: {len(out.stdout.splitlines())} kernels", file=sys.stderr)
    df = pd.DataFrame(rows)
    wide = df.pivot(index="kernel", columns="mode", values=["ms", "same_bits_1_2_threads"])
    table = pd.DataFrame(
        {
            "kernel": wide.index,
            "ms, default": wide[("ms", "AUTO")].round(2).values,
            "ms, strict": wide[("ms", "AUTO,STRICT")].round(2).values,
            "same bits on 1 and 2 threads, default": wide[("same_bits_1_2_threads", "AUTO")].values,
            "same bits on 1 and 2 threads, strict": wide[
                ("same_bits_1_2_threads", "AUTO,STRICT")
            ].values,
        }
    )
    OUT.parent.mkdir(parents=True, exist_ok=True)
    write_text(OUT.with_suffix(".csv"), df.to_csv(index=False))
    write_text(
        OUT.with_suffix(".md"),
        "# MKL's default mode against its strict reproducibility mode\n\n"
        f"Machine: {platform.platform()}, {os.cpu_count()} CPUs, flags: {cpu_flags()}. "
        f"Median of {args.repeats} runs on {int(df['threads'].iloc[0])} threads; each mode in "
        "its own process (`python benchmarks/bench_mkl_cnr.py`). `import svdzoo` sets "
        "`MKL_CBWR=AUTO,STRICT`.\n\n" + table.to_markdown(index=False) + "\n",
    )
    plot(table)
    print(table.to_string(index=False))


def plot(table: pd.DataFrame) -> None:
    """Time per kernel relative to the default mode; a kernel whose bits follow the thread
    count in strict mode is hatched."""
    rel = table["ms, strict"] / table["ms, default"]
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    bars = ax.barh(table["kernel"], rel, color="tab:blue")
    for bar, same in zip(bars, table["same bits on 1 and 2 threads, strict"], strict=True):
        if not same:
            bar.set_hatch("//")
            bar.set_facecolor("tab:orange")
    ax.axvline(1.0, color="black", lw=0.8)
    ax.set_xlabel("time in strict mode / time in default mode (2 threads)")
    ax.set_title("MKL strict reproducibility: cost per kernel\n(orange, hatched: bits still "
                 "follow the thread count)", fontsize=10)  # fmt: skip
    fig.tight_layout()
    fig.savefig(OUT.with_suffix(".png"), dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
