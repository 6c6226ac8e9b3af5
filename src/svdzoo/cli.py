"""The `svdzoo` command line: one subcommand per stage, shared by Snakemake and DVC."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# Each name is a module in svdzoo.commands exposing NAME, HELP, add_arguments(p), run(args).
# Modules are imported only to build the parser; heavy imports happen inside run().
# A module that sets ACCEPTS_EXTRA = True gets unknown arguments as run(args, extra).
COMMANDS: tuple[str, ...] = (
    "corpora",
    "methods",
    "train_reference",
    "compress",
    "calibrate_compress",
    "evaluate",
    "build_tasks",
    "report",
    "calibrate",
    "validate_params",
    "sensitivity",
    "fetch_model",
    "prepare_model",
    "render_dvc",
)
# Commands that answer a question (stdout) log nothing of their own; the others are jobs
# and, when they succeed, log one line of what they cost (svdzoo.usage) for benchmarks/.
QUESTIONS: frozenset[str] = frozenset({"corpora", "methods", "validate-params", "render-dvc"})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="svdzoo", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument(
        "--execution",
        metavar="PARAMS",
        help="a params file whose execution.<command> section gives this command's "
        "execution-only flags (device, batch sizes, memory budget); flags given on the "
        "command line win. The workflow passes it so that those settings rerun nothing",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        mod = importlib.import_module(f"svdzoo.commands.{name}")
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run, _extra=getattr(mod, "ACCEPTS_EXTRA", False))
    return parser


def with_execution(argv: list[str], command: str, flags: list[str]) -> list[str]:
    """`argv` with `flags` inserted right after the subcommand, so that the same flags
    given later on the command line override them (argparse keeps the last value)."""
    at = next(
        i + 1
        for i, a in enumerate(argv)
        if a == command and (i == 0 or argv[i - 1] != "--execution")
    )
    return [*argv[:at], *flags, *argv[at:]]


def main(argv: list[str] | None = None) -> int:
    from svdzoo import usage

    started = usage.start()
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args, extra = parser.parse_known_args(argv)
    from svdzoo.errors import SvdzooError

    if args.execution:
        from svdzoo.config import execution_flags

        try:
            flags = execution_flags(args.execution, args.command)
        except SvdzooError as exc:
            print(f"svdzoo {args.command}: error: {exc}", file=sys.stderr)
            return 2
        if flags:
            args, extra = parser.parse_known_args(with_execution(argv, args.command, flags))
    if extra and not args._extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        rc = int((args._run(args, extra) if args._extra else args._run(args)) or 0)
    except SvdzooError as exc:
        print(f"svdzoo {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # the outputs' clean-up has run (atomic writes): no traceback
        print(
            f"svdzoo {args.command}: interrupted; the output being written was removed "
            "(outputs already finished are kept)",
            file=sys.stderr,
        )
        return 130
    except BrokenPipeError as exc:  # `svdzoo methods --options | head`: the reader has gone
        if not _stdout_closed():  # another pipe or socket: an error like any other
            print(f"svdzoo {args.command}: error: {exc}", file=sys.stderr)
            return 1
        _silence_stdout()
        return 141  # 128 + SIGPIPE, as a shell reports a command the pipe ended
    if rc == 0 and args.command not in QUESTIONS:
        cost = usage.measure(args.command, started)
        if cost is not None:
            logging.getLogger("svdzoo.cli").info(cost.line())
    return rc


def _stdout_closed() -> bool:
    """Whether stdout is a pipe whose reader has gone: poll reports an error on the write
    end of such a pipe (Linux, macOS). False where that cannot be told."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll, or a stdout without a descriptor
        return False


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's last flush at exit does not
    fail on the closed pipe again (Python's documented recipe for SIGPIPE)."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # a stdout without a descriptor
        pass


if __name__ == "__main__":
    sys.exit(main())
