"""`cnnzoo train`: fit a zoo model to a dataset, into a resumable run directory.

The training flags are generated from :class:`~cnnzoo.train.TrainConfig`'s fields (their names,
types, defaults and the help in each field's metadata), so the CLI, recipe files and the Python
API cannot drift apart.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import types
import typing
from typing import Any

from cnnzoo.errors import EXIT_INTERRUPTED, EXIT_TERMINATED, Terminated, UsageError
from cnnzoo.train.config import RESUME_OVERRIDES, TrainConfig

EPILOG = """examples:
  cnnzoo train --model lenet5 --dataset fashion_mnist     # the default recipe for LeNet-5 there
  cnnzoo train --recipe lenet5_fashion_mnist -o runs/lenet  # a shipped recipe (91 %, ~1 min)
  cnnzoo train --config my_recipe.yaml --lr 0.01           # a recipe file; flags override it
  cnnzoo train --config runs/lenet/config.json -o runs/again  # repeat a run's recipe
  cnnzoo train --model resnet20 --dataset cifar10 --epochs 160 --optimizer sgd --lr 0.1 \\
      --schedule step --milestones 80,120 --weight-decay 1e-4
  cnnzoo train --resume runs/lenet --epochs 20             # continue (and extend) a run
  torchrun --nproc_per_node 2 -m cnnzoo train --model lenet5 --dataset digits
"""
RUN_GROUP = "run"


def _key_value(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw  # a bare word is a string
    return key.replace("-", "_"), value


def _numbers(kind: type, separators: str, count: int | None = None) -> Any:
    """An argparse type for ``count`` numbers separated by any of ``separators``."""

    def parse(text: str) -> list[Any]:
        for separator in separators[1:]:
            text = text.replace(separator, separators[0])
        try:
            values = [kind(part) for part in text.split(separators[0]) if part.strip()]
        except ValueError:
            values = []
        if not values or (count is not None and len(values) != count):
            what = f"{count} " if count else ""
            raise argparse.ArgumentTypeError(
                f"expected {what}{kind.__name__}s separated by {' or '.join(separators)}, "
                f"got {text!r}"
            )
        return values

    return parse


def _field_options(field: dataclasses.Field, hint: Any) -> dict[str, Any]:
    """argparse keyword arguments for one TrainConfig field."""
    from cnnzoo.train.defaults import TABLE_FIELDS

    meta = field.metadata
    default = field.default if field.default is not dataclasses.MISSING else None
    help_text = meta.get("help", "")
    if field.name in TABLE_FIELDS:
        help_text += " (default: the model's and dataset's recipe)"
    elif default not in (None, {}, []) and not isinstance(default, bool):
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        help_text += f" (default: {shown})"
    options: dict[str, Any] = {"dest": field.name, "help": help_text}
    if "metavar" in meta:
        options["metavar"] = meta["metavar"]
    optional = typing.get_origin(hint) in (typing.Union, types.UnionType)
    base = [a for a in typing.get_args(hint) if a is not type(None)][0] if optional else hint
    origin = typing.get_origin(base)
    if base is bool:
        options["action"] = argparse.BooleanOptionalAction
        if default is not None:
            options["help"] += f" (default: {'on' if default else 'off'})"
    elif origin is dict:
        options.update(type=_key_value, action="append")
    elif origin is tuple:
        options["type"] = _numbers(float, ",", len(typing.get_args(base)))
    elif origin is list:
        item = typing.get_args(base)[0]
        options["type"] = _numbers(item, "," if item is int else "/,", 3 if item is float else None)
    else:
        options["type"] = meta.get("convert", base)  # e.g. Keras' name for an older one
        if "choices" in meta:
            options["choices"] = meta["choices"]
    return options


def add_config_arguments(p: argparse.ArgumentParser, *, include_run: bool = True) -> None:
    """One flag per TrainConfig field, in the field's group (``run`` fields only when asked)."""
    hints = typing.get_type_hints(TrainConfig)
    groups: dict[str, Any] = {}
    for field in dataclasses.fields(TrainConfig):
        group = field.metadata.get("group", "other")
        if group == RUN_GROUP and not include_run:
            continue
        if group not in groups:
            groups[group] = p.add_argument_group(group)
        flags = field.metadata.get("flags") or ("--" + field.name.replace("_", "-"),)
        groups[group].add_argument(*flags, **_field_options(field, hints[field.name]))


def add_recipe_arguments(p: argparse.ArgumentParser) -> None:
    """Everything about how to train (shared by `train` and `compare`)."""
    add_config_arguments(p, include_run=False)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a model on a dataset (checkpoints, history, TensorBoard, plots, metrics)",
        description=(
            "Train a zoo model on a dataset. The run directory receives config.json, history.csv, "
            "TensorBoard events, best/last checkpoints (.safetensors weights + .state.pt), "
            "metrics.json and plots. Ctrl-C keeps the last finished epoch; --resume continues. "
            "Options left out come from a recipe file (--config) and then from the default "
            "recipe for the model and dataset, which the run prints."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        # Only the options given on the command line reach TrainConfig, so that a recipe file
        # and --resume can tell an explicit `--epochs 10` from the default.
        argument_default=argparse.SUPPRESS,
    )
    p.add_argument(
        "--config",
        "--recipe",
        dest="recipe",
        metavar="FILE_OR_NAME",
        help="a recipe: a YAML or JSON file of these options (a run's config.json works too) or "
        "the name of a shipped one (lenet5_fashion_mnist, resnet18_fashion_mnist, ...); flags "
        "given beside it win",
    )
    add_config_arguments(p)
    p.set_defaults(run=run_train)


def config_from_args(args: argparse.Namespace) -> tuple[TrainConfig, set[str]]:
    """The TrainConfig the command line describes (over its recipe file, if any), and the names
    of the fields the command line and the recipe set."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    given = {k: v for k, v in vars(args).items() if k in names}
    if "model_kwargs" in given:
        given["model_kwargs"] = dict(given["model_kwargs"])
    recipe: dict[str, Any] = {}
    if getattr(args, "recipe", None):
        from cnnzoo.train.recipes import load_recipe

        recipe = load_recipe(args.recipe)
    return TrainConfig(**{**recipe, **given}), set(given) | set(recipe)


def run_train(args: argparse.Namespace) -> int:
    from cnnzoo.train.trainer import Trainer

    if getattr(args, "recipe", None) and getattr(args, "resume", None):
        raise UsageError("a resumed run keeps its own recipe; drop --config/--recipe")
    config, given = config_from_args(args)
    if config.resume:
        ignored = sorted(given - set(RESUME_OVERRIDES) - {"resume", "output_dir"})
        if ignored:
            flags = ", ".join("--" + name.replace("_", "-") for name in ignored)
            print(
                f"warning: a resumed run keeps its own settings; ignoring {flags}", file=sys.stderr
            )
    trainer = Trainer(config, overrides=given)
    try:
        trainer.fit()
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM from a scheduler / docker stop
        # The trainer has said what was saved and how to resume.
        return EXIT_TERMINATED if isinstance(exc, Terminated) else EXIT_INTERRUPTED
    return 0
