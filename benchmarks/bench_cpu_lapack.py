"""Symmetric eigenvalue solves on a CPU: torch's LAPACK (MKL) against scipy's (OpenBLAS).

Duo-SVD's split search is made of `r x r` eigenvalue-only solves, which `svdzoo.lapack`
sends to scipy's OpenBLAS by default: on the AMD EPYC hosts of 2026-12-05 MKL's
tridiagonalisation took 1.5-1.6 x as long. Whether that holds depends on the CPU, so this
times both libraries per size and dtype on one thread (the best of `--repeats`) and files
the rows under the host's CPU model: a run on another CPU adds its rows beside the earlier
ones. Same matrix, same lower triangle; the two spectra are compared too.

    python benchmarks/bench_cpu_lapack.py                 # ~1 min
    python benchmarks/bench_cpu_lapack.py --from-csv benchmarks/results/cpu-lapack.csv

Writes benchmarks/results/cpu-lapack.{csv,md,png}.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import pandas as pd
import torch
from results_io import save_csv, save_figure

from svdzoo import lapack

OUT = Path(__file__).resolve().parent / "results" / "cpu-lapack"
SIZES = (192, 576, 1024, 1536, 2048)  # SmolLM2's k/v and hidden widths, LLaMA-7B's / 4 and / 2


def cpu_model() -> str:
    """The CPU's model name and vendor (a KVM guest reports a generic name; the vendor
    still tells MKL's fast path from its other one)."""
    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    except OSError:
        return platform.processor() or platform.machine()
    flags = info.get("flags", "").split()
    isa = "AMX" if "amx_tile" in flags else "AVX-512" if "avx512f" in flags else "AVX2"
    return f"{info.get('model name', '?')} ({info.get('vendor_id', '?')}, {isa})"


def _best(fn, repeats: int) -> float:
    fn()  # workspace queries, first-touch
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def measure(args: argparse.Namespace) -> pd.DataFrame:
    if lapack.check_environment() != "scipy" or lapack.backend() != "scipy":
        raise SystemExit("scipy's LAPACK is not available (or SVDZOO_CPU_LAPACK=torch)")
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    host, rows = cpu_model(), []
    for n in args.sizes:
        X = torch.randn(n, 2 * n, generator=gen, dtype=torch.float64)
        A64 = X @ X.T / (2 * n)  # a Gram: positive definite, spread spectrum
        for dtype in (torch.float32, torch.float64):
            A = A64.to(dtype)
            t_torch = _best(lambda A=A: torch.linalg.eigvalsh(A), args.repeats)
            t_scipy = _best(lambda A=A: lapack.eigvalsh(A), args.repeats)
            a, b = torch.linalg.eigvalsh(A).double(), lapack.eigvalsh(A).double()
            rows.append(
                {
                    "cpu": host,
                    "torch": torch.__version__,
                    "n": n,
                    "dtype": str(dtype).removeprefix("torch."),
                    "torch_mkl_ms": 1e3 * t_torch,
                    "scipy_openblas_ms": 1e3 * t_scipy,
                    "mkl_over_openblas": t_torch / t_scipy,
                    "max_eig_rel_diff": float((a - b).abs().max() / a.abs().max()),
                }
            )
            print(rows[-1], flush=True)
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--from-csv", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.from_csv is not None:
        df = pd.read_csv(args.from_csv)
    else:
        df = measure(args)
        earlier = args.out.with_suffix(".csv")
        if earlier.exists():  # other CPUs' rows stay; this CPU's are replaced
            old = pd.read_csv(earlier)
            df = pd.concat([old[~old["cpu"].isin(df["cpu"])], df], ignore_index=True)
    save_csv(df, args.out)
    write_md(df, args.out.with_suffix(".md"))
    plot(df, args.out.with_suffix(".png"))
    return 0


def write_md(df: pd.DataFrame, path: Path) -> None:
    lines = [
        "# Symmetric eigenvalue solves on a CPU: torch (MKL) against scipy (OpenBLAS)",
        "",
        "`python benchmarks/bench_cpu_lapack.py`: `torch.linalg.eigvalsh` against "
        "`svdzoo.lapack.eigvalsh` (scipy's `?syevd`, eigenvalues only), one thread, the "
        "best of 5, on the Gram of a random `n x 2n` matrix. `mkl_over_openblas` below 1: "
        "torch's MKL is the faster; Duo-SVD's split search uses OpenBLAS unless "
        "`SVDZOO_CPU_LAPACK=torch`.",
        "",
    ]
    for cpu, part in df.groupby("cpu", sort=False):
        lines += [f"## {cpu}", "", part.drop(columns=["cpu"]).to_markdown(index=False), ""]
    path.write_text("\n".join(lines))


def plot(df: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4))
    for (cpu, dtype), part in df.groupby(["cpu", "dtype"], sort=False):
        ax.plot(part["n"], part["mkl_over_openblas"], marker="o", label=f"{cpu}, {dtype}")
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xlabel("n (an n x n symmetric eigenvalue solve, one thread)")
    ax.set_ylabel("time MKL / OpenBLAS")
    ax.set_title("Which LAPACK is faster for the split search's solves")
    ax.legend(fontsize=7)
    save_figure(fig, path)


if __name__ == "__main__":
    raise SystemExit(main())
