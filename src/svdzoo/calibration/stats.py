"""Float64 accumulators and the read-only statistics objects the methods consume.

Sums, not means: `H = sum_t x_t x_t^T` with its token count beside it, so caches built on
different batch sizes or merged later stay exact. The per-feature `mean |x|` (ASVD) is the
one quantity stored as a mean, because that is how every consumer reads it.

Half-precision activations (a float16 or bfloat16 model) are multiplied exactly in float32
and summed there within a chunk of `HALF_CHUNK_TOKENS` tokens, the chunks in float64
(`exact_products`): on a GPU that runs on TF32 tensor cores instead of at float64's rate,
whose products made most of a 7B calibration's time.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from svdzoo.errors import CacheError
from svdzoo.models import FAMILIES, FamilyAdapter

CHUNK_TOKENS = 256  # Grams of float32 inputs are summed over token chunks of this size, in order
HALF_DTYPES = (torch.float16, torch.bfloat16)
# half-precision inputs: float32 sums over chunks of this size (GEMMs a GPU runs at speed;
# float32's rounding over one chunk is at most HALF_CHUNK_TOKENS * 2^-24 of |x|^T |x|)
HALF_CHUNK_TOKENS = 2048


def is_half(dtype: torch.dtype) -> bool:
    return dtype in HALF_DTYPES


def chunk_tokens(half: bool) -> int:
    """The token chunk a Gram is summed over: longer for half precision (`exact_products`)."""
    return HALF_CHUNK_TOKENS if half else CHUNK_TOKENS


def gram_sums(dtype: torch.dtype) -> str:
    """How Grams of `dtype` inputs are summed, as a cache manifest records it."""
    if is_half(dtype):
        return f"exact products, float32 within {HALF_CHUNK_TOKENS}-token chunks, float64 across"
    return f"float64 (chunks of {CHUNK_TOKENS} tokens)"


@contextlib.contextmanager
def _exact_matmul(device: torch.device) -> Iterator[None]:
    """float32 matmuls that keep half-precision inputs exact inside the block: TF32 tensor
    cores on CUDA (TF32 keeps 10 significand bits and float32's exponent, so it holds
    float16 and bfloat16 values exactly), plain float32 on the CPU, whose oneDNN would
    otherwise round inputs to bfloat16 under `set_float32_matmul_precision("medium")`. Set
    through the backend's own flag and put back: torch >= 2.9 refuses to read a setting
    that its two APIs disagree on."""
    if device.type == "cuda":
        backend = torch.backends.cuda.matmul
        new_api = hasattr(backend, "fp32_precision")
        name, value = ("fp32_precision", "tf32") if new_api else ("allow_tf32", True)
    else:
        backend, name, value = torch.backends.mkldnn.matmul, "fp32_precision", "ieee"
        if not hasattr(backend, name):  # torch < 2.9: the generic setting governs it
            yield
            return
    before = getattr(backend, name)
    setattr(backend, name, value)
    try:
        yield
    finally:
        setattr(backend, name, before)


def exact_products(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """`a^T b` in float32 for float16/bfloat16 `a`, `b` (rows are tokens).

    Their significands (11 and 8 bits) multiply exactly in float32's 24, so the one
    rounding is float32's accumulation over the rows: at most `rows * 2^-24` of
    `|a|^T |b|` per entry (about `sqrt(rows) * 2^-24` in practice). That holds while the
    products stay in float32's normal range, which float16's always do; bfloat16 shares
    float32's exponent range, so past |x| ~ 2^63 a product overflows (the calibration then
    refuses the non-finite Gram) and below ~2^-63 it underflows (an absolute error under
    2^-126). The official SVD-LLM code sums every token's products in float32; here only
    a chunk's are."""
    if not (is_half(a.dtype) and is_half(b.dtype)):
        raise TypeError(f"exact products need float16/bfloat16 inputs, got {a.dtype}, {b.dtype}")
    a32 = a.float()
    b32 = a32 if b is a else b.float()  # a Gram's one copy, not two
    with _exact_matmul(a.device):
        return a32.T @ b32


