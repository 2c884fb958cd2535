"""The benchmark scripts run end to end and write consistent results (tiny settings, no timings
asserted: speed targets are read from the scripts' own output, see docs/guide/performance.md)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cnnzoo import TrainConfig, create_model
from cnnzoo.data import load_dataset
from cnnzoo.errors import DataError

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def run_script(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / name), *args], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done


@pytest.fixture(scope="module")
def fashion_dir() -> Path:
    """Where the Fashion-MNIST files are; CI has the Debian package, so never skip there."""
    try:
        return Path(load_dataset("fashion_mnist", val_split=0).source)
    except DataError:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")


def test_infer_benchmark_compares_the_variants_with_checked_outputs(tmp_path) -> None:
    out = tmp_path / "infer.json"
    done = run_script(
        "infer.py", "--models", "mobilenet_v2", "--batches", "1", "--size", "64",
        "--repeats", "1", "--warmup", "1", "--no-compile", "--calibration", "32",
        "--out", str(out),
    )  # fmt: skip
    assert "machine:" in done.stdout and "matmul" in done.stdout
    (row,) = json.loads(out.read_text())["rows"]
    speeds = row["images_per_s"]
    # OpenVINO's columns need openvino and nncf in the benchmark's own environment.
    openvino = {"openvino_fp32", "openvino_int8"}
    assert set(speeds) - openvino == {"torchvision", "cnnzoo", "optimized", "int8"}
    assert min(speeds.values()) > 0
    assert len(row["load_average"]) == 3 and "load average" in done.stdout
    assert row["int8_over_optimized"] == pytest.approx(speeds["int8"] / speeds["optimized"])
    assert row["int8"]["quantized_nodes"] > 50 and row["int8"]["backend"]
    if openvino <= set(speeds):
        fastest = max(speeds["optimized"], speeds["int8"])
        assert row["cnnzoo_fastest_over_openvino_fastest"] == pytest.approx(
            fastest / max(speeds["openvino_fp32"], speeds["openvino_int8"])
        )
    else:
        assert "OpenVINO columns skipped" in done.stdout
    assert row["ratio_to_torchvision"]["cnnzoo"] == pytest.approx(
        speeds["cnnzoo"] / speeds["torchvision"]
    )
    assert row["gflops"]["cnnzoo"] == pytest.approx(2 * row["gmacs_per_image"] * speeds["cnnzoo"])
    assert row["cnnzoo_vs_torchvision_max_abs_diff"] == 0.0  # same weights, same math
    assert row["optimized"]["max_abs_diff"] < 1e-3


def test_train_benchmark_steady_state_and_end_to_end(tmp_path, fashion_dir: Path) -> None:
    out = tmp_path / "train.json"
    run_script(
        "train.py", "--models", "lenet5", "--steps", "3", "--turns", "2", "--nchw",
        "--data-dir", str(fashion_dir), "--out", str(out),
    )  # fmt: skip
    (row,) = json.loads(out.read_text())["results"]
    assert len(row["cnnzoo_all"]) == len(row["tutorial_all"]) == len(row["cnnzoo_nchw_all"]) == 2
    assert row["ratio"] == pytest.approx(row["cnnzoo_img_s"] / row["tutorial_img_s"])
    assert min(row["cnnzoo_all"] + row["tutorial_all"] + row["cnnzoo_nchw_all"]) > 0


def test_train_benchmark_rejects_nonsense_counts() -> None:
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "train.py"), "--steps", "0"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and "--steps must be >= 1" in done.stderr


def test_time_to_accuracy_stops_at_the_target(tmp_path, fashion_dir: Path) -> None:
    out = tmp_path / "tta.json"
    # One epoch of LeNet-5 is far above 50 %: the run must stop after the first epoch.
    done = run_script("time_to_accuracy.py", "--epochs", "3", "--target", "0.5", "--out", str(out))
    result = json.loads(out.read_text())
    assert len(result["epochs"]) == 1 and result["epochs"][0]["test_top1"] >= 0.5
    assert math.isclose(result["reached_seconds"], result["epochs"][0]["train_seconds_total"])
    assert "50.0 % reached after 1 epochs" in done.stdout


def test_every_time_to_accuracy_recipe_is_a_valid_run() -> None:
    """The recipes not run in CI (ResNet-18 takes hours on a CPU) still build and validate."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from time_to_accuracy import RECIPES, recipe_fields
    finally:
        sys.path.remove(str(BENCHMARKS))
    for name, entry in RECIPES.items():
        fields = recipe_fields(name, "cpu")
        for variant in (fields, {**fields, **entry.get("cuda", {})}):
            TrainConfig(**variant).resolved().validate()
        config = TrainConfig(**fields).resolved()
        assert config.dataset == "fashion_mnist"
        with torch.device("meta"):
            model = create_model(config.model, num_classes=10, in_chans=1, **config.model_kwargs)
            assert model(torch.empty(2, 1, 28, 28)).shape == (2, 10), name
        assert 0.9 <= entry["target"] < 1


