"""`svdzoo methods`: list every registered method with what it needs."""

from __future__ import annotations

import argparse

NAME = "methods"
HELP = "list the registered compression methods"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--names", action="store_true", help="print only the names, one per line")
    p.add_argument(
        "--options",
        action="store_true",
        help="also list each method's `compress --option` keys (params.yaml method_options)",
    )


def run(args: argparse.Namespace) -> int:
    from svdzoo.methods import REGISTRY, plugin_methods
    from svdzoo.methods.base import accepted_options

    plugins = plugin_methods()
    for name in sorted(REGISTRY):
        m = REGISTRY[name]
        if args.names:
            print(name)
            continue
        needs = ",".join(sorted(m.needs)) or "-"
        origin = f"; from {plugins[name].dist}" if name in plugins else ""
        print(
            f"{name:<22} {m.description}  [needs: {needs}{'; sequential' if m.sequential else ''}{'; searches' if m.probes else ''}{'; probes its candidates' if m.selector else ''}{origin}]"
        )
        if args.options:
            print(f"{'':<22} options: {', '.join(_listed(m, accepted_options(m))) or '-'}")
    return 0


def _listed(method, names) -> list[str]:
    """Option names, each one its parts ignore as registered marked with what makes it
    count (`fallback (with whitening=cholesky)`, the parts' `option_needs`): refused alone
    (`base.inert_options`)."""
    from svdzoo.methods.base import unmet_needs

    unmet = unmet_needs(method)
    return [f"{n} ({unmet[n]})" if n in unmet else n for n in sorted(names)]
