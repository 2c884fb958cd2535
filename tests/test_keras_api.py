"""The Keras-style API: fit / evaluate / predict on arrays, Datasets and DataLoaders."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import cnnzoo
from cnnzoo.cli.main import main
from cnnzoo.data import load_dataset, read_idx
from cnnzoo.data.arrays import as_images, as_labels, bundle_from_arrays
from cnnzoo.errors import CnnzooError, DataError, UsageError
from cnnzoo.train.callbacks import EarlyStopping

FAST = dict(quiet=True, num_threads=1, tensorboard=False, plots=False)


@pytest.fixture(scope="module")
def digits() -> dict[str, np.ndarray]:
    """scikit-learn's digits as a Keras user holds them: NHWC float32 in [0, 1], labels."""
    bundle = load_dataset("digits", val_split=0)
    to_keras = lambda split: split.images.permute(0, 2, 3, 1).numpy().astype("float32") / 255  # noqa: E731
    return {
        "x_train": to_keras(bundle.train),
        "y_train": bundle.train.labels.numpy(),
        "x_test": to_keras(bundle.test),
        "y_test": bundle.test.labels.numpy(),
    }


def test_images_in_every_layout_become_nchw() -> None:
    grey = np.random.default_rng(0).integers(0, 256, (5, 28, 28, 1), dtype=np.uint8)
    nchw = as_images(grey)
    assert nchw.shape == (5, 1, 28, 28) and nchw.dtype == torch.uint8  # not "28 channels"
    assert torch.equal(as_images(grey[..., 0]), nchw)  # (N, H, W)
    assert torch.equal(as_images(grey.transpose(0, 3, 1, 2)), nchw)  # NCHW
    unit = as_images(grey.astype("float32") / 255)  # Keras' x / 255.0
    assert unit.dtype == torch.float32 and torch.allclose(unit, nchw.float(), atol=1e-4)
    rgb = np.zeros((2, 32, 32, 3), dtype=np.uint8)
    assert as_images(rgb).shape == (2, 3, 32, 32)
    normalised = np.full((2, 1, 4, 4), -0.5, dtype=np.float32)
    assert float(as_images(normalised).min()) == -0.5  # already normalised: kept as it is
    one_hot = np.eye(10)[[3, 1, 4]]  # Keras' to_categorical
    assert as_labels(one_hot, 3).tolist() == [3, 1, 4]
    with pytest.raises(UsageError, match="channel axis"):
        as_images(np.zeros((2, 5, 6, 7)))
    with pytest.raises(UsageError, match="2 labels for 3 images"):
        as_labels([1, 2], 3)


def test_bundle_splits_like_the_named_datasets() -> None:
    x = np.random.default_rng(0).integers(0, 256, (100, 8, 8), dtype=np.uint8)
    y = np.repeat(np.arange(10), 10)
    bundle = bundle_from_arrays(x, y, validation_split=0.2)
    assert len(bundle.train) == 80 and len(bundle.val) == 20 and len(bundle.test) == 0
    assert sorted(bundle.val.labels.tolist()) == sorted(np.repeat(np.arange(10), 2).tolist())
    assert bundle.channels == 1 and bundle.image_size == (8, 8) and bundle.num_classes == 10
    with pytest.raises(UsageError, match="not both"):
        bundle_from_arrays(x, y, validation_split=0.2, validation_data=(x, y))
    with pytest.raises(UsageError, match="without labels"):
        bundle_from_arrays(x)


def test_fit_evaluate_predict_on_keras_arrays(tmp_path: Path, digits) -> None:
    history = cnnzoo.fit(
        "lenet5", digits["x_train"], digits["y_train"], validation_split=0.1, epochs=5,
        batch_size=32, test_data=(digits["x_test"], digits["y_test"]),
        callbacks=[EarlyStopping(monitor="val_accuracy", patience=3)],
        output_dir=str(tmp_path / "run"), **FAST,
    )  # fmt: skip
    assert set(history.history) >= {"loss", "accuracy", "val_loss", "val_accuracy", "lr"}
    assert len(history.history["val_loss"]) == len(history.epoch) == 5
    assert history.history["loss"][-1] < history.history["loss"][0]
    model = history.model
    assert model.default_cfg["input_size"] == (1, 32, 32)  # it remembers its input
    scores = cnnzoo.evaluate(model, digits["x_test"], digits["y_test"])
    # The same images through the same preparation as the run's own test scoring.
    assert scores["accuracy"] == pytest.approx(history.metrics["test_top1"], abs=1e-12)
    assert scores["loss"] == pytest.approx(history.metrics["test_loss"], rel=1e-5)
    assert scores["accuracy"] >= 0.9  # measured 0.96
    probabilities = cnnzoo.predict(model, digits["x_test"], batch_size=50)
    assert probabilities.shape == (len(digits["x_test"]), 10)
    assert np.allclose(probabilities.sum(1), 1, atol=1e-5)
    accuracy = (probabilities.argmax(1) == digits["y_test"]).mean()
    assert accuracy == pytest.approx(scores["accuracy"])
    # A run directory works as the model too.
    assert cnnzoo.evaluate(tmp_path / "run", digits["x_test"], digits["y_test"])["accuracy"] > 0.9
    with pytest.warns(FutureWarning, match="history.metrics"):
        assert history["test_top1"] == history.metrics["test_top1"]


