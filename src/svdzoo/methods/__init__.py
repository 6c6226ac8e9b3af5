"""The method registry. Importing this package registers every named method."""

from __future__ import annotations

from svdzoo.errors import ConfigError

# Each module registers its methods on import (one module per paper).
from svdzoo.methods import adasvd, baselines, duo_svd, ressvd, svd_llm_v2  # noqa: F401
from svdzoo.methods.base import REGISTRY, STATS_KINDS, Method, register


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
