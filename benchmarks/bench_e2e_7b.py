"""End to end at LLaMA-7B shapes on one device: calibration, every factorisation, and the
sensitivity tables.

Issue 16's goal: SVD-LLM on a 7B model in <= 5 min on one GPU, calibration at 256 x 2048
tokens included, with Duo-SVD, AdaSVD and the sensitivity tables timed beside it. A
randomly initialised LLaMA-7B-shaped model (hidden 4096, 32 heads, intermediate 11008,
32 layers; no download) is built and held on the device in float16 (13 GB). It is calibrated on an offline
corpus (`pydoc`, every machine's Python docs) through svdzoo's byte-level tokenizer, with
the workflow's own streaming code (`calibrate`), so methods that replay calibration text
(AdaSVD's sequential recalibration) run too. Then `svdzoo.compress` runs each method on a
copy of the dense model with the factorisations on the device. The weights are hashed
once, in the calibration's time, for every manifest (as `svdzoo calibrate-compress`
does; `models.fingerprint_known`). Timed phases: model build
(not counted), calibration, each method's compression, and each sensitivity table, each
to a device sync.

Methods (`--methods`): `svd-llm` (the goal), `duo-svd-columns` (Duo-SVD's column split at a
uniform ratio) and `adasvd` (compensated factors, sequential recalibration, adaCR
ratios). Sensitivity tables (`--tables duo asvd`) run on the device-held model over
`--table-nsamples` windows and `--table-ratios`; a table at the paper settings (32 x 2048
tokens, 9 ratios) costs its module SVDs once plus forward passes in proportion to
windows x ratios, so the report scales the measured time by that factor as an upper
bound (the SVD part does not grow).

`--shrink K` divides the widths (and `--layers` the depth) so the script can be checked
on a CPU in a minute before a device run:

    python benchmarks/bench_e2e_7b.py --device cpu --shrink 32 --layers 2 --nsamples 4 \\
        --seqlen 128 --table-ratios 0.4
    python benchmarks/bench_e2e_7b.py            # on a GPU: the full 7B shapes

`--layers 4` at full widths times the slower methods on a slice of the depth; the md
scales each row to 32 layers (every layer costs the same at these shapes).

Results: benchmarks/results/e2e-7b.json (one section per device and shape) and e2e-7b.md,
or `--results DIR`.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import platform
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
GOAL_S = 300.0
FULL_LAYERS = 32


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
    # built where it will run: a 7B random init takes minutes on a host's cores and a
    # second on a GPU, and 13 GB of float16 weights fit beside everything else there
    with torch.device(a.build_device):
        return LlamaForCausalLM(cfg).to(resolve_dtype(a.dtype)).eval()


def calibrate(model, tokenizer, device: torch.device, a: argparse.Namespace):
    """In-memory Gram statistics on `a.corpus`, through the workflow's streaming code."""
    from svdzoo.calibration.gram import calibrate as gram_stats

    return gram_stats(
        model,
        tokenizer,
        corpus=a.corpus,
        nsamples=a.nsamples,
        seqlen=a.seqlen,
        seed=0,
        device=device,
        batch_size=a.batch_size,
        memory_budget=a.memory_budget_mb << 20,
        progress=True,
    )


PAPER_TABLE_TOKENS = 32 * 2048  # base/paper.yaml: the tables' calibration windows
PAPER_TABLE_RATIOS = 9


def time_table(model, tokenizer, gram, kind: str, device: torch.device, a) -> dict[str, Any]:
    """One sensitivity table on the device-held model; the paper-settings scale factor."""
    from svdzoo.sensitivity import compute_sensitivity

    _sync(device)
    t0 = time.perf_counter()
    table = compute_sensitivity(
        model,
        tokenizer,
        gram,
        kind,
        nsamples=a.table_nsamples,
        ratios=a.table_ratios,
        device=device,
        batch_size=a.batch_size,
    )
    _sync(device)
    took = time.perf_counter() - t0
    scale = (PAPER_TABLE_TOKENS / (a.table_nsamples * a.seqlen)) * (
        PAPER_TABLE_RATIOS / len(a.table_ratios)
    )
    return {
        "table": kind,
        "modules": len(table),
        "ratios": list(a.table_ratios),
        "tokens": a.table_nsamples * a.seqlen,
        "seconds": round(took, 2),
        "paper_settings_upper_bound_s": round(took * scale, 1),
    }


