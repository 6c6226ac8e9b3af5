"""run_zeroshot: real lm-eval on a tiny random model with the byte tokenizer."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from pathlib import Path

import pytest
from helpers import random_tiny
from torch import nn

from svdzoo.evaluation.tasks import TaskBuildError, build_tasks, task_names
from svdzoo.evaluation.zeroshot import ZeroShotError, prepare_tasks, run_zeroshot, summarise
from svdzoo.tokenizer import build_byte_tokenizer

TEXT = "\n".join(
    f"line {i} of the held out text says that item {i % 17} belongs to group {i % 5} and not to {i % 3}"
    for i in range(300)
)


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("zs") / "tasks"
    build_tasks(out, {"toy": TEXT}, seed=0, n_examples=16)
    return out


def test_run_zeroshot_is_deterministic_and_bounded(task_dir: Path) -> None:
    model, tok = random_tiny("llama", max_position_embeddings=512), build_byte_tokenizer()
    tasks = task_names(["toy"])
    a = run_zeroshot(model, tok, tasks, task_dir=task_dir, batch_size=4)
    b = run_zeroshot(model, tok, tasks, task_dir=task_dir, batch_size=4)
    assert set(a["tasks"]) == set(tasks)
    for t in tasks:
        row = a["tasks"][t]
        assert 0.0 <= row["acc"] <= 1.0 and 0.0 <= row["acc_norm"] <= 1.0
        assert row["acc_stderr"] > 0
        assert row == b["tasks"][t]
    assert a["mean_acc"] == pytest.approx(sum(a["tasks"][t]["acc"] for t in tasks) / len(tasks))
    assert a["n_samples"] == {t: 16 for t in tasks}
    assert a["lm_eval_version"][0].isdigit()


def test_run_zeroshot_accepts_a_model_with_replaced_linears(task_dir: Path) -> None:
    """Compressed models are HF models whose decoder linears became other modules."""
    model = random_tiny("llama", seed=1, max_position_embeddings=512)
    layer = model.model.layers[0]
    dense = layer.mlp.down_proj
    k = 8
    pair = nn.Sequential(
        nn.Linear(dense.in_features, k, bias=False), nn.Linear(k, dense.out_features, bias=False)
    )
    layer.mlp.down_proj = pair
    out = run_zeroshot(
        model, build_byte_tokenizer(), ["toy_continuation"], task_dir=task_dir, limit=8
    )
    assert 0.0 <= out["tasks"]["toy_continuation"]["acc"] <= 1.0
    assert out["n_samples"] == {"toy_continuation": 8}


def test_missing_task_dir_and_bad_args(tmp_path: Path) -> None:
    model, tok = random_tiny("llama", max_position_embeddings=512), build_byte_tokenizer()
    with pytest.raises(ZeroShotError, match="build-tasks"):
        run_zeroshot(model, tok, ["toy_continuation"], task_dir=tmp_path / "nope")
    with pytest.raises(ZeroShotError, match="no zero-shot tasks"):
        run_zeroshot(model, tok, [], task_dir=None)


def test_a_corrupt_task_yaml_is_named_not_just_not_found(task_dir: Path, tmp_path: Path) -> None:
    """lm-eval's indexer skips a YAML it cannot parse, so a truncated task file made its
    task "unknown ... not found" with no word of the file. Indexes lm-eval's bundled tasks."""
    import shutil

    broken = tmp_path / "tasks"
    shutil.copytree(task_dir, broken)
    (broken / "toy_continuation.yaml").write_text(
        "task: toy_continuation\ndataset_kwargs: {data_files: ["
    )
    # built by svdzoo: the manifest's sha256 names the file before lm-eval indexes it
    with pytest.raises(TaskBuildError, match=r"toy_continuation\.yaml is not the file build"):
        prepare_tasks(["toy_continuation"], broken)
    (broken / "tasks_manifest.json").unlink()  # one's own tasks: lm-eval's indexer's turn
    with pytest.raises(ZeroShotError, match=r"not found.*toy_continuation\.yaml: .*build-tasks"):
        run_zeroshot(
            random_tiny("llama", max_position_embeddings=512),
            build_byte_tokenizer(),
            ["toy_continuation"],
            task_dir=broken,
        )


def test_summarise_separates_groups_from_tasks() -> None:
    res = {
        "results": {
            "g": {"acc,none": 0.5, "acc_stderr,none": 0.1},
            "a": {
                "acc,none": 0.25,
                "acc_stderr,none": 0.05,
                "acc_norm,none": 0.3,
                "acc_norm_stderr,none": 0.05,
            },
            "b": {"acc,none": 0.75, "acc_stderr,none": "N/A"},
        },
        "group_subtasks": {"g": ["a", "b"]},
    }
    out = summarise(res)
    assert set(out["tasks"]) == {"a", "b"} and set(out["groups"]) == {"g"}
    assert out["mean_acc"] == pytest.approx(0.5)
    assert out["tasks"]["b"]["acc_stderr"] is None and out["tasks"]["b"]["acc_norm"] is None


def test_hub_task_offline_is_a_clear_error() -> None:
    """Indexes lm-eval's ~15k bundled tasks (~15 s): the one slow test here."""
    with pytest.raises(ZeroShotError, match=r"arc_easy.*\n.*load_dataset"):
        run_zeroshot(
            random_tiny("llama", max_position_embeddings=512),
            build_byte_tokenizer(),
            ["arc_easy"],
            task_dir=None,
            limit=2,
        )


def test_an_offline_task_without_its_directory_says_to_pass_it() -> None:
    """`--tasks pydoc_continuation` without `--task-dir` was only "not found among
    lm-eval's tasks". Indexes lm-eval's bundled tasks."""
    from svdzoo.evaluation.zeroshot import _task_manager

    with pytest.raises(ZeroShotError, match=r"pydoc_continuation looks like .*--task-dir"):
        _task_manager(["pydoc_continuation", "no_such_task"], None)
    with pytest.raises(ZeroShotError) as err:
        _task_manager(["no_such_task"], None)
    assert "--task-dir" not in str(err.value)


def test_own_tasks_with_a_jsonl_of_their_own_format_run(tmp_path: Path) -> None:
    """A directory of one's own lm-eval tasks (no task manifest) whose data file is named
    after the task: the encoding check took it for svdzoo's question format and stopped
    with `KeyError: 'context'` after the model had loaded."""
    import json

    own = tmp_path / "own"
    own.mkdir()
    rows = [
        {"question": f"item {i} belongs to group", "choices": [" one", " two"], "label": i % 2}
        for i in range(6)
    ]
    (own / "mytask.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (own / "mytask.yaml").write_text(
        "task: mytask\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {own / 'mytask.jsonl'}\n"
        "test_split: test\noutput_type: multiple_choice\n"
        'doc_to_text: "{{question}}"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: label\n'
        "metric_list:\n  - metric: acc\n"
    )
    model, tok = random_tiny("llama", max_position_embeddings=512), build_byte_tokenizer()
    out = run_zeroshot(model, tok, ["mytask"], task_dir=own)
    assert out["n_samples"] == {"mytask": 6} and 0.0 <= out["tasks"]["mytask"]["acc"] <= 1.0
