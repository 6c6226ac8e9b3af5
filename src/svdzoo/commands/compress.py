"""`svdzoo compress`: compress a model with a registered method at one ratio."""

from __future__ import annotations

import argparse
import logging

NAME = "compress"
HELP = "compress a model with a registered method; writes safetensors weights and manifest.json"

log = logging.getLogger(__name__)


def add_compression_arguments(p: argparse.ArgumentParser, *, model_required: bool = True) -> None:
    """The model, method, ratio, options and output flags, shared with `calibrate-compress`."""
    p.add_argument("--model", required=model_required, help="hub id or local model directory")
    p.add_argument("--method", required=True)
    p.add_argument(
        "--ratio", type=float, required=True, help="fraction of parameters removed, in (0, 1)"
    )
    p.add_argument(
        "--option", action="append", default=[], metavar="KEY=VALUE", help="method option override"
    )
    p.add_argument("--out", required=True, help="compressed model directory to write")
    p.add_argument(
        "--force",
        action="store_true",
        help="replace --out even if it is not an earlier compressed model (never an input)",
    )
    p.add_argument(
        "--device", default="auto", help="where the factorisations run (default auto: a GPU if any)"
    )
    p.add_argument(
        "--dtype", default="float32", help="dtype the model is loaded in (default float32)"
    )


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_compression_arguments(p)
    p.add_argument("--stats", help="Gram statistics directory (svdzoo calibrate)")
    p.add_argument("--fisher", help="Fisher statistics directory (svdzoo calibrate --kind fisher)")
    p.add_argument("--sensitivity-duo", help="Duo-SVD sensitivity table directory")
    p.add_argument("--sensitivity-asvd", help="ASVD sensitivity table directory")
    p.add_argument(
        "--calibration",
        metavar="TAG",
        help="the calibration set the statistics must come from (CORPUS-nN-lL-sS, the "
        "workflow's directory name); checked against each product's manifest",
    )


def parse_options(items: list[str]) -> dict:
    import yaml

    from svdzoo.errors import ConfigError

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--option expects KEY=VALUE, got {item!r}")
        try:
            out[key] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            reason = getattr(exc, "problem", None) or type(exc).__name__
            raise ConfigError(
                f"--option {key}: {value!r} is not a valid YAML value ({reason})"
            ) from exc
    return out


def run(args: argparse.Namespace) -> int:
    from svdzoo.io import COMPRESSED_MODEL, check_output

    # a foreign, protected, unwritable or busy --out fails here, before the model loads
    inputs = (args.model, args.stats, args.fisher, args.sensitivity_duo, args.sensitivity_asvd)
    check_output(args.out, COMPRESSED_MODEL, force=args.force, protect=inputs)
    from svdzoo.api import compress_to_dir

    compress_to_dir(
        model=args.model,
        method=args.method,
        ratio=args.ratio,
        out=args.out,
        stats=args.stats,
        fisher=args.fisher,
        sensitivity_duo=args.sensitivity_duo,
        sensitivity_asvd=args.sensitivity_asvd,
        options=parse_options(args.option),
        device=args.device,
        dtype=args.dtype,
        force=args.force,
        calibration=args.calibration,
    )
    return 0
