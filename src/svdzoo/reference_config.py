"""What a reference model is trained with: `TrainConfig` and its checks, apart from the
training code, so that building the CLI parser (every `svdzoo` command, `--help`) imports
neither torch nor transformers: 9 s on a 2-core host. Validating params.yaml still imports
torch, through the method registry."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from svdzoo.errors import ConfigError

REFERENCE_FAMILIES = ("llama", "opt")


@dataclass(frozen=True)
class TrainConfig:
    family: str = "llama"
    corpus: str = "pydoc"
    hidden: int = 128
    layers: int = 4
    heads: int = 4
    kv_heads: int = 2
    ffn: int = 384
    seqlen: int = 128
    batch: int = 32
    steps: int = 500
    lr: float = 3e-3
    warmup: int = 30
    weight_decay: float = 0.05
    init_std: float = 0.02  # smaller init: weights become mostly learned structure sooner
    seed: int = 0
    threads: int | None = None

    @property
    def max_positions(self) -> int:
        """The longest window the trained model takes (its `max_position_embeddings`)."""
        return max(2048, self.seqlen)

    def validate(self) -> None:
        if self.family not in REFERENCE_FAMILIES:
            raise ConfigError(
                f"unknown reference family {self.family!r}; choose one of {REFERENCE_FAMILIES}"
            )
        for name in ("hidden", "layers", "heads", "kv_heads", "ffn"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.hidden % self.heads or self.heads % self.kv_heads:
            raise ConfigError("hidden must be divisible by heads, and heads by kv_heads")
        if self.family == "llama" and (self.hidden // self.heads) % 2:
            raise ConfigError(  # rotary embeddings rotate pairs of a head's dimensions
                f"a llama head's size hidden/heads must be even for its rotary position "
                f"embeddings, got {self.hidden}/{self.heads} = {self.hidden // self.heads}"
            )
        if self.steps < 1 or self.batch < 1 or self.seqlen < 8:
            raise ConfigError("steps and batch must be positive and seqlen at least 8")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"lr must be a positive finite number, got {self.lr}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ConfigError(
                f"weight_decay must be a non-negative finite number, got {self.weight_decay}"
            )
        if not 0 < self.init_std <= 1:  # also refuses NaN
            raise ConfigError(f"init_std must be in (0, 1], got {self.init_std}")
        if self.warmup < 0:
            raise ConfigError(f"warmup must be non-negative, got {self.warmup}")
        if self.threads is not None and self.threads < 0:  # 0 (like None): torch's default
            raise ConfigError(f"threads must be non-negative, got {self.threads}")


def flag_type(name: str) -> type:
    """The type a `TrainConfig` field's flag is parsed as (`int | None` as `int`)."""
    annotation = next(f.type for f in fields(TrainConfig) if f.name == name)
    return {"int": int, "float": float}.get(str(annotation).split(" ")[0], str)


def train_config(fixed: Mapping[str, Any], options: Mapping[str, Any]) -> TrainConfig:
    """A validated `TrainConfig` from a model entry's fixed keys (`family`, `corpus`,
    `steps`, `seed`) and its `options` (train-reference flags, values as text or numbers,
    each cast as its flag would be), so `validate-params` refuses what `prepare-model`
    would, before any job (`heads: 0`, `lr: nan`)."""
    names = [f.name for f in fields(TrainConfig)]
    overrides: dict[str, Any] = dict(fixed)
    for key, raw in options.items():
        name = key.replace("-", "_")
        if name not in names or name in fixed:
            raise ConfigError(
                f"unknown train-reference flag {key!r}; known: "
                + ", ".join(k.replace("_", "-") for k in names if k not in fixed)
            )
        cast = flag_type(name)
        try:
            overrides[name] = cast(str(raw))
        except ValueError:
            raise ConfigError(f"{key}={raw!r} is not a valid {cast.__name__}") from None
    cfg = TrainConfig(**overrides)
    cfg.validate()
    return cfg
