"""Zero-shot accuracy with lm-eval on an in-memory model (compressed or dense).

The model object is wrapped by lm-eval's `HFLM` as is (low-rank modules included) and the
tokenizer object is passed explicitly, so nothing reaches for the hub. Offline tasks
(built by `svdzoo build-tasks`) are found through `TaskManager(include_path=task_dir)`;
when every requested task lives there, lm-eval's ~15k bundled task configs are not
indexed at all (that index alone takes ~15 s).

Before any compute, every request of the offline tasks is encoded by lm-eval's own rule
(`TemplateLM._encode_pair`) with the model's tokenizer: a choice that encodes to no token
would stop lm-eval midway with `AssertionError: len(continuation_enc) > 0`, so it is a
clear error up front (it happens with task directories built before `TASKS_VERSION` 2,
which cut inside words, and any BPE or SentencePiece tokenizer); a choice whose tokens
are split differently from `context + choice` (lm-eval then scores a slightly different
string) is a warning.

lm-eval is imported inside the functions: commands that never evaluate zero-shot should
not pay its import time.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

from svdzoo.config import PAPER_TASKS as PAPER_TASKS  # re-exported; defined in config
from svdzoo.errors import SvdzooError
from svdzoo.models import eval_mode

log = logging.getLogger(__name__)

METRICS = ("acc", "acc_stderr", "acc_norm", "acc_norm_stderr")


class ZeroShotError(SvdzooError, ValueError):
    pass


def lm_eval_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lm_eval")
    except PackageNotFoundError:  # pragma: no cover - lm-eval is a dependency
        return "unknown"


def _task_manager(tasks: list[str], task_dir: Path | None):
    """Index only `task_dir` when it holds every requested task; else add lm-eval's own."""
    from lm_eval.tasks import TaskManager

    if task_dir is not None:
        task_dir = Path(task_dir)
        if not task_dir.is_dir():
            what = "is not a directory" if task_dir.exists() else "does not exist"
            raise ZeroShotError(f"task directory {task_dir} {what}; run `svdzoo build-tasks` first")
        local = TaskManager(include_path=str(task_dir), include_defaults=False)
        if all(t in local.all_tasks for t in tasks):
            return local
    tm = TaskManager(include_path=str(task_dir) if task_dir is not None else None)
    unknown = [t for t in tasks if t not in tm.all_tasks]
    if unknown:
        where = f" in {task_dir} or" if task_dir is not None else ""
        broken = _unreadable_yamls(task_dir) if task_dir is not None else []
        why = (
            f"; lm-eval skipped {len(broken)} task file(s) there it could not read: "
            + "; ".join(broken[:3])
            + " (rebuild them: svdzoo build-tasks)"
            if broken
            else ""
        )
        raise ZeroShotError(
            f"unknown zero-shot task(s) {unknown}: not found{where} among lm-eval's tasks{why}"
            + _offline_hint(unknown, task_dir)
        )
    return tm


def _offline_hint(unknown: list[str], task_dir: Path | None) -> str:
    """svdzoo's offline tasks are found only in their task directory (`svdzoo build-tasks`
    writes data/tasks); without `--task-dir` their names were just "not found"."""
    from svdzoo.evaluation.tasks import GROUP, TASK_KINDS

    offline = [t for t in unknown if t == GROUP or t.endswith(tuple(f"_{k}" for k in TASK_KINDS))]
    if not offline or task_dir is not None:
        return ""
    return (
        f"; {', '.join(offline)} {'looks' if len(offline) == 1 else 'look'} like svdzoo's offline tasks: pass their directory with "
        "--task-dir (`task_dir=` in Python; the workflow's is data/tasks, `svdzoo "
        "build-tasks` makes one)"
    )


def _unreadable_yamls(task_dir: Path) -> list[str]:
    """`FILE: error` for each task YAML lm-eval's indexer skips silently (a truncated or
    corrupt file made its task "not found")."""
    try:  # lm-eval's own loader (it knows `!function`); private, so absent in some versions
        from lm_eval.tasks._yaml_loader import load_yaml
    except ImportError:
        return []
    out = []
    for path in sorted(Path(task_dir).glob("*.yaml")):
        try:
            load_yaml(path, resolve_func=False)
        except Exception as exc:  # yaml, OS and decoding errors alike
            first = (str(exc).splitlines() or [""])[0][:120]
            out.append(f"{path.name}: {type(exc).__name__}: {first}")
    return out


