"""`svdzoo train-reference`: train a small reference LM for the offline default run."""

from __future__ import annotations

import argparse
from dataclasses import fields

NAME = "train-reference"
HELP = "train a small reference causal LM (llama GQA or opt family) on an offline corpus"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from svdzoo.reference_config import REFERENCE_FAMILIES, TrainConfig, flag_type

    p.add_argument("--family", choices=REFERENCE_FAMILIES, required=True)
    p.add_argument("--out", required=True, help="output model directory")
    p.add_argument(
        "--force",
        action="store_true",
        help="replace --out even if it is not an earlier reference model",
    )
    for f in fields(TrainConfig):
        if f.name == "family":
            continue
        p.add_argument(
            f"--{f.name.replace('_', '-')}",
            type=flag_type(f.name),
            default=None,
            help=f"default {f.default}",
        )


def run(args: argparse.Namespace) -> int:
    from svdzoo.reference import TrainConfig, train_reference

    overrides = {
        f.name: getattr(args, f.name)
        for f in fields(TrainConfig)
        if getattr(args, f.name, None) is not None
    }
    summary = train_reference(TrainConfig(**overrides), args.out, force=args.force)
    print(
        f"validation perplexity {summary['validation_perplexity']:.3f} after {summary['train_time_s']:.0f}s"
    )
    return 0
