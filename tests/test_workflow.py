"""The workflow end to end: real `snakemake` and `dvc` subprocesses on a micro config in a
temporary copy of the workflow files (no mocks). The DVC runs are in test_workflow_dvc.

- Snakemake and DVC render the same result paths and commands for the default params.yaml.
- Incremental: a second run does nothing; a new ratio runs only that ratio's compression,
  evaluation and the report; a new nsamples reruns calibration and what depends on it.
- Faults: a job killed mid-write leaves nothing a rerun takes as complete; statistics whose
  manifest does not match the model are rejected, and a forced rerun rebuilds them.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
WORKFLOW_FILES = ("Snakefile", "workflow", "dvc.yaml", ".dvcignore", ".gitignore")

MICRO = {
    "models": {
        "tiny": {
            "source": "reference",
            "family": "llama",
            "corpus": "pydoc",
            "steps": 20,
            "seed": 0,
            "options": {
                "hidden": 32,
                "layers": 2,
                "heads": 2,
                "kv-heads": 1,
                "ffn": 64,
                "seqlen": 32,
                "batch": 4,
                "warmup": 2,
            },
        }
    },
    "methods": ["svd", "svd-llm"],
    "ratios": ["0.40"],
    "calibration": {"corpus": "pydoc", "nsamples": 4, "seqlen": 32, "seed": 0},
    "sensitivity": {"nsamples": 2},
    "compress": {},
    "offline_tasks": {"seed": 0, "n-examples": 8},
    "evaluation": {
        "corpora": ["pydoc"],
        "tasks": ["pydoc_continuation"],
        "seqlen": 32,
        "max-windows": 4,
        "zeroshot-limit": 8,
        "efficiency-batch-sizes": "1",
        "efficiency-prompt-len": 8,
        "efficiency-gen-len": 2,
    },
    "execution": {"compress": {"device": "cpu"}, "evaluate": {"batch-size": 4, "device": "cpu"}},
    "report": {"published": "data/published.csv"},
    "keep_compressed": True,
}


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        # each workspace runs its own copy of the package (make_workspace), so a test can
        # edit the code a stage runs; relative, so it resolves in the workspace (cwd)
        PYTHONPATH="src",
        DVC_NO_ANALYTICS="1",
        GIT_AUTHOR_NAME="t",
        GIT_AUTHOR_EMAIL="t@t",
        GIT_COMMITTER_NAME="t",
        GIT_COMMITTER_EMAIL="t@t",
    )
    return env


def make_workspace(path: Path, params: dict | None) -> Path:
    """A project directory holding the workflow files and `params` as params.yaml."""
    path.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW_FILES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, path / name)
        else:
            shutil.copy2(src, path / name)
    shutil.copytree(
        ROOT / "src" / "svdzoo",
        path / "src" / "svdzoo",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    (path / "data").mkdir(exist_ok=True)
    published = ROOT / "data" / "published.csv"
    if published.exists():
        shutil.copy2(published, path / "data" / "published.csv")
    else:  # the report only needs the file to exist with the published columns
        (path / "data" / "published.csv").write_text(
            "source,table,model,method,ratio,wikitext2_ppl,ptb_ppl,c4_ppl,zero_shot_avg,note\n"
        )
    if params is not None:
        write_params(path, params)
        # dvc.yaml is generated from the params (issue 14.3), as a user would after editing
        # them; params that do not validate keep the repository's file (tests of refusals)
        run(path, str(BIN / "svdzoo"), "render-dvc", check=False)
    return path


def write_params(ws: Path, params: dict) -> None:
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def run(ws: Path, *cmd: str, check: bool = True, timeout: int = 600) -> str:
    res = subprocess.run(
        list(cmd), cwd=ws, env=_env(), capture_output=True, text=True, timeout=timeout
    )
    out = res.stdout + res.stderr
    if check and res.returncode != 0:
        logs = "\n".join(
            f"--- {p.relative_to(ws)}\n{p.read_text()[-1500:]}"
            for p in sorted((ws / "results" / "logs").rglob("*.log"))
        )
        pytest.fail(f"{' '.join(cmd)} failed ({res.returncode}):\n{out[-4000:]}\n{logs[-6000:]}")
    return out


def smk(ws: Path, *args: str, check: bool = True) -> str:
    return run(ws, str(BIN / "snakemake"), "--cores", "2", *args, check=check)


def init_dvc_repo(ws: Path) -> tuple[str, str]:
    """Make `ws` a git + DVC project with the repository's DVC config, committed; returns
    the git and dvc executables."""
    git, dvc = shutil.which("git") or "git", str(BIN / "dvc")
    run(ws, git, "init", "-q")
    run(ws, dvc, "init", "-q")
    shutil.copy2(ROOT / ".dvc" / "config", ws / ".dvc" / "config")
    run(ws, git, "add", "-A")
    run(ws, git, "commit", "-q", "-m", "micro")
    return git, dvc


def jobs_of(out: str) -> list[tuple[str, str]]:
    """(rule, outputs) of every job listed in snakemake's output (`all` excluded)."""
    jobs, rule = [], None
    for line in out.splitlines():
        m = re.match(r"^(?:local)?rule (\w+):$", line.strip())
        if m:
            rule = m.group(1)
        elif rule and line.strip().startswith("output:"):
            jobs.append((rule, line.split(":", 1)[1].strip()))
            rule = None
    return [j for j in jobs if j[0] != "all"]