def _dataset_of(tm, task: str) -> str | None:
    """`'allenai/ai2_arc' ARC-Easy` for a hub task, read from its YAML (best effort)."""
    try:
        from lm_eval.tasks._yaml_loader import load_yaml

        cfg = load_yaml(tm.task_index[task].yaml_path, resolve_func=False)
    except Exception:  # only used to word an error message
        return None
    path, name = cfg.get("dataset_path"), cfg.get("dataset_name")
    if not path:
        return None
    return f"datasets.load_dataset({path!r}{', ' + repr(name) if name else ''})"


def _load_tasks(tm, tasks: list[str]) -> None:
    """Build every task once up front, so a missing dataset is a clear error before compute."""
    failures: dict[str, BaseException] = {}
    for task in tasks:
        try:
            tm.load([task])
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # datasets raises many types for an uncached/offline dataset
            failures[task] = exc
    if not failures:
        return
    lines = []
    for task, exc in failures.items():
        how = _dataset_of(tm, task)
        lines.append(
            f"  {task}: {type(exc).__name__}: {exc}" + (f"  [download with {how}]" if how else "")
        )
    raise ZeroShotError(
        "could not load the dataset of zero-shot task(s) "
        f"{sorted(failures)} (HF_DATASETS_OFFLINE={os.environ.get('HF_DATASETS_OFFLINE', 'unset')}):\n"
        + "\n".join(lines)
        + "\nHub tasks need their datasets in the local Hugging Face cache when offline: on a "
        "connected machine run the datasets.load_dataset call shown (or `lm_eval --model dummy "
        "--tasks <task> --limit 1`), copy ~/.cache/huggingface to this machine, or use the "
        "offline tasks built by `svdzoo build-tasks`."
    ) from next(iter(failures.values()))


def prepare_tasks(tasks: list[str], task_dir: Path | None):
    """The task manager of `tasks`, every task built once: unknown names, a missing task
    directory or an uncached dataset fail here, so a caller can check before any compute
    (pass the result to `run_zeroshot(task_manager=...)`)."""
    if not tasks:
        raise ZeroShotError("no zero-shot tasks requested")
    if task_dir is not None and Path(task_dir).is_dir():
        from svdzoo.evaluation.tasks import check_task_files

        check_task_files(task_dir, tasks)  # edited or truncated question files
    tm = _task_manager(list(tasks), task_dir)
    _load_tasks(tm, list(tasks))
    return tm


def offline_questions(
    tasks: list[str], task_dir: Path | None, manifest: dict | None = None
) -> dict[str, list[dict]]:
    """The questions of the requested tasks that `build-tasks` made in `task_dir` (the group
    `svdzoo_offline` stands for all of them), as its task manifest (`manifest`, else read
    from `task_dir`) lists them; hub tasks and one's own lm-eval tasks in a directory (a
    `.jsonl` of any format) are left out."""
    from svdzoo.evaluation.tasks import built_task_names, read_questions, read_task_manifest

    if task_dir is None:
        return {}
    if manifest is None:
        manifest = read_task_manifest(task_dir)
    if manifest is None:
        return {}
    return {t: read_questions(task_dir, t) for t in built_task_names(manifest, tasks)}


def check_encodings(lm, questions: dict[str, list[dict]]) -> dict[str, dict]:
    """Encode every `(context, choice)` request of `questions` as lm-eval's HF backend does
    (`lm._encode_pair`: trailing whitespace of the context moves to the continuation, and
    the continuation is the tokens of `context + choice` past `len(encode(context))`).

    Returns `{task: {"choices", "empty", "split", "example"}}`: `empty` counts choices that
    get no token (lm-eval asserts against it), `split` those whose context tokens plus
    continuation tokens differ from the tokens of the whole text (lm-eval would then score
    a different string than intended), `example` is the first such request."""
    from svdzoo.evaluation.tasks import scored_pairs

    out: dict[str, dict] = {}
    for task, qs in questions.items():
        row: dict = {"choices": 0, "empty": 0, "split": 0, "example": None}
        for q in qs:
            for context, continuation in scored_pairs(q):
                context_enc, continuation_enc = lm._encode_pair(context, continuation)
                row["choices"] += 1
                empty = not continuation_enc
                split = context_enc + continuation_enc != lm.tok_encode(context + continuation)
                row["empty"] += empty
                row["split"] += split
                if (empty or split) and row["example"] is None:
                    row["example"] = {
                        "id": q["id"],
                        "context_end": context[-24:],
                        "continuation": continuation,
                    }
        out[task] = row
    return out


