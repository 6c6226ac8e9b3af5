"""Module sensitivity tables: how much the whole model suffers when ONE module is compressed.

Two tables, both `{module name: {retained ratio p: value}}`:

- `duo` (Duo-SVD's module-adaptive allocation): each target linear alone (all others
  dense) is replaced by its plain whitened (SVD-LLM, Cholesky) truncation at retained
  ratio `p in {0.1, ..., 1.0}`; the value is `KL(P_original || P_perturbed)` of the
  next-token distributions, averaged over every calibration token. `p = 1.0` is the dense
  module: KL exactly 0.
- `asvd` (ASVD's sensitivity-based allocation): the same probe with ASVD's
  activation-scaled factoriser at retained `p in {0.4, ..., 0.9}`; the value is the
  calibration perplexity. `p = 1.0` holds the dense model's perplexity.

Two protocols for `duo` (methods.md, Duo-SVD):

- `independent` (the default; `duo-svd-independent`): each module alone, every other
  module dense. The table depends only on (model, calibration set), so one table serves
  every target ratio. The base is the dense module (KL 0), so values are already "minus
  the base".
- `per-ratio` (`base_ratio=R`, `svdzoo sensitivity --base-ratio R`; the official CPSVD
  code's protocol, `duo-svd`): every module first sits at the target ratio `R`; each is then
  varied alone over the grid (`p = 1.0` is that module dense) with all others at `R`, and
  the value is the KL minus the all-at-`R` model's KL. It captures how one module's error
  interacts with the others being compressed, and costs one table per target ratio.

Measurement windows come from `svdzoo.data.calibration_windows` with the Gram cache's
corpus, seqlen and seed (Duo-SVD's code uses 32 samples; ASVD's 32 x 2048, seed 233).
Original log-probabilities are computed once and kept on the CPU in float32
(`nsamples * seqlen * vocab * 4` bytes: 8.4 GB for 32 x 2048 x 32k; lower nsamples on a
small host). Each probe swaps the module's weight for the dense product of its factors
(numerically the factored module) and always restores it.

Cache: a directory with `manifest.json` and `table.json`, written atomically; the manifest
carries the table's sha256, so `load_sensitivity` detects truncation or corruption.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from svdzoo import linalg
from svdzoo.codehash import recorded
from svdzoo.errors import CacheError, ConfigError
from svdzoo.io import atomic_dir, read_json_object
from svdzoo.output_kl import add_up, mean_token_kl, window_kls
from svdzoo.provenance import cpu_threads, made_with

log = logging.getLogger(__name__)

KINDS = ("duo", "asvd")
METRIC = {"duo": "kl", "asvd": "ppl"}
DUO_RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
ASVD_RATIOS = (0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
DEFAULT_RATIOS = {"duo": DUO_RATIOS, "asvd": ASVD_RATIOS}
ASVD_ALPHA = 0.5
MANIFEST = "manifest.json"
TABLE = "table.json"
FORMAT_VERSION = 2  # 2: sealed manifest (manifest_sha256)


def stats_kind(kind: str) -> str:
    """`'duo' -> 'sensitivity-duo'`: the statistics kind a method declares it needs."""
    return f"sensitivity-{kind}"


# ---------------------------------------------------------------- the table


@dataclass(frozen=True, eq=False)
class SensitivityTable(Mapping[str, dict[float, float]]):
    """`{module: {retained ratio: value}}` plus the manifest that says what it was computed from.

    A read-only mapping, so allocators index it like a dict; `.manifest` lets
    `compress.check_statistics` verify the model fingerprint and calibration set.
    """

    manifest: dict[str, Any]
    table: dict[str, dict[float, float]] = field(repr=False)

    def __getitem__(self, module: str) -> dict[float, float]:
        return self.table[module]

    def __iter__(self) -> Iterator[str]:
        return iter(self.table)

    def __len__(self) -> int:
        return len(self.table)

    @property
    def kind(self) -> str:
        return self.manifest["sensitivity"]

    @property
    def ratios(self) -> tuple[float, ...]:
        return tuple(self.manifest["ratios"])

    def delta(self, base: float | None) -> dict[str, dict[float, float]]:
        """Every value minus its module's value at retained ratio `base` (None: unchanged)."""
        if base is None:
            return {m: dict(row) for m, row in self.table.items()}
        key = _match_ratio(base, self.ratios)
        return {m: {p: v - row[key] for p, v in row.items()} for m, row in self.table.items()}


