"""Experiments at a tiny size: figures and tables from the sub-runs' own metrics, reuse, resume."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from cnnzoo.cli.main import main
from cnnzoo.data import TensorSplit, load_dataset
from cnnzoo.errors import UsageError
from cnnzoo.experiments import degradation, zoo_table
from cnnzoo.experiments.degradation import degradation_config, milestones, run_degradation
from cnnzoo.experiments.runs import TestCurve, _write_cifar10, subset_data_dir
from cnnzoo.experiments.zoo_table import recipe_of, run_zoo_table
from cnnzoo.train import Trainer
from cnnzoo.train.defaults import default_recipe

SUBSET = 128  # one batch of the recipes' 128: each epoch is a single step
TINY = dict(subset=SUBSET, num_threads=1, quiet=True)


pytestmark = pytest.mark.usefixtures("fashion_mnist")  # conftest.py


def history(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "history.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def table_rows(markdown: str) -> list[list[str]]:
    """The body rows of the (only) markdown table."""
    lines = [line for line in markdown.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]


def assert_real_png(path: Path, size: tuple[int, int]) -> None:
    with Image.open(path) as image:
        assert image.size == size
        colours = image.convert("RGB").getcolors(maxcolors=1 << 16)
    # Axes, text and coloured lines: far more than a blank or one-colour image.
    assert colours is None or len(colours) > 50


def pct(fraction: float) -> str:
    return f"{100 * fraction:.2f}"


def fingerprint(run_dir: Path) -> dict[str, tuple[int, int]]:
    """(mtime, size) of every file a training epoch rewrites."""
    names = ("history.csv", "last.safetensors", "last.state.pt", "metrics.json", "train.log")
    return {n: ((run_dir / n).stat().st_mtime_ns, (run_dir / n).stat().st_size) for n in names}


# --------------------------------------------------------------------------- degradation


@pytest.fixture(scope="module")
def degradation_dir(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """plain20 stopped after its first epoch (an interrupted experiment), then the experiment
    refused without --resume and continued with it: plain20 and resnet20, 2 epochs each."""
    out = tmp_path_factory.mktemp("degradation")
    data_dir = subset_data_dir("fashion_mnist", SUBSET, out / "data")
    partial = degradation_config(
        "plain20", dataset="fashion_mnist", epochs=2, output_dir=out / "plain20",
        data_dir=data_dir, num_threads=1, quiet=True,
    )  # fmt: skip
    partial_history = Trainer(partial, callbacks=[TestCurve()]).fit(stop_after=1)
    assert partial_history.epoch == [0] and not (out / "plain20" / "metrics.json").exists()
    first_epoch = history(out / "plain20")[0]
    with pytest.raises(UsageError, match="unfinished run .*epoch 1 of 2.*--resume"):
        run_degradation(out, depths=[20], epochs=2, log=lambda _: None, **TINY)
    lines: list[str] = []
    record = run_degradation(out, depths=[20], epochs=2, resume=True, log=lines.append, **TINY)
    return {"out": out, "record": record, "lines": lines, "first_epoch": first_epoch}


def test_degradation_draws_the_figure_and_tables_the_runs(degradation_dir: dict) -> None:
    out, record = degradation_dir["out"], degradation_dir["record"]
    assert_real_png(out / "degradation.png", (1200, 500))
    markdown = (out / "degradation.md").read_text()
    rows = table_rows(markdown)
    assert [row[0] for row in rows] == ["plain20", "resnet20"]  # one row per net
    assert json.loads((out / "degradation.json").read_text()) == json.loads(json.dumps(record))

    for row, shown in zip(record["rows"], rows, strict=True):
        run_dir = out / row["model"]
        metrics = json.loads((run_dir / "metrics.json").read_text())
        epochs = history(run_dir)
        train_errors = [1 - float(r["train_acc"]) for r in epochs]
        curve = TestCurve.read(run_dir)
        # Every number is the sub-run's own: metrics.json, history.csv, test_curve.json.
        assert row["params"] == metrics["params"] == 269_434
        assert row["epochs"] == metrics["epochs_run"] == 2
        assert row["final_train_error"] == train_errors[-1]
        assert row["best_train_error"] == min(train_errors)
        assert row["final_test_error"] == 1 - metrics["test_top1"]
        assert row["best_test_error"] == min(1 - s["test_accuracy"] for s in curve.values())
        assert row["train_seconds"] == metrics["train_seconds"]
        assert shown[3] == f"{metrics['params']:,}"
        assert shown[5] == pct(train_errors[-1]) and shown[7] == pct(1 - metrics["test_top1"])
        # The test split is scored after every epoch; the last score is the run's own test.
        assert sorted(curve) == [1, 2]
        assert curve[2]["test_accuracy"] == metrics["test_top1"]
        assert curve[2]["test_loss"] == metrics["test_loss"]
    curves = {c["model"]: c for c in record["curves"]}
    assert curves["plain20"]["residual"] is False and curves["resnet20"]["residual"] is True
    assert all(len(c["test_error"]) == 2 and not any(map(math.isnan, c["test_error"]))
               for c in curves.values())  # fmt: skip


def test_degradation_records_its_command_machine_and_recipe(degradation_dir: dict) -> None:
    out, record = degradation_dir["out"], degradation_dir["record"]
    trace = record["provenance"]
    assert trace["command"] == (
        "cnnzoo experiment degradation --dataset fashion_mnist --epochs 2 --depths 20 "
        f"--subset {SUBSET} --num-threads 1 -o {out}"
    )
    assert trace["machine"]["torch"] == torch.__version__ and trace["machine"]["torch_threads"] == 1
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", trace["date"])
    markdown = (out / "degradation.md").read_text()
    assert f"`{trace['command']}`" in markdown and torch.__version__ in markdown
    # One recipe for every net: the paper's, with the lr divided by 10 half-way (2 epochs).
    for name in ("plain20", "resnet20"):
        config = json.loads((out / name / "config.json").read_text())
        assert (config["optimizer"], config["lr"], config["momentum"]) == ("sgd", 0.1, 0.9)
        assert (config["weight_decay"], config["batch_size"], config["augment"]) == (
            1e-4, 128, "crop_flip",
        )  # fmt: skip
        assert (config["schedule"], config["milestones"], config["val_split"]) == ("step", [1], 0)
        assert config["data"]["stored_image_size"] == [28, 28]
        lrs = [float(r["lr"]) for r in history(out / name)]
        assert lrs == pytest.approx([0.1, 0.01])


def test_degradation_resume_continued_the_interrupted_run(degradation_dir: dict) -> None:
    out = degradation_dir["out"]
    rows = history(out / "plain20")
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert rows[0] == degradation_dir["first_epoch"]  # epoch 1 kept, not trained again
    log = (out / "plain20" / "train.log").read_text()
    assert "resuming after epoch 1" in log
    lines = degradation_dir["lines"]
    assert "plain20: resuming after epoch 1 of 2" in lines[0]
    assert any(line.startswith("resnet20: training 2 epochs") for line in lines)
    # The test curve went on from the checkpoint: one score per epoch, each logged once.
    curve = TestCurve.read(out / "plain20")
    for epoch in (1, 2):
        line = f"epoch {epoch:>3}/2  test loss {curve[epoch]['test_loss']:.4f} error "
        assert log.count(line + f"{pct(1 - curve[epoch]['test_accuracy'])}%") == 1


def test_degradation_reuses_finished_runs(degradation_dir: dict, capsys) -> None:
    out = degradation_dir["out"]
    before = {name: fingerprint(out / name) for name in ("plain20", "resnet20")}
    curve_before = (out / "plain20" / TestCurve.FILE).read_text()
    code = main(["experiment", "degradation", "--depths", "20", "--epochs", "2", "--subset",
                 str(SUBSET), "--num-threads", "1", "--quiet", "-o", str(out)])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "plain20: finished run reused" in printed and "resnet20: finished run reused" in printed
    assert "epoch" not in printed.replace("--epochs", "")  # nothing trained or scored
    assert {name: fingerprint(out / name) for name in before} == before
    assert (out / "plain20" / TestCurve.FILE).read_text() == curve_before
    # Asked for another recipe, it refuses instead of mixing runs.
    code = main(["experiment", "degradation", "--depths", "20", "--epochs", "3", "--subset",
                 str(SUBSET), "--quiet", "-o", str(out)])  # fmt: skip
    assert code == 2
    assert "another recipe (epochs: 2 there, 3 now)" in capsys.readouterr().err


def test_degradation_schedule_is_the_papers() -> None:
    # 64k iterations of 391 are 164 epochs; the paper divides at 32k and 48k: epochs 82 and 123.
    assert milestones(164) == [82, 123]
    assert milestones(20) == [10, 15] and milestones(2) == [1] and milestones(1) == []
    config = degradation_config("plain20", dataset="fashion_mnist", epochs=1, output_dir="x")
    assert config.schedule == "none"  # one epoch: nothing to divide
    config = degradation_config(
        "plain20", dataset="fashion_mnist", epochs=20, output_dir="x", schedule="cosine"
    )
    assert (config.schedule, config.milestones) == ("cosine", None)
    assert degradation.nets_of(56) == ("plain56", "resnet56")


# --------------------------------------------------------------------------- zoo table


@pytest.fixture(scope="module")
def zoo_dir(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("zoo")
    patch = pytest.MonkeyPatch()
    patch.setattr(zoo_table, "SPEED_SECONDS", 0.2)
    try:
        record = run_zoo_table(
            out, models=["lenet5", "resnet20"], epochs=1, infer_batch=16, log=lambda _: None,
            **TINY,
        )  # fmt: skip
    finally:
        patch.undo()
    return {"out": out, "record": record}


def test_zoo_table_measures_each_model(zoo_dir: dict) -> None:
    from cnnzoo import count_macs, create_model

    out, record = zoo_dir["out"], zoo_dir["record"]
    assert_real_png(out / "zoo_table.png", (800, 550))
    rows = table_rows((out / "zoo_table.md").read_text())
    assert sorted(row[0] for row in rows) == ["lenet5", "resnet20"]  # one row per model
    for row in record["rows"]:
        run_dir = out / row["model"]
        metrics = json.loads((run_dir / "metrics.json").read_text())
        speed = json.loads((run_dir / "speed.json").read_text())
        config = json.loads((run_dir / "config.json").read_text())
        assert row["test_top1"] == metrics["test_top1"] and row["params"] == metrics["params"]
        assert row["epochs"] == metrics["epochs_run"] == 1
        assert row["train_seconds"] == metrics["train_seconds"]
        assert row["infer_images_per_s"] == speed["infer_images_per_s"] > 0
        assert row["train_images_per_s"] == speed["train_images_per_s"] > 0
        assert speed["key"]["threads"] == 1 and speed["key"]["infer_batch"] == 16
        assert speed["key"]["train_batch"] == config["batch_size"]
        # Multiply-adds of the network the run trained, at the size it trained at (28 px).
        model = create_model(row["model"], num_classes=10, in_chans=1)
        assert row["image_size"] == 28 and row["macs"] == count_macs(model, (1, 28, 28))
        shown = next(r for r in rows if r[0] == row["model"])
        assert shown[1] == f"{metrics['params']:,}" and shown[6] == pct(metrics["test_top1"])
        # Each model's default recipe (the trainer's table), for the asked number of epochs.
        recipe = default_recipe(row["model"], "fashion_mnist")
        for field in ("optimizer", "lr", "schedule", "augment", "label_smoothing", "ema_decay"):
            assert config[field] == recipe[field], field
        assert config["epochs"] == 1 and row["recipe"] == recipe_of(config)
        assert shown[-1] == row["recipe"]
    assert record["rows"][0]["params"] == 61_706  # LeNet-5, 10 classes, grey
    assert record["speed"] == {"threads": 1, "infer_batch": 16, "train_batch": [128]}
    assert "training batch 128 (each recipe's" in (out / "zoo_table.md").read_text()
    assert record["provenance"]["command"].startswith(
        "cnnzoo experiment zoo-table --models lenet5 resnet20 --dataset fashion_mnist --epochs 1"
    )
    assert record["provenance"]["machine"]["matmul_gflops_fp32_cpu"] > 0


def test_zoo_table_reuses_finished_runs_and_speeds(zoo_dir: dict) -> None:
    out = zoo_dir["out"]
    before = {m: fingerprint(out / m) for m in ("lenet5", "resnet20")}
    speeds = {m: (out / m / "speed.json").stat().st_mtime_ns for m in before}
    lines: list[str] = []
    record = run_zoo_table(
        out, models=["lenet5", "resnet20"], epochs=1, infer_batch=16, log=lines.append, **TINY
    )
    assert {m: fingerprint(out / m) for m in before} == before
    assert {m: (out / m / "speed.json").stat().st_mtime_ns for m in before} == speeds
    assert [r["test_top1"] for r in record["rows"]] == [
        r["test_top1"] for r in zoo_dir["record"]["rows"]
    ]
    assert sum("finished run reused" in line for line in lines) == 2


# --------------------------------------------------------------------------- data subsets


def test_fashion_subset_is_class_balanced_and_resumable_anywhere(tmp_path: Path) -> None:
    directory = subset_data_dir("fashion_mnist", 250, tmp_path)
    subset = load_dataset("fashion_mnist", data_dir=directory, val_split=0)
    full = load_dataset("fashion_mnist", val_split=0)
    assert (len(subset.train), len(subset.test)) == (250, 250)
    assert sorted(torch.bincount(subset.train.labels).tolist()) == [25] * 10
    # The images are Fashion-MNIST's own, with their labels.
    first = subset.train.images[0]
    matches = (full.train.images == first).flatten(1).all(1).nonzero().flatten()
    assert subset.train.labels[0] in full.train.labels[matches]
    assert subset_data_dir("fashion_mnist", 250, tmp_path) == directory  # written once
    with pytest.raises(UsageError, match="only 60,000 training images"):
        subset_data_dir("fashion_mnist", 60_001, tmp_path)


def test_cifar10_subset_round_trips_through_the_reader(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (60, 3, 32, 32), dtype=torch.uint8, generator=generator)
    labels = torch.arange(60) % 10
    source = tmp_path / "cifar"
    source.mkdir()
    names = ["plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    _write_cifar10(source, TensorSplit(images[:50], labels[:50]),
                   TensorSplit(images[50:], labels[50:]), names)  # fmt: skip
    directory = subset_data_dir("cifar10", 20, tmp_path / "subsets", data_dir=source)
    subset = load_dataset("cifar10", data_dir=directory, val_split=0)
    assert (len(subset.train), len(subset.test)) == (20, 10)
    assert subset.class_names == names
    assert torch.bincount(subset.train.labels).tolist() == [2] * 10
    for image, label in zip(subset.train.images, subset.train.labels, strict=True):
        index = int(np.flatnonzero((images[:50] == image).flatten(1).all(1).numpy())[0])
        assert labels[index] == label


# --------------------------------------------------------------------------- command line


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["nonsense"], "invalid choice: 'nonsense'"),
        (
            ["degradation", "--depths", "21"],
            "depth 21 is not a CIFAR ResNet depth: it must be 6n+2",
        ),
        (["degradation", "--depths", "26"], "the zoo has no plain26"),
        (["degradation", "--epochs", "0"], "epochs must be an integer >= 1, got 0"),
        (["degradation", "--subset", "-5"], "subset must be an integer >= 1, got -5"),
        (["degradation", "--dataset", "cifar100"], "experiments run on fashion_mnist"),
        (["zoo-table", "--models", "lenet6"], "unknown model 'lenet6'; did you mean lenet5"),
        (["zoo-table", "--epochs", "x"], "expected an integer, got 'x'"),
        (["data-efficiency", "--steps", "0"], "steps must be an integer >= 1, got 0"),
        (["data-efficiency", "--sizes", "70000"], "fashion_mnist has only 60,000 training"),
        (["data-efficiency", "--sizes", "0"], "each size must be an integer >= 1, got 0"),
        (["data-efficiency", "--models", "vit_b16"], "unknown model 'vit_b16'; did you mean"),
        (["data-efficiency", "--epochs", "3"], "unrecognized arguments: --epochs 3"),
    ],
)
def test_bad_requests_are_one_line_usage_errors(argv, message, tmp_path: Path, capsys) -> None:
    try:
        code = main(["experiment", *argv, "-o", str(tmp_path / "out")])
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()  # nothing started


def test_subset_defaults_and_all() -> None:
    from cnnzoo.cli.main import build_parser
    from cnnzoo.experiments.runs import DEFAULT_SUBSET

    parse = build_parser().parse_args
    assert parse(["experiment", "degradation"]).subset == DEFAULT_SUBSET == 10_000
    assert parse(["experiment", "zoo-table", "--subset", "all"]).subset is None
    assert parse(["experiment", "zoo-table"]).epochs == zoo_table.DEFAULT_EPOCHS
    assert parse(["experiment", "degradation"]).depths == [20, 56]


def test_list_names_each_experiment_and_what_it_reproduces(capsys) -> None:
    assert main(["experiment", "list"]) == 0
    out = capsys.readouterr().out
    assert "degradation:" in out and "zoo-table:" in out
    assert "Deep Residual Learning for Image Recognition" in out and "Fig. 1 and Fig. 6" in out
    assert out.count("time here:") == 3
    assert "data-efficiency:" in out and "An Image is Worth 16x16 Words" in out
    assert all(word in out for word in ("measured", "estimated"))


# --------------------------------------------------------------------------- data efficiency


def test_steps_per_epoch_and_epochs_for_a_step_budget() -> None:
    from cnnzoo.experiments.data_efficiency import epochs_for, steps_per_epoch

    assert [steps_per_epoch(n, 128) for n in (1_000, 5_000, 20_000, 60_000)] == [8, 40, 157, 469]
    assert steps_per_epoch(129, 128) == 1  # the trainer drops a last batch of one image
    assert [epochs_for(3_752, n, 128) for n in (1_000, 5_000, 20_000, 60_000)] == [469, 94, 24, 8]
    assert epochs_for(5, 60_000, 128) == 1


def test_data_efficiency_keeps_each_recipe_and_scales_its_warmup() -> None:
    from cnnzoo.experiments.data_efficiency import data_efficiency_config

    vit = data_efficiency_config("vit_cifar_4", 5_000, dataset="fashion_mnist", steps=400,
                                 output_dir="x").resolved()  # fmt: skip
    recipe = default_recipe("vit_cifar_4", "fashion_mnist")
    assert (vit.epochs, vit.val_split, vit.optimizer, vit.lr) == (10, 0.0, "adamw", recipe["lr"])
    # The recipe warms up over 2 of its 20 epochs: 10 % of the steps here too.
    assert vit.warmup_epochs == pytest.approx(10 * recipe["warmup_epochs"] / recipe["epochs"])
    resnet = data_efficiency_config("resnet20", 1_000, dataset="fashion_mnist", steps=400,
                                    output_dir="x").resolved()  # fmt: skip
    assert (resnet.epochs, resnet.optimizer, resnet.warmup_epochs) == (50, "sgd", 0.0)


@pytest.fixture(scope="module")
def efficiency_dir(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from cnnzoo.experiments import run_data_efficiency

    out = tmp_path_factory.mktemp("data-efficiency")
    # One model (each sub-run scores the whole 10,000-image test set): the loop over models is
    # the same for three.
    options = dict(models=["vit_cifar_4"], sizes=[128, 256], steps=2, num_threads=1, quiet=True)
    record = run_data_efficiency(out, log=lambda _: None, **options)
    lines: list[str] = []
    again = run_data_efficiency(out, log=lines.append, **options)
    return {"out": out, "record": record, "again": again, "lines": lines, "options": options}


@pytest.mark.slow
def test_data_efficiency_trains_every_size_for_the_same_steps(efficiency_dir: dict) -> None:
    out, record = efficiency_dir["out"], efficiency_dir["record"]
    rows = {(row["model"], row["images"]): row for row in record["rows"]}
    assert set(rows) == {("vit_cifar_4", 128), ("vit_cifar_4", 256)}
    for (model, images), row in rows.items():
        assert row["steps"] == 2 and row["epochs"] == {128: 2, 256: 1}[images]
        metrics = json.loads((out / f"{model}-{images}" / "metrics.json").read_text())
        assert row["test_accuracy"] == metrics["test_top1"]
        assert metrics["test"]["n"] == record["test_images"] == 10_000  # the whole test set
        saved = json.loads((out / f"{model}-{images}" / "config.json").read_text())
        assert saved["val_split"] == 0.0 and saved["epochs"] == row["epochs"]
    cut = out / "data" / "fashion_mnist-subset128-fulltest"
    subset = load_dataset("fashion_mnist", data_dir=cut, val_split=0)
    assert len(subset.train) == 128 and len(subset.test) == 10_000
    assert_real_png(out / "data_efficiency.png", (800, 550))
    markdown = (out / "data_efficiency.md").read_text()
    assert "| model | params | 128 images | 256 images |" in markdown
    vit = rows[("vit_cifar_4", 256)]
    assert f"| vit_cifar_4 | 256 | 1 | 2 | {pct(vit['final_train_accuracy'])} |" in markdown
    assert "warm-up 10 % of the steps" in markdown
    saved = json.loads((out / "data_efficiency.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(record["rows"]))
    assert saved["provenance"]["command"] == (
        "cnnzoo experiment data-efficiency --models vit_cifar_4 --dataset "
        f"fashion_mnist --sizes 128 256 --steps 2 --num-threads 1 -o {out}"
    )


@pytest.mark.slow
def test_data_efficiency_reuses_runs_and_refuses_another_budget(efficiency_dir: dict) -> None:
    from cnnzoo.experiments import run_data_efficiency

    assert sum("finished run reused" in line for line in efficiency_dir["lines"]) == 2
    assert efficiency_dir["again"]["rows"] == efficiency_dir["record"]["rows"]
    options = {**efficiency_dir["options"], "steps": 4}
    with pytest.raises(UsageError, match="another recipe .*epochs: 2 there, 4 now"):
        run_data_efficiency(efficiency_dir["out"], log=lambda _: None, **options)
