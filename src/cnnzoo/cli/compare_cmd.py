"""`cnnzoo compare`: the same recipe for several models, one table and one scatter plot."""

from __future__ import annotations

import argparse
from typing import Any

from cnnzoo.cli.train_cmd import add_recipe_arguments, config_from_args


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "compare",
        help="train models with one recipe (or read finished runs) and compare them",
        description=(
            "Train each MODEL with the same recipe into OUTPUT/MODEL (a finished run directory is "
            "read instead of trained), then print a table of test accuracy, parameters, "
            "multiply-adds, training time and images/s, and write compare.json, compare.csv and "
            "compare.png (test accuracy against multiply-adds) into OUTPUT."
        ),
        argument_default=argparse.SUPPRESS,
    )
    p.add_argument("items", nargs="+", metavar="MODEL_OR_RUN")
    p.add_argument("--dataset", "-d", help="dataset for every model (default fashion_mnist)")
    p.add_argument("--epochs", type=int, help="epochs per model (default: each model's recipe)")
    p.add_argument("--batch-size", "-b", type=int, help="default: each model's recipe")
    p.add_argument("--output-dir", "-o", metavar="OUTPUT", help="default runs/compare")
    p.add_argument("--overwrite", action="store_true", help="replace earlier runs in OUTPUT")
    p.add_argument("--quiet", "-q", action="store_true", help="plain log lines, no progress bar")
    add_recipe_arguments(p)
    p.set_defaults(run=run_compare)


def run_compare(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from cnnzoo.train.compare import compare

    items = args.items
    output_dir = getattr(args, "output_dir", "runs/compare")
    config, given = config_from_args(args)
    recipe = {name: getattr(config, name) for name in given - {"output_dir", "model"}}
    recipe.setdefault("dataset", "fashion_mnist")
    rows = compare(items, output_dir=output_dir, **recipe)

    # The data the rows were scored on (finished runs bring their own), and top-5 only where
    # it says something: with 5 classes or fewer it is 100 % by definition.
    datasets = list(dict.fromkeys(row.dataset for row in rows))
    top5 = any(row.num_classes > 5 for row in rows)
    table = Table(title=f"cnnzoo compare ({', '.join(datasets)})")
    columns = ("model", "top-1 %", *(("top-5 %",) if top5 else ()), "params", "GMACs", "px",
               "train s", "img/s")  # fmt: skip
    for column in columns:
        table.add_column(column, justify="left" if column == "model" else "right")
    for row in sorted(rows, key=lambda r: -r.test_top1):
        table.add_row(
            row.model,
            f"{100 * row.test_top1:.2f}",
            *((f"{100 * row.test_top5:.2f}",) if top5 else ()),
            f"{row.params:,}",
            f"{row.macs / 1e9:.4f}",
            str(row.image_size),
            f"{row.train_seconds:.1f}",
            f"{row.images_per_s:,.0f}",
        )
    console = Console()
    console.print(table)
    console.print(f"wrote {output_dir}/compare.json, compare.csv and compare.png")
    return 0