def _match_ratio(p: float, ratios: Sequence[float]) -> float:
    for r in ratios:
        if abs(r - p) < 1e-9:
            return r
    raise ConfigError(f"retained ratio {p} is not on the table's grid {list(ratios)}")


def _ratio_key(p: float) -> str:
    return repr(round(float(p), 6))


def check_ratios(ratios: Sequence[float] | None, kind: str) -> tuple[float, ...]:
    """The retained-ratio grid: sorted, unique, in (0, 1], always including 1.0 (dense)."""
    if kind not in KINDS:
        raise ConfigError(f"unknown sensitivity kind {kind!r}; choose one of {KINDS}")
    grid = DEFAULT_RATIOS[kind] if ratios is None else tuple(float(r) for r in ratios)
    bad = [r for r in grid if not (math.isfinite(r) and 0.0 < r <= 1.0)]
    if bad or not grid:
        raise ConfigError(
            f"sensitivity ratios are RETAINED fractions in (0, 1]; got {list(grid) or 'none'}"
        )
    out = sorted({round(r, 6) for r in grid} | {1.0})
    return tuple(out)


# ---------------------------------------------------------------- measurement


@dataclass
class _Reference:
    """The dense model's outputs on the windows, reused by every probe."""

    logprobs: list[torch.Tensor]  # per batch, (b, seqlen, vocab) float32 on CPU (duo)
    nll: float  # summed next-token NLL of the dense model
    tokens: int  # predicted tokens (for perplexity)


def _batches(windows: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    return [windows[i : i + batch_size] for i in range(0, windows.shape[0], batch_size)]


def _logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Forward where the model's embeddings live."""
    dev = model.get_input_embeddings().weight.device
    return model(input_ids=ids.to(dev), use_cache=False).logits.float()


def _window_nlls(logits: torch.Tensor, ids: torch.Tensor) -> list[float]:
    """Each window's summed next-token NLL (float32 per token, float64 over the window),
    for `add_up`: the same total however the windows were batched."""
    ids = ids.to(logits.device)
    nll = F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none"
    )
    return nll.view(ids.shape[0], -1).double().sum(-1).tolist()


@torch.no_grad()
def _reference(model: nn.Module, batches: list[torch.Tensor], kind: str) -> _Reference:
    logprobs, nll, tokens = [], 0.0, 0
    for ids in tqdm(batches, desc="dense reference", unit="batch", leave=False):
        logits = _logits(model, ids)
        if kind == "duo":
            logprobs.append(F.log_softmax(logits, dim=-1).cpu())
        nll = add_up(nll, _window_nlls(logits, ids))
        tokens += ids.shape[0] * (ids.shape[1] - 1)
    return _Reference(logprobs, nll, tokens)


@torch.no_grad()
def _measure(model: nn.Module, batches: list[torch.Tensor], kind: str, ref: _Reference) -> float:
    """duo: mean over tokens of KL(original || perturbed); asvd: perplexity.

    The plain full-forward probe: `_LayerwiseProber` computes the same value faster, and
    the tests check the two agree."""
    if kind == "duo":
        total, count = 0.0, 0
        for ids, lp0 in zip(batches, ref.logprobs, strict=True):
            lp = F.log_softmax(_logits(model, ids), dim=-1)
            total = add_up(total, window_kls(lp0, lp))
            count += lp.shape[0] * lp.shape[1]
        return mean_token_kl(total, count)
    nll = 0.0
    for ids in batches:
        nll = add_up(nll, _window_nlls(_logits(model, ids), ids))
    mean = nll / ref.tokens
    return math.exp(mean) if mean < 700 else float("inf")