class _Chunks:
    """Rows (tokens) of one or more aligned streams, handed out in chunks of exactly
    `size` consecutive rows, in order, whatever batches they arrive in; the last
    partial chunk comes out at `flush`. Summing Grams per chunk makes their bytes
    independent of the batch size (an execution setting, not part of a cache's identity)."""

    def __init__(self, size: int = CHUNK_TOKENS) -> None:
        self.size = size
        self._pending: list[tuple[torch.Tensor | None, ...]] = []
        self._rows = 0

    def put(self, *xs: torch.Tensor | None) -> list[tuple[torch.Tensor | None, ...]]:
        self._pending.append(tuple(None if x is None else x.detach() for x in xs))
        self._rows += next(x for x in xs if x is not None).shape[0]
        return self._take(final=False) if self._rows >= self.size else []

    def flush(self) -> list[tuple[torch.Tensor | None, ...]]:
        return self._take(final=True) if self._rows else []

    def _take(self, final: bool) -> list[tuple[torch.Tensor | None, ...]]:
        cols = list(zip(*self._pending, strict=True))
        rows = [None if c[0] is None else torch.cat(c) if len(c) > 1 else c[0] for c in cols]
        size = self.size
        n = self._rows if final else self._rows // size * size
        out = [
            tuple(None if r is None else r[s : s + size] for r in rows) for s in range(0, n, size)
        ]
        rest = tuple(None if r is None else r[n:] for r in rows)
        self._rows -= n
        self._pending = [rest] if self._rows else []
        return out


class GramAccumulator:
    """`H = sum x x^T`, `sum |x|` and the token count of one input group, summed over
    fixed token chunks (`_Chunks`): the bytes do not depend on the batch size. `half`:
    the inputs are float16/bfloat16, summed by `exact_products` (`gram_sums`)."""

    def __init__(self, n: int, device: torch.device, half: bool = False):
        self.H = torch.zeros(n, n, dtype=torch.float64, device=device)
        self.abssum = torch.zeros(n, dtype=torch.float64, device=device)
        self.count = 0
        self.half = half
        self._chunks = _Chunks(chunk_tokens(half))

    def add(self, x: torch.Tensor) -> None:
        """`x`: (tokens, n) inputs of the group's linear."""
        if is_half(x.dtype) != self.half:
            raise TypeError(
                f"{x.dtype} inputs for a Gram that sums {'half' if self.half else 'full'}-precision ones"
            )
        self.count += x.shape[0]
        self._fold(self._chunks.put(x))

    def _fold(self, chunks) -> None:
        for (c,) in chunks:
            if self.half:
                self.H += exact_products(c, c)
                self.abssum += c.abs().sum(0, dtype=torch.float64)
                continue
            c = c.to(torch.float64)
            self.H.addmm_(c.T, c)
            self.abssum += c.abs().sum(0)

    def finish(self) -> GramAccumulator:
        """Fold in the last partial chunk; read `H` and `absmean()` after this."""
        self._fold(self._chunks.flush())
        return self

    def absmean(self) -> torch.Tensor:
        self.finish()
        return self.abssum / max(self.count, 1)


class GramCollector(dict):
    """`{group: GramAccumulator}`, filled by calling it as a hook callback `(group, x)`."""

    def __call__(self, group: str, x: torch.Tensor) -> None:
        if group not in self:
            self[group] = GramAccumulator(x.shape[-1], x.device, half=is_half(x.dtype))
        self[group].add(x)


