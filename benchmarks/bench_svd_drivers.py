"""The whitened SVD's cost per matrix at LLaMA-7B shapes, by solver and precision.

SVD-LLM's compression is 224 factorisations of `W S` (4096 x 4096 for attention,
11008 x 4096 for gate/up, 4096 x 11008 for down): their solver decides whether a 7B model
compresses in minutes. This times, on one random `W` and a Gram of random activations,
each way torch offers to get the top singular triplets:

- `svd` with each cuSOLVER driver on a GPU (`default`, `gesvd`, `gesvdj`, `gesvda`), in
  float32 and float64;
- `eigh` of the smaller Gram side (`(WS)(WS)^T`), float32 and float64: cheaper, and the
  squared condition number only matters for the tail a truncation drops.

Each row also gives the whitened truncation error at 60 % rank retained against the
float64 `svd`'s (relative difference), so speed is never bought with a different answer.
The Cholesky of the 11008 x 11008 Gram (float64) is timed beside them.

    python benchmarks/bench_svd_drivers.py --device cpu --shrink 8   # a check, seconds
    python benchmarks/bench_svd_drivers.py                            # on a GPU

Results: `--results DIR` (default benchmarks/results): svd-drivers.json and svd-drivers.md.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
SHAPES = {"attention": (4096, 4096), "gate/up": (11008, 4096), "down": (4096, 11008)}
RETAIN = 0.6


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], object], device: torch.device, reps: int) -> tuple[float, object]:
    out = fn()  # warm-up (cuSOLVER workspaces, kernels' first load)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        out = fn()
    _sync(device)
    return (time.perf_counter() - t0) / reps, out


def _problem(m: int, n: int, device: torch.device, seed: int) -> torch.Tensor:
    """`W S` for a random `W` and the Cholesky factor of a correlated Gram, in float64."""
    g = torch.Generator(device=device).manual_seed(seed)
    kw = {"generator": g, "dtype": torch.float64, "device": device}
    W = torch.randn(m, n, **kw) / n**0.5
    X = torch.randn(2 * n, n, **kw)
    X = X * torch.logspace(0, -2, n, dtype=torch.float64, device=device)  # decaying scales
    return W @ torch.linalg.cholesky(X.T @ X)


def _svd(A: torch.Tensor, dtype: torch.dtype, driver: str | None) -> torch.Tensor:
    kw = {"driver": driver} if driver else {}
    return torch.linalg.svd(A.to(dtype), full_matrices=False, **kw)[1].to(torch.float64)


def _eigh(A: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    B = A.to(dtype)
    G = B @ B.T if B.shape[0] <= B.shape[1] else B.T @ B
    lam = torch.linalg.eigh(G)[0].flip(0).clamp_min(0)
    return lam.sqrt().to(torch.float64)


def tail_error(s: torch.Tensor, k: int) -> float:
    """The whitened truncation error `||W S - (W S)_k||_F^2`: what SVD-LLM minimises."""
    return float(s[k:].square().sum())


def run(a: argparse.Namespace) -> list[dict]:
    device = torch.device(a.device)
    rows = []
    for name, (m, n) in SHAPES.items():
        m, n = m // a.shrink, n // a.shrink
        A = _problem(m, n, device, seed=0)
        k = int(RETAIN * min(m, n))
        # float64 `svd` first: the reference; the drivers are tried in float32 only (float64
        # is the slow path this table is meant to replace)
        drivers = [None, "gesvd", "gesvdj", "gesvda"] if device.type == "cuda" else [None]
        ways: list[tuple[str, str, str, Callable[[], torch.Tensor]]] = [
            ("svd", "default", "float64", lambda A=A: _svd(A, torch.float64, None)),
            ("eigh", "syevd", "float64", lambda A=A: _eigh(A, torch.float64)),
            ("eigh", "syevd", "float32", lambda A=A: _eigh(A, torch.float32)),
        ]
        for d in drivers:
            ways.append(
                ("svd", d or "default", "float32", lambda A=A, d=d: _svd(A, torch.float32, d))
            )
        ref = None
        for kind, driver, dtype, fn in ways:
            try:
                took, s = _timed(fn, device, a.reps)
                ref = tail_error(s, k) if ref is None else ref
                err = abs(tail_error(s, k) - ref) / ref
                row = {"seconds": round(took, 4), "tail_rel_diff": float(f"{err:.3g}")}
            except Exception as exc:  # a driver that refuses the shape is a result too
                row = {"seconds": None, "error": f"{type(exc).__name__}: {exc}"[:200]}
            rows.append({"shape": name, "m": m, "n": n, "way": kind, "driver": driver,
                         "dtype": dtype, **row})  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
    H_n = 11008 // a.shrink
    X = torch.randn(2 * H_n, H_n, dtype=torch.float64, device=device)  # a full-rank Gram
    H = X.T @ X
    took, _ = _timed(lambda: torch.linalg.cholesky(H), device, a.reps)
    rows.append({"shape": "gram", "m": H_n, "n": H_n, "way": "cholesky", "driver": "potrf",
                 "dtype": "float64", "seconds": round(took, 4), "tail_rel_diff": None})  # fmt: skip
    print(json.dumps(rows[-1]), flush=True)
    return rows


def write(rows: list[dict], a: argparse.Namespace) -> None:
    from svdzoo.io import write_text

    device = torch.cuda.get_device_name() if a.device.startswith("cuda") else "cpu"
    head = {"device": device, "torch": torch.__version__, "shrink": a.shrink, "reps": a.reps}
    a.results.mkdir(parents=True, exist_ok=True)
    write_text(a.results / "svd-drivers.json", json.dumps({**head, "rows": rows}, indent=2))
    lines = [
        "# Whitened SVD per matrix by solver",
        "",
        f"{device}, torch {torch.__version__}, LLaMA-7B shapes / {a.shrink}, mean of {a.reps} "
        f"after a warm-up. `tail diff`: relative difference of the truncation error at "
        f"{RETAIN:.0%} rank retained from float64 `svd`'s.",
        "",
        "| matrix | way | driver | dtype | seconds | x 224 matrices (mix) | tail diff |",
        "|---|---|---|---|---:|---:|---:|",
    ]
    share = {"attention": 128, "gate/up": 64, "down": 32, "gram": 0}
    for r in rows:
        sec = r.get("seconds")
        total = f"{sec * share[r['shape']]:.0f} s" if sec is not None and share[r["shape"]] else ""
        lines.append(
            f"| {r['shape']} {r['m']}x{r['n']} | {r['way']} | {r['driver']} | {r['dtype']} | "
            + (f"{sec:.3f}" if sec is not None else r.get("error", "failed"))
            + f" | {total} | {r.get('tail_rel_diff') if r.get('tail_rel_diff') is not None else ''} |"
        )
    write_text(a.results / "svd-drivers.md", "\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--shrink", type=int, default=1)
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--results", type=Path, default=RESULTS)
    a = ap.parse_args(argv)
    rows = run(a)
    write(rows, a)
    print((a.results / "svd-drivers.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