def _preflight(lm, tasks: list[str], task_dir: Path | None) -> None:
    """Refuse offline tasks that this tokenizer cannot score (see the module docstring)."""
    from svdzoo.evaluation.tasks import TASKS_VERSION, read_task_manifest

    manifest = read_task_manifest(task_dir) if task_dir is not None else None
    questions = offline_questions(tasks, task_dir, manifest)
    if not questions:
        return
    built = manifest.get("version")
    stale = (
        f" The tasks in {task_dir} were built by version {built} of the task builder; this is"
        f" version {TASKS_VERSION}: rebuild them with `svdzoo build-tasks`."
        if built is not None and built != TASKS_VERSION
        else ""
    )
    report = check_encodings(lm, questions)
    empty = {t: r for t, r in report.items() if r["empty"]}
    if empty:
        lines = [
            f"  {t}: {r['empty']} of {r['choices']} choices, e.g. {r['example']}"
            for t, r in empty.items()
        ]
        raise ZeroShotError(
            "with this tokenizer some choices of the offline tasks encode to no token "
            "(lm-eval would stop with `AssertionError: len(continuation_enc) > 0`):\n"
            + "\n".join(lines)
            + stale
        )
    split = {t: r for t, r in report.items() if r["split"]}
    for t, r in split.items():
        log.warning(
            "%s: for %d of %d choices the tokens of `context + choice` do not split where the "
            "context ends, so lm-eval scores a slightly different text (e.g. %s).%s",
            t,
            r["split"],
            r["choices"],
            r["example"],
            stale,
        )
    if stale and not split:
        log.warning(stale.strip())


def _float(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def summarise(results: dict) -> dict:
    """lm-eval's `results` -> `{"tasks": {task: {acc, acc_stderr, acc_norm, acc_norm_stderr}},
    "groups": {...}, "mean_acc"}`; `mean_acc` is the unweighted mean over leaf tasks."""
    groups = set(results.get("group_subtasks", {})) | set(results.get("groups", {}))
    per_task: dict[str, dict] = {}
    per_group: dict[str, dict] = {}
    for name, vals in results.get("results", {}).items():
        row = {m: _float(vals.get(f"{m},none")) for m in METRICS}
        (per_group if name in groups else per_task)[name] = row
    accs = [r["acc"] for r in per_task.values() if r["acc"] is not None]
    return {
        "tasks": dict(sorted(per_task.items())),
        "groups": dict(sorted(per_group.items())),
        "mean_acc": sum(accs) / len(accs) if accs else None,
    }


def run_zeroshot(
    model,
    tokenizer,
    tasks: list[str],
    *,
    task_dir: Path | None,
    batch_size: int = 8,
    limit: int | float | None = None,
    seed: int = 1234,
    device: str | None = None,
    task_manager: Any = None,
) -> dict:
    """Evaluate `model` on lm-eval `tasks` (names of tasks or groups), zero-shot.

    Returns `{"tasks": {task: {"acc", "acc_stderr", "acc_norm", "acc_norm_stderr"}},
    "groups": {...}, "mean_acc", "lm_eval_version", "n_samples": {task: n}}`.
    """
    if not tasks:
        raise ZeroShotError("no zero-shot tasks requested")
    if batch_size < 1:
        raise ZeroShotError(f"batch_size must be positive, got {batch_size}")
    tasks = list(tasks)
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    tm = task_manager if task_manager is not None else prepare_tasks(tasks, task_dir)
    if device is not None:
        model.to(device)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    with eval_mode(model):
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        log.info("zero-shot: %s (batch %d, limit %s)", ", ".join(tasks), batch_size, limit)
        _preflight(lm, tasks, task_dir)
        results = simple_evaluate(
            model=lm,
            tasks=tasks,
            num_fewshot=0,
            limit=limit,
            task_manager=tm,
            log_samples=False,
            bootstrap_iters=1000,  # acc/acc_norm stderr is closed-form; this caps other metrics
            random_seed=seed,
            numpy_random_seed=seed,
            torch_random_seed=seed,
            fewshot_random_seed=seed,
        )
    if results is None:  # non-zero rank under distributed launch
        raise ZeroShotError("lm-eval returned no results (not rank 0?)")
    out = summarise(results)
    out["lm_eval_version"] = lm_eval_version()
    out["n_samples"] = {t: v.get("effective") for t, v in results.get("n-samples", {}).items()}
    return out
