"""dvc.yaml is generated from the params (issue 14.3): the committed file is current, a
stale one is refused, and each compression depends on exactly what its method reads.
The engines' commands are compared job by job in tests/test_workflow.py."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import yaml

from svdzoo import cli, dvc_render
from svdzoo.config import load_params
from svdzoo.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def in_root(monkeypatch):
    monkeypatch.chdir(ROOT)  # params paths (report.published) are project-relative


def stages_for(**changes) -> dict:
    params = copy.deepcopy(load_params(ROOT / "params.yaml"))
    params.update(changes)
    return dvc_render.render_stages(params)["stages"]


def test_committed_dvc_yaml_is_current(in_root, capsys):
    assert cli.main(["render-dvc", "--check"]) == 0, capsys.readouterr().err


def test_stale_dvc_yaml_is_refused(in_root, tmp_path, capsys):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["methods"] = ["svd", "svd-llm"]
    edited = tmp_path / "params.yaml"
    edited.write_text(yaml.safe_dump(params, sort_keys=False))
    assert cli.main(["render-dvc", str(edited), "--check"]) == 1
    assert "render-dvc" in capsys.readouterr().err
    assert cli.main(["validate-params", str(edited), "-q", "--dvc-yaml", "dvc.yaml"]) != 0
    assert "run `svdzoo render-dvc" in capsys.readouterr().err
    out = tmp_path / "dvc.yaml"
    assert cli.main(["render-dvc", str(edited), "--out", str(out)]) == 0
    assert cli.main(["render-dvc", str(edited), "--out", str(out), "--check"]) == 0
    assert "compress-svd-llm" in out.read_text() and "compress-asvd" not in out.read_text()
    # a directory was "does not exist: run render-dvc --out DIR"; non-UTF-8 bytes a traceback
    assert cli.main(["validate-params", "params.yaml", "-q", "--dvc-yaml", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "is a directory, not a file" in err and "render-dvc" not in err, err
    out.write_bytes(b"\xff\xfe")
    assert cli.main(["validate-params", str(edited), "-q", "--dvc-yaml", str(out)]) == 2
    assert "is not what `svdzoo render-dvc` makes" in capsys.readouterr().err


def test_each_compression_depends_on_what_its_method_reads(in_root):
    stages = stages_for(
        methods=["svd", "fwsvd", "asvd", "svd-llm", "duo-svd", "duo-svd-independent"]
    )

    def stats(method):
        return sorted(Path(d).name for d in stages[f"compress-{method}"]["deps"][2:])

    assert stats("svd") == []
    assert stats("fwsvd") == ["fisher"]
    assert stats("asvd") == ["gram", "sensitivity-asvd"]
    assert stats("svd-llm") == ["gram"]
    assert stats("duo-svd-independent") == ["gram", "sensitivity-duo"]
    assert stats("duo-svd") == ["gram", "sensitivity-duo-r${item.ratio}"]
    assert "--base-ratio ${item.ratio}" in stages["sensitivity-duo-per-ratio"]["cmd"]
    assert "--calibration" not in stages["compress-svd"]["cmd"]
    # a statistic no method reads has no stage
    only = stages_for(methods=["svd", "svd-llm"])
    assert "calibrate" in only and not {"fisher", "sensitivity-duo", "sensitivity-asvd"} & set(only)


def test_tasks_stage_only_with_offline_tasks(in_root):
    params = copy.deepcopy(load_params(ROOT / "params.yaml"))
    params["evaluation"]["tasks"] = []
    stages = dvc_render.render_stages(params)["stages"]
    assert "tasks" not in stages
    assert "--task-dir" not in stages["evaluate"]["cmd"]
    assert "data/tasks" not in stages["evaluate"]["deps"]


def test_hub_models_are_refused(in_root):
    params = copy.deepcopy(load_params(ROOT / "params.yaml"))
    params["models"]["hub"] = {"source": "hub", "id": "org/model", "family": "llama"}
    with pytest.raises(ConfigError, match="hub"):
        dvc_render.render_stages(params)


def test_plots_are_per_model_and_metric(in_root):
    params = load_params(ROOT / "params.yaml")
    plots = dvc_render.render_stages(params)["plots"]
    defs = {k: v for p in plots if isinstance(p, dict) for k, v in p.items()}
    corpora = params["evaluation"]["corpora"]
    assert len(defs) == len(params["models"]) * (len(corpora) + 1)
    for spec in defs.values():
        assert spec["x"] == "ratio"
        ((_, series),) = spec["y"].items()
        assert series == params["methods"]


def test_base_params_are_refused(tmp_path):
    base = tmp_path / "p.yaml"
    base.write_text("base: workflow/configs/base/paper.yaml\n")
    assert cli.main(["render-dvc", str(base), "--out", os.devnull]) != 0


def test_no_command_has_a_double_space(in_root):
    """An empty flag section is left out: dvc.lock's folding loses a double space and DVC
    would report the stage as changed forever."""
    params = copy.deepcopy(load_params(ROOT / "params.yaml"))
    params["compress"] = {}
    stages = dvc_render.render_stages(params)["stages"]
    cmds = [s.get("do", s)["cmd"] for s in stages.values()]
    assert all("  " not in c for c in cmds)
    assert "${compress}" not in stages["compress-svd-llm"]["cmd"]
    params["compress"] = {"dtype": "float32"}
    assert "${compress}" in dvc_render.render_stages(params)["stages"]["compress-svd"]["cmd"]


def test_method_options_are_read_from_params_per_method(in_root):
    """`method_options.<m>` reaches only `m`'s compressions, each value interpolated from
    params.yaml (so `dvc exp run -S` changes it) and declared as the stage's param."""
    stages = stages_for(method_options={"svd-llm": {"precision": "float32", "whitening": "eigen"}})
    mine, other = stages["compress-svd-llm"], stages["compress-asvd"]
    assert "--option precision=${method_options.svd-llm.precision}" in mine["cmd"]
    assert "--option whitening=${method_options.svd-llm.whitening}" in mine["cmd"]
    assert mine["params"] == ["compress", "method_options.svd-llm"]
    assert "--option" not in other["cmd"] and other["params"] == ["compress"]