def run(a: argparse.Namespace, save=lambda result: None) -> dict[str, Any]:
    """The timed phases; `save(result)` after each, so a run cut off by a device's time
    limit keeps what it measured."""
    import svdzoo
    from svdzoo.compression import Statistics
    from svdzoo.models import fingerprint_known, resolve_device
    from svdzoo.tokenizer import build_byte_tokenizer

    device = resolve_device(a.device)
    cuda = device.type == "cuda"
    tokenizer = build_byte_tokenizer()
    t0 = time.perf_counter()
    model = build_model(a)
    build_s = time.perf_counter() - t0
    print(f"model built in {build_s:.1f} s", flush=True)
    _sync(device)
    t0 = time.perf_counter()
    # hashed once, timed with the calibration, as `calibrate-compress` does: the manifests of
    # the statistics, the tables and each compressed copy read it (`fingerprint_known`)
    with fingerprint_known(model) as fp:
        gram = calibrate(model, tokenizer, device, a)
        _sync(device)
        calib_s = time.perf_counter() - t0
        print(f"calibration: {calib_s:.1f} s", flush=True)
        result: dict[str, Any] = {
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
            "peak_gpu_mib": None,
            "corpus": a.corpus,
            "rows": [],
            "tables": [],
        }

        def saved() -> None:
            if cuda:
                result["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
            save(result)

        saved()
        for method in a.methods:
            work = copy.deepcopy(model)
            _sync(device)
            t0 = time.perf_counter()
            with fingerprint_known(work, fp):  # an exact copy
                manifest = svdzoo.compress(
                    work, method, a.ratio, stats=Statistics(gram=gram), tokenizer=tokenizer,
                    device=device,
                )  # fmt: skip
            _sync(device)
            took = time.perf_counter() - t0
            del work
            result["rows"].append(
                {
                    "method": method,
                    "compress_s": round(took, 2),
                    "calibration_plus_compress_s": round(calib_s + took, 2),
                    "achieved_ratio": round(manifest["achieved_ratio"], 4),
                    "matrices": len(manifest["modules"]),
                    "precision": manifest[
                        "precision"
                    ],  # the SVD's: "auto" is float64-eigh on a GPU
                }
            )
            print(json.dumps(result["rows"][-1]), flush=True)
            saved()
        if a.tables:
            model.to(device)  # the probes' forward passes run where the model is
            for kind in a.tables:
                result["tables"].append(time_table(model, tokenizer, gram, kind, device, a))
                print(json.dumps(result["tables"][-1]), flush=True)
                saved()
        return result


def write(section: str, result: dict[str, Any], results: Path = RESULTS) -> None:
    from svdzoo.io import write_text

    path = results / "e2e-7b.json"
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
            f"{r['nsamples']} x {r['seqlen']} "
            + (f"tokens of {r['corpus']}, " if r.get("corpus") else "random tokens, ")
            + f"{r['ratio']:.0%} removal, on "
            f"{r['device']} (torch {r['torch']}). Calibration {r['calibration_s']:.1f} s"
            + (f", peak GPU memory {r['peak_gpu_mib']:.0f} MiB" if r["peak_gpu_mib"] else "")
            + ".",
            "",
            "| method | SVD precision | compression | calibration + compression | goal (<= 5 min) "
            f"| calibration + compression scaled to {FULL_LAYERS} layers |",
            "|---|---|---:|---:|---|---:|",
        ]
        scale = FULL_LAYERS / r["layers"]
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
                f"{row['calibration_plus_compress_s']:.1f} s | {verdict} | "
                f"{row['calibration_plus_compress_s'] * scale:.0f} s |"
            )
        lines.append("")
        if r.get("tables"):
            lines += [
                "| sensitivity table | modules | ratios | tokens | measured | at 32 x 2048 tokens,"
                f" 9 ratios, {FULL_LAYERS} layers (upper bound) |",
                "|---|---:|---|---:|---:|---:|",
            ]
            for t in r["tables"]:
                lines.append(
                    f"| {t['table']} | {t['modules']} | {', '.join(map(str, t['ratios']))} | "
                    f"{t['tokens']} | {t['seconds']:.1f} s | "
                    f"{t['paper_settings_upper_bound_s'] * scale / 60:.1f} min |"
                )
            lines.append("")
    write_text(results / "e2e-7b.md", "\n".join(lines))


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
    ap.add_argument("--methods", nargs="+", default=["svd-llm", "duo-svd-columns", "adasvd"])
    ap.add_argument("--corpus", default="pydoc", help="calibration corpus (offline: pydoc)")
    ap.add_argument("--tables", nargs="*", default=["duo", "asvd"], help="sensitivity kinds")
    ap.add_argument("--table-nsamples", type=int, default=1, help="windows per table")
    ap.add_argument(
        "--table-ratios", type=float, nargs="+", default=[0.4, 0.8], help="retained ratios probed"
    )
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--section", default=None, help="default: device and shape")
    ap.add_argument("--results", type=Path, default=RESULTS, help="where the JSON and md go")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if a.threads:
        torch.set_num_threads(a.threads)
    device = (
        torch.cuda.get_device_name() if a.device != "cpu" and torch.cuda.is_available() else "cpu"
    )
    section = a.section or f"{device} shrink {a.shrink} layers {a.layers}"
    a.build_device = "cuda" if device != "cpu" else "cpu"
    a.results.mkdir(parents=True, exist_ok=True)
    run(a, lambda result: write(section, result, a.results))
    print((a.results / "e2e-7b.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
