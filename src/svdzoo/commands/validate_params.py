"""`svdzoo validate-params`: check a params file the way the Snakefile does, before any job."""

from __future__ import annotations

import argparse

NAME = "validate-params"
STAMP = "params valid\n"  # the stamp's whole text
HELP = "validate a params.yaml (schema, method/corpus/task names, ratio range) and summarise it"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("params", nargs="?", default="params.yaml", help="params file")
    p.add_argument(
        "--schema", help="JSON schema (default: workflow/schemas/params.schema.json nearby)"
    )
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing when valid")
    p.add_argument(
        "--force", action="store_true", help="replace --stamp even if svdzoo did not write it"
    )
    p.add_argument(
        "--stamp",
        help="write this file (always the same text) when valid: DVC's first stage, which "
        "the root stages depend on",
    )
    p.add_argument(
        "--dvc-yaml",
        help="also fail when this dvc.yaml is not what `svdzoo render-dvc` makes of the "
        "params (DVC's first stage checks it, so a stale file stops before any compute)",
    )


def run(args: argparse.Namespace) -> int:
    from svdzoo.config import calib_tag, load_params, needed_stats, read_yaml
    from svdzoo.errors import ConfigError

    if args.stamp:  # before the checks: the stamp must never replace the params it vouches for
        from svdzoo.io import check_file_output, text_starting

        check_file_output(
            args.stamp,
            protect=[args.params, args.schema, args.dvc_yaml],
            ours=text_starting(STAMP),
            what="a params stamp",
            force=args.force,
        )
    params = load_params(args.params, args.schema)
    if args.stamp and "base" in read_yaml(args.params):
        # the stamp is DVC's check, and DVC interpolates the file as it is written
        raise ConfigError(
            f"{args.params}: DVC reads this file as written and cannot follow `base:`; "
            "give the full params here (a base is for Snakemake configs)"
        )
    if args.dvc_yaml:
        from svdzoo.dvc_render import check

        check(args.params, args.dvc_yaml)
    if args.stamp:
        from svdzoo.io import write_text

        write_text(args.stamp, STAMP)
    if not args.quiet:
        n_models, n_methods, n_ratios = (
            len(params["models"]),
            len(params["methods"]),
            len(params["ratios"]),
        )
        print(f"{args.params}: valid")
        print(f"  models      {', '.join(params['models'])}")
        print(f"  methods     {', '.join(params['methods'])}")
        print(f"  ratios      {', '.join(params['ratios'])}")
        print(f"  calibration {calib_tag(params)} -> {', '.join(sorted(needed_stats(params)))}")
        print(
            f"  {n_models * n_methods * n_ratios} compressed models, "
            f"{n_models * (n_methods * n_ratios + 1)} evaluations"
        )
    return 0
