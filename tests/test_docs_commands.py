"""Every command a reader copies from README.md and docs/ stays valid (issue 14.6):
`svdzoo` lines parse with the real CLI, `dvc exp run -S` keys exist in params.yaml and the
edited params validate, params files and profiles named by `snakemake` lines exist and
validate, and scripts are called with a subcommand they have. Lines with placeholders
(`<model>`) are skipped."""

from __future__ import annotations

import copy
import re
import shlex
from pathlib import Path

import pytest
import yaml

from svdzoo.cli import build_parser
from svdzoo.config import load_params, validate_params

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def commands() -> list[tuple[str, str]]:
    """(file, command) for every shell line in a fenced bash block, continuations joined."""
    found = []
    for doc in DOCS:
        for block in re.findall(r"```(?:bash|sh)\n(.*?)```", doc.read_text(), re.S):
            for line in re.sub(r"\\\n\s*", " ", block).splitlines():
                for part in line.split(";"):
                    cmd = re.sub(r"\s+#.*$", "", part).strip()
                    if cmd and not cmd.startswith("#") and "<" not in cmd:
                        found.append((doc.name, cmd))
    return found


COMMANDS = commands()


def _argv(cmd: str) -> list[str]:
    m = re.match(r'eval "\$\((.*)\)"$', cmd)
    return shlex.split(m.group(1) if m else cmd)


def test_the_docs_have_commands():
    tools = {_argv(c)[0] for _, c in COMMANDS}
    assert {"svdzoo", "snakemake", "dvc", "bash"} <= tools, tools


@pytest.mark.parametrize("doc,cmd", [c for c in COMMANDS if _argv(c[1])[0] == "svdzoo"])
def test_svdzoo_lines_parse(doc, cmd):
    build_parser().parse_args(_argv(cmd)[1:])


def _set(params: dict, dotted: str, value) -> None:
    *path, last = dotted.split(".")
    node = params
    for key in path:
        assert key in node, f"no params key {dotted!r}"
        node = node[key]
    assert last in node, f"no params key {dotted!r}"
    node[last] = value


@pytest.mark.parametrize(
    "doc,cmd", [c for c in COMMANDS if _argv(c[1])[:3] == ["dvc", "exp", "run"]]
)
def test_dvc_experiments_set_real_params(doc, cmd, monkeypatch):
    monkeypatch.chdir(ROOT)
    argv = _argv(cmd)
    params = copy.deepcopy(load_params(ROOT / "params.yaml"))
    sets = [argv[i + 1] for i, a in enumerate(argv) if a == "-S"]
    assert sets
    for item in sets:
        key, _, value = item.partition("=")
        _set(params, key, yaml.safe_load(value))
    validate_params(params)


@pytest.mark.parametrize("doc,cmd", [c for c in COMMANDS if _argv(c[1])[0] == "snakemake"])
def test_snakemake_lines_name_real_files(doc, cmd, monkeypatch):
    monkeypatch.chdir(ROOT)
    argv = _argv(cmd)
    for flag in ("--workflow-profile", "--profile"):
        if flag in argv:
            assert (ROOT / argv[argv.index(flag) + 1] / "config.yaml").is_file(), cmd
    for value in argv:
        if value.startswith("params="):
            load_params(ROOT / value.removeprefix("params="))


@pytest.mark.parametrize("doc,cmd", [c for c in COMMANDS if _argv(c[1])[0] == "bash"])
def test_scripts_exist_with_their_subcommand(doc, cmd):
    script, *rest = _argv(cmd)[1:]
    text = (ROOT / script).read_text()
    if rest:
        assert re.search(rf"(^|[\s(|]){re.escape(rest[0])}[)|]", text), (script, rest[0])
