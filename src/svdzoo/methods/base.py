"""What a compression method is: the statistics it needs, a factoriser, an allocator.

Named methods (one small module per paper) are `Method` records over shared parts, so
an ablation or a new combination is a new record, never a copy of the algorithm.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from svdzoo.errors import ConfigError
from svdzoo.lazy import torch

# Statistics products a method may need (each is a separate cached calibration output).
GRAM = "gram"  # Gram matrices, abs-means, layer cosines (svdzoo calibrate)
FISHER = "fisher"  # squared-gradient Fisher (svdzoo calibrate --kind fisher)
SENS_DUO = "sensitivity-duo"  # Duo-SVD KL sensitivity table (svdzoo sensitivity --kind duo)
SENS_ASVD = "sensitivity-asvd"  # ASVD perplexity sensitivity table (svdzoo sensitivity --kind asvd)
STATS_KINDS = (GRAM, FISHER, SENS_DUO, SENS_ASVD)


class WhitenerCache:
    """Whiteners of the input Grams (or whitened SVDs), keyed by e.g. (whitening, layer, group).

    q/k/v read one input Gram and gate/up another, so a Cholesky or eigendecomposition is
    done once per group instead of once per matrix. Matrices are visited layer by layer,
    so a small LRU bound (`size`) keeps memory flat even at 7B scale (a 11008^2 float64
    factor is ~1 GB).

    `keep_bytes`: entries are also *kept* for the whole run, first come first kept, until
    they fill that many bytes. This serves the passes that sweep every matrix more than
    once in the same order (a spectrum allocator, then the factorisation; a search's
    candidates), where an LRU smaller than the sweep would never hit."""

    def __init__(self, size: int = 4, keep_bytes: int = 0) -> None:
        self.size = size
        self.keep_bytes = keep_bytes
        self.hits = 0
        self.misses = 0
        self._kept: dict[Hashable, Any] = {}
        self._kept_bytes = 0
        self._items: OrderedDict[Hashable, Any] = OrderedDict()

    def get(self, key: Hashable, make: Callable[[], Any]) -> Any:
        if key in self._kept:
            self.hits += 1
            return self._kept[key]
        if key in self._items:
            self.hits += 1
            self._items.move_to_end(key)
            return self._items[key]
        self.misses += 1
        value = make()
        nbytes = _nbytes(value)
        if self.keep_bytes > 0 and self._kept_bytes + nbytes <= self.keep_bytes:
            self._kept[key] = value
            self._kept_bytes += nbytes
            return value
        self._items[key] = value
        while len(self._items) > self.size:
            self._items.popitem(last=False)
        return value


def _nbytes(value: Any) -> int:
    """Bytes held by the tensors of a cached value (a tensor, a tuple of them, a Whitener)."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, tuple | list):
        return sum(_nbytes(v) for v in value)
    if dataclasses.is_dataclass(value):
        return sum(_nbytes(getattr(value, f.name)) for f in dataclasses.fields(value))
    return 0


@dataclass
class MatrixContext:
    """Everything a factoriser may read about one target matrix.

    `H_actual` and `C` are set only in sequential mode: the Gram of the inputs the layer
    sees once earlier layers are compressed, and the cross-Gram `X X'^T` with the
    original inputs.
    """

    name: str
    layer: int
    type: str
    group: str
    W: torch.Tensor  # float64, m x n, on the compute device
    bias: torch.Tensor | None = None
    H: torch.Tensor | None = None
    absmean: torch.Tensor | None = None
    fisher_row: torch.Tensor | None = None
    fisher_col: torch.Tensor | None = None
    H_actual: torch.Tensor | None = None
    C: torch.Tensor | None = None
    count: int = 0
    whiteners: WhitenerCache | None = field(default=None, repr=False, compare=False)
    # whitened SVDs by (whitening, matrix): set where one matrix is factorised at several
    # ranks (searching allocators), so each SVD is computed once
    svds: WhitenerCache | None = field(default=None, repr=False, compare=False)

    def require(self, *names: str) -> None:
        missing = [n for n in names if getattr(self, n) is None]
        if missing:
            raise ConfigError(
                f"{self.name}: this factoriser needs {missing}, which the statistics do not provide"
            )


