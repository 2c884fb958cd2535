"""Transfer learning, `cnnzoo compare`, `--fast` evaluation, and the fast data path's learning."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import cnnzoo
from cnnzoo.cli.eval_cmd import evaluate_run
from cnnzoo.cli.main import main
from cnnzoo.data import load_dataset
from cnnzoo.train import fit

FAST = dict(quiet=True, num_threads=1, tensorboard=False, plots=False)
DIGITS = dict(dataset="digits", batch_size=32, lr=3e-3, augment="none", **FAST)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    """A resnet20 trained 2 epochs on digits: the 'pretrained' file for the runs below."""
    run = tmp_path_factory.mktemp("pre") / "run"
    fit(model="resnet20", epochs=2, output_dir=str(run), **DIGITS)
    return run / "last.safetensors"


def fine_tune(run: Path, pretrained: Path, **options: object) -> Path:
    """resnet20 on digits from ``pretrained`` with a frozen backbone (plus ``options``)."""
    metrics = fit(model="resnet20", output_dir=str(run), weights=str(pretrained),
                  freeze="backbone", **DIGITS, **options).metrics  # fmt: skip
    # The run scores its test split with the statistics it trained with (ImageNet's), as a
    # later `cnnzoo evaluate` of the run does.
    assert evaluate_run(run)[0].top1 == pytest.approx(metrics["test_top1"], abs=1e-9)
    return run


def _backbone_and_head(weights: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    head = {k: v for k, v in weights.items() if k.startswith("fc.")}
    backbone = {k: v for k, v in weights.items() if not k.startswith("fc.")}
    return backbone, head


def test_frozen_backbone_keeps_pretrained_weights_and_statistics(tmp_path, pretrained) -> None:
    run = fine_tune(tmp_path / "frozen", pretrained, epochs=1)
    before_backbone, before_head = _backbone_and_head(load_file(pretrained))
    after_backbone, after_head = _backbone_and_head(load_file(run / "last.safetensors"))
    # Weights and BatchNorm running statistics of the backbone are untouched (norms in eval).
    for key, value in before_backbone.items():
        assert torch.equal(after_backbone[key], value), key
    assert not torch.equal(after_head["fc.weight"], before_head["fc.weight"])
    config = json.loads((run / "config.json").read_text())
    assert config["weights"] == str(pretrained) and config["freeze"] == "backbone"
    # Pretrained weights come with ImageNet statistics (their grey average for 1 channel).
    assert config["data"]["mean"] == pytest.approx([(0.485 + 0.456 + 0.406) / 3])


def test_unfreeze_at_trains_the_whole_network_from_that_epoch(tmp_path, pretrained) -> None:
    run = fine_tune(tmp_path / "unfrozen", pretrained, epochs=2, unfreeze_at=2)
    before, _ = _backbone_and_head(load_file(pretrained))
    after, _ = _backbone_and_head(load_file(run / "last.safetensors"))
    assert not torch.equal(after["conv1.weight"], before["conv1.weight"])
    log = (run / "train.log").read_text()
    assert "epoch 1: backbone frozen" in log and "epoch 2: backbone trainable" in log


def test_pretrained_classifier_for_other_classes_is_replaced(tmp_path) -> None:
    """A 1000-class torchvision-style file: the head is fresh, everything else is loaded."""
    donor = cnnzoo.create_model("resnet18", num_classes=1000, in_chans=3)
    path = tmp_path / "resnet18.pth"
    torch.save(donor.state_dict(), path)
    run = tmp_path / "run"
    fit(model="resnet18", epochs=1, output_dir=str(run), weights=str(path), freeze="backbone",
        **DIGITS)  # fmt: skip
    trained = load_file(run / "last.safetensors")
    assert trained["fc.weight"].shape == (10, 512)
    # The RGB stem was summed over its input channels for the 1-channel digits.
    assert torch.allclose(trained["conv1.weight"], donor.conv1.weight.sum(1, keepdim=True))
    log = (run / "train.log").read_text()
    # The new head is what transfer learning wants: said as such, not as a mismatch.
    assert "weights: a new head for the data's classes (10 outputs) takes the place of" in log
    assert "does not fit" not in log


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--unfreeze-at", "2"], "--unfreeze-at needs --freeze backbone"),
        (["--pretrained", "/nonexistent/weights.pth"], "no such file"),
        (["--freeze", "everything"], "invalid choice"),
    ],
)
def test_transfer_options_are_checked(tmp_path, capsys, argv, message) -> None:
    try:
        code = main(["train", "--model", "resnet20", "--dataset", "digits", "--output-dir",
                     str(tmp_path / "r"), *argv])  # fmt: skip
    except SystemExit as exc:  # argparse's own usage errors
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err and err.count("\n") == 1


def test_compare_trains_each_model_and_reads_finished_runs(tmp_path, capsys) -> None:
    finished = tmp_path / "finished"
    fit(model="lenet5", epochs=1, output_dir=str(finished), **DIGITS)
    out = tmp_path / "cmp"
    code = main(["compare", "resnet20", str(finished), "--dataset", "digits", "--epochs", "1",
                 "--batch-size", "32", "--augment", "none", "--num-threads", "1", "--quiet",
                 "--no-tensorboard", "--no-plots", "--output-dir", str(out)])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0
    rows = {row["model"]: row for row in json.loads((out / "compare.json").read_text())}
    assert set(rows) == {"lenet5", "resnet20"}
    assert rows["lenet5"]["params"] == 61_706 and rows["lenet5"]["run_dir"] == str(finished)
    # Multiply-adds at the sizes the runs used: LeNet-5 at 32 px, resnet20 at digits' 8 px.
    with torch.device("meta"):
        lenet = cnnzoo.create_model("lenet5")
    assert rows["lenet5"]["macs"] == cnnzoo.count_macs(lenet, (1, 32, 32))
    assert rows["resnet20"]["image_size"] == 8 and rows["resnet20"]["epochs_run"] == 1
    assert all(0 < row["test_top1"] <= 1 and row["images_per_s"] > 0 for row in rows.values())
    assert (out / "compare.png").stat().st_size > 0 and (out / "compare.csv").is_file()
    assert "resnet20" in printed and "lenet5" in printed


def test_compare_rejects_unknown_models(tmp_path, capsys) -> None:
    code = main(["compare", "lenet5", "resnet5", "--output-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "unknown model 'resnet5'" in err and err.count("\n") == 1


def test_fast_evaluation_matches_eager(tmp_path) -> None:
    run = tmp_path / "run"
    fit(model="resnet20", epochs=1, output_dir=str(run), **DIGITS)
    eager, _ = evaluate_run(run)
    fast, _ = evaluate_run(run, fast=True)
    assert fast.top1 == pytest.approx(eager.top1, abs=1 / len(load_dataset("digits").test))
    assert fast.loss == pytest.approx(eager.loss, rel=1e-3)


def test_fast_data_path_learns_as_well_as_a_plain_dataloader(tmp_path) -> None:
    """The in-memory batched loader vs torch's DataLoader over per-sample tensors: same model
    init, optimizer and epochs; test accuracy within 3 points (measured: both about 97 %)."""
    epochs, batch = 5, 32
    fast = fit(model="lenet5", epochs=epochs, val_split=0.0, seed=0, weight_decay=0.0,
               schedule="none", optimizer="adam", output_dir=str(tmp_path / "fast"),
               **{**DIGITS, "batch_size": batch}).metrics  # fmt: skip

    bundle = load_dataset("digits", val_split=0.0)
    mean, std = bundle.mean[0], bundle.std[0]

    def prepare(images: torch.Tensor) -> torch.Tensor:
        x = nn.functional.interpolate(images.float() / 255, size=(32, 32), mode="bilinear")
        return (x - mean) / std

    train = torch.utils.data.TensorDataset(prepare(bundle.train.images), bundle.train.labels)
    loader = torch.utils.data.DataLoader(
        train, batch_size=batch, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    torch.manual_seed(0)
    model = cnnzoo.create_model("lenet5", num_classes=10, in_chans=1)
    optimizer = torch.optim.Adam(model.parameters(), lr=DIGITS["lr"])
    for _ in range(epochs):
        model.train()
        for x, y in loader:
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        plain = (model(prepare(bundle.test.images)).argmax(1) == bundle.test.labels).float().mean()
    assert plain.item() >= 0.9 and fast["test_top1"] >= 0.9
    assert abs(fast["test_top1"] - plain.item()) <= 0.03


def test_the_notes_python_transfer_recipe_trains_as_the_cli_does(tmp_path) -> None:
    """create_model(weights=...), requires_grad=False, a new head, fit: the weights' own
    normalisation, and the frozen layers' batch-norm statistics stay as they came."""
    model = cnnzoo.create_model("resnet20", weights="fashion_mnist")
    for param in model.parameters():
        param.requires_grad = False
    model.fc = nn.Linear(model.fc.in_features, 10)  # digits' ten classes
    frozen = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("fc.")}
    assert any(k.endswith("running_mean") for k in frozen)
    history = fit(model, "digits", epochs=1, output_dir=str(tmp_path / "run"), **DIGITS)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    # Fashion-MNIST's statistics, which the weights were trained with (digits' own are others).
    assert config["data"]["mean"] == pytest.approx(model.pretrained_cfg["mean"])
    assert config["data"]["std"] == pytest.approx(model.pretrained_cfg["std"])
    for key, value in frozen.items():
        assert torch.equal(history.model.state_dict()[key], value), key
    assert not torch.equal(history.model.fc.weight, nn.Linear(64, 10).weight)
    log = (tmp_path / "run" / "train.log").read_text()
    assert "normalised with the statistics of its fashion_mnist weights" in log
    assert "batch norms of the frozen layers stay in eval mode" in log


