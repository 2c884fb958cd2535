"""cnnzoo: build, inspect, verify, train, evaluate, compare and export classic CNNs."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import signal
import sys
import warnings
from collections.abc import Iterator, Sequence

from cnnzoo.errors import (
    EXIT_INTERRUPTED,
    EXIT_RUNTIME,
    EXIT_TERMINATED,
    EXIT_USAGE,
    CnnzooError,
    Terminated,
    UsageError,
)
from cnnzoo.signals import defer_sigint

# Each module defines `register(subparsers)`, which adds its commands with `set_defaults(run=fn)`;
# `fn(args) -> int` is the exit status.
COMMAND_MODULES = (
    "cnnzoo.cli.models_cmd",
    "cnnzoo.cli.train_cmd",
    "cnnzoo.cli.eval_cmd",
    "cnnzoo.cli.compare_cmd",
    "cnnzoo.cli.export_cmd",
    "cnnzoo.cli.quantize_cmd",
    "cnnzoo.cli.weights_cmd",
    "cnnzoo.cli.explain_cmd",
    "cnnzoo.cli.experiment_cmd",
    "cnnzoo.cli.serve_cmd",
)



class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own usage errors: one line, exit 2
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="cnnzoo", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument(
        "--offline",
        action="store_true",
        help="never download (pretrained weights must be in the cache already); also "
        "CNNZOO_OFFLINE=1",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    for command_parser in subparsers.choices.values():
        for flag in ("--debug", "--offline"):  # accepted after the command too
            command_parser.add_argument(
                flag, action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
            )
    return parser


def describe_error(exc: BaseException) -> str:
    """One line for the user: cnnzoo's own errors as they are, file-system errors with the file,
    anything else (a bug) without Python's exception name, pointing at --debug."""
    text = " ".join(str(exc).split())
    if isinstance(exc, (CnnzooError, ValueError)):
        return f"error: {text}"
    if isinstance(exc, OSError) and exc.strerror:
        where = f": {exc.filename}" if exc.filename else ""
        return f"error: {exc.strerror.lower()}{where}"
    return f"internal error: {text or type(exc).__name__} (--debug shows where)"


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated


def _one_line_warnings(command: str) -> None:
    """Warnings print as ``cnnzoo COMMAND: warning: ...``, not Python's file:line format."""

    def show(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
        text = " ".join(str(message).split())
        print(f"cnnzoo {command}: warning: {text}", file=file or sys.stderr)

    warnings.showwarning = show


@contextlib.contextmanager
def _offline(enabled: bool) -> Iterator[None]:
    """--offline: the environment switch every download checks, for this command only."""
    from cnnzoo.pretrained import OFFLINE_ENV

    before = os.environ.get(OFFLINE_ENV)
    if enabled:
        os.environ[OFFLINE_ENV] = "1"
    try:
        yield
    finally:
        if enabled:
            if before is None:
                os.environ.pop(OFFLINE_ENV, None)
            else:
                os.environ[OFFLINE_ENV] = before


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """``parse_args``, except that a command whose last positional takes any number of values
    (``set_defaults(more_positionals=DEST)``, e.g. predict's files) also gets those that follow
    an option: argparse gives an optional ``*`` positional its (empty) share at the first
    positional and calls later ones unrecognised."""
    args, extra = parser.parse_known_args(argv)
    dest = getattr(args, "more_positionals", None)
    if extra and (dest is None or any(item.startswith("-") for item in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        setattr(args, dest, [*getattr(args, dest), *extra])
    return args


def main(argv: Sequence[str] | None = None) -> int:
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    showwarning = warnings.showwarning
    debug = "--debug" in (sys.argv[1:] if argv is None else argv)
    command = None
    try:
        # Building the parser imports torch and the command modules. A KeyboardInterrupt in the
        # middle of an import can be swallowed by the library being imported and leave it half
        # initialised (measured: the command then ran to the end, or failed with "cannot load
        # module more than once"), so Ctrl-C is held until the imports are done.
        with defer_sigint():
            parser = build_parser()
        args = _parse(parser, argv)
        command, debug = args.command, args.debug
        _one_line_warnings(command)
        with _offline(args.offline):
            return int(args.run(args) or 0)
    except KeyboardInterrupt as exc:
        terminated = isinstance(exc, Terminated)
        print(f"cnnzoo: {'terminated' if terminated else 'interrupted'}", file=sys.stderr)
        return EXIT_TERMINATED if terminated else EXIT_INTERRUPTED
    except Exception as exc:
        if debug:
            raise
        usage = isinstance(exc, UsageError) or (
            isinstance(exc, ValueError) and not isinstance(exc, CnnzooError)
        )
        prefix = f"cnnzoo {command}" if command else "cnnzoo"
        print(f"{prefix}: {describe_error(exc)}", file=sys.stderr)
        return EXIT_USAGE if usage else EXIT_RUNTIME
    finally:
        signal.signal(signal.SIGTERM, previous)
        warnings.showwarning = showwarning


if __name__ == "__main__":
    sys.exit(main())
