"""Weights files: round trips, torchvision checkpoints, adaptation, and every kind of bad file."""

from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors import safe_open

from cnnzoo import __version__, create_model
from cnnzoo.errors import WeightsError
from cnnzoo.weights import load_weights, save_weights


@pytest.fixture(scope="module")
def tv_resnet18() -> torch.nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).eval()


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory: pytest.TempPathFactory, tv_resnet18: torch.nn.Module) -> Path:
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(tv_resnet18.state_dict(), path)
    return path


def test_safetensors_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = create_model("resnet20", num_classes=10).eval()
    path = save_weights(model, tmp_path / "sub" / "resnet20.safetensors")
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    assert metadata["model"] == "resnet20" and metadata["num_classes"] == "10"
    assert metadata["in_chans"] == "3" and metadata["cnnzoo_version"] == __version__

    torch.manual_seed(2)
    fresh = create_model("resnet20", num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    assert not torch.equal(fresh(x), model(x))
    report = load_weights(fresh, path)
    assert report.ok and len(report.loaded) == len(model.state_dict())
    assert report.metadata["model"] == "resnet20"
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))


def test_torchvision_checkpoint_loads_into_the_zoo_model(
    resnet18_file: Path, tv_resnet18: torch.nn.Module
) -> None:
    model = create_model("resnet18").eval()
    report = load_weights(model, resnet18_file)
    assert report.ok and not report.adapted and not report.fresh_classifier
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert (model(x) - tv_resnet18(x)).abs().max() <= 1e-5


def test_containers_and_ddp_prefix_are_unwrapped(tv_resnet18: torch.nn.Module) -> None:
    state = tv_resnet18.state_dict()
    wrapped = {"epoch": 3, "model": {f"module.{k}": v for k, v in state.items()}}
    model = create_model("resnet18")
    report = load_weights(model, wrapped)
    assert report.ok and len(report.loaded) == len(state)
    assert torch.equal(model.conv1.weight, state["conv1.weight"])


def test_a_smaller_classifier_stays_fresh_with_a_warning(resnet18_file: Path) -> None:
    torch.manual_seed(3)
    model = create_model("resnet18", num_classes=10)
    fresh_fc = model.fc.weight.detach().clone()
    with pytest.warns(UserWarning, match=r"fc\.weight \[1000, 512\] vs \[10, 512\]"):
        report = load_weights(model, resnet18_file)
    assert report.fresh_classifier == ["fc.weight", "fc.bias"]
    assert torch.equal(model.fc.weight, fresh_fc)
    assert len(report.loaded) == len(model.state_dict()) - 2


def test_auxiliary_classifiers_count_as_classifiers() -> None:
    with torch.device("meta"):
        source = create_model("googlenet")  # aux heads with 1000 classes
        target = create_model("googlenet", num_classes=10)
    with pytest.warns(UserWarning, match="classifier"):
        report = load_weights(target, source.state_dict())
    assert set(report.fresh_classifier) == {
        "fc.weight", "fc.bias", "aux1.fc2.weight", "aux1.fc2.bias",
        "aux2.fc2.weight", "aux2.fc2.bias",
    }  # fmt: skip
    assert report.ok


def test_rgb_stem_folded_into_one_channel(tv_resnet18: torch.nn.Module) -> None:
    grey_model = create_model("resnet18", in_chans=1).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to warn about: only the stem is adapted
        report = load_weights(grey_model, tv_resnet18.state_dict())
    assert list(report.adapted) == ["conv1.weight"]
    grey = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        ours = grey_model.conv1(grey)
        rgb = tv_resnet18.conv1(grey.expand(-1, 3, -1, -1))
        assert (ours - rgb).abs().max() <= 1e-5
        # ...and so the whole network sees a grey image as the RGB network sees it replicated.
        assert (grey_model(grey) - tv_resnet18(grey.repeat(1, 3, 1, 1))).abs().max() <= 1e-4


def test_rgb_stem_repeated_over_five_channels(tv_resnet18: torch.nn.Module) -> None:
    model = create_model("resnet18", in_chans=5)
    load_weights(model, tv_resnet18.state_dict())
    rgb = tv_resnet18.conv1.weight
    expected = torch.cat([rgb, rgb[:, :2]], dim=1) * (3 / 5)
    assert torch.allclose(model.conv1.weight, expected)


