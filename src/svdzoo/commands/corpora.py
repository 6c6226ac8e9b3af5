"""`svdzoo corpora`: list the named corpora."""

from __future__ import annotations

import argparse

NAME = "corpora"
HELP = "list the named corpora (offline ones need no download)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--stats", action="store_true", help="also load each offline corpus and print split sizes"
    )


def run(args: argparse.Namespace) -> int:
    from svdzoo.data import DESCRIPTIONS, OFFLINE, get_corpus

    for name, desc in DESCRIPTIONS.items():
        line = f"{name:<10} {desc}"
        if args.stats and name in OFFLINE:
            c = get_corpus(name)
            line += f"  [train {len(c.train):,} / validation {len(c.validation):,} / test {len(c.test):,} chars]"
        print(line)
    print(
        f"{'<path>':<10} any local .txt (blank-line separated documents) or .jsonl (field 'text') file"
    )
    return 0