def smk_jobs(ws: Path, *args: str) -> list[tuple[str, str]]:
    """Run snakemake for real; the jobs it ran (one parse instead of a dry run + a run)."""
    return jobs_of(smk(ws, *args))


def metric_files(ws: Path) -> list[Path]:
    return sorted((ws / "results" / "metrics").rglob("*.json"))


def mtimes(paths) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in paths}


# ---------------------------------------------------------------- Snakemake vs DVC


def dvc_stages(ws: Path, expr: str) -> list:
    """`expr` over the stages DVC resolves from the workspace's dvc.yaml (`repo` bound),
    in a fresh `dvc init --no-scm` project, read back as JSON."""
    run(ws, str(BIN / "dvc"), "init", "--no-scm", "-q")
    code = (
        "import json, sys\n"
        "from dvc.repo import Repo\n"
        "with Repo('.') as repo:\n"
        f"    json.dump({expr}, sys.stdout)\n"
    )
    return json.loads(run(ws, sys.executable, "-c", code).strip().splitlines()[-1])


def test_snakemake_and_dvc_render_the_same_paths(tmp_path):
    """For the default params.yaml both engines plan exactly the same outputs."""
    ws = make_workspace(tmp_path / "ws", yaml.safe_load((ROOT / "params.yaml").read_text()))
    summary = run(ws, str(BIN / "snakemake"), "--summary")
    rows = [line.split("\t") for line in summary.splitlines() if "\t" in line]
    snake = {r[0] for r in rows[1:] if r[0] != "output_file"}
    dvc = set(dvc_stages(ws, "sorted(o.def_path for s in repo.index.stages for o in s.outs)"))
    # engine-specific by design: DVC's validation stamp (the Snakefile validates at parse
    # time), its code stamps (Snakemake hashes the code into each rule's params) and
    # Snakemake's per-job benchmark files
    dvc.discard("data/params.valid")
    dvc.discard("data/code")
    snake = {p for p in snake if not p.startswith("results/benchmarks/")}
    assert snake == dvc, (
        f"only Snakemake: {sorted(snake - dvc)[:10]}; only DVC: {sorted(dvc - snake)[:10]}"
    )
    results = {p for p in snake if p.startswith("results/")}
    assert len([p for p in results if p.endswith("ppl.json")]) == 2 * (8 * 4 + 1)
    assert {"results/metrics.csv", "results/tables", "results/figures"} <= results


def _commands(lines) -> set[str]:
    return {re.sub(" +", " ", c.strip()) for c in lines if c}


