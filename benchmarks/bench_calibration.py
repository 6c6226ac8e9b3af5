"""Calibration memory and speed: peak RSS vs nsamples, time per sample, per-layer cost at 7B shapes.

Default (CPU, ~1-2 minutes on 2 cores): a reference-sized LLaMA-like model (hidden 128,
4 layers, GQA; random weights unless `--model DIR` names a trained one) is calibrated with
`calibrate_to_dir` at nsamples 32 and 256, each in a fresh subprocess so that its peak RSS
(`ru_maxrss`) is its own. A small activation budget (`--memory-budget-mb`, default 4) makes
the store offload hidden states to disk, which is what keeps memory flat in nsamples.

`--llama7b-shapes` (GPU): a LLaMA-7B-shaped decoder stack (hidden 4096, 32 heads,
intermediate 11008, `--layers` layers, random weights, no download) held on the CPU, each
layer moved to the GPU in turn; reports time and peak GPU memory per layer.

Results: benchmarks/results/calibration.json (merged by section) and calibration.md.

    python benchmarks/bench_calibration.py
    python benchmarks/bench_calibration.py --llama7b-shapes --layers 4 --nsamples 32 --seqlen 2048
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

RESULTS = Path(__file__).resolve().parent / "results"
REF_SHAPE = dict(hidden=128, layers=4, heads=4, kv_heads=2, ffn=384)


def _rss_mib() -> float:
    """Process-lifetime peak RSS (includes one-off peaks before calibration, e.g. tokenising)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _current_rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class RssSampler:
    """Peak of the current RSS over a block, sampled every few milliseconds by a thread."""

    def __init__(self, interval: float = 0.002):
        import threading

        self.interval = interval
        self.peak = _current_rss_mib()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _current_rss_mib())
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _current_rss_mib())


def _reference_model(model_dir: str | None):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from svdzoo.models import load_model, load_tokenizer
    from svdzoo.tokenizer import build_byte_tokenizer

    if model_dir:
        return load_model(model_dir), load_tokenizer(model_dir), model_dir
    torch.manual_seed(0)
    s = REF_SHAPE
    cfg = LlamaConfig(
        hidden_size=s["hidden"],
        num_hidden_layers=s["layers"],
        num_attention_heads=s["heads"],
        num_key_value_heads=s["kv_heads"],
        intermediate_size=s["ffn"],
        vocab_size=258,
        max_position_embeddings=2048,
    )
    return LlamaForCausalLM(cfg).eval(), build_byte_tokenizer(), "random-llama-ref"


def _cpu_child(args: dict[str, Any], q: mp.Queue) -> None:
    """One calibration in a fresh process: its peak RSS belongs to this run alone."""
    import torch

    from svdzoo.calibration import calibrate_to_dir
    from svdzoo.calibration.store import MemoryBudget
    from svdzoo.data import calibration_windows

    if args["threads"]:
        torch.set_num_threads(args["threads"])
    model, tok, name = _reference_model(args["model"])
    calibration_windows(tok, args["corpus"], 1, args["seqlen"], 0, prefix=())  # warm the cache
    import gc

    gc.collect()
    rss_before = _current_rss_mib()
    with tempfile.TemporaryDirectory() as tmp, RssSampler() as sampler:
        budget = MemoryBudget(args["budget_mb"] << 20, tmp)
        t0 = time.perf_counter()
        manifest = calibrate_to_dir(
            model,
            tok,
            Path(tmp) / "gram",
            corpus=args["corpus"],
            nsamples=args["nsamples"],
            seqlen=args["seqlen"],
            seed=0,
            batch_size=args["batch_size"],
            memory_budget=budget,
            device="cpu",
            progress=False,
        )
        elapsed = time.perf_counter() - t0
    hidden = model.config.hidden_size
    q.put(
        {
            "model": name,
            "nsamples": args["nsamples"],
            "seqlen": args["seqlen"],
            "batch_size": args["batch_size"],
            "memory_budget_mib": args["budget_mb"],
            "hidden_states_mib_per_stream": args["nsamples"] * args["seqlen"] * hidden * 4 / 2**20,
            "store_peak_in_memory_mib": round(budget.peak / 2**20, 2),
            "store_offloaded_mib": round(budget.offloaded_bytes / 2**20, 2),
            "seconds": round(elapsed, 3),
            "seconds_per_sample": round(elapsed / args["nsamples"], 4),
            "tokens_per_second": round(args["nsamples"] * args["seqlen"] / elapsed, 1),
            "rss_before_mib": round(rss_before, 1),
            "peak_rss_mib": round(sampler.peak, 1),
            "peak_rss_growth_mib": round(sampler.peak - rss_before, 1),
            "process_max_rss_mib": round(_rss_mib(), 1),
            "cache_mib": round(manifest["bytes"] / 2**20, 2),
        }
    )


