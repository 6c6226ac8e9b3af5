"""The pinned environment (workflow/envs/constraints.txt): it covers what pyproject.toml asks
for, within its ranges, leaves torch to the machine, and is what `run.sh` installed."""

from __future__ import annotations

import importlib.util
import os
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "workflow" / "envs" / "constraints.txt"


def _write_lock():
    spec = importlib.util.spec_from_file_location(
        "write_lock", ROOT / "workflow" / "scripts" / "write_lock.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_pins(path: Path) -> dict[str, str]:
    pins: dict[str, str] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        name, sep, version = line.partition("==")
        assert sep and name.strip() == name and version.strip() == version, (
            f"{path.name}:{n}: not 'name==version': {line!r}"
        )
        Version(version)  # a PEP 440 version
        key = _write_lock().canonical(name)
        assert key == name, f"{path.name}:{n}: {name} is not in its normal form {key}"
        assert key not in pins, f"{path.name}:{n}: {name} pinned twice"
        pins[key] = version
    return pins


def project_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = list(project["dependencies"])
    for extra in ("dev", "slurm"):  # what run.sh installs
        specs += project["optional-dependencies"][extra]
    return [Requirement(s) for s in specs]


def test_every_requirement_is_pinned_within_its_range():
    pins = read_pins(LOCK)
    wl = _write_lock()
    checked = 0
    for req in project_requirements():
        key = wl.canonical(req.name)
        if wl.left_to_machine(key):
            assert key not in pins, f"{req.name} is left to SVDZOO_TORCH but pinned"
            continue
        assert key in pins, (
            f"{req.name} is required by pyproject.toml but not pinned in {LOCK.name}"
        )
        assert req.specifier.contains(pins[key], prereleases=True), (
            f"{LOCK.name} pins {key}=={pins[key]}, outside pyproject.toml's {req}"
        )
        checked += 1
    assert checked >= 20


def test_only_what_differs_between_builds_of_torch_is_left_out():
    """torch's CPU and CUDA wheels of one version ask the same of filelock, sympy, jinja2
    (the report's templates) or fsspec, so those are pinned; torch, triton and the CUDA
    libraries come with the machine's build."""
    pins = read_pins(LOCK)
    wl = _write_lock()
    assert not [k for k in pins if wl.left_to_machine(k)]
    assert "svdzoo" not in pins
    for needed in ("filelock", "sympy", "jinja2", "fsspec", "pyyaml", "pip", "setuptools"):
        assert needed in pins, needed
    for name in ("torch", "triton", "nvidia-cublas-cu12", "cuda-pathfinder", "cuda_bindings"):
        assert wl.left_to_machine(name), name
    for name in ("torchvision-extra", "sympy", "nvidiapy", "Jinja2"):
        assert not wl.left_to_machine(name), name


def test_the_conda_environment_file_carries_the_locks_hash():
    """Snakemake keys a --use-conda environment on the file's text alone: without the hash,
    an environment made under an older lock was reused after `run.sh lock`."""
    wl = _write_lock()
    env = (ROOT / "workflow" / "envs" / "svdzoo.yaml").read_text()
    assert wl.STAMP.findall(env) == [wl.stamp_line(LOCK.read_text())]


@pytest.mark.skipif(
    not os.environ.get("SVDZOO_INSTALLED_WITH"),
    reason="not run through `run.sh test` with a constraints file (CI is)",
)
def test_the_environment_holds_the_pinned_versions():
    """What provenance records in every output is then what the lock says, in CI too."""
    pins = read_pins(ROOT / os.environ["SVDZOO_INSTALLED_WITH"])
    wl = _write_lock()
    differ = []
    for dist in metadata.distributions():
        key = wl.canonical(dist.metadata["Name"] or "")
        if key in pins and dist.version != pins[key]:
            differ.append(f"{key} {dist.version} (pinned {pins[key]})")
    assert not differ, "installed versions differ from the lock: " + ", ".join(sorted(differ))


def test_the_conda_environment_uses_the_same_pins():
    """`--use-conda` installs from Snakemake's copy of the file in .snakemake/conda/, so its
    relative paths must name the lock from there as well as from workflow/envs/."""
    import yaml

    env = yaml.safe_load((ROOT / "workflow" / "envs" / "svdzoo.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    (path,) = [line.split(None, 1)[1] for line in pip if line.startswith("-c ")]
    for base in (ROOT / "workflow" / "envs", ROOT / ".snakemake" / "conda"):
        assert (base / path).resolve() == LOCK


def test_writing_the_lock_pins_this_environment_and_stamps_the_conda_file(tmp_path):
    wl = _write_lock()
    env = tmp_path / "env.yaml"
    env.write_text((ROOT / "workflow" / "envs" / "svdzoo.yaml").read_text())
    lock = tmp_path / "constraints.txt"
    assert wl.main([str(lock), str(env)]) == 0
    pins = read_pins(lock)
    assert pins["pyyaml"] == metadata.version("pyyaml") and "torch" not in pins
    assert wl.STAMP.findall(env.read_text()) == [wl.stamp_line(lock.read_text())]
    env.write_text("dependencies: []\n")  # no line to stamp: refused, nothing written
    lock.unlink()
    assert wl.main([str(lock), str(env)]) == 2 and not lock.exists()
