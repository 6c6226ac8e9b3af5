# Shared helpers: path patterns from svdzoo.paths.Layout, wildcard constraints, resources.

import os
import shlex
from pathlib import Path

from svdzoo.paths import ratio_tag

CALIB = svdconf.calib_tag(P)
# execution-only flags (device, batch sizes, memory budget) reach each job from the params
# file at run time. The file's path travels in the environment, so the parameter (and the
# shell template) stay constant: neither changing those flags nor switching params files
# (ablations.yaml after params.yaml) reruns a job. Cluster jobs re-read this Snakefile.
os.environ["SVDZOO_EXECUTION"] = str(PARAMS_FILE)


envvars:
    "SVDZOO_EXECUTION",


EXECUTION = '--execution "$SVDZOO_EXECUTION"'
LOCAL_MODELS = svdconf.local_models(P)
STATS_NEEDED = svdconf.needed_stats(P)
OFFLINE_TASKS = svdconf.uses_offline_tasks(P)
NEVER = "(?!)"  # a wildcard constraint that matches nothing


def _alt(names):
    return svdconf.regex_alternation(list(names)) if names else NEVER


def ratio_pattern(path):
    """A Layout path built at ratio 0 with its r0.00 component turned into r{ratio}."""
    tag = ratio_tag(0.0)
    return str(Path(*[("r{ratio}" if part == tag else part) for part in Path(path).parts]))


def res(stage):
    """threads + resources of a stage (params `resources`, else svdzoo.config defaults)."""
    return svdconf.resources(P, stage)


def model_input(model):
    """Input files of a model (its local directory), none for a hub model."""
    return [str(L.model_dir(model))] if model in LOCAL_MODELS else []


def model_arg(model):
    return svdconf.model_arg(P, model, L)


def code(stage, method=None):
    """Hash of the svdzoo source the stage runs (svdzoo.codehash): a param, so editing that
    code reruns the stage (and, through its outputs, what depends on it)."""
    return svdcode.code_hash(stage, method)


def flags(section):
    """A params section as CLI flags, as dvc.yaml's ${section} expansion gives them."""
    return svdconf.cli_line(P.get(section) or {})


def log_path(rule_name, *parts):
    return str(L.results / "logs" / rule_name / ("-".join(parts) + ".log"))


def bench_path(rule_name, *parts):
    """Snakemake's per-job wall time, sampled CPU time and peak memory (benchmarks/bench_default_run.py reads them with the log's usage line)."""
    return str(L.results / "benchmarks" / rule_name / ("-".join(parts) + ".tsv"))


# ---- compress

STATS_FLAGS = {
    "gram": "--stats",
    "fisher": "--fisher",
    "sensitivity-duo": "--sensitivity-duo",
    "sensitivity-asvd": "--sensitivity-asvd",
}


def stats_path(kind, model, method, ratio):
    if kind == "gram":
        return str(L.gram(model, CALIB))
    if kind == "fisher":
        return str(L.fisher(model, CALIB))
    # Duo-SVD's per-ratio protocol reads the table of its own ratio (sensitivity-duo-r0.20)
    return str(L.sensitivity(model, CALIB, svdconf.sensitivity_table(kind, method, ratio)))


def compress_inputs(w):
    needs = sorted(svdconf.method_requirements(w.method))
    return {
        "model": model_input(w.model),
        **{k: stats_path(k, w.model, w.method, w.ratio) for k in needs},
    }


def stats_flags(w, input):
    return " ".join(f"{STATS_FLAGS[k]} {input[k]}" for k in STATS_FLAGS if k in input.keys())


def calibration_flag(w):
    """`--calibration TAG` for methods that read statistics (compress checks every product
    against it); nothing for plain SVD, so a new calibration never recompresses it."""
    return f"--calibration {CALIB}" if svdconf.method_requirements(w.method) else ""


def compressed_output():
    out = directory(ratio_pattern(L.compressed("{model}", "{method}", 0.0)))
    return out if P["keep_compressed"] else temp(out)


# ---- evaluate

def tasks_input():
    return [str(L.tasks())] if OFFLINE_TASKS else []


def task_dir_flag():
    return f"--task-dir {L.tasks()}" if OFFLINE_TASKS else ""


# ---- report

def metric_files():
    """Every metric JSON the configuration asks for (dense + model x method x ratio)."""
    files = []
    for model in P["models"]:
        runs = [(DENSE, 0.0)] + [(m, r) for m in P["methods"] for r in svdconf.ratios(P)]
        for method, ratio in runs:
            files += [
                str(L.ppl(model, method, ratio)),
                str(L.zeroshot(model, method, ratio)),
                str(L.efficiency(model, method, ratio)),
            ]
    return files


def report_outputs():
    return [str(L.metrics_csv), str(L.summary), str(L.tables), str(L.figures), str(L.plots)]


def published_input():
    """The published-numbers CSV when configured (validation checked that it exists)."""
    published = P["report"].get("published")
    return [published] if published else []


def report_params():
    """What the report reads from the params file besides its inputs: a change reruns it."""
    names = {k: s.get("published_name") for k, s in P["models"].items()}
    return f"published={P['report'].get('published')} names={names}"
