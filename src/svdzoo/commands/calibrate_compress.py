"""`svdzoo calibrate-compress`: a model to a compressed model in one command.

The statistics the method needs are computed (or reused from the workflow's cache paths
under `--stats-root`, when they are this model's and this calibration set's) and the model
is compressed, loaded once. `svdzoo calibrate`, `sensitivity` and `compress` are the same
steps one at a time, as the workflow runs them.
"""

from __future__ import annotations

import argparse
import logging

NAME = "calibrate-compress"
HELP = "compute (or reuse) the statistics a method needs and compress a model, in one command"

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    from svdzoo.commands.compress import add_compression_arguments

    add_compression_arguments(p)
    p.add_argument("--corpus", required=True, help="calibration corpus: name or .txt/.jsonl path")
    p.add_argument("--nsamples", type=int, required=True, help="calibration windows")
    p.add_argument("--seqlen", type=int, required=True, help="tokens per calibration window")
    p.add_argument("--seed", type=int, default=0, help="window seed (default 0)")
    p.add_argument(
        "--stats-root",
        default=".",
        help="where the caches go, as the workflow files them: "
        "ROOT/data/stats/<model-name>/<corpus-nN-lL-sS>/{gram,fisher,sensitivity-*} "
        "(default: the current directory)",
    )
    p.add_argument(
        "--model-name", help="the name the caches are filed under (default: the model's last "
        "path component)"
    )  # fmt: skip
    p.add_argument(
        "--sensitivity-nsamples",
        type=int,
        default=32,
        help="windows per sensitivity probe, for the methods that need a table (default 32)",
    )
    p.add_argument(
        "--sensitivity-ratios",
        type=float,
        nargs="+",
        help="RETAINED ratios a sensitivity table probes (default: the method's grid)",
    )
    p.add_argument(
        "--recompute-stats",
        action="store_true",
        help="recompute a cache at the statistics paths that is not this request's (another "
        "model under the same name, other settings or code); without it the command stops",
    )


def run(args: argparse.Namespace) -> int:
    from svdzoo.calibrate_compress import calibrate_and_compress
    from svdzoo.commands.compress import parse_options
    from svdzoo.io import COMPRESSED_MODEL, check_output

    # a foreign, protected, unwritable or busy --out fails here, before anything loads
    check_output(args.out, COMPRESSED_MODEL, force=args.force, protect=(args.model, args.corpus))
    calibrate_and_compress(
        args.model,
        args.method,
        args.ratio,
        args.out,
        corpus=args.corpus,
        nsamples=args.nsamples,
        seqlen=args.seqlen,
        seed=args.seed,
        stats_root=args.stats_root,
        model_name=args.model_name,
        options=parse_options(args.option),
        device=args.device,
        dtype=args.dtype,
        sensitivity_nsamples=args.sensitivity_nsamples,
        sensitivity_ratios=args.sensitivity_ratios,
        recompute_stats=args.recompute_stats,
        force=args.force,
    )
    return 0
