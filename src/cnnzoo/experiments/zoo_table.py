"""The course notes' comparison of architectures, measured here: size, cost, speed, accuracy.

For each model: parameters and multiply-adds (at the input size its run trained at), inference
and training images per second on this machine (a warm-up, then a timed loop on random batches),
and test accuracy after N epochs of its default recipe. The notes quote such a table from the
papers (ImageNet figures); this one is measured on the machine it runs on, so the trade-off of
accuracy against cost can be seen rather than taken on trust.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cnnzoo.errors import UsageError
from cnnzoo.experiments.registry import Experiment, register_experiment
from cnnzoo.experiments.runs import (
    DEFAULT_SUBSET,
    MEASURED_ON,
    Rates,
    check_dataset,
    check_positive,
    estimated_seconds,
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
    "DEFAULT_EPOCHS",
    "DEFAULT_MODELS",
    "recipe_of",
    "measure_speed",
    "run_zoo_table",
    "zoo_config",
]

NAME = "zoo-table"
REPRODUCES = (
    "the course notes' architecture comparison table (model, parameters, top-1 accuracy; "
    "ImageNet figures quoted from the papers), measured here on one dataset, with multiply-adds "
    "and images/s added"
)
DEFAULT_MODELS = (
    "lenet5",
    "lenet_caffe",
    "resnet20",
    "resnet56",
    "plain20",
    "mobilenet_v2",
    "shufflenet_v2_x1_0",
    "efficientnet_b0",
    "resnet18",
    "vgg11_bn",
)
DEFAULT_EPOCHS = 5
INFER_BATCH = 64
SPEED_SECONDS = 2.0  # timed loop per measurement, after a 2-call warm-up
SPEED_FILE = "speed.json"

# Images/s of each default model with its default recipe (see runs.MEASURED_ON), for
# `cnnzoo experiment list`: training, the median epoch of its committed run (data loading
# included); inference, the run's timed loop.
RATES: dict[str, Rates] = {
    "lenet5": Rates(train=14374.9, infer=41741.9),
    "lenet_caffe": Rates(train=5950.8, infer=21073.7),
    "resnet20": Rates(train=733.1, infer=2859.3),
    "resnet56": Rates(train=261.5, infer=1001.5),
    "plain20": Rates(train=811.5, infer=3082.8),
    "mobilenet_v2": Rates(train=299.6, infer=1759.7),
    "shufflenet_v2_x1_0": Rates(train=758.1, infer=2866.6),
    "efficientnet_b0": Rates(train=216.4, infer=1185.9),
    "resnet18": Rates(train=78.1, infer=257.7),
    "vgg11_bn": Rates(train=221.6, infer=735.8),
}


def zoo_config(
    model: str,
    *,
    dataset: str,
    epochs: int,
    output_dir: str | Path,
    data_dir: str | Path | None = None,
    num_threads: int | None = None,
    quiet: bool = False,
) -> TrainConfig:
    """``model``'s default recipe on ``dataset`` (every field the trainer's defaults table
    decides left to it: cnnzoo.train.defaults), for ``epochs`` epochs."""
    return TrainConfig(
        model=model,
        dataset=dataset,
        epochs=epochs,
        output_dir=str(output_dir),
        data_dir=str(data_dir) if data_dir is not None else None,
        num_threads=num_threads,
        quiet=quiet,
    )


def recipe_of(config: dict[str, Any]) -> str:
    """A run's recipe in a few words, from its config.json."""
    words = f"{config['optimizer']} lr {config['lr']:g}, {config['schedule']}"
    if config.get("label_smoothing"):
        words += f", label smoothing {config['label_smoothing']:g}"
    if config.get("ema_decay"):
        words += f", EMA {config['ema_decay']:g}"
    return words + f", {config['augment']}, batch {config['batch_size']}"


def _images_per_s(step: Callable[[], Any], batch: int) -> float:
    from cnnzoo.optimize import interleaved_medians

    seconds = interleaved_medians({"step": step}, warmup=2, rounds=50, budget_s=SPEED_SECONDS)
    return batch / seconds["step"]