def factorise(factoriser: Factoriser, ctx: MatrixContext, rank: int) -> Any:
    """`factoriser(ctx, rank)`, with numerical failures naming the matrix they hit."""
    from svdzoo.linalg import NumericsError

    try:
        return factoriser(ctx, rank)
    except NumericsError as exc:
        raise NumericsError(f"{ctx.name} (rank {rank}): {exc}") from exc


class Factoriser(Protocol):
    """Approximates one matrix at a given rank; returns `linalg.LowRankFactors` or `column_split.ColumnSplit`."""

    def __call__(self, ctx: MatrixContext, rank: int) -> Any: ...


@dataclass
class AllocationContext:
    """What allocators may consult: the method's statistics and a spectrum oracle."""

    stats: Any = None  # calibration.CalibrationStats
    sensitivity: Mapping[str, Any] = field(default_factory=dict)  # kind -> table
    spectrum: Callable[[str], torch.Tensor] | None = None  # target name -> whitened singular values
    options: Mapping[str, Any] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)  # allocators record choices here (e.g. K)
    # ranks -> error of the model compressed at those ranks on calibration windows, for
    # allocators that search (`probes = True`); set by `compression.compress`
    probe: Callable[[Mapping[str, int]], float] | None = None


class Allocator(Protocol):
    """Chooses a rank per matrix so the targeted linears lose `target` of their parameters."""

    def __call__(self, infos: list, target: float, ctx: AllocationContext) -> dict[str, int]: ...


@dataclass(frozen=True)
class Method:
    name: str
    description: str
    paper: str
    needs: frozenset[str]
    factoriser: Factoriser
    allocator: Allocator
    sequential: bool = False  # factorise layer by layer on compressed-model inputs
    options: Mapping[str, Any] = field(default_factory=dict)
    spectrum_factoriser: Factoriser | None = None  # what an allocator's spectrum oracle uses
    # once every matrix is factored, keeps the candidates its factoriser also offered only
    # where the model's output on calibration windows says they pay (`methods.split_probe`)
    selector: Any = None

    def __post_init__(self) -> None:
        if self.selector is not None and (self.sequential or self.probes):
            # the sequential pass and a search's reused trial modules bypass the selector
            raise ValueError(
                f"method {self.name!r}: a selector needs the one-pass factorisation of a "
                "non-searching allocator"
            )

    @property
    def probes(self) -> bool:
        """Its allocator compresses trial allocations and measures them on calibration data."""
        return bool(getattr(self.allocator, "probes", False))

    @property
    def replays_calibration(self) -> bool:
        """It runs the model on the calibration windows (needs the tokenizer)."""
        return self.sequential or self.probes or self.selector is not None


# Options read by the sequential pass (`methods.sequential`) and by the probe of searching
# allocators (`methods.probe`), beyond the fields of the method's parts.
SEQUENTIAL_OPTIONS = frozenset(
    {"seq_nsamples", "seq_batch_size", "seq_granularity", "mini_bsz", "calibration_corpus"}
)
PROBE_OPTIONS = frozenset({"search_nsamples", "calibration_corpus"})


def _fields(part: Any) -> set[str]:
    return {f.name for f in dataclasses.fields(part)} if dataclasses.is_dataclass(part) else set()


def accepted_options(method: Method) -> set[str]:
    """Every `--option` key that changes what `method` does: the fields of its parts, the
    extra keys its allocator reads (`extra_options`), and the sequential/probe options."""
    names = _fields(method.factoriser) | _fields(method.allocator) | set(method.options)
    names |= _fields(method.selector)
    # the spectrum part runs only for an allocator that reads spectra: otherwise its fields
    # (e.g. `precision`, `fallback` of adasvd-compensated's) would be accepted and ignored
    if method.spectrum_factoriser and getattr(method.allocator, "reads_spectra", False):
        names |= _fields(method.spectrum_factoriser)
    names |= set(getattr(method.allocator, "extra_options", ()))
    if method.sequential:
        names |= SEQUENTIAL_OPTIONS
    if method.probes or method.selector is not None:
        names |= PROBE_OPTIONS
    return names


