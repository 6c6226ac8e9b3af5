"""Offline lm-eval tasks: deterministic build, sound questions, real lm-eval scoring."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import json
from pathlib import Path

import pytest

from svdzoo.evaluation.tasks import (
    GROUP,
    TaskBuildError,
    TaskSpec,
    build_tasks,
    read_questions,
    scored_pairs,
    task_names,
)

_SENTENCES = [
    "the quick brown fox jumps over the lazy dog near the river bank today",
    "a function returns a value to its caller when the body has finished running",
    "every object has an identity a type and a value that may change over time",
    "lists are mutable sequences while tuples cannot be changed once they are built",
    "the interpreter reads each line of source and compiles it to byte code first",
]


def _text(n_lines: int = 400, salt: int = 0) -> str:
    lines = []
    for i in range(n_lines):
        s = _SENTENCES[(i * 7 + salt) % len(_SENTENCES)].split()
        rot = (i * 3) % len(s)
        lines.append(f"{i}: " + " ".join(s[rot:] + s[:rot]))
    return "\n".join(lines)


TEXTS = {"alpha": _text(), "beta": _text(salt=2)}
N = 60


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tasks") / "tasks"
    build_tasks(out, TEXTS, seed=3, n_examples=N)
    return out


def test_build_is_deterministic_and_seeded(task_dir: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    build_tasks(again, TEXTS, seed=3, n_examples=N)
    other = tmp_path / "other"
    build_tasks(other, TEXTS, seed=4, n_examples=N)
    names = sorted(p.name for p in task_dir.iterdir())
    assert names == sorted(p.name for p in again.iterdir())
    for name in names:
        assert (task_dir / name).read_bytes() == (again / name).read_bytes(), name
    assert (task_dir / "alpha_continuation.jsonl").read_bytes() != (
        other / "alpha_continuation.jsonl"
    ).read_bytes()
    # a corpus's questions do not depend on which other corpora are built beside it
    alone = tmp_path / "alone"
    build_tasks(alone, {"alpha": TEXTS["alpha"]}, seed=3, n_examples=N)
    assert (alone / "alpha_wordorder.jsonl").read_bytes() == (
        task_dir / "alpha_wordorder.jsonl"
    ).read_bytes()


def test_files_and_group(task_dir: Path) -> None:
    for task in task_names(list(TEXTS)):
        assert (task_dir / f"{task}.jsonl").exists() and (task_dir / f"{task}.yaml").exists()
        yaml_text = (task_dir / f"{task}.yaml").read_text()
        assert "output_type: multiple_choice" in yaml_text and "acc_norm" in yaml_text
    group = (task_dir / f"{GROUP}.yaml").read_text()
    assert all(t in group for t in task_names(list(TEXTS)))
    manifest = json.loads((task_dir / "tasks_manifest.json").read_text())
    assert manifest["seed"] == 3 and set(manifest["tasks"]) == set(task_names(list(TEXTS)))


def _cut_at_word_boundary(q: dict) -> None:
    """Every scored pair ends its context on a non-space and starts its continuation with one
    space then a non-space: no tokenizer merges across that cut (test_tasks_tokenizers.py)."""
    for context, continuation in scored_pairs(q):
        assert not context[-1].isspace(), context
        assert continuation[0] == " " and not continuation[1].isspace(), continuation


def test_continuation_questions_are_sound(task_dir: Path) -> None:
    qs = read_questions(task_dir, "alpha_continuation")
    assert len(qs) == N
    text, spec = TEXTS["alpha"], TaskSpec()
    for q in qs:
        passages, gold, continuation = q["choices"], q["gold"], q["continuation"]
        assert len(passages) == 4 and 0 <= gold < 4
        assert len(set(passages)) == 4, "choices must be distinct"
        assert {len(p) for p in passages} == {spec.context_chars}, "equal lengths: blind = chance"
        assert len(continuation) == spec.continuation_chars
        assert passages[gold] + continuation in text
        for i, p in enumerate(passages):
            assert p in text, "distractors are real text too"
            assert i == gold or p + continuation not in text, "only the gold one is right"
        assert scored_pairs(q) == [(p, continuation) for p in passages]
        _cut_at_word_boundary(q)


def test_wordorder_questions_are_permutations(task_dir: Path) -> None:
    qs = read_questions(task_dir, "beta_wordorder")
    assert len(qs) == N
    for q in qs:
        words = sorted(q["choices"][q["gold"]][1:].split(" "))
        assert len(words) == TaskSpec().wordorder_words
        assert len(q["context"]) == TaskSpec().context_chars
        assert len(q["choices"]) == len(set(q["choices"])) == 4
        assert all(sorted(c[1:].split(" ")) == words for c in q["choices"])
        assert q["context"] + q["choices"][q["gold"]] in TEXTS["beta"]
        assert scored_pairs(q) == [(q["context"], c) for c in q["choices"]]
        _cut_at_word_boundary(q)


def test_gold_position_is_spread(task_dir: Path) -> None:
    golds = [q["gold"] for t in task_names(list(TEXTS)) for q in read_questions(task_dir, t)]
    counts = [golds.count(i) for i in range(4)]
    assert min(counts) > len(golds) / 4 * 0.6, counts


def test_bad_input_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(TaskBuildError, match="too short"):
        build_tasks(tmp_path / "x", {"tiny": "just a few words here"}, seed=0, n_examples=5)
    with pytest.raises(TaskBuildError, match="task name"):
        build_tasks(tmp_path / "x", {"bad name": TEXTS["alpha"]}, seed=0)
    with pytest.raises(TaskBuildError):
        build_tasks(tmp_path / "x", TEXTS, spec=TaskSpec(n_choices=1))
    assert not (tmp_path / "x").exists()


def test_fewer_questions_than_asked_for_is_refused(tmp_path: Path) -> None:
    """It was a logged warning, and a 3-question task then sat in the tables beside
    200-question ones. The error names every short task and how many it can have."""
    with pytest.raises(TaskBuildError, match="too short for 100000 questions") as err:
        build_tasks(tmp_path / "x", {"alpha": _text(40)}, seed=0, n_examples=100_000)
    assert "alpha_continuation " in str(err.value) and "alpha_wordorder " in str(err.value)
    assert "nothing was written" in str(err.value)
    assert not (tmp_path / "x").exists()
    most = int(str(err.value).split("alpha_continuation ")[1].split(",")[0])
    assert 0 < most < 100_000


def _first_choice_lm():
    """An lm-eval LM that always prefers choice 0: tests the task and metric wiring. It
    keeps the `(context, continuation)` of every request in `.seen`."""
    from lm_eval.api.model import LM

    class FirstChoiceLM(LM):
        seen: list[tuple[str, str]] = []

        def loglikelihood(self, requests):
            self.seen = self.seen + [tuple(r.args) for r in requests]
            return [(-float(r.idx), False) for r in requests]

        def loglikelihood_rolling(self, requests):
            raise NotImplementedError

        def generate_until(self, requests):
            raise NotImplementedError

    return FirstChoiceLM()


def test_first_choice_model_scores_gold0_fraction(task_dir: Path) -> None:
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    tm = TaskManager(include_path=str(task_dir), include_defaults=False)
    tasks = task_names(list(TEXTS))
    lm = _first_choice_lm()
    res = simple_evaluate(
        model=lm, tasks=tasks, task_manager=tm, log_samples=False, bootstrap_iters=0
    )
    # lm-eval scores exactly the stored strings (target_delimiter "", no description or
    # prompt around them): continuation after each passage, each word run after the context
    expected = [
        pair for t in tasks for q in read_questions(task_dir, t) for pair in scored_pairs(q)
    ]
    assert sorted(lm.seen) == sorted(expected)
    for task in tasks:
        golds = [q["gold"] for q in read_questions(task_dir, task)]
        expected = golds.count(0) / len(golds)
        assert res["results"][task]["acc,none"] == pytest.approx(expected, abs=1e-12), task
        assert res["results"][task]["acc_norm,none"] == pytest.approx(expected, abs=1e-12), task


def test_tasks_work_from_another_cwd_after_moving(
    task_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    moved = tmp_path / "moved"
    build_tasks(moved, TEXTS, seed=3, n_examples=N)
    final = tmp_path / "elsewhere" / "tasks"
    final.parent.mkdir()
    moved.rename(final)
    monkeypatch.chdir(tmp_path / "elsewhere")
    tm = TaskManager(include_path=str(final), include_defaults=False)
    res = simple_evaluate(
        model=_first_choice_lm(),
        tasks=[GROUP],
        task_manager=tm,
        log_samples=False,
        bootstrap_iters=0,
    )
    assert set(task_names(list(TEXTS))) <= set(res["results"])


def test_questions_with_unicode_line_separators_read_back(tmp_path: Path) -> None:
    """Task files hold text unescaped (`ensure_ascii=False`); a U+2028 / U+0085 in it used
    to break `read_questions` (and so the zero-shot preflight), not lm-eval's own reader."""
    texts = {
        k: v.replace(" the ", " the\u2028", 7).replace(" a ", " a\u0085", 5)
        for k, v in TEXTS.items()
    }
    out = tmp_path / "tasks"
    build_tasks(out, texts, seed=3, n_examples=N)
    raw = "".join(p.read_text(encoding="utf-8") for p in out.glob("*.jsonl"))
    assert "\u2028" in raw and "\u0085" in raw
    for task in task_names(texts):
        assert len(read_questions(out, task)) == N


