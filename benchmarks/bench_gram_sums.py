"""Gram sums of half-precision activations: exact products summed in float32 chunks, against
float64 throughout (issue 16, goal 3: most of a 7B calibration was float64 Gram products).

A float16/bfloat16 model's activations multiply exactly in float32, so svdzoo sums each
2048-token chunk's products in float32 (TF32 tensor cores on a GPU) and the chunks in
float64 (`svdzoo.calibration.stats.exact_products`); before, every product was summed in
float64 over 256-token chunks. On the same activations this measures

- speed (`--widths`, default LLaMA-7B's 4096 and 11008, `--tokens` tokens of random
  activations with outlier channels): the float64 sums (the code before, re-run here)
  against `GramAccumulator`'s, and the error against the float64 sum;
- accuracy on the real model (`--model`, SmolLM2-135M cast to `--dtype`, `--nsamples`
  windows of pydoc): each Gram's relative error, and what it does to SVD-LLM: the layer
  loss, on the float64 Gram, of the factors computed from either Gram at `--ratio`.

Writes benchmarks/results/gram-sums.{json,md,png}; the json keeps the section a run does
not remake.

    python benchmarks/bench_gram_sums.py --model data/models/smollm2-135m
    python benchmarks/bench_gram_sums.py --device cuda --tokens 16384   # on a GPU
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from svdzoo import linalg  # noqa: E402
from svdzoo.calibration.stats import (  # noqa: E402
    CHUNK_TOKENS,
    HALF_CHUNK_TOKENS,
    GramAccumulator,
)
from svdzoo.io import atomic_path, write_text  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
U32 = 2.0**-24


def float64_sums(X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The Gram and `sum |x|` as svdzoo summed them before: float64, 256-token chunks."""
    n = X.shape[1]
    H = torch.zeros(n, n, dtype=torch.float64, device=X.device)
    abssum = torch.zeros(n, dtype=torch.float64, device=X.device)
    for s in range(0, X.shape[0], CHUNK_TOKENS):
        c = X[s : s + CHUNK_TOKENS].to(torch.float64)
        H.addmm_(c.T, c)
        abssum += c.abs().sum(0)
    return H, abssum


def exact_sums(X: torch.Tensor, batch: int = 2048) -> GramAccumulator:
    acc = GramAccumulator(X.shape[1], X.device, half=True)
    for s in range(0, X.shape[0], batch):
        acc.add(X[s : s + batch])
    return acc.finish()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _errors(H: torch.Tensor, H64: torch.Tensor, X: torch.Tensor | None) -> dict[str, float]:
    out = {"rel_fro_error": float((H - H64).norm() / H64.norm())}
    d = torch.diagonal(H64)
    out["max_rel_diag_error"] = float(((torch.diagonal(H) - d).abs() / d.clamp_min(1e-300)).max())
    if X is not None:  # against the deterministic bound, per entry
        A = X.abs().to(torch.float64)
        bound = HALF_CHUNK_TOKENS * U32 * (A.T @ A)
        out["max_error_over_bound"] = float(((H - H64).abs() / bound.clamp_min(1e-300)).max())
    return out


def speed(
    widths: list[int], tokens: int, dtype: torch.dtype, device: torch.device, repeats: int
) -> list[dict]:
    rows = []
    for n in widths:
        gen = torch.Generator().manual_seed(0)
        X = torch.randn(tokens, n, generator=gen)
        X[:, :8] *= 50.0  # a few outlier channels, as LLM activations have
        X = X.to(dtype).to(device)
        times: dict[str, list[float]] = {"float64": [], "exact": []}
        for _ in range(repeats):  # interleaved: drift and load hit both alike
            for kind in times:
                _sync(device)
                t0 = time.perf_counter()
                H = float64_sums(X)[0] if kind == "float64" else exact_sums(X).H
                _sync(device)
                times[kind].append(time.perf_counter() - t0)
                if kind == "float64":
                    H64 = H
                else:
                    Hx = H
        row = {
            "width": n,
            "tokens": tokens,
            "dtype": str(dtype).removeprefix("torch."),
            "float64_s": min(times["float64"]),
            "exact_s": min(times["exact"]),
            "all_float64_s": times["float64"],
            "all_exact_s": times["exact"],
        }
        row["speedup"] = row["float64_s"] / row["exact_s"]
        row.update(_errors(Hx, H64, X))
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if not k.startswith("all_")}))
    return rows


