"""The workflow under DVC, end to end: real `snakemake` and `dvc` subprocesses on the micro
config of test_workflow (no mocks), in their own module so that a parallel run (`run.sh test`
runs pytest-xdist, one module per worker) does them beside the Snakemake tests.

- A Snakemake run in a DVC project (the micro run's copy, three methods added) leaves its
  outputs in dvc.lock: `dvc repro` does nothing; `dvc exp run -S` reruns the changed stages.
- `dvc repro` twice is a no-op; `dvc exp run -S` with a new ratio runs only its stages;
  metrics, plots, a remote and a fresh clone that pulls instead of recomputing.
- A params typo is refused by the `params` stage before any other stage runs.
"""

from __future__ import annotations

import json
import re
import shutil
import sys

import pytest
import yaml
from test_workflow import (
    BIN,
    MICRO,
    ROOT,
    init_dvc_repo,
    jobs_of,
    make_workspace,
    run,
    smk,
    write_params,
)

pytestmark = pytest.mark.slow


def stages_run(out: str) -> set[str]:
    """The stages a `dvc repro` or `dvc exp run` ran, from its output."""
    return set(re.findall(r"Running stage '([^']+)'", out))


# ---------------------------------------------------------------- Snakemake then DVC


def test_snakemake_outputs_are_dvc_tracked(micro_run, tmp_path):
    """Issue 14.2: a Snakemake run in a DVC project leaves its outputs in dvc.lock, so
    `dvc repro` then does nothing and an experiment runs only its changed stages.

    It starts from a copy of the micro run (model, tasks, Gram statistics, dense evaluation),
    made a DVC project, and adds the methods whose statistics are other stages (FWSVD's
    Fisher, ASVD's and Duo-SVD's sensitivity tables): the run commits what it made and what
    it found current."""
    ws = tmp_path / "both"
    shutil.copytree(micro_run, ws, symlinks=True)
    params = {
        **MICRO,
        "methods": ["svd-llm", "fwsvd", "asvd", "duo-svd-independent"],
        "method_options": {"svd-llm": {"precision": "float64"}},
    }
    write_params(ws, params)
    run(ws, str(BIN / "svdzoo"), "render-dvc")
    git, dvc = init_dvc_repo(ws)
    ran = {rule for rule, _ in jobs_of(smk(ws))}
    assert {"calibrate_fisher", "sensitivity", "compress", "evaluate", "report"} <= ran, ran
    assert not ran & {"prepare_model", "build_tasks", "calibrate", "evaluate_dense"}, ran
    assert (ws / "dvc.lock").is_file()
    # committed without a second copy: DVC hard-links an output into its cache only when
    # `hardlink` is the first cache type (with `reflink` first, on a filesystem without
    # reflinks, every output was copied and the workspace kept its own copy: twice the disk)
    cached = {p.stat().st_ino for p in (ws / ".dvc" / "cache").rglob("*") if p.is_file()}
    found, made = ws / "data/models/tiny", ws / "results/compressed/tiny/asvd/r0.40"
    for model in (*found.glob("*.safetensors"), *made.glob("*.safetensors")):
        assert model.stat().st_ino in cached, model
    out = run(ws, dvc, "repro")
    assert "Running stage" not in out, out[-3000:]
    run(ws, git, "add", "-A")
    run(ws, git, "commit", "-q", "-m", "snakemake run")
    # an ablation by configuration: one method option reruns that method's stages only
    out = run(ws, dvc, "exp", "run", "-S", "method_options.svd-llm.precision=float32")
    ran = stages_run(out)
    assert ran == {
        "params",
        "compress-svd-llm@tiny-0.40",
        "evaluate@tiny-svd-llm-0.40",
        "report",
    }, sorted(ran)
    # a run that left a stage incomplete: every other stage is committed, that one is left
    # to dvc repro (the per-stage path; a complete run is committed in one call)
    shutil.rmtree(ws / "results/metrics/tiny/fwsvd/r0.40")
    (ws / "dvc.lock").unlink()
    code = "import json; from svdzoo.dvc_track import commit_outputs as c; print('COMMITTED=' + json.dumps(c('params.yaml')))"
    out = run(ws, sys.executable, "-c", code)
    line = next(x for x in out.splitlines() if x.startswith("COMMITTED="))
    done = json.loads(line.removeprefix("COMMITTED="))
    assert "evaluate@tiny-fwsvd-0.40" not in done and len(done) > 10, done
    out = run(ws, dvc, "status")
    assert "evaluate@tiny-fwsvd-0.40" in out and "compress-fwsvd@tiny-0.40" not in out, out
    # a Snakemake run of one target commits its own DAG only: the evaluations, complete on
    # disk but made with another evaluation setting, stay stale for `dvc repro` (they were
    # recorded as current before)
    edited = yaml.safe_load((ws / "params.yaml").read_text())
    edited["evaluation"]["max-windows"] = 3
    write_params(ws, edited)
    out = smk(ws, "data/tasks", "--forcerun", "build_tasks")
    assert "dvc: committed" in out, out[-3000:]
    out = run(ws, dvc, "status")
    assert "evaluate@tiny-svd-llm-0.40" in out, out
    assert not re.search(r"^tasks:", out, re.M), out  # what the run made is committed


