"""The degradation problem: deeper plain nets train worse; the same nets with shortcuts do not.

He et al. 2015, "Deep Residual Learning for Image Recognition", Fig. 1 (training and test error
of 20- and 56-layer plain nets on CIFAR-10) and Fig. 6 (plain nets against ResNets of the same
depths). Each depth trains a plain net and a ResNet (the zoo's ``plainN`` and ``resnetN``, option-A
shortcuts, identical parameter counts) with one recipe, the paper's: SGD with momentum 0.9, lr
0.1 divided by 10 at 50 % and 75 % of training (the paper's 32k and 48k of 64k iterations), weight
decay 1e-4, batch 128, padded random crops and horizontal flips, every training image (of the
subset) with no validation split, as in the paper's figure. The test split is scored after every
epoch.
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
    DEFAULT_SUBSET,
    MEASURED_ON,
    Rates,
    SubRun,
    TestCurve,
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

__all__ = ["DEFAULT_DEPTHS", "DEFAULT_EPOCHS", "degradation_config", "nets_of", "run_degradation"]

NAME = "degradation"
PAPER = "He et al. 2015, Deep Residual Learning for Image Recognition (arXiv 1512.03385)"
DEFAULT_DEPTHS = (20, 56)
DEFAULT_EPOCHS = 20
SCHEDULES = ("step", "cosine")

# Images/s of each net with the recipe above (see runs.MEASURED_ON), for `cnnzoo experiment list`:
# training, the median epoch of the committed run (plain20 and resnet20: the zoo-table's runs,
# which shared the machine less); inference, the zoo-table's timed loop (plain56: resnet56's,
# scaled as plain20 is to resnet20).
RATES: dict[str, Rates] = {
    "plain20": Rates(train=811.5, infer=3082.8),
    "resnet20": Rates(train=733.1, infer=2859.3),
    "plain56": Rates(train=270.2, infer=1079.8),
    "resnet56": Rates(train=262.2, infer=1001.5),
}


def nets_of(depth: int) -> tuple[str, str]:
    """(plain net, ResNet) zoo names for ``depth``; a UsageError unless both are registered."""
    from cnnzoo.registry import list_models

    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise UsageError(
            f"depth {depth} is not a CIFAR ResNet depth: it must be 6n+2 (20, 32, 44, 56, 110)"
        )
    names = set(list_models())
    plain, resnet = f"plain{depth}", f"resnet{depth}"
    if plain not in names or resnet not in names:
        available = [str(d) for d in range(8, 1203, 6) if {f"plain{d}", f"resnet{d}"} <= names]
        raise UsageError(
            f"the zoo has no {plain if plain not in names else resnet}; depths with both a plain "
            f"net and a ResNet: {', '.join(available)}"
        )
    return plain, resnet


def milestones(epochs: int) -> list[int]:
    """Epochs at which the paper's schedule divides the lr by 10: at 50 % and 75 % of training."""
    return sorted({m for m in (round(epochs * 0.5), round(epochs * 0.75)) if 0 < m < epochs})


def degradation_config(
    model: str,
    *,
    dataset: str,
    epochs: int,
    output_dir: str | Path,
    schedule: str = "step",
    data_dir: str | Path | None = None,
    num_threads: int | None = None,
    quiet: bool = False,
) -> TrainConfig:
    """The one recipe every net of the experiment trains with (see the module docstring)."""
    steps = milestones(epochs) if schedule == "step" else []
    return TrainConfig(
        model=model,
        dataset=dataset,
        epochs=epochs,
        output_dir=str(output_dir),
        data_dir=str(data_dir) if data_dir is not None else None,
        batch_size=128,
        optimizer="sgd",
        lr=0.1,
        momentum=0.9,
        nesterov=False,
        weight_decay=1e-4,
        # An empty milestone list would fall back to the trainer's own step size.
        schedule=schedule if steps or schedule == "cosine" else "none",
        milestones=steps or None,
        gamma=0.1,
        warmup_epochs=0.0,
        augment="crop_flip",
        random_erasing=0.0,
        label_smoothing=0.0,
        ema_decay=0.0,
        # The paper evaluates with batch norm's running averages.
        precise_bn=0,
        val_split=0.0,
        num_threads=num_threads,
        quiet=quiet,
    )


