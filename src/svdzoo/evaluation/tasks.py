"""Offline zero-shot tasks for lm-eval, built from held-out text of the offline corpora.

The paper benchmarks (ARC, PIQA, ...) need a download; the default run must not. These
tasks are multiple choice over text the reference models never trained on (the corpus
test split), built deterministically from a seed:

- `<corpus>_continuation`: given a passage cut inside a word, pick its true next
  characters among `n_choices - 1` distractors of the same length cut (also inside a
  word) from elsewhere in the held-out text.
- `<corpus>_wordorder`: given a passage, pick the true next run of words among
  shuffles of the same words (same bytes, so only word order tells them apart).

All choices of a question have the same length in characters, so a model with no
knowledge of the language scores chance (`1 / n_choices`), and `acc_norm` (divided by
length) equals `acc`. The gold position is drawn uniformly at random from the seed.

Layout of a built task directory (movable; works from any working directory):

    <out>/<task>.jsonl        one question a line: {"id", "context", "choices", "gold"}
    <out>/<task>.yaml         lm-eval task config
    <out>/svdzoo_offline.yaml group over every task, aggregated mean accuracy
    <out>/svdzoo_jsonl.py     the loader the YAMLs call
    <out>/tasks_manifest.json seed, sizes, corpora fingerprints

Why a loader module instead of `dataset_path: json` with `data_files`: `datasets`
resolves relative `data_files` against the current working directory, and absolute
paths break when the directory is moved or restored by DVC on another machine. The
YAMLs use `custom_dataset: !function svdzoo_jsonl.load`, which lm-eval resolves next
to the YAML, and the loader finds the JSONL next to itself.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
from dataclasses import dataclass
from pathlib import Path

from svdzoo.errors import SvdzooError
from svdzoo.io import TASKS, atomic_dir

log = logging.getLogger(__name__)

GROUP = "svdzoo_offline"
TASK_KINDS = ("continuation", "wordorder")
TASKS_VERSION = 1

_LOADER = '''"""Loads the JSONL beside this file for the svdzoo offline lm-eval tasks (generated)."""

import json
from pathlib import Path

import datasets


def load(data_file, **_ignored):
    path = Path(__file__).resolve().parent / data_file
    with path.open(encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})
'''


class TaskBuildError(SvdzooError, ValueError):
    pass


@dataclass(frozen=True)
class TaskSpec:
    """Sizes of the questions; the defaults fit the 128-token reference models."""

    n_examples: int = 200
    n_choices: int = 4
    context_chars: int = 96
    continuation_chars: int = 8
    wordorder_words: int = 6

    def validate(self) -> None:
        if self.n_examples < 1:
            raise TaskBuildError("n_examples must be at least 1")
        if self.n_choices < 2:
            raise TaskBuildError("n_choices must be at least 2")
        if self.context_chars < 8 or self.continuation_chars < 4:
            raise TaskBuildError("context_chars must be >= 8 and continuation_chars >= 4")
        if self.wordorder_words < 3:
            raise TaskBuildError("wordorder_words must be at least 3 (fewer has too few orders)")


def task_names(corpora: list[str] | tuple[str, ...]) -> list[str]:
    return [f"{c}_{k}" for c in corpora for k in TASK_KINDS]


def _rng(seed: int, corpus: str, kind: str) -> random.Random:
    """A generator per (seed, corpus, task): adding a corpus never changes another's task."""
    return random.Random(f"svdzoo-tasks:{seed}:{corpus}:{kind}")


def _word_interior(text: str) -> list[int]:
    """Offsets strictly inside a word (alphanumeric on both sides of the cut).

    Cutting inside a word makes the true continuation complete it, which a trained LM
    recognises at once; cutting at word boundaries leaves the choice to how predictable
    each candidate is on its own, and a small LM then scores barely above chance."""
    return [i for i in range(1, len(text)) if text[i - 1].isalnum() and text[i].isalnum()]


def _place(rng: random.Random, true: str, others: list[str]) -> tuple[list[str], int]:
    gold = rng.randrange(len(others) + 1)
    choices = list(others)
    choices.insert(gold, true)
    return choices, gold


def continuation_questions(text: str, spec: TaskSpec, rng: random.Random) -> list[dict]:
    """Context = `context_chars` ending inside a word; choices = the next
    `continuation_chars` (true) or as many chars from other mid-word cuts of the text
    (distractors, not overlapping the true one), all distinct."""
    n, c = spec.continuation_chars, spec.context_chars
    cuts = [i for i in _word_interior(text) if i >= c and i + n <= len(text)]
    if len(cuts) < spec.n_choices * 2:
        raise TaskBuildError(
            f"text too short for continuation questions ({len(text)} chars, {len(cuts)} usable positions)"
        )
    anchors = rng.sample(cuts, min(spec.n_examples, len(cuts)))
    out = []
    for s in anchors:
        true = text[s : s + n]
        distractors: list[str] = []
        for _ in range(100):
            if len(distractors) == spec.n_choices - 1:
                break
            d0 = rng.choice(cuts)
            cand = text[d0 : d0 + n]
            if abs(d0 - s) >= n and cand != true and cand not in distractors:
                distractors.append(cand)
        if len(distractors) < spec.n_choices - 1:
            continue
        choices, gold = _place(rng, true, distractors)
        out.append({"id": len(out), "context": text[s - c : s], "choices": choices, "gold": gold})
    return out