def test_snakemake_and_dvc_run_the_same_commands(tmp_path):
    """Issue 14.3: dvc.yaml is generated from the Snakefile's path scheme and params, so
    every job's command line is the same in both engines (per-method statistics, the
    per-ratio Duo-SVD tables, the offline tasks and the report's expectations included)."""

    params = {**MICRO, "ratios": ["0.40", "0.60"], "methods": [
        "svd", "fwsvd", "asvd", "svd-llm", "duo-svd", "duo-svd-independent"]}  # fmt: skip
    # per-method options: read from params.yaml by both engines (dvc.yaml interpolates them)
    params["method_options"] = {"duo-svd": {"schedule": "golden", "accept": 0.02},
                                "svd-llm": {"precision": "float32"}}  # fmt: skip
    ws = make_workspace(tmp_path / "ws", params)
    out = smk(ws, "--dry-run", "--printshellcmds")
    snake = _commands(
        re.sub(r"^OMP_NUM_THREADS=\d+ | > \S+ 2>&1$", "", line.removeprefix("Shell command: "))
        # Snakemake passes the params file through the environment (see common.smk)
        .replace('--execution "$SVDZOO_EXECUTION"', "--execution params.yaml")
        for line in out.splitlines()
        if line.startswith("Shell command: ") and line != "Shell command: None"
    )
    dvc = _commands(dvc_stages(ws, "[s.cmd for s in repo.index.stages]"))
    # DVC's own two stages (the params check and the code stamps) have no Snakemake rule
    only_dvc = {c for c in dvc - snake if c.startswith(("svdzoo validate-params", "python -m"))}
    assert snake == dvc - only_dvc, (sorted(snake - dvc), sorted(dvc - snake))
    # 12 compressions, 13 evaluations, 2 calibrations, 4 tables (2 per-ratio), 3 others
    assert len(only_dvc) == 2 and len(snake) == 34
    duo = [c for c in snake if " compress " in c and "--method duo-svd " in c]
    assert len(duo) == 2 and all("--option schedule=golden --option accept=0.02" in c for c in duo)
    # svd-llm's compressions only
    assert sum("--option precision=float32" in c for c in snake if " compress " in c) == 2
    assert [c for c in snake if "--option " in c and " compress " not in c] == []
    assert run(ws, str(BIN / "svdzoo"), "render-dvc", "--check").strip().endswith("current")


def test_snakemake_lint_is_clean():
    out = run(ROOT, str(BIN / "snakemake"), "--lint")
    assert "Congratulations, your workflow is in a good condition!" in out


def test_bad_params_fail_before_any_job(tmp_path):
    bad = yaml.safe_load(yaml.safe_dump(MICRO))
    bad["methods"] = ["svd", "not-a-method"]
    ws = make_workspace(tmp_path / "ws", bad)
    out = smk(ws, "--dry-run", check=False)
    assert "methods[1]" in out and "unknown method 'not-a-method'" in out
    assert not (ws / "data" / "models").exists()


# ---------------------------------------------------------------- Snakemake, incremental


@pytest.fixture(scope="module")
def micro_ws(micro_run: Path, tmp_path_factory) -> Path:
    """The micro config run once from scratch (conftest's `micro_run`, shared with
    test_cluster), copied with its Snakemake records and file times: these tests change it."""
    ws = tmp_path_factory.mktemp("smk") / "ws"
    shutil.copytree(micro_run, ws, symlinks=True)
    assert (ws / "results" / "metrics.csv").is_file()
    return ws


def test_full_run_produces_every_metric(micro_ws):
    names = {str(p.relative_to(micro_ws / "results" / "metrics")) for p in metric_files(micro_ws)}
    for run_dir in ("tiny/dense/r0.00", "tiny/svd/r0.40", "tiny/svd-llm/r0.40"):
        for kind in ("ppl", "zeroshot", "efficiency"):
            assert f"{run_dir}/{kind}.json" in names
    # each says what it was made with (svdzoo.provenance), as the model and statistics do
    import torch

    for path in metric_files(micro_ws):
        assert json.loads(path.read_text())["software"]["torch"] == torch.__version__, path
    log = json.loads((micro_ws / "data/models/tiny/train_log.json").read_text())
    assert log["summary"]["software"]["torch"] == torch.__version__
    # svd needs no statistics: the calibration set exists only for svd-llm
    assert (micro_ws / "data/stats/tiny/pydoc-n4-l32-s0/gram/manifest.json").is_file()
    assert not (micro_ws / "data/stats/tiny/pydoc-n4-l32-s0/fisher").exists()


def test_the_run_accounts_for_its_cpu_jobs_and_snakemake(micro_run):
    """Each job's log holds its exact CPU time, and Snakemake's log the scheduler's own and
    that of every process it waited for, which includes every job (svdzoo.usage)."""
    from svdzoo.usage import parse_scheduler, read_usage

    logs = sorted((micro_run / "results" / "logs").rglob("*.log"))
    used = {p.name: read_usage(p) for p in logs}
    assert logs and all(u is not None for u in used.values()), [n for n, u in used.items() if u is None]  # fmt: skip
    (smk_log,) = (micro_run / ".snakemake" / "log").glob("*.snakemake.log")
    split = parse_scheduler(smk_log.read_text())
    assert split is not None, smk_log.read_text()[-2000:]
    own, jobs = split
    assert own > 0
    assert jobs >= sum(u.cpu_s for u in used.values() if u is not None) > 0


