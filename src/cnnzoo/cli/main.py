"""cnnzoo: build, inspect, verify, train, evaluate, compare and export classic CNNs."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from cnnzoo.errors import CnnzooError, UsageError

# Each module defines `register(subparsers)`, which adds its commands with `set_defaults(run=fn)`;
# `fn(args) -> int` is the exit status.
COMMAND_MODULES = (
    "cnnzoo.cli.models_cmd",
    "cnnzoo.cli.train_cmd",
    "cnnzoo.cli.eval_cmd",
    "cnnzoo.cli.compare_cmd",
    "cnnzoo.cli.export_cmd",
    "cnnzoo.cli.explain_cmd",
)

EXIT_RUNTIME = 1
EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own usage errors: one line, exit 2
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="cnnzoo", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    subparsers = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    for command_parser in subparsers.choices.values():
        command_parser.add_argument(
            "--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
        )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print("cnnzoo: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            raise
        usage = isinstance(exc, UsageError) or (
            isinstance(exc, ValueError) and not isinstance(exc, CnnzooError)
        )
        kind = "error" if isinstance(exc, (CnnzooError, ValueError)) else type(exc).__name__
        print(f"cnnzoo {args.command}: {kind}: {exc}", file=sys.stderr)
        return EXIT_USAGE if usage else EXIT_RUNTIME


if __name__ == "__main__":
    sys.exit(main())
