"""Test helpers shared by several test modules: tiny random models, synthetic layer data.

Plain functions, not fixtures (those live in conftest.py); test modules import them as
`from helpers import ...` (pytest puts this directory on `sys.path`).
"""

from __future__ import annotations

import importlib.util
import math
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from svdzoo.calibration import CalibrationStats, calibrate
from svdzoo.methods.base import MatrixContext
from svdzoo.models import load_model, load_tokenizer

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def load_benchmark(name: str):
    """`benchmarks/<name>.py` as a module (benchmarks are scripts, not a package), with
    `benchmarks/` on `sys.path` while it loads, for the siblings it imports."""
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(BENCH))
    return mod


def random_tiny(family: str, layers: int = 2, seed: int = 0, **overrides: Any):
    """An untrained 2-layer (by default) LLaMA, OPT, Gemma 3 or Qwen2 (sliding) on the byte tokenizer's 258 ids, in eval mode.

    Seeded before construction, so the same arguments give the same weights. transformers is
    imported here, not at module level, so test modules that import this file but build no
    model do not pay for it.
    """
    from transformers import LlamaConfig, LlamaForCausalLM, OPTConfig, OPTForCausalLM

    torch.manual_seed(seed)
    if family == "gemma3":  # sliding (window 4) and full layers: different masks and rotary
        from transformers import Gemma3ForCausalLM, Gemma3TextConfig

        kinds = ["sliding_attention", "full_attention"] * layers
        cfg = Gemma3TextConfig(
            hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
            intermediate_size=128, num_hidden_layers=layers, vocab_size=258, sliding_window=4,
            layer_types=kinds[:layers], max_position_embeddings=128, **overrides,
        )  # fmt: skip
        return Gemma3ForCausalLM(cfg).eval()
    if family == "qwen2":  # layer 0 full attention, the others sliding (window 4)
        from transformers import Qwen2Config, Qwen2ForCausalLM

        cfg = Qwen2Config(
            hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
            num_hidden_layers=layers, vocab_size=258, use_sliding_window=True, sliding_window=4,
            max_window_layers=1, max_position_embeddings=128, **overrides,
        )  # fmt: skip
        return Qwen2ForCausalLM(cfg).eval()
    if family == "llama":
        cfg = LlamaConfig(
            hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
            num_hidden_layers=layers, vocab_size=258, **overrides,
        )  # fmt: skip
        return LlamaForCausalLM(cfg).eval()
    cfg = OPTConfig(
        hidden_size=64, num_attention_heads=4, ffn_dim=128, num_hidden_layers=layers,
        vocab_size=258, word_embed_proj_dim=64, max_position_embeddings=128, **overrides,
    )  # fmt: skip
    return OPTForCausalLM(cfg).eval()


def load_calibrated(model_dir: Path, **calib: Any) -> tuple[Any, Any, CalibrationStats]:
    """`(model, tokenizer, Gram statistics)` of a saved model; `calib` goes to `calibrate`."""
    model, tok = load_model(model_dir), load_tokenizer(model_dir)
    return model, tok, calibrate(model, tok, **calib)


def matrix_ctx(W, H=None, Hp=None, C=None, *, name: str = "m") -> MatrixContext:
    """A one-matrix context; `Hp`/`C` are the compressed-input Gram and cross Gram."""
    return MatrixContext(name=name, layer=0, type="t", group="g", W=W, H=H, H_actual=Hp, C=C)


def correlated_data(m: int = 24, n: int = 16, tokens: int = 300, seed: int = 0):
    """`(W, X, X')`: a weight, anisotropic inputs, and those inputs after upstream compression
    (a correlated perturbation of X)."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(m, n, generator=g, dtype=torch.float64)
    X = torch.randn(n, tokens, generator=g, dtype=torch.float64)
    X = X * torch.linspace(0.2, 3.0, n, dtype=torch.float64)[:, None]
    Xp = X + 0.3 * torch.randn(n, n, generator=g, dtype=torch.float64) @ X / n**0.5
    return W, X, Xp


def actual_loss(W, Wp, H, Hp, C) -> float:
    """`||W X - W' X'||_F^2` from the Grams: tr(W H W^T) - 2 tr(W C W'^T) + tr(W' H' W'^T)."""
    return float((W @ H * W).sum() - 2 * (W @ C * Wp).sum() + (Wp @ Hp * Wp).sum())


def kill_when_ready(code: str, *argv: str | Path, ready: bytes, env: dict | None = None) -> None:
    """Run `code` in a fresh Python, wait for it to print `ready`, then SIGKILL it: a job
    killed mid-write, with no `finally` run (the fault tests' crash)."""
    env = env if env is not None else {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.Popen(
        [sys.executable, "-c", code, *map(str, argv)], stdout=subprocess.PIPE, env=env
    )
    try:
        assert child.stdout.readline().strip() == ready
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()


# ---------------------------------------------------------------- layer data (linalg, column_split)

F64 = torch.float64


def layer_data(m: int = 24, n: int = 16, N: int = 200, seed: int = 0):
    """A weight and correlated, unevenly scaled inputs (like real activations)."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(m, n, generator=g, dtype=F64)
    mix = torch.randn(n, n, generator=g, dtype=F64) / math.sqrt(n)
    scale = torch.logspace(0, 1.5, n, dtype=F64)
    X = (torch.eye(n, dtype=F64) + mix) @ (
        scale[:, None] * torch.randn(n, N, generator=g, dtype=F64)
    )
    return W, X, X @ X.T


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


OUTLIER_FEATURES = [2, 5, 11, 17, 23, 29, 30, 36]


def outlier_data(seed=0):
    """More outlier features than the rank can absorb: Duo-SVD's motivating case.

    (A handful of outliers would simply take the top singular directions, leaving no
    residual on their columns to preserve.)"""
    g = torch.Generator().manual_seed(seed)
    m, n, N = 48, 40, 400
    W = torch.randn(m, n, generator=g, dtype=F64)
    X = torch.randn(n, N, generator=g, dtype=F64)
    X[OUTLIER_FEATURES] *= 10.0
    return W, X, X @ X.T