class CrossGramAccumulator:
    """Original inputs `X`, actual inputs `X'`: `H = X X^T`, `H' = X' X'^T`, `C = X X'^T`.

    `original=False` keeps only `H'` (then `H` and `C` are None): a third of the products,
    for methods that never read the original stream."""

    def __init__(self, n: int, device: torch.device, original: bool = True):
        self._H_actual = torch.zeros(n, n, dtype=torch.float64, device=device)
        self._H = torch.zeros_like(self._H_actual) if original else None
        self._C = torch.zeros_like(self._H_actual) if original else None
        self.count = 0
        self.half: bool | None = None  # set by the first inputs' dtype, as the Gram's
        self._chunks = _Chunks()

    # summed over token chunks like the cached Gram (so `H` equals it bytewise); reading
    # a statistic folds in the last partial chunk
    @property
    def H(self) -> torch.Tensor | None:
        self._fold(self._chunks.flush())
        return self._H

    @property
    def H_actual(self) -> torch.Tensor:
        self._fold(self._chunks.flush())
        return self._H_actual

    @property
    def C(self) -> torch.Tensor | None:
        self._fold(self._chunks.flush())
        return self._C

    def _check_dtype(self, *xs: torch.Tensor | None) -> None:
        halves = {is_half(x.dtype) for x in xs if x is not None}
        if len(halves) > 1 or (self.half is not None and halves != {self.half}):
            raise TypeError("the inputs of one cross Gram mix half and full precision")
        if self.half is None and halves:
            self.half = halves.pop()
            self._chunks = _Chunks(chunk_tokens(self.half))

    def add(self, x: torch.Tensor | None, x_actual: torch.Tensor | None) -> None:
        """Rows are tokens. `x_actual=None` means the two streams coincide for this batch;
        `x` is not read (may be None) when the accumulator keeps only `H'`."""
        if self._H is None:
            src = x if x_actual is None else x_actual
            if src is None:
                raise ValueError("no inputs to accumulate")
            self._check_dtype(src)
            self.count += src.shape[0]
            self._fold(self._chunks.put(None, src))
            return
        if x is None:
            raise ValueError("the original inputs are needed for H and C")
        self._check_dtype(x, x_actual)
        self.count += x.shape[0]
        self._fold(self._chunks.put(x, x if x_actual is None else x_actual))

    def _fold(self, chunks) -> None:
        for x, xa in chunks:
            if self.half:
                self._H_actual += exact_products(xa, xa)
                if x is not None:
                    assert self._H is not None and self._C is not None
                    self._H += exact_products(x, x)
                    self._C += exact_products(x, xa)
                continue
            xa = None if xa is None else xa.to(torch.float64)
            if x is None:  # H' only
                self._H_actual.addmm_(xa.T, xa)
                continue
            x = x.to(torch.float64)
            assert self._H is not None and self._C is not None and xa is not None
            self._H.addmm_(x.T, x)
            self._H_actual.addmm_(xa.T, xa)
            self._C.addmm_(x.T, xa)


class CosineAccumulator:
    """Mean over tokens of cos(layer input, layer output): AdaSVD's layer importance."""

    def __init__(self) -> None:
        self.total = 0.0
        self.count = 0

    def add(self, x_in: torch.Tensor, x_out: torch.Tensor) -> None:
        cos = F.cosine_similarity(x_in.to(torch.float64), x_out.to(torch.float64), dim=-1)
        # one sum per sequence, added in order: the same total for any batching
        for v in cos.reshape(-1, cos.shape[-1]).sum(-1).tolist():
            self.total += v
        self.count += cos.numel()

    def mean(self) -> float:
        return self.total / max(self.count, 1)


# ---------------------------------------------------------------- tensor naming


def gram_name(layer: int, group: str) -> str:
    return f"layers.{layer}.{group}.gram"


def absmean_name(layer: int, group: str) -> str:
    return f"layers.{layer}.{group}.absmean"


def cosine_name(layer: int) -> str:
    return f"layers.{layer}.cosine"


def count_key(layer: int, group: str) -> str:
    return f"layers.{layer}.{group}"


# ---------------------------------------------------------------- read-only views


