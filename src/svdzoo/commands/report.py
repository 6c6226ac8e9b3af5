"""`svdzoo report`: tidy metrics, tables, figures and published-vs-reproduced."""

from __future__ import annotations

import argparse

NAME = "report"
HELP = "collect metrics into results/metrics.csv; write tables (md/tex/csv) and figures (png/pdf)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--params",
        help="a workflow params file: every run it asks for must have its metric files, "
        "and it gives --published and --model-names (report.published, published_name). "
        "Both workflow engines call the report this way",
    )
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
    p.add_argument(
        "--force",
        action="store_true",
        help="replace files in --out that no earlier report wrote (metrics.csv, tables/..., "
        "figures/..., plots/... of the same names); without it such a file is refused",
    )


def run(args: argparse.Namespace) -> int:
    from svdzoo.report import build_report
    from svdzoo.report.published import parse_model_names

    names = parse_model_names(args.model_names)
    expected, published = args.expect, args.published
    if args.params:
        expected, published, names = _from_params(args, expected, published, names)
    written = build_report(
        args.results,
        args.out or args.results,
        published=published,
        model_names=names,
        expected=expected,
        require_complete=args.require_complete,
        figures=not args.no_figures,
        force=args.force,
    )
    for kind, paths in written.items():
        print(f"{kind}: {len(paths)} file(s)" + (f", e.g. {paths[0]}" if paths else ""))
    return 0


def _from_params(args: argparse.Namespace, expected, published, names):
    """Expected metric files, published CSV and model names of a params file (flags given
    on the command line come on top)."""
    from svdzoo.config import load_params
    from svdzoo.report.metrics import KINDS, metric_file
    from svdzoo.report.summary import expected_runs

    params = load_params(args.params)
    runs = expected_runs(params)
    files = [str(metric_file(args.results, kind, *run)) for run in runs for kind in KINDS]
    published = published or (params.get("report") or {}).get("published")
    from_params = {
        key: spec["published_name"]
        for key, spec in params["models"].items()
        if "published_name" in spec
    }
    return [*(expected or []), *files], published, {**from_params, **names}