def command(
    output_dir: Path, dataset: str, epochs: int, depths: Sequence[int], subset: int | None,
    schedule: str, num_threads: int | None = None,
) -> list[str]:  # fmt: skip
    """The command line that regenerates these results."""
    words = ["cnnzoo", "experiment", NAME, "--dataset", dataset, "--epochs", str(epochs)]
    words += ["--depths", *map(str, depths)]
    words += ["--subset", str(subset) if subset is not None else "all"]
    if schedule != "step":
        words += ["--schedule", schedule]
    if num_threads is not None:
        words += ["--num-threads", str(num_threads)]
    return [*words, "-o", str(output_dir)]


def _curve(run: SubRun, depth: int, residual: bool) -> dict[str, Any]:
    epochs = [int(row["epoch"]) for row in run.history]
    tested = run.test_curve
    return {
        "model": run.name,
        "label": f"{'ResNet' if residual else 'plain'}-{depth}",
        "depth": depth,
        "residual": residual,
        "epochs": epochs,
        "train_error": [1 - row["train_acc"] for row in run.history],
        "test_error": [1 - tested[e]["test_accuracy"] if e in tested else math.nan for e in epochs],
    }


def _row(run: SubRun, curve: dict[str, Any]) -> dict[str, Any]:
    tested = [e for e in curve["test_error"] if not math.isnan(e)]
    return {
        "model": run.name,
        "depth": curve["depth"],
        "shortcuts": curve["residual"],
        "params": int(run.metrics["params"]),
        "epochs": int(run.metrics["epochs_run"]),
        "final_train_error": curve["train_error"][-1],
        "best_train_error": min(curve["train_error"]),
        "final_test_error": 1 - float(run.metrics["test_top1"]),
        "best_test_error": min(tested) if tested else None,
        "train_seconds": float(run.metrics["train_seconds"]),
        "run_dir": str(run.run_dir),
    }


def _markdown(record: dict[str, Any]) -> str:
    def pct(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:.2f}"

    rows = [
        [
            row["model"],
            row["depth"],
            "yes" if row["shortcuts"] else "no",
            f"{row['params']:,}",
            row["epochs"],
            pct(row["final_train_error"]),
            pct(row["best_train_error"]),
            pct(row["final_test_error"]),
            pct(row["best_test_error"]),
            f"{row['train_seconds']:.1f}",
        ]
        for row in record["rows"]
    ]
    headers = [
        "net", "layers", "shortcuts", "params", "epochs", "train err % (final)",
        "train err % (best)", "test err % (final)", "test err % (best)", "training s",
    ]  # fmt: skip
    options = record["options"]
    data = f"{options['dataset']}" + (
        f", a class-balanced subset of {options['subset']:,} training and at most as many test "
        "images"
        if options["subset"]
        else ""
    )
    return "\n".join(
        [
            "# Degradation: plain nets against ResNets of the same depth",
            "",
            f"Reproduces {PAPER}, Fig. 1 and Fig. 6.",
            "",
            *provenance_lines(record["provenance"]),
            "",
            f"Data: {data}. Recipe (every net): {record['recipe']}.",
            "",
            markdown_table(headers, rows),
            "Training error is each epoch's running error over its augmented mini-batches (as "
            "the trainer reports it); test error is the whole test split scored after every "
            "epoch. The final test error is the run's metrics.json. Training seconds sum the "
            "epochs' times (test scoring excluded).",
            "",
            "![training and test error against epochs](degradation.png)",
            "",
        ]
    )


