"""The SLURM profile, run for real (issue 17): a single-node SLURM cluster on this machine
(workflow/scripts/slurm-local.sh), the micro workflow (from its calibration on) submitted
through snakemake-executor-plugin-slurm, every job through sbatch, a job cancelled with
scancel redone by the next run without a partial output ever taken as complete, and outputs
equal to a local run.

Needs root and Debian's slurm-wlm and munge (`run.sh test` installs them in CI and sets
SVDZOO_REQUIRE_SLURM, so there a missing cluster fails instead of skipping)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from test_workflow import BIN, ROOT, _env, jobs_of, run

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

SCRIPT = ROOT / "workflow" / "scripts" / "slurm-local.sh"
PROFILE = ("--workflow-profile", "workflow/profiles/slurm",
           "--profile", "workflow/profiles/slurm-local")  # fmt: skip


@pytest.fixture(scope="module")
def cluster():
    have = all(shutil.which(c) for c in ("slurmctld", "slurmd", "munged", "sbatch"))
    if not have or os.geteuid() != 0:
        if os.environ.get("SVDZOO_REQUIRE_SLURM"):
            pytest.fail("slurm-wlm and munge (apt-get install -y slurm-wlm munge) and root needed")
        pytest.skip("no local SLURM (apt-get install -y slurm-wlm munge; run as root)")
    status = subprocess.run(["bash", str(SCRIPT), "status"], capture_output=True)
    start = subprocess.run(["bash", str(SCRIPT), "start"], capture_output=True, text=True)
    assert start.returncode == 0, start.stderr
    yield
    if status.returncode != 0:  # stop only what this test started
        subprocess.run(["bash", str(SCRIPT), "stop"], capture_output=True)


def squeue(*args: str) -> list[list[str]]:
    out = subprocess.run(["squeue", "-h", *args], capture_output=True, text=True, check=True)
    return [line.split() for line in out.stdout.splitlines()]


def submitted(out: str) -> list[str]:
    return re.findall(r"has been submitted with SLURM jobid (\d+)", out)


def results(ws: Path) -> dict[str, object]:
    """What a run computed: perplexities, accuracies and the compressed weights' bytes
    (timings and throughput differ between any two runs)."""
    out: dict[str, object] = {}
    for path in sorted((ws / "results" / "metrics").rglob("*.json")):
        obj = json.loads(path.read_text())
        key = str(path.relative_to(ws))
        if path.name == "ppl.json":
            out[key] = obj["perplexity"]
        elif path.name == "zeroshot.json":
            out[key] = {t: v["acc"] for t, v in obj["tasks"].items()}
    for path in sorted((ws / "results" / "compressed").rglob("*.safetensors")):
        out[str(path.relative_to(ws))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


# What the SLURM runs redo of the micro run: the calibration and every job after it
# (svd-llm's compression and evaluation, the report). The model, the tasks and the dense
# and svd evaluations stay the local run's: each job costs a Snakemake and an svdzoo start
# on the node, and these four are the kinds the others repeat.
REDONE = (
    "data/stats",
    "results/compressed/tiny/svd-llm",
    "results/metrics/tiny/svd-llm",
    "results/metrics.csv",
)
TARGET = Path("results/compressed/tiny/svd-llm/r0.40")


def cancel_compression(proc: subprocess.Popen, timeout: float = 300) -> str:
    """scancel svd-llm's compression once it runs on the node; its SLURM job id."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        for job_id, state, comment in squeue("-o", "%i %T %k"):
            if state == "RUNNING" and "compress" in comment and "svd-llm" in comment:
                time.sleep(1.0)  # the job's snakemake and svdzoo have started
                subprocess.run(["scancel", job_id], check=True)
                return job_id
        time.sleep(0.2)
    pytest.fail("no running svd-llm compression to cancel")


@pytest.fixture(scope="module")
def slurm_run(cluster, micro_run, tmp_path_factory) -> dict[str, object]:
    """Two SLURM runs of the micro run's copy, calibration on: the first has its svd-llm
    compression cancelled with scancel while it runs, the second finishes what is left.
    Every job of either goes through sbatch (one run of all four jobs and a second one
    after the cancellation took twice the cluster time)."""
    ws = tmp_path_factory.mktemp("slurm") / "ws"
    shutil.copytree(micro_run, ws, symlinks=True)
    for rel in REDONE:
        path = ws / rel
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    with (ws / "cancelled.log").open("w") as log:
        proc = subprocess.Popen(
            [str(BIN / "snakemake"), *PROFILE, "--retries", "0"],
            cwd=ws, env=_env(), stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            cancelled = cancel_compression(proc)
            returncode = proc.wait(timeout=600)
        finally:
            if proc.poll() is None:
                proc.kill()
    first = (ws / "cancelled.log").read_text()
    left = TARGET.as_posix() if (ws / TARGET).exists() else None  # before the next run
    second = run(ws, str(BIN / "snakemake"), *PROFILE, timeout=900)
    return dict(ws=ws, first=first, returncode=returncode, cancelled=cancelled,
                left=left, second=second)  # fmt: skip


def test_every_job_goes_through_sbatch(slurm_run):
    first, second = slurm_run["first"], slurm_run["second"]
    assert sorted(r for r, _ in jobs_of(first)) == ["calibrate", "compress"], first[-3000:]
    assert sorted(r for r, _ in jobs_of(second)) == ["compress", "evaluate", "report"], second
    for out in (first, second):
        assert len(submitted(out)) == len(jobs_of(out)), out[-3000:]
    # the cluster's own record: every one of them ran there, and all but one completed
    ids = submitted(first) + submitted(second)
    states = {i: s for i, s in squeue("-t", "all", "-j", ",".join(ids), "-o", "%i %T")}
    want = dict.fromkeys(ids, "COMPLETED") | {slurm_run["cancelled"]: "CANCELLED"}
    assert states == want, states
    assert (slurm_run["ws"] / "results" / "metrics.csv").is_file()


def test_outputs_equal_a_local_run(slurm_run, micro_run):
    assert results(slurm_run["ws"]) == results(micro_run) != {}


def test_a_cancelled_job_is_redone(slurm_run):
    """scancel a running compression: the run fails, no output of that job is left to be
    taken as done, and the next run redoes it and what depends on it."""
    assert slurm_run["returncode"] != 0  # the run reports the failed job
    assert "CANCELLED" in slurm_run["first"]
    assert slurm_run["left"] is None  # nothing of the cancelled job is left
    ws = slurm_run["ws"]
    assert "Nothing to be done" in run(ws, str(BIN / "snakemake"), *PROFILE, "-n")
