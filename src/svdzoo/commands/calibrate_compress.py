"""`svdzoo calibrate-compress`: a model to a compressed model in one command.

The statistics the method needs are computed (or reused from the workflow's cache paths
under `--stats-root`, when they are this model's and this calibration set's) and the model
is compressed, loaded once. `svdzoo calibrate`, `sensitivity` and `compress` are the same
steps one at a time, as the workflow runs them.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

NAME = "calibrate-compress"
HELP = "compute (or reuse) the statistics a method needs and compress a model, in one command"

log = logging.getLogger(__name__)


# what the command does without --params (argparse defaults are None, so that --params
# can tell a flag given from one left out)
DEFAULTS = {"seed": 0, "dtype": "float32", "device": "auto", "sensitivity_nsamples": 32}
FROM_PARAMS = ("model", "corpus", "nsamples", "seqlen", "seed", "dtype", "device",
               "sensitivity_nsamples", "sensitivity_ratios")  # fmt: skip


def add_arguments(p: argparse.ArgumentParser) -> None:
    from svdzoo.commands.compress import add_compression_arguments

    add_compression_arguments(p, model_required=False)
    p.add_argument(
        "--params",
        metavar="FILE",
        help="take the calibration set, table windows and grid, dtype, device and method "
        "options from a workflow params file: the settings of its jobs for --model-name, "
        "one of its models (--model defaults to the workflow's; --stats-root is the "
        "workflow's root); flags given here override them",
    )
    p.add_argument("--corpus", help="calibration corpus: name or .txt/.jsonl path")
    p.add_argument("--nsamples", type=int, help="calibration windows")
    p.add_argument("--seqlen", type=int, help="tokens per calibration window")
    p.add_argument("--seed", type=int, help="window seed (default 0)")
    p.add_argument(
        "--stats-root",
        default=".",
        help="where the caches go, as the workflow files them: "
        "ROOT/data/stats/<model-name>/<corpus-nN-lL-sS>/{gram,fisher,sensitivity-*} "
        "(default: the current directory)",
    )
    p.add_argument(
        "--model-name", help="the name the caches are filed under (default: the model's last "
        "path component; required with --params: the params' model key)"
    )  # fmt: skip
    p.add_argument(
        "--sensitivity-nsamples",
        type=int,
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
    p.set_defaults(dtype=None, device=None)  # DEFAULTS, unless --params says otherwise


def resolve(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """The settings (FROM_PARAMS) and method options: the flags given, then the params',
    then DEFAULTS. ConfigError for what is missing or cannot be mirrored."""
    from svdzoo.commands.compress import parse_options
    from svdzoo.config import method_requirements
    from svdzoo.errors import ConfigError

    given = {k: getattr(args, k) for k in FROM_PARAMS if getattr(args, k) is not None}
    options = parse_options(args.option)
    settings: dict[str, Any] = dict(DEFAULTS)
    if args.params:
        from svdzoo.config import load_params
        from svdzoo.job_settings import check_corpus_path, settings_from_params

        if not args.model_name:
            raise ConfigError("--params needs --model-name, the params' key of the model")
        # report.published is the report's, not read here (nor looked for under any root)
        params = load_params(args.params, check_files=False)
        job = settings_from_params(
            params, args.model_name, args.method, args.stats_root, args.model, args.dtype,
            args.device,
        )  # fmt: skip
        options = {**job.pop("options"), **options}
        for key, value in given.items():
            if key in job and job[key] != value:
                log.info(
                    "--%s %s instead of the params' %s", key.replace("_", "-"), value, job[key]
                )
        settings.update(job)
    settings.update(given)
    if args.params and "corpus" not in given and method_requirements(args.method):
        check_corpus_path(str(settings["corpus"]), args.stats_root)
    missing = [k for k in ("model", "corpus", "nsamples", "seqlen") if settings.get(k) is None]
    if missing:
        hint = (
            f"; {args.method} reads no statistics: `svdzoo compress --model M --method "
            f"{args.method} --ratio R --out DIR` needs no calibration set"
            if "model" not in missing and not method_requirements(args.method)
            else ""
        )
        raise ConfigError(
            "give " + ", ".join(f"--{k}" for k in missing) + ", or --params FILE and "
            "--model-name to take them from a workflow params file" + hint
        )
    return settings, options


def run(args: argparse.Namespace) -> int:
    from svdzoo.calibrate_compress import calibrate_and_compress
    from svdzoo.io import COMPRESSED_MODEL, check_output

    settings, options = resolve(args)
    model = settings.pop("model")
    # a foreign, protected, unwritable or busy --out fails here, before anything loads; the
    # inputs, the params file among them, are never replaced, not even with --force
    inputs = [model, settings["corpus"], *([args.params] if args.params else [])]
    check_output(args.out, COMPRESSED_MODEL, force=args.force, protect=inputs)
    calibrate_and_compress(
        model,
        args.method,
        args.ratio,
        args.out,
        **settings,
        stats_root=args.stats_root,
        model_name=args.model_name,
        options=options,
        recompute_stats=args.recompute_stats,
        force=args.force,
    )
    return 0