def test_a_corpus_file_is_a_dep_and_its_tag_is_rendered(in_root):
    """A calibration corpus given as a file path: DVC's stages use `paths.calib_tag`'s name
    for it (a template would splice the path in, so `compress --calibration` refused the
    statistics), and a local corpus file is a dep of what reads it (editing it reran
    nothing), in DVC as in the Snakefile."""
    from svdzoo.config import calib_tag

    params = copy.deepcopy(load_params(ROOT / "params.yaml"))
    params["calibration"] = {**params["calibration"], "corpus": "corpora/mine.txt"}
    params["evaluation"] = {**params["evaluation"], "corpora": ["pydoc", "corpora/eval.jsonl"]}
    params["methods"] = ["svd-llm", "duo-svd-independent"]
    stages = dvc_render.render_stages(params)["stages"]
    tag = calib_tag(params)
    assert "/" not in tag
    text = yaml.safe_dump(stages)
    assert "${calibration.corpus}" not in text and "mine.txt-n" not in text
    calibrate = stages["calibrate"]["do"]
    assert f"/{tag}/gram" in calibrate["cmd"] and "corpora/mine.txt" in calibrate["deps"]
    assert "corpora/mine.txt" in stages["sensitivity-duo"]["do"]["deps"]
    assert f"--calibration {tag}" in stages["compress-svd-llm"]["cmd"]
    for name in ("evaluate", "evaluate-dense"):
        deps = stages[name].get("do", stages[name])["deps"]
        assert "corpora/eval.jsonl" in deps and "corpora/mine.txt" not in deps
    # a named corpus keeps the template (`dvc exp run -S calibration.nsamples=...` works)
    plain = stages_for(methods=["svd-llm"])
    assert "${calibration.corpus}" in plain["calibrate"]["do"]["cmd"]


