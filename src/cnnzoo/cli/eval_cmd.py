"""`cnnzoo evaluate` (metrics of a trained run on a split) and `cnnzoo predict` (classify files)."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cnnzoo.analysis.metrics import EvalResult, evaluate_model
from cnnzoo.analysis.predict import (
    Prediction,
    class_names_of,
    collect_images,
    load_run,
    predict_images,
)
from cnnzoo.errors import CnnzooError, UsageError

# A grid of more images than this is unreadable; the per-image bar charts still cover them all.
GRID_MAX_IMAGES = 100


def register(subparsers: Any) -> None:
    evaluate = subparsers.add_parser(
        "evaluate",
        help="loss, top-1/top-5, per-class P/R/F1 and a confusion matrix of a trained run",
        description="Evaluate a trained run (or a checkpoint inside one) on a dataset split.",
    )
    evaluate.add_argument(
        "run_path", metavar="RUN_OR_CHECKPOINT", help="run directory or .safetensors"
    )
    evaluate.add_argument("--dataset", help="dataset to evaluate on (default: the run's)")
    evaluate.add_argument("--data-dir", help="where the dataset lives (default: the run's)")
    evaluate.add_argument("--split", choices=("test", "val", "train"), default="test")
    evaluate.add_argument("--batch-size", type=_positive_int, default=256)
    evaluate.add_argument(
        "--output", help="folder for eval_SPLIT.json and confusion_SPLIT.png (default: the run)"
    )
    evaluate.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    evaluate.add_argument(
        "--fast", action="store_true", help="run through cnnzoo.optimize (checked against eager)"
    )
    evaluate.set_defaults(run=run_evaluate)

    predict = subparsers.add_parser(
        "predict",
        help="top-k classes of image files with a trained run",
        description=(
            "Classify image files, or every image under a folder, with a trained run. "
            "When an image's parent folder is named after a class, that is its true label."
        ),
    )
    predict.add_argument(
        "run_path", metavar="RUN_OR_CHECKPOINT", help="run directory or .safetensors"
    )
    predict.add_argument("inputs", metavar="IMAGE_OR_DIR", nargs="+")
    predict.add_argument("--topk", type=_positive_int, default=5)
    predict.add_argument("--batch-size", type=_positive_int, default=64)
    predict.add_argument(
        "--plot", metavar="OUT_DIR", help="write a top-k bar chart per image and a prediction grid"
    )
    predict.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    predict.add_argument(
        "--fast", action="store_true", help="run through cnnzoo.optimize (checked against eager)"
    )
    predict.set_defaults(run=run_predict)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise UsageError(f"unknown device {name!r}") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {name!r} asked for, but CUDA is not available here")
    return device


# --------------------------------------------------------------------------- evaluate


def _trained_side(config: dict[str, Any]) -> int | None:
    """The square side the run fed its model, when it resized the dataset's images."""
    value = config.get("image_size")
    if isinstance(value, int):
        return value
    if isinstance(value, (list, tuple)) and len(value) >= 2 and value[-1] == value[-2]:
        return int(value[-1])
    return None


def fast_model(model: torch.nn.Module, example: torch.Tensor) -> torch.nn.Module:
    """``model`` through cnnzoo.optimize, saying on stderr what it chose."""
    from cnnzoo.optimize import optimize

    fast = optimize(model, example)
    print(f"--fast: {fast.report}", file=sys.stderr)
    return fast


def evaluate_run(
    run: str | Path,
    *,
    dataset: str | None = None,
    data_dir: str | None = None,
    split: str = "test",
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    progress: bool = False,
    fast: bool = False,
) -> tuple[EvalResult, dict[str, Any]]:
    """Load a run and score it on ``split`` of its dataset (or ``dataset``)."""
    from cnnzoo.data import load_dataset, make_loader

    model, config = load_run(run)
    spec = dataset or config.get("dataset")
    if not spec:
        raise UsageError("the run's config names no dataset; pass --dataset")
    # The run's own data settings, so that "val" is the very images it held out.
    bundle = load_dataset(
        spec,
        data_dir=data_dir or config.get("data_dir"),
        val_split=float(config.get("val_split", 0.1)),
        seed=int(config.get("seed", 0)),
    )
    side = _trained_side(config)
    if bundle.num_classes != model.num_classes:
        raise CnnzooError(
            f"{spec} has {bundle.num_classes} classes but the run's model predicts "
            f"{model.num_classes}"
        )
    if getattr(bundle, split) is None:
        raise UsageError(f"{spec} has no {split} split here (the run was trained with val_split=0)")
    device = torch.device(device)
    model.to(device)
    loader = make_loader(
        bundle,
        split,
        batch_size=batch_size,
        image_size=side if side is not None and (side, side) != tuple(bundle.image_size) else None,
        mean=tuple(config["mean"]) if config.get("mean") else None,
        std=tuple(config["std"]) if config.get("std") else None,
        channels=int(config.get("in_chans", bundle.channels)),
        device=device,
    )
    class_names = config.get("class_names") or bundle.class_names
    if fast:
        model = fast_model(model, next(iter(loader))[0])
    result = evaluate_model(
        model,
        loader,
        model.num_classes,
        device=device,
        progress=progress,
        class_names=class_names,
    )
    info = {
        "run_dir": config["run_dir"],
        "checkpoint": config["checkpoint"],
        "model": config["model"],
        "dataset": spec,
        "split": split,
    }
    return result, info