def wordorder_questions(text: str, spec: TaskSpec, rng: random.Random) -> list[dict]:
    """Context = `context_chars` before a run of `wordorder_words` single-space-separated
    words on one line; choices = that run (true) or distinct shuffles of its words."""
    k = spec.wordorder_words
    runs = [
        m.start() for m in re.finditer(rf"(?<=[ \n])(?=\S+(?: \S+){{{k - 1}}}(?=[ \n]|$))", text)
    ]
    runs = [s for s in runs if s >= spec.context_chars]
    if len(runs) < 2:
        raise TaskBuildError(
            f"text has too few runs of {k} words on one line for word-order questions"
        )
    rng.shuffle(runs)
    out: list[dict] = []
    for s in runs:
        if len(out) >= spec.n_examples:
            break
        words = text[s:].split("\n", 1)[0].split(" ")[:k]
        true = " ".join(words)
        shuffles: list[str] = []
        for _ in range(100):
            if len(shuffles) == spec.n_choices - 1:
                break
            perm = words[:]
            rng.shuffle(perm)
            cand = " ".join(perm)
            if cand != true and cand not in shuffles:
                shuffles.append(cand)
        if len(shuffles) < spec.n_choices - 1:
            continue  # too many repeated words to make distinct orders
        choices, gold = _place(rng, true, shuffles)
        out.append(
            {
                "id": len(out),
                "context": text[s - spec.context_chars : s],
                "choices": choices,
                "gold": gold,
            }
        )
    return out


_BUILDERS = {"continuation": continuation_questions, "wordorder": wordorder_questions}


def _task_yaml(task: str, jsonl_name: str) -> str:
    # JSON strings are valid YAML scalars; `!function` needs hand-written YAML anyway.
    return (
        f"# Generated by `svdzoo build-tasks`; see svdzoo.evaluation.tasks.\n"
        f"task: {json.dumps(task)}\n"
        f"custom_dataset: !function svdzoo_jsonl.load\n"
        f"dataset_kwargs:\n  data_file: {json.dumps(jsonl_name)}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        "doc_to_text: context\n"
        "doc_to_choice: choices\n"
        "doc_to_target: gold\n"
        'target_delimiter: ""\n'
        "num_fewshot: 0\n"
        "metric_list:\n"
        "  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
        "  - metric: acc_norm\n    aggregation: mean\n    higher_is_better: true\n"
        f"metadata:\n  version: {TASKS_VERSION}.0\n"
    )


def _group_yaml(tasks: list[str]) -> str:
    lines = [f"group: {GROUP}", "task:"] + [f"  - {json.dumps(t)}" for t in tasks]
    lines += [
        "aggregate_metric_list:",
        "  - metric: acc\n    aggregation: mean\n    weight_by_size: false",
        "  - metric: acc_norm\n    aggregation: mean\n    weight_by_size: false",
        f"metadata:\n  version: {TASKS_VERSION}.0",
    ]
    return "\n".join(lines) + "\n"


def build_tasks(
    out_dir: str | Path,
    texts: dict[str, str],
    *,
    seed: int = 0,
    n_examples: int = 200,
    spec: TaskSpec | None = None,
    force: bool = False,
) -> dict:
    """Write every task for every `{corpus: held-out text}` into `out_dir` (atomically).

    Returns the manifest (also written as `tasks_manifest.json`). An existing `out_dir` is
    replaced only if it is an earlier task directory (or `force`).
    """
    spec = spec or TaskSpec(n_examples=n_examples)
    spec.validate()
    if not texts:
        raise TaskBuildError("no corpora given to build tasks from")
    for name in texts:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
            raise TaskBuildError(f"corpus name {name!r} cannot be used in a task name")
    manifest: dict = {"seed": seed, "spec": spec.__dict__, "version": TASKS_VERSION, "tasks": {}}
    files: dict[str, str] = {"svdzoo_jsonl.py": _LOADER}
    names: list[str] = []
    for corpus, text in texts.items():
        for kind in TASK_KINDS:
            task = f"{corpus}_{kind}"
            questions = _BUILDERS[kind](text, spec, _rng(seed, corpus, kind))
            if not questions:
                raise TaskBuildError(f"{task}: no questions could be built from the text")
            if len(questions) < spec.n_examples:
                log.warning(
                    "%s: only %d of %d questions (text too short)",
                    task,
                    len(questions),
                    spec.n_examples,
                )
            body = "".join(
                json.dumps(q, ensure_ascii=False, sort_keys=True) + "\n" for q in questions
            )
            files[f"{task}.jsonl"] = body
            files[f"{task}.yaml"] = _task_yaml(task, f"{task}.jsonl")
            golds = [q["gold"] for q in questions]
            manifest["tasks"][task] = {
                "corpus": corpus,
                "kind": kind,
                "n": len(questions),
                "chance": 1.0 / spec.n_choices,
                "gold0_fraction": golds.count(0) / len(golds),
                "text_sha256": hashlib.sha256(text.encode()).hexdigest()[:16],
            }
            names.append(task)
            log.info("%s: %d questions", task, len(questions))
    files[f"{GROUP}.yaml"] = _group_yaml(names)
    files["tasks_manifest.json"] = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    with atomic_dir(out_dir, TASKS, force=force) as tmp:
        for fname, content in files.items():
            (tmp / fname).write_text(content, encoding="utf-8")
    return manifest


def read_questions(task_dir: str | Path, task: str) -> list[dict]:
    path = Path(task_dir) / f"{task}.jsonl"
    if not path.exists():
        raise TaskBuildError(f"no task file {path}; run `svdzoo build-tasks` first")
    return [
        json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()
    ]
