"""Methods from other packages (svdzoo.plugins): the example plugin in docs/plugin-example,
installed with pip into a workspace of the micro run, listed, compressed, recorded, run by
Snakemake and rendered for DVC; editing it reruns only its own jobs; a broken plugin is one
error naming it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_workflow import BIN, MICRO, ROOT, _env, jobs_of, run, smk, write_params

from svdzoo.paths import Layout

pytestmark = pytest.mark.slow  # Snakemake over the micro run

EXAMPLE = ROOT / "docs" / "plugin-example"
METHOD = "damped-svd-llm"
L = Layout()
CALIB = "pydoc-n4-l32-s0"  # MICRO's calibration


def pip_install(source: Path, target: Path, scratch: Path) -> None:
    """`pip install` of a plugin's source tree into `target` (a directory on PYTHONPATH),
    offline, from a copy (a setuptools build writes build/ and *.egg-info beside it)."""
    copy = scratch / source.name
    shutil.copytree(source, copy, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
           "--no-index", "--target", str(target), str(copy)]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"{' '.join(cmd)}:\n{res.stdout}\n{res.stderr}"


def minimal_dist(site: Path, dist: str, entry: str, modules: dict[str, str]) -> None:
    """An installed distribution as importlib.metadata finds one: a `.dist-info` with
    METADATA and entry_points.txt, and its modules (`acme/a` for acme.a), in `site`."""
    info = site / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[svdzoo.methods]\n{entry}\n")
    for name, text in modules.items():
        (site / f"{name}.py").parent.mkdir(parents=True, exist_ok=True)
        (site / f"{name}.py").write_text(text)


def in_site(site: Path, code: str, *argv: str, env: dict | None = None):
    """`python -c code` (or the svdzoo CLI, `code=""`) with `site` on PYTHONPATH."""
    cmd = [str(BIN / "svdzoo"), *argv] if not code else [sys.executable, "-c", code, *argv]
    env = {**_env(), "PYTHONPATH": str(site), **(env or {})}
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def plugin_ws(micro_run: Path, tmp_path_factory) -> Path:
    """A copy of the micro run with the example plugin pip-installed into its `src`
    (the workspace's PYTHONPATH) and its method configured beside svd-llm."""
    ws = tmp_path_factory.mktemp("plugin") / "ws"
    shutil.copytree(micro_run, ws, symlinks=True)
    pip_install(EXAMPLE, ws / "src", tmp_path_factory.mktemp("build"))
    write_params(ws, {**MICRO, "methods": [*MICRO["methods"], METHOD]})
    return ws


def svdzoo(ws: Path, *args: str, check: bool = True) -> str:
    return run(ws, str(BIN / "svdzoo"), *args, check=check)


def hashes(ws: Path) -> dict[str, str]:
    """Every stage's code hash and every method's compress hash, in the workspace."""
    code = (
        "import json; from svdzoo import codehash as c; "
        "print(json.dumps({**{s: c.code_hash(s) for s in c.STAGES if s != 'compress'}, "
        "**{m: c.code_hash('compress', m) for m in c.all_methods()}}))"
    )
    return json.loads(run(ws, sys.executable, "-c", code).strip().splitlines()[-1])


def test_the_example_plugin_is_listed_compressed_and_recorded(plugin_ws, tmp_path):
    listing = svdzoo(plugin_ws, "methods")
    line = next(x for x in listing.splitlines() if x.startswith(METHOD))
    assert "from svdzoo-damped 0.1.0" in line and "needs: gram" in line
    model, gram = plugin_ws / L.model_dir("tiny"), plugin_ws / L.gram("tiny", CALIB)

    def compress(method: str, out: str, *opts: str) -> dict:
        svdzoo(plugin_ws, "compress", "--model", str(model), "--stats", str(gram),
               "--method", method, "--ratio", "0.40", "--out", str(tmp_path / out), *opts)  # fmt: skip
        return json.loads((tmp_path / out / "manifest.json").read_text())

    damped = compress(METHOD, "damped")
    assert damped["plugin"] == {
        "entry_point": "damped",
        "module": "svdzoo_damped",
        "distribution": "svdzoo-damped 0.1.0",
    }
    assert damped["code"] == hashes(plugin_ws)[METHOD]
    # a script that imports the plugin itself, before svdzoo's registry, still has its
    # methods attributed to it
    first = "import svdzoo_damped; from svdzoo.methods import plugin_of; print(plugin_of('%s'))"
    assert "svdzoo-damped 0.1.0" in run(plugin_ws, sys.executable, "-c", first % METHOD)
    # undamped, the plugin's factoriser is SVD-LLM's (the Gram of a trained model is
    # positive definite, so SVD-LLM's Cholesky needs no repair): the same weights
    plain = compress("svd-llm", "svd-llm")
    same = compress(METHOD, "undamped", "--option", "damp=0")
    assert plain["plugin"] is None
    assert same["weights_sha256"] == plain["weights_sha256"] and same["options"] == {"damp": 0}
    assert damped["weights_sha256"] != plain["weights_sha256"]
    # an option value the plugin's part refuses, refused before any work
    out = svdzoo(plugin_ws, "compress", "--model", str(model), "--stats", str(gram),
                 "--method", METHOD, "--ratio", "0.40", "--out", str(tmp_path / "bad"),
                 "--option", "damp=-1", check=False)  # fmt: skip
    assert "option 'damp'" in out and "must be" in out, out
    assert not (tmp_path / "bad").exists()


def test_snakemake_runs_a_plugins_method_and_reruns_only_it_when_it_changes(plugin_ws):
    ran = jobs_of(smk(plugin_ws))
    compressed = [out for rule, out in ran if rule == "compress"]
    assert compressed == [str(L.compressed("tiny", METHOD, 0.40))], ran
    manifest = json.loads((plugin_ws / L.compressed_manifest("tiny", METHOD, 0.40)).read_text())
    assert manifest["plugin"]["distribution"] == "svdzoo-damped 0.1.0"
    assert (plugin_ws / L.ppl("tiny", METHOD, 0.40)).is_file()
    assert jobs_of(smk(plugin_ws, "-n")) == []

    before = hashes(plugin_ws)
    source = plugin_ws / "src" / "svdzoo_damped" / "__init__.py"
    text = source.read_bytes()
    source.write_bytes(text + b"\n# edited by a test\n")
    try:
        after = hashes(plugin_ws)
        assert {k for k in before if before[k] != after[k]} == {METHOD}
        rules = sorted(rule for rule, _ in jobs_of(smk(plugin_ws, "-n")))
        assert rules == ["compress", "evaluate", "report"], rules
    finally:
        source.write_bytes(text)
    assert jobs_of(smk(plugin_ws, "-n")) == []


def test_dvc_stamps_and_renders_a_plugin_inside_the_project_and_refuses_one_outside(
    plugin_ws, tmp_path
):
    # dvc.yaml's paths are relative to its directory: the plugin is outside tmp_path
    out = svdzoo(plugin_ws, "render-dvc", "--out", str(tmp_path / "dvc.yaml"), check=False)
    assert "outside the DVC project" in out and "pip install -e plugins/<name>" in out, out
    assert not (tmp_path / "dvc.yaml").exists()
    # after a Snakemake run in a DVC project, the same plugin (here installed outside the
    # project, first on the path) leaves the run standing: nothing committed, one warning
    outside = tmp_path / "outside"
    pip_install(EXAMPLE, outside, tmp_path)
    (plugin_ws / ".dvc").mkdir()
    try:
        code = (
            "from svdzoo.dvc_track import commit_outputs as c; print(c('params.yaml', produced=[]))"
        )
        res = subprocess.run([sys.executable, "-c", code], cwd=plugin_ws, capture_output=True,
                             text=True, timeout=120,
                             env={**_env(), "PYTHONPATH": f"{outside}:src"})  # fmt: skip
    finally:
        (plugin_ws / ".dvc").rmdir()
    assert res.returncode == 0 and res.stdout.strip() == "[]", res.stderr
    assert "nothing committed" in res.stderr and "outside the DVC project" in res.stderr

    svdzoo(plugin_ws, "render-dvc", "--force")
    stages = yaml.safe_load((plugin_ws / "dvc.yaml").read_text())["stages"]
    assert stages["code"]["deps"] == ["src/svdzoo", "src/svdzoo_damped"]
    assert f"compress-{METHOD}" in json.dumps(stages)
    run(plugin_ws, sys.executable, "-m", "svdzoo.codehash", "--out", str(tmp_path / "code"))
    stamp = (tmp_path / "code" / f"compress-{METHOD}.sha256").read_text().strip()
    assert stamp == hashes(plugin_ws)[METHOD]


BROKEN = {
    "import error": ("broken = broken_mod", {"broken_mod": "import not_a_module_anywhere\n"}),
    "name taken": (
        "taken = taken_mod",
        {
            "taken_mod": (
                "from svdzoo.methods import Method, register\n"
                "from svdzoo.methods.parts import PlainSVD, Uniform\n"
                "register(Method(name='svd-llm', description='d', paper='p',\n"
                "    needs=frozenset(), factoriser=PlainSVD(), allocator=Uniform()))\n"
            )
        },
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_broken_plugin_is_one_error_naming_it_and_can_be_switched_off(case, tmp_path):
    entry, modules = BROKEN[case]
    minimal_dist(tmp_path, "bad-plugin", entry, modules)
    res = in_site(tmp_path, "", "methods", "--names")
    assert res.returncode == 2, res.stderr
    err = res.stderr.strip()
    assert err.startswith("svdzoo methods: error: plugin") and "bad-plugin 0.1" in err, err
    assert "`pip uninstall bad-plugin`" in err and "SVDZOO_DISABLE_PLUGINS=1" in err, err
    assert ("not_a_module_anywhere" if case == "import error" else "registered twice") in err
    assert "Traceback" not in res.stderr
    res = in_site(tmp_path, "", "methods", "--names", env={"SVDZOO_DISABLE_PLUGINS": "1"})
    assert res.returncode == 0 and "svd-llm" in res.stdout.split(), res.stderr


def test_an_entry_point_must_name_a_module(tmp_path):
    minimal_dist(tmp_path, "attr-plugin", "attr = attr_mod:setup", {"attr_mod": ""})
    res = in_site(tmp_path, "", "methods")
    assert res.returncode == 2
    assert "'attr_mod:setup', but it must name a module" in res.stderr, res.stderr


def test_a_plugin_can_derive_its_method_from_a_registered_one(tmp_path):
    derive = (
        "import dataclasses\n"
        "from svdzoo.methods import get_method, register\n"
        "register(dataclasses.replace(get_method('svd-llm'), name='svd-llm-copy'))\n"
    )
    minimal_dist(tmp_path, "copy-plugin", "copy = copy_mod", {"copy_mod": derive})
    res = in_site(tmp_path, "", "methods")
    assert res.returncode == 0, res.stderr
    line = next(x for x in res.stdout.splitlines() if x.startswith("svd-llm-copy "))
    assert line.endswith("from copy-plugin 0.1]"), line


def test_plugins_sharing_a_namespace_package_are_told_apart(tmp_path):
    """`acme.a` and `acme.b` from two distributions under one namespace package `acme`:
    each method is its own distribution's, and each hash covers its own module only."""
    body = (
        "from svdzoo.methods import Method, register\n"
        "from svdzoo.methods.parts import PlainSVD, Uniform\n"
        "register(Method(name='{0}', description='d', paper='p', needs=frozenset(),\n"
        "    factoriser=PlainSVD(), allocator=Uniform()))\n"
    )
    minimal_dist(tmp_path, "acme-a", "a = acme.a", {"acme/a": body.format("acme-a-svd")})
    minimal_dist(tmp_path, "acme-b", "b = acme.b", {"acme/b": body.format("acme-b-svd")})
    code = (
        "import json; from svdzoo import codehash as c, plugins; from svdzoo.methods import plugin_of\n"
        "print(json.dumps({m: [plugin_of(m).dist, c.code_hash('compress', m), "
        "[n for n, _ in plugins.source_files(plugin_of(m))]] for m in ('acme-a-svd', 'acme-b-svd')}))"
    )

    def state() -> dict:
        res = in_site(tmp_path, code)
        assert res.returncode == 0, res.stderr
        return json.loads(res.stdout.strip().splitlines()[-1])

    before = state()
    assert before["acme-a-svd"][0] == "acme-a 0.1" and before["acme-b-svd"][0] == "acme-b 0.1"
    assert before["acme-a-svd"][2] == ["acme/a.py"] and before["acme-b-svd"][2] == ["acme/b.py"]
    with (tmp_path / "acme" / "b.py").open("a") as f:
        f.write("# edited\n")
    after = state()
    assert after["acme-a-svd"][1] == before["acme-a-svd"][1]
    assert after["acme-b-svd"][1] != before["acme-b-svd"][1]
