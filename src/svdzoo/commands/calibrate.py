"""`svdzoo calibrate`: the statistics cache of one (model, calibration set).

`--kind gram` (default): Gram matrices, abs-means and layer cosines, streamed layer by layer
(one decoder layer on the device at a time). `--kind fisher`: FWSVD's squared-gradient
importances, which need backward passes through the whole model on the device. Both write
`OUT/manifest.json` + `OUT/stats.safetensors` atomically.
"""

from __future__ import annotations

import argparse
import logging

NAME = "calibrate"
HELP = "compute and cache calibration statistics (Gram: H, mean|x|, layer cosine; or Fisher)"

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="hub id or saved model dir")
    p.add_argument("--model-name", help="model label for the manifest (default: --model)")
    p.add_argument("--kind", choices=("gram", "fisher"), default="gram")
    p.add_argument("--corpus", required=True, help="corpus name or .txt/.jsonl path")
    p.add_argument("--nsamples", type=int, required=True)
    p.add_argument("--seqlen", type=int, required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--out", required=True, help="cache directory to (re)write")
    p.add_argument(
        "--force",
        action="store_true",
        help="replace --out even if it is not an earlier cache of this kind (never an input)",
    )
    p.add_argument(
        "--device", default="auto", help="where each layer (gram) or the model (fisher) runs"
    )
    p.add_argument("--dtype", default="float32", help="dtype the model is loaded in")
    p.add_argument(
        "--batch-size",
        type=int,
        default=8,
        help="gram: windows per forward pass (execution only: the cache's bytes do not "
        "depend on it); not read by fisher",
    )
    p.add_argument(
        "--fisher-batch-size",
        type=int,
        default=1,
        help="fisher: samples per squared gradient, part of the estimator (default 1: "
        "per-sample gradients, the empirical Fisher)",
    )
    p.add_argument(
        "--memory-budget-mb",
        type=int,
        default=2048,
        help="gram: host memory for hidden states between layers; beyond it they go to disk",
    )
    p.add_argument(
        "--offload-dir", help="gram: folder for offloaded hidden states (default: a temp dir)"
    )


def run(args: argparse.Namespace) -> int:
    import time

    from svdzoo.errors import ConfigError
    from svdzoo.io import check_output

    if args.nsamples < 1 or args.seqlen < 2:
        raise ConfigError(
            f"--nsamples must be >= 1 and --seqlen >= 2 (got {args.nsamples}, {args.seqlen})"
        )
    for flag, value in (
        ("--batch-size", args.batch_size),
        ("--fisher-batch-size", args.fisher_batch_size),
    ):
        if value < 1:
            raise ConfigError(f"{flag} must be positive, got {value}")
    if args.memory_budget_mb < 0:
        raise ConfigError("--memory-budget-mb must be non-negative")
    if args.kind == "gram":
        from svdzoo.calibration.store import check_offload_dir

        check_offload_dir(args.offload_dir)  # first used after the model loads
    # a foreign, protected, unwritable or busy --out fails here, before the model loads
    check_output(args.out, args.kind, force=args.force, protect=(args.model, args.corpus))
    from svdzoo.models import (
        check_window_seqlen,
        load_config,
        load_model,
        load_tokenizer,
        resolve_device,
        resolve_dtype,
    )

    resolve_dtype(args.dtype)
    device = resolve_device(args.device)
    from svdzoo.models import check_not_compressed

    check_not_compressed(args.model, "calibrate")
    from svdzoo.data import check_train_length, get_corpus

    # an unknown or unreachable corpus, or one too short for --seqlen, before the model loads
    check_train_length(get_corpus(args.corpus), args.seqlen)
    load_device = "cpu" if args.kind == "gram" else device
    tokenizer = load_tokenizer(args.model)  # a model without a tokenizer fails before loading
    check_window_seqlen(load_config(args.model), args.seqlen)  # before the weights load
    model = load_model(args.model, dtype=args.dtype, device=load_device)
    common = dict(
        corpus=args.corpus,
        nsamples=args.nsamples,
        seqlen=args.seqlen,
        seed=args.seed,
        device=device,
        model_id=args.model_name or args.model,
    )
    t0 = time.perf_counter()
    if args.kind == "gram":
        from svdzoo.calibration import calibrate_to_dir

        manifest = calibrate_to_dir(
            model,
            tokenizer,
            args.out,
            batch_size=args.batch_size,
            memory_budget=args.memory_budget_mb << 20,
            offload_dir=args.offload_dir,
            force=args.force,
            **common,
        )
    else:
        from svdzoo.calibration import fisher_to_dir

        manifest = fisher_to_dir(
            model,
            tokenizer,
            args.out,
            batch_size=args.fisher_batch_size,
            force=args.force,
            **common,
        )
    log.info(
        "%s statistics of %s on %s (%d x %d tokens) -> %s in %.1fs (%.1f MiB)",
        args.kind,
        args.model,
        args.corpus,
        args.nsamples,
        args.seqlen,
        args.out,
        time.perf_counter() - t0,
        manifest["bytes"] / 2**20,
    )
    return 0
