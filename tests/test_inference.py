"""Inference on anything: a run, a checkpoint, a weights file, or MODEL --weights NAME|FILE.

No test touches the network: ImageNet weights come from a state dict of a randomly initialised
torchvision model, placed in a private torch hub cache under torchvision's file name.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import sklearn
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from torchvision.transforms.v2 import functional as TF

import cnnzoo
from cnnzoo import pretrained
from cnnzoo.analysis.predict import predict_images
from cnnzoo.cli.main import main
from cnnzoo.data import load_dataset, make_loader, read_image
from cnnzoo.inference import load_model
from cnnzoo.train.config import TrainConfig
from cnnzoo.weights import save_weights

PHOTOS = [
    Path(sklearn.__file__).parent / "datasets" / "images" / name
    for name in ("china.jpg", "flower.jpg")
]
RESNET18_FILE = "resnet18-f37072fd.pth"  # torchvision's file name for IMAGENET1K_V1


@pytest.fixture(scope="module")
def tv_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).eval().state_dict()


@pytest.fixture()
def cached_resnet18(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tv_state) -> Path:
    """IMAGENET1K_V1 in a private cache, offline, with every connection refused and counted."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    pretrained.cache_dir().mkdir(parents=True)
    path = pretrained.cache_dir() / RESNET18_FILE
    torch.save(tv_state, path)
    return path


@pytest.fixture()
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    attempts: list[object] = []

    def refuse(self: socket.socket, address: object, *args: object) -> None:
        attempts.append(address)
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    return attempts


def _cli(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    os.environ["COLUMNS"] = "250"  # a wide table: class names stay on one line
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _torchvision_logits(tv_state, images: list[torch.Tensor]) -> torch.Tensor:
    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    reference = torchvision.models.resnet18()
    reference.load_state_dict(tv_state)
    batch = torch.stack([weights.transforms()(image) for image in images])
    with torch.no_grad():
        return reference.eval()(batch)


def test_the_weights_transform_is_torchvisions_pixel_for_pixel_on_real_jpegs(
    cached_resnet18: Path,
) -> None:
    loaded = load_model("resnet18", "IMAGENET1K_V1")
    transform = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.transforms()
    for photo in PHOTOS:
        ours = loaded.preprocess(read_image(photo, loaded.channels))
        # torchvision's transform on the photo as PIL decodes it (the notes' Image.open path).
        pil_tensor = TF.pil_to_tensor(Image.open(photo).convert("RGB"))
        assert torch.equal(ours, transform(pil_tensor)), photo.name
        assert ours.shape == (3, 224, 224)


def test_predict_with_imagenet_weights_prints_class_names_and_torchvisions_logits(
    cached_resnet18: Path, no_network: list[object], tv_state, capsys, tmp_path
) -> None:
    code, out, err = _cli(capsys, "predict", "resnet18", "--weights", "IMAGENET1K_V1", *PHOTOS,
                          "--offline", "--topk", "3", "--plot", tmp_path / "plots")  # fmt: skip
    assert code == 0, err
    assert no_network == []
    categories = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.meta["categories"]
    expected = _torchvision_logits(tv_state, [read_image(p) for p in PHOTOS])
    for row in F.softmax(expected, dim=1):
        top = categories[int(row.argmax())]
        assert top in out  # the ImageNet class name, not an index
    loaded = load_model("resnet18", "IMAGENET1K_V1")
    predictions = predict_images(loaded, PHOTOS, topk=5)
    for prediction, logits in zip(predictions, expected, strict=True):
        torch.testing.assert_close(prediction.probabilities, F.softmax(logits, 0), rtol=0,
                                   atol=1e-6)  # fmt: skip
        assert prediction.labels[0] == categories[int(logits.argmax())]
    plots = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert len(plots) == 3 and "predictions.png" in plots


def test_a_torchvision_file_given_alone_is_recognised_by_its_name(
    cached_resnet18: Path, tv_state, capsys
) -> None:
    loaded = load_model(cached_resnet18)
    assert loaded.name == "resnet18" and loaded.weights == "IMAGENET1K_V1"
    assert loaded.class_names[:2] == ["tench", "goldfish"]
    logits = _torchvision_logits(tv_state, [read_image(PHOTOS[0])])
    with torch.no_grad():
        ours = loaded.model(loaded.prepare([read_image(PHOTOS[0])]))
    assert torch.equal(ours, logits)
    # The same file named as --weights of its model is the same model.
    code, out, err = _cli(capsys, "predict", "resnet18", "--weights", cached_resnet18, PHOTOS[0])
    assert code == 0, err
    assert loaded.class_names[int(logits.argmax())] in out


def test_a_cnnzoo_weights_file_carries_its_model_classes_and_normalisation(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = cnnzoo.create_model("lenet5", num_classes=3, in_chans=1).eval()
    path = save_weights(model, tmp_path / "mine.safetensors")
    loaded = load_model(path)  # the metadata names the model and its classes
    assert loaded.name == "lenet5" and loaded.num_classes == 3 and loaded.channels == 1
    assert loaded.input_size == (32, 32)
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), model(x))
    assert load_model("lenet5", path).num_classes == 3


