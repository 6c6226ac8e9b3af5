"""Shared fixtures: tiny reference models trained once per test session, offline."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from svdzoo.data import calibration_windows  # noqa: E402
from svdzoo.reference import TrainConfig, train_reference  # noqa: E402
from svdzoo.tokenizer import build_byte_tokenizer  # noqa: E402

# Small enough to train in about 35 s per family on 2 cores, trained enough to react to
# compression like an LLM (measured: llama dense ppl 4.4 on pydoc, zeroing the decoder
# linears x94000, plain SVD at 60% x15; opt 5.2, x5600, x5.5). Train at the evaluation
# length: OPT's learned positions past the training length are noise.
TINY = dict(
    corpus="pydoc",
    hidden=64,
    layers=2,
    heads=4,
    kv_heads=2,
    ffn=192,
    seqlen=128,
    batch=32,
    steps=1000,
    lr=5e-3,
    warmup=50,
    seed=0,
)


def _train(tmp_path_factory: pytest.TempPathFactory, family: str) -> Path:
    out = tmp_path_factory.mktemp(f"ref-{family}") / "model"
    train_reference(TrainConfig(family=family, **TINY), out)
    return out


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained 2-layer LLaMA-style model with grouped-query attention (saved dir)."""
    return _train(tmp_path_factory, "llama")


@pytest.fixture(scope="session")
def tiny_opt_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained 2-layer OPT-style model (biases, fc1/fc2) (saved dir)."""
    return _train(tmp_path_factory, "opt")


@pytest.fixture(scope="module")
def tok():
    """The byte-level tokenizer the reference models use (no files, no hub)."""
    return build_byte_tokenizer()


@pytest.fixture(scope="module")
def windows(tok) -> torch.Tensor:
    """Four 32-token pydoc calibration windows for the untrained `helpers.random_tiny` models."""
    return calibration_windows(tok, "pydoc", nsamples=4, seqlen=32, seed=0)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module's tests: its tiny matrices and models only make a second
    BLAS thread spin (and stall) on a shared 2-core host. Use with
    `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
