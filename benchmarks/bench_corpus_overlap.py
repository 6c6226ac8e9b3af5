"""How much of each offline corpus's held-out text is also in its train split.

The offline corpora (pydoc, pysource) are split by document (`svdzoo.data.interleave_split`),
which keeps documents apart but not their contents: a paragraph repeated across pydoc topics,
or boilerplate shared by stdlib modules, can sit in train and in test. Calibration samples
train and the reference models train on it, so held-out text that is also in train flatters
their perplexity and accuracy. This script measures that, for every split the evaluation
reads, three ways:

- paragraphs: blank-line-separated blocks of at least `--min-chars` characters that appear
  verbatim (stripped) as a block of train, and the share of the split's characters they hold;
- n-grams: the share of the split's whitespace-separated words that lie inside a word
  `--ngram`-gram also found in train (13, as in the contamination checks of GPT-3 and
  Llama 2);
- the same two for the part the evaluation actually scores: the first `max-windows x seqlen`
  tokens of the test split (`svdzoo.data.evaluation_windows`), with each `--tokenizer` (a model
  directory); and, with `--tasks`, the offline zero-shot questions whose gold text (context
  plus the right choice) occurs verbatim in train.

It writes

    benchmarks/results/corpus-overlap.csv   corpus, part, measure, value
    benchmarks/results/corpus-overlap.md    the same as tables, with what each number means
    benchmarks/results/corpus-overlap.png   n-gram and paragraph overlap per corpus and part

    python benchmarks/bench_corpus_overlap.py --tokenizer data/models/smollm2-135m \
        --tasks data/tasks --seqlen 256 --max-windows 8
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from collections.abc import Iterable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from results_io import save_figure  # noqa: E402

from svdzoo.data import get_corpus  # noqa: E402
from svdzoo.io import write_text  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
CORPORA = ("pydoc", "pysource")


def paragraphs(text: str, min_chars: int) -> list[str]:
    """Blank-line-separated blocks, stripped, of at least `min_chars` characters."""
    return [p for p in (b.strip() for b in text.split("\n\n")) if len(p) >= min_chars]


def paragraph_overlap(train: str, text: str, min_chars: int) -> dict[str, float]:
    """How many of `text`'s paragraphs are verbatim paragraphs of `train`, and their share
    of `text`'s characters."""
    seen = set(paragraphs(train, min_chars))
    mine = paragraphs(text, min_chars)
    dup = [p for p in mine if p in seen]
    return {
        "paragraphs": len(mine),
        "paragraphs_in_train": len(dup),
        "chars": len(text),
        "chars_in_train_paragraphs": sum(len(p) for p in dup),
        "char_share_in_train_paragraphs": sum(len(p) for p in dup) / max(len(text), 1),
    }


def _ngrams(words: list[str], n: int) -> Iterable[tuple[str, ...]]:
    return (tuple(words[i : i + n]) for i in range(len(words) - n + 1))


def ngram_overlap(train: str, text: str, n: int) -> dict[str, float]:
    """The share of `text`'s words covered by an n-gram (of words) that also occurs in
    `train`. A text shorter than n words has no n-gram and counts as not covered."""
    seen = {hash(g) for g in _ngrams(train.split(), n)}
    words = text.split()
    covered = [False] * len(words)
    for i, g in enumerate(_ngrams(words, n)):
        if hash(g) in seen:
            covered[i : i + n] = [True] * n
    return {"words": len(words), "word_share_in_train_ngrams": sum(covered) / max(len(words), 1)}


def scored_prefix(corpus, tokenizer_dir: Path, seqlen: int, max_windows: int) -> str:
    """The test text the perplexity windows score: the decoded first windows of the split."""
    from svdzoo.data import evaluation_windows
    from svdzoo.models import load_tokenizer

    tok = load_tokenizer(tokenizer_dir)
    ids = evaluation_windows(tok, corpus, seqlen, max_windows=max_windows, prefix=())
    return tok.decode(ids.flatten().tolist())


def task_overlap(train: str, task_dir: Path, task: str) -> dict[str, float]:
    """Questions whose gold text (context, then the right choice) occurs verbatim in train."""
    from svdzoo.evaluation.tasks import read_questions

    rows = read_questions(task_dir, task)
    hits = 0
    for r in rows:
        gold = r["choices"][r["gold"]]
        text = r.get("context", "") + gold if "context" in r else gold + r.get("continuation", "")
        hits += text.strip() in train
    return {"questions": len(rows), "questions_in_train": hits, "share": hits / max(len(rows), 1)}


def measure(args: argparse.Namespace) -> pd.DataFrame:
    rows: list[dict] = []

    def add(corpus: str, part: str, values: dict[str, float]) -> None:
        rows.extend(
            [
                {"corpus": corpus, "part": part, "measure": k, "value": float(v)}
                for k, v in values.items()
            ]
        )

    for name in args.corpora:
        corpus = get_corpus(name)
        train = corpus.split("train")
        parts = {"test": corpus.split("test"), "validation": corpus.split("validation")}
        for tok in args.tokenizer:
            parts[f"test, scored windows ({tok.name})"] = scored_prefix(
                corpus, tok, args.seqlen, args.max_windows
            )
        for part, text in parts.items():
            add(name, part, paragraph_overlap(train, text, args.min_chars))
            add(name, part, ngram_overlap(train, text, args.ngram))
        if args.tasks:
            for task_file in sorted(args.tasks.glob(f"{name}_*.jsonl")):
                add(name, f"task {task_file.stem}", task_overlap(train, args.tasks, task_file.stem))
    return pd.DataFrame(rows, columns=["corpus", "part", "measure", "value"])