def test_wordorder_distractors_are_never_also_right() -> None:
    """A shuffle that the text itself follows the context with is a second right answer
    (the continuation builder refuses such distractors; word order did not): here every
    line has the same 96-character context before a different order of the same words."""
    import itertools
    import random

    from svdzoo.evaluation.tasks import wordorder_questions

    words = ["alpha", "beta", "gamma", "delta", "omega", "sigma"]
    orders = list(itertools.permutations(words))
    random.Random(0).shuffle(orders)
    prefix = "the_same_long_prefix_" * 5  # 105 characters, no space: one cut per line
    text = "\n".join(f"{prefix} {' '.join(o)}" for o in orders[:240])
    qs = wordorder_questions(text, TaskSpec(n_examples=40), random.Random(1))
    assert len(qs) == 40
    for q in qs:
        assert q["context"] + q["choices"][q["gold"]] in text
        right = [c for c in q["choices"] if q["context"] + c in text]
        assert right == [q["choices"][q["gold"]]], (q["id"], right)


@pytest.mark.parametrize(
    "damage", ["truncated", "edited-yaml", "missing", "manifest-list", "loader", "group"]
)
def test_task_files_are_checked_against_their_manifest(task_dir: Path, tmp_path: Path,
                                                       damage: str) -> None:  # fmt: skip
    """A question file cut to 2 lines was scored on 2 questions while the manifest said 15;
    a task manifest holding `[]` was an AttributeError after the model had loaded. Each is
    one TaskBuildError naming the file, before any model loads (`prepare_tasks`)."""
    import shutil

    from svdzoo.evaluation.tasks import check_task_files
    from svdzoo.evaluation.zeroshot import prepare_tasks

    tasks = tmp_path / "tasks"
    shutil.copytree(task_dir, tasks)
    task = "alpha_continuation"
    check_task_files(tasks, [task])  # as built
    check_task_files(tasks, [GROUP])
    jsonl, yaml = tasks / f"{task}.jsonl", tasks / f"{task}.yaml"
    if damage == "truncated":
        jsonl.write_text("".join(jsonl.read_text().splitlines(keepends=True)[:2]))
        needle = f"{task}.jsonl is not the file build-tasks wrote"
    elif damage == "edited-yaml":
        yaml.write_text(yaml.read_text() + "num_fewshot: 5\n")
        needle = f"{task}.yaml is not the file build-tasks wrote"
    elif damage == "missing":
        jsonl.unlink()
        needle = f"{task}.jsonl is not the file"
    elif damage == "loader":  # the code lm-eval runs to read every task
        loader = tasks / "svdzoo_jsonl.py"
        loader.write_text(loader.read_text() + "\n# edited\n")
        needle = "svdzoo_jsonl.py is not the file build-tasks wrote"
    elif damage == "group":
        group = tasks / f"{GROUP}.yaml"
        group.write_text(group.read_text() + "\n")
        needle = f"{GROUP}.yaml is not the file build-tasks wrote"
    else:
        (tasks / "tasks_manifest.json").write_text("[]")
        needle = "expected a JSON object, found list"
    for requested in ([task], [GROUP]):
        with pytest.raises(TaskBuildError, match=needle):
            prepare_tasks(requested, tasks)
    other = "beta_wordorder"  # an intact task of the same directory is still taken
    if damage in ("truncated", "edited-yaml", "missing"):
        check_task_files(tasks, [other])


def test_a_task_manifest_of_an_older_build_asks_for_a_rebuild(task_dir: Path,
                                                               tmp_path: Path) -> None:  # fmt: skip
    import shutil

    from svdzoo.evaluation.tasks import check_task_files

    tasks = tmp_path / "tasks"
    shutil.copytree(task_dir, tasks)
    manifest = json.loads((tasks / "tasks_manifest.json").read_text())
    for info in manifest["tasks"].values():
        del info["sha256"]
    (tasks / "tasks_manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(TaskBuildError, match="records no sha256 .* older svdzoo.*build-tasks"):
        check_task_files(tasks, [GROUP])
    (tasks / "tasks_manifest.json").unlink()  # no manifest: one's own lm-eval tasks
    check_task_files(tasks, [GROUP])
