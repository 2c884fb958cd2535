"""`cnnzoo weights`: every pretrained weight by name, and whether it is on this machine."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from rich.table import Table

from cnnzoo.cli.models_cmd import _console
from cnnzoo.errors import UsageError

if TYPE_CHECKING:
    from cnnzoo.pretrained import WeightSpec

EPILOG = """examples:
  cnnzoo weights                 # all of them
  cnnzoo weights resnet50        # one model's weights
  cnnzoo weights 'efficientnet*' # a shell pattern
  cnnzoo weights fashion         # a substring of MODEL.NAME
  cnnzoo weights resnet50.DEFAULT --download   # fetch now (e.g. before going offline)
"""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "weights",
        help="list pretrained weights by name: dataset, accuracy, size, whether downloaded",
        description=(
            "List the weights `create_model(MODEL, weights=NAME)` and `--weights NAME` accept: "
            "torchvision's (downloaded on first use into torch hub's cache, shared with "
            "torchvision) and cnnzoo's own (shipped inside the package). PATTERN is a model "
            "name, a shell pattern, a substring of MODEL.NAME, or one weight as MODEL.NAME "
            "(DEFAULT and imagenet work there too)."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("pattern", nargs="?", default="*", help="e.g. resnet50, 'vgg*', fashion")
    p.add_argument("--cached", action="store_true", help="only weights already on this machine")
    p.add_argument(
        "--download",
        action="store_true",
        help="download the matching weights that are not on this machine yet",
    )
    p.set_defaults(run=run_weights)


def _percent(value: float | None) -> str:
    return f"{value:.2f}" if value is not None else "--"


def _size(num_bytes: int | None) -> str:
    if num_bytes is None:
        return "--"
    return f"{num_bytes / 2**20:.1f} MB" if num_bytes >= 2**20 else f"{num_bytes / 1024:.0f} kB"


def select(pattern: str) -> list[WeightSpec]:
    """``MODEL.NAME`` (a model's name, then a weight name or alias): that one weight, or a
    UsageError listing the model's valid names; anything else: :func:`list_weights`."""
    from cnnzoo.pretrained import get_weight_spec, list_weights
    from cnnzoo.registry import list_models

    model, dot, name = pattern.partition(".")
    if dot and name and model in list_models() and not any(c in pattern for c in "*?["):
        return [get_weight_spec(model, name)]
    return list_weights(pattern)


def run_weights(args: argparse.Namespace) -> int:
    from cnnzoo.pretrained import cache_dir, is_cached, weights_file

    if args.download and args.pattern == "*":
        raise UsageError(
            "name what to download (all the weights are many gigabytes), e.g. "
            "`cnnzoo weights resnet50 --download` or `cnnzoo weights resnet50.DEFAULT --download`"
        )
    specs = select(args.pattern)
    if args.download:
        missing = [spec for spec in specs if not is_cached(spec)]
        for spec in missing:
            weights_file(spec, progress=True)
        print(f"downloaded {len(missing)} of {len(specs)} (the rest were here already)")
    if args.cached:
        specs = [spec for spec in specs if is_cached(spec)]
    if not specs:
        which = "downloaded weights" if args.cached else "weights"
        print(f"no {which} match {args.pattern!r}; `cnnzoo weights` lists them all")
        return 1
    table = Table(
        header_style="bold",
        title=f"{len(specs)} weights; downloads go to {cache_dir()}",
        title_justify="left",
    )
    for name, justify in (
        ("model", "left"),
        ("weights", "left"),
        ("source", "left"),
        ("dataset", "left"),
        ("top-1 %", "right"),
        ("top-5 %", "right"),
        ("input", "right"),
        ("size", "right"),
        ("here", "left"),
    ):
        table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for spec in specs:
        top1 = spec.metrics.get("acc@1", spec.metrics.get("test_acc"))
        here = "shipped" if spec.shipped else ("yes" if is_cached(spec) else "--")
        table.add_row(
            spec.model,
            spec.name,
            spec.source,
            spec.dataset,
            _percent(top1),
            _percent(spec.metrics.get("acc@5")),
            f"{spec.in_chans}x{spec.crop_size}",
            _size(spec.file_size),
            here,
        )
    _console().print(table)
    return 0
