"""`svdzoo evaluate`: perplexity, zero-shot accuracy and efficiency of one (compressed) model."""

from __future__ import annotations

import argparse
import logging

NAME = "evaluate"
HELP = "evaluate a dense or compressed model: perplexity, lm-eval zero-shot, efficiency"

log = logging.getLogger(__name__)


def _csv(s: str) -> list[str]:
    return [x for x in s.split(",") if x]


class _Names(argparse.Action):
    """`--x a,b` or `--x a b`: dvc.yaml's `${dict}` expansion writes lists space-separated."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, [x for v in values for x in _csv(v)])


def _batch_sizes(text: str) -> list[int]:
    """`1,4,16` -> [1, 4, 16]; argparse named a lambda's failure `invalid <lambda> value`."""
    try:
        return [int(x) for x in _csv(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated whole numbers such as 1,4,16, got {text!r}"
        ) from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model", required=True, help="hub id, saved model dir, or compressed model dir"
    )
    p.add_argument("--model-name", help="model key for the results (default: the --model value)")
    p.add_argument("--method", help="label (default: from the compressed manifest, else 'dense')")
    p.add_argument(
        "--ratio", type=float, help="label (default: from the compressed manifest, else 0)"
    )
    p.add_argument(
        "--corpora", nargs="+", action=_Names, default=[], help="corpora for perplexity (a,b)"
    )
    p.add_argument("--seqlen", type=int, default=2048)
    p.add_argument(
        "--max-windows", type=int, default=None, help="cap on evaluation windows per corpus"
    )
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--tasks", nargs="+", action=_Names, default=[], help="lm-eval tasks (a,b)")
    p.add_argument("--task-dir", default=None, help="directory of offline lm-eval task YAMLs")
    p.add_argument("--zeroshot-limit", type=int, default=None, help="lm-eval limit per task")
    p.add_argument("--efficiency-batch-sizes", type=_batch_sizes, default=[1, 4, 16])
    p.add_argument("--efficiency-prompt-len", type=int, default=128)
    p.add_argument("--efficiency-gen-len", type=int, default=32)
    p.add_argument(
        "--efficiency-repeats", type=int, default=3, help="timed runs per batch size (median)"
    )
    p.add_argument("--ppl-out")
    p.add_argument("--zeroshot-out")
    p.add_argument("--efficiency-out")
    p.add_argument(
        "--force",
        action="store_true",
        help="replace an output file even if it is not one svdzoo evaluate wrote",
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--seed", type=int, default=1234)


def run(args: argparse.Namespace) -> int:
    import math
    from pathlib import Path

    import torch

    from svdzoo.compression import read_manifest
    from svdzoo.errors import ConfigError
    from svdzoo.io import check_file_output, json_with, write_json
    from svdzoo.models import (
        check_seqlen,
        check_window_seqlen,
        is_compressed_dir,
        load_config,
        load_model,
        load_tokenizer,
        resolve_device,
    )
    from svdzoo.paths import DENSE
    from svdzoo.provenance import software

    if args.ppl_out and not args.corpora:
        raise ConfigError("--ppl-out needs --corpora")
    if args.zeroshot_out and not args.tasks:
        raise ConfigError("--zeroshot-out needs --tasks")
    # asked for and silently not done (exit 0, no file, no word)
    if args.corpora and not args.ppl_out:
        raise ConfigError("--corpora are for perplexity: give --ppl-out FILE too")
    if args.tasks and not args.zeroshot_out:
        raise ConfigError("--tasks are for zero-shot accuracy: give --zeroshot-out FILE too")
    if not (args.ppl_out or args.zeroshot_out or args.efficiency_out):
        raise ConfigError(
            "nothing to do: give at least one of --ppl-out, --zeroshot-out, --efficiency-out"
        )
    for flag, value, least in (
        ("--seqlen", args.seqlen, 2),
        ("--max-windows", args.max_windows, 1),
        ("--batch-size", args.batch_size, 1),
        ("--zeroshot-limit", args.zeroshot_limit, 1),
    ):
        if value is not None and value < least:
            raise ConfigError(f"{flag} must be >= {least}, got {value}")
    if args.ratio is not None and not 0.0 <= args.ratio < 1.0:  # 5 (for 0.5) was taken as is
        raise ConfigError(
            f"--ratio must be in [0, 1) (the fraction of parameters removed; 0 for the dense "
            f"model), got {args.ratio:g}"
        )
    # each output a file of its own, none of them an input (a corpus file included: a
    # `--ppl-out` naming it replaced the text with the JSON), checked before the model loads
    outs = [args.ppl_out, args.zeroshot_out, args.efficiency_out]
    inputs = [args.model, args.task_dir, *args.corpora]
    # an existing file is replaced only if it is this output's kind, as a rerun leaves it
    kinds = [("perplexity", "a perplexity file"), ("tasks", "a zero-shot file"),
             ("throughput", "an efficiency file")]  # fmt: skip
    for i, (out, (key, what)) in enumerate(zip(outs, kinds, strict=True)):
        if out:
            check_file_output(
                out,
                protect=inputs,
                others=outs[:i] + outs[i + 1 :],
                ours=json_with("model", "method", "ratio", key),
                what=what,
                force=args.force,
            )
    if args.corpora:  # fail on an unknown corpus before loading the model
        from svdzoo.data import get_corpus

        for c in args.corpora:
            get_corpus(c)
    if args.efficiency_out:  # efficiency settings, then tasks: before the model loads and
        # before perplexity is computed and written, not after
        from svdzoo.evaluation.efficiency import check_settings

        check_settings(
            args.efficiency_batch_sizes,
            args.efficiency_prompt_len,
            args.efficiency_gen_len,
            args.efficiency_repeats,
        )
    task_manager = None
    if args.zeroshot_out:  # unknown tasks, a missing --task-dir or an uncached dataset
        from svdzoo.evaluation.zeroshot import prepare_tasks

        task_manager = prepare_tasks(args.tasks, Path(args.task_dir) if args.task_dir else None)
    torch.manual_seed(args.seed)
    path = Path(args.model)
    # checked (sealed, a ratio in [0, 1)) before its labels go into every metric file
    manifest = read_manifest(path) if is_compressed_dir(path) else None
    if manifest is not None:  # its labels are the manifest's: others made a mislabelled run
        said = {"method": args.method, "ratio": args.ratio}
        for key, given in said.items():
            have = manifest[key]
            if given is not None and (
                abs(float(given) - float(have)) > 5e-3 if key == "ratio" else given != have
            ):
                raise ConfigError(
                    f"--{key} {given} contradicts {path}'s manifest ({key} {have}); leave "
                    f"--{key} out (it is read from the manifest) or evaluate the right model"
                )
    labels = {
        "model": args.model_name or args.model,
        "method": args.method or (manifest["method"] if manifest else DENSE),
        "ratio": args.ratio if args.ratio is not None else (manifest["ratio"] if manifest else 0.0),
    }
    made_with = {"software": software()}  # in every metrics file, beside its labels
    if manifest is not None:  # which compression was measured: the report refuses metrics
        made_with["compressed_manifest_sha256"] = manifest.get("manifest_sha256")  # of another
    device = resolve_device(args.device)
    tokenizer = load_tokenizer(args.model)  # a model without a tokenizer fails before loading
    config = load_config(args.model)  # windows past the position range fail before loading
    windows: dict[str, torch.Tensor] = {}
    prefix: tuple[int, ...] = ()
    if args.ppl_out:
        from svdzoo.data import evaluation_windows, window_prefix

        prefix = window_prefix(config)  # Gemma's BOS; none for the papers' families
        check_window_seqlen(config, args.seqlen)
        for corpus in args.corpora:  # a split shorter than --seqlen fails before loading
            windows[corpus] = evaluation_windows(
                tokenizer, corpus, args.seqlen, max_windows=args.max_windows, prefix=prefix
            )
    if args.efficiency_out:
        check_seqlen(
            config,
            args.efficiency_prompt_len + args.efficiency_gen_len,
            "--efficiency-prompt-len + --efficiency-gen-len",
        )
    model = load_model(args.model, dtype=args.dtype, device=device)
    # the arithmetic measured in: the report compares one model's runs only in one dtype
    made_with["dtype"] = str(next(model.parameters()).dtype).replace("torch.", "")

    if args.efficiency_out:  # first: peak memory on a CPU is the RSS growth during the runs,
        # which memory the allocator kept from perplexity or zero-shot would hide
        from svdzoo.evaluation.efficiency import measure_efficiency

        res = measure_efficiency(
            model,
            batch_sizes=tuple(args.efficiency_batch_sizes),
            prompt_len=args.efficiency_prompt_len,
            gen_len=args.efficiency_gen_len,
            repeats=args.efficiency_repeats,
            device=device,
            manifest=manifest,
        )
        write_json(args.efficiency_out, {**labels, **made_with, **res})

    if args.ppl_out:
        from svdzoo.evaluation.perplexity import perplexity

        ppl, nwin = {}, {}
        for corpus in args.corpora:
            ppl[corpus] = perplexity(
                model,
                windows[corpus],
                batch_size=args.batch_size,
                device=device,
                desc=f"ppl {corpus}",
            )
            nwin[corpus] = int(windows[corpus].shape[0])
            log.info(
                "%s %s r=%.2f %s perplexity %.4f",
                labels["model"],
                labels["method"],
                labels["ratio"],
                corpus,
                ppl[corpus],
            )
        # JSON has no Infinity/NaN: a diverged model is recorded as such, not as a number
        diverged = sorted(c for c, v in ppl.items() if not math.isfinite(v))
        for c in diverged:
            log.warning(
                "%s: perplexity on %s is %s: the model diverged", labels["model"], c, ppl[c]
            )
            ppl[c] = None
        write_json(
            args.ppl_out,
            {
                **labels,
                **made_with,
                "seqlen": args.seqlen,
                "window_prefix": list(prefix),
                "perplexity": ppl,
                "diverged": diverged,
                "n_windows": nwin,
            },
        )

    if args.zeroshot_out:
        from svdzoo.evaluation.zeroshot import run_zeroshot

        res = run_zeroshot(
            model,
            tokenizer,
            args.tasks,
            task_dir=Path(args.task_dir) if args.task_dir else None,
            batch_size=args.batch_size,
            limit=args.zeroshot_limit,
            seed=args.seed,
            device=device,
            task_manager=task_manager,
        )
        write_json(args.zeroshot_out, {**labels, **made_with, **res})
    return 0