def test_outputs_dvc_rewrote_are_not_committed_as_current_by_snakemake(micro_run, tmp_path):
    """`dvc exp run -S evaluation.max-windows=3` rewrites the evaluations; with the params
    put back, Snakemake (which knows nothing of that) still takes its own earlier results
    as current. Its commit recorded the 3-window files as current for the 4-window params,
    and then neither engine reran anything. Now those stages are left stale for `dvc
    repro`, with a warning, and `dvc repro` puts the right files back."""
    ws = tmp_path / "rewritten"
    shutil.copytree(micro_run, ws, symlinks=True)
    run(ws, str(BIN / "svdzoo"), "render-dvc")
    git, dvc = init_dvc_repo(ws)
    assert "dvc: committed" in smk(ws, "--forcerun", "report")
    run(ws, git, "add", "-A")
    run(ws, git, "commit", "-q", "-m", "snakemake run")
    ran = stages_run(run(ws, dvc, "exp", "run", "-S", "evaluation.max-windows=3"))
    assert "evaluate@tiny-svd-0.40" in ran, sorted(ran)
    ppl = ws / "results/metrics/tiny/svd/r0.40/ppl.json"
    assert json.loads(ppl.read_text())["n_windows"] == {"pydoc": 3}
    run(ws, git, "checkout", "--", "params.yaml")  # back to 4 windows
    out = smk(ws, "--forcerun", "report")
    assert "changed after Snakemake made it" in out, out[-3000:]
    status = run(ws, dvc, "status")
    assert "evaluate@tiny-svd-0.40" in status, status
    run(ws, dvc, "repro")
    assert json.loads(ppl.read_text())["n_windows"] == {"pydoc": 4}
    assert "up to date" in run(ws, dvc, "status")


def test_outputs_snakemake_has_no_record_of_are_left_to_dvc(micro_run, tmp_path):
    """Outputs that `dvc repro` made or `dvc pull` fetched have no Snakemake record, so
    Snakemake checks them by mtime only and misses a params change. Its commit recorded
    them as current for the new params (8-window metrics for 4-window params, say), and
    then neither engine reran them. Now only outputs Snakemake has a record of are
    committed; the others stay stale in `dvc status` for `dvc repro`."""
    ws = tmp_path / "pulled"
    shutil.copytree(micro_run, ws, symlinks=True)
    run(ws, str(BIN / "svdzoo"), "render-dvc")
    git, dvc = init_dvc_repo(ws)
    assert "dvc: committed" in smk(ws, "--forcerun", "report")  # every stage current ...
    shutil.rmtree(ws / ".snakemake" / "metadata")  # ... with no Snakemake record, as after
    # `dvc repro` or `dvc pull`
    assert "up to date" in run(ws, dvc, "status")
    edited = yaml.safe_load((ws / "params.yaml").read_text())
    edited["evaluation"]["max-windows"] = 3
    write_params(ws, edited)
    out = smk(ws, "--forcerun", "report")
    assert "dvc: committed" in out, out[-3000:]
    status = run(ws, dvc, "status")
    assert "evaluate@tiny-svd-0.40" in status, status  # 4-window metrics, 3-window params
    assert not re.search(r"^report:", status, re.M), status  # it ran, and is committed
    run(ws, dvc, "repro")
    ppl = ws / "results/metrics/tiny/svd/r0.40/ppl.json"
    assert json.loads(ppl.read_text())["n_windows"] == {"pydoc": 3}
    # docs/workflow.md's hand-over: with `dvc status` clean, `--touch --forceall` gives
    # Snakemake its records without recomputing, and it sees the next params change
    shutil.rmtree(ws / ".snakemake" / "metadata")
    before = ppl.read_bytes()
    smk(ws, "--touch", "--forceall")
    assert ppl.read_bytes() == before
    edited["evaluation"]["max-windows"] = 2
    write_params(ws, edited)
    planned = {rule for rule, _ in jobs_of(smk(ws, "-n"))}
    assert "evaluate" in planned, planned


