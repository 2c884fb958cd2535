"""`cnnzoo evaluate` (metrics of a trained run on a split) and `cnnzoo predict` (classify files)."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress
from rich.table import Table

from cnnzoo.analysis.metrics import EvalResult, evaluate_model
from cnnzoo.analysis.predict import Prediction, collect_images, iter_predictions
from cnnzoo.cli.options import (
    add_onnx_arguments,
    add_source_arguments,
    onnx_options,
    positive_int,
)
from cnnzoo.errors import CnnzooError, UsageError
from cnnzoo.inference import InferenceModel, load_model
from cnnzoo.train.hardware import resolve_device

# A grid of more images than this is unreadable; the per-image bar charts still cover them all.
GRID_MAX_IMAGES = 100


def register(subparsers: Any) -> None:
    evaluate = subparsers.add_parser(
        "evaluate",
        help="loss, top-1/top-5, per-class P/R/F1 and a confusion matrix on a dataset split",
        description=(
            "Evaluate a trained run, a checkpoint, or a model with its --weights on a dataset "
            "split (default: the run's or the weights' own dataset)."
        ),
    )
    add_source_arguments(evaluate)
    evaluate.add_argument("--dataset", help="dataset to evaluate on (default: the run's)")
    evaluate.add_argument("--data-dir", help="where the dataset lives (default: the run's)")
    evaluate.add_argument("--split", choices=("test", "val", "train"), default="test")
    evaluate.add_argument("--batch-size", type=positive_int, default=256)
    evaluate.add_argument(
        "--output", help="folder for eval_SPLIT.json and confusion_SPLIT.png (default: the run)"
    )
    evaluate.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    evaluate.add_argument(
        "--fast", action="store_true", help="run through cnnzoo.optimize (checked against eager)"
    )
    evaluate.add_argument(
        "--int8",
        action="store_true",
        help="quantize to int8 (as `cnnzoo quantize`) and score float32 and int8 side by side",
    )
    from cnnzoo.cli.quantize_cmd import add_int8_arguments

    add_int8_arguments(evaluate)
    add_onnx_arguments(evaluate)
    evaluate.set_defaults(run=run_evaluate)

    predict = subparsers.add_parser(
        "predict",
        help="top-k classes of image files, with class names",
        description=(
            "Classify image files, or every image under a folder, with a trained run, a "
            "checkpoint, or a model with --weights (e.g. `cnnzoo predict resnet50 --weights "
            "IMAGENET1K_V2 cat.jpg`). Images are prepared exactly as the weights expect. When an "
            "image's parent folder is named after a class, that is its true label."
        ),
    )
    add_source_arguments(predict)
    predict.add_argument("inputs", metavar="IMAGE_OR_DIR", nargs="*")
    predict.add_argument(
        "--split",
        choices=("test", "val", "train"),
        help="instead of files: the images of this split of a run's own data, exactly as the run "
        "split it (e.g. the notes' 10 held-out test images)",
    )
    predict.add_argument(
        "--limit",
        type=positive_int,
        metavar="N",
        help="with --split: at most N images, spread evenly over the split (default: all)",
    )
    predict.add_argument("--topk", type=positive_int, default=5)
    predict.add_argument("--batch-size", type=positive_int, default=64)
    predict.add_argument(
        "--plot",
        metavar="OUT_DIR",
        help="write each image beside its top-k bars, and a prediction grid (green right, red "
        "wrong when the true class is known)",
    )
    predict.add_argument(
        "--cam",
        action="store_true",
        help="with --plot: overlay each image with the Grad-CAM map of its top class",
    )
    predict.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    predict.add_argument(
        "--fast", action="store_true", help="run through cnnzoo.optimize (checked against eager)"
    )
    add_onnx_arguments(predict)
    predict.set_defaults(run=run_predict, more_positionals="inputs")


def load_source(args: argparse.Namespace, *, need_weights: bool) -> InferenceModel:
    """The model SOURCE [--weights] names; ``need_weights``: refuse a fresh, untrained one."""
    loaded = load_model(args.source, args.weights, **onnx_options(args))
    for flag in ("fast", "cam"):
        if loaded.is_graph and getattr(args, flag, False):
            raise UsageError(f"--{flag} needs the PyTorch model; {args.source} is an ONNX graph")
    if need_weights and not loaded.trained:
        raise UsageError(
            f"{args.source} needs weights to {args.command}: add --weights NAME or FILE "
            f"(`cnnzoo weights {args.source}` lists the names)"
        )
    return loaded


def fast_model(model: torch.nn.Module, example: torch.Tensor) -> torch.nn.Module:
    """``model`` through cnnzoo.optimize, saying on stderr what it chose."""
    from cnnzoo.optimize import optimize

    fast = optimize(model, example)
    print(f"--fast: {fast.report}", file=sys.stderr)
    return fast


def split_loader(
    loaded: InferenceModel,
    *,
    dataset: str | None,
    data_dir: str | None,
    split: str,
    batch_size: int,
    device: torch.device | str,
) -> tuple[Any, str, list[str]]:
    """(loader, dataset name, class names) of ``split`` of ``dataset`` (default: the source's
    own), prepared as the source's evaluation prepares images."""
    from cnnzoo.data import make_loader
    from cnnzoo.rundir import run_data

    config = loaded.config
    spec = dataset or loaded.dataset
    if not spec:
        raise UsageError(f"{loaded.description}: name the data to evaluate on with --dataset")
    # The run's own split, so that "test" and "val" are the very images it held out.
    bundle = run_data(config, loaded.run_dir, dataset=spec, data_dir=data_dir)
    if bundle.num_classes != loaded.num_classes:
        raise CnnzooError(
            f"{spec} has {bundle.num_classes} classes but {loaded.description} predicts "
            f"{loaded.num_classes}"
        )
    if getattr(bundle, split) is None:
        raise UsageError(f"{spec} has no {split} split here (the run was trained with val_split=0)")
    side = loaded.input_size[0]
    loader = make_loader(
        bundle,
        split,
        batch_size=batch_size,
        image_size=side if (side, side) != tuple(bundle.image_size) else None,
        mean=loaded.mean,
        std=loaded.std,
        channels=loaded.channels,
        device=torch.device(device),
    )
    class_names = loaded.class_names if config or loaded.weights else bundle.class_names
    return loader, spec, class_names


