"""Methods from other packages, found through the entry-point group `svdzoo.methods`.

A researcher tests a new idea against the registered methods without editing svdzoo: a
distribution declares, in its `pyproject.toml`,

    [project.entry-points."svdzoo.methods"]
    my-idea = "my_package.methods"

naming a module that registers methods on import (`svdzoo.methods.register`), and is
installed into svdzoo's environment (`pip install -e .`). Importing `svdzoo.methods` then
imports it, so the CLI, the API, params validation, Snakemake and DVC all know its
methods. Its compressions rerun when any source file of its own package changes
(`own_package`, `svdzoo.codehash`). `SVDZOO_DISABLE_PLUGINS=1` loads none (pytest's
`PYTEST_DISABLE_PLUGIN_AUTOLOAD`). Standard library only: `svdzoo.codehash` asks which
plugins exist without importing torch.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from svdzoo.errors import ConfigError

GROUP = "svdzoo.methods"
DISABLE = "SVDZOO_DISABLE_PLUGINS"


@dataclass(frozen=True)
class Plugin:
    """One `svdzoo.methods` entry point: its name, the module it names and the
    distribution that declares it."""

    name: str
    module: str
    dist: str  # "name version"

    def describe(self) -> str:
        return f"plugin {self.name!r} ({self.dist}, module {self.module})"

    def record(self) -> dict[str, str]:
        """What a manifest records of it."""
        return {"entry_point": self.name, "module": self.module, "distribution": self.dist}


def disabled() -> bool:
    return os.environ.get(DISABLE, "").strip().lower() not in ("", "0", "false", "no")


@functools.cache
def plugins() -> tuple[Plugin, ...]:
    """The installed plugins, sorted by module (an entry point two installs of one
    distribution both declare counts once). A value that is not a module is refused."""
    if disabled():
        return ()
    found: dict[str, Plugin] = {}
    for ep in metadata.entry_points(group=GROUP):
        dist = f"{ep.dist.name} {ep.dist.version}" if ep.dist is not None else "unknown"
        if ep.attr is not None or not ep.module:
            raise ConfigError(
                f"plugin {ep.name!r} ({dist}): its `{GROUP}` entry point is {ep.value!r}, but "
                "it must name a module that registers methods on import (e.g. "
                f'`{ep.name} = "my_package.methods"`, no `:attribute`); fix its pyproject.toml '
                f"and reinstall it, or uninstall it, or set {DISABLE}=1"
            )
        found.setdefault(ep.module, Plugin(ep.name, ep.module, dist))
    return tuple(found[m] for m in sorted(found))


def load_plugins() -> None:
    """Import every plugin's module (it registers its methods). A plugin that fails to
    import, or registers a name already taken, is one error naming it and what to do,
    before anything runs."""
    for plugin in plugins():
        try:
            importlib.import_module(plugin.module)
        except Exception as exc:  # noqa: BLE001 - any failure of foreign code, named
            raise ConfigError(
                f"{plugin.describe()} failed to import: {type(exc).__name__}: {exc}; fix it, "
                f"uninstall it (`pip uninstall {plugin.dist.split()[0]}`), or set {DISABLE}=1"
            ) from exc


def plugin_of_module(module: str) -> Plugin | None:
    """The installed plugin that `module` belongs to (None for svdzoo's own): the one
    whose entry-point module holds it (the longest, where one plugin's module is inside
    another's), else the one whose own package (`own_package`) holds it."""
    if not module or module.split(".")[0] == "svdzoo":
        return None

    def inside(pkg: str) -> bool:
        return module == pkg or module.startswith(pkg + ".")

    named = [p for p in plugins() if inside(p.module)]
    if named:
        return max(named, key=lambda p: len(p.module))
    owners = [p for p in plugins() if inside(own_package(p))]
    return owners[0] if len(owners) == 1 else None


def _spec(name: str, plugin: Plugin):
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        raise ConfigError(
            f"{plugin.describe()}: module {name!r} is not importable; reinstall or uninstall "
            f"{plugin.dist.split()[0]}"
        )
    return spec


def _namespace(spec) -> bool:
    return spec.origin in (None, "namespace") and bool(spec.submodule_search_locations)


@functools.cache
def own_package(plugin: Plugin) -> str:
    """The package that is the plugin's own: its module's top-level package, or, below
    namespace packages that several distributions share (`acme.a`, `acme.b`), the first
    regular package or module on the way to its module. Found without importing it
    (`find_spec` imports only the namespace packages above)."""
    parts = plugin.module.split(".")
    for i in range(1, len(parts) + 1):
        name = ".".join(parts[:i])
        if not _namespace(_spec(name, plugin)):
            return name
    return plugin.module


def sources(plugin: Plugin) -> list[Path]:
    """Where the plugin's own package lives (its directory, or its one module file):
    what its compressions' code hash covers and what a DVC stage depends on."""
    spec = _spec(own_package(plugin), plugin)
    if spec.submodule_search_locations:
        return sorted(Path(loc).resolve() for loc in spec.submodule_search_locations)
    if not spec.origin or not spec.origin.endswith(".py"):
        raise ConfigError(
            f"{plugin.describe()}: {own_package(plugin)!r} is not Python source "
            f"({spec.origin}), so its compressions could not rerun when it changes; install "
            "it from source"
        )
    return [Path(spec.origin).resolve()]


def source_files(plugin: Plugin) -> list[tuple[str, Path]]:
    """(label, file) for every Python source file of the plugin's own package, the label
    its path as the package's dotted name spells it (`acme/a/x.py`): the hash's names."""
    prefix = own_package(plugin).replace(".", "/")
    out = []
    for src in sources(plugin):
        if src.is_file():
            out.append((f"{prefix}.py", src))
            continue
        for path in src.rglob("*.py"):
            if "__pycache__" not in path.parts:
                out.append((f"{prefix}/{path.relative_to(src).as_posix()}", path))
    return sorted(out)