def _folder_run(root: Path, tmp_path: Path) -> tuple[Path, object]:
    """An image-folder run directory as the trainer writes it (weights untrained: the transform
    is what is tested)."""
    for index, colour in enumerate(("red", "green")):
        folder = root / colour
        folder.mkdir(parents=True)
        for i in range(10):
            pixels = torch.randint(0, 256, (3, 40 + 3 * i, 30 + 5 * i), dtype=torch.uint8)
            pixels[index] = 255
            Image.fromarray(pixels.permute(1, 2, 0).numpy()).save(folder / f"{i}.png")
    bundle = load_dataset(f"imagefolder:{root}", image_size=24)
    run = tmp_path / "run"
    run.mkdir()
    facts = {"num_classes": 2, "in_chans": 3, "class_names": bundle.class_names,
             "mean": list(bundle.mean), "std": list(bundle.std), "image_size": 24}  # fmt: skip
    TrainConfig(model="resnet20", dataset=f"imagefolder:{root}", image_size=24).save(
        run / "config.json", data=facts
    )
    torch.manual_seed(0)
    save_weights(cnnzoo.create_model("resnet20", num_classes=2), run / "best.safetensors")
    return run, bundle


def test_predict_and_evaluate_prepare_folder_images_with_one_transform(tmp_path: Path) -> None:
    run, bundle = _folder_run(tmp_path / "colours", tmp_path)
    loaded = load_model(run)
    loader = make_loader(bundle, "test", batch_size=64, image_size=None, mean=loaded.mean,
                         std=loaded.std, channels=3)  # fmt: skip
    x, _ = next(iter(loader))
    with torch.no_grad():
        expected = F.softmax(loaded.model(x), dim=1)
    predictions = predict_images(loaded, bundle.test.paths, topk=1)
    got = torch.stack([p.probabilities for p in predictions])
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    # Not the old stretch: the photos are not square, and the centre crop decides.
    stretched = F.interpolate(read_image(bundle.test.paths[0])[None].float(), size=(24, 24),
                              mode="bilinear", antialias=True)  # fmt: skip
    image = read_image(bundle.test.paths[0])
    assert image.shape[-1] != image.shape[-2]
    assert not torch.allclose(loaded.preprocess(image), loaded.preprocess.normalize(stretched[0]))


def test_sources_that_cannot_be_used_say_why_in_one_line(
    cached_resnet18: Path, no_network, capsys, tmp_path: Path
) -> None:
    cases = [
        (["predict", "resnet18", PHOTOS[0]], 2, "needs weights to predict: add --weights"),
        (["predict", "resnet18", "--weights", "IMAGENET9K", PHOTOS[0]], 2, "IMAGENET1K_V1"),
        (["predict", "resnet50", "--weights", "IMAGENET1K_V2", PHOTOS[0], "--offline"], 1,
         "resnet50-11ad3fa6.pth"),
        (["predict", "vgg11", "--weights", cached_resnet18, PHOTOS[0]], 1, "does not fit vgg11"),
        (["predict", tmp_path / "nothing-here", PHOTOS[0]], 1, "no such run directory"),
        (["predict", "resnet1", PHOTOS[0]], 2, "unknown model 'resnet1'"),
    ]  # fmt: skip
    lone = tmp_path / "lone.pth"
    torch.save({"w": torch.zeros(2)}, lone)
    cases.append((["predict", lone, PHOTOS[0]], 2, "cannot tell which model"))
    for argv, status, fragment in cases:
        code, _, err = _cli(capsys, *argv)
        assert code == status, (argv, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and fragment in lines[0] and "Traceback" not in err, (argv, err)
    assert no_network == []


def test_export_and_evaluate_take_named_weights(cached_resnet18: Path, capsys, tmp_path) -> None:
    out = tmp_path / "r18.pt"
    code, stdout, err = _cli(capsys, "export", "resnet18", out, "--weights", "IMAGENET1K_V1",
                             "--format", "torchscript", "--input-size", "3x64x64")  # fmt: skip
    assert code == 0, err
    scripted = torch.jit.load(str(out))
    loaded = load_model("resnet18", "IMAGENET1K_V1")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), loaded.model(x), rtol=1e-5, atol=1e-5)
    # ImageNet weights have no dataset here to be scored on by default: one line says so.
    code, _, err = _cli(capsys, "evaluate", "resnet18", "--weights", "IMAGENET1K_V1")
    assert code == 2 and "--dataset" in err and len(err.strip().splitlines()) == 1