def test_calibrate_compress_with_the_params_is_the_workflows_own_job(micro_run, tmp_path):
    """`svdzoo calibrate-compress --params` takes the settings of the workflow's jobs: it
    finds the micro run's Gram cache (changing nothing there) and writes the weights the
    workflow's compress job wrote."""
    from safetensors.torch import load_file

    from svdzoo.cli import main

    ws = tmp_path / "ws"  # a copy: a regression must not write into the shared run
    shutil.copytree(micro_run, ws, symlinks=True)
    gram = ws / "data/stats/tiny/pydoc-n4-l32-s0/gram/manifest.json"
    before = gram.stat().st_mtime_ns
    argv = ["calibrate-compress", "--params", str(ws / "params.yaml"),
            "--model-name", "tiny", "--method", "svd-llm", "--ratio", "0.40",
            "--stats-root", str(ws), "--out", str(tmp_path / "out")]  # fmt: skip
    assert main(argv) == 0
    assert gram.stat().st_mtime_ns == before
    name = "svdzoo-lowrank.safetensors"
    ours = load_file(str(tmp_path / "out" / name))
    theirs = load_file(str(ws / "results/compressed/tiny/svd-llm/r0.40" / name))
    assert ours.keys() == theirs.keys() and all(ours[k].equal(theirs[k]) for k in ours)
    # flags given override the params: here the model, the stats root and nsamples
    model = str(ws / "data/models/tiny")
    argv[argv.index("--stats-root") + 1] = str(tmp_path)
    assert main([*argv[:-1], str(tmp_path / "out2"), "--model", model, "--nsamples", "2"]) == 0
    made = json.loads((tmp_path / "data/stats/tiny/pydoc-n2-l32-s0/gram/manifest.json").read_text())
    assert (made["nsamples"], made["seqlen"]) == (2, 32)


def test_second_run_does_nothing(micro_ws):
    before = mtimes(metric_files(micro_ws))
    out = smk(micro_ws)
    assert "Nothing to be done" in out and jobs_of(out) == []
    assert mtimes(metric_files(micro_ws)) == before


def _browser():
    """Selenium driving Debian's headless Chromium (run.sh test installs both in CI and
    sets SVDZOO_REQUIRE_BROWSER, so there a missing browser fails instead of skipping)."""
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        if os.environ.get("SVDZOO_REQUIRE_BROWSER"):
            pytest.fail(
                "chromium and chromedriver are required (apt-get install chromium chromium-driver)"
            )
        pytest.skip("no chromium/chromedriver (apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1000"):  # fmt: skip
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(driver), options=opts)


def test_snakemake_report_renders_in_a_browser(micro_ws, tmp_path):
    """Issue 14.5: `snakemake --report` makes a browsable report of the run; every figure
    opens and renders as an image in a real (headless) browser."""
    from matplotlib.image import imread
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    page = tmp_path / "report.html"
    run(micro_ws, str(BIN / "snakemake"), "--report", str(page))
    figures = sorted(p.name for p in (micro_ws / "results" / "figures").glob("*.png"))
    # svd and svd-llm allocate uniformly: no allocation heatmap (it drew rounding noise)
    assert figures == [f"{s}_tiny.png" for s in ("compression_time", "efficiency_vs_ratio",
                                                 "ppl_vs_ratio", "zeroshot_vs_ratio")]  # fmt: skip
    browser = _browser()
    try:
        wait = WebDriverWait(browser, 20)

        def open_category(name: str) -> None:
            browser.get(page.as_uri())
            span = (By.XPATH, f"//span[normalize-space(text())='{name}']")
            wait.until(EC.element_to_be_clickable(span)).click()

        for category, entry in (("Tables", "results/tables/"), ("Metrics", "results/metrics.csv")):
            open_category(category)
            wait.until(EC.presence_of_element_located(
                (By.XPATH, f"//tr/td[starts-with(normalize-space(text()), '{entry}')]")))  # fmt: skip
        open_category("Figures")
        for name in figures:
            row = f"//tr[td[normalize-space(text())='results/figures/{name}']]"
            wait.until(EC.element_to_be_clickable((By.XPATH, f"{row}//a[@iconname='eye']"))).click()
            # this figure's own image, decoded by the browser to a real size
            shown = (
                "return [...document.images].some(i => i.src.startsWith("
                f"'data:image/png;charset=utf8;filename={name};') && i.complete"
                " && i.naturalWidth > 200 && i.naturalHeight > 200)"
            )
            wait.until(lambda b, js=shown: b.execute_script(js))
        shot = tmp_path / "figure.png"
        browser.save_screenshot(str(shot))
    finally:
        browser.quit()
    pixels = imread(shot)
    assert pixels.shape[0] > 500 and pixels.std() > 0.05  # a figure, not a blank page


