"""The held-out-in-train measures: verbatim paragraphs and word n-gram coverage, which the
results page quotes for the offline corpora."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("bench_corpus_overlap")


TRAIN = "alpha beta gamma delta epsilon\n\nshared paragraph that repeats word for word\n\nzeta"


def test_paragraphs_found_verbatim_in_train_and_their_character_share(bench) -> None:
    test = "shared paragraph that repeats word for word\n\nonly in test, never in train at all"
    got = bench.paragraph_overlap(TRAIN, test, min_chars=10)
    assert got["paragraphs"] == 2 and got["paragraphs_in_train"] == 1
    shared = len("shared paragraph that repeats word for word")
    assert got["char_share_in_train_paragraphs"] == pytest.approx(shared / len(test))
    # a block shorter than min_chars is not counted, so short boilerplate cannot inflate it
    assert bench.paragraph_overlap(TRAIN, "zeta", min_chars=10)["paragraphs"] == 0


def test_ngram_coverage_counts_each_covered_word_once(bench) -> None:
    # "beta gamma delta" and "gamma delta epsilon" are train 3-grams, overlapping: the four
    # words they cover count once each; x and y are in no train 3-gram
    got = bench.ngram_overlap(TRAIN, "x beta gamma delta epsilon y", n=3)
    assert got["words"] == 6
    assert got["word_share_in_train_ngrams"] == pytest.approx(4 / 6)  # beta..epsilon
    assert bench.ngram_overlap(TRAIN, "beta gamma", n=3)["word_share_in_train_ngrams"] == 0.0


def test_task_questions_are_matched_on_their_gold_text(bench, tmp_path: Path) -> None:
    rows = [
        {"context": "shared paragraph that ", "choices": ["x y", "repeats word"], "gold": 1},
        {"choices": ["nowhere", "alpha beta"], "continuation": " gamma", "gold": 1},
        {"choices": ["alpha beta"], "continuation": " omega", "gold": 0},
    ]
    f = tmp_path / "c_task.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = bench.task_overlap(TRAIN, tmp_path, "c_task")
    assert (got["questions"], got["questions_in_train"]) == (3, 2)
