"""svdzoo: every configured model x method x ratio, compressed, evaluated and reported.

    snakemake --cores all                                    # params.yaml (offline default)
    snakemake --cores all --config params=workflow/configs/paper-llama-7b.yaml

The experiment lives in one params file, validated (svdzoo.config) before any job runs;
paths come from svdzoo.paths.Layout, the scheme dvc.yaml spells out literally. The rules
only call the `svdzoo` CLI. See docs/workflow.md.
"""

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version

from svdzoo import codehash as svdcode
from svdzoo import config as svdconf
from svdzoo.errors import ConfigError
from svdzoo.paths import DENSE, Layout


min_version("9.0")  # benchmark files, the profile format and the rerun triggers used here

PARAMS_FILE = config.get("params", "params.yaml")
try:
    P = svdconf.load_params(PARAMS_FILE)
except ConfigError as exc:
    raise WorkflowError(str(exc)) from None
L = Layout()


include: "workflow/rules/common.smk"


# `snakemake --report report.html`: the figures, tables and metrics of the run (report()
# outputs of the report rule), with the run times and the DAG
report: "workflow/report/workflow.rst"


wildcard_constraints:
    model=_alt(P["models"]),
    method=_alt(P["methods"]),
    ratio=r"[0-9]+\.[0-9]{2}",
    calib=_alt([CALIB]),
    kind=r"duo|asvd|duo-r[0-9]+\.[0-9]{2}",


include: "workflow/rules/data.smk"
include: "workflow/rules/calibrate.smk"
include: "workflow/rules/compress.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        report_outputs(),
    default_target: True


onsuccess:
    # the run's CPU beside its jobs' own usage lines (svdzoo.usage, benchmarks/bench_default_run.py)
    from snakemake.logging import logger as smk_logger

    from svdzoo.usage import scheduler_line

    smk_logger.info(scheduler_line())
    # In a DVC project: the outputs this run made are recorded in dvc.lock, so a following
    # `dvc repro` is a no-op and `dvc exp run -S` reruns only what changes (svdzoo.dvc_track).
    from svdzoo.dvc_track import commit_outputs, recorded_endtimes, rewritten_after_snakemake

    # only what this run's DAG holds and Snakemake has a record of: it made it, or checked
    # it against the current params and code (an output outside the DAG may be from other
    # params, and one without a record, from `dvc repro` or `dvc pull`, was never checked:
    # both are left to `dvc repro`), and not rewritten since Snakemake's job made it (by
    # `dvc exp run`, say)
    records = recorded_endtimes(workflow, [str(f) for job in workflow.dag.jobs for f in job.output])
    commit_outputs(
        PARAMS_FILE,
        produced=[path for path, endtime in records if endtime is not None],
        rewritten=rewritten_after_snakemake(records),
    )
