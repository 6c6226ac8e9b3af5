"""Small causal LMs trained by the workflow itself, so the default run needs no download.

They are saved with `save_pretrained` beside a byte-level tokenizer, so everything
downstream treats them exactly like hub models. They are trained long enough to behave
like LLMs under compression (see tests/test_reference.py): an undertrained model barely
reacts to low-rank truncation and would make every method look alike.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm.auto import tqdm

from svdzoo.data import get_corpus, tokenize
from svdzoo.errors import ConfigError, ModelError
from svdzoo.io import REFERENCE_MODEL, atomic_dir, check_output, write_json
from svdzoo.provenance import software
from svdzoo.reference_config import TrainConfig
from svdzoo.tokenizer import build_byte_tokenizer

log = logging.getLogger(__name__)


def build_config(cfg: TrainConfig, vocab_size: int, pad_id: int, eos_id: int):
    """A transformers config for a fresh model of the requested family."""
    if cfg.family == "llama":
        from transformers import LlamaConfig

        return LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=cfg.hidden,
            intermediate_size=cfg.ffn,
            num_hidden_layers=cfg.layers,
            num_attention_heads=cfg.heads,
            num_key_value_heads=cfg.kv_heads,  # grouped-query attention
            max_position_embeddings=cfg.max_positions,
            tie_word_embeddings=True,
            initializer_range=cfg.init_std,
            pad_token_id=pad_id,
            bos_token_id=eos_id,
            eos_token_id=eos_id,
        )
    from transformers import OPTConfig

    return OPTConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden,
        ffn_dim=cfg.ffn,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        max_position_embeddings=cfg.max_positions,
        word_embed_proj_dim=cfg.hidden,
        do_layer_norm_before=True,
        enable_bias=True,
        init_std=cfg.init_std,
        dropout=0.0,
        attention_dropout=0.0,
        pad_token_id=pad_id,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
    )


def _lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


KIND = REFERENCE_MODEL  # the output kind `io.atomic_dir` recognises (by train_log.json)


def train_reference(cfg: TrainConfig, out_dir: str | Path, *, force: bool = False) -> dict:
    """Train one reference model and save it (weights, config, tokenizer, loss curve).

    `out_dir` is checked before training: an existing one must be an earlier reference
    model (or `force`), and it may never be, hold or lie inside the corpus file (`force`
    replaced it)."""
    cfg.validate()
    check_output(out_dir, KIND, force=force, protect=[cfg.corpus])
    before = torch.get_num_threads()  # `threads` holds for the training only
    try:
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        return _train(cfg, out_dir, force)
    finally:
        torch.set_num_threads(before)


def _train(cfg: TrainConfig, out_dir: str | Path, force: bool) -> dict:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(cfg.seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    tok = build_byte_tokenizer()
    corpus = get_corpus(cfg.corpus)
    train_ids = tokenize(tok, corpus.train)
    val_ids = tokenize(tok, corpus.validation)
    if train_ids.numel() <= cfg.seqlen + 1:
        raise ConfigError(f"corpus {cfg.corpus!r} is too short for seqlen {cfg.seqlen}")
    if val_ids.numel() < cfg.seqlen:  # the validation loss needs one whole window
        raise ConfigError(
            f"corpus {cfg.corpus!r}: its validation split ({val_ids.numel()} tokens) is "
            f"shorter than seqlen {cfg.seqlen}"
        )
    config = build_config(cfg, len(tok), tok.pad_token_id, tok.eos_token_id)
    model = AutoModelForCausalLM.from_config(config)
    model.train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg.lr,
        betas=(0.9, 0.95),
    )
    gen = torch.Generator().manual_seed(cfg.seed)
    n_params = sum(p.numel() for p in model.parameters())
    log.info(
        "training %s reference model (%d params) on %s for %d steps",
        cfg.family,
        n_params,
        cfg.corpus,
        cfg.steps,
    )
    curve = []
    t0 = time.perf_counter()
    bar = tqdm(range(cfg.steps), desc=f"train {cfg.family}", unit="step")
    for step in bar:
        starts = torch.randint(0, train_ids.numel() - cfg.seqlen - 1, (cfg.batch,), generator=gen)
        batch = torch.stack([train_ids[s : s + cfg.seqlen] for s in starts.tolist()])
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, cfg)
        loss = model(input_ids=batch, labels=batch).loss
        if not math.isfinite(loss.item()):  # stop at once: every later step is NaN too
            raise _diverged(cfg, f"the training loss is {loss.item()} at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        curve.append({"step": step, "loss": loss.item(), "lr": _lr_at(step, cfg)})
        if step % 10 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    train_time = time.perf_counter() - t0
    model.eval()
    val_loss = _mean_loss(model, val_ids, cfg.seqlen)
    if not (math.isfinite(val_loss) and val_loss < 700):  # exp() of it must be a number
        raise _diverged(cfg, f"the validation loss is {val_loss:.4g}")
    summary = {
        "config": asdict(cfg),
        "n_params": n_params,
        "train_time_s": train_time,
        "final_train_loss": curve[-1]["loss"],
        "validation_loss": val_loss,
        "validation_perplexity": math.exp(val_loss),
        "corpus_fingerprint": corpus.fingerprint,
        # the bits depend on both (ac9ed00: one more thread changed a model)
        "threads": torch.get_num_threads(),
        "software": software(),
    }
    log.info(
        "trained in %.1fs, validation perplexity %.3f", train_time, summary["validation_perplexity"]
    )
    with atomic_dir(out_dir, KIND, force=force, protect=[cfg.corpus]) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        write_json(tmp / "train_log.json", {"summary": summary, "curve": curve})
    return summary


def _diverged(cfg: TrainConfig, what: str) -> ModelError:
    return ModelError(
        f"training {cfg.family} on {cfg.corpus} diverged: {what}; lower --lr (now "
        f"{cfg.lr:g}) or raise --warmup (now {cfg.warmup}); nothing was written"
    )


@torch.no_grad()
def _mean_loss(model, ids: torch.Tensor, seqlen: int, max_windows: int = 64) -> float:
    n = min(ids.numel() // seqlen, max_windows)
    windows = ids[: n * seqlen].view(n, seqlen)
    losses = [float(model(input_ids=w[None], labels=w[None]).loss) for w in windows]
    return sum(losses) / len(losses)