def _text_measures(df: pd.DataFrame) -> pd.DataFrame:
    """The split and window rows (not the tasks'), one column per measure."""
    text = df[~df.part.str.startswith("task ")]
    return text.pivot_table(index=["corpus", "part"], columns="measure", values="value", sort=False)


def markdown(df: pd.DataFrame, args: argparse.Namespace) -> str:
    wide = _text_measures(df)
    table = pd.DataFrame(
        {
            "characters": wide["chars"].map("{:,.0f}".format),
            f"paragraphs >= {args.min_chars} chars": wide["paragraphs"].map("{:,.0f}".format),
            "of them in train": wide["paragraphs_in_train"].map("{:,.0f}".format),
            "their share of the characters": wide["char_share_in_train_paragraphs"].map(
                "{:.1%}".format
            ),
            f"words inside a train {args.ngram}-gram": wide["word_share_in_train_ngrams"].map(
                "{:.1%}".format
            ),
        }
    )
    lines = [
        "# Held-out text that is also in train (offline corpora)",
        "",
        f"`python benchmarks/bench_corpus_overlap.py{args.command_tail}`. Machine:"
        f" {platform.platform()}. Paragraphs are blank-line-separated blocks, compared"
        f" verbatim after stripping; n-grams are of whitespace-separated words (n = {args.ngram})."
        + (
            f' "test, scored windows (model)" is the text of the first {args.max_windows} x'
            f" {args.seqlen} tokens of the test split under that model's tokenizer: what its"
            " perplexity numbers score."
            if args.tokenizer
            else ""
        ),
        "",
        table.reset_index().to_markdown(index=False),
        "",
    ]
    tasks = df[df.part.str.startswith("task ")]
    if not tasks.empty:
        t = tasks.pivot_table(
            index=["corpus", "part"], columns="measure", values="value", sort=False
        )
        lines += [
            "## Offline zero-shot questions whose gold text occurs verbatim in train",
            "",
            f"From `{args.tasks}` (`svdzoo build-tasks`): the context followed by the right"
            " choice (word order), or the right passage followed by the continuation"
            " (continuation), searched for as one string in the train split.",
            "",
            pd.DataFrame(
                {
                    "questions": t["questions"].map("{:.0f}".format),
                    "in train": t["questions_in_train"].map("{:.0f}".format),
                    "share": t["share"].map("{:.1%}".format),
                }
            )
            .reset_index()
            .to_markdown(index=False),
            "",
        ]
    lines += ["![overlap per corpus and part](corpus-overlap.png)", ""]
    return "\n".join(lines)


def figure(df: pd.DataFrame, out: Path, ngram: int) -> None:
    wide = _text_measures(df)
    labels = [f"{c}\n{p}" for c, p in wide.index]
    x = range(len(labels))
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(labels)), 4))
    w = 0.38
    ax.bar([i - w / 2 for i in x], 100 * wide["word_share_in_train_ngrams"], w,
           label=f"words inside a train {ngram}-gram")  # fmt: skip
    ax.bar([i + w / 2 for i in x], 100 * wide["char_share_in_train_paragraphs"], w,
           label="characters in paragraphs found in train")  # fmt: skip
    ax.set_xticks(list(x), labels, fontsize=8)
    ax.set_ylabel("% of the held-out text")
    ax.set_title("Held-out text also in the train split")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, frameon=False)
    save_figure(fig, out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpora", default=",".join(CORPORA), type=lambda s: s.split(","))
    ap.add_argument("--ngram", type=int, default=13)
    ap.add_argument("--min-chars", type=int, default=80)
    ap.add_argument(
        "--tokenizer",
        type=Path,
        action="append",
        default=[],
        help="a model directory: also measure the windows its perplexity scores (repeatable)",
    )
    ap.add_argument("--seqlen", type=int, default=256)
    ap.add_argument("--max-windows", type=int, default=8)
    ap.add_argument("--tasks", type=Path, help="an offline task directory (svdzoo build-tasks)")
    ap.add_argument("--out", type=Path, default=RESULTS / "corpus-overlap")
    args = ap.parse_args(argv)
    if args.ngram < 1 or args.min_chars < 1:
        ap.error("--ngram and --min-chars must be positive")
    if args.tasks and not args.tasks.is_dir():
        ap.error(f"--tasks {args.tasks} is not a directory")
    args.command_tail = "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    df = measure(args)
    write_text(args.out.with_suffix(".csv"), df.to_csv(index=False))
    md = markdown(df, args)
    write_text(args.out.with_suffix(".md"), md)
    figure(df, args.out.with_suffix(".png"), args.ngram)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