def test_a_reference_models_corpus_file_is_a_dep_of_the_model_stage(in_root):
    """A reference model trained on a local corpus file: editing the file must retrain it
    (it was a dep of no stage, in DVC as in the Snakefile, so nothing reran)."""
    params = copy.deepcopy(load_params(ROOT / "params.yaml"))
    params["models"]["ref-opt"] = {**params["models"]["ref-opt"], "corpus": "corpora/ref.txt"}
    stages = dvc_render.render_stages(params)["stages"]
    assert "corpora/ref.txt" in stages["model"]["do"]["deps"]
    assert "corpora/ref.txt" not in stages["calibrate"]["do"]["deps"]
    # a named corpus adds nothing (the committed dvc.yaml is unchanged)
    assert stages_for()["model"]["do"]["deps"] == [
        "data/code/prepare-model.sha256",
        "data/params.valid",
    ]


def test_every_flag_the_stages_set_is_refused_in_a_flag_section(in_root):
    """The flags dvc.yaml's commands (and so the Snakefile's, tests/test_workflow.py) set
    per job are exactly those `config.WORKFLOW_FLAGS` keeps out of the flag sections, where
    they would override the job's own value."""
    from svdzoo import config as C

    stages = stages_for(
        methods=["svd", "fwsvd", "asvd", "duo-svd", "duo-svd-independent"],
        method_options={"svd": {"whitening": "none"}},
    )
    commands = set(C.FLAG_SECTIONS.values())
    seen = set()
    for stage in stages.values():
        words = stage.get("do", stage)["cmd"].split()
        if words[0] != "svdzoo":
            continue
        if words[1] == "--execution":
            del words[1:3]
        command = words[1]
        if command not in commands:
            continue
        seen.add(command)
        flags = {w[2:] for w in words[2:] if w.startswith("--")}
        assert flags <= C.WORKFLOW_FLAGS[command], (command, flags - C.WORKFLOW_FLAGS[command])
    assert seen == commands


def test_a_section_dvc_reads_must_be_written_in_the_params_file(in_root, tmp_path, capsys):
    """DVC interpolates params.yaml as written, without svdzoo's defaults: a file leaving
    out `offline_tasks`, `compress` or `report` (all optional) rendered a dvc.yaml that
    DVC could not parse (`Could not find 'offline_tasks'`) or whose stages failed to save
    (`Parameters 'compress' are missing`), and `render-dvc --check` called it current."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for key in ("offline_tasks", "compress", "report"):
        del params[key]
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    out = tmp_path / "dvc.yaml"
    out.write_text(dvc_render.render(load_params(path)))  # what render-dvc used to write
    assert cli.main(["render-dvc", str(path), "--out", str(out), "--check"]) != 0
    err = capsys.readouterr().err
    assert all(f"`{key}: " in err for key in ("offline_tasks", "compress", "report")), err
    assert cli.main(["validate-params", str(path), "-q", "--dvc-yaml", str(out)]) != 0
    assert cli.main(["render-dvc", str(path), "--out", str(tmp_path / "new.yaml")]) != 0
    assert not (tmp_path / "new.yaml").exists()
    params.update(offline_tasks={"seed": 0}, compress={}, report={})
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    assert cli.main(["render-dvc", str(path), "--out", str(out)]) == 0
    assert cli.main(["render-dvc", str(path), "--out", str(out), "--check"]) == 0


def test_the_report_stage_does_not_rerun_when_methods_are_reordered(in_root):
    """Its params were `models`, `methods` and `ratios`, which only name the runs it checks
    for (it reads every run under results/metrics, a dep): reordering `methods` reran it.
    Now `report` and any model's `published_name`."""
    params = load_params(ROOT / "params.yaml")
    shuffled = stages_for(methods=list(reversed(params["methods"])))
    assert shuffled["report"]["params"] == ["report"]
    assert stages_for()["report"]["params"] == ["report"]
    models = copy.deepcopy(params["models"])
    models["smollm2-135m"]["published_name"] = "SmolLM2-135M"
    named = stages_for(models=models)["report"]
    assert named["params"] == ["report", "models.smollm2-135m.published_name"]
    # DVC splits a param path at dots: a dotted model key is covered by `models` whole
    models["qwen2.5-0.5b"] = models.pop("smollm2-135m")
    assert stages_for(models=models)["report"]["params"] == ["report", "models"]
