"""The source code each workflow stage runs, and its hash: what makes an edit rerun it.

A stage's code is the set of svdzoo modules its command can import (the closure of
`import svdzoo...` statements, read statically with `ast`, function-level imports
included), plus the package `__init__` files those imports execute and the data files the
stage writes out. Method modules (those that register methods: `adasvd`, `duo_svd`, ...)
are cut out of every closure, and `compress` adds back the module of the method it runs
(with the method modules that one imports, for compositions), so editing
`methods/duo_svd.py` reruns the compressions of the methods built from it (and their
evaluations and the report, through their inputs) and nothing else. `methods/__init__`
finds the method modules at run time instead of importing a list, so adding a method
module changes no other stage's hash.

A method from a plugin (svdzoo.plugins) is hashed with every source file of the plugin's
own package, and the svdzoo modules those import.

Snakemake passes `code_hash(stage, method)` as a rule parameter; DVC depends on the stamp
files `python -m svdzoo.codehash --out data/code` writes (one per stage, one per method),
from a stage that depends on `src/svdzoo` (and on the configured plugins' sources): it
reruns on any source edit, but a stamp changes, and so reruns its stages, only when that
stage's own code did. Every manifest
records the hash of the code that wrote it. Light on purpose: no torch import.
"""

from __future__ import annotations

import argparse
import ast
import functools
import hashlib
import logging
import sys
from pathlib import Path

from svdzoo import plugins
from svdzoo.errors import ConfigError
from svdzoo.plugins import Plugin

PACKAGE = Path(__file__).resolve().parent
ROOT_NAME = "svdzoo"
# workflow stage -> the command module it runs
STAGES: dict[str, str] = {
    "prepare-model": "svdzoo.commands.prepare_model",
    "build-tasks": "svdzoo.commands.build_tasks",
    "calibrate": "svdzoo.commands.calibrate",
    "sensitivity": "svdzoo.commands.sensitivity",
    "compress": "svdzoo.commands.compress",
    "evaluate": "svdzoo.commands.evaluate",
    "report": "svdzoo.commands.report",
}
# Modules a stage's imports can reach but its command never runs: `models.load_model`
# imports `compression` only to open a compressed directory, which only `compress` and
# `evaluate` do. Cut from the other stages' closures, so a compression edit does not
# retrain the reference model or recalibrate.
NEVER_RUN: dict[str, frozenset[str]] = {
    stage: frozenset({"svdzoo.compression", "svdzoo.api"})
    for stage in ("prepare-model", "build-tasks", "calibrate", "sensitivity", "report")
}
# files a stage copies into its outputs (not imported, so not found by the closure)
DATA_FILES: dict[str, tuple[str, ...]] = {"compress": ("hf/modeling_svdzoo.py",)}


class UnknownMethod(ValueError):
    """A stage, or a compression method, that no svdzoo module or plugin defines."""