def check_options(method: Method, options: Mapping[str, Any] | None) -> None:
    """Refuse, before any compute, an option the method would silently ignore, and one
    whose value is not of its default's kind (`alpha=abc` for a number failed deep in
    the compression, after the model had loaded)."""
    unknown = sorted(set(options or {}) - accepted_options(method))
    if unknown:
        known = ", ".join(sorted(accepted_options(method))) or "none"
        raise ConfigError(
            f"method {method.name!r} takes no option {', '.join(map(repr, unknown))}; "
            f"its options: {known}"
        )
    for key, value in (options or {}).items():  # `rmax=` or `min_retained: null`: a
        if value is None:  # TypeError from float(None) once the model had loaded
            raise ConfigError(
                f"method {method.name!r}: option {key!r} has no value; give one, or leave "
                "the option out for its default"
            )
    kinds = option_kinds(method)
    for key, value in (options or {}).items():
        want = kinds.get(key)
        if want is None or _kind(value) in _ACCEPTS[want]:
            continue
        raise ConfigError(f"method {method.name!r}: option {key!r} must be {want}, got {value!r}")
    ranges = option_ranges(method)
    for key, value in (options or {}).items():
        span = ranges.get(key)
        if span is not None and _kind(value) in ("an integer", "a number") and value not in span:
            raise ConfigError(
                f"method {method.name!r}: option {key!r} must be in {span}, got {value!r}"
            )
    for key, why in inert_options(method, options).items():
        raise ConfigError(f"method {method.name!r}: option {key!r} would do nothing here: {why}")


def inert_options(method: Method, options: Mapping[str, Any] | None) -> dict[str, str]:
    """Options that every part taking them ignores as configured (a part's `option_needs`:
    `fallback` under eigen whitening), with the reason: accepted, they would change nothing
    while the manifest recorded them."""
    if not options:
        return {}
    parts = _parts(with_options(method, options))
    ignored = {key: _ignored(parts, key) for key in options}
    out = {key: needs.why for key, needs in ignored.items() if needs is not None}
    for part in parts:  # what one option makes of others (ResSVD: `K` ends the search)
        out.update(getattr(part, "inert_with", lambda _: {})(dict(options)))
    return out


def unmet_needs(method: Method) -> dict[str, Needs]:
    """The options that every part taking them would ignore as `method` is configured, each
    with what it needs to count (`svdzoo methods --options`: "fallback (with
    whitening=cholesky)")."""
    parts = _parts(method)
    declared = {key for part in parts for key in getattr(part, "option_needs", {})}
    ignored = {key: _ignored(parts, key) for key in declared}
    return {key: needs for key, needs in ignored.items() if needs is not None}


def _parts(method: Method) -> list[Any]:
    # the spectrum part counts only where the allocator reads spectra (`accepted_options`)
    spectrum = method.spectrum_factoriser
    if not getattr(method.allocator, "reads_spectra", False):
        spectrum = None
    candidates = (method.factoriser, method.allocator, spectrum, method.selector)
    return [p for p in candidates if dataclasses.is_dataclass(p)]


def _ignored(parts: list[Any], key: str) -> Needs | None:
    """What option `key` needs to count, when every part taking it ignores it as
    configured (the first taker's); None when some part acts on it."""
    unmet = [_unmet(p, key) for p in parts if key in _fields(p)]
    return unmet[0] if unmet and all(unmet) else None


def _unmet(part: Any, key: str) -> Needs | None:
    needs = getattr(part, "option_needs", {}).get(key)
    if needs is None or getattr(part, needs.field) == needs.value:
        return None
    return needs


@dataclass(frozen=True)
class Needs:
    """An option that counts only while another field of its part has one value (a part's
    `option_needs`, as `option_ranges` declares ranges): `fallback` under eigen whitening
    was accepted, recorded in the manifest and ignored."""

    field: str
    value: Any
    why: str  # what happens instead, for the refusal

    def __str__(self) -> str:
        return f"with {self.field}={self.value}"


