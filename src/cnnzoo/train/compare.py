"""Train several models with one recipe (or read finished runs) and put them side by side."""

from __future__ import annotations

import csv
import json
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cnnzoo.errors import UsageError
from cnnzoo.registry import list_models, unknown_model_message


@dataclass
class CompareRow:
    model: str
    run_dir: str
    dataset: str
    num_classes: int
    test_top1: float
    test_top5: float
    params: int
    macs: int
    image_size: int
    train_seconds: float
    images_per_s: float
    epochs_run: int


def is_run_dir(item: str) -> bool:
    return (Path(item) / "metrics.json").is_file() and (Path(item) / "config.json").is_file()


def check_items(items: Sequence[str]) -> None:
    """Every item must be a registered model or a finished run directory (UsageError otherwise)."""
    if not items:
        raise UsageError("name at least one model or run directory to compare")
    repeated = sorted({item for item in items if list(items).count(item) > 1})
    if repeated:
        raise UsageError(f"{', '.join(repeated)} named more than once; name each model once")
    names = set(list_models())
    for item in items:
        if item not in names and not is_run_dir(item):
            if Path(item).exists():
                raise UsageError(f"{item} is not a finished run (no metrics.json/config.json)")
            raise UsageError(unknown_model_message(item))


def row_from_run(run_dir: str | Path) -> CompareRow:
    """Read a finished run's metrics, history and config into one comparison row."""
    from cnnzoo.analysis.flops import count_macs
    from cnnzoo.rundir import load_run

    run_dir = Path(run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    model, config = load_run(run_dir)
    side = int(metrics.get("image_size") or model.default_cfg["input_size"][-1])
    in_chans = model.default_cfg["input_size"][0]
    with open(run_dir / "history.csv", newline="") as handle:
        speeds = [float(row["images_per_s"]) for row in csv.DictReader(handle)]
    return CompareRow(
        model=str(metrics.get("model") or config.get("model")),
        run_dir=str(run_dir),
        dataset=str(metrics.get("dataset") or config.get("dataset")),
        num_classes=int(config["num_classes"]),
        test_top1=float(metrics["test_top1"]),
        test_top5=float(metrics["test_top5"]),
        params=int(metrics.get("params") or sum(p.numel() for p in model.parameters())),
        macs=count_macs(model, (in_chans, side, side)),
        image_size=side,
        train_seconds=float(metrics["train_seconds"]),
        images_per_s=statistics.median(speeds) if speeds else float("nan"),
        epochs_run=int(metrics["epochs_run"]),
    )


def compare(items: Sequence[str], *, output_dir: str | Path, **recipe: Any) -> list[CompareRow]:
    """Train each model name in ``items`` with ``recipe`` (TrainConfig fields) into
    ``output_dir/NAME``, or read each finished run directory; write compare.json, compare.csv and
    the accuracy-vs-multiply-adds scatter ``compare.png`` into ``output_dir``."""
    from cnnzoo.analysis.plots import plot_accuracy_vs_macs
    from cnnzoo.train.api import fit

    check_items(items)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for item in items:
        if is_run_dir(item):
            rows.append(row_from_run(item))
            continue
        run_dir = output_dir / item
        fit(model=item, output_dir=str(run_dir), **recipe)
        rows.append(row_from_run(run_dir))
    table = [asdict(row) for row in rows]
    (output_dir / "compare.json").write_text(json.dumps(table, indent=2) + "\n")
    with open(output_dir / "compare.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)
    plot_accuracy_vs_macs(table, output_dir / "compare.png")
    return rows
