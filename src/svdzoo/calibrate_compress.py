"""From a model to a compressed model in one call: the statistics the method needs (Gram,
Fisher, sensitivity tables) are computed, or reused where the workflow's path scheme
already holds them for this very request, then the model is compressed.

The workflow runs the same steps as separate cached jobs; this is the practitioner's path
(the official SVD-LLM code also calibrates and compresses in one command). The caches go
where the workflow puts them (`data/stats/<model>/<corpus-nN-lL-sS>/...` under
`stats_root`), so the two share them. A cache there that is not this request's (another
model behind the same name, other code, another dtype, another sensitivity grid) is never
replaced behind the user's back: the call stops before any compute and names the
differences, and `recompute_stats` replaces it. A table whose Gram cache is new (missing,
or replaced) is remade with it, as the workflow would. The model is loaded once.
"""

from __future__ import annotations

import logging
import operator
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
    from svdzoo.config import sensitivity_table, sensitivity_table_parts
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
            _, base = sensitivity_table_parts(table)  # Duo-SVD's per-ratio protocol
            path = layout.sensitivity(model_name, calibration, table)
            products.append(Product(kind, path, None if base is None else float(base)))
    return products


def check_model_name(name: str) -> None:
    """The name is one path component: '../x' or '/x' would file caches outside the root."""
    if not name or name in (".", "..") or "/" in name or "\\" in name:
        raise ConfigError(
            f"model name {name!r} must be one path component (no '/', '\\', '.' or '..'); "
            "give --model-name"
        )


def check_apart(out: str | Path, products: Sequence[Product]) -> None:
    """`out` and the cache directories may not hold one another, existing or not (the final
    rename would replace the caches, or find them in its way after all the compute)."""
    target = Path(out).resolve()
    for p in products:
        cache = p.path.resolve()
        if target == cache or target in cache.parents or cache in target.parents:
            raise ConfigError(
                f"--out {str(out)!r} and the {p.kind} cache {str(p.path)!r} overlap; "
                "write the compressed model elsewhere or give another stats root"
            )


def check_per_ratio(method: str, ratio: float) -> None:
    """A per-ratio Duo-SVD table is filed, and measured, at the ratio's two decimals; the
    compression accepts it only for that very ratio."""
    from svdzoo.config import per_ratio_methods

    if method in per_ratio_methods() and abs(round(ratio, 2) - ratio) > 1e-9:
        raise ConfigError(
            f"method {method!r} measures its sensitivity table at the target ratio, filed at "
            f"two decimals: give a ratio such as {round(ratio, 2):.2f}, not {ratio!r}"
        )


def check_table_options(method: Any, options: Mapping[str, Any], grids: Mapping) -> None:
    """The options a table must agree with, refused before the table is measured rather
    than by the compression after it: ASVD's alpha (its table is measured at
    `sensitivity.ASVD_ALPHA`) and Duo-SVD's `base` (a retained ratio on the table's grid)."""
    from svdzoo.sensitivity import ASVD_ALPHA

    alpha = getattr(method.factoriser, "alpha", None)
    if "sensitivity-asvd" in grids and alpha is not None and float(alpha) != ASVD_ALPHA:
        raise ConfigError(
            f"method {method.name!r} at alpha {alpha}: its sensitivity-asvd table is measured "
            f"at alpha {ASVD_ALPHA}; use that alpha, or asvd-uniform for another one"
        )
    base = options.get("base")
    grid = grids.get("sensitivity-duo")
    if base is not None and grid is not None and all(abs(p - float(base)) > 1e-9 for p in grid):
        raise ConfigError(
            f"option base={base} is not on the sensitivity-duo grid {list(grid)}; add it "
            "(sensitivity_ratios / --sensitivity-ratios) or choose one of them"
        )


