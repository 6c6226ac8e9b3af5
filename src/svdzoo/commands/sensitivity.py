"""`svdzoo sensitivity`: the module sensitivity table of one (model, calibration set).

Duo-SVD (`--kind duo`, KL of next-token distributions) and ASVD (`--kind asvd`,
calibration perplexity). By default the table does not depend on the target ratio: it is
computed once and every `svdzoo compress` of the method reuses it; `--base-ratio R` measures
Duo-SVD's per-ratio table for target ratio R instead. An existing table in `--out` that
matches the request is kept unless `--force`.
"""

from __future__ import annotations

import argparse
import logging

NAME = "sensitivity"
HELP = "compute and cache a module sensitivity table (duo: KL; asvd: perplexity)"

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="hub id or saved model dir")
    p.add_argument("--stats", required=True, help="Gram statistics directory (svdzoo calibrate)")
    p.add_argument("--kind", choices=("duo", "asvd"), required=True)
    p.add_argument(
        "--nsamples", type=int, default=32, help="calibration windows measured (default 32)"
    )
    p.add_argument("--seqlen", type=int, help="window length (default: the Gram cache's)")
    p.add_argument("--seed", type=int, help="window seed (default: the Gram cache's)")
    p.add_argument(
        "--corpus", help="corpus name or file (default: the Gram cache's; needed for local files)"
    )
    p.add_argument(
        "--ratios",
        type=float,
        nargs="+",
        help="RETAINED ratios to probe (default duo 0.1..1.0, asvd 0.4..0.9; 1.0 always added)",
    )
    p.add_argument(
        "--base-ratio",
        type=float,
        help="Duo-SVD's per-ratio protocol: every other module at this compression ratio "
        "(the target the table is for); default: every other module dense",
    )
    p.add_argument("--batch-size", type=int, default=8, help="windows per forward pass")
    p.add_argument(
        "--max-tokens",
        type=int,
        default=4096,
        help="tokens per probe forward pass: several retained ratios of one module share a "
        "pass while (ratios x batch-size x seqlen) fits (a speed knob; the values do not change)",
    )
    p.add_argument("--out", required=True, help="table directory to (re)write")
    p.add_argument("--force", action="store_true", help="recompute even if --out matches")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="float32", help="dtype the model is loaded in")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from svdzoo.calibration import load_stats
    from svdzoo.errors import CacheError, ConfigError
    from svdzoo.io import check_output
    from svdzoo.models import (
        check_window_seqlen,
        fingerprint_known,
        load_config,
        load_model,
        load_tokenizer,
        resolve_dtype,
    )
    from svdzoo.sensitivity import (
        check_ratios,
        gram_corpus,
        load_sensitivity,
        sensitivity_to_dir,
        table_request,
    )

    if args.nsamples < 1 or args.batch_size < 1 or args.max_tokens < 1:
        raise ConfigError("--nsamples, --batch-size and --max-tokens must be positive")
    grid = check_ratios(args.ratios, args.kind)
    if args.base_ratio is not None and (args.kind != "duo" or not 0 < args.base_ratio < 1):
        raise ConfigError("--base-ratio takes a compression ratio in (0, 1), with --kind duo only")
    resolve_dtype(args.dtype)
    # refuse a foreign --out (or an input, or '.') before any compute, not after the probes
    check_output(
        args.out,
        f"sensitivity-{args.kind}",
        force=args.force,
        protect=[args.stats, args.model, args.corpus],
    )
    # the manifest's checks first: the tensors' sha256 takes minutes for a 7B Gram cache
    gram = load_stats(args.stats, verify=False)
    # `compress` accepts a table only from the Gram cache's own calibration set (corpus,
    # seqlen, seed); refuse a mismatch now rather than after the probes have run
    for flag, value in (("seqlen", args.seqlen), ("seed", args.seed)):
        have = gram.manifest.get(flag)
        if value is not None and have is not None and value != have:
            raise ConfigError(
                f"--{flag} {value} differs from the Gram cache's {flag} {have} ({args.stats}): "
                "compress refuses a sensitivity table from another calibration set than its "
                f"Gram cache; omit --{flag} (it defaults to the cache's) or calibrate at {value}"
            )
    # an unknown corpus, or not the Gram cache's, fails before the model loads and is hashed
    gram_corpus(gram.manifest, args.corpus)
    from svdzoo.calibration.cache import (
        check_made_in_dtype,
        check_same_architecture,
        check_tokenizer,
    )

    config = load_config(args.model)  # another model's Gram first: its dtype may differ too
    check_same_architecture(gram.manifest, config, "the Gram statistics")
    check_made_in_dtype(gram.manifest, args.dtype, "the Gram statistics", "table")
    tokenizer = load_tokenizer(args.model)  # a model without a tokenizer fails before loading
    check_tokenizer(gram.manifest, tokenizer, "the Gram statistics")  # before the model loads
    check_window_seqlen(config, args.seqlen or gram.manifest["seqlen"])
    gram = load_stats(args.stats)  # now its sha256
    model = load_model(args.model, dtype=args.dtype, device=args.device)
    # the windows and grid asked of a table found at --out are the ones a new table measures
    windows = dict(nsamples=args.nsamples, seqlen=args.seqlen, seed=args.seed, ratios=grid)
    # hashed once for the request and the table's manifest (the probes restore the weights)
    with fingerprint_known(model) as fp:
        want = table_request(
            fp, gram.manifest, **windows, base_ratio=args.base_ratio, device=args.device
        )
        if not args.force and Path(args.out).is_dir():
            try:
                load_sensitivity(args.out, expect=want, kind=args.kind)
            except CacheError as exc:
                log.info("recomputing %s: %s", args.out, exc)
            else:
                log.info(
                    "%s already holds this table; nothing to do (--force recomputes)", args.out
                )
                return 0
        manifest = sensitivity_to_dir(
            model,
            tokenizer,
            gram,
            args.kind,
            args.out,
            force=args.force,
            protect=[args.stats, args.model, args.corpus],
            **windows,
            corpus=args.corpus,
            batch_size=args.batch_size,
            max_tokens=args.max_tokens,
            base_ratio=args.base_ratio,
        )
    log.info(
        "sensitivity-%s of %s: %d modules -> %s",
        args.kind,
        args.model,
        manifest["modules"],
        args.out,
    )
    return 0