@dataclass(frozen=True)
class Range:
    """The values a numeric option can take (a part's `option_ranges`): `rmax=-1` or
    `alpha=nan` was accepted and failed, or quietly did something else, deep in the run."""

    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: object) -> bool:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        v = float(value)
        above = v > self.low if self.low_open or self.low == -math.inf else v >= self.low
        below = v < self.high if self.high_open or self.high == math.inf else v <= self.high
        return above and below  # NaN: neither

    def __str__(self) -> str:
        lo = "(" if self.low_open or self.low == -math.inf else "["
        hi = ")" if self.high_open or self.high == math.inf else "]"
        return f"{lo}{self.low:g}, {self.high:g}{hi}"


FRACTION = Range(0.0, 1.0, high_open=True)  # a share of something, 1 excluded
POSITIVE_INT = Range(1.0)


def option_ranges(method: Method) -> dict[str, Range]:
    """Each numeric option's range, as the method's parts declare it (`option_ranges`)."""
    out: dict[str, Range] = {}
    if method.probes or method.selector is not None:  # windows of the probe (`probe_windows`)
        out["search_nsamples"] = POSITIVE_INT
    for part in (method.spectrum_factoriser, method.allocator, method.factoriser, method.selector):
        out.update(getattr(part, "option_ranges", {}) if part is not None else {})
    return out


_ACCEPTS = {"a number": ("an integer", "a number"), "an integer": ("an integer",),
            "true or false": ("true or false",), "a string": ("a string",)}  # fmt: skip
_ANNOTATIONS = {
    "float": "a number",
    "int": "an integer",
    "bool": "true or false",
    "str": "a string",
}


def _kind(value: Any) -> str | None:
    """The option kinds `check_options` tells apart (None: not checked)."""
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return None


def option_kinds(method: Method) -> dict[str, str]:
    """The kind of value each option takes, where the method's parts declare it: a
    dataclass field's annotation (`float`, `int | None`, ...), the type of a
    `Method.options` default, or an allocator's `extra_options` mapping."""
    out: dict[str, str] = {k: kind for k, v in method.options.items() if (kind := _kind(v))}
    extra = getattr(method.allocator, "extra_options", {})
    out.update(extra if isinstance(extra, Mapping) else {})
    for part in (method.spectrum_factoriser, method.allocator, method.factoriser, method.selector):
        if part is None or not dataclasses.is_dataclass(part):
            continue
        for f in dataclasses.fields(part):
            # a string under `from __future__ import annotations`, else the type itself
            # (a plugin without that import: `<class 'float'>` matched no kind)
            text = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
            names = {t.strip() for t in text.split("|")} - {"None", "NoneType"}
            if len(names) == 1 and (kind := _ANNOTATIONS.get(names.pop())):
                out[f.name] = kind
    return out


def configured(part: Any, opts: Mapping[str, Any]) -> Any:
    """`part` (a frozen dataclass) with the fields named in `opts` replaced."""
    if not dataclasses.is_dataclass(part):
        return part
    changes = {k: v for k, v in opts.items() if k in _fields(part) and v is not None}
    return dataclasses.replace(part, **changes) if changes else part


def with_options(method: Method, opts: Mapping[str, Any]) -> Method:
    """`method` with its parts' fields overridden by `opts` (so every option takes effect)."""
    spectrum = method.spectrum_factoriser
    return dataclasses.replace(
        method,
        factoriser=configured(method.factoriser, opts),
        allocator=configured(method.allocator, opts),
        spectrum_factoriser=None if spectrum is None else configured(spectrum, opts),
        selector=None if method.selector is None else configured(method.selector, opts),
    )


REGISTRY: dict[str, Method] = {}
# method name -> the module whose code called `register` (a plugin's methods are told from
# svdzoo's by it, however the plugin came to be imported first)
REGISTERED_BY: dict[str, str] = {}


def register(method: Method) -> Method:
    if method.name in REGISTRY:
        raise ValueError(f"method {method.name!r} registered twice")
    unknown = set(method.needs) - set(STATS_KINDS)
    if unknown:
        raise ValueError(f"method {method.name!r} needs unknown statistics {sorted(unknown)}")
    REGISTRY[method.name] = method
    REGISTERED_BY[method.name] = sys._getframe(1).f_globals.get("__name__", "")
    return method