def measure_speed(
    model: nn.Module,
    config: dict[str, Any],
    run_dir: str | Path,
    *,
    threads: int,
    infer_batch: int = INFER_BATCH,
    train_batch: int,
) -> dict[str, Any]:
    """Inference and training images/s of a run's network (``load_run``'s model and config; its
    weights are trained further here) at the run's input size, on random batches, with
    ``threads`` torch threads; kept in ``RUN/speed.json`` and reused while the machine, torch,
    threads and batch sizes stay the same."""
    from cnnzoo.machine import cpu_model
    from cnnzoo.rundir import input_size_of

    run_dir = Path(run_dir)
    height, width = input_size_of(model, config)  # type: ignore[arg-type]
    channels = int(config["in_chans"])
    key = {
        "cpu": cpu_model(),
        "torch": torch.__version__,
        "threads": threads,
        "infer_batch": infer_batch,
        "train_batch": train_batch,
        "input": [channels, height, width],
        "channels_last": bool(config.get("channels_last", True)),
    }
    cached = run_dir / SPEED_FILE
    if cached.is_file():
        saved = json.loads(cached.read_text())
        if saved.get("key") == key:
            return saved
    memory_format = torch.channels_last if key["channels_last"] else torch.contiguous_format
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(0)
        model = model.to(memory_format=memory_format)

        def batch(size: int) -> torch.Tensor:
            return torch.randn(size, channels, height, width).to(memory_format=memory_format)

        model.eval()
        x_infer = batch(infer_batch)

        def infer() -> None:
            with torch.inference_mode():
                model(x_infer)

        infer_rate = _images_per_s(infer, infer_batch)
        model.train()
        x_train = batch(train_batch)
        y_train = torch.randint(0, int(config["num_classes"]), (train_batch,))
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

        def train_step() -> None:
            output = model(x_train)
            logits = output[0] if isinstance(output, (tuple, list)) else output
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(logits, y_train).backward()
            optimizer.step()

        train_rate = _images_per_s(train_step, train_batch)
    finally:
        torch.set_num_threads(previous_threads)
    record = {
        "key": key,
        "infer_images_per_s": infer_rate,
        "train_images_per_s": train_rate,
        "measured": datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds"),
    }
    cached.write_text(json.dumps(record, indent=2) + "\n")
    return record


def command(
    output_dir: Path,
    models: Sequence[str],
    dataset: str,
    epochs: int,
    subset: int | None,
    num_threads: int | None = None,
) -> list[str]:
    words = ["cnnzoo", "experiment", NAME, "--models", *models, "--dataset", dataset]
    words += ["--epochs", str(epochs)]
    words += ["--subset", str(subset) if subset is not None else "all"]
    if num_threads is not None:
        words += ["--num-threads", str(num_threads)]
    return [*words, "-o", str(output_dir)]


def _markdown(record: dict[str, Any]) -> str:
    speed = record["speed"]
    rows = [
        [
            row["model"],
            f"{row['params']:,}",
            f"{row['macs'] / 1e6:,.1f}",
            row["image_size"],
            f"{row['infer_images_per_s']:,.0f}",
            f"{row['train_images_per_s']:,.0f}",
            f"{100 * row['test_top1']:.2f}",
            row["epochs"],
            f"{row['train_seconds']:.1f}",
            row["recipe"],
        ]
        for row in sorted(record["rows"], key=lambda r: -r["test_top1"])
    ]
    headers = [
        "model", "params", "MMACs", "px", "inference img/s", "training img/s", "test acc %",
        "epochs", "training s", "recipe",
    ]  # fmt: skip
    options = record["options"]
    data = options["dataset"] + (
        f", a class-balanced subset of {options['subset']:,} training and at most as many test "
        "images"
        if options["subset"]
        else ""
    )
    return "\n".join(
        [
            "# The zoo compared: size, cost, speed and accuracy",
            "",
            f"Reproduces {REPRODUCES}.",
            "",
            *provenance_lines(record["provenance"]),
            "",
            f"Data: {data}. Each model trains with its default recipe (cnnzoo's defaults table "
            f"for its family and this dataset) for {options['epochs']} epoch(s); test accuracy "
            "is its run's metrics.json.",
            "",
            markdown_table(headers, rows, left=(0, len(headers) - 1)),
            f"Speeds: random batches at the run's input size, torch threads: {speed['threads']}, "
            f"inference batch {speed['infer_batch']} (eval mode, inference_mode), training batch "
            f"{'/'.join(map(str, speed['train_batch']))} (each recipe's; forward, backward, SGD "
            "step); median of a timed loop after "
            "a 2-call warm-up. Multiply-adds are per image at that input size (torch's flop "
            "counter). Training seconds sum the run's epochs (data loading and augmentation "
            "included).",
            "",
            "![test accuracy against multiply-adds](zoo_table.png)",
            "",
        ]
    )


