"""The offline tasks under subword tokenizers (trained here, offline, on the pydoc train
split): by lm-eval's own encoding rule every choice gets tokens of its own, lm-eval runs
every request end to end, and a trained model still scores clearly above chance."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import hashlib
import json
from pathlib import Path

import pytest
from helpers import random_tiny

from svdzoo.data import get_corpus
from svdzoo.evaluation.tasks import build_tasks, read_questions, task_names
from svdzoo.evaluation.zeroshot import ZeroShotError, check_encodings, run_zeroshot

pytestmark = pytest.mark.usefixtures("one_thread")

CORPORA = ("pydoc", "pysource")
# Llama 3's pre-tokenizer regex: unlike GPT-2's it keeps punctuation and the newlines after
# it together (":\n"), and a letter run with the one non-letter before it ("(x").
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
KINDS = ("byte-bpe", "llama3-bpe", "sentencepiece-bpe")


def train_tokenizer(kind: str, merges: int = 400):
    """A BPE tokenizer with `merges` merges trained on the pydoc train split: `byte-bpe` is
    GPT-2 style (SmolLM2, GPT-2: byte-level, GPT-2 pre-tokenizer regex), `llama3-bpe` byte-level
    with Llama 3's regex, `sentencepiece-bpe` SentencePiece style (`▁` for spaces, split on them)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=kind == "byte-bpe")
    if kind == "sentencepiece-bpe":
        pre = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
        decoder, alphabet = decoders.Metaspace(replacement="▁", prepend_scheme="first"), []
    elif kind == "llama3-bpe":
        split = pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated")
        pre = pre_tokenizers.Sequence([split, byte_level])
        decoder, alphabet = decoders.ByteLevel(), pre_tokenizers.ByteLevel.alphabet()
    else:
        pre, decoder, alphabet = (
            byte_level,
            decoders.ByteLevel(),
            pre_tokenizers.ByteLevel.alphabet(),
        )
    core = Tokenizer(models.BPE(unk_token="<unk>"))
    core.pre_tokenizer, core.decoder = pre, decoder
    train_text = get_corpus("pydoc").split("train")
    # the alphabet of a SentencePiece-style model is the characters seen in training
    n_alphabet = len(alphabet) or len(set(train_text.replace(" ", "▁")))
    trainer = trainers.BpeTrainer(
        vocab_size=n_alphabet + merges + 2,
        special_tokens=["<unk>", "<|endoftext|>"],
        initial_alphabet=alphabet,
        show_progress=False,
    )
    core.train_from_iterator([train_text], trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token="<|endoftext|>",
        unk_token="<unk>",
        clean_up_tokenization_spaces=False,
    )


def random_model_for(tok):
    """An untrained tiny LLaMA (`helpers.random_tiny`) with the vocabulary of `tok`."""
    model = random_tiny("llama", max_position_embeddings=512)
    model.resize_token_embeddings(len(tok), mean_resizing=False)
    return model


def hflm(tok):
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=random_model_for(tok), tokenizer=tok, batch_size=8)


@pytest.fixture(scope="module")
def tokenizers() -> dict:
    return {kind: train_tokenizer(kind) for kind in KINDS}


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory) -> Path:
    """Every task at the default size (200 questions) from the corpora's test splits."""
    out = tmp_path_factory.mktemp("bpe-tasks") / "tasks"
    build_tasks(out, {c: get_corpus(c).split("test") for c in CORPORA}, seed=0)
    return out


def test_tokenizers_merge_words(tokenizers: dict) -> None:
    """The checks below have teeth only if the tokenizers merge characters into words."""
    text = "the function returns a value to its caller"
    for kind, tok in tokenizers.items():
        ids = tok.encode(text)
        assert len(ids) < len(text) / 3, (kind, tok.convert_ids_to_tokens(ids))


def lm_eval_requests(task_dir: Path, tasks: list[str]) -> dict[str, list[tuple[str, str]]]:
    """The `(context, continuation)` of every request lm-eval builds for `tasks`, per task."""
    from lm_eval import simple_evaluate
    from lm_eval.api.model import LM
    from lm_eval.tasks import TaskManager

    seen: dict[str, list[tuple[str, str]]] = {t: [] for t in tasks}

    class Recorder(LM):
        def loglikelihood(self, requests):
            for r in requests:
                seen[r.task_name].append(tuple(r.args))
            return [(0.0, False) for _ in requests]

        def loglikelihood_rolling(self, requests):
            raise NotImplementedError

        def generate_until(self, requests):
            raise NotImplementedError

    tm = TaskManager(include_path=str(task_dir), include_defaults=False)
    simple_evaluate(model=Recorder(), tasks=tasks, task_manager=tm, bootstrap_iters=0)
    return seen


@pytest.fixture(scope="module")
def lm_requests(task_dir: Path) -> dict[str, list[tuple[str, str]]]:
    return lm_eval_requests(task_dir, task_names(CORPORA))


@pytest.mark.parametrize("kind", KINDS)
def test_every_choice_gets_its_own_tokens(kind: str, tokenizers: dict, lm_requests: dict) -> None:
    """For every request of every question of every task (as lm-eval builds them), lm-eval's
    `_encode_pair` gives the continuation at least one token, and the context's tokens plus
    those are exactly the tokens of the whole text (nothing merged across the cut)."""
    lm = hflm(tokenizers[kind])
    for task, pairs in lm_requests.items():
        assert len(pairs) == 200 * 4, task  # every question, every choice
        for context, continuation in pairs:
            context_enc, continuation_enc = lm._encode_pair(context, continuation)
            assert len(continuation_enc) >= 1, (task, context[-20:], continuation)
            whole = lm.tok_encode(context + continuation)
            assert context_enc + continuation_enc == whole, (task, context[-20:], continuation)


