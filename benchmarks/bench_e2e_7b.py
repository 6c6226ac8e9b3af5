"""End to end at LLaMA-7B shapes on one device: calibration, then every factorisation.

Issue 16's goal: SVD-LLM on a 7B model in <= 5 min on one GPU, calibration at 256 x 2048
tokens included. A randomly initialised LLaMA-7B-shaped model (hidden 4096, 32 heads,
intermediate 11008, 32 layers; no download) is held on the host in float16; calibration
streams it layer by layer through the device (`stream_gram_stats`, the workflow's own
code) on random token windows; then `svdzoo.compress` runs each method on a copy of the
dense model with the factorisations on the device. Timed phases: model build (not
counted), calibration, and each method's compression, each to a device sync.

Methods are those that need only the Gram: `svd-llm` (the goal) and `duo-svd-columns`
(Duo-SVD's column split at a uniform ratio). AdaSVD (it replays calibration text through a
tokenizer) and the sensitivity tables (hundreds of forward probes) are not timed here.

`--shrink K` divides the widths (and `--layers` the depth) so the script can be checked
on a CPU in seconds before a device run:

    python benchmarks/bench_e2e_7b.py --device cpu --shrink 32 --layers 2 --nsamples 4 --seqlen 128
    python benchmarks/bench_e2e_7b.py            # on a GPU: the full 7B shapes

Results: benchmarks/results/e2e-7b.json (one section per device and shape) and e2e-7b.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
GOAL_S = 300.0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_model(a: argparse.Namespace):
    from transformers import LlamaConfig, LlamaForCausalLM

    from svdzoo.models import resolve_dtype

    k = a.shrink
    cfg = LlamaConfig(
        hidden_size=4096 // k,
        num_attention_heads=max(1, 32 // k),
        num_key_value_heads=max(1, 32 // k),
        intermediate_size=11008 // k,
        num_hidden_layers=a.layers,
        vocab_size=32000,
        max_position_embeddings=max(4096, a.seqlen),
    )
    torch.manual_seed(0)
    with torch.device("cpu"):
        return LlamaForCausalLM(cfg).to(resolve_dtype(a.dtype)).eval()


def calibrate(model, device: torch.device, a: argparse.Namespace):
    """In-memory Gram statistics on random windows, through the workflow's streaming code."""
    from svdzoo.calibration import CalibrationStats, stream_gram_stats
    from svdzoo.calibration.gram import gram_manifest

    windows = torch.randint(
        0,
        model.config.vocab_size,
        (a.nsamples, a.seqlen),
        generator=torch.Generator().manual_seed(0),
    )
    corpus = SimpleNamespace(name="random-tokens", fingerprint="torch.randint seed 0")
    manifest = gram_manifest(
        model, corpus=corpus, nsamples=a.nsamples, seqlen=a.seqlen, seed=0, model_id=None
    )
    tensors: dict[str, torch.Tensor] = {}
    counts = stream_gram_stats(
        model,
        windows,
        tensors.__setitem__,
        device=device,
        batch_size=a.batch_size,
        memory_budget=a.memory_budget_mb << 20,
        progress=True,
    )
    manifest.update(counts=counts, tokens=a.nsamples * a.seqlen, tensors=list(tensors))
    return CalibrationStats(manifest, tensors.__getitem__)


def run(a: argparse.Namespace) -> dict[str, Any]:
    import svdzoo
    from svdzoo.compression import Statistics
    from svdzoo.models import resolve_device

    device = resolve_device(a.device)
    t0 = time.perf_counter()
    model = build_model(a)
    build_s = time.perf_counter() - t0
    print(f"model built in {build_s:.1f} s", flush=True)
    _sync(device)
    t0 = time.perf_counter()
    gram = calibrate(model, device, a)
    _sync(device)
    calib_s = time.perf_counter() - t0
    print(f"calibration: {calib_s:.1f} s", flush=True)
    rows = []
    for method in a.methods:
        work = copy.deepcopy(model)
        _sync(device)
        t0 = time.perf_counter()
        manifest = svdzoo.compress(
            work, method, a.ratio, stats=Statistics(gram=gram), device=device
        )
        _sync(device)
        took = time.perf_counter() - t0
        del work
        rows.append(
            {
                "method": method,
                "compress_s": round(took, 2),
                "calibration_plus_compress_s": round(calib_s + took, 2),
                "achieved_ratio": round(manifest["achieved_ratio"], 4),
                "matrices": len(manifest["modules"]),
                "precision": manifest["precision"],  # the SVD's: "auto" is float32 on a GPU
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    cuda = device.type == "cuda"
    return {
        "device": torch.cuda.get_device_name(device) if cuda else platform.processor() or "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "shrink": a.shrink,
        "layers": a.layers,
        "nsamples": a.nsamples,
        "seqlen": a.seqlen,
        "dtype": a.dtype,
        "ratio": a.ratio,
        "model_build_s": round(build_s, 1),
        "calibration_s": round(calib_s, 2),
        "peak_gpu_mib": round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if cuda else None,
        "rows": rows,
    }


def write(section: str, result: dict[str, Any]) -> None:
    from svdzoo.io import write_text

    path = RESULTS / "e2e-7b.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data[section] = result
    write_text(path, json.dumps(data, indent=2) + "\n")
    lines = ["# End to end at LLaMA-7B shapes", ""]
    for name, r in sorted(data.items()):
        shape = "LLaMA-7B shapes" if r["shrink"] == 1 else f"LLaMA-7B widths / {r['shrink']}"
        lines += [
            f"## {name}",
            "",
            f"{shape}, {r['layers']} layers, random weights ({r['dtype']}), calibration "
            f"{r['nsamples']} x {r['seqlen']} random tokens, {r['ratio']:.0%} removal, on "
            f"{r['device']} (torch {r['torch']}). Calibration {r['calibration_s']:.1f} s"
            + (f", peak GPU memory {r['peak_gpu_mib']:.0f} MiB" if r["peak_gpu_mib"] else "")
            + ".",
            "",
            "| method | SVD precision | compression | calibration + compression | goal (<= 5 min) |",
            "|---|---|---:|---:|---|",
        ]
        for row in r["rows"]:
            full = (
                r["shrink"] == 1 and r["layers"] == 32 and r["nsamples"] * r["seqlen"] >= 256 * 2048
            )
            verdict = (
                ("met" if row["calibration_plus_compress_s"] <= GOAL_S else "not met")
                if full
                else "not the goal's shapes"
            )
            lines.append(
                f"| {row['method']} | {row.get('precision', 'float64')} | {row['compress_s']:.1f} s | "
                f"{row['calibration_plus_compress_s']:.1f} s | {verdict} |"
            )
        lines.append("")
    write_text(RESULTS / "e2e-7b.md", "\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--shrink", type=int, default=1, help="divide widths and heads by this")
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--nsamples", type=int, default=256)
    ap.add_argument("--seqlen", type=int, default=2048)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--memory-budget-mb", type=int, default=16384)
    ap.add_argument("--dtype", default="float16")
    ap.add_argument("--ratio", type=float, default=0.4)
    ap.add_argument("--methods", nargs="+", default=["svd-llm", "duo-svd-columns"])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--section", default=None, help="default: device and shape")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    result = run(a)
    section = a.section or f"{result['device']} shrink {a.shrink} layers {a.layers}"
    write(section, result)
    print((RESULTS / "e2e-7b.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
