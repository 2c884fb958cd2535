"""load_run / evaluate / predict on a small run directory, and the CLI's error handling."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.metrics import confusion_matrix

import cnnzoo
import cnnzoo.cli.main as cli_main
from cnnzoo.analysis.predict import collect_images, predict_images
from cnnzoo.cli.eval_cmd import evaluate_run
from cnnzoo.data import load_dataset
from cnnzoo.errors import DataError, WeightsError
from cnnzoo.inference import load_model
from cnnzoo.rundir import load_run
from cnnzoo.train.config import TrainConfig
from cnnzoo.weights import save_weights

SIDE = 32  # lenet5 takes 32x32; digits are 8x8, so the run resized its batches


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _write_run(run_dir: Path, model: torch.nn.Module, bundle, tag: str = "best", **cfg) -> Path:
    """A run directory as `cnnzoo train` writes it: config.json with its data section, weights."""
    run_dir.mkdir(parents=True, exist_ok=True)
    config = TrainConfig(model="lenet5", dataset="digits", epochs=1, **cfg)
    facts = {
        "name": bundle.name,
        "num_classes": bundle.num_classes,
        "in_chans": bundle.channels,
        "class_names": list(bundle.class_names),
        "mean": list(bundle.mean),
        "std": list(bundle.std),
        "image_size": SIDE,
        "stored_image_size": list(bundle.image_size),
    }
    config.save(run_dir / "config.json", data=facts)
    save_weights(model, run_dir / f"{tag}.safetensors")
    return run_dir


@pytest.fixture(scope="module")
def run(tmp_path_factory, digits) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(0)
    model = cnnzoo.create_model("lenet5", num_classes=10, in_chans=1).eval()
    return _write_run(tmp_path_factory.mktemp("run") / "lenet", model, digits), model


def reference_logits(model: torch.nn.Module, images: torch.Tensor, bundle) -> torch.Tensor:
    """The training pipeline written out: uint8 -> float, bilinear resize, normalise, forward."""
    x = F.interpolate(images.float(), size=(SIDE, SIDE), mode="bilinear", align_corners=False)
    mean = torch.tensor(bundle.mean).view(1, -1, 1, 1)
    std = torch.tensor(bundle.std).view(1, -1, 1, 1)
    with torch.no_grad():
        return model((x / 255 - mean) / std)


def run_cli(monkeypatch, capsys, *argv: str) -> tuple[int, str, str]:
    monkeypatch.setattr(cli_main, "COMMAND_MODULES", ("cnnzoo.cli.eval_cmd",))
    try:
        code = cli_main.main([str(a) for a in argv])
    except SystemExit as exc:  # argparse usage errors
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


# ----------------------------------------------------------------------------- load_run


def test_load_run_rebuilds_the_trained_model(run) -> None:
    run_dir, model = run
    for target in (run_dir, run_dir / "best.safetensors"):
        loaded, config = load_run(target)
        assert type(loaded).__name__ == "LeNet5" and not loaded.training
        assert (loaded.num_classes, loaded.conv1.in_channels) == (10, 1)
        for key, tensor in model.state_dict().items():
            assert torch.equal(loaded.state_dict()[key], tensor), key
        assert config["checkpoint"] == str(run_dir / "best.safetensors")
        # Read from the run's "data" section, since TrainConfig.image_size is None here.
        assert config["image_size"] == SIDE and config["class_names"][3] == "3"


def test_load_run_falls_back_to_last_and_reads_shapes_off_the_checkpoint(tmp_path) -> None:
    model = cnnzoo.create_model("lenet5", num_classes=7, in_chans=3)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    # A config without the data section: class and channel counts come from the tensors.
    (run_dir / "config.json").write_text(json.dumps({"model": "lenet5", "dataset": "digits"}))
    save_weights(model, run_dir / "last.safetensors")
    loaded, config = load_run(run_dir)
    assert config["checkpoint"].endswith("last.safetensors")
    assert (config["num_classes"], config["in_chans"]) == (7, 3)
    assert torch.equal(loaded.fc.weight, model.fc.weight)


# ----------------------------------------------------------------------------- evaluate


def test_evaluate_matches_an_independent_computation(run, digits) -> None:
    run_dir, model = run
    result, info = evaluate_run(run_dir, split="test", batch_size=100)
    logits = reference_logits(model, digits.test.images, digits)
    labels = digits.test.labels
    pred = logits.argmax(1)

    assert result.n == len(digits.test) == 359
    assert result.top1 == pytest.approx((pred == labels).double().mean().item(), abs=1e-12)
    assert result.confusion.tolist() == confusion_matrix(labels, pred, labels=range(10)).tolist()
    assert result.loss == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-5)
    assert info["split"] == "test" and info["model"] == "lenet5"

    val, _ = evaluate_run(run_dir, split="val")
    assert val.n == len(digits.val) == 144  # the run's own 10 % validation hold-out


# ----------------------------------------------------------------------------- predict


def _write_digit_folder(root: Path, bundle, count: int) -> list[int]:
    indices = list(range(count))
    for i in indices:
        label = bundle.class_names[int(bundle.test.labels[i])]
        (root / label).mkdir(parents=True, exist_ok=True)
        Image.fromarray(bundle.test.images[i, 0].numpy(), "L").save(root / label / f"d{i}.png")
    return indices


def test_predict_gives_the_evaluation_pipeline_probabilities(run, digits, tmp_path) -> None:
    run_dir, _ = run
    model, config = load_run(run_dir)
    loaded = load_model(run_dir)
    indices = _write_digit_folder(tmp_path / "imgs", digits, 9)
    found = collect_images([tmp_path / "imgs"])
    assert len(found) == 9 and all(label is not None for _, label in found)

    preds = predict_images(
        loaded, [p for p, _ in found], topk=3, batch_size=4,
        folder_labels=[label for _, label in found],
    )  # fmt: skip
    expected = F.softmax(reference_logits(model, digits.test.images[indices], digits), dim=1)
    by_index = {int(p.path.stem[1:]): p for p in preds}
    for i in indices:
        p = by_index[i]
        torch.testing.assert_close(p.probabilities, expected[i], atol=1e-6, rtol=0)
        assert p.indices == expected[i].topk(3).indices.tolist()
        assert p.probs == pytest.approx(expected[i].topk(3).values.tolist(), abs=1e-6)
        assert p.true_index == int(digits.test.labels[i])
        assert p.true_label == digits.class_names[p.true_index]
        assert p.image.shape == (1, SIDE, SIDE) and p.image.dtype == torch.uint8


def test_predict_converts_grey_rgb_rgba_palette_16bit_and_cmyk(run, digits, tmp_path) -> None:
    run_dir, _ = run
    model, config = load_run(run_dir)
    grey = digits.test.images[0, 0].numpy()
    files = {
        "grey.png": Image.fromarray(grey, "L"),
        "rgb.png": Image.fromarray(np.stack([grey] * 3, axis=-1), "RGB"),
        "rgba.png": Image.fromarray(np.dstack([grey] * 3 + [np.full_like(grey, 255)]), "RGBA"),
        "palette.png": Image.fromarray(grey, "L").convert("P"),
        "sixteen.png": Image.fromarray(grey.astype(np.uint16) * 257),
        "cmyk.jpg": Image.fromarray(grey, "L").convert("CMYK"),
        "clear.png": Image.new("RGBA", (8, 8), (0, 0, 0, 0)),  # transparent -> white
        "white.png": Image.new("L", (8, 8), 255),
    }
    for name, image in files.items():
        image.save(tmp_path / name, **({"quality": 100} if name.endswith(".jpg") else {}))
    assert Image.open(tmp_path / "cmyk.jpg").mode == "CMYK"
    assert Image.open(tmp_path / "sixteen.png").mode.startswith("I")
    found = sorted(tmp_path.iterdir())
    preds = {p.path.name: p for p in predict_images(load_model(run_dir), found)}

    reference = preds["grey.png"].probabilities
    for name in ("rgb.png", "rgba.png", "palette.png", "sixteen.png"):
        torch.testing.assert_close(preds[name].probabilities, reference, atol=1e-6, rtol=0)
    # JPEG is lossy, even at quality 100, but the image must decode to (nearly) the same digit.
    assert (preds["cmyk.jpg"].probabilities - reference).abs().max() < 0.05
    torch.testing.assert_close(
        preds["clear.png"].probabilities, preds["white.png"].probabilities, atol=1e-6, rtol=0
    )
    assert all(p.true_index is None for p in preds.values())  # tmp folder is no class name


def test_unreadable_images_are_skipped_and_none_readable_is_an_error(run, tmp_path) -> None:
    run_dir, _ = run
    model, config = load_run(run_dir)
    Image.new("L", (8, 8), 30).save(tmp_path / "ok.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.warns(UserWarning, match=r"skipped .*broken\.png"):
        preds = predict_images(load_model(run_dir), [tmp_path / "broken.png", tmp_path / "ok.png"])
    assert [p.path.name for p in preds] == ["ok.png"]
    with pytest.warns(UserWarning), pytest.raises(DataError, match="none of the 1 images"):
        predict_images(load_model(run_dir), [tmp_path / "broken.png"])


# ----------------------------------------------------------------------------- CLI


def test_cli_evaluate_writes_json_and_confusion_png(run, tmp_path, monkeypatch, capsys) -> None:
    run_dir, _ = run
    out_dir = tmp_path / "eval"
    code, out, err = run_cli(
        monkeypatch, capsys, "evaluate", run_dir, "--output", out_dir, "--batch-size", "128"
    )
    assert code == 0, err
    report = json.loads((out_dir / "eval_test.json").read_text())
    expected, _ = evaluate_run(run_dir)
    assert report["top1"] == pytest.approx(expected.top1)
    assert report["n"] == 359 and report["dataset"] == "digits" and report["topk"] == 5
    assert len(report["confusion_matrix"]) == 10
    assert (out_dir / "confusion_test.png").read_bytes()[:4] == b"\x89PNG"
    assert f"top-1={100 * expected.top1:.2f}%" in out and "macro avg" in out


def test_cli_predict_table_and_plots(run, digits, tmp_path, monkeypatch, capsys) -> None:
    run_dir, _ = run
    _write_digit_folder(tmp_path / "imgs", digits, 4)
    (tmp_path / "imgs" / "junk.png").write_text("not an image")
    code, out, err = run_cli(
        monkeypatch, capsys,
        "predict", run_dir, tmp_path / "imgs", "--topk", "3", "--plot", tmp_path / "plots",
    )  # fmt: skip
    assert code == 0, err
    assert "warning: skipped" in err and "junk.png" in err and "Traceback" not in err
    assert "prediction" in out and "top-3" in out and "top-4" not in out
    assert "top-1 correct:" in out and "/4 " in out
    plots = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert len(plots) == 5 and "predictions.png" in plots  # 4 bar charts + 1 grid


def _assert_one_line_error(
    code: int, err: str, expected_code: int, fragment: str, warnings: int = 0
) -> None:
    assert code == expected_code, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 + warnings, err
    assert all("warning:" in line for line in lines[:warnings]), err
    assert fragment in lines[-1], err


def test_cli_errors_are_one_line(run, digits, tmp_path, monkeypatch, capsys) -> None:
    run_dir, _ = run
    images = tmp_path / "imgs"
    _write_digit_folder(images, digits, 1)

    def check(args: list, expected_code: int, fragment: str, warnings: int = 0) -> None:
        code, _, err = run_cli(monkeypatch, capsys, *args)
        _assert_one_line_error(code, err, expected_code, fragment, warnings)

    check(["evaluate", tmp_path / "nowhere"], 1, "no such run directory")
    no_config = tmp_path / "no_config"
    no_config.mkdir()
    shutil.copy(run_dir / "best.safetensors", no_config / "best.safetensors")
    check(["predict", no_config, images], 1, "no config.json")
    empty_run = tmp_path / "empty_run"
    empty_run.mkdir()
    shutil.copy(run_dir / "config.json", empty_run / "config.json")
    check(["evaluate", empty_run], 1, "no best.safetensors or last.safetensors")

    truncated = tmp_path / "truncated"
    truncated.mkdir()
    shutil.copy(run_dir / "config.json", truncated / "config.json")
    data = (run_dir / "best.safetensors").read_bytes()
    (truncated / "best.safetensors").write_bytes(data[: len(data) // 2])
    check(["predict", truncated, images], 1, "truncated")
    (truncated / "foreign.safetensors").write_bytes(b"PK\x03\x04 a zip file, not weights")
    check(["predict", truncated / "foreign.safetensors", images], 1, "error:")

    other_arch = tmp_path / "other_arch"
    other_arch.mkdir()
    config = json.loads((run_dir / "config.json").read_text())
    (other_arch / "config.json").write_text(json.dumps({**config, "model": "lenet_caffe"}))
    shutil.copy(run_dir / "best.safetensors", other_arch / "best.safetensors")
    check(["evaluate", other_arch], 1, "cannot load these weights into lenet_caffe")

    wrong_head = tmp_path / "wrong_head"  # config says 10 classes, the weights have 7
    wrong_head.mkdir()
    shutil.copy(run_dir / "config.json", wrong_head / "config.json")
    save_weights(
        cnnzoo.create_model("lenet5", num_classes=7, in_chans=1), wrong_head / "last.safetensors"
    )
    check(["predict", wrong_head, images], 1, "does not match the run's config (10 classes")

    no_images = tmp_path / "no_images"
    no_images.mkdir()
    (no_images / "notes.txt").write_text("nothing to see")
    check(["predict", run_dir, no_images], 1, "no image files found")
    check(["predict", run_dir, no_images / "notes.txt"], 1, "none of the 1 images", warnings=1)
    check(["predict", run_dir, tmp_path / "missing.png"], 1, "no such image file")

    # Usage mistakes: exit 2.
    check(["predict", run_dir, images, "--topk", "0"], 2, "positive integer")
    check(["evaluate", run_dir, "--split", "holdout"], 2, "invalid choice")
    check(["evaluate", run_dir, "--dataset", "imagenet-21k"], 2, "imagenet-21k")


def test_weights_error_from_load_run_directly(tmp_path, run) -> None:
    run_dir, _ = run
    shutil.copy(run_dir / "config.json", tmp_path / "config.json")
    (tmp_path / "best.safetensors").write_bytes(b"")
    with pytest.raises(WeightsError):
        load_run(tmp_path)


def test_predictions_table_never_cuts_class_names() -> None:
    import io

    from rich.console import Console

    from cnnzoo.analysis.predict import Prediction
    from cnnzoo.cli.eval_cmd import predictions_table

    names = ["T-shirt/top", "Ankle boot", "Pullover", "Sneaker", "Dress"]
    rows = [Prediction(Path(f"photos/Ankle boot/{i}.png"), list(range(5)), names,
                       [0.6, 0.1, 0.1, 0.1, 0.1], 1, "Ankle boot") for i in range(3)]  # fmt: skip
    for width, layout in ((80, "rank"), (200, "top-5")):
        buffer = io.StringIO()
        Console(file=buffer, width=width, color_system=None).print(
            predictions_table(rows, 5, width)
        )
        text = buffer.getvalue()
        assert layout in text and "…" not in text
        assert max(len(line) for line in text.splitlines()) <= width
        for name in names:
            assert text.count(name) >= 3, (width, name)  # whole, on one line, in every row