def evaluate_source(
    loaded: InferenceModel,
    *,
    dataset: str | None = None,
    data_dir: str | None = None,
    split: str = "test",
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    progress: bool = False,
    fast: bool = False,
) -> tuple[EvalResult, dict[str, Any]]:
    """Score a loaded model on ``split`` of ``dataset`` (default: its run's or weights' own)."""
    loader, spec, class_names = split_loader(
        loaded, dataset=dataset, data_dir=data_dir, split=split, batch_size=batch_size,
        device=device,
    )  # fmt: skip
    device = torch.device(device)
    model = loaded.model.to(device)
    if fast:
        model = fast_model(model, next(iter(loader))[0])
    result = evaluate_model(
        model,
        loader,
        loaded.num_classes,
        device=device,
        progress=progress,
        class_names=class_names,
    )
    info = {
        "source": loaded.description,
        "run_dir": str(loaded.run_dir) if loaded.run_dir else None,
        "checkpoint": loaded.config.get("checkpoint"),
        "weights": loaded.weights,
        "model": loaded.name,
        "dataset": _dataset_name(spec),
        "split": split,
    }
    return result, info


def _dataset_name(spec: str) -> str:
    from cnnzoo.data.datasets import canonical_name

    return canonical_name(spec) if not spec.startswith("imagefolder:") else spec


def evaluate_run(run: str | Path, **options: Any) -> tuple[EvalResult, dict[str, Any]]:
    """Load a run (or checkpoint) and score it; see :func:`evaluate_source`."""
    return evaluate_source(load_model(run), **options)


def output_dir(args: argparse.Namespace, loaded: InferenceModel) -> Path:
    """--output, else the run's folder, else eval/MODEL-WEIGHTS."""
    if args.output:
        return Path(args.output)
    if loaded.run_dir is not None:
        return loaded.run_dir
    if loaded.is_graph:
        return Path("eval") / loaded.files[0].stem
    return Path("eval") / f"{loaded.name}-{loaded.weights or 'weights'}"