def test_adding_a_ratio_runs_only_that_ratio(micro_ws):
    gram = micro_ws / "data/stats/tiny/pydoc-n4-l32-s0/gram"
    stats_before = mtimes(gram.iterdir())
    old = mtimes(metric_files(micro_ws))
    write_params(micro_ws, {**MICRO, "ratios": ["0.40", "0.60"]})
    jobs = smk_jobs(micro_ws)
    rules = sorted(r for r, _ in jobs)
    assert rules == ["compress", "compress", "evaluate", "evaluate", "report"], jobs
    for rule, outputs in jobs:
        if rule != "report":
            assert "r0.60" in outputs, (rule, outputs)
    assert mtimes(gram.iterdir()) == stats_before  # calibration untouched
    now = mtimes(metric_files(micro_ws))
    assert {p: t for p, t in now.items() if p in old} == old  # nothing else re-evaluated
    assert {p.parent.name for p in set(now) - set(old)} == {"r0.60"}
    assert len(set(now) - set(old)) == 6


def test_execution_settings_rerun_nothing(micro_ws):
    """Case 10: a device, batch size or memory budget changes how jobs run, not what they
    compute; the jobs read them at run time, so nothing is planned."""
    now = {**MICRO, "ratios": ["0.40", "0.60"]}  # the state the tests above left
    params = {**now, "execution": {
        "calibrate": {"batch-size": 2, "memory-budget-mb": 64, "device": "cpu"},
        "compress": {"device": "auto"},
        "evaluate": {"batch-size": 2},
    }}  # fmt: skip
    write_params(micro_ws, params)
    try:
        out = smk(micro_ws, "-n")
        assert jobs_of(out) == [], out[-3000:]
    finally:
        write_params(micro_ws, now)


def test_another_params_file_with_the_same_settings_reruns_nothing(micro_ws):
    """A config that differs only in its path (ablations.yaml, compose.yaml share the
    default run's jobs) reruns no job: the params file is not a job parameter. Only the
    report, which reads that file for the runs it expects, is planned again."""
    now = {**MICRO, "ratios": ["0.40", "0.60"]}  # the state the tests above left
    other = micro_ws / "other-params.yaml"
    other.write_text(yaml.safe_dump(now, sort_keys=False))
    out = smk(micro_ws, "-n", "--config", f"params={other.name}")
    assert [rule for rule, _ in jobs_of(out)] == ["report"], out[-3000:]


@contextlib.contextmanager
def edited(ws: Path, module: str):
    """A source file of the workspace's package copy changed (a comment: new bytes) for the
    block, then put back byte for byte, so the workspace is current again afterwards."""
    path = ws / "src" / "svdzoo" / module
    before = path.read_bytes()
    path.write_bytes(before + b"\n# edited by a test\n")
    try:
        yield
    finally:
        path.write_bytes(before)


def test_editing_code_reruns_what_runs_it(micro_ws):
    """Issue 14.1: each rule's params hold the hash of the svdzoo source it runs. Planned
    (dry runs): what a plan holds is what runs, and running it is the other tests' job."""
    params = {**MICRO, "ratios": ["0.40", "0.60"]}
    write_params(micro_ws, params)
    # a method module no configured method lives in: nothing
    with edited(micro_ws, "methods/svd_llm_v2.py"):
        assert jobs_of(smk(micro_ws, "-n")) == []
    # the module of svd and svd-llm: their compressions, evaluations and the report only
    with edited(micro_ws, "methods/baselines.py"):
        rules = sorted(r for r, _ in jobs_of(smk(micro_ws, "-n")))
    assert rules == ["compress"] * 4 + ["evaluate"] * 4 + ["report"], rules
    # the Gram calibration: the statistics and everything downstream (compress and
    # evaluate can import the calibration package too: the closure is conservative), but
    # not the model or the tasks
    with edited(micro_ws, "calibration/gram.py"):
        rules = {r for r, _ in jobs_of(smk(micro_ws, "-n"))}
    assert {"calibrate", "compress", "evaluate", "report"} <= rules, rules
    assert not rules & {"prepare_model", "build_tasks"}, rules
    # the source as it was: its hash is the recorded one again
    assert jobs_of(smk(micro_ws, "-n")) == []


