"""`cnnzoo models`, `cnnzoo summary` and `cnnzoo verify`: list, inspect and check the zoo."""

from __future__ import annotations

import argparse
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from cnnzoo.cli.options import add_source_arguments, parse_input_size, positive_int
from cnnzoo.errors import UsageError
from cnnzoo.inference import load_model

NON_TTY_WIDTH = 160  # wide enough that tables piped to a file or `less` are not squeezed


def _console(stderr: bool = False) -> Console:
    console = Console(stderr=stderr)
    if not console.is_terminal:
        console = Console(stderr=stderr, width=NON_TTY_WIDTH, color_system=None)
    return console


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "models",
        help="list the zoo: parameters, multiply-adds, input sizes, ImageNet top-1",
        description="List registered models. PATTERN is a shell pattern or a substring.",
    )
    p.add_argument("pattern", nargs="?", default="*", help="e.g. 'resnet*' or 'vgg'")
    p.add_argument("--family", help="only this family (e.g. resnet, vgg, efficientnet)")
    p.add_argument(
        "--no-progress", action="store_true", help="no progress bar while counting (first run)"
    )
    p.set_defaults(run=run_models)

    p = subparsers.add_parser(
        "summary",
        help="layer-by-layer table of a model: output shapes, receptive fields, parameters, MACs",
        description=(
            "Print a Keras-style summary of one model (computed on the meta device): each "
            "layer's output shape, receptive field (RF, input pixels; * also sees the whole "
            "image through global pooling) and jump (effective stride), parameters and "
            "multiply-adds, then the totals."
        ),
    )
    add_source_arguments(p)
    p.add_argument(
        "--input-size",
        help="CxHxW, HxW or a side, e.g. 1x28x28 (default: the model's or the run's input size)",
    )
    p.add_argument(
        "--num-classes", type=int, help="classifier width (default: the model's own, e.g. 1000)"
    )
    p.add_argument(
        "--in-chans", type=int, help="input channels (default: the model's, or C of --input-size)"
    )
    p.add_argument("--depth", type=int, help="show modules down to this nesting depth")
    p.add_argument(
        "--small-input",
        action="store_true",
        help="the model's variant for 28-32 px images (where it has one)",
    )
    p.set_defaults(run=run_summary)

    p = subparsers.add_parser(
        "verify",
        help="check parameter counts, multiply-adds and torchvision equivalence",
        description=(
            "Check models against their reference figures (torchvision's measured counts and "
            "the papers' quoted ones) and, where torchvision has the same architecture, load "
            "its state-dict strictly and compare outputs. Exit status 1 on any mismatch."
        ),
    )
    p.add_argument("names", nargs="*", help="model names or shell patterns (default: all)")
    p.add_argument(
        "--input-size",
        type=positive_int,
        help="image side for the torchvision output comparison (default: max(min size, 64))",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=run_verify)


# --- models ---------------------------------------------------------------------------------


def run_models(args: argparse.Namespace) -> int:
    from cnnzoo.analysis.zoo_table import model_figures
    from cnnzoo.registry import get_entry, list_models

    pattern = args.pattern if any(ch in args.pattern for ch in "*?[") else f"*{args.pattern}*"
    names = list_models(pattern, family=args.family)
    if not names:
        families = sorted({get_entry(name).family for name in list_models()})
        if args.family and args.family not in families:
            raise UsageError(f"unknown family {args.family!r}; families: {', '.join(families)}")
        # The same status and words as `verify` for a pattern that matches nothing.
        raise UsageError(f"no model matches {args.pattern!r}; `cnnzoo models` lists them all")

    table = Table(
        header_style="bold",
        title=f"{len(names)} model{'' if len(names) == 1 else 's'}",
        title_justify="left",
    )
    table.add_column("name", no_wrap=True)
    table.add_column("family", no_wrap=True)
    table.add_column("params", justify="right")
    table.add_column("GMACs", justify="right")
    table.add_column("input", justify="right")
    table.add_column("min", justify="right")
    table.add_column("top-1", justify="right")
    figures = model_figures(names, progress=not args.no_progress)
    for name in names:
        entry = get_entry(name)
        row = figures[name]
        table.add_row(
            name,
            entry.family,
            f"{row.params / 1e6:.2f} M",
            f"{row.macs / 1e9:.3f}",
            str(row.input_side),
            str(row.min_input_size),
            f"{entry.imagenet_top1:.2f}" if entry.imagenet_top1 is not None else "--",
        )
    _console().print(table)
    return 0


# --- summary --------------------------------------------------------------------------------


def run_summary(args: argparse.Namespace) -> int:
    from cnnzoo.analysis.summary import summary
    from cnnzoo.registry import get_entry, list_models

    size = parse_input_size(args.input_size) if args.input_size else None
    in_chans = args.in_chans
    if size is not None and len(size) == 3:
        if in_chans is not None and in_chans != size[0]:
            raise UsageError(
                f"--in-chans {in_chans} disagrees with --input-size {args.input_size} "
                f"({size[0]} channels)"
            )
        in_chans = size[0]
    if args.source in list_models() and args.weights is None:
        # A bare name: built on the meta device (no memory), with the model's own defaults.
        options: dict[str, Any] = {"small_input": True} if args.small_input else {}
        if size is not None:
            # A Vision Transformer is built for the asked side, as training builds it.
            from cnnzoo.train.planning import side_options

            options = side_options(args.source, in_chans or 3, *size[-2:], options)
        kwargs = {"num_classes": args.num_classes, "in_chans": in_chans, **options}
        with torch.device("meta"):
            try:
                model = get_entry(args.source).builder(**kwargs)
            except TypeError as exc:
                if "small_input" in str(exc):
                    raise UsageError(f"{args.source} has no small-input variant") from None
                raise
        default_size = tuple(model.default_cfg["input_size"])
    else:
        if args.num_classes is not None or args.small_input or args.in_chans is not None:
            raise UsageError(
                "--num-classes, --in-chans and --small-input are for a model given by name; "
                "a run or weights have their own"
            )
        loaded = load_model(args.source, args.weights)
        model, default_size = loaded.model, (loaded.channels, *loaded.input_size)
    channels = default_size[0]
    if size is None:
        size = default_size
    elif len(size) == 2:
        size = (channels, *size)
    elif size[0] != channels:
        raise UsageError(f"the model takes {channels}-channel images, --input-size says {size[0]}")
    result = summary(model, size, depth=args.depth)
    _console().print(result)
    return 0


# --- verify ---------------------------------------------------------------------------------


def run_verify(args: argparse.Namespace) -> int:
    from cnnzoo.analysis.verify import summarize, verify, verify_table

    rows = verify(args.names or None, input_size=args.input_size, progress=not args.no_progress)
    console = _console()
    console.print(verify_table(rows))
    console.print(summarize(rows))
    return 0 if all(row.ok for row in rows) else 1
