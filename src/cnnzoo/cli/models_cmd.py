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
SORT_KEYS = ("latency", "params", "macs", "top1")


def _console(stderr: bool = False) -> Console:
    console = Console(stderr=stderr)
    if not console.is_terminal:
        console = Console(stderr=stderr, width=NON_TTY_WIDTH, color_system=None)
    return console


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "models",
        help="list the zoo: parameters, multiply-adds, input sizes, ImageNet top-1; --measure "
        "times them here",
        description=(
            "List registered models. PATTERN is a shell pattern or a substring. --measure times "
            "each listed model on this machine, eager and through cnnzoo.optimize, keeps the "
            "figures in the cache beside the multiply-adds (a model is timed again when its "
            "code, torch, the machine or the settings change) and answers the notes' "
            "model-selection guide from the measured table."
        ),
        epilog=(
            "examples:\n  cnnzoo models 'resnet*' --sort params\n"
            "  cnnzoo models mobile --measure --sort latency\n"
            "  cnnzoo models --measure --batch 8 --input-size 3x160x160"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("pattern", nargs="?", default="*", help="e.g. 'resnet*' or 'vgg'")
    p.add_argument("--family", help="only this family (e.g. resnet, vgg, efficientnet)")
    p.add_argument(
        "--sort", choices=SORT_KEYS,
        help="order the rows (latency needs --measure; top1: the best first)",
    )  # fmt: skip
    p.add_argument(
        "--measure", action="store_true",
        help="time each model here: eager and cnnzoo.optimize'd milliseconds per batch",
    )  # fmt: skip
    p.add_argument("--batch", type=positive_int, default=1, help="--measure: images per batch")
    p.add_argument(
        "--input-size", help="--measure: CxHxW, HxW or a side (default: each model's own)"
    )
    p.add_argument(
        "--backend",
        choices=("auto", "eager", "inductor", "onnxruntime"),
        default="auto",
        help="--measure: what cnnzoo.optimize may use (default auto: the fastest it finds)",
    )
    p.add_argument(
        "--no-progress", action="store_true", help="no progress bar while counting or timing"
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

    if args.sort == "latency" and not args.measure:
        raise UsageError("--sort latency needs --measure (the timings are made on this machine)")
    if not args.measure and (args.batch != 1 or args.input_size or args.backend != "auto"):
        raise UsageError("--batch, --input-size and --backend are settings of --measure")
    size = parse_input_size(args.input_size, channels=3) if args.input_size else None
    figures = model_figures(names, progress=not args.no_progress)
    latencies = None
    if args.measure:
        from cnnzoo.analysis.latency import model_latencies

        latencies = model_latencies(
            names, batch=args.batch, input_size=size, backend=args.backend,
            progress=not args.no_progress,
        )  # fmt: skip
    names = _sorted(names, args.sort, figures, latencies)
    console = _console()
    console.print(_models_table(names, figures, latencies, args.batch))
    if latencies is not None:
        _print_guide(console, latencies, figures, args.batch)
    return 0


def _sorted(names: list[str], key: str | None, figures: dict, latencies: dict | None) -> list[str]:
    """``names`` in the order ``--sort`` asks for; what has no value goes last."""
    from cnnzoo.registry import get_entry

    if key is None:
        return names

    def value(name: str) -> tuple[bool, float]:
        if key == "latency":
            lat = latencies[name]  # type: ignore[index]
            return (not lat.ok, lat.optimized_ms)
        if key == "top1":
            top1 = get_entry(name).imagenet_top1
            return (top1 is None, -(top1 or 0.0))
        macs = latencies[name].macs if latencies and latencies[name].ok else figures[name].macs
        return (False, figures[name].params if key == "params" else macs)

    return sorted(names, key=value)


def _models_table(names: list[str], figures: dict, latencies: dict | None, batch: int) -> Table:
    from cnnzoo.registry import get_entry

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
    if latencies is not None:
        per = "ms" if batch == 1 else f"ms/{batch}"
        table.add_column(f"eager {per}", justify="right")
        table.add_column(f"optimized {per}", justify="right")
        table.add_column("backend", no_wrap=True)
    for name in names:
        entry = get_entry(name)
        row = figures[name]
        macs, side = row.macs, str(row.input_side)
        timing: list[str] = []
        if latencies is not None:
            lat = latencies[name]
            side = "x".join(map(str, lat.input_size[1:])) if lat.input_size else side
            if lat.ok:
                macs = lat.macs
                timing = [f"{lat.eager_ms:.2f}", f"{lat.optimized_ms:.2f}", lat.backend]
            else:
                timing = ["--", "--", lat.error or ""]
        table.add_row(
            name,
            entry.family,
            f"{row.params / 1e6:.2f} M",
            f"{macs / 1e9:.3f}",
            side,
            str(row.min_input_size),
            f"{entry.imagenet_top1:.2f}" if entry.imagenet_top1 is not None else "--",
            *timing,
        )
    return table


def _print_guide(console: Console, latencies: dict, figures: dict, batch: int) -> None:
    """The notes' model-selection guide, answered from the table just printed."""
    from cnnzoo.analysis.latency import guide_picks
    from cnnzoo.machine import cpu_model, load_average

    load = load_average()
    threads = sorted({lat.threads for lat in latencies.values() if lat.ok})
    console.print(
        f"timed here: {cpu_model()}, {'/'.join(map(str, threads)) or '?'} torch thread(s)"
        + (f", load average {load[0]:.1f} now" if load else "")
        + f", torch {torch.__version__}; batch {batch}; medians of interleaved runs",
        markup=False,
    )
    picks = guide_picks(latencies, {name: figures[name].params for name in latencies})
    if not picks:
        console.print("none of these models could be timed at this input size", markup=False)
        return
    guide = Table(title="model selection guide, from this table", title_justify="left",
                  header_style="bold")  # fmt: skip
    for column in ("need", "model", "why"):
        guide.add_column(column, no_wrap=column != "why")
    for pick in picks:
        guide.add_row(pick.need, pick.model, pick.why)
    console.print(guide)


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
        loaded = load_model(args.source, args.weights, need_module="summary")
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