def _integer(key: str, value: Any) -> int:
    """`value` as a plain int (a numpy integer too), or ConfigError naming `key`."""
    if isinstance(value, bool):
        raise ConfigError(f"{key} must be an integer, got the bool {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise ConfigError(
            f"{key} must be an integer, got the {type(value).__name__} {value!r}"
        ) from None


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
    recompute_stats: bool = False,
    force: bool = False,
) -> dict[str, Any]:
    """Compute (or reuse) the statistics, compress, and write `out`; its manifest.

    Every input is checked before any compute: the method and its options, the ratio, the
    model and its tokenizer, the corpus, the window length, each cache path (an existing
    directory there must be an earlier cache of its kind, and this request's unless
    `recompute_stats`) and `out` (`compress_to_dir`'s rules; `force` replaces an `out` that
    is not an earlier compressed model)."""
    from svdzoo import lapack
    from svdzoo.api import check_model_input, compress_loaded
    from svdzoo.compression import KIND as COMPRESSED
    from svdzoo.compression import check_ratio, check_reachable, matrix_infos, with_options
    from svdzoo.config import rewired
    from svdzoo.data import check_train_length, get_corpus, tokenizer_fingerprint
    from svdzoo.io import atomic_dir, check_output
    from svdzoo.methods import get_method
    from svdzoo.methods.base import check_options
    from svdzoo.models import (
        check_window_seqlen,
        dtype_name,
        fingerprint_known,
        load_config,
        load_model,
        load_tokenizer,
        resolve_device,
    )
    from svdzoo.paths import calib_tag
    from svdzoo.sensitivity import check_ratios

    ratio = check_ratio(ratio)
    lapack.check_environment()
    registered = get_method(method)
    check_options(registered, options)
    merged = {**registered.options, **(options or {})}
    configured = with_options(registered, merged)
    why = rewired(registered, configured)
    if why:
        raise ConfigError(f"--option {why}")
    check_per_ratio(method, ratio)
    # nsamples="4" (read from a file) was a TypeError from the comparison below, and a
    # numpy integer failed after the calibration, when its manifest was written
    nsamples, seqlen, seed = (
        _integer("nsamples", nsamples),
        _integer("seqlen", seqlen),
        _integer("seed", seed),
    )
    sensitivity_nsamples = _integer("sensitivity_nsamples", sensitivity_nsamples)
    if nsamples < 1 or seqlen < 2 or sensitivity_nsamples < 1:
        raise ConfigError(
            f"nsamples and sensitivity_nsamples must be >= 1 and seqlen >= 2 (got {nsamples}, "
            f"{sensitivity_nsamples}, {seqlen})"
        )
    check_model_input(model, dtype, device)
    corp = get_corpus(corpus)  # an unknown or unreachable corpus fails before the model loads
    check_window_seqlen(load_config(model), seqlen)
    name = model_name or default_model_name(model)
    check_model_name(name)
    tag = calib_tag(corpus, nsamples, seqlen, seed)
    products = plan_products(method, ratio, name, tag, stats_root)
    if products:  # the statistics read the corpus: one too short fails before the model loads
        check_train_length(corp, seqlen)
    check_apart(out, products)
    grids = {
        p.kind: check_ratios(sensitivity_ratios, p.kind.removeprefix("sensitivity-"))
        for p in products
        if p.kind.startswith("sensitivity-")
    }
    check_table_options(configured, merged, grids)
    for p in products:  # a foreign directory at a cache path is refused, not replaced
        check_output(p.path, p.kind, protect=(model, corpus, out))
    inputs = (model, corpus, *(p.path for p in products))
    with atomic_dir(out, COMPRESSED, force=force, protect=inputs) as tmp:
        tokenizer = load_tokenizer(model)  # a model without a tokenizer fails before loading
        lm = load_model(model, dtype=dtype, device="cpu")  # Gram calibration streams layers
        check_reachable(matrix_infos(lm), ratio)  # before any statistics are computed
        # hashed once: calibration, the tables and compression leave the weights as they are
        # until compression, the last step, replaces them
        with fingerprint_known(lm) as fp:
            requests = _Requests(
                fp, corp, dict(corpus=corpus, nsamples=nsamples, seqlen=seqlen,
                seed=seed), dtype_name(lm), device,
                sensitivity_nsamples, grids, tokenizer_fingerprint(tokenizer),
            )  # fmt: skip
            found = requests.existing(products, recompute_stats)  # before any compute
            stats = _statistics(products, found, lm, tokenizer, requests, name, (model, corpus))
            lm.to(resolve_device(device))
            paths = {p.kind: p.path for p in products}
            manifest = compress_loaded(
                lm, tokenizer, method, ratio, tmp, stats, paths, options=options, base=model
            )
    log.info("wrote %s (achieved ratio %.4f)", out, manifest["achieved_ratio"])
    return manifest


