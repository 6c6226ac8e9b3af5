"""`svdzoo build-tasks`: offline multiple-choice lm-eval tasks from held-out corpus text."""

from __future__ import annotations

import argparse
import logging

NAME = "build-tasks"
HELP = "build offline lm-eval tasks (continuation, word order) from corpora's held-out text"

log = logging.getLogger(__name__)


def _csv(s: str) -> list[str]:
    return [x for x in s.split(",") if x]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--corpora", type=_csv, default=["pydoc", "pysource"], help="comma-separated corpus names"
    )
    p.add_argument("--out", default=None, help="task directory (default: data/tasks)")
    p.add_argument(
        "--force",
        action="store_true",
        help="replace --out even if it is not an earlier task directory",
    )
    p.add_argument("--split", default="test", help="corpus split to draw questions from")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-examples", type=int, default=200, help="questions per task")
    p.add_argument("--n-choices", type=int, default=4)
    p.add_argument("--context-chars", type=int, default=96)
    p.add_argument("--continuation-chars", type=int, default=8)
    p.add_argument("--wordorder-words", type=int, default=6)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from svdzoo.data import get_corpus, is_corpus_file
    from svdzoo.evaluation.tasks import TaskSpec, build_tasks
    from svdzoo.io import TASKS, check_output
    from svdzoo.paths import Layout

    spec = TaskSpec(
        n_examples=args.n_examples,
        n_choices=args.n_choices,
        context_chars=args.context_chars,
        continuation_chars=args.continuation_chars,
        wordorder_words=args.wordorder_words,
    )
    spec.validate()  # before loading any corpus
    out = Path(args.out) if args.out else Layout().tasks()
    # the corpus files are inputs: `--out mycorpus.txt --force` replaced the text
    inputs = [name for name in args.corpora if is_corpus_file(name)]
    # a foreign, unwritable or input --out, before building
    check_output(out, TASKS, force=args.force, protect=inputs)
    texts = {name: get_corpus(name).split(args.split) for name in args.corpora}
    manifest = build_tasks(out, texts, seed=args.seed, spec=spec, force=args.force, protect=inputs)
    for task, info in manifest["tasks"].items():
        print(f"{task:<28} {info['n']:>5} questions  (chance {info['chance']:.3f})")
    print(f"wrote {out}")
    return 0