def test_partial_load_when_not_strict(tv_resnet18: torch.nn.Module) -> None:
    state = {k: v for k, v in tv_resnet18.state_dict().items() if not k.startswith("layer4")}
    model = create_model("resnet18")
    with pytest.raises(WeightsError, match=r"missing: layer4\.0\.conv1\.weight"):
        load_weights(model, state)
    report = load_weights(model, state, strict=False)
    assert not report.ok and all(k.startswith("layer4") for k in report.missing)
    assert len(report.loaded) == len(state)


# --- bad files ----------------------------------------------------------------------------------


def test_missing_file_and_directory(tmp_path: Path) -> None:
    model = create_model("resnet20", num_classes=10)
    with pytest.raises(WeightsError, match="does not exist"):
        load_weights(model, tmp_path / "nope.pth")
    with pytest.raises(WeightsError, match="is a directory"):
        load_weights(model, tmp_path)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_truncated_files(tmp_path: Path, suffix: str) -> None:
    model = create_model("resnet20", num_classes=10)
    whole = tmp_path / f"whole{suffix}"
    if suffix == ".pth":
        torch.save(model.state_dict(), whole)
    else:
        save_weights(model, whole)
    data = whole.read_bytes()
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="corrupt or truncated") as info:
        load_weights(model, cut)
    assert str(cut) in str(info.value)


@pytest.mark.parametrize("suffix", [".pth", ".pt", ".safetensors", ".bin"])
def test_random_bytes(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"noise{suffix}"
    path.write_bytes(os.urandom(4096))
    with pytest.raises(WeightsError, match="corrupt or truncated"):
        load_weights(create_model("resnet20", num_classes=10), path)


def test_empty_and_non_tensor_mappings(tmp_path: Path) -> None:
    model = create_model("resnet20", num_classes=10)
    torch.save({}, tmp_path / "empty.pth")
    with pytest.raises(WeightsError, match="no tensors"):
        load_weights(model, tmp_path / "empty.pth")
    torch.save({"conv1.weight": [1.0, 2.0], "fc.bias": torch.zeros(10)}, tmp_path / "list.pth")
    with pytest.raises(WeightsError, match=r"not a state-dict: 1 of its 2 entries"):
        load_weights(model, tmp_path / "list.pth")
    torch.save(torch.zeros(3), tmp_path / "tensor.pth")
    with pytest.raises(WeightsError, match="not a mapping of tensors"):
        load_weights(model, tmp_path / "tensor.pth")


class _Payload:
    """Unpickling this would create a marker file; weights-only loading must refuse it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_a_pickle_that_runs_code_never_runs(tmp_path: Path, writer: str) -> None:
    marker = tmp_path / "MARKER"
    path = tmp_path / "evil.pth"
    payload = {"conv1.weight": torch.zeros(1), "x": _Payload(marker)}
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        with path.open("wb") as handle:
            pickle.dump(payload, handle, protocol=2)
    assert not marker.exists()
    with pytest.raises(WeightsError, match=r"evil\.pth") as info:
        load_weights(create_model("resnet20", num_classes=10), path)
    assert "refusing" in str(info.value) or "weights-only" in str(info.value)
    assert not marker.exists()


def test_a_file_for_another_architecture(resnet18_file: Path) -> None:
    with torch.device("meta"):
        vgg = create_model("vgg11")
    with pytest.raises(WeightsError) as info:
        load_weights(vgg, resnet18_file)
    message = str(info.value)
    assert "does not fit vgg11" in message
    assert "22 missing, 122 unexpected" in message
    assert "features.0.weight" in message and "conv1.weight" in message


def test_shape_mismatches_are_listed(tv_resnet18: torch.nn.Module) -> None:
    with torch.device("meta"):
        resnet34 = create_model("resnet34")
    state = dict(tv_resnet18.state_dict())
    state["layer1.0.conv1.weight"] = torch.zeros(64, 64, 5, 5)
    with pytest.raises(WeightsError, match=r"layer1\.0\.conv1\.weight \[64, 64, 5, 5\] vs"):
        load_weights(resnet34, state)