def test_snakemakes_directory_stamp_is_not_part_of_dvcs_hash(tmp_path):
    """Snakemake writes `.snakemake_timestamp` into each directory output; DVC hashed it,
    so a directory Snakemake made and the same one from `dvc repro` differed, and every
    stage after it reran. The repository's .dvcignore leaves it out."""
    ws = tmp_path / "stamp"
    ws.mkdir()
    shutil.copy2(ROOT / ".dvcignore", ws / ".dvcignore")
    (ws / "dvc.yaml").write_text(
        "stages:\n  make:\n    cmd: mkdir -p out && echo data > out/a\n    outs: [out]\n"
    )
    git, dvc = init_dvc_repo(ws)
    run(ws, dvc, "repro")
    (ws / "out" / ".snakemake_timestamp").touch()
    assert "up to date" in run(ws, dvc, "status")


# ---------------------------------------------------------------- DVC


def test_dvc_refuses_a_params_typo_before_any_stage(tmp_path):
    """DVC validates nothing itself; the `params` stage does, before the root stages."""
    import copy

    params = copy.deepcopy(MICRO)
    params["evaluation"]["max_windows"] = params["evaluation"].pop("max-windows")
    ws = make_workspace(tmp_path / "dvc-typo", params)
    run(ws, str(BIN / "dvc"), "init", "--no-scm", "-q")
    out = run(ws, str(BIN / "dvc"), "repro", check=False)
    assert "evaluation.max_windows" in out and "did you mean 'max-windows'" in out, out[-3000:]
    assert not (ws / "data" / "models").exists() and not (ws / "data" / "tasks").exists()
    params["evaluation"]["max-windows"] = params["evaluation"].pop("max_windows")
    params["keep_compresed"] = params.pop("keep_compressed")
    write_params(ws, params)
    out = run(ws, str(BIN / "dvc"), "repro", "params", check=False)
    assert "keep_compresed" in out and not (ws / "data" / "params.valid").exists(), out[-3000:]


# columns `dvc exp show` need not show to compare experiments: creation time, dependency
# hashes, the params file's own hash, execution-only settings
READABLE_DROP = r"Created|results|data|src|params\.yaml|execution"