def module_file(module: str) -> Path | None:
    """`svdzoo.methods.base` -> its file (module or package), None outside svdzoo."""
    parts = module.split(".")
    if parts[0] != ROOT_NAME:
        return None
    base = PACKAGE.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _nodes(tree: ast.AST):
    """Every node, except the bodies of module `__getattr__` functions: PEP 562 lazy
    re-exports (`svdzoo.__init__`) run only when someone reads that attribute."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        if isinstance(node, ast.FunctionDef) and node.name == "__getattr__":
            continue
        todo.extend(ast.iter_child_nodes(node))


@functools.cache
def _imports(module: str) -> frozenset[str]:
    """svdzoo modules `module` imports anywhere in its body, with their parent packages."""
    path = module_file(module)
    return frozenset() if path is None else _file_imports(path)


@functools.cache
def _file_imports(path: Path) -> frozenset[str]:
    """svdzoo modules the source file `path` imports anywhere, with their parent packages."""
    found: set[str] = set()
    for node in _nodes(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from svdzoo.methods import adasvd` imports the submodule when there is one
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            parts = name.split(".")
            for i in range(1, len(parts) + 1):  # importing a.b.c runs a and a.b too
                prefix = ".".join(parts[:i])
                if module_file(prefix) is not None:
                    found.add(prefix)
    return frozenset(found)


@functools.cache
def method_modules() -> dict[str, str]:
    """Registered method name -> the module that registers it, read from the sources
    (`Method(name="...")` calls), without importing them."""
    out: dict[str, str] = {}
    for path in sorted((PACKAGE / "methods").glob("*.py")):
        module = f"{ROOT_NAME}.methods.{path.stem}"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Method":
                for kw in node.keywords:
                    if kw.arg == "name" and isinstance(kw.value, ast.Constant):
                        out[str(kw.value.value)] = module
    return out


def plugin_methods() -> dict[str, Plugin]:
    """Method name -> the installed plugin (svdzoo.plugins) that registers it. Only when
    a plugin is installed does this import the registry (and torch) to learn its names."""
    if not plugins.plugins():
        return {}
    from svdzoo.methods import plugin_methods as registered

    return registered()


def all_methods() -> list[str]:
    """Every registered method name: svdzoo's own and the plugins'."""
    return sorted(set(method_modules()) | set(plugin_methods()))


def closure(start: str, cut: frozenset[str] = frozenset()) -> set[str]:
    """Every svdzoo module reachable from `start` by imports, not entering `cut`."""
    seen: set[str] = set()
    todo = [start]
    while todo:
        mod = todo.pop()
        if mod in seen or mod in cut:
            continue
        seen.add(mod)
        todo.extend(_imports(mod))
    return seen


def _entries(stage: str, method: str | None = None) -> list[tuple[str, Path]]:
    """(name in the hash, file) for every source file `stage` runs (for `compress`, with
    `method`'s own module, or its plugin's package)."""
    if stage not in STAGES:
        raise UnknownMethod(f"unknown stage {stage!r}; one of {sorted(STAGES)}")
    methods = method_modules()
    never = NEVER_RUN.get(stage, frozenset())
    modules = closure(STAGES[stage], frozenset(methods.values()) | never)
    extra: list[tuple[str, Path]] = []
    if stage == "compress":
        if method in methods:
            # the method's module and whatever it imports, other method modules included (a
            # composition built from another paper's parts reruns when those parts change)
            modules |= closure(methods[method], never)
        elif method is not None and method in (found := plugin_methods()):
            # a plugin's method: every file of its package, and the svdzoo parts they import
            extra = [
                (f"plugins/{label}", path) for label, path in plugins.source_files(found[method])
            ]
            for _, path in extra:
                try:
                    imported = _file_imports(path)
                except SyntaxError as exc:
                    raise ConfigError(
                        f"{found[method].describe()}: {path} is not Python this interpreter "
                        f"parses ({exc.msg}, line {exc.lineno}), so its code hash cannot be made"
                    ) from None
                for name in imported:
                    modules |= closure(name, never)
        else:
            raise UnknownMethod(f"compress needs a registered method, got {method!r}")
    files = {module_file(m) for m in modules} | {PACKAGE / f for f in DATA_FILES.get(stage, ())}
    own = [(f.relative_to(PACKAGE).as_posix(), f) for f in files if f is not None]
    return sorted(own, key=lambda e: e[1]) + extra  # svdzoo's own in path order, as ever


def stage_files(stage: str, method: str | None = None) -> list[Path]:
    """The source files `stage` runs (for `compress`, with `method`'s own module)."""
    return [path for _, path in _entries(stage, method)]


@functools.cache
def code_hash(stage: str, method: str | None = None) -> str:
    """sha256 (first 16 hex digits) over the stage's files: name and bytes."""
    h = hashlib.sha256()
    for name, path in _entries(stage, method):
        h.update(name.encode() + b"\0")
        h.update(path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def recorded(stage: str, method: str | None = None) -> str | None:
    """`code_hash` for a manifest; None for code it cannot attribute (a method registered
    at run time, outside svdzoo's modules and its plugins)."""
    try:
        return code_hash(stage, method)
    except UnknownMethod:
        return None
    except ConfigError as exc:  # a plugin's source it cannot read: the work done stands
        logging.getLogger(__name__).warning("no code hash recorded: %s", exc)
        return None


def write_stamps(out: Path, methods: list[str]) -> list[Path]:
    """One `<stage>.sha256` per stage and `compress-<method>.sha256` per method; a file is
    rewritten only when its hash changed (so its mtime moves only then)."""
    out.mkdir(parents=True, exist_ok=True)
    stamps = {f"{s}.sha256": code_hash(s) for s in STAGES if s != "compress"}
    stamps |= {f"compress-{m}.sha256": code_hash("compress", m) for m in methods}
    from svdzoo.io import write_text  # stdlib only: keeps this module light

    written = []
    for name, digest in stamps.items():
        path = out / name
        text = digest + "\n"
        if not path.is_file() or path.read_text() != text:
            write_text(path, text)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m svdzoo.codehash", description="write the code stamps DVC stages depend on"
    )
    p.add_argument("--out", type=Path, required=True)
    p.add_argument(
        "--methods", nargs="+", default=None, help="methods to stamp for compress (default: all)"
    )
    args = p.parse_args(argv)
    known = all_methods()
    methods = known if args.methods is None else args.methods
    unknown = sorted(set(methods) - set(known))
    if unknown:
        print(f"svdzoo.codehash: error: unknown methods {unknown}", file=sys.stderr)
        return 2
    write_stamps(args.out, methods)
    return 0


if __name__ == "__main__":
    sys.exit(main())