class _GridLinear(nn.Module):
    """One linear applied with `g` different weights to the `g` equal slices of its batch.

    Lets one forward pass carry several probes of the same module (one per retained ratio):
    the batch is the windows repeated `g` times, slice `i` sees weight `i`."""

    def __init__(self, weights: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.weights = weights  # (g, out, in)
        self.bias = bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.weights.shape[0]
        shape = x.shape
        xs = x.reshape(g, -1, shape[-1])  # (g, rows, in): slice i = probe i
        y = torch.bmm(xs, self.weights.transpose(1, 2))
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], y.shape[-1])


def _parent(model: nn.Module, path: str) -> tuple[nn.Module, str]:
    head, _, attr = path.rpartition(".")
    return (model.get_submodule(head) if head else model), attr


class _LayerwiseProber:
    """Probes that start at the probed module's own decoder layer.

    The dense model's input to decoder layer `l` is computed once per batch and kept; a
    probe of a module in layer `l` runs only layers `l..N-1` (plus the final norm and the
    head) by temporarily giving the model the slice `layers[l:]` and feeding the kept
    hidden states through a pre-hook. Every family's own forward still does the rest
    (masks, positions, final norm, head), so no per-family code is needed. Layers before
    `l` are exactly the dense ones, so the result is the full-forward probe's, up to
    float round-off. On a 30-layer model this skips about half of the decoder work.
    """

    def __init__(self, model: nn.Module, adapter: Any, batches: list[torch.Tensor]):
        from svdzoo.calibration.capture import capture_layer_inputs, map_tensors
        from svdzoo.calibration.store import MemoryBudget

        self.model, self.adapter, self.batches = model, adapter, batches
        self.layers = adapter.layers(model)
        self._parent, self._attr = _parent(model, adapter.layers_path)
        bs = batches[0].shape[0]
        # A family whose layers come in kinds indexes its per-kind masks and rotary tables by
        # the position in the layer list, which slicing would shift: probe the full forward.
        self.sliced = adapter.layer_kinds(model) is None
        if not self.sliced:
            log.info(
                "%s: layers of several kinds, so every probe runs the full forward", adapter.name
            )
            self.hidden, self.calls = [], []
            return
        inputs = capture_layer_inputs(model, adapter, torch.cat(batches), bs, MemoryBudget(2**62))
        dev = model.get_input_embeddings().weight.device
        self.hidden = [inputs.hidden[i].to(dev) for i in range(len(inputs))]
        self.calls = [
            type(c)(
                map_tensors(c.args, lambda t: t.to(dev)), map_tensors(c.kwargs, lambda t: t.to(dev))
            )
            for c in inputs.calls
        ]
        inputs.hidden.close()

    @contextlib.contextmanager
    def _from_layer(self, index: int, box: dict[str, torch.Tensor]) -> Iterator[None]:
        first = self.layers[index]

        def feed(_mod: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            if args:
                return (box["h"], *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": box["h"]}

        handle = first.register_forward_pre_hook(feed, with_kwargs=True)
        setattr(self._parent, self._attr, nn.ModuleList(list(self.layers)[index:]))
        try:
            yield
        finally:
            setattr(self._parent, self._attr, self.layers)
            handle.remove()

    def logits(self, index: int, b: int, repeat: int = 1) -> torch.Tensor:
        """Logits of batch `b` with the model as it is now, run from layer `index`."""
        if not self.sliced:
            ids = self.batches[b].repeat(repeat, 1) if repeat > 1 else self.batches[b]
            return _logits(self.model, ids)
        ids, h = self.batches[b], self.hidden[b]
        if repeat > 1:
            ids, h = ids.repeat(repeat, 1), h.repeat(repeat, *([1] * (h.ndim - 1)))
        box = {"h": h}
        with self._from_layer(index, box):
            return _logits(self.model, ids)

    def advance(self, index: int) -> None:
        """Move the kept hidden states from the input of layer `index` to its output."""
        from svdzoo.calibration.capture import call_layer

        if not self.sliced:
            return
        layer = self.layers[index]
        self.hidden = [
            call_layer(layer, h, c) for h, c in zip(self.hidden, self.calls, strict=True)
        ]

    @torch.no_grad()
    def probe(
        self,
        index: int,
        path: str,
        lin: nn.Linear,
        weights: Mapping[float, torch.Tensor],
        kind: str,
        ref: _Reference,
        max_tokens: int,
    ) -> dict[float, float]:
        """Metric of the model with `lin` (at `path`) swapped for each weight, all else dense."""
        parent, attr = _parent(self.model, path)
        ps = list(weights)
        b_tokens = self.batches[0].numel()
        g_max = max(1, max_tokens // max(b_tokens, 1))
        out: dict[float, float] = {}
        try:
            for start in range(0, len(ps), g_max):
                chunk = ps[start : start + g_max]
                W = torch.stack([weights[p] for p in chunk]).to(
                    dtype=lin.weight.dtype, device=lin.weight.device
                )
                setattr(parent, attr, _GridLinear(W, lin.bias))
                acc = [0.0] * len(chunk)
                count = 0
                for b, ids in enumerate(self.batches):
                    logits = self.logits(index, b, repeat=len(chunk))
                    parts = logits.view(len(chunk), *ids.shape, logits.shape[-1])
                    for i in range(len(chunk)):
                        acc[i] = add_up(acc[i], _batch_value(parts[i], ids, kind, ref, b))
                    count += ids.shape[0] * ids.shape[1]
                for i, p in enumerate(chunk):
                    out[p] = _finish(acc[i], kind, ref, count)
        finally:
            setattr(parent, attr, lin)
        return out


def _batch_value(
    logits: torch.Tensor, ids: torch.Tensor, kind: str, ref: _Reference, b: int
) -> list[float]:
    """Per window, duo: summed per-token KL(original || perturbed); asvd: summed NLL."""
    if kind == "duo":
        return window_kls(ref.logprobs[b], F.log_softmax(logits, dim=-1))
    return _window_nlls(logits, ids)


def _finish(total: float, kind: str, ref: _Reference, count: int) -> float:
    if kind == "duo":
        return mean_token_kl(total, count)
    mean = total / ref.tokens
    return math.exp(mean) if mean < 700 else float("inf")


def _whitener(kind: str, ctx: Any) -> linalg.Whitener:
    """The factoriser each table is defined with, as a whitener (one SVD serves every ratio)."""
    from svdzoo.methods.parts import ActivationScaled, Whitened

    if kind == "duo":
        ctx.require("H")
        # Duo-SVD's code damps a singular Gram by 0.05 * mean(diag H) (methods.md)
        return Whitened(whitening="cholesky", fallback="diag-damp").whitener_of(ctx)
    return ActivationScaled(alpha=ASVD_ALPHA).whitener(ctx)


def _context(
    model: nn.Module, name: str, layer: int, target: str, lin: nn.Linear, gram_stats, device
):
    """The factoriser's view of one target (built per module, so memory stays per-module)."""
    from svdzoo.methods.base import MatrixContext
    from svdzoo.models import adapter_for

    adapter = adapter_for(model)
    group = adapter.group_of(target)
    return MatrixContext(
        name=name,
        layer=layer,
        type=adapter.matrix_type(target),
        group=group,
        W=lin.weight.detach().to(device=device, dtype=torch.float64),
        H=gram_stats.gram(layer, group).to(device=device, dtype=torch.float64),
        absmean=gram_stats.absmean(layer, group).to(device=device, dtype=torch.float64),
        count=int(gram_stats.count(layer, group)),
    )


def probe_rank(m: int, n: int, p: float) -> int:
    """Rank that keeps the retained fraction `p` of an `m x n` matrix (at least 1)."""
    return max(1, linalg.rank_for_ratio(m, n, 1.0 - p))


def truncated_weight(W: torch.Tensor, wh: linalg.Whitener, svd, k: int) -> torch.Tensor:
    """`A B` of the rank-`k` truncation from a precomputed `whitened_svd`."""
    U, sigma, Vh = svd
    return (U[:, :k] * sigma[:k]) @ wh.unapply(Vh[:k])


def _check_gram_matches(model_fp: str, gram_stats: Any, config: Any) -> None:
    from svdzoo.calibration.cache import check_window_prefix

    fp = gram_stats.manifest.get("model_fingerprint")
    if fp is not None and fp != model_fp:
        raise CacheError(
            f"the Gram statistics were computed on another model (fingerprint {fp}, "
            f"this model is {model_fp})"
        )
    check_window_prefix(gram_stats.manifest, config, "the Gram statistics")


def gram_corpus(gram_manifest: Mapping[str, Any], corpus: Any = None) -> Any:
    """The corpus the windows come from (`corpus`, default the Gram cache's); CacheError
    when it is not the corpus the Gram cache was computed on. Cheap: callers check it
    before loading a model."""
    from svdzoo.data import get_corpus

    gm = gram_manifest
    corp = get_corpus(corpus or gm["corpus"]) if not hasattr(corpus, "train") else corpus
    if gm.get("corpus_fingerprint") not in (None, corp.fingerprint):
        raise CacheError(
            f"corpus {corp.name!r} is not the corpus the Gram cache was computed on "
            f"({gm.get('corpus')!r}, fingerprint {gm.get('corpus_fingerprint')})"
        )
    return corp


@torch.no_grad()
def compute_sensitivity(
    model: nn.Module,
    tokenizer: Any,
    gram_stats: Any,
    kind: str,
    *,
    nsamples: int = 32,
    seqlen: int | None = None,
    seed: int | None = None,
    ratios: Sequence[float] | None = None,
    device: str | torch.device | None = None,
    corpus: Any = None,
    batch_size: int = 8,
    max_tokens: int = 4096,
    base_ratio: float | None = None,
) -> SensitivityTable:
    """Probe every target linear alone at every retained ratio; see the module docstring.

    `base_ratio` (Duo-SVD's official protocol, `kind="duo"` only): every module first sits
    at that compression ratio (its whitened truncation at retained `1 - base_ratio`); each
    module is then varied alone over the grid (`p = 1.0`: that module dense) with all others
    at the base, and the value is `KL(original || probed) - KL(original || base)`. The
    table then belongs to that one target ratio (`protocol: per-ratio` in the manifest).

    `seqlen`, `seed` and `corpus` default to the Gram cache's, so the table belongs to the
    same calibration set (`corpus` must be given when the Gram's corpus was a local file;
    a `seqlen` or `seed` other than the Gram's makes `compress` reject the pair).
    The forward passes run where the model is; `device` is where the float64
    factorisations run (default: the model's device; their SVDs in float32 on a GPU,
    `linalg.resolve_precision`). The model is left exactly as it
    was (every probe is undone, even on error).
    """
    from svdzoo.data import calibration_windows, window_prefix
    from svdzoo.models import adapter_for, eval_mode, fingerprint, resolve_device

    grid = check_ratios(ratios, kind)
    base_p = None
    if base_ratio is not None:
        if kind != "duo":
            raise ConfigError(
                "a per-ratio table (base ratio) is Duo-SVD's protocol: --kind duo only"
            )
        if not 0.0 < float(base_ratio) < 1.0:
            raise ConfigError(f"base ratio must be a compression ratio in (0, 1), got {base_ratio}")
        base_p = round(1.0 - float(base_ratio), 6)
    gm = gram_stats.manifest
    seqlen = int(gm["seqlen"] if seqlen is None else seqlen)
    seed = int(gm["seed"] if seed is None else seed)
    if nsamples < 1 or seqlen < 2 or batch_size < 1:
        raise ConfigError(
            f"need nsamples >= 1, seqlen >= 2 and batch_size >= 1 (got {nsamples}, {seqlen}, {batch_size})"
        )
    corp = gram_corpus(gm, corpus)
    model_fp = fingerprint(model)  # hashed once: the probes leave the weights as they were
    _check_gram_matches(model_fp, gram_stats, model.config)
    from svdzoo.calibration.cache import check_tokenizer

    check_tokenizer(gm, tokenizer, "the Gram statistics")  # its windows are cut again here
    adapter = adapter_for(model)
    device = resolve_device(device) if device is not None else next(model.parameters()).device
    precision = linalg.resolve_precision("auto", device)  # Gram eigh SVDs on a GPU (issue 16)
    if max_tokens < 1:
        raise ConfigError(f"max_tokens must be positive, got {max_tokens}")
    with eval_mode(model):
        t0 = time.perf_counter()
        prefix = window_prefix(model.config)  # the Gram's own (checked above)
        windows = calibration_windows(tokenizer, corp, nsamples, seqlen, seed, prefix=prefix)
        batches = _batches(windows, batch_size)
        ref = _reference(model, batches, kind)
        dense_value = 0.0 if kind == "duo" else math.exp(ref.nll / ref.tokens)
        table: dict[str, dict[float, float]] = {}
        layers = adapter.layers(model)
        originals: dict[str, torch.Tensor] = {}  # per-ratio protocol: weights to put back
        base_value = 0.0
        bar = tqdm(
            total=sum(len(adapter.targets) for _ in layers),
            desc=f"sensitivity-{kind}",
            unit="module",
        )
        try:
            if base_p is not None:
                for layer_index, layer in enumerate(tqdm(layers, desc="base state", unit="layer")):
                    for target, lin in adapter.target_modules(layer).items():
                        name = f"{adapter.layers_path}.{layer_index}.{target}"
                        ctx = _context(model, name, layer_index, target, lin, gram_stats, device)
                        wh = _whitener(kind, ctx)
                        m, n = ctx.W.shape
                        W = truncated_weight(
                            ctx.W,
                            wh,
                            linalg.whitened_svd(ctx.W, wh, precision),
                            probe_rank(m, n, base_p),
                        )
                        # on the CPU: a copy of every target beside the model on the GPU
                        # was 26 GB more at LLaMA-7B in float32
                        originals[name] = lin.weight.detach().to("cpu", copy=True)
                        lin.weight.data.copy_(
                            W.to(dtype=lin.weight.dtype, device=lin.weight.device)
                        )
                base_value = _measure(model, batches, kind, ref)
                log.info("base state (every module at ratio %.2f): KL %.5g", base_ratio, base_value)
            prober = _LayerwiseProber(model, adapter, batches)  # inputs of the model as it is now
            for layer_index, layer in enumerate(layers):
                for target, lin in adapter.target_modules(layer).items():
                    name = f"{adapter.layers_path}.{layer_index}.{target}"
                    bar.set_postfix_str(name)
                    ctx = _context(model, name, layer_index, target, lin, gram_stats, device)
                    if name in originals:
                        ctx.W = originals[name].to(device=device, dtype=torch.float64)
                    wh = _whitener(kind, ctx)
                    svd = linalg.whitened_svd(ctx.W, wh, precision)  # one SVD serves the grid
                    m, n = ctx.W.shape
                    weights = {
                        p: truncated_weight(ctx.W, wh, svd, probe_rank(m, n, p))
                        for p in grid
                        if p < 1.0
                    }
                    if base_p is not None:
                        weights[1.0] = ctx.W  # this module dense, the others at the base
                    row = prober.probe(layer_index, name, lin, weights, kind, ref, max_tokens)
                    if base_p is None:
                        row[1.0] = dense_value
                    table[name] = {p: row[p] - base_value for p in grid}
                    log.debug("%s: %s", name, {p: round(v, 5) for p, v in table[name].items()})
                    bar.update()
                prober.advance(layer_index)
        finally:
            bar.close()
            for name, weight in originals.items():  # undo the base state
                model.get_submodule(name).weight.data.copy_(weight)
    elapsed = time.perf_counter() - t0
    manifest = {
        "kind": stats_kind(kind),
        "sensitivity": kind,
        "metric": METRIC[kind],
        "format_version": FORMAT_VERSION,
        **made_with(),
        "threads": cpu_threads(device),  # its whitened SVDs are LAPACK's (the Gram's are not)
        "model": gm.get("model"),
        "model_fingerprint": model_fp,
        "family": adapter.name,
        "corpus": gm.get("corpus", corp.name),
        "corpus_fingerprint": corp.fingerprint,
        "nsamples": nsamples,
        "seqlen": seqlen,
        "seed": seed,
        "gram": {
            "nsamples": gm.get("nsamples"),
            "sha256": gm.get("sha256"),
            "model_fingerprint": gm.get("model_fingerprint"),
        },
        "ratios": list(grid),
        "ratio_convention": "retained fraction of each matrix's parameters (1.0 = dense)",
        "factoriser": "whitened-cholesky" if kind == "duo" else f"asvd-alpha{ASVD_ALPHA}",
        "precision": precision,
        "dense_value": dense_value,
        "protocol": "independent" if base_p is None else "per-ratio",
        "base_ratio": None if base_ratio is None else round(float(base_ratio), 6),
        "base_value": base_value,
        "modules": len(table),
        "code": recorded("sensitivity"),
        # no run time here: the manifest is hashed by DVC and must be the same on every run
    }
    log.info(
        "sensitivity-%s: %d modules x %d ratios on %d x %d tokens in %.1fs",
        kind,
        len(table),
        len(grid),
        nsamples,
        seqlen,
        elapsed,
    )
    return SensitivityTable(manifest, table)


def table_request(
    model_fingerprint: str,
    gram_manifest: Mapping[str, Any] | None,
    *,
    nsamples: int,
    seqlen: int | None,
    seed: int | None,
    ratios: Sequence[float],
    base_ratio: float | None,
    device: str | torch.device | None,
) -> dict[str, Any]:
    """The manifest fields a cached table must have to be this request's table (an `expect`
    for `load_sensitivity`): the same model, Gram cache, windows, grid, code and arithmetic.
    Without `gram_manifest`, everything but the Gram cache (then `seqlen` and `seed` must be
    given): what can be checked before the Gram cache exists."""
    from svdzoo.models import resolve_device

    gm = gram_manifest or {}
    want = {
        "model_fingerprint": model_fingerprint,
        "nsamples": nsamples,
        "seqlen": seqlen or gm["seqlen"],
        "seed": gm["seed"] if seed is None else seed,
        "ratios": list(ratios),
        "base_ratio": None if base_ratio is None else round(base_ratio, 6),
        # a table from other code (an older svdzoo, an edited probe) or other arithmetic
        # (float32 SVDs on a GPU, float64 on a CPU) is not this request's table
        "code": recorded("sensitivity"),
        "precision": linalg.resolve_precision("auto", resolve_device(device)),
    }
    if gram_manifest is not None:
        want["gram"] = {
            "nsamples": gm.get("nsamples"),
            "sha256": gm.get("sha256"),
            "model_fingerprint": gm.get("model_fingerprint"),
        }
    return want


# ---------------------------------------------------------------- cache


def _table_json(table: Mapping[str, Mapping[float, float]]) -> str:
    obj = {m: {_ratio_key(p): float(v) for p, v in row.items()} for m, row in table.items()}
    return json.dumps(obj, indent=1, sort_keys=False) + "\n"


def save_sensitivity(
    table: SensitivityTable,
    out: str | os.PathLike[str],
    *,
    force: bool = False,
    protect: Iterable[str | os.PathLike[str] | None] = (),
) -> dict[str, Any]:
    """Write `out/table.json` and `out/manifest.json` atomically; returns the manifest.

    `out` may replace only an earlier table of the same kind, unless `force` (`atomic_dir`);
    never one of `protect` (the inputs)."""
    from svdzoo.calibration.cache import seal

    text = _table_json(table.table)
    manifest = dict(table.manifest)
    manifest.update(file=TABLE, sha256=hashlib.sha256(text.encode()).hexdigest())
    seal(manifest)
    kind = table.manifest.get("kind")
    with atomic_dir(out, kind, force=force, protect=protect) as tmp:
        (tmp / TABLE).write_text(text)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def sensitivity_to_dir(
    model: nn.Module,
    tokenizer: Any,
    gram_stats: Any,
    kind: str,
    out: str | os.PathLike[str],
    *,
    force: bool = False,
    protect: Iterable[str | os.PathLike[str] | None] = (),
    **kwargs: Any,
) -> dict[str, Any]:
    """`compute_sensitivity` then `save_sensitivity` (`force`, `protect`: see there)."""
    table = compute_sensitivity(model, tokenizer, gram_stats, kind, **kwargs)
    return save_sensitivity(table, out, force=force, protect=protect)


def load_sensitivity(
    path: str | os.PathLike[str],
    *,
    expect: Mapping[str, Any] | None = None,
    kind: str | None = None,
) -> SensitivityTable:
    """Open a cached table; CacheError if it is missing, corrupted or not what `expect` says.

    `expect` maps manifest keys to required values (e.g. `model_fingerprint`, `nsamples`);
    `kind` ('duo'/'asvd') is a shorthand for `expect={'sensitivity': kind}`.
    """
    from svdzoo.calibration.cache import check_expected, check_seal

    path = Path(path)
    mpath, tpath = path / MANIFEST, path / TABLE
    if not mpath.exists():
        raise CacheError(f"{path}: no {MANIFEST}; not a sensitivity table (or never completed)")
    manifest = read_json_object(
        mpath, CacheError, "compute the table again", kind="a sensitivity table's manifest"
    )
    if manifest.get("sensitivity") not in KINDS:
        raise CacheError(f"{mpath}: not a sensitivity table manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise CacheError(
            f"{mpath}: format version {manifest.get('format_version')!r}, expected {FORMAT_VERSION}"
        )
    check_seal(manifest, str(mpath))
    want = dict(expect or {})
    if kind is not None:
        want["sensitivity"] = kind
    check_expected(manifest, want, str(path))
    if not tpath.exists():
        raise CacheError(f"{tpath}: table file missing")
    raw = tpath.read_bytes()
    if hashlib.sha256(raw).hexdigest() != manifest.get("sha256"):
        raise CacheError(f"{tpath}: sha256 does not match the manifest (corrupted or edited)")
    try:
        obj = json.loads(raw)
        table = {m: {float(p): float(v) for p, v in row.items()} for m, row in obj.items()}
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, ValueError) as exc:
        raise CacheError(f"{tpath}: unreadable table ({exc})") from exc
    grid = [float(r) for r in manifest.get("ratios", [])]
    for m, row in table.items():
        if sorted(row) != sorted(grid):
            raise CacheError(f"{tpath}: module {m!r} has ratios {sorted(row)}, manifest {grid}")
    return SensitivityTable(manifest, table)