def test_fit_trains_a_module_in_place_from_a_dataset_or_a_loader(tmp_path, digits) -> None:
    x = torch.from_numpy(digits["x_train"]).permute(0, 3, 1, 2)  # ToTensor's layout and scale
    y = torch.from_numpy(digits["y_train"])
    dataset = torch.utils.data.TensorDataset(x, y)
    torch.manual_seed(0)
    model = cnnzoo.create_model("lenet5", num_classes=10, in_chans=1)
    before = model.conv1.weight.detach().clone()
    history = cnnzoo.fit(model, dataset, epochs=2, batch_size=32, validation_split=0.1,
                         output_dir=str(tmp_path / "a"), **FAST)  # fmt: skip
    assert history.model is model and not torch.equal(model.conv1.weight, before)
    assert len(history.history["val_accuracy"]) == 2
    assert cnnzoo.evaluate(model, digits["x_test"], digits["y_test"])["accuracy"] > 0.7
    loader = torch.utils.data.DataLoader(dataset, batch_size=100)
    other = cnnzoo.fit("lenet5", loader, epochs=1, batch_size=32, output_dir=str(tmp_path / "b"),
                       **FAST)  # fmt: skip
    assert "val_loss" not in other.history and len(other.history["loss"]) == 1
    # validation_data is the validation split, and early stopping (a config field) watches it.
    third = cnnzoo.fit("lenet5", x, y, validation_data=(digits["x_test"], digits["y_test"]),
                       epochs=2, patience=1, output_dir=str(tmp_path / "c"), **FAST)  # fmt: skip
    assert len(third.history["val_accuracy"]) == 2


def test_fit_reads_a_dataset_of_pil_images(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    items = [(Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)), i % 2)
             for i in range(40)]  # fmt: skip
    history = cnnzoo.fit("resnet20", items, epochs=1, batch_size=8,
                         output_dir=str(tmp_path / "r"), **FAST)  # fmt: skip
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert config["data"]["in_chans"] == 3 and config["data"]["num_classes"] == 2
    assert history.epoch == [0]


@pytest.fixture(scope="module")
def fashion_dir() -> Path:
    try:
        return Path(load_dataset("fashion_mnist", val_split=0).source)
    except DataError:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")


def test_arrays_from_the_idx_files_train_exactly_as_cnnzoo_train(tmp_path, fashion_dir) -> None:
    """The LeNet-5 recipe for one epoch, from Keras-style arrays and from `cnnzoo train`: the
    same weights, bit for bit, and the same test accuracy (the full recipe: README)."""
    def read(name: str) -> np.ndarray:
        return read_idx(fashion_dir / f"{name}-ubyte.gz")

    x_train, y_train = read("train-images-idx3")[..., None], read("train-labels-idx1")  # NHWC
    x_test, y_test = read("t10k-images-idx3")[..., None], read("t10k-labels-idx1")
    common = ["--epochs", "1", "--num-threads", "1", "--quiet", "--no-tensorboard", "--no-plots"]
    assert main(["train", "--recipe", "lenet5_fashion_mnist", *common,
                 "-o", str(tmp_path / "cli")]) == 0  # fmt: skip
    cli = json.loads((tmp_path / "cli" / "metrics.json").read_text())

    history = cnnzoo.fit("lenet5", x_train, y_train, validation_split=0.1,
                         recipe="lenet5_fashion_mnist", epochs=1, output_dir=str(tmp_path / "api"),
                         **FAST)  # fmt: skip
    a = load_file(tmp_path / "cli" / "last.safetensors")
    b = load_file(tmp_path / "api" / "last.safetensors")
    assert all(torch.equal(a[key], b[key]) for key in a)
    accuracy = cnnzoo.evaluate(history.model, x_test, y_test)["accuracy"]
    assert accuracy == pytest.approx(cli["test_top1"], abs=1e-12)
    assert accuracy > 0.8  # one epoch: measured 0.86


