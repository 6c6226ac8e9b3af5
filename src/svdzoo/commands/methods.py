"""`svdzoo methods`: list every registered method with what it needs."""

from __future__ import annotations

import argparse

NAME = "methods"
HELP = "list the registered compression methods"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--names", action="store_true", help="print only the names, one per line")


def run(args: argparse.Namespace) -> int:
    from svdzoo.methods import REGISTRY

    for name in sorted(REGISTRY):
        m = REGISTRY[name]
        if args.names:
            print(name)
            continue
        needs = ",".join(sorted(m.needs)) or "-"
        print(
            f"{name:<22} {m.description}  [needs: {needs}{'; sequential' if m.sequential else ''}{'; searches' if m.probes else ''}]"
        )
    return 0
