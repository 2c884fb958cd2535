"""Argument types and options several commands share, so that they parse and read alike."""

from __future__ import annotations

import argparse
import re

from cnnzoo.errors import UsageError

SOURCE_HELP = (
    "a run directory, a checkpoint file (.safetensors or torchvision .pth), or a model name "
    "with --weights"
)
WEIGHTS_HELP = (
    "for a model name: a weight name (IMAGENET1K_V1, DEFAULT, imagenet, fashion_mnist; "
    "`cnnzoo weights` lists them) or a weights file"
)


def add_source_arguments(parser: argparse.ArgumentParser, *, many: bool = False) -> None:
    """SOURCE and --weights: the same on predict, evaluate, export, summary and explain.

    ``many``: ``SOURCE [SOURCE ...]`` into ``args.sources`` (serve), each also ``MODEL:WEIGHTS``
    or ``NAME=SOURCE``; --weights then applies to a single model name."""
    if many:
        parser.add_argument(
            "sources",
            metavar="SOURCE",
            nargs="+",
            help=f"{SOURCE_HELP}; also MODEL:WEIGHTS (lenet5:digits), and NAME=SOURCE to choose "
            "the name it is served under",
        )
    else:
        parser.add_argument("source", metavar="SOURCE", help=SOURCE_HELP)
    parser.add_argument("--weights", metavar="NAME_OR_FILE", help=WEIGHTS_HELP)


def positive_float(text: str) -> float:
    """argparse type: a number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def parse_input_size(text: str, channels: int | None = None) -> tuple[int, ...]:
    """``--input-size``: ``"1x28x28"`` -> (1, 28, 28); ``"28x28"`` -> (28, 28); ``"28"`` ->
    (28, 28). With ``channels``, the sizes without one get it: always (C, H, W)."""
    parts = re.split(r"[x×,]", text.strip().lower())
    try:
        values = tuple(int(part) for part in parts)
    except ValueError:
        values = ()
    if not values or len(values) > 3 or min(values) < 1:
        raise UsageError(
            f"--input-size must be CxHxW, HxW or a side (positive integers), e.g. 1x28x28; "
            f"got {text!r}"
        )
    if len(values) == 1:
        values = values * 2
    if channels is not None and len(values) == 2:
        values = (channels, *values)
    return values