@torch.no_grad()
def real_model(
    model_dir: Path, nsamples: int, seqlen: int, ratio: float, dtype: torch.dtype
) -> dict[str, Any]:
    """SmolLM2's activations in `dtype`, summed both ways from one forward pass; per group,
    the Gram's error, and per matrix SVD-LLM's loss from either Gram."""
    from svdzoo.calibration.capture import group_input_hooks
    from svdzoo.data import calibration_windows, window_prefix
    from svdzoo.models import adapter_for, load_model, load_tokenizer

    model = load_model(model_dir).to(dtype).eval()
    tok = load_tokenizer(model_dir)
    windows = calibration_windows(
        tok, "pydoc", nsamples, seqlen, 3, prefix=window_prefix(model.config)
    )
    adapter = adapter_for(model)
    exact: dict[tuple[int, str], GramAccumulator] = {}
    f64: dict[tuple[int, str], list[torch.Tensor]] = {}

    def hook(i: int):
        def fn(group: str, x: torch.Tensor) -> None:
            exact.setdefault((i, group), GramAccumulator(x.shape[1], x.device, half=True)).add(x)
            f64.setdefault((i, group), []).append(x)

        return fn

    with contextlib.ExitStack() as stack:
        for i, layer in enumerate(adapter.layers(model)):
            stack.enter_context(group_input_hooks(layer, adapter, hook(i)))
        for s in tqdm(range(0, nsamples, 4), desc="forward"):
            model(input_ids=windows[s : s + 4], use_cache=False)
    grams: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}
    group_rows = []
    for key, acc in exact.items():
        H64 = float64_sums(torch.cat(f64.pop(key)))[0]
        grams[key] = (acc.finish().H, H64)
        group_rows.append({"layer": key[0], "group": key[1], **_errors(acc.H, H64, None)})
    matrix_rows = []
    for name, layer, target, lin in tqdm(list(adapter.iter_targets(model)), desc="SVD-LLM"):
        Hx, H64 = grams[(layer, adapter.group_of(target))]
        W = lin.weight.detach().to(torch.float64)
        k = linalg.rank_for_ratio(*W.shape, ratio)
        losses = []
        for H in (H64, Hx):
            f = linalg.truncate(W, linalg.cholesky_whitener(H), k)
            losses.append(linalg.layer_loss(W, f.A, f.B, H64))
        matrix_rows.append(
            {
                "matrix": name,
                "loss_float64_gram": losses[0],
                "rel_loss_diff": losses[1] / losses[0] - 1,
            }
        )
    return {
        "model": model_dir.name,
        "dtype": str(dtype).removeprefix("torch."),
        "tokens": nsamples * seqlen,
        "ratio": ratio,
        "groups": group_rows,
        "matrices": matrix_rows,
    }


def _run_line(sec: dict[str, Any]) -> str:
    return (
        f"`python benchmarks/bench_gram_sums.py {sec['command']}` on {sec['machine']}, "
        f"torch {sec['torch']}."
    )


def render(res: dict[str, Any]) -> str:
    lines = ["# Gram sums of half-precision activations", ""]
    if res.get("speed"):
        sec = res["speed"]
        lines += [
            f"## Speed, random activations with 8 outlier channels, on {sec['device']}",
            "",
            _run_line(sec),
            "Each time the fastest of the interleaved repeats. `float64`: every product summed in float64 over 256-token chunks (svdzoo before); `exact`: exact products summed in float32 within 2048-token chunks, the chunks in float64. Errors are against the float64 sum; the bound is `2048 * 2^-24 * |X|^T |X|` per entry.",
            "",
            "| width | tokens | dtype | float64 s | exact s | speedup | rel. error (Frobenius) | max rel. diagonal error | max error / bound |",
            "|---:|---:|---|---:|---:|---:|---:|---:|---:|",
        ]
        for r in sec["rows"]:
            lines.append(
                f"| {r['width']} | {r['tokens']} | {r['dtype']} | {r['float64_s']:.3f} | {r['exact_s']:.3f} | {r['speedup']:.2f}x | {r['rel_fro_error']:.1e} | {r['max_rel_diag_error']:.1e} | {r['max_error_over_bound']:.1e} |"
            )
        lines.append("")
    if res.get("real"):
        r = res["real"]
        g = r["groups"]
        m = r["matrices"]
        worst = max(m, key=lambda x: abs(x["rel_loss_diff"]))
        lines += [
            f"## Accuracy on the real model ({r['model']} in {r['dtype']}, {r['tokens']} pydoc tokens)",
            "",
            _run_line(r),
            "",
            f"- {len(g)} Grams: relative error (Frobenius) against the float64 sum of the same activations at most **{max(x['rel_fro_error'] for x in g):.1e}**, median {sorted(x['rel_fro_error'] for x in g)[len(g) // 2]:.1e}; diagonal entries at most {max(x['max_rel_diag_error'] for x in g):.1e} off.",
            f"- SVD-LLM at {r['ratio']:.0%} on its {len(m)} matrices: the factors from the float32-chunk Gram lose, on the float64 Gram, at most **{abs(worst['rel_loss_diff']):.1e}** relatively more than the float64 Gram's own ({worst['matrix']}); mean {sum(x['rel_loss_diff'] for x in m) / len(m):.1e}. Issue 16's tolerance for a precision change is 1e-3.",
            "",
        ]
    return "\n".join(lines)