def test_changing_nsamples_reruns_calibration_and_downstream(micro_ws):
    params = {**MICRO, "ratios": ["0.40", "0.60"]}
    params["calibration"] = {**MICRO["calibration"], "nsamples": 6}
    write_params(micro_ws, params)
    jobs = jobs_of(smk(micro_ws, "-n"))
    rules = sorted(r for r, _ in jobs)
    assert rules == ["calibrate", "compress", "compress", "evaluate", "evaluate", "report"], jobs
    (gram,) = [o for r, o in jobs if r == "calibrate"]
    assert gram == "data/stats/tiny/pydoc-n6-l32-s0/gram", jobs
    # plain SVD reads no statistics: it is not recompressed
    assert all("svd-llm" in o for r, o in jobs if r in ("compress", "evaluate")), jobs
    # the planned calibration runs and makes the new statistics (the jobs after it are
    # those test_adding_a_ratio_runs_only_that_ratio runs)
    assert [r for r, _ in smk_jobs(micro_ws, gram)] == ["calibrate"]
    assert (micro_ws / gram / "manifest.json").is_file()
    write_params(micro_ws, {**MICRO, "ratios": ["0.40", "0.60"]})  # back to the fixture's


# ---------------------------------------------------------------- faults


def test_manifest_mismatch_is_rejected_then_rebuilt(micro_ws):
    """Statistics that claim another model are refused by compress (no output appears);
    forcing the calibration to rerun rebuilds them and the compression then succeeds."""

    params = {**MICRO, "ratios": ["0.40", "0.60", "0.70"]}
    write_params(micro_ws, params)
    manifest = micro_ws / "data/stats/tiny/pydoc-n4-l32-s0/gram/manifest.json"
    data = json.loads(manifest.read_text())
    data["model_fingerprint"] = "0" * len(str(data.get("model_fingerprint", "0" * 16)))
    from svdzoo.calibration.cache import seal

    manifest.write_text(json.dumps(seal(data)))  # sealed: as if computed on another model
    target = "results/compressed/tiny/svd-llm/r0.70"
    out = smk(micro_ws, target, check=False)
    assert "Error in rule compress" in out
    log = (micro_ws / "results/logs/compress/tiny-svd-llm-r0.70.log").read_text()
    assert "another model" in log, log[-2000:]
    assert not (micro_ws / target).exists()
    smk(micro_ws, target, "--forcerun", "calibrate")
    assert (micro_ws / target / "manifest.json").is_file()
    assert json.loads(manifest.read_text())["model_fingerprint"] != data["model_fingerprint"]


def test_job_killed_mid_write_leaves_nothing_complete(micro_ws):
    """SIGKILL the whole snakemake process group while the calibration cache is being
    streamed into its temporary directory: the final directory never appears, the rerun
    plans the job again and completes it."""
    params = {**MICRO, "calibration": {**MICRO["calibration"], "nsamples": 256}}
    write_params(micro_ws, params)
    stats = micro_ws / "data/stats/tiny/pydoc-n256-l32-s0"
    target = stats / "gram"
    proc = subprocess.Popen(
        [str(BIN / "snakemake"), "--cores", "1", str(target.relative_to(micro_ws))],
        cwd=micro_ws,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    caught = False
    deadline = time.monotonic() + 300
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if stats.is_dir() and any(p.name.startswith(".gram.") for p in stats.iterdir()):
                caught = True
                break
            time.sleep(0.01)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert caught, "the calibration finished before it could be killed mid-write"
    assert not target.exists(), "a killed job left its output in place"
    smk(micro_ws, "--unlock")
    jobs = smk_jobs(micro_ws, str(target.relative_to(micro_ws)))
    assert [r for r, _ in jobs] == ["calibrate"]
    assert (target / "manifest.json").is_file()
    write_params(micro_ws, {**MICRO, "ratios": ["0.40", "0.60"]})