def test_the_notes_keras_script_runs_with_cnnzoo(tmp_path: Path, fashion_dir) -> None:
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    example = root / "examples" / "lenet5_mnist.py"
    # The cnnzoo under test, wherever the script runs from.
    path = os.pathsep.join(filter(None, [str(root / "src"), os.environ.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, str(example), "fashion_mnist", "1"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": path})  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    accuracy = float(done.stdout.split("Test Accuracy:")[1])
    assert 0.5 < accuracy < 1  # one epoch of plain SGD: measured 0.73
    assert list((tmp_path / "logs").glob("events.out.tfevents.*"))
    (run,) = (tmp_path / "runs").iterdir()  # the user's TensorBoard replaced the run's
    assert not list(run.glob("events.out.tfevents.*")) and (run / "best.safetensors").is_file()
    # The notes' plain SGD at a constant lr, and nothing the default recipe would add.
    config = json.loads((run / "config.json").read_text())
    assert (config["optimizer"], config["lr"], config["momentum"]) == ("sgd", 0.01, 0.0)
    assert (config["weight_decay"], config["schedule"], config["augment"]) == (0.0, "none", "none")
    assert config["label_smoothing"] == 0.0 and config["ema_decay"] == 0.0
    assert "sgd lr 0.01 wd 0, none schedule" in (run / "train.log").read_text()
    assert "tensorboard --logdir ./logs" in done.stdout
    skipped = ("#", '"""', "python")
    keras_lines = [line for line in example.read_text().splitlines()
                   if line.strip() and not line.lstrip().startswith(skipped)]  # fmt: skip
    assert len(keras_lines) <= 25  # the Keras original: 36 lines of code with its model class


def test_fit_takes_the_split_as_the_command_line_writes_it(tmp_path: Path, pets) -> None:
    from cnnzoo.train import TrainConfig

    assert TrainConfig.from_dict({"split": "400/92/10"}).split_parts() == (400, 92, 10)
    assert TrainConfig.from_dict({"split": "0.8,0.1,0.1"}).split_parts() == (0.8, 0.1, 0.1)
    with pytest.raises(UsageError, match="TRAIN/VAL/TEST"):
        TrainConfig.from_dict({"split": "400/92"})
    pets(tmp_path / "pets", 6)
    cnnzoo.fit("lenet5", f"imagefolder:{tmp_path / 'pets'}", split="8/2/2", epochs=1,
               num_workers=0, output_dir=str(tmp_path / "run"), **FAST)  # fmt: skip
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["split"] == [8, 2, 2]
    assert "8 train / 2 val / 2 test" in (tmp_path / "run" / "train.log").read_text()


def test_evaluate_of_a_run_trained_on_arrays_says_how_to_give_data(tmp_path, digits,
                                                                   capsys) -> None:  # fmt: skip
    run = tmp_path / "run"
    cnnzoo.fit("lenet5", digits["x_train"][:200], digits["y_train"][:200], epochs=1,
               output_dir=str(run), **FAST)  # fmt: skip
    code = main(["evaluate", str(run)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "cnnzoo.evaluate(RUN, x_test, y_test)" in err and "--dataset" in err
    assert main(["evaluate", str(run), "--dataset", "digits"]) == 0


def test_predict_takes_image_files_folders_and_lists(tmp_path: Path, digits) -> None:
    from cnnzoo.analysis.predict import predict_images
    from cnnzoo.cli.eval_cmd import load_model

    history = cnnzoo.fit("lenet5", digits["x_train"], digits["y_train"], epochs=1,
                         output_dir=str(tmp_path / "run"), **FAST)  # fmt: skip
    folder = tmp_path / "photos"
    for i in range(3):
        (folder / str(digits["y_test"][i])).mkdir(parents=True, exist_ok=True)
        grey = (digits["x_test"][i, :, :, 0] * 255).round().astype(np.uint8)
        Image.fromarray(grey, "L").save(folder / str(digits["y_test"][i]) / f"{i}.png")
    files = sorted(folder.rglob("*.png"))
    from_files = cnnzoo.predict(history.model, [str(f) for f in files])
    assert from_files.shape == (3, 10) and np.allclose(from_files.sum(1), 1, atol=1e-5)
    # The PNG holds exactly the array's pixels: the same probabilities as from the array.
    order = [int(f.stem) for f in files]
    from_arrays = cnnzoo.predict(history.model, digits["x_test"][order])
    np.testing.assert_allclose(from_files, from_arrays, atol=1e-5)
    np.testing.assert_allclose(cnnzoo.predict(history.model, folder), from_files, atol=1e-6)
    np.testing.assert_allclose(cnnzoo.predict(history.model, files[0]), from_files[:1],
                               atol=1e-6)  # fmt: skip
    # A run directory, and weights by name, prepare files as `cnnzoo predict` does.
    np.testing.assert_allclose(cnnzoo.predict(tmp_path / "run", files), from_files, atol=1e-5)
    shipped = cnnzoo.create_model("resnet20", weights="fashion_mnist")
    cli = torch.stack([p.probabilities for p in predict_images(
        load_model("resnet20", "fashion_mnist"), files, topk=1)])  # fmt: skip
    np.testing.assert_allclose(cnnzoo.predict(shipped, files), cli.numpy(), atol=1e-6)
    # Arrays reach those weights with their statistics too (not the architecture's defaults).
    np.testing.assert_allclose(cnnzoo.predict(shipped, digits["x_test"][order]), cli.numpy(),
                               atol=1e-4)  # fmt: skip
    with pytest.raises(CnnzooError, match="china.jpg: no such image file"):
        cnnzoo.predict(history.model, "china.jpg")