def bench_cpu(a: argparse.Namespace) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    runs = []
    plan = [(n, a.memory_budget_mb) for n in a.nsamples_list]
    if a.contrast_budget_mb is not None:
        plan.append((max(a.nsamples_list), a.contrast_budget_mb))
    for n, budget in plan:
        q: mp.Queue = ctx.Queue()
        args = dict(
            model=a.model,
            corpus=a.corpus,
            nsamples=n,
            seqlen=a.seqlen,
            batch_size=a.batch_size,
            budget_mb=budget,
            threads=a.threads,
        )
        p = ctx.Process(target=_cpu_child, args=(args, q))
        p.start()
        res = q.get()
        p.join()
        print(json.dumps(res))
        runs.append(res)
    bounded = [r for r in runs if r["memory_budget_mib"] == a.memory_budget_mb]
    growth = bounded[-1]["peak_rss_mib"] - bounded[0]["peak_rss_mib"]
    return {
        "machine": f"{platform.machine()} {os.cpu_count()} cores, torch threads {a.threads or 'default'}",
        "load_average_after": round(os.getloadavg()[0], 2),
        "shape": REF_SHAPE if not a.model else "trained model",
        "runs": runs,
        "peak_rss_growth_mib": round(growth, 1),
    }


def bench_llama7b(a: argparse.Namespace) -> dict[str, Any]:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from svdzoo.calibration import stream_gram_stats
    from svdzoo.models import resolve_device, resolve_dtype

    device = resolve_device(a.device)
    dtype = resolve_dtype(a.dtype)
    torch.manual_seed(0)
    cfg = LlamaConfig(
        hidden_size=4096,
        num_attention_heads=32,
        num_key_value_heads=32,
        intermediate_size=11008,
        num_hidden_layers=a.layers,
        vocab_size=32000,
        max_position_embeddings=4096,
    )
    t0 = time.perf_counter()
    with torch.device("cpu"):
        model = LlamaForCausalLM(cfg).to(dtype).eval()
    build_s = time.perf_counter() - t0
    windows = torch.randint(
        0, cfg.vocab_size, (a.nsamples, a.seqlen), generator=torch.Generator().manual_seed(0)
    )
    per_layer: list[dict[str, Any]] = []
    cuda = device.type == "cuda"

    def on_layer(i: int, seconds: float) -> None:
        row = {"layer": i, "seconds": round(seconds, 3)}
        if cuda:
            row["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
            torch.cuda.reset_peak_memory_stats(device)
        per_layer.append(row)
        print(json.dumps(row))

    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    stream_gram_stats(
        model,
        windows,
        lambda name, t: None,  # statistics are computed and copied to host, then dropped
        device=device,
        batch_size=a.batch_size,
        memory_budget=a.memory_budget_mb << 20,
        layer_callback=on_layer,
        progress=False,
    )
    total = time.perf_counter() - t0
    steady = [r["seconds"] for r in per_layer[1:]] or [per_layer[0]["seconds"]]
    out = {
        "device": torch.cuda.get_device_name(device) if cuda else platform.processor() or "cpu",
        "torch": torch.__version__,
        "dtype": a.dtype,
        "layers": a.layers,
        "nsamples": a.nsamples,
        "seqlen": a.seqlen,
        "batch_size": a.batch_size,
        "memory_budget_mib": a.memory_budget_mb,
        "model_build_seconds": round(build_s, 1),
        "total_seconds_incl_capture": round(total, 2),
        "seconds_per_layer_steady": round(sum(steady) / len(steady), 3),
        "per_layer": per_layer,
        "extrapolated_32_layers_seconds": round(32 * sum(steady) / len(steady), 1),
        "host_peak_rss_mib": round(_rss_mib(), 1),
    }
    if cuda:
        out["peak_gpu_mib_max"] = max(r["peak_gpu_mib"] for r in per_layer)
    if a.sequential:
        out["sequential"] = bench_sequential(model, windows, device, a)
    return out


def bench_sequential(model, windows, device, a: argparse.Namespace) -> list[dict[str, Any]]:
    """Per layer: `layer_stats` (H, H', C for all groups) + `advance`, with no compression."""
    import torch

    from svdzoo.calibration import SequentialCalibrator

    cuda = device.type == "cuda"
    seq = SequentialCalibrator(
        model,
        windows,
        device=device,
        batch_size=a.batch_size,
        memory_budget=a.memory_budget_mb << 20,
        progress=False,
    )
    rows = []
    for i, _layer in seq.layers():
        if cuda:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        st = seq.layer_stats(i)
        del st
        seq.advance(i)
        if cuda:
            torch.cuda.synchronize(device)
        row = {"layer": i, "seconds": round(time.perf_counter() - t0, 3)}
        if cuda:
            row["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
        rows.append(row)
        print(json.dumps({"sequential": row}))
    return rows


def write_results(section: str, data: dict[str, Any]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "calibration.json"
    all_results = json.loads(path.read_text()) if path.exists() else {}
    all_results[section] = data
    path.write_text(json.dumps(all_results, indent=2) + "\n")
    (RESULTS / "calibration.md").write_text(render_md(all_results))
    print(f"wrote {path} and calibration.md")


def render_md(res: dict[str, Any]) -> str:
    lines = ["# Calibration benchmark", "", "Written by `benchmarks/bench_calibration.py`.", ""]
    for key in [k for k in res if k.startswith("cpu_reference")]:
        r = res[key]
        lines += [
            f"## Peak RSS vs nsamples (CPU, reference-sized model) [{key}]",
            "",
            f"Machine: {r['machine']}; model shape: {r['shape']}.",
            "",
            "Peak RSS is sampled during the calibration call (model, corpus and imports already",
            "loaded: `RSS before`); growth = peak - before. A small activation budget offloads the",
            "hidden states between layers to disk, which keeps memory flat in nsamples; the last",
            "row, if any, keeps them all in memory for contrast. Timings on a shared machine are noisy (load",
            f"average {r.get('load_average_after', '?')} at the end).",
            "",
            "| nsamples | seqlen | budget MiB | hidden states MiB/stream | store peak in memory MiB | offloaded MiB | seconds | s/sample | tokens/s | RSS before MiB | peak RSS MiB | growth MiB |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for x in r["runs"]:
            lines.append(
                f"| {x['nsamples']} | {x['seqlen']} | {x['memory_budget_mib']} | "
                f"{x['hidden_states_mib_per_stream']:.1f} | {x.get('store_peak_in_memory_mib', float('nan')):.1f} | {x.get('store_offloaded_mib', float('nan')):.1f} | {x['seconds']:.2f} | {x['seconds_per_sample']:.4f} | "
                f"{x['tokens_per_second']:.0f} | {x['rss_before_mib']:.0f} | {x['peak_rss_mib']:.0f} | {x['peak_rss_growth_mib']:.1f} |"
            )
        lines += [
            "",
            f"Peak RSS difference between the smallest and the largest nsamples at the small budget: {r['peak_rss_growth_mib']} MiB.",
            "",
        ]
    for key in [k for k in res if k.startswith("llama7b_shapes")]:
        r = res[key]
        lines += [
            f"## LLaMA-7B-shaped decoder layers (random weights) [{key}]",
            "",
            f"Device: {r['device']} (torch {r['torch']}), dtype {r['dtype']}, {r['nsamples']} x {r['seqlen']} tokens, "
            f"batch {r['batch_size']}; model on host, one layer at a time on the device.",
            "",
            "| layer | seconds | peak GPU MiB |",
            "| --- | --- | --- |",
        ]
        for x in r["per_layer"]:
            lines.append(f"| {x['layer']} | {x['seconds']:.2f} | {x.get('peak_gpu_mib', '-')} |")
        lines += [
            "",
            f"Steady-state {r['seconds_per_layer_steady']} s/layer, so about "
            f"{r['extrapolated_32_layers_seconds']} s for all 32 layers of LLaMA-7B "
            f"(plus capture); host peak RSS {r['host_peak_rss_mib']} MiB.",
            "",
        ]
        if r.get("sequential"):
            lines += [
                "Sequential mode (`layer_stats` for all groups + `advance`, no compression):",
                "",
                "| layer | seconds | peak GPU MiB |",
                "| --- | --- | --- |",
            ]
            for x in r["sequential"]:
                lines.append(
                    f"| {x['layer']} | {x['seconds']:.2f} | {x.get('peak_gpu_mib', '-')} |"
                )
            lines.append("")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", help="trained model dir (default: random reference-sized LLaMA)")
    p.add_argument("--corpus", default="pydoc")
    p.add_argument(
        "--nsamples-list", type=lambda s: [int(x) for x in s.split(",")], default=[32, 256]
    )
    p.add_argument("--seqlen", type=int, default=None, help="default: 128 (CPU), 2048 (7B shapes)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--memory-budget-mb", type=int, default=None, help="default: 4 (CPU), 2048 (7B)")
    p.add_argument(
        "--contrast-budget-mb",
        type=int,
        default=None,
        help="CPU: also run the largest nsamples with this budget, e.g. 2048 (all in memory)",
    )
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--llama7b-shapes", action="store_true")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument(
        "--sequential", action="store_true", help="7B shapes: also time SequentialCalibrator"
    )
    p.add_argument("--nsamples", type=int, default=32, help="7B shapes only")
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--section", help="results section name (default: cpu_reference / llama7b_shapes)"
    )
    p.add_argument("--dtype", default="float16")
    a = p.parse_args()
    if a.llama7b_shapes:
        a.seqlen = a.seqlen or 2048
        a.memory_budget_mb = 2048 if a.memory_budget_mb is None else a.memory_budget_mb
        write_results(a.section or "llama7b_shapes", bench_llama7b(a))
    else:
        a.seqlen = a.seqlen or 128
        a.memory_budget_mb = 4 if a.memory_budget_mb is None else a.memory_budget_mb
        write_results(a.section or "cpu_reference", bench_cpu(a))


if __name__ == "__main__":
    main()