def test_dvc_repro_noop_and_experiment(tmp_path):
    import json

    params = {**MICRO, "methods": ["svd-llm"]}
    ws = make_workspace(tmp_path / "dvc", params)
    git, dvc = init_dvc_repo(ws)

    out = run(ws, dvc, "repro")
    assert "Running stage 'report'" in out
    assert (ws / "results/metrics/tiny/svd-llm/r0.40/ppl.json").is_file()
    assert (ws / "results/metrics.csv").is_file()

    again = run(ws, dvc, "repro")
    assert "Running stage" not in again
    assert "up to date" in run(ws, dvc, "status")

    # issue 14.4: one small metrics file, model -> method -> ratio -> headline metrics
    shown = json.loads(run(ws, dvc, "metrics", "show", "--json"))
    ((_, found),) = shown.items()
    metrics = found["data"]["results/summary.json"]["data"]
    assert set(metrics["tiny"]) == {"dense", "svd-llm"}
    assert set(metrics["tiny"]["svd-llm"]["r0.40"]) == {"ppl-pydoc", "acc"}
    # DVC plots: one per model and headline metric, a series per method, x = ratio
    html = tmp_path / "plots"
    run(ws, dvc, "plots", "show", "-o", str(html))
    page = (html / "index.html").read_text()
    assert "tiny: perplexity, pydoc vs compression ratio" in page and '"svd-llm"' in page
    assert "tiny: mean zero-shot accuracy vs compression ratio" in page

    run(ws, git, "add", "-A")
    run(ws, git, "commit", "-q", "-m", "baseline")
    # issue 14.1: an edit to a module no stage runs reruns only the code stamps; an edit to
    # the method's module changes the stamp its compression reads, and nothing else:
    # `dvc status` names that stage alone once the stamps are remade (what follows a rerun
    # compression reruns in the experiment below). Put back, the stamps are as they were.
    (ws / "src/svdzoo/methods/svd_llm_v2.py").write_text(
        (ws / "src/svdzoo/methods/svd_llm_v2.py").read_text() + "\n# edited\n"
    )
    out = run(ws, dvc, "repro")
    assert stages_run(out) == {"code"}, out
    baselines = ws / "src/svdzoo/methods/baselines.py"
    source = baselines.read_text()
    baselines.write_text(source + "\n# edited\n")
    out = run(ws, dvc, "repro", "code")
    assert stages_run(out) == {"code"}, out
    stale = json.loads(run(ws, dvc, "status", "--json"))
    assert set(stale) == {"compress-svd-llm@tiny-0.40"}, stale
    assert "data/code/" in json.dumps(stale), stale  # stale by its code stamp
    baselines.write_text(source)
    out = run(ws, dvc, "repro")
    assert stages_run(out) == {"code"}, out
    run(ws, git, "add", "-A")
    run(ws, git, "commit", "-q", "-m", "edited code")
    # a new ratio, and (case 10) execution-only settings in the same experiment: `params`
    # re-validates the edited params.yaml (seconds); its stamp is unchanged, so nothing
    # reruns beyond the new ratio's stages and the report (the 0.40 compression and
    # evaluation, whose device and batch size changed, do not)
    out = run(ws, dvc, "exp", "run", "-S", 'ratios=["0.40","0.60"]',
              "-S", "execution.compress.device=auto",
              "-S", "execution.evaluate.batch-size=2")  # fmt: skip
    ran = stages_run(out)
    assert ran == {
        "params",
        "compress-svd-llm@tiny-0.60",
        "evaluate@tiny-svd-llm-0.60",
        "report",
    }, out
    assert (ws / "results/metrics/tiny/svd-llm/r0.60/ppl.json").is_file()
    # the experiment against its baseline: only the new ratio's headline numbers differ
    diff = json.loads(run(ws, dvc, "metrics", "diff", "HEAD", "--json"))
    changed = diff["results/summary.json"]
    assert changed and all(".r0.60." in key for key in changed), changed
    assert changed["tiny.svd-llm.r0.60.ppl-pydoc"]["old"] is None
    # the readable comparison docs/workflow.md gives: headline metrics and changed params
    table = run(ws, dvc, "exp", "show", "--no-pager", "--md", "--only-changed",
                "--hide-workspace", "--drop", READABLE_DROP)  # fmt: skip
    header = [c.strip() for c in table.splitlines()[0].strip("|").split("|")]
    assert set(header) == {
        "Experiment", "tiny.svd-llm.r0.60.acc", "tiny.svd-llm.r0.60.ppl-pydoc",
        "ratios",
    }, table  # fmt: skip
    run(ws, dvc, "plots", "diff", "HEAD", "-o", str(tmp_path / "plots-diff"))
    page = (tmp_path / "plots-diff" / "index.html").read_text()
    assert "tiny: perplexity, pydoc vs compression ratio" in page

    # issue 14.4: a shared-directory remote; a fresh clone pulls instead of recomputing
    remote = tmp_path / "remote"
    run(ws, dvc, "remote", "add", "-d", "shared", str(remote))
    run(ws, git, "add", "-A")
    run(ws, git, "commit", "-q", "-m", "experiment and remote")
    run(ws, dvc, "push")
    clone = tmp_path / "clone"
    run(tmp_path, git, "clone", "-q", str(ws), str(clone))
    run(clone, dvc, "pull")
    out = run(clone, dvc, "repro")
    ran = stages_run(out)
    # the uncached stamps are remade (seconds); nothing they feed changes
    assert ran <= {"params", "code"}, out
    assert (clone / "results/metrics/tiny/svd-llm/r0.60/ppl.json").is_file()