def run_degradation(
    output_dir: str | Path,
    *,
    dataset: str = "fashion_mnist",
    epochs: int = DEFAULT_EPOCHS,
    depths: Sequence[int] = DEFAULT_DEPTHS,
    subset: int | None = DEFAULT_SUBSET,
    schedule: str = "step",
    resume: bool = False,
    data_dir: str | Path | None = None,
    num_threads: int | None = None,
    quiet: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train plain-N and ResNet-N for every depth into ``output_dir/plainN``, ``.../resnetN``
    (reusing finished runs, continuing unfinished ones with ``resume``) and write
    ``degradation.png``, ``degradation.md`` and ``degradation.json`` there; the record."""
    check_positive("epochs", epochs)
    check_positive("subset", subset)
    if schedule not in SCHEDULES:
        raise UsageError(f"schedule must be one of {', '.join(SCHEDULES)}; got {schedule!r}")
    if not depths:
        raise UsageError("name at least one depth")
    depths = list(dict.fromkeys(depths))
    nets = [(depth, nets_of(depth)) for depth in depths]
    dataset = check_dataset(dataset)
    output_dir = Path(output_dir)
    if subset is not None:
        data_dir = subset_data_dir(dataset, subset, output_dir / "data", data_dir=data_dir)
    runs: list[tuple[SubRun, dict[str, Any]]] = []
    for depth, names in nets:
        for residual, name in zip((False, True), names, strict=True):
            config = degradation_config(
                name,
                dataset=dataset,
                epochs=epochs,
                output_dir=output_dir / name,
                schedule=schedule,
                data_dir=data_dir,
                num_threads=num_threads,
                quiet=quiet,
            )
            run = train_subrun(config, resume=resume, callbacks=[TestCurve()], log=log)
            runs.append((run, _curve(run, depth, residual)))
    recipe_config = runs[0][0].run_dir / "config.json"
    saved = json.loads(recipe_config.read_text())
    recipe = (
        f"SGD momentum {saved['momentum']}, lr {saved['lr']}, "
        + (
            f"divided by 10 after epochs {', '.join(map(str, saved['milestones']))}"
            if saved["schedule"] == "step"
            else "constant (one epoch: nothing to divide)"
            if saved["schedule"] == "none"
            else f"{saved['schedule']} schedule"
        )
        + f", weight decay {saved['weight_decay']}, batch {saved['batch_size']}, "
        f"augmentation {saved['augment']}, {saved['epochs']} epochs, seed {saved['seed']}; no "
        "Nesterov, label smoothing, warmup or EMA; evaluated with batch norm's running averages"
    )
    record = {
        "experiment": NAME,
        "reproduces": f"{PAPER}, Fig. 1 and Fig. 6",
        "provenance": provenance(
            command(output_dir, dataset, epochs, depths, subset, schedule, num_threads),
            threads=num_threads,
        ),
        "options": {
            "dataset": dataset,
            "epochs": epochs,
            "depths": depths,
            "subset": subset,
            "schedule": schedule,
        },
        "recipe": recipe,
        "rows": [_row(run, curve) for run, curve in runs],
        "curves": [curve for _, curve in runs],
    }
    from cnnzoo.analysis.experiment_plots import plot_degradation

    plot_degradation(record["curves"], output_dir / "degradation.png")
    write_results(output_dir, "degradation", record, _markdown(record), log)
    return record


def duration() -> str:
    nets = [name for depth in DEFAULT_DEPTHS for name in nets_of(depth)]
    if not all(name in RATES for name in nets):
        return "not measured yet"
    full = estimated_seconds(RATES, nets, trained=60_000, scored=10_000, epochs=1)
    size = DEFAULT_SUBSET or 60_000
    defaults = estimated_seconds(
        RATES, nets, trained=size, scored=min(size, 10_000), epochs=DEFAULT_EPOCHS
    )
    return (
        f"estimated from images/s {MEASURED_ON}: {full / 60:.0f} min per epoch of "
        f"{', '.join(nets)} on all of Fashion-MNIST; the defaults ({size:,} images, "
        f"{DEFAULT_EPOCHS} epochs) about {minutes_or_hours(defaults)}"
    )


register_experiment(
    Experiment(
        name=NAME,
        title="plain nets against ResNets of the same depth (the degradation problem)",
        reproduces=f"{PAPER}, Fig. 1 and Fig. 6",
        run=run_degradation,
        duration=duration,
    )
)
