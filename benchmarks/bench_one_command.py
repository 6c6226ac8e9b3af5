"""One command against the separate steps, on the real model: `svdzoo calibrate-compress`
against `svdzoo calibrate` then `svdzoo compress` (and `svdzoo sensitivity` where the
method needs a table), each process on one thread, in fresh directories.

It records each process's CPU seconds and peak RSS (`os.wait4`), checks that the two paths
give the same statistics and the same compressed weights (sha256), then runs the one
command again to time a call that finds its caches, and writes

    benchmarks/results/one-command.csv   one row per method, path and step
    benchmarks/results/one-command.md    the table, and whether the bytes agreed

    python benchmarks/bench_one_command.py [--methods svd-llm fwsvd] [--ratio 0.20]

The model is SmolLM2-135M from its PyPI wheel (`svdzoo.pretrained`, cached per machine).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pandas as pd

from svdzoo.io import write_text
from svdzoo.paths import Layout, calib_tag

OUT = Path(__file__).resolve().parent / "results" / "one-command"
CALIB = dict(corpus="pydoc", nsamples=8, seqlen=256, seed=3)
SENS_NSAMPLES = 1  # the default run's table windows (params.yaml)


def timed(argv: list[str], cwd: Path) -> dict[str, float]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    t0 = time.perf_counter()
    with open(cwd / "log.txt", "ab") as f:
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(argv)} failed; see {cwd / 'log.txt'}")
    return {
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
        "wall_s": round(time.perf_counter() - t0, 2),
        "max_rss_mb": round(usage.ru_maxrss / 1024),
    }


def digest(directory: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(directory.glob("*.safetensors")) + sorted(directory.glob("table.json")):
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def calib_flags() -> list[str]:
    return [f"--{k}={v}" for k, v in CALIB.items()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", nargs="+", default=["svd-llm", "fwsvd"])
    ap.add_argument("--ratio", default="0.20")
    args = ap.parse_args()
    from svdzoo.methods import get_method
    from svdzoo.pretrained import PYPI_MODELS, cached_pypi_model

    model = str(cached_pypi_model(PYPI_MODELS["smollm2-135m"], name="smollm2-135m"))
    name, tag = "smollm2-135m", calib_tag(**CALIB)
    rows, agree = [], {}
    for method in args.methods:
        needs = get_method(method).needs
        with tempfile.TemporaryDirectory() as tmp:
            one, steps = Path(tmp, "one"), Path(tmp, "steps")
            one.mkdir(), steps.mkdir()
            cmd = ["svdzoo", "calibrate-compress", "--model", model, "--model-name", name,
                   "--method", method, "--ratio", args.ratio, "--out", "out", *calib_flags(),
                   "--sensitivity-nsamples", str(SENS_NSAMPLES)]  # fmt: skip
            rows.append({"method": method, "path": "one command", "step": "all",
                         **timed(cmd, one)})  # fmt: skip
            rows.append({"method": method, "path": "one command, caches found", "step": "all",
                         **timed(cmd, one)})  # fmt: skip
            lay = Layout(steps)
            compress = ["svdzoo", "compress", "--model", model, "--method", method,
                        "--ratio", args.ratio, "--out", "out"]  # fmt: skip
            if needs & {"gram", "sensitivity-duo", "sensitivity-asvd"}:
                gram = lay.gram(name, tag)
                step = ["svdzoo", "calibrate", "--model", model, "--model-name", name,
                        *calib_flags(), "--out", str(gram)]  # fmt: skip
                rows.append({"method": method, "path": "steps", "step": "calibrate",
                             **timed(step, steps)})  # fmt: skip
                compress += ["--stats", str(gram)]
            if "fisher" in needs:
                fisher = lay.fisher(name, tag)
                step = ["svdzoo", "calibrate", "--kind", "fisher", "--model", model,
                        "--model-name", name, *calib_flags(), "--out", str(fisher)]  # fmt: skip
                rows.append({"method": method, "path": "steps", "step": "calibrate fisher",
                             **timed(step, steps)})  # fmt: skip
                compress += ["--fisher", str(fisher)]
            for kind in ("duo", "asvd"):
                if f"sensitivity-{kind}" in needs:
                    table = lay.sensitivity(name, tag, kind)
                    step = ["svdzoo", "sensitivity", "--model", model, "--stats", str(gram),
                            "--kind", kind, "--nsamples", str(SENS_NSAMPLES), "--out", str(table)]  # fmt: skip
                    rows.append({"method": method, "path": "steps", "step": f"sensitivity {kind}",
                                 **timed(step, steps)})  # fmt: skip
                    compress += [f"--sensitivity-{kind}", str(table)]
            rows.append({"method": method, "path": "steps", "step": "compress",
                         **timed(compress, steps)})  # fmt: skip
            pairs = [("compressed model", one / "out", steps / "out")]
            for stats in sorted((steps / "data/stats" / name / tag).iterdir()):
                pairs.append((stats.name, one / "data/stats" / name / tag / stats.name, stats))
            agree[method] = {what: digest(a) == digest(b) for what, a, b in pairs}
            shutil.rmtree(tmp, ignore_errors=True)
    df = pd.DataFrame(rows)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    write_text(OUT.with_suffix(".csv"), df.to_csv(index=False))
    totals = df.groupby(["method", "path"], sort=False)[["cpu_s", "wall_s"]].sum().reset_index()
    lines = [
        f"# One command against the separate steps (SmolLM2-135M, ratio {args.ratio}, "
        f"{tag}, sensitivity windows {SENS_NSAMPLES}; one thread per process; "
        f"{platform.node()}, {time.strftime('%Y-%m-%d')})",
        "",
        "`python benchmarks/bench_one_command.py`. Each process on one thread, one after "
        "another, each path in a fresh directory.",
        "",
        "## Each process",
        "",
        df.to_markdown(index=False),
        "",
        "## Per path",
        "",
        totals.to_markdown(index=False),
        "",
        "## Same bytes (sha256 of the weights, statistics and tables)",
        "",
    ]
    for method, checks in agree.items():
        lines.append(
            f"- {method}: " + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in checks.items())
        )
    write_text(OUT.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
