"""A byte-level tokenizer for the reference models.

Bytes need no training, cover any text, and give small models a vocabulary they can
learn in minutes. It is saved as a `PreTrainedTokenizerFast`, so `AutoTokenizer`
loads it from disk exactly like a hub tokenizer, with no network.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from tokenizers.pre_tokenizers import ByteLevel
from transformers import PreTrainedTokenizerFast

EOS = "<|endoftext|>"
PAD = "<|pad|>"


def build_byte_tokenizer() -> PreTrainedTokenizerFast:
    """256 byte tokens (GPT-2 byte-to-unicode alphabet) plus EOS and PAD; no merges."""
    alphabet = ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet, key=_byte_order))}
    vocab[EOS] = len(vocab)
    vocab[PAD] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], fuse_unk=False))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    core.post_processor = processors.ByteLevel(trim_offsets=False)
    core.add_special_tokens([EOS, PAD])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token=EOS,
        bos_token=EOS,
        pad_token=PAD,
        unk_token=None,
        model_max_length=int(1e30),
        clean_up_tokenization_spaces=False,
    )
    return tok


def _byte_order(ch: str) -> int:
    """Order the GPT-2 byte alphabet by the byte each symbol stands for."""
    return _UNICODE_TO_BYTE[ch]


def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1))
    bs += list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs, strict=True)}


_UNICODE_TO_BYTE = {u: b for b, u in _bytes_to_unicode().items()}


def save_byte_tokenizer(out_dir: str | Path) -> PreTrainedTokenizerFast:
    tok = build_byte_tokenizer()
    tok.save_pretrained(str(out_dir))
    return tok