def run_zoo_table(
    output_dir: str | Path,
    *,
    models: Sequence[str] = DEFAULT_MODELS,
    dataset: str = "fashion_mnist",
    epochs: int = DEFAULT_EPOCHS,
    subset: int | None = DEFAULT_SUBSET,
    resume: bool = False,
    data_dir: str | Path | None = None,
    num_threads: int | None = None,
    infer_batch: int = INFER_BATCH,
    quiet: bool = False,
    progress: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train each model into ``output_dir/MODEL`` (reusing finished runs, continuing unfinished
    ones with ``resume``), measure its speed, and write ``zoo_table.md``, ``zoo_table.png`` and
    ``zoo_table.json`` there; the record."""
    from cnnzoo.analysis.flops import count_macs
    from cnnzoo.machine import usable_cores
    from cnnzoo.progress import each_with_bar
    from cnnzoo.registry import list_models, unknown_model_message
    from cnnzoo.rundir import input_size_of, load_run

    check_positive("epochs", epochs)
    check_positive("subset", subset)
    check_positive("infer_batch", infer_batch)
    check_positive("num_threads", num_threads)
    if not models:
        raise UsageError("name at least one model")
    models = list(dict.fromkeys(models))
    known = set(list_models())
    for model in models:
        if model not in known:
            raise UsageError(unknown_model_message(model))
    dataset = check_dataset(dataset)
    output_dir = Path(output_dir)
    if subset is not None:
        data_dir = subset_data_dir(dataset, subset, output_dir / "data", data_dir=data_dir)
    configs = [
        zoo_config(
            model,
            dataset=dataset,
            epochs=epochs,
            output_dir=output_dir / model,
            data_dir=data_dir,
            num_threads=num_threads,
            quiet=quiet,
        )
        for model in models
    ]
    runs = {}
    for config in configs:
        run = train_subrun(config, resume=resume, log=log)
        runs[run.name] = run
    threads = num_threads or usable_cores()
    rows = []
    for name in each_with_bar(models, "measuring speed", enabled=progress):
        run = runs[name]
        network, config = load_run(run.run_dir)
        height, width = input_size_of(network, config)
        macs = count_macs(network, (int(config["in_chans"]), height, width))
        speed = measure_speed(
            network,
            config,
            run.run_dir,
            threads=threads,
            infer_batch=infer_batch,
            train_batch=int(config["batch_size"]),
        )
        rows.append(
            {
                "model": run.name,
                "params": int(run.metrics["params"]),
                "macs": macs,
                "image_size": int(run.metrics["image_size"]),
                "input": run.metrics.get("input"),
                "infer_images_per_s": speed["infer_images_per_s"],
                "train_images_per_s": speed["train_images_per_s"],
                "test_top1": float(run.metrics["test_top1"]),
                "recipe": recipe_of(config),
                "epochs": int(run.metrics["epochs_run"]),
                "train_seconds": float(run.metrics["train_seconds"]),
                "train_batch": int(config["batch_size"]),
                "run_dir": str(run.run_dir),
            }
        )
        log(
            f"{run.name}: {100 * rows[-1]['test_top1']:.2f}% test, "
            f"{rows[-1]['infer_images_per_s']:,.0f} img/s inference, "
            f"{rows[-1]['train_images_per_s']:,.0f} img/s training"
        )
    record = {
        "experiment": NAME,
        "reproduces": REPRODUCES,
        "provenance": provenance(
            command(output_dir, models, dataset, epochs, subset, num_threads),
            threads=num_threads,
            measure=True,
        ),
        "options": {
            "models": models,
            "dataset": dataset,
            "epochs": epochs,
            "subset": subset,
        },
        "speed": {
            "threads": threads,
            "infer_batch": infer_batch,
            "train_batch": sorted({row["train_batch"] for row in rows}),
        },
        "rows": rows,
    }
    from cnnzoo.analysis.plots import plot_accuracy_vs_macs

    plot_accuracy_vs_macs(rows, output_dir / "zoo_table.png")
    write_results(output_dir, "zoo_table", record, _markdown(record), log)
    return record


def duration() -> str:
    if not all(name in RATES for name in DEFAULT_MODELS):
        return "not measured yet"
    # The default 10 % validation split is scored after every epoch.
    full = estimated_seconds(RATES, DEFAULT_MODELS, trained=54_000, scored=6_000, epochs=1)
    size = DEFAULT_SUBSET or 60_000
    defaults = estimated_seconds(
        RATES, DEFAULT_MODELS, trained=size * 9 // 10, scored=size // 10, epochs=DEFAULT_EPOCHS
    )
    return (
        f"estimated from images/s {MEASURED_ON}: {full / 60:.0f} min per epoch of the "
        f"{len(DEFAULT_MODELS)} default models on all of Fashion-MNIST; the defaults "
        f"({size:,} images, {DEFAULT_EPOCHS} epochs) about {minutes_or_hours(defaults)}, plus a "
        "test pass and a few seconds of speed measurement per model"
    )


register_experiment(
    Experiment(
        name=NAME,
        title="the zoo compared: parameters, multiply-adds, images/s, test accuracy",
        reproduces=REPRODUCES,
        run=run_zoo_table,
        duration=duration,
    )
)
