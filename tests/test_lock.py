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
    left = _write_lock().left_to_torch()
    checked = 0
    for req in project_requirements():
        key = _write_lock().canonical(req.name)
        if key in left:
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


def test_torch_and_its_requirements_are_left_to_the_machine():
    pins = read_pins(LOCK)
    assert "torch" not in pins and "triton" not in pins
    assert not [k for k in pins if k.startswith("nvidia-")]
    assert "svdzoo" not in pins
    # torch's optional extras (pyyaml) are not torch's requirements: svdzoo needs pyyaml
    assert "pyyaml" in pins and "pip" in pins


def test_requirement_names_are_read_like_pip():
    wl = _write_lock()
    assert wl.requirement_name("typing-extensions>=4.10.0") == "typing-extensions"
    assert wl.requirement_name("Jinja2") == "jinja2"
    assert wl.requirement_name('optree>=0.13.0; extra == "optree"') == "optree"
    assert wl.requirement_name("ruamel.yaml[jinja2] (>=0.17)") == "ruamel-yaml"
    assert wl.is_optional('pyyaml; extra == "pyyaml"')
    assert not wl.is_optional('nvidia-nccl-cu12==2.27; platform_system == "Linux"')
    assert not wl.is_optional("sympy>=1.13.3")


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
