"""Offline zero-shot tasks for lm-eval, built from held-out text of the offline corpora.

The paper benchmarks (ARC, PIQA, ...) need a download; the default run must not. These
tasks are multiple choice over the corpus test split (documents the reference models
never trained on; but pydoc's 79 topics repeat some paragraphs across topics, so 12 of
its test split's 66 paragraphs longer than 80 characters, 17 % of its characters, also
appear verbatim in train: docs/results.md), built deterministically from a seed:

- `<corpus>_continuation`: given the `continuation_chars` that follow a word boundary,
  pick the passage (`context_chars`) they continue, among `n_choices - 1` passages of
  the same length that end at other word boundaries of the held-out text. lm-eval scores
  the same continuation after each passage (a multiple-input task, like Winogrande).
- `<corpus>_wordorder`: given a passage, pick the true next run of `wordorder_words`
  words among shuffles of the same words (same bytes, so only word order tells them
  apart).

Every question is cut at a word boundary: the text before the cut ends on a non-space
character and the scored text after it starts with one space and a non-space character
(`" value to"`, never `"lue to"`). That is what makes the tasks valid for any tokenizer.
lm-eval's HF backend (`TemplateLM._encode_pair`) moves the context's trailing whitespace
onto the continuation, encodes `context` and `context + continuation` separately, takes
the tokens of the whole past `len(encode(context))` as the continuation, and feeds
`encode(context) + those tokens` to the model (asserting there is at least one). That
is the intended text only when the tokens of the whole split exactly where the context
ends. Byte-level tokenizers always do; BPE and SentencePiece tokenizers merge across a
cut inside a word (`"...the val" + "ue"` is one token `" value"`), and then the
continuation comes out empty (`AssertionError: len(continuation_enc) > 0`, which stopped
SmolLM2 after 32 requests on `TASKS_VERSION` 1) or silently loses or repeats characters.
A space before a non-space starts a new pre-token in GPT-2-style byte-level BPE (GPT-2,
SmolLM2, Llama 3, Qwen) and a new `▁piece` in SentencePiece, so nothing merges across
it and the continuation keeps its own tokens. A newline is no such boundary (Llama 3's
pre-tokenizer keeps `":\n"` together), so it is never the cut. `target_delimiter` is
`""`: lm-eval joins context and continuation as stored.

Why the continuation task asks for the passage rather than for the next text (version 1
asked "which of these pieces comes next" with the cut inside a word): the mid-word cut
made the true piece the only one that completes the word, a check a small LM passes
easily, but no word-boundary choice carries that signal, and giving every choice the
same word stem does not bring it back under BPE: the true choice then completes a real
word and the distractors do not, so it has fewer tokens, and an untrained model, whose
every token costs about `log(vocab)`, picks it far above chance. With next-text choices
cut at a word boundary, a small LM's sum of log-probabilities is dominated by how likely
each piece is on its own, not by how well it fits the passage: the trained 2-layer
reference LLaMA scored 0.35 (pydoc) and 0.25 (pysource) with 8 characters, 0.30 and
0.22 with 24 (chance 0.25; 100 questions each). Scoring one continuation after
different passages cancels what the continuation costs on its own and leaves only the
fit. Measured through lm-eval (seed 0, test splits, 200 questions each; pydoc is the
reference models' training corpus, pysource is not), continuation accuracy on pydoc /
pysource:

    continuation_chars        8 (default)    32
    reference LLaMA           0.49 / 0.41    0.58 / 0.39
    reference OPT             0.54 / 0.44    0.62 / 0.54
    untrained, byte or BPE    0.17 - 0.35 per task, mean over tasks 0.235 - 0.249
    SmolLM2-135M-Instruct     0.90 / 0.94    0.96 / 1.00   (50 questions each)

(word order: LLaMA 0.87 / 0.66, OPT 0.58 / 0.50, SmolLM2 0.98 / 1.00). Longer
continuations help the small models and push SmolLM2 to the ceiling. The price of
being valid for every tokenizer: version 1's mid-word continuation task gave the
reference LLaMA 0.83 / 0.62 (it cannot be scored with BPE at all).

All passages of a question (and all choices of a word-order question) have the same
length in characters and are drawn the same way from the text (word order: the same
words), so a model with no knowledge of the language scores chance (`1 / n_choices`)
in expectation under any tokenizer, and `acc_norm` (divided by length in characters)
equals `acc`. The gold position is drawn uniformly at random from the seed.

Layout of a built task directory (movable; works from any working directory):

    <out>/<task>.jsonl        one question a line: {"id", "choices", "gold"} and, for
                              continuation, "continuation" (choices are passages), for
                              wordorder, "context" (choices are word runs)
    <out>/<task>.yaml         lm-eval task config
    <out>/svdzoo_offline.yaml group over every task, aggregated mean accuracy
    <out>/svdzoo_jsonl.py     the loader the YAMLs call
    <out>/tasks_manifest.json seed, sizes, corpora fingerprints, version

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
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from svdzoo.errors import SvdzooError
from svdzoo.io import TASKS, atomic_dir, read_json_object

log = logging.getLogger(__name__)

GROUP = "svdzoo_offline"
TASK_KINDS = ("continuation", "wordorder")
TASKS_VERSION = 2
MANIFEST = "tasks_manifest.json"
LOADER = "svdzoo_jsonl.py"  # the dataset loader every task YAML names
# lm-eval scores `context + TARGET_DELIMITER + continuation`; the scored text carries its own
# leading space.
TARGET_DELIMITER = ""

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


def _word_starts(text: str) -> list[int]:
    """Offsets of a single space between two non-space characters: the cut points.

    The context ends on the non-space character before it, and the choice starts with the
    space (see the module docstring for why no tokenizer merges across it)."""
    return [m.start() for m in re.finditer(r"(?<=\S) (?=\S)", text)]


def _place(rng: random.Random, true: str, others: list[str]) -> tuple[list[str], int]:
    gold = rng.randrange(len(others) + 1)
    choices = list(others)
    choices.insert(gold, true)
    return choices, gold


def continuation_questions(text: str, spec: TaskSpec, rng: random.Random) -> list[dict]:
    """Continuation = the `continuation_chars` after a word boundary (starting with the
    space); choices = the `context_chars` before it (true) or before another word boundary
    of the text (distractors: not overlapping the true passage and its continuation, and
    never followed by the continuation anywhere in the text), all distinct."""
    n, c = spec.continuation_chars, spec.context_chars
    cuts = [i for i in _word_starts(text) if i >= c and i + n <= len(text)]
    if len(cuts) < spec.n_choices * 2:
        raise TaskBuildError(
            f"text too short for continuation questions ({len(text)} chars, {len(cuts)} usable positions)"
        )
    anchors = rng.sample(cuts, min(spec.n_examples, len(cuts)))
    out = []
    for s in anchors:
        true, continuation = text[s - c : s], text[s : s + n]
        distractors: list[str] = []
        for _ in range(100):
            if len(distractors) == spec.n_choices - 1:
                break
            d0 = rng.choice(cuts)
            cand = text[d0 - c : d0]
            if (
                abs(d0 - s) >= c + n
                and cand != true
                and cand not in distractors
                and cand + continuation not in text  # then it would be right too
            ):
                distractors.append(cand)
        if len(distractors) < spec.n_choices - 1:
            continue
        choices, gold = _place(rng, true, distractors)
        out.append({"id": len(out), "choices": choices, "continuation": continuation, "gold": gold})
    return out


def wordorder_questions(text: str, spec: TaskSpec, rng: random.Random) -> list[dict]:
    """Context = the `context_chars` before a run of `wordorder_words` single-space-separated
    words on one line (the context ends on a non-space character of that line); choices =
    `" " + the run` (true) or `" " + a distinct shuffle of its words` that the text never
    follows the context with (else it would be right too)."""
    k = spec.wordorder_words
    pattern = rf"(?<=\S)(?= (\S+(?: \S+){{{k - 1}}})(?!\S))"
    runs = [(m.start(), m.group(1)) for m in re.finditer(pattern, text)]
    runs = [(s, run) for s, run in runs if s >= spec.context_chars]
    if len(runs) < 2:
        raise TaskBuildError(
            f"text has too few runs of {k} words on one line for word-order questions"
        )
    rng.shuffle(runs)
    out: list[dict] = []
    for s, run in runs:
        if len(out) >= spec.n_examples:
            break
        words = run.split(" ")
        true = " " + run
        context = text[s - spec.context_chars : s]
        shuffles: list[str] = []
        for _ in range(100):
            if len(shuffles) == spec.n_choices - 1:
                break
            perm = words[:]
            rng.shuffle(perm)
            cand = " " + " ".join(perm)
            if (
                cand != true
                and cand not in shuffles
                and context + cand not in text  # then it would be right too
            ):
                shuffles.append(cand)
        if len(shuffles) < spec.n_choices - 1:
            continue  # too many repeated words to make distinct orders
        choices, gold = _place(rng, true, shuffles)
        out.append(
            {
                "id": len(out),
                "context": context,
                "choices": choices,
                "gold": gold,
            }
        )
    return out


_BUILDERS = {"continuation": continuation_questions, "wordorder": wordorder_questions}


# lm-eval's fields per task kind: `continuation` has several inputs (the passages, like
# Winogrande: `doc_to_text` gives the gold index, so lm-eval scores `doc_to_target` after each
# choice), `wordorder` several answers after one `context`.
_FIELDS = {
    "continuation": {
        "doc_to_text": "gold",
        "doc_to_choice": "choices",
        "doc_to_target": "continuation",
    },
    "wordorder": {"doc_to_text": "context", "doc_to_choice": "choices", "doc_to_target": "gold"},
}


def scored_pairs(question: dict) -> list[tuple[str, str]]:
    """The `(context, continuation)` strings lm-eval scores for a question, one per choice: a
    `continuation` question scores its continuation after each passage, the others each
    choice after the context."""
    if "continuation" in question:
        return [(p, TARGET_DELIMITER + question["continuation"]) for p in question["choices"]]
    return [(question["context"], TARGET_DELIMITER + c) for c in question["choices"]]


def _task_yaml(task: str, kind: str, jsonl_name: str) -> str:
    # JSON strings are valid YAML scalars; `!function` needs hand-written YAML anyway.
    fields = "".join(f"{k}: {v}\n" for k, v in _FIELDS[kind].items())
    return (
        f"# Generated by `svdzoo build-tasks`; see svdzoo.evaluation.tasks.\n"
        f"task: {json.dumps(task)}\n"
        f"custom_dataset: !function svdzoo_jsonl.load\n"
        f"dataset_kwargs:\n  data_file: {json.dumps(jsonl_name)}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        f"{fields}"
        f"target_delimiter: {json.dumps(TARGET_DELIMITER)}\n"
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
    protect: Iterable[str | Path | None] = (),
) -> dict:
    """Write every task for every `{corpus: held-out text}` into `out_dir` (atomically).

    Returns the manifest (also written as `tasks_manifest.json`). An existing `out_dir` is
    replaced only if it is an earlier task directory (or `force`), and never one of
    `protect` (the corpus files), force or not.
    """
    spec = spec or TaskSpec(n_examples=n_examples)
    spec.validate()
    if not texts:
        raise TaskBuildError("no corpora given to build tasks from")
    for name in texts:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
            raise TaskBuildError(f"corpus name {name!r} cannot be used in a task name")
    manifest: dict = {"seed": seed, "spec": spec.__dict__, "version": TASKS_VERSION, "tasks": {}}
    files: dict[str, str] = {LOADER: _LOADER}
    names: list[str] = []
    short: list[str] = []
    for corpus, text in texts.items():
        for kind in TASK_KINDS:
            task = f"{corpus}_{kind}"
            questions = _BUILDERS[kind](text, spec, _rng(seed, corpus, kind))
            if not questions:
                raise TaskBuildError(f"{task}: no questions could be built from the text")
            if len(questions) < spec.n_examples:
                short.append(f"{task} {len(questions)}")
            body = "".join(
                json.dumps(q, ensure_ascii=False, sort_keys=True) + "\n" for q in questions
            )
            files[f"{task}.jsonl"] = body
            files[f"{task}.yaml"] = _task_yaml(task, kind, f"{task}.jsonl")
            golds = [q["gold"] for q in questions]
            manifest["tasks"][task] = {
                "corpus": corpus,
                "kind": kind,
                "n": len(questions),
                "chance": 1.0 / spec.n_choices,
                "gold0_fraction": golds.count(0) / len(golds),
                "text_sha256": hashlib.sha256(text.encode()).hexdigest()[:16],
                # the files as written: an edited or truncated question file was scored
                # silently on other questions (`check_task_files`)
                "sha256": _sha256(files[f"{task}.jsonl"]),
                "yaml_sha256": _sha256(files[f"{task}.yaml"]),
            }
            names.append(task)
            log.info("%s: %d questions", task, len(questions))
    if short:
        # fewer questions than asked for was a logged warning, and a task of 3 questions
        # then stood in the tables beside tasks of 200 with nothing to tell them apart
        raise TaskBuildError(
            f"the text is too short for {spec.n_examples} questions per task: "
            f"{', '.join(short)} can be built; lower n_examples (`--n-examples`, "
            "`offline_tasks: n-examples`) or use a longer text; nothing was written"
        )
    files[f"{GROUP}.yaml"] = _group_yaml(names)
    # what lm-eval runs for every task: the loader and the group
    manifest["support_sha256"] = {f: _sha256(files[f]) for f in (LOADER, f"{GROUP}.yaml")}
    files[MANIFEST] = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    with atomic_dir(out_dir, TASKS, force=force, protect=protect) as tmp:
        for fname, content in files.items():
            (tmp / fname).write_bytes(content.encode("utf-8"))  # the bytes that were hashed
    return manifest


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


_REBUILD = "rebuild the tasks with `svdzoo build-tasks`"


def read_task_manifest(task_dir: str | Path) -> dict | None:
    """The manifest `build_tasks` wrote in `task_dir`, its `tasks` a dict; None where there
    is none (one's own lm-eval tasks). The one reader of it: the file check before the
    model loads and the tokenizer check after both go through here. TaskBuildError naming
    the file when it is damaged."""
    mpath = Path(task_dir) / MANIFEST
    if not mpath.exists():
        return None
    manifest = read_json_object(mpath, TaskBuildError, _REBUILD, kind="a task manifest")
    if not isinstance(manifest.get("tasks"), dict):
        raise TaskBuildError(f"{mpath}: not a task manifest; {_REBUILD}")
    return manifest


def built_task_names(manifest: dict, tasks: Iterable[str]) -> list[str]:
    """Which of `tasks` the manifest's directory built (the group stands for all)."""
    built, tasks = manifest["tasks"], set(tasks)
    return sorted(set(built) if GROUP in tasks else tasks & set(built))


def check_task_files(task_dir: str | Path, tasks: Iterable[str]) -> None:
    """The requested offline tasks' files are the ones `build_tasks` wrote (their sha256 in
    the manifest), checked before any model loads. TaskBuildError naming the file otherwise:
    a question file cut to 2 lines was scored on 2 questions while the manifest said 15. A
    directory without a task manifest (one's own lm-eval tasks) is not checked."""
    task_dir = Path(task_dir)
    manifest = read_task_manifest(task_dir)
    if manifest is None:
        return
    mpath, rebuild, built = task_dir / MANIFEST, _REBUILD, manifest["tasks"]
    wanted = built_task_names(manifest, tasks)
    if not wanted:
        return
    support = manifest.get("support_sha256")
    if not isinstance(support, dict):
        raise TaskBuildError(
            f"{mpath} records no support_sha256 (built by an older svdzoo); {rebuild}"
        )
    expected = dict(support)
    for task in wanted:
        info = built[task] if isinstance(built[task], dict) else {}
        for suffix, key in ((".jsonl", "sha256"), (".yaml", "yaml_sha256")):
            if info.get(key) is None:
                raise TaskBuildError(
                    f"{mpath} records no {key} for {task} (built by an older svdzoo); {rebuild}"
                )
            expected[f"{task}{suffix}"] = info[key]
    for name, want in expected.items():
        path = task_dir / name
        if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != want:
            raise TaskBuildError(
                f"{path} is not the file build-tasks wrote (edited, truncated, replaced or "
                f"missing); {rebuild}"
            )


def read_questions(task_dir: str | Path, task: str) -> list[dict]:
    path = Path(task_dir) / f"{task}.jsonl"
    if not path.exists():
        raise TaskBuildError(f"no task file {path}; run `svdzoo build-tasks` first")
    # "\n" only, as lm-eval reads the file: `splitlines` would also split at U+2028/U+2029/
    # U+0085, which the task files hold unescaped (`ensure_ascii=False`)
    lines = path.read_text(encoding="utf-8").split("\n")
    return [json.loads(line) for line in lines if line.strip()]
