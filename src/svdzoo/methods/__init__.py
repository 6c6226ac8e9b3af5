"""The method registry. Importing this package registers every named method."""

from __future__ import annotations

from svdzoo.errors import ConfigError
from svdzoo.methods.base import REGISTRY, STATS_KINDS, Method, register

_MODULES = ("baselines", "svd_llm_v2", "adasvd", "ressvd", "duo_svd")


def _load_all() -> None:
    import importlib

    for name in _MODULES:
        try:
            importlib.import_module(f"svdzoo.methods.{name}")
        except ModuleNotFoundError as exc:  # a method module not written yet
            if exc.name != f"svdzoo.methods.{name}":
                raise


_load_all()


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