def plot(res: dict[str, Any], path: Path) -> None:
    """The errors at a glance: speed-up and error per width; the real model's per-Gram error
    and per-matrix SVD-LLM loss change, each against the tolerance that matters."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = (2 if res.get("real") else 0) + (1 if res.get("speed") else 0)
    if not count:
        return
    fig, axes = plt.subplots(1, count, figsize=(5.5 * count, 3.8), squeeze=False)
    axes = list(axes[0])
    if res.get("real"):
        r = res["real"]
        g = sorted(x["rel_fro_error"] for x in r["groups"])
        m = sorted(abs(x["rel_loss_diff"]) for x in r["matrices"])
        ax = axes.pop(0)
        ax.semilogy(range(len(g)), g, ".", label="Gram, relative error (Frobenius)")
        ax.axhline(HALF_CHUNK_TOKENS * U32, color="grey", ls="--", lw=1, label="2048 x 2^-24")
        ax.set(xlabel="Gram (sorted)", title=f"{r['model']} in {r['dtype']}, {r['tokens']} tokens")
        ax.legend(fontsize=8)
        ax = axes.pop(0)
        ax.semilogy(range(len(m)), [max(v, 1e-18) for v in m], ".", color="C1")
        ax.axhline(1e-3, color="grey", ls="--", lw=1, label="issue 16's tolerance (1e-3)")
        ax.set(xlabel="matrix (sorted)", ylabel="|relative loss change|",
               title=f"SVD-LLM at {r['ratio']:.0%}: factors from the float32-chunk Gram")  # fmt: skip
        ax.legend(fontsize=8)
    if res.get("speed"):
        ax = axes.pop(0)
        rows = res["speed"]["rows"]
        ax.bar([str(x["width"]) for x in rows], [x["speedup"] for x in rows])
        ax.set(xlabel="width", ylabel="float64 time / exact time",
               title=f"Gram sums on {res['speed']['device']}")  # fmt: skip
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", type=Path, help="a real model's directory (accuracy section)")
    p.add_argument("--nsamples", type=int, default=16)
    p.add_argument("--seqlen", type=int, default=256)
    p.add_argument("--ratio", type=float, default=0.4)
    p.add_argument("--widths", type=lambda s: [int(x) for x in s.split(",")], default=[4096, 11008])
    p.add_argument("--tokens", type=int, default=8192)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dtype", choices=["float16", "bfloat16"], default="float16")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-speed", action="store_true")
    p.add_argument("--results", type=Path, default=RESULTS)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    dtype = getattr(torch, a.dtype)
    device = torch.device(a.device)
    run = {
        "command": " ".join(sys.argv[1:]),
        "machine": f"{platform.platform()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
    }
    path = a.results / "gram-sums.json"
    res: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}  # by section
    if not a.no_speed:
        res["speed"] = {**run, "rows": speed(a.widths, a.tokens, dtype, device, a.repeats)}
    if a.model:
        res["real"] = {**run, **real_model(a.model, a.nsamples, a.seqlen, a.ratio, dtype)}
    a.results.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(res, indent=2) + "\n")
    write_text(a.results / "gram-sums.md", render(res))
    plot(res, a.results / "gram-sums.png")
    print(render(res))


if __name__ == "__main__":
    main()