def test_compare_of_image_folder_runs_names_their_data_and_drops_a_trivial_top5(
    tmp_path, pets, capsys
) -> None:
    folder = tmp_path / "pets"
    pets(folder, 10)
    runs = []
    for model in ("lenet5", "resnet20"):
        runs.append(tmp_path / model)
        fit(model=model, dataset=f"imagefolder:{folder}", split=[12, 4, 4], epochs=1,
            batch_size=4, num_workers=0, output_dir=str(runs[-1]), **FAST)  # fmt: skip
    capsys.readouterr()
    code = main(["compare", *map(str, runs), "--output-dir", str(tmp_path / "cmp")])
    printed = capsys.readouterr().out
    assert code == 0
    assert f"cnnzoocompare(imagefolder:{folder})" in "".join(printed.split())  # wrapped at 80
    assert "fashion_mnist" not in printed and "top-5" not in printed and "top-1" in printed
    rows = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert {row["num_classes"] for row in rows} == {2}


@pytest.mark.parametrize("units", [2, 1])
def test_the_recipes_new_head_is_the_one_the_run_records(tmp_path, pets, units) -> None:
    """``m.fc = nn.Linear(..., 2)`` (or one sigmoid unit) on a 10-class model: the run records
    the head it trained, so `cnnzoo evaluate RUN` rebuilds it and scores what training did."""
    from PIL import Image

    folder = tmp_path / "pets"
    pets(folder, 10)
    for path in folder.rglob("*.png"):  # grey, as the fashion_mnist weights' stem takes
        Image.open(path).convert("L").save(path)
    model = cnnzoo.create_model("resnet20", weights="fashion_mnist")
    for param in model.parameters():
        param.requires_grad = False
    model.fc = nn.Linear(model.fc.in_features, units)
    run = tmp_path / "run"
    history = fit(model, f"imagefolder:{folder}", split=[12, 4, 4], epochs=1, batch_size=4,
                  image_size=28, num_workers=0, output_dir=str(run), **FAST)  # fmt: skip
    assert history.model.num_classes == units
    config = json.loads((run / "config.json").read_text())
    assert config["model_kwargs"].get("num_classes", 2) == units
    result, _ = evaluate_run(run)
    assert result.n == 4 and result.loss == pytest.approx(history.metrics["test_loss"], rel=1e-6)
    scores = cnnzoo.evaluate(history.model, f"imagefolder:{folder}")
    assert scores["loss"] == pytest.approx(history.metrics["test_loss"], rel=1e-6)
    probabilities = cnnzoo.predict(history.model, f"imagefolder:{folder}")
    assert probabilities.shape == (4, 1 if units == 1 else 2)  # Keras' (N, 1) for a sigmoid
