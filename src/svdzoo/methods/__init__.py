"""The method registry. Importing this package registers every named method."""

from __future__ import annotations

import importlib
import pkgutil

from svdzoo.errors import ConfigError
from svdzoo.methods.base import REGISTERED_BY, REGISTRY, STATS_KINDS, Method, register
from svdzoo.plugins import Plugin, load_plugins, plugin_of_module

# Each module registers its methods on import (one module per paper, plus svdzoo's own
# compositions). They are found, not listed: a static list here would put every method
# module into every method's code hash (svdzoo.codehash), so adding a method would rerun
# all compressions.
for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    importlib.import_module(f"{__name__}.{_module}")


def plugin_of(name: str) -> Plugin | None:
    """The installed plugin whose package registered method `name` (None: svdzoo's own, or
    registered by code that is no plugin)."""
    return plugin_of_module(REGISTERED_BY.get(name, ""))


def plugin_methods() -> dict[str, Plugin]:
    """Registered method name -> the installed plugin that registered it."""
    found = {name: plugin_of(name) for name in REGISTRY}
    return {name: plugin for name, plugin in found.items() if plugin is not None}


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
    "plugin_methods",
    "plugin_of",
    "register",
    "requirements",
]

# Then other packages' methods (entry points in the group `svdzoo.methods`; svdzoo.plugins),
# last, so that a plugin can use every name above (`get_method` to derive its own).
load_plugins()
