"""`svdzoo render-dvc`: write dvc.yaml from params.yaml (svdzoo.dvc_render)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

NAME = "render-dvc"
HELP = (
    "generate dvc.yaml from a params file and the Snakefile's path scheme (--check: is it current?)"
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("params", nargs="?", default="params.yaml", help="params file")
    p.add_argument("--out", default="dvc.yaml", help="the dvc.yaml to write or check")
    p.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 when --out is not what this command would write",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="replace --out even if it is not a dvc.yaml this command wrote",
    )


def run(args: argparse.Namespace) -> int:
    from svdzoo import dvc_render
    from svdzoo.config import read_yaml
    from svdzoo.errors import ConfigError
    from svdzoo.io import write_text

    if "base" in read_yaml(args.params):
        raise ConfigError(
            f"{args.params}: DVC reads params.yaml as written and cannot follow `base:`; "
            "give the full params here (a base is for Snakemake configs)"
        )
    if args.check:
        why = dvc_render.stale(args.params, args.out)
        if why:
            print(f"stale: {why}; run `svdzoo render-dvc {args.params} --out {args.out}`",
                  file=sys.stderr)  # fmt: skip
            return 1
        print(f"{args.out} is current")
        return 0
    from svdzoo.io import check_file_output, text_starting

    check_file_output(
        args.out,
        protect=[args.params],
        ours=text_starting(dvc_render.GENERATED),
        what="a dvc.yaml",
        force=args.force,
    )
    write_text(args.out, dvc_render.render_file(args.params, Path(args.out).parent))
    print(f"wrote {args.out}")
    return 0