def run_evaluate(args: argparse.Namespace) -> int:
    device = pick_device(args.device)
    result, info = evaluate_run(
        args.run_path,
        dataset=args.dataset,
        data_dir=args.data_dir,
        split=args.split,
        batch_size=args.batch_size,
        device=device,
        progress=sys.stderr.isatty(),
        fast=args.fast,
    )
    out_dir = Path(args.output) if args.output else Path(info["run_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / f"eval_{args.split}.json"
    json_path.write_text(json.dumps({**info, **result.to_dict()}, indent=2) + "\n")
    from cnnzoo.analysis.plots import plot_confusion_matrix  # matplotlib: 0.4 s to import

    png_path = plot_confusion_matrix(
        result.confusion, result.names(), out_dir / f"confusion_{args.split}.png"
    )
    console = Console()
    console.print(f"{info['model']} on {info['dataset']} ({args.split} split)", markup=False)
    console.print(result.summary_line(), markup=False)
    console.print(result.to_rich_table())
    console.print(f"wrote {json_path} and {png_path}", markup=False)
    return 0


# --------------------------------------------------------------------------- predict


def predictions_table(predictions: list[Prediction], topk: int) -> Table:
    table = Table()
    table.add_column("image", overflow="fold")
    show_true = any(p.true_label is not None for p in predictions)
    if show_true:
        table.add_column("true")
    k = max(len(p.indices) for p in predictions)
    for rank in range(min(topk, k)):
        table.add_column(f"top-{rank + 1}" if rank else "prediction")
    for p in predictions:
        cells = [escape(str(p.path))]
        if show_true:
            mark = "" if p.true_label is None else (" ✓" if p.correct else " ✗")
            cells.append(escape(p.true_label or "?") + mark)
        cells.extend(
            f"{escape(label)} {prob:.3f}" for label, prob in zip(p.labels, p.probs, strict=True)
        )
        table.add_row(*cells)
    return table


def _safe_stem(path: Path) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in path.stem)


def write_prediction_plots(
    predictions: list[Prediction], class_names: list[str], out_dir: Path, topk: int
) -> list[Path]:
    """A top-k bar chart per image plus one grid; returns the files written."""
    from cnnzoo.analysis.plots import plot_prediction_grid, plot_topk_bars

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for i, p in enumerate(predictions):
        assert p.image is not None
        written.append(
            plot_topk_bars(
                p.image,
                p.probabilities,
                class_names,
                out_dir / f"{i:04d}_{_safe_stem(p.path)}_top{topk}.png",
                true_label=p.true_index,
                k=topk,
            )
        )
    shown = predictions[:GRID_MAX_IMAGES]
    known = any(p.true_index is not None for p in shown)
    written.append(
        plot_prediction_grid(
            [p.image for p in shown],
            [p.indices[0] for p in shown],
            [p.true_index for p in shown] if known else None,
            class_names,
            out_dir / "predictions.png",
        )
    )
    return written


def run_predict(args: argparse.Namespace) -> int:
    device = pick_device(args.device)
    model, config = load_run(args.run_path)
    model.to(device)
    found = collect_images(args.inputs)
    if args.fast:
        cfg = model.default_cfg
        side = _trained_side(config) or cfg["input_size"][-1]
        batch = max(1, min(args.batch_size, len(found)))
        example = torch.randn(batch, cfg["input_size"][0], side, side, device=device)
        model = fast_model(model, example)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            predictions = predict_images(
                model,
                config,
                [path for path, _ in found],
                topk=args.topk,
                batch_size=args.batch_size,
                device=device,
                keep_images=bool(args.plot),
                folder_labels=[label for _, label in found],
            )
        finally:
            for warning in caught:
                print(f"cnnzoo predict: warning: {warning.message}", file=sys.stderr)
    console = Console()
    console.print(predictions_table(predictions, args.topk))
    judged = [p for p in predictions if p.correct is not None]
    if judged:
        right = sum(bool(p.correct) for p in judged)
        console.print(
            f"top-1 correct: {right}/{len(judged)} ({100 * right / len(judged):.1f}%) "
            "of the images whose folder names a class"
        )
    if args.plot:
        names = class_names_of(config, model.num_classes)
        written = write_prediction_plots(predictions, names, Path(args.plot), args.topk)
        console.print(f"wrote {len(written)} plots to {args.plot}", markup=False)
    return 0
