"""Argument types and options several commands share, so that they parse and read alike."""

from __future__ import annotations

import argparse
import re
from typing import Any

from cnnzoo.errors import UsageError

SOURCE_HELP = (
    "a run directory, a checkpoint file (.safetensors or torchvision .pth), a model name with "
    "--weights, or (predict, evaluate, quantize) an .onnx file"
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


def add_onnx_arguments(parser: argparse.ArgumentParser) -> None:
    """What an ONNX file that cnnzoo did not write cannot say about itself."""
    group = parser.add_argument_group("for an .onnx file cnnzoo did not write")
    group.add_argument("--classes", metavar="FILE", help="its class names, one per line")
    group.add_argument(
        "--input-size", metavar="CxHxW", help="its input size, e.g. 3x224x224 (if not fixed)"
    )
    group.add_argument("--mean", type=float, nargs="+", help="per-channel mean of [0, 1] pixels")
    group.add_argument("--std", type=float, nargs="+", help="per-channel std of [0, 1] pixels")


def onnx_options(args: argparse.Namespace) -> dict[str, Any]:
    """The add_onnx_arguments values as load_model's keyword arguments."""
    size = getattr(args, "input_size", None)
    return {
        "classes": getattr(args, "classes", None),
        "input_size": parse_input_size(size) if size else None,
        "mean": tuple(args.mean) if getattr(args, "mean", None) else None,
        "std": tuple(args.std) if getattr(args, "std", None) else None,
    }


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