class _Cached:
    """A manifest plus tensors fetched by name (from memory, or lazily from a file)."""

    def __init__(self, manifest: dict[str, Any], get: Callable[[str], torch.Tensor]):
        self.manifest = manifest
        self._get = get

    @property
    def kind(self) -> str:
        return self.manifest["kind"]

    @property
    def adapter(self) -> FamilyAdapter:
        return FAMILIES[self.manifest["family"]]

    def tensor(self, name: str) -> torch.Tensor:
        return self._get(name)

    def tensor_names(self) -> list[str]:
        return list(self.manifest["tensors"])

    def locate(self, full_name: str) -> tuple[int, str]:
        """`'model.layers.3.self_attn.q_proj' -> (3, 'self_attn.q_proj')`."""
        prefix = re.escape(self.manifest["layers_path"])
        m = re.fullmatch(rf"{prefix}\.(\d+)\.(.+)", full_name)
        if m is None or m.group(2) not in self.adapter.targets:
            raise CacheError(
                f"{full_name!r} is not a target linear of this {self.manifest['family']} cache "
                f"(expected '{self.manifest['layers_path']}.<i>.<one of {list(self.adapter.targets)}>')"
            )
        return int(m.group(1)), m.group(2)


@dataclass(frozen=True)
class TargetStats:
    """The input statistics one target linear reads (shared with its group)."""

    layer: int
    group: str
    gram: torch.Tensor
    absmean: torch.Tensor
    count: int


class CalibrationStats(_Cached):
    """Gram matrices, abs-means and layer cosines of one (model, calibration set)."""

    @property
    def num_layers(self) -> int:
        return int(self.manifest["num_layers"])

    @property
    def groups(self) -> tuple[str, ...]:
        return tuple(self.manifest["groups"])

    def gram(self, layer: int, group: str) -> torch.Tensor:
        """float64 `H = sum x x^T` (n x n) of the inputs of `group` in decoder layer `layer`."""
        return self.tensor(gram_name(layer, group))

    def absmean(self, layer: int, group: str) -> torch.Tensor:
        """float64 per-feature mean |x| over the calibration tokens (ASVD's scaling)."""
        return self.tensor(absmean_name(layer, group))

    def count(self, layer: int, group: str) -> int:
        key = count_key(layer, group)
        if key not in self.manifest["counts"]:
            raise CacheError(f"no statistics for layer {layer} group {group!r} in this cache")
        return int(self.manifest["counts"][key])

    def cosine(self, layer: int) -> float:
        """Mean cos(input, output) hidden state of decoder layer `layer` (AdaSVD adaCR)."""
        return float(self.tensor(cosine_name(layer)))

    def stats_for_target(self, full_name: str) -> TargetStats:
        """The statistics of a target linear by its full module name, via its input group."""
        layer, target = self.locate(full_name)
        group = self.adapter.group_of(target)
        return TargetStats(
            layer,
            group,
            self.gram(layer, group),
            self.absmean(layer, group),
            self.count(layer, group),
        )

    def gram_for_target(self, full_name: str) -> torch.Tensor:
        layer, target = self.locate(full_name)
        return self.gram(layer, self.adapter.group_of(target))


class FisherStats(_Cached):
    """FWSVD's squared-gradient importances of every target linear's weight (m x n).

    `row(name)[i] = sum_batches sum_j (dL/dW_ij)^2` (m,), the paper's reading;
    `col(name)[j] = sum_batches sum_i (dL/dW_ij)^2` (n,), the per-input-column variant.
    """

    def row(self, full_name: str) -> torch.Tensor:
        self.locate(full_name)
        return self.tensor(f"{full_name}.row")

    def col(self, full_name: str) -> torch.Tensor:
        self.locate(full_name)
        return self.tensor(f"{full_name}.col")

    @property
    def targets(self) -> list[str]:
        return list(self.manifest["targets"])
