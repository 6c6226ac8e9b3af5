"""`svdzoo report`: tidy metrics, tables, figures and published-vs-reproduced."""

from __future__ import annotations

import argparse

NAME = "report"
HELP = "collect metrics into results/metrics.csv; write tables (md/tex/csv) and figures (png/pdf)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--results", default="results", help="results directory to read (metrics/, compressed/)"
    )
    p.add_argument(
        "--out", default=None, help="where metrics.csv, tables/, figures/ go (default: --results)"
    )
    p.add_argument(
        "--published", default=None, help="published numbers CSV (e.g. data/published.csv)"
    )
    p.add_argument(
        "--model-names",
        nargs="*",
        default=[],
        metavar="KEY=NAME",
        help="map our model keys to published names, e.g. llama-7b=LLaMA-7B "
        "(default: case-insensitive match)",
    )
    p.add_argument(
        "--expect",
        nargs="*",
        default=None,
        metavar="FILE",
        help="metric files that must exist (e.g. Snakemake inputs); without it, runs are globbed",
    )
    p.add_argument(
        "--require-complete",
        action="store_true",
        help="fail when a run lacks a metric file that other runs have (default: warn)",
    )
    p.add_argument("--no-figures", action="store_true", help="skip figures")


def run(args: argparse.Namespace) -> int:
    from svdzoo.report import build_report
    from svdzoo.report.published import parse_model_names

    names = parse_model_names(args.model_names)
    written = build_report(
        args.results,
        args.out or args.results,
        published=args.published,
        model_names=names,
        expected=args.expect,
        require_complete=args.require_complete,
        figures=not args.no_figures,
    )
    for kind, paths in written.items():
        print(f"{kind}: {len(paths)} file(s)" + (f", e.g. {paths[0]}" if paths else ""))
    return 0