@dataclass(frozen=True)
class _Requests:
    """What each product must record to be this call's."""

    fingerprint: str
    corpus: Any
    calib: Mapping[str, Any]
    dtype: str
    device: str
    sensitivity_nsamples: int
    grids: Mapping[str, Sequence[float]]
    tokenizer_fp: str | None = None  # the windows' tokens (data.tokenizer_fingerprint)

    def expect(self, p: Product, gram_manifest: Mapping[str, Any] | None = None) -> dict:
        from svdzoo.calibration import expected
        from svdzoo.codehash import recorded
        from svdzoo.sensitivity import table_request

        if p.kind in ("gram", "fisher"):
            extra = {"batch_size": 1} if p.kind == "fisher" else {}  # per-sample gradients
            return expected(
                None, model_fingerprint=self.fingerprint, **self.calib,
                corpus_fingerprint=self.corpus.fingerprint, dtype=self.dtype,
                tokenizer_fingerprint=self.tokenizer_fp, code=recorded("calibrate"), **extra,
            )  # fmt: skip
        return table_request(
            self.fingerprint, gram_manifest, nsamples=self.sensitivity_nsamples,
            seqlen=self.calib["seqlen"], seed=self.calib["seed"], ratios=self.grids[p.kind],
            base_ratio=p.base_ratio, device=self.device,
        )  # fmt: skip

    def existing(self, products: Sequence[Product], recompute: bool) -> dict[str, Any]:
        """The cached products that are this request's; a cache that is not is an error
        unless `recompute`. A table is checked against the Gram cache found here, or, when
        that is to be made, against everything else (`still_current` checks the rest)."""
        found: dict[str, Any] = {}
        for p in products:  # the Gram cache first
            if not p.path.exists() or not any(p.path.iterdir()):  # an empty one is new
                continue
            gram = found["gram"].manifest if "gram" in found else None
            try:
                found[p.kind] = _load(p, self.expect(p, gram))
            except CacheError as exc:
                if not recompute:
                    raise CacheError(
                        f"{exc}. It is not replaced unasked: pass recompute_stats=True "
                        "(--recompute-stats) to recompute it, or give the request that made "
                        "it, or another stats root or model name"
                    ) from exc
                log.info("recomputing %s: %s", p.path, exc)
        return found

    def still_current(self, p: Product, table: Any, gram: Any) -> Any | None:
        """A table found while its Gram cache was to be made: still this request's only if
        it was measured on that very Gram cache (else it is remade, as downstream of it)."""
        try:
            return _load(p, self.expect(p, gram.manifest))
        except CacheError as exc:
            log.info("recomputing %s: its Gram cache is new (%s)", p.path, exc)
            return None


def _statistics(
    products: Sequence[Product], found: Mapping[str, Any], lm, tokenizer, req: _Requests,
    name: str, protect: Sequence[Any],
) -> Any:  # fmt: skip
    """The products found, the rest computed in order (the Gram cache first)."""
    from svdzoo.compression import Statistics

    stats = Statistics()
    for p in products:
        product = found.get(p.kind)
        if p.kind.startswith("sensitivity-") and product is not None and "gram" not in found:
            product = req.still_current(p, product, stats.gram)  # a new Gram cache
        if product is None:
            log.info("computing %s", p.path)
            product = _compute(p, lm, tokenizer, stats.gram, req, name, protect)
        else:
            log.info("reusing %s", p.path)
        if p.kind == "gram":
            stats.gram = product
        elif p.kind == "fisher":
            stats.fisher = product
        else:
            stats.sensitivity[p.kind.removeprefix("sensitivity-")] = product
    return stats


def _load(p: Product, expect: Mapping[str, Any]) -> Any:
    from svdzoo.calibration import load_fisher, load_stats
    from svdzoo.sensitivity import load_sensitivity

    if p.kind == "gram":
        return load_stats(p.path, expect=expect)
    if p.kind == "fisher":
        return load_fisher(p.path, expect=expect)
    return load_sensitivity(p.path, expect=expect, kind=p.kind.removeprefix("sensitivity-"))


def _compute(p: Product, lm, tokenizer, gram, req: _Requests, name: str, protect) -> Any:
    from svdzoo.calibration import calibrate_to_dir, fisher_to_dir
    from svdzoo.models import resolve_device
    from svdzoo.sensitivity import sensitivity_to_dir

    dev = resolve_device(req.device)
    if p.kind == "gram":  # the layers go to the device one at a time
        calibrate_to_dir(lm, tokenizer, p.path, device=dev, model_id=name, **req.calib)
    elif p.kind == "fisher":  # the model goes to the device and back
        fisher_to_dir(lm, tokenizer, p.path, device=dev, model_id=name, **req.calib)
    else:
        lm.to(dev)  # the probes' forward passes run where the model is
        sensitivity_to_dir(
            lm, tokenizer, gram, p.kind.removeprefix("sensitivity-"), p.path,
            protect=[*protect], nsamples=req.sensitivity_nsamples, ratios=req.grids[p.kind],
            device=dev, base_ratio=p.base_ratio, corpus=gram.manifest["corpus"],
        )  # fmt: skip
    return _load(p, {})
