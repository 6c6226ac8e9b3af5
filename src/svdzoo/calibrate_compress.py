"""From a model to a compressed model in one call: the statistics the method needs (Gram,
Fisher, sensitivity tables) are computed, or reused where the workflow's path scheme
already holds them for this very model and calibration set, then the model is compressed.

The workflow runs the same steps as separate cached jobs; this is the practitioner's path
(the official SVD-LLM code also calibrates and compresses in one command). The caches go
where the workflow puts them (`data/stats/<model>/<corpus-nN-lL-sS>/...` under
`stats_root`), so the two share them. A cache there that is not this request's (another
model behind the same name, other code, another dtype) is recomputed, and the log says why.
The model is loaded once.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from svdzoo.errors import CacheError, ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Product:
    """One statistics product the method needs: its kind (the manifest's and the compressed
    manifest's key) and where it is cached."""

    kind: str  # gram, fisher, sensitivity-duo, sensitivity-asvd
    path: Path
    base_ratio: float | None = None  # Duo-SVD's per-ratio table: the target it is for


def default_model_name(model: str | Path) -> str:
    """The name the caches are filed under: a directory's own name, a hub id's last part."""
    return Path(str(model).rstrip("/\\")).name or str(model)


def plan_products(
    method: str, ratio: float, model_name: str, calibration: str, stats_root: str | Path
) -> list[Product]:
    """What `method` needs, in the order it is computed (a sensitivity table reads the Gram
    cache), at the workflow's paths (`paths.Layout`, `config.sensitivity_table`)."""
    from svdzoo.config import sensitivity_flags, sensitivity_table
    from svdzoo.methods import get_method
    from svdzoo.methods.base import FISHER, GRAM, SENS_ASVD, SENS_DUO
    from svdzoo.paths import Layout

    layout = Layout(Path(stats_root))
    needs = get_method(method).needs
    products = []
    if needs & {GRAM, SENS_DUO, SENS_ASVD}:
        products.append(Product("gram", layout.gram(model_name, calibration)))
    if FISHER in needs:
        products.append(Product("fisher", layout.fisher(model_name, calibration)))
    for kind in (SENS_DUO, SENS_ASVD):
        if kind in needs:
            table = sensitivity_table(kind, method, f"{ratio:.2f}")
            flags = sensitivity_flags(table).split()
            base = None
            if "--base-ratio" in flags:  # Duo-SVD's per-ratio protocol
                base = float(flags[flags.index("--base-ratio") + 1])
            path = layout.sensitivity(model_name, calibration, table)
            products.append(Product(kind, path, base))
    return products


def calibrate_and_compress(
    model: str | Path,
    method: str,
    ratio: float,
    out: str | Path,
    *,
    corpus: str,
    nsamples: int,
    seqlen: int,
    seed: int,
    stats_root: str | Path = ".",
    model_name: str | None = None,
    options: Mapping[str, Any] | None = None,
    device: str = "auto",
    dtype: str = "float32",
    sensitivity_nsamples: int = 32,
    sensitivity_ratios: Sequence[float] | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Compute (or reuse) the statistics, compress, and write `out`; its manifest.

    Every input is checked before any compute: the method and its options, the ratio, the
    model and its tokenizer, the corpus, the window length, each cache path (an existing
    directory there must be an earlier cache of its kind) and `out` (`compress_to_dir`'s
    rules; `force` replaces an `out` that is not an earlier compressed model)."""
    from svdzoo import lapack
    from svdzoo.api import check_model_input, compress_loaded
    from svdzoo.compression import KIND as COMPRESSED
    from svdzoo.compression import Statistics, check_ratio, with_options
    from svdzoo.data import get_corpus
    from svdzoo.io import atomic_dir, check_output
    from svdzoo.methods import get_method
    from svdzoo.methods.base import check_options
    from svdzoo.models import check_seqlen, load_config, load_model, load_tokenizer
    from svdzoo.paths import calib_tag
    from svdzoo.sensitivity import check_ratios

    check_ratio(ratio)
    lapack.check_environment()
    registered = get_method(method)
    check_options(registered, options)
    with_options(registered, {**registered.options, **(options or {})})
    if nsamples < 1 or seqlen < 2 or sensitivity_nsamples < 1:
        raise ConfigError(
            f"nsamples and sensitivity_nsamples must be >= 1 and seqlen >= 2 (got {nsamples}, "
            f"{sensitivity_nsamples}, {seqlen})"
        )
    check_model_input(model, dtype, device)
    corp = get_corpus(corpus)  # an unknown or unreachable corpus fails before the model loads
    check_seqlen(load_config(model), seqlen)
    name = model_name or default_model_name(model)
    products = plan_products(
        method, ratio, name, calib_tag(corpus, nsamples, seqlen, seed), stats_root
    )
    grids = {
        p.kind: check_ratios(sensitivity_ratios, p.kind.removeprefix("sensitivity-"))
        for p in products
        if p.kind.startswith("sensitivity-")
    }
    for p in products:  # a foreign directory at a cache path is refused, not replaced
        check_output(p.path, p.kind, protect=(model, corpus, out))
    inputs = (model, corpus, *(p.path for p in products))
    with atomic_dir(out, COMPRESSED, force=force, protect=inputs) as tmp:
        tokenizer = load_tokenizer(model)  # a model without a tokenizer fails before loading
        lm = load_model(model, dtype=dtype, device="cpu")  # Gram calibration streams layers
        stats = Statistics()
        calib = dict(corpus=corpus, nsamples=nsamples, seqlen=seqlen, seed=seed)
        for p in products:
            if p.kind == "gram":
                stats.gram = _gram(lm, tokenizer, p.path, corp, calib, device, name)
            elif p.kind == "fisher":
                stats.fisher = _fisher(lm, tokenizer, p.path, corp, calib, device, name)
            else:
                kind = p.kind.removeprefix("sensitivity-")
                stats.sensitivity[kind] = _table(
                    lm, tokenizer, stats.gram, p, grids[p.kind], sensitivity_nsamples, device,
                    protect=(model, corpus),
                )  # fmt: skip
        from svdzoo.models import resolve_device

        lm.to(resolve_device(device))
        paths = {p.kind: p.path for p in products}
        manifest = compress_loaded(
            lm, tokenizer, method, ratio, tmp, stats, paths, options=options, base=model
        )
    log.info("wrote %s (achieved ratio %.4f)", out, manifest["achieved_ratio"])
    return manifest


def _reuse(load: Any, path: Path, expect: Mapping[str, Any]) -> Any | None:
    """The cached product at `path` if it is this request's, else None (logged: why not)."""
    if not path.exists():
        return None
    try:
        product = load(path, expect=expect)
    except CacheError as exc:
        log.info("recomputing %s: %s", path, exc)
        return None
    log.info("reusing %s", path)
    return product


def _expect(lm: Any, corp: Any, calib: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
    from svdzoo.calibration import expected
    from svdzoo.codehash import recorded

    dtype = str(next(lm.parameters()).dtype).removeprefix("torch.")
    return expected(
        lm, **calib, corpus_fingerprint=corp.fingerprint, dtype=dtype,
        code=recorded("calibrate"), **extra,
    )  # fmt: skip


def _gram(lm, tokenizer, path: Path, corp, calib, device: str, name: str):
    from svdzoo.calibration import calibrate_to_dir, load_stats
    from svdzoo.models import resolve_device

    found = _reuse(load_stats, path, _expect(lm, corp, calib))
    if found is not None:
        return found
    log.info("computing the Gram statistics -> %s", path)
    calibrate_to_dir(lm, tokenizer, path, device=resolve_device(device), model_id=name, **calib)
    return load_stats(path)


def _fisher(lm, tokenizer, path: Path, corp, calib, device: str, name: str):
    from svdzoo.calibration import fisher_to_dir, load_fisher
    from svdzoo.models import resolve_device

    found = _reuse(load_fisher, path, _expect(lm, corp, calib, batch_size=1))
    if found is not None:
        return found
    log.info("computing the Fisher statistics -> %s", path)
    fisher_to_dir(lm, tokenizer, path, device=resolve_device(device), model_id=name, **calib)
    return load_fisher(path)


def _table(lm, tokenizer, gram, p: Product, grid, nsamples: int, device: str, protect):
    from svdzoo.models import resolve_device
    from svdzoo.sensitivity import load_sensitivity, sensitivity_to_dir, table_request

    kind = p.kind.removeprefix("sensitivity-")
    want = table_request(
        lm, gram, nsamples=nsamples, seqlen=None, seed=None, ratios=grid,
        base_ratio=p.base_ratio, device=device,
    )  # fmt: skip
    found = _reuse(
        lambda path, expect: load_sensitivity(path, expect=expect, kind=kind), p.path, want
    )
    if found is not None:
        return found
    log.info("computing the %s sensitivity table -> %s", kind, p.path)
    dev = resolve_device(device)
    lm.to(dev)  # the probes' forward passes run where the model is
    sensitivity_to_dir(
        lm, tokenizer, gram, kind, p.path, protect=[*protect], nsamples=nsamples, ratios=grid,
        device=dev, base_ratio=p.base_ratio, corpus=gram.manifest["corpus"],
    )  # fmt: skip
    return load_sensitivity(p.path, kind=kind)