def test_families_benchmark_trains_each_model_with_its_defaults(tmp_path) -> None:
    out = tmp_path / "families.json"
    done = run_script("families.py", "--models", "lenet5,resnet20", "--epochs", "1",
                      "--out", str(out))  # fmt: skip
    rows = json.loads(out.read_text())["rows"]
    assert [row["model"] for row in rows] == ["lenet5", "resnet20"]
    assert rows[1]["recipe"]["optimizer"] == "sgd"  # the CIFAR ResNets' row of the table
    assert all(row["val_acc"] > 0.3 for row in rows) and "every family learns" in done.stdout


def test_defaults_benchmark_times_a_cli_run(tmp_path) -> None:
    out = tmp_path / "defaults.json"
    done = run_script("defaults.py", "--only", "lenet5 digits 5 epochs", "--out", str(out))
    (row,) = json.loads(out.read_text())["rows"]
    assert row["epochs"] == 5 and row["test_top1"] >= 0.95 and row["wall_seconds"] > 0
    assert "cnnzoo train --model lenet5 --dataset digits --epochs 5" in done.stdout
    assert "met" in done.stdout


def test_threads_benchmark_measures_each_variant_under_load(tmp_path) -> None:
    out = tmp_path / "threads.json"
    run_script("threads.py", "--steps", "3", "--turns", "1", "--spinners", "1", "--settle", "0",
               "--dataset", "digits", "--out", str(out))  # fmt: skip
    results = json.loads(out.read_text())["results"]
    assert set(results) == {"as is", "loaded"}
    for variants in results.values():
        assert set(variants) == {"1 thread", f"{os.cpu_count()} threads", "default"}
        assert all(v["images_per_s"] > 0 for v in variants.values())
    assert results["loaded"]["1 thread"]["threads_chosen"] == [1]


@pytest.mark.slow
def test_serve_benchmark_compares_servers_and_prints_ratios(tmp_path) -> None:
    out = tmp_path / "serve.json"
    done = run_script(
        "serve.py", "--models", "lenet5", "--concurrency", "2", "--seconds", "0.5",
        "--warmup", "0.2", "--rounds", "1", "--threads", "1", "--no-litserve", "--out", str(out),
    )  # fmt: skip
    assert "machine:" in done.stdout and "load average" in done.stdout
    assert "cnnzoo / handwritten" in done.stdout and "offline ceiling" in done.stdout
    (model,) = json.loads(out.read_text())["models"]
    (row,) = model["rows"]
    assert row["concurrency"] == 2 and row["offline_images_per_s"] > 0
    for server in ("cnnzoo", "cnnzoo-nobatch", "handwritten"):
        assert row[server]["requests"] > 0 and row[server]["errors"] == 0
        assert 0 < row[server]["p50_ms"] <= row[server]["p99_ms"]


@pytest.mark.slow
def test_explorer_benchmark_times_each_request(tmp_path) -> None:
    out = tmp_path / "explorer.json"
    done = run_script("explorer.py", "--models", "resnet18", "--images", "1", "--out", str(out))
    assert "machine:" in done.stdout and "load average" in done.stdout
    assert "loaded resnet18" in done.stdout
    times = json.loads(out.read_text())["models"]["resnet18"]
    for request in ("layer graph, first request", "top-5 (the API's predict)",
                    "Grad-CAM (deepest stage)", "maps conv1 (shallow), first page",
                    "unit arithmetic layer3.0.conv2"):  # fmt: skip
        assert times[request] > 0, request
