"""Recipes as files, the generated CLI flags, field-by-field validation and the defaults."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from cnnzoo.cli.main import build_parser, main
from cnnzoo.train import TrainConfig
from cnnzoo.train.defaults import OPTIMIZER_DEFAULTS, TABLE_FIELDS, default_recipe
from cnnzoo.train.optim import LRSchedule
from cnnzoo.train.recipes import load_recipe, recipe_names

QUIET = ["--quiet", "--num-threads", "1", "--no-tensorboard", "--no-plots"]


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse's own usage errors
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def train_help() -> str:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command")
    return subparsers.choices["train"].format_help()


def test_every_field_has_a_flag_with_its_help_and_default() -> None:
    text = " ".join(train_help().split())
    for field in dataclasses.fields(TrainConfig):
        flag = (field.metadata.get("flags") or ("--" + field.name.replace("_", "-"),))[0]
        assert flag in text, field.name
        assert " ".join(field.metadata["help"].split())[:40] in text, field.name
    assert "--gamma GAMMA step schedule decay factor (default: 0.1)" in text
    assert "--pretrained" in text and "--no-tensorboard" in text and "--no-channels-last" in text
    assert "(default: the model's and dataset's recipe)" in text


def test_shipped_recipes_are_valid_and_feed_the_defaults() -> None:
    assert {"lenet5_fashion_mnist", "resnet18_fashion_mnist", "lenet5_digits"} <= set(
        recipe_names()
    )
    for name in recipe_names():
        TrainConfig(**load_recipe(name)).resolved().validate()
    # The default recipe for LeNet on Fashion-MNIST is the shipped 91 % recipe, trained for
    # longer: the recipe uses all 60,000 images, the default holds 10 % out for validation.
    tuned = load_recipe("lenet5_fashion_mnist")
    default = TrainConfig(model="lenet5", dataset="fashion_mnist").resolved()
    assert default.val_split == 0.1 and default.epochs == 16 > tuned["epochs"]
    for key, value in tuned.items():
        if key != "epochs":
            assert getattr(default, key) == value, key


def test_defaults_come_from_one_table_and_yield_to_the_user() -> None:
    assert set(default_recipe("resnet20", "digits")) == set(TABLE_FIELDS)
    sgd = default_recipe("resnet20", "fashion_mnist")
    assert (sgd["optimizer"], sgd["lr"], sgd["augment"]) == ("sgd", 0.1, "crop_flip")
    assert default_recipe("resnet20", "mnist")["augment"] == "auto"  # no flips for digits
    # Another optimizer than the table's: that optimizer's own lr and weight decay.
    mine = TrainConfig(model="resnet20", dataset="fashion_mnist", optimizer="adam").resolved()
    assert (mine.lr, mine.weight_decay) == OPTIMIZER_DEFAULTS["adam"] and not mine.nesterov
    assert TrainConfig(model="resnet20", dataset="cifar10", lr=0.05).resolved().lr == 0.05
    vgg = default_recipe("vgg16", "digits")
    assert vgg["optimizer"] == "adam" and vgg["warmup_epochs"] > 0
    assert default_recipe("vgg16_bn", "digits")["optimizer"] == "adamw"


def test_config_file_with_flags_overriding_it(tmp_path: Path, capsys) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("model: lenet5\ndataset: digits\nlr: 0.002\nepochs: 7\nbatch_size: 64\n"
                      "augment: none  # a comment\n")  # fmt: skip
    run = tmp_path / "run"
    code, out, err = run_cli(capsys, "train", "--config", recipe, "--epochs", "1", "-o", run,
                             *QUIET)  # fmt: skip
    assert code == 0, err
    config = json.loads((run / "config.json").read_text())
    assert (config["lr"], config["epochs"], config["batch_size"]) == (0.002, 1, 64)
    assert "yours: augment, batch_size, epochs, lr" in out
    # A run's config.json is a recipe: it repeats the run into another directory.
    assert load_recipe(run / "config.json")["lr"] == 0.002
    assert "output_dir" not in load_recipe(run / "config.json")
    again = tmp_path / "again"
    code, _, err = run_cli(capsys, "train", "--config", run / "config.json", "-o", again, *QUIET)
    assert code == 0, err
    repeated = json.loads((again / "config.json").read_text())
    assert {k: v for k, v in repeated.items() if k != "output_dir"} == {
        k: v for k, v in config.items() if k != "output_dir"
    }
    json_recipe = tmp_path / "recipe.json"
    json_recipe.write_text(json.dumps({"model": "lenet5", "dataset": "digits", "epochs": 1}))
    code, _, err = run_cli(capsys, "train", "--recipe", json_recipe, "-o", tmp_path / "j", *QUIET)
    assert code == 0, err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"model": "lenet5", "lr": "fast"}', '"lr": expected a number or null, got "fast"'),
        ('{"model": "lenet5", "betas": 5}', '"betas": expected a list of 2 numbers, got 5'),
        ('[{"model": "lenet5"}]', "expected a mapping of training options, got a list"),
        ('{"model": "lenet5", "learning_rate": 0.1}', "unknown training option(s) 'learning_rate'"),
        ('{"model": "lenet5", "epochs": 2.5}', '"epochs": expected an integer or null, got 2.5'),
        ('{"model": "lenet5", "nesterov": "yes"}', '"nesterov": expected true or false or null'),
        ("model: [unclosed", "not valid"),
    ],
)
def test_bad_recipe_files_name_the_file_and_the_field(tmp_path, capsys, content, message) -> None:
    recipe = tmp_path / ("r.json" if content.startswith(("{", "[")) else "r.yaml")
    recipe.write_text(content)
    code, _, err = run_cli(capsys, "train", "--config", recipe, "-o", tmp_path / "run")
    assert code == 2 and message in err and str(recipe) in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_a_hand_edited_run_config_is_refused_field_by_field(tmp_path, capsys) -> None:
    run = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", "--model", "lenet5", "--dataset", "digits",
                           "--epochs", "1", "-o", run, *QUIET)  # fmt: skip
    assert code == 0, err
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "lr": "fast"}))
    code, _, err = run_cli(capsys, "train", "--resume", run, "--epochs", "2")
    assert code == 2 and f'{run / "config.json"}: "lr": expected a number' in err
    assert len(err.strip().splitlines()) == 1
    code, _, err = run_cli(capsys, "train", "--resume", run, "--config", "lenet5_digits")
    assert code == 2 and "drop --config" in err


def test_unknown_recipe_names_and_keras_monitor_names(tmp_path, capsys) -> None:
    code, _, err = run_cli(capsys, "train", "--recipe", "lenet5_fashion", "-o", tmp_path / "r")
    assert code == 2 and "did you mean 'lenet5_fashion_mnist'" in err
    assert TrainConfig(model="m", monitor="val_acc").monitor == "val_accuracy"
    code, _, err = run_cli(capsys, "train", "--model", "lenet5", "--dataset", "digits",
                           "--monitor", "val_accuracy", "--patience", "1", "--epochs", "1",
                           "-o", tmp_path / "m", *QUIET)  # fmt: skip
    assert code == 0, err
    metrics = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert metrics["monitor"] == "val_accuracy"
    parser = build_parser()
    args = parser.parse_args(["train", "--model", "lenet5", "--monitor", "val_acc"])  # 0.1's name
    assert args.monitor == "val_accuracy"


def test_split_flag_and_folder_hints(tmp_path, capsys) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    code, _, err = run_cli(capsys, "train", "--model", "lenet5", "--dataset", folder)
    assert code == 2 and f"did you mean --dataset imagefolder:{folder}" in err
    code, _, err = run_cli(capsys, "train", "--model", "lenet5", "--dataset", "digits",
                           "--split", "400/92/10")  # fmt: skip
    assert code == 2 and "--split applies to image folders" in err
    assert TrainConfig(model="m", dataset=f"imagefolder:{folder}", split=[400, 92, 10]).split
    code, _, err = run_cli(capsys, "train", "--model", "lenet5", "--split", "1/2")
    assert code == 2 and "expected 3 floats" in err


def test_an_extended_run_keeps_its_schedule_and_restarts_it_for_the_added_epochs() -> None:
    params = [nn.Parameter(torch.zeros(1))]
    plan = TrainConfig(model="m", epochs=10, lr=1.0, schedule="cosine", warmup_epochs=0)
    planned = LRSchedule(torch.optim.SGD(params, lr=1.0), plan, steps_per_epoch=10)
    before = [planned.factor(step) for step in range(100)]
    extended = LRSchedule(torch.optim.SGD(params, lr=1.0),
                          dataclasses.replace(plan, epochs=15), steps_per_epoch=10)  # fmt: skip
    extended.load_state_dict({**planned.state_dict(), "step_count": 50})
    assert [extended.factor(step) for step in range(100)] == before  # epochs 1-10 unchanged
    assert extended.factor(100) == 1.0  # a warm restart for epochs 11-15
    assert extended.factor(125) == pytest.approx(0.5 * (1 + math.cos(math.pi * 25 / 50)))
    assert extended.extended and not planned.extended