def test_the_offline_switch_is_restored_after_the_command(cached_resnet18: Path, capsys) -> None:
    os.environ.pop(pretrained.OFFLINE_ENV, None)
    code, _, err = _cli(capsys, "predict", "resnet18", "--weights", "imagenet", PHOTOS[0],
                        "--offline")  # fmt: skip
    assert code == 0, err
    assert pretrained.OFFLINE_ENV not in os.environ


def test_fine_tuning_from_a_weight_name(cached_resnet18: Path, no_network, tv_state, tmp_path,
                                         capsys) -> None:  # fmt: skip
    root = tmp_path / "pets"
    for index, name in enumerate(("cat", "dog")):
        (root / name).mkdir(parents=True)
        for i in range(12):
            pixels = torch.randint(0, 120, (3, 40, 48), dtype=torch.uint8)
            pixels[index] += 100
            Image.fromarray(pixels.permute(1, 2, 0).numpy()).save(root / name / f"{i}.png")
    run = tmp_path / "run"
    code, out, err = _cli(capsys, "train", "--model", "resnet18", "--weights", "IMAGENET1K_V1",
                          "--freeze", "backbone", "--dataset", f"imagefolder:{root}",
                          "--image-size", "32", "--epochs", "1", "--batch-size", "8", "--quiet",
                          "--no-tensorboard", "--no-plots", "--num-workers", "0", "--offline",
                          "-o", run)  # fmt: skip
    assert code == 0, err
    assert no_network == []
    log = (run / "train.log").read_text()
    assert "torchvision weights IMAGENET1K_V1" in log
    loaded = load_model(run)
    assert loaded.class_names == ["cat", "dog"] and loaded.num_classes == 2
    imagenet = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.transforms()
    assert loaded.mean == pytest.approx(tuple(imagenet.mean))
    state = loaded.model.state_dict()
    # The frozen backbone is the file's, untouched (norm statistics included); the head is new.
    for key in ("conv1.weight", "layer4.1.conv2.weight", "layer1.0.bn1.running_mean"):
        assert torch.equal(state[key], tv_state[key]), key
    assert state["fc.weight"].shape == (2, 512)


def test_predict_cam_overlays_grad_cam_on_the_plots(cached_resnet18: Path, capsys, tmp_path):
    loaded = load_model("resnet18", "IMAGENET1K_V1")
    with_cam = predict_images(loaded, PHOTOS, cam=True)
    for prediction in with_cam:
        assert prediction.cam.shape == (224, 224)
        assert float(prediction.cam.min()) >= 0.0 and float(prediction.cam.max()) == 1.0
    from cnnzoo.analysis.explain import gradcam_maps

    batch = loaded.prepare([read_image(p) for p in PHOTOS])
    expected = gradcam_maps(loaded.model, batch, [p.indices[0] for p in with_cam])
    torch.testing.assert_close(torch.stack([p.cam for p in with_cam]), expected)

    plain, overlaid = tmp_path / "plain", tmp_path / "cam"
    assert _cli(capsys, "predict", "resnet18", "--weights", "imagenet", *PHOTOS, "--plot",
                plain)[0] == 0  # fmt: skip
    code, _, err = _cli(capsys, "predict", "resnet18", "--weights", "imagenet", *PHOTOS,
                        "--plot", overlaid, "--cam")  # fmt: skip
    assert code == 0, err
    for name in ("predictions.png", f"0000_{PHOTOS[0].stem}_top5.png"):
        assert (overlaid / name).read_bytes() != (plain / name).read_bytes()
    code, _, err = _cli(capsys, "predict", "resnet18", "--weights", "imagenet", PHOTOS[0], "--cam")
    assert code == 2 and "--plot" in err
