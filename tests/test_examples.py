"""The chapter scripts in examples/ run on their own (small settings) and do what they say.
(examples/lenet5_mnist.py, chapter 1, is tested in test_keras_api.py.)"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(script: str, *args: str, cwd: Path) -> str:
    path = os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "MPLBACKEND": "Agg", "CNNZOO_OFFLINE": "1"}
    done = subprocess.run([sys.executable, str(ROOT / "examples" / script), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600, env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_vgg_sizes(tmp_path: Path) -> None:
    out = run("vgg_sizes.py", "alexnet", "vgg16", cwd=tmp_path)
    vgg16 = next(line for line in out.splitlines() if line.startswith("vgg16 "))
    assert "138.4 M" in vgg16 and "89.4%" in vgg16 and "15.47 G" in vgg16 and vgg16.endswith("212")
    assert next(line for line in out.splitlines() if line.startswith("alexnet ")).endswith("195")


@pytest.mark.slow
def test_inception_precise_bn(tmp_path: Path) -> None:
    out = run("inception_precise_bn.py", "--epochs", "1", "--train-images", "300", cwd=tmp_path)
    found = dict(re.findall(r"precise_bn=\s*(\d+):.*validation ([\d.]+)%", out))
    # One short epoch: the running averages trail the weights (measured 10 % against 87 %).
    assert float(found["20"]) > float(found["0"]) + 30, out


@pytest.mark.slow
def test_resnet_degradation(tmp_path: Path, fashion_mnist: None) -> None:
    out = run("resnet_degradation.py", "--epochs", "1", "--subset", "300", "--depths", "20",
              "--output-dir", "deg", cwd=tmp_path)  # fmt: skip
    assert re.search(r"plain20 +training error", out) and re.search(r"resnet20 +training", out)
    for name in ("degradation.png", "degradation.md", "degradation.json"):
        assert (tmp_path / "deg" / name).stat().st_size > 0


def test_model_selection(tmp_path: Path) -> None:
    out = run("model_selection.py", "--models", "mobilenet_v3_small", "resnet18", "--size", "64",
              "--turns", "2", cwd=tmp_path)  # fmt: skip
    rows = {line.split()[0]: line for line in out.splitlines() if line.startswith(("mob", "res"))}
    assert "2.5 M" in rows["mobilenet_v3_small"] and "11.7 M" in rows["resnet18"]
    assert re.search(r"least memory: +mobilenet_v3_small", out)
    assert re.search(r"most accurate: +resnet18", out)  # 69.8 % against 67.7 % published


def test_efficientnet_scaling(tmp_path: Path) -> None:
    out = run("efficientnet_scaling.py", "--variants", "0", "7", cwd=tmp_path)
    assert "B7: formula depth 3.58 width 1.95 596 px | released depth 3.1 width 2.0 600 px" in out
    assert "blocks [4, 7, 7, 10, 10, 13, 4]" in out and "66.3 M parameters" in out


@pytest.mark.slow
def test_transfer_learning(tmp_path: Path, fashion_mnist: None) -> None:
    out = run("transfer_learning.py", "--per-class", "60", "--split", "80/20/20", "--epochs", "2",
              "--output-dir", "runs", cwd=tmp_path)  # fmt: skip
    assert len(list((tmp_path / "shirts" / "shirt").glob("*.png"))) == 60
    accuracies = re.findall(r"test accuracy ([\d.]+)%", out)
    assert len(accuracies) == 3 and all(0 <= float(a) <= 100 for a in accuracies), out
    assert all((tmp_path / "runs" / str(i) / "metrics.json").is_file() for i in range(3))


@pytest.mark.slow
def test_seeing_inside(tmp_path: Path, fashion_mnist: None) -> None:
    out = run("seeing_inside.py", "--count", "4", "--out", "seen", cwd=tmp_path)
    assert re.search(r"[34]/4 right", out)  # the shipped ResNet-20 gets these 4 right
    assert sorted(p.name for p in (tmp_path / "seen").iterdir()) == [
        "feature_maps.png", "filters.png", "gradcam.png"]


def test_vit_attention(tmp_path: Path) -> None:
    out = run("vit_attention.py", "--out", "seen", cwd=tmp_path)
    sizes = dict(re.findall(r"^(\w+) +([\d,]+) ", out, flags=re.MULTILINE))
    # vit_cifar_4 and resnet20 on 1x28x28: the same size by design; convnext_cifar smaller.
    assert sizes == {"vit_cifar_4": "272,906", "resnet20": "269,434", "convnext_cifar": "237,682"}
    assert "28 px on a 28-px image" in out.splitlines()[1]  # the whole image, no more
    assert (tmp_path / "seen" / "attention.png").stat().st_size > 10_000


@pytest.mark.slow
def test_deploy(tmp_path: Path, fashion_mnist: None) -> None:
    out = run("deploy.py", "--calibration", "64", "--check", "300", "--out", "deployed",
              cwd=tmp_path)  # fmt: skip
    # The shipped LeNet-5 on the first test image (an ankle boot), through both protocols.
    assert "served v1: Ankle boot 0.9125; v2: class 9 0.9125" in out, out
    agreement = float(re.search(r"top-1 agreement with float32 ([\d.]+)%", out)[1])
    assert agreement >= 90
    assert float(re.search(r"largest difference from PyTorch ([\d.e-]+)", out)[1]) < 1e-4
    assert sorted(p.name for p in (tmp_path / "deployed").iterdir()) == [
        "lenet5.onnx", "resnet20.int8.onnx"]