def test_check_encodings_agrees(tokenizers: dict, task_dir: Path) -> None:
    """run_zeroshot's own check (zeroshot.check_encodings) finds nothing on these tasks."""
    lm = hflm(tokenizers["byte-bpe"])
    questions = {t: read_questions(task_dir, t) for t in task_names(CORPORA)}
    for task, row in check_encodings(lm, questions).items():
        assert row["choices"] == 800 and row["empty"] == row["split"] == 0, (task, row)


def _cut_inside_words(questions: list[dict], keep: int) -> list[dict]:
    """Word-order questions cut the way version 1 cut continuations, inside a word: the first
    `keep` characters of the gold choice (negative: all but the last `-keep`) join the
    context, and every choice loses as many."""
    out = []
    for q in questions:
        head = q["choices"][q["gold"]][:keep]
        choices = [c[len(head) :] for c in q["choices"]]
        out.append({**q, "context": q["context"] + head, "choices": choices})
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_cuts_inside_words_break(kind: str, tokenizers: dict, task_dir: Path) -> None:
    """What the word-boundary cut avoids (and proof that the test above has teeth): cut
    inside a word, many choices are tokenized across the cut."""
    lm = hflm(tokenizers[kind])
    mid = _cut_inside_words(read_questions(task_dir, "pydoc_wordorder"), keep=3)
    report = check_encodings(lm, {"mid": mid})["mid"]
    assert report["split"] > report["choices"] * 0.1, report


def test_stale_tasks_are_refused_before_lm_eval_asserts(
    tokenizers: dict, task_dir: Path, tmp_path: Path
) -> None:
    """A task directory whose choices get no token (cut one character before the end of a
    word, as version 1 could) is a clear ZeroShotError up front, not lm-eval's AssertionError
    after part of the compute."""
    import shutil

    stale = tmp_path / "stale"
    shutil.copytree(task_dir, stale)
    manifest = json.loads((stale / "tasks_manifest.json").read_text())
    tail = _cut_inside_words(read_questions(task_dir, "pydoc_wordorder"), keep=-1)
    body = "".join(json.dumps(q) + "\n" for q in tail)
    (stale / "pydoc_wordorder.jsonl").write_text(body)
    # a version-1 build, consistent with its manifest (the files' hashes pass)
    manifest["tasks"]["pydoc_wordorder"]["sha256"] = hashlib.sha256(body.encode()).hexdigest()
    (stale / "tasks_manifest.json").write_text(json.dumps({**manifest, "version": 1}))
    tok = tokenizers["byte-bpe"]
    assert check_encodings(hflm(tok), {"tail": tail})["tail"]["empty"] > 0
    with pytest.raises(ZeroShotError, match=r"no token(.|\n)*rebuild them"):
        run_zeroshot(random_model_for(tok), tok, ["pydoc_wordorder"], task_dir=stale)


def test_bpe_model_answers_every_request(tokenizers: dict, task_dir: Path) -> None:
    """lm-eval end to end on a random tiny LLaMA with the byte-level BPE vocabulary: no
    AssertionError, every question of every task answered, and near chance (0.25)."""
    tok = tokenizers["byte-bpe"]
    tasks = task_names(CORPORA)
    out = run_zeroshot(random_model_for(tok), tok, tasks, task_dir=task_dir, batch_size=32)
    assert out["n_samples"] == {t: 200 for t in tasks}
    for t in tasks:
        assert 0.0 <= out["tasks"][t]["acc"] <= 1.0
        assert out["tasks"][t]["acc_norm"] == out["tasks"][t]["acc"]  # equal lengths
    assert out["mean_acc"] < 0.35, out["tasks"]


@pytest.fixture(scope="module")
def pydoc_tasks(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pydoc-tasks") / "tasks"
    build_tasks(out, {"pydoc": get_corpus("pydoc").split("test")}, seed=0, n_examples=100)
    return out


@pytest.mark.parametrize("family", ["llama", "opt"])
def test_trained_models_score_clearly_above_chance(
    family: str, pydoc_tasks: Path, tiny_llama_dir: Path, tiny_opt_dir: Path
) -> None:
    """The tasks still measure something on the byte-level reference models (trained on
    pydoc): both beat chance (0.25) clearly on held-out pydoc, an untrained model does not.
    Measured with the default sizes: continuation 0.53 (llama) / 0.49 (opt), word order
    0.87 / 0.62; untrained 0.24-0.31."""
    from svdzoo.models import load_model, load_tokenizer

    path = tiny_llama_dir if family == "llama" else tiny_opt_dir
    tasks = task_names(["pydoc"])
    trained = run_zeroshot(
        load_model(path), load_tokenizer(path), tasks, task_dir=pydoc_tasks, batch_size=32
    )
    untrained = run_zeroshot(
        random_tiny(family), load_tokenizer(path), tasks, task_dir=pydoc_tasks, batch_size=32
    )
    for t in tasks:
        assert trained["tasks"][t]["acc"] >= 0.4, (t, trained["tasks"])
        assert trained["tasks"][t]["acc"] >= untrained["tasks"][t]["acc"] + 0.15, t
    assert untrained["mean_acc"] < 0.35, untrained["tasks"]