def run_evaluate(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    loaded = load_source(args, need_weights=True)
    if args.int8 or loaded.config.get("precision") == "int8":
        from cnnzoo.cli.quantize_cmd import evaluate_int8

        if args.fast:
            raise UsageError("--fast and --int8 are two ways to run the model: choose one")
        return evaluate_int8(args, loaded)
    if args.calibration or args.sensitivity:
        raise UsageError("--calibration and --sensitivity are for --int8")
    result, info = evaluate_source(
        loaded,
        dataset=args.dataset,
        data_dir=args.data_dir,
        split=args.split,
        batch_size=args.batch_size,
        device=device,
        progress=sys.stderr.isatty(),
        fast=args.fast,
    )
    out_dir = output_dir(args, loaded)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / f"eval_{args.split}.json"
    json_path.write_text(json.dumps({**info, **result.to_dict()}, indent=2) + "\n")
    from cnnzoo.analysis.plots import plot_confusion_matrix  # matplotlib: 0.4 s to import

    png_path = plot_confusion_matrix(
        result.confusion, result.names(), out_dir / f"confusion_{args.split}.png"
    )
    console = Console()
    console.print(f"{info['source']} on {info['dataset']} ({args.split} split)", markup=False)
    console.print(result.summary_line(), markup=False)
    console.print(result.to_rich_table())
    console.print(f"wrote {json_path} and {png_path}", markup=False)
    return 0


# --------------------------------------------------------------------------- predict


# The image column keeps at least this many characters (it folds long paths).
IMAGE_COLUMN_MIN = 16


def predictions_table(predictions: list[Prediction], topk: int, width: int = 80) -> Table:
    """One row per image with a column per rank, or, where those columns would not fit in
    ``width`` characters with every class name whole, one row per rank (class names are never
    cut or wrapped)."""
    show_true = any(p.true_label is not None for p in predictions)
    k = min(topk, max(len(p.indices) for p in predictions))
    longest = max(len(label) for p in predictions for label in [*p.labels, p.true_label or ""])
    cell = longest + len(" 0.000")
    wide = IMAGE_COLUMN_MIN + show_true * (longest + 2) + k * cell + 3 * (1 + show_true + k) + 1
    table = Table()
    table.add_column("image", overflow="fold", min_width=min(IMAGE_COLUMN_MIN, width // 4))
    if show_true:
        table.add_column("true", no_wrap=True)
    if wide <= width:
        for rank in range(k):
            table.add_column(f"top-{rank + 1}" if rank else "prediction", no_wrap=True)
    else:
        table.add_column("rank", justify="right", no_wrap=True)
        table.add_column("class", no_wrap=True)
        table.add_column("p", justify="right", no_wrap=True)
    for p in predictions:
        cells = [escape(str(p.path))]
        if show_true:
            mark = "" if p.true_label is None else (" ✓" if p.correct else " ✗")
            cells.append(escape(p.true_label or "?") + mark)
        ranked = list(zip(p.labels, p.probs, strict=True))[:k]
        if wide <= width:
            table.add_row(*cells, *(f"{escape(label)} {prob:.3f}" for label, prob in ranked))
            continue
        for rank, (label, prob) in enumerate(ranked):
            first = cells if rank == 0 else [""] * len(cells)
            table.add_row(*first, str(rank + 1), escape(label), f"{prob:.3f}",
                          end_section=rank == len(ranked) - 1)  # fmt: skip
    return table


def _safe_stem(path: Path) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in path.stem)


class PredictionPlots:
    """Writes each prediction's top-k chart as it comes, and keeps what the grid shows."""

    def __init__(self, out_dir: Path, class_names: list[str], topk: int) -> None:
        self.out_dir, self.class_names, self.topk = out_dir, class_names, topk
        self.written: list[Path] = []
        # image, predicted class, true class, Grad-CAM map
        self.grid: list[tuple[torch.Tensor, int, int | None, torch.Tensor | None]] = []
        out_dir.mkdir(parents=True, exist_ok=True)

    def add(self, index: int, p: Prediction) -> None:
        from cnnzoo.analysis.plots import plot_topk_bars

        assert p.image is not None
        self.written.append(
            plot_topk_bars(
                p.image,
                p.probabilities,
                self.class_names,
                self.out_dir / f"{index:04d}_{_safe_stem(p.path)}_top{self.topk}.png",
                true_label=p.true_index,
                k=self.topk,
                heat=p.cam,
            )
        )
        if len(self.grid) < GRID_MAX_IMAGES:
            self.grid.append((p.image, p.indices[0], p.true_index, p.cam))
        p.image = p.cam = None  # the chart is written: memory stays bounded

    def finish(self) -> list[Path]:
        from cnnzoo.analysis.plots import plot_prediction_grid

        images, predicted, true, heats = zip(*self.grid, strict=True)
        known = any(label is not None for label in true)
        self.written.append(
            plot_prediction_grid(
                list(images),
                list(predicted),
                list(true) if known else None,
                self.class_names,
                self.out_dir / "predictions.png",
                heats=list(heats) if heats[0] is not None else None,
            )
        )
        return self.written


def split_images(
    loaded: InferenceModel, split: str, limit: int | None
) -> tuple[list[tuple[Path, str | None]], list[torch.Tensor] | None]:
    """(image, true class) for the ``split`` of a run's own data, as the run split it, and for
    an in-memory dataset the decoded images (their "paths" then only name them). ``limit``
    takes that many, spread evenly over the split."""
    from cnnzoo.data import FileSplit
    from cnnzoo.rundir import run_data

    if loaded.run_dir is None:
        raise UsageError(f"--split reads a run's own data; {loaded.description} is not a run")
    bundle = run_data(loaded.config, loaded.run_dir)
    part = bundle.get_split(split)
    if len(part) == 0:
        raise UsageError(f"the run's {split} split is empty")
    count = len(part) if limit is None else min(limit, len(part))
    picks = np.unique(np.linspace(0, len(part) - 1, count).round().astype(int)).tolist()
    names = bundle.class_names
    labels = part.labels if isinstance(part, FileSplit) else part.labels.tolist()
    truth = [names[int(labels[i])] for i in picks]
    if isinstance(part, FileSplit):
        return [(part.paths[i], label) for i, label in zip(picks, truth, strict=True)], None
    where = Path(bundle.name) / split
    found = [(where / f"{i:05d}", label) for i, label in zip(picks, truth, strict=True)]
    return found, [part.images[i] for i in picks]


def run_predict(args: argparse.Namespace) -> int:
    if args.cam and not args.plot:
        raise UsageError("--cam draws into the plots: add --plot DIR")
    if args.cam and args.fast:
        raise UsageError("--cam needs the model's gradients: drop --fast")
    if bool(args.inputs) == bool(args.split):
        raise UsageError("name image files or folders, or --split SPLIT of a run's data")
    if args.limit and not args.split:
        raise UsageError("--limit goes with --split")
    device = resolve_device(args.device)
    loaded = load_source(args, need_weights=True)
    loaded.model.to(device)
    images = None
    if args.split:
        found, images = split_images(loaded, args.split, args.limit)
    else:
        found = collect_images(args.inputs)
    if args.fast:
        batch = max(1, min(args.batch_size, len(found)))
        example = torch.randn(batch, loaded.channels, *loaded.input_size, device=device)
        loaded.model = fast_model(loaded.model, example)
    plots = PredictionPlots(Path(args.plot), loaded.class_names, args.topk) if args.plot else None
    predictions = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            stream = iter_predictions(
                loaded,
                [path for path, _ in found],
                topk=args.topk,
                batch_size=args.batch_size,
                device=device,
                keep_images=plots is not None,
                folder_labels=[label for _, label in found],
                cam=args.cam,
                images=images,
            )
            shown = sys.stderr.isatty() and len(found) > args.batch_size
            with Progress(*Progress.get_default_columns(), console=Console(stderr=True),
                          transient=True, disable=not shown) as bar:  # fmt: skip
                task = bar.add_task("predicting", total=len(found))
                for index, prediction in enumerate(stream):
                    if plots is not None:
                        plots.add(index, prediction)
                    prediction.probabilities = torch.empty(0)  # the table needs only the top k
                    predictions.append(prediction)
                    bar.advance(task)
        finally:
            for warning in caught:
                print(f"cnnzoo predict: warning: {warning.message}", file=sys.stderr)
    console = Console()
    source = f" on the {args.split} split of {loaded.config.get('dataset')}" if args.split else ""
    console.print(f"{loaded.description}{source}", markup=False, style="dim")
    console.print(predictions_table(predictions, args.topk, console.width))
    judged = [p for p in predictions if p.correct is not None]
    if judged:
        right = sum(bool(p.correct) for p in judged)
        whose = "with their split's labels" if args.split else "whose folder names a class"
        console.print(
            f"top-1 correct: {right}/{len(judged)} ({100 * right / len(judged):.1f}%) "
            f"of the images {whose}"
        )
    if plots is not None:
        written = plots.finish()
        console.print(f"wrote {len(written)} plots to {args.plot}", markup=False)
    return 0
