"""The `svdzoo` command line: one subcommand per stage, shared by Snakemake and DVC."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# Each name is a module in svdzoo.commands exposing NAME, HELP, add_arguments(p), run(args).
# Modules are imported only to build the parser; heavy imports happen inside run().
# A module that sets ACCEPTS_EXTRA = True gets unknown arguments as run(args, extra).
COMMANDS: tuple[str, ...] = (
    "corpora",
    "methods",
    "train_reference",
    "compress",
    "evaluate",
    "build_tasks",
    "report",
    "calibrate",
    "validate_params",
    "sensitivity",
    "fetch_model",
    "prepare_model",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="svdzoo", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        mod = importlib.import_module(f"svdzoo.commands.{name}")
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run, _extra=getattr(mod, "ACCEPTS_EXTRA", False))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not args._extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from svdzoo.errors import SvdzooError

    try:
        if args._extra:
            return int(args._run(args, extra) or 0)
        return int(args._run(args) or 0)
    except SvdzooError as exc:
        print(f"svdzoo {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
