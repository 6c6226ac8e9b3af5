"""Float32 and float64-eigh against the float64 SVD: layer loss and SVD time (issue 16,
goal 2; `float64-eigh` is the GPU default, `linalg.resolve_precision`).

svdzoo factorises in float64. `precision="float32"` (`Whitened`, `linalg.whitened_svd`)
runs only the SVD of `W S` in float32 and keeps the whitening and the back-substitution in
float64. The default is chosen by this measurement: the float32 factors' layer loss
`tr((W - A B) H (W - A B)^T)`, evaluated in float64, against the float64 factors', for
SVD-LLM's truncation

- on every matrix of the real model (SmolLM2-135M with its cached Gram), at 20/40/60 %;
- on random matrices at the LLaMA-7B shapes with an anisotropic Gram (bench_compress's).

Writes benchmarks/results/precision.{csv,md}.

    python benchmarks/bench_precision.py --model data/models/smollm2-135m \\
        --gram data/stats/smollm2-135m/pydoc-n32-l256-s3/gram
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
from bench_compress import SHAPES, _gram  # noqa: E402
from tqdm import tqdm  # noqa: E402

from svdzoo import linalg  # noqa: E402
from svdzoo.io import atomic_path, write_text  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "precision"
TOLERANCE = 1e-3


def _timed_svd(W, S, precision):
    t0 = time.perf_counter()
    out = linalg.whitened_svd(W, S, precision)
    return out, time.perf_counter() - t0


def compare(W, H, S, ratios, **labels) -> list[dict]:
    """Per ratio: the float64 SVD's layer loss, and each other path's relative difference
    (`rel_diff`: float32; `rel_diff_eigh`: float64-eigh, the GPU default)."""
    m, n = W.shape
    svd64, t64 = _timed_svd(W, S, "float64")
    svd32, t32 = _timed_svd(W, S, "float32")
    svde, te = _timed_svd(W, S, "float64-eigh")
    rows = []
    for ratio in ratios:
        k = linalg.rank_for_ratio(m, n, ratio)
        l64, l32, le = (
            linalg.layer_loss(W, f.A, f.B, H)
            for f in (linalg.truncate(W, S, k, svd=svd) for svd in (svd64, svd32, svde))
        )
        rows.append(
            {**labels, "m": m, "n": n, "ratio": ratio, "rank": k, "loss_float64": l64,
             "loss_float32": l32, "rel_diff": l32 / l64 - 1 if l64 > 0 else 0.0,
             "loss_float64_eigh": le, "rel_diff_eigh": le / l64 - 1 if l64 > 0 else 0.0,
             "svd_s_float64": t64, "svd_s_float32": t32, "svd_s_float64_eigh": te}
        )  # fmt: skip
    return rows


def real_matrices(model_dir: Path, gram_dir: Path):
    """`(name, type, W, H, S)` for every target matrix of a real model, in float64, with its
    cached Gram and one Cholesky whitener per input group (as `compress` shares them)."""
    from svdzoo.calibration import load_stats
    from svdzoo.models import adapter_for, load_model

    model = load_model(model_dir)
    stats = load_stats(gram_dir)
    adapter = adapter_for(model)
    whiteners: dict = {}
    for name, layer, target, lin in tqdm(list(adapter.iter_targets(model)), desc="matrices"):
        group = adapter.group_of(target)
        H = stats.gram(layer, group).to(torch.float64)
        S = whiteners.setdefault((layer, group), linalg.cholesky_whitener(H))
        W = lin.weight.detach().to(torch.float64)
        yield name, adapter.matrix_type(target), W, H, S


def real_model(model_dir: Path, gram_dir: Path, ratios) -> list[dict]:
    rows = []
    for name, kind, W, H, S in real_matrices(model_dir, gram_dir):
        rows += compare(W, H, S, ratios, source=model_dir.name, matrix=name, type=kind)
    return rows


def write_results(rows: list[dict], out: Path, report_of=None) -> pd.DataFrame:
    """The CSV (atomically), and with `report_of(df)` the markdown report beside it."""
    df = pd.DataFrame(rows)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out.with_suffix(".csv")) as tmp:
        df.to_csv(tmp, index=False)
    if report_of is not None:
        text = report_of(df)
        write_text(out.with_suffix(".md"), text)
        print(text)
    return df


def random_shapes(shrink: int, ratios) -> list[dict]:
    gen = torch.Generator().manual_seed(0)
    rows = []
    for label, (m, n) in SHAPES.items():
        m, n = m // shrink, n // shrink
        W = torch.randn(m, n, generator=gen, dtype=torch.float64) / n**0.5
        H = _gram(n, torch.device("cpu"), gen)
        S = linalg.cholesky_whitener(H)
        rows += compare(W, H, S, ratios, source=f"random LLaMA-7B / {shrink}" if shrink > 1
                        else "random LLaMA-7B", matrix=label, type=label.split()[0])  # fmt: skip
        print(rows[-1], flush=True)
    return rows


def report(df: pd.DataFrame, wall: float) -> str:
    g = df.groupby(["source", "ratio"])
    table = pd.DataFrame(
        {
            "matrices": g.size(),
            "median |rel diff|": g.rel_diff.apply(lambda s: s.abs().median()),
            "max |rel diff|": g.rel_diff.apply(lambda s: s.abs().max()),
            "within 0.1 %": g.rel_diff.apply(lambda s: bool((s.abs() <= TOLERANCE).all())),
            "float64-eigh max |rel diff|": g.rel_diff_eigh.apply(lambda s: s.abs().max()),
        }
    )
    once = df.drop_duplicates(["source", "matrix"])
    speed = once.groupby("source")[["svd_s_float64", "svd_s_float32", "svd_s_float64_eigh"]].sum()
    speed["float64 / float32"] = speed.svd_s_float64 / speed.svd_s_float32
    speed["float64 / float64-eigh"] = speed.svd_s_float64 / speed.svd_s_float64_eigh
    ok = bool((df[["rel_diff", "rel_diff_eigh"]].abs() <= TOLERANCE).all().all())
    return "\n".join(
        [
            "# Float32 and float64-eigh against the float64 SVD (SVD-LLM truncation)",
            "",
            f"Layer loss of the float32-SVD and the float64-eigh factors against the float64 "
            f"SVD's, all evaluated in float64 on the Gram (this CPU's LAPACK; the GPU solvers: "
            f"svd-drivers.md). `python benchmarks/{Path(__file__).name}` on "
            f"{platform.platform()}, {torch.get_num_threads()} threads, {wall:.0f} s.",
            "",
            table.to_markdown(floatfmt=".2e"),
            "",
            "Time of the whitened SVDs (each matrix once):",
            "",
            speed.to_markdown(floatfmt=".2f"),
            "",
            f"Every matrix within {TOLERANCE:.1%}: **{'yes' if ok else 'no'}**.",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--gram", type=Path, default=None)
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.2, 0.4, 0.6])
    ap.add_argument("--shrink", type=int, default=1, help="random 7B shapes divided by this")
    ap.add_argument("--no-random", action="store_true")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=OUT)
    a = ap.parse_args(argv)
    if (a.model is None) != (a.gram is None):
        raise SystemExit("--model and --gram go together")
    if a.threads:
        torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    rows = []
    if a.model is not None:
        rows += real_model(a.model, a.gram, a.ratios)
    if not a.no_random:
        rows += random_shapes(a.shrink, a.ratios)
    write_results(rows, a.out, lambda df: report(df, time.perf_counter() - t0))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
