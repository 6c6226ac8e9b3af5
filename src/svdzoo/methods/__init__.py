"""The method registry. Importing this package registers every named method."""

from __future__ import annotations

import importlib
import pkgutil

from svdzoo.errors import ConfigError
from svdzoo.methods.base import REGISTRY, STATS_KINDS, Method, register

# Each module registers its methods on import (one module per paper, plus svdzoo's own
# compositions). They are found, not listed: a static list here would put every method
# module into every method's code hash (svdzoo.codehash), so adding a method would rerun
# all compressions.
for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    importlib.import_module(f"{__name__}.{_module}")


def get_method(name: str) -> Method:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ConfigError(
            f"unknown method {name!r}; known methods: {', '.join(sorted(REGISTRY))}"
        ) from None


def method_names() -> list[str]:
    return sorted(REGISTRY)


def requirements(name: str) -> set[str]:
    """The cached statistics products a method reads (subset of STATS_KINDS)."""
    return set(get_method(name).needs)


__all__ = [
    "REGISTRY",
    "STATS_KINDS",
    "Method",
    "get_method",
    "method_names",
    "register",
    "requirements",
]
