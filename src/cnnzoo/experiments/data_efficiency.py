"""Data efficiency: how test accuracy grows with the training set, CNNs against a Transformer.

Dosovitskiy et al. 2021 ("An Image is Worth 16x16 Words", Fig. 3 and 4) pre-trained ViTs and
ResNets (BiT) on growing datasets (ImageNet, ImageNet-21k, JFT-300M; Fig. 4: random subsets of
9 M to 300 M JFT images) and found the ViTs behind when data is scarce and ahead only with far
more of it: a convolution builds in locality and translation equivariance, which attention must
learn from the data. This experiment asks the same question at the scale of one CPU: ResNet-20,
the small ViT (``vit_cifar_4``, 4-px patches) and the small ConvNeXt (``convnext_cifar``), of
similar parameter counts, each train with its default recipe (cnnzoo's defaults table) on
class-balanced subsets of the training set for the same number of optimizer steps, and are
scored on the whole test set. Fewer images mean more epochs over them, never fewer steps: the
curve measures what the data is worth, not how long each model trained. A recipe's warm-up
keeps its share of the steps; no validation images are held out.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cnnzoo.errors import UsageError
from cnnzoo.experiments.registry import Experiment, register_experiment
from cnnzoo.experiments.runs import (
    Rates,
    SubRun,
    check_dataset,
    check_positive,
    markdown_table,
    minutes_or_hours,
    provenance,
    provenance_lines,
    subset_data_dir,
    train_subrun,
    write_results,
)
from cnnzoo.train import TrainConfig

__all__ = [
    "DEFAULT_MODELS",
    "DEFAULT_SIZES",
    "DEFAULT_STEPS",
    "data_efficiency_config",
    "epochs_for",
    "run_data_efficiency",
    "steps_per_epoch",
]

NAME = "data-efficiency"
PAPER = (
    "Dosovitskiy et al. 2021, An Image is Worth 16x16 Words: Transformers for Image Recognition "
    "at Scale (arXiv 2010.11929)"
)
REPRODUCES = f"{PAPER}, Fig. 3 and 4 (accuracy against the amount of training data)"
DEFAULT_MODELS = ("resnet20", "vit_cifar_4", "convnext_cifar")
DEFAULT_SIZES = (1_000, 5_000, 20_000, 60_000)
# 8 epochs of all 60,000 Fashion-MNIST images at batch 128 (469 steps each).
DEFAULT_STEPS = 3_752

# Training images/s of each default model with its default recipe on 28-px Fashion-MNIST, one
# thread, for `cnnzoo experiment list`: the median epoch of the committed run's 60,000-image
# sub-runs (see docs/results), and the test pass's images/s.
RATES: dict[str, Rates] = {}
RATES_MEASURED = "not measured yet"


def steps_per_epoch(images: int, batch_size: int) -> int:
    """Optimizer steps in one epoch of ``images`` (the trainer drops a last batch of one
    image, which would break batch norm)."""
    drop_last = images > batch_size and images % batch_size == 1
    return images // batch_size if drop_last else math.ceil(images / batch_size)


def epochs_for(steps: int, images: int, batch_size: int) -> int:
    """Whole epochs of ``images`` nearest to ``steps`` optimizer steps (at least one)."""
    return max(1, round(steps / steps_per_epoch(images, batch_size)))


def _default_recipe(model: str, dataset: str) -> dict[str, Any]:
    from cnnzoo.train.defaults import default_recipe

    return default_recipe(model, dataset)


def data_efficiency_config(
    model: str,
    size: int,
    *,
    dataset: str,
    steps: int,
    output_dir: str | Path,
    data_dir: str | Path | None = None,
    num_threads: int | None = None,
    quiet: bool = False,
) -> TrainConfig:
    """``model``'s default recipe on ``size`` images (all of them trained on: no validation
    split) for the epochs nearest to ``steps`` optimizer steps, its warm-up scaled to the same
    share of training as in the recipe."""
    recipe = _default_recipe(model, dataset)
    epochs = epochs_for(steps, size, int(recipe["batch_size"]))
    warmup = float(recipe.get("warmup_epochs") or 0.0)
    share = warmup / float(recipe["epochs"]) if warmup else 0.0
    return TrainConfig(
        model=model,
        dataset=dataset,
        epochs=epochs,
        warmup_epochs=share * epochs,
        val_split=0.0,
        output_dir=str(output_dir),
        data_dir=str(data_dir) if data_dir is not None else None,
        num_threads=num_threads,
        quiet=quiet,
        # Hundreds of epochs for the smallest subsets: no per-epoch event files.
        tensorboard=False,
    )


def command(
    output_dir: Path, models: Sequence[str], dataset: str, sizes: Sequence[int], steps: int,
    num_threads: int | None = None,
) -> list[str]:  # fmt: skip
    """The command line that regenerates these results."""
    words = ["cnnzoo", "experiment", NAME, "--models", *models, "--dataset", dataset]
    words += ["--sizes", *map(str, sizes), "--steps", str(steps)]
    if num_threads is not None:
        words += ["--num-threads", str(num_threads)]
    return [*words, "-o", str(output_dir)]


def _row(model: str, size: int, run: SubRun, batch_size: int) -> dict[str, Any]:
    epochs = int(run.metrics["epochs_run"])
    return {
        "model": model,
        "images": size,
        "params": int(run.metrics["params"]),
        "epochs": epochs,
        "steps": epochs * steps_per_epoch(size, batch_size),
        "batch_size": batch_size,
        "final_train_accuracy": run.history[-1]["train_acc"] if run.history else math.nan,
        "test_accuracy": float(run.metrics["test_top1"]),
        "test_loss": float(run.metrics.get("test_loss", math.nan)),
        "train_seconds": float(run.metrics["train_seconds"]),
        "input": run.metrics.get("input"),
        "run_dir": str(run.run_dir),
    }


def _recipe_words(config: dict[str, Any]) -> str:
    from cnnzoo.experiments.zoo_table import recipe_of

    words = recipe_of(config)
    if config.get("warmup_epochs"):
        words += f", warm-up {100 * config['warmup_epochs'] / config['epochs']:.0f} % of the steps"
    return words


def _markdown(record: dict[str, Any]) -> str:
    options = record["options"]
    sizes = options["sizes"]
    by_key = {(row["model"], row["images"]): row for row in record["rows"]}
    pivot = [
        [model, f"{record['params'][model]:,}"]
        + [f"{100 * by_key[(model, size)]['test_accuracy']:.2f}" for size in sizes]
        for model in options["models"]
    ]
    pivot_headers = ["model", "params", *(f"{size:,} images" for size in sizes)]
    details = [
        [
            row["model"],
            f"{row['images']:,}",
            row["epochs"],
            f"{row['steps']:,}",
            f"{100 * row['final_train_accuracy']:.2f}",
            f"{100 * row['test_accuracy']:.2f}",
            f"{row['test_loss']:.3f}",
            f"{row['train_seconds']:.0f}",
        ]
        for row in record["rows"]
    ]
    detail_headers = [
        "model", "training images", "epochs", "steps", "final train acc %", "test acc %",
        "test loss", "training s",
    ]  # fmt: skip
    recipes = [f"- {model}: {words}" for model, words in record["recipes"].items()]
    return "\n".join(
        [
            "# Data efficiency: CNNs against a Vision Transformer as the training set grows",
            "",
            f"Reproduces {REPRODUCES}, at the scale of one CPU.",
            "",
            *provenance_lines(record["provenance"]),
            "",
            f"Data: {options['dataset']}; class-balanced subsets of the training set (seed 0), "
            f"each model trained for about {options['steps']:,} optimizer steps on every subset "
            "(the epochs nearest to it) and scored on the whole test set "
            f"({record['test_images']:,} images).",
            "",
            "Test accuracy (%):",
            "",
            markdown_table(pivot_headers, pivot),
            "Every run:",
            "",
            markdown_table(detail_headers, details, left=(0,)),
            "Recipes (each model's default, cnnzoo.train.defaults; epochs and warm-up set "
            "as above, no validation split):",
            "",
            *recipes,
            "",
            "The final training accuracy is the last epoch's running accuracy over its augmented "
            "mini-batches. Training seconds sum the epochs' times (the test pass excluded).",
            "",
            "![test accuracy against training-set size](data_efficiency.png)",
            "",
        ]
    )


def run_data_efficiency(
    output_dir: str | Path,
    *,
    models: Sequence[str] = DEFAULT_MODELS,
    dataset: str = "fashion_mnist",
    sizes: Sequence[int] = DEFAULT_SIZES,
    steps: int = DEFAULT_STEPS,
    resume: bool = False,
    data_dir: str | Path | None = None,
    num_threads: int | None = None,
    quiet: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train every model on every subset size into ``output_dir/MODEL-SIZE`` (reusing finished
    runs, continuing unfinished ones with ``resume``) and write ``data_efficiency.md``,
    ``data_efficiency.png`` and ``data_efficiency.json`` there; the record."""
    from cnnzoo.data import load_dataset
    from cnnzoo.registry import list_models, unknown_model_message

    check_positive("steps", steps)
    if not models:
        raise UsageError("name at least one model")
    if not sizes:
        raise UsageError("name at least one training-set size")
    for size in sizes:
        check_positive("each size", size)
    models = list(dict.fromkeys(models))
    sizes = sorted(set(sizes))
    known = set(list_models())
    for model in models:
        if model not in known:
            raise UsageError(unknown_model_message(model))
    dataset = check_dataset(dataset)
    full = load_dataset(dataset, data_dir=data_dir, val_split=0.0)
    available, test_images = len(full.train), len(full.get_split("test"))
    if sizes[-1] > available:
        raise UsageError(f"--sizes {sizes[-1]}: {dataset} has only {available:,} training images")
    output_dir = Path(output_dir)
    # Every subset is tested on the whole test split; the whole training set is the dataset.
    data_dirs = {
        size: data_dir
        if size == available
        else subset_data_dir(dataset, size, output_dir / "data", data_dir=data_dir, full_test=True)
        for size in sizes
    }
    rows, recipes, params = [], {}, {}
    for model in models:
        for size in sizes:
            config = data_efficiency_config(
                model, size, dataset=dataset, steps=steps, data_dir=data_dirs[size],
                output_dir=output_dir / f"{model}-{size}", num_threads=num_threads, quiet=quiet,
            )  # fmt: skip
            run = train_subrun(config, resume=resume, log=log)
            saved = json.loads((run.run_dir / "config.json").read_text())
            rows.append(_row(model, size, run, int(saved["batch_size"])))
            recipes[model] = _recipe_words(saved)
            params[model] = rows[-1]["params"]
            log(
                f"{model} on {size:,} images: {100 * rows[-1]['test_accuracy']:.2f} % test "
                f"({rows[-1]['epochs']} epochs, {rows[-1]['steps']:,} steps)"
            )
    record = {
        "experiment": NAME,
        "reproduces": REPRODUCES,
        "provenance": provenance(
            command(output_dir, models, dataset, sizes, steps, num_threads), threads=num_threads
        ),
        "options": {"models": models, "dataset": dataset, "sizes": sizes, "steps": steps},
        "test_images": test_images,
        "params": params,
        "recipes": recipes,
        "rows": rows,
        "lines": [
            {
                "label": f"{model} ({params[model] / 1e6:.2f} M params)",
                "model": model,
                "sizes": sizes,
                "test_accuracy": [r["test_accuracy"] for r in rows if r["model"] == model],
                "train_accuracy": [r["final_train_accuracy"] for r in rows if r["model"] == model],
            }
            for model in models
        ],
    }
    from cnnzoo.analysis.experiment_plots import plot_data_efficiency

    plot_data_efficiency(record["lines"], output_dir / "data_efficiency.png")
    write_results(output_dir, "data_efficiency", record, _markdown(record), log)
    return record


def duration() -> str:
    if not all(name in RATES for name in DEFAULT_MODELS):
        return "not measured yet"
    trained = DEFAULT_STEPS * 128 * len(DEFAULT_SIZES)
    seconds = sum(
        trained / RATES[m].train + 10_000 * len(DEFAULT_SIZES) / RATES[m].infer
        for m in DEFAULT_MODELS
    )
    return (
        f"estimated from images/s {RATES_MEASURED}: about {minutes_or_hours(seconds)} for the "
        f"defaults ({len(DEFAULT_MODELS)} models x {len(DEFAULT_SIZES)} sizes x "
        f"{DEFAULT_STEPS:,} steps of 128 images)"
    )


register_experiment(
    Experiment(
        name=NAME,
        title="test accuracy against training-set size: ResNet-20, a small ViT, a small ConvNeXt",
        reproduces=REPRODUCES,
        run=run_data_efficiency,
        duration=duration,
    )
)
