"""int8 (issue 18): cnnzoo.quantize, optimize(precision="int8"), `cnnzoo quantize`,
`evaluate --int8`, .onnx files as a source, and the bad input of each, on the real test sets."""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

import cnnzoo
from cnnzoo.calibration import calibration_data
from cnnzoo.cli.main import main
from cnnzoo.data import load_dataset
from cnnzoo.errors import UsageError
from cnnzoo.inference import load_model, onnx_metadata
from cnnzoo.pretrained import get_weight_spec, read_manifest
from cnnzoo.quantize import (
    MIN_SAMPLES,
    QuantizationError,
    QuantizedModel,
    int8_scheme,
    quantize,
)
from cnnzoo.runtime import METADATA_KEY, installed_runtimes, read_metadata

MANIFEST = read_manifest()
SLOW = {"resnet20.fashion_mnist", "plain20.fashion_mnist"}  # ~10 s each on one core


pytestmark = pytest.mark.usefixtures("one_thread")


def _cli(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    os.environ["COLUMNS"] = "250"
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse's own errors
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def _predicted(table: str) -> list[str]:
    """The class of each row of predict's table (the cell reads "CLASS PROBABILITY")."""
    rows = [[cell.strip() for cell in line.split("│")] for line in table.splitlines()]
    return [row[2].rsplit(" ", 1)[0] for row in rows if len(row) > 2 and ".png" in row[1]]


def _needs(runtime: str) -> None:
    """OpenVINO is an optional extra: CI installs it, so there it must be present."""
    if importlib.util.find_spec(runtime) is None:  # installed, whatever CNNZOO_RUNTIMES says
        if os.environ.get("CI") == "true":
            pytest.fail(f"{runtime} is not installed (make test installs cnnzoo[openvino])")
        pytest.skip(f"{runtime} is not installed")


def _test_accuracy(model: torch.nn.Module, model_name: str, weights: str) -> float:
    """Top-1 (%) on the weights' official test split, images prepared by spec.transforms()."""
    spec = get_weight_spec(model_name, weights)
    test = load_dataset(spec.name, val_split=0.0).get_split("test")
    transform = spec.transforms()
    correct = 0
    with torch.inference_mode():
        for start in range(0, len(test), 1000):
            images = transform(test.images[start : start + 1000])  # type: ignore[union-attr]
            labels = test.labels[start : start + 1000]  # type: ignore[union-attr]
            correct += int((model(images).argmax(1) == labels).sum())
    return 100 * correct / len(test)


# --- accuracy on the real test sets ------------------------------------------------------------


@pytest.mark.parametrize(
    "key", [pytest.param(k, marks=pytest.mark.slow) if k in SLOW else k for k in sorted(MANIFEST)]
)
def test_every_shipped_weight_keeps_its_test_accuracy_in_int8(key: str) -> None:
    entry = MANIFEST[key]
    loaded = load_model(entry["model"], entry["name"])
    calibration = calibration_data(loaded, validation_samples=0)
    assert len(calibration.images) == 512 and calibration.spec == entry["dataset"].lower().replace(
        "-", "_"
    )
    int8 = quantize(loaded.model, calibration.images)
    assert isinstance(int8, QuantizedModel) and int8.report.quantized_nodes >= 4
    measured = _test_accuracy(int8, entry["model"], entry["name"])
    # The float32 figure is the manifest's, which test_shipped_weights re-measures (to 0.1).
    fp32 = entry["metrics"]["test_acc"]
    assert measured >= fp32 - 0.5, (key, measured, fp32, str(int8.report))


def test_quantize_command_writes_a_file_that_predict_and_evaluate_take(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "lenet5.int8.onnx"
    code, stdout, err = _cli(capsys, "quantize", "lenet5", "--weights", "fashion_mnist", "-o", out)
    assert code == 0, err
    assert "512 class-balanced images of fashion_mnist's training split" in err
    assert f"wrote {out}" in stdout and "top-1 agreement with float32" in stdout
    meta = read_metadata(out)
    assert meta is not None and meta["precision"] == "int8" and meta["model"] == "lenet5"
    assert meta["class_names"][6] == "Shirt" and meta["input_size"] == [1, 28, 28]
    assert meta["data"] == {"dataset": "fashion_mnist"}
    assert meta["calibration"] == {"data": "fashion_mnist", "samples": 512, "method": "minmax"}
    quant = meta["quantization"]
    assert quant["weight_type"] == "int8" and quant["per_channel"] is True
    assert quant["reduce_range"] == int8_scheme().reduce_range and quant["cpu"]
    accuracy = meta["accuracy"]
    assert accuracy["split"] == "test" and accuracy["n"] == 10000
    assert abs(accuracy["fp32_top1"] - 91.64) <= 0.1  # the shipped weights' recorded accuracy
    assert accuracy["int8_top1"] >= accuracy["fp32_top1"] - 0.5
    assert accuracy["agreement"] >= 95

    # evaluate on the file: float32 (its recorded source) and int8 side by side.
    code, stdout, err = _cli(capsys, "evaluate", out, "--output", tmp_path / "eval")
    assert code == 0, err
    record = json.loads((tmp_path / "eval" / "eval_test_int8.json").read_text())
    assert record["fp32_top1"] == accuracy["fp32_top1"]
    assert record["int8_top1"] == accuracy["int8_top1"]
    assert record["fp32_images_per_s"] > 0 and record["int8_images_per_s"] > 0
    assert "top-1 agreement with float32" in stdout

    # predict on the file: the same classes as the float32 model for real test images.
    test = load_dataset("fashion_mnist", val_split=0.0).get_split("test")
    paths = []
    for i in range(24):
        path = tmp_path / "images" / f"{i}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(test.images[i, 0].numpy()).save(path)  # type: ignore[union-attr]
        paths.append(path)
    code, int8_out, err = _cli(capsys, "predict", out, *paths, "--topk", "1")
    assert code == 0, err
    code, fp32_out, err = _cli(
        capsys, "predict", "lenet5", "--weights", "fashion_mnist", *paths, "--topk", "1"
    )
    assert code == 0, err
    int8_top1, fp32_top1 = _predicted(int8_out), _predicted(fp32_out)
    assert len(int8_top1) == 24 and set(fp32_top1) <= set(
        MANIFEST["lenet5.fashion_mnist"]["categories"]
    )
    assert sum(a == b for a, b in zip(int8_top1, fp32_top1, strict=True)) >= 22


def test_evaluate_int8_scores_float32_and_int8_on_the_same_images(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = ("lenet5", "--weights", "digits")
    code, _, err = _cli(capsys, "evaluate", *source, "--output", tmp_path)
    assert code == 0, err
    plain = json.loads((tmp_path / "eval_test.json").read_text())
    code, stdout, err = _cli(capsys, "evaluate", *source, "--int8", "--output", tmp_path)
    assert code == 0, err
    assert "--int8: int8 (" in err  # the quantization report, on stderr
    record = json.loads((tmp_path / "eval_test_int8.json").read_text())
    assert record["n"] == plain["n"] == 359  # scikit-learn digits: the test split
    assert record["fp32_top1"] == round(100 * plain["top1"], 2)
    assert record["int8_top1"] >= record["fp32_top1"] - 1.0  # 360 images: one is 0.28 points
    assert 0 < record["max_logit_diff"] < 2 and record["agreement"] >= 95


# --- the Python API ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lenet() -> tuple[torch.nn.Module, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """LeNet-5 with its shipped Fashion-MNIST weights, 256 calibration and 1,000 labelled
    validation images (held-out training images), all as the model takes them."""
    loaded = load_model("lenet5", "fashion_mnist")
    data = calibration_data(loaded, samples=256, validation_samples=1000)
    assert data.validation is not None
    return loaded.model, data.images, data.validation


def test_quantize_returns_a_checked_int8_module_and_leaves_the_model_alone(lenet) -> None:
    model, images, (val_x, val_y) = lenet
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    int8 = quantize(model, images, validation=(val_x, val_y))
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    model.eval()
    report = int8.report
    assert report.samples == 256 and report.check_samples == 1000 and report.method == "minmax"
    assert report.agreement >= 0.95 and 0 < report.max_abs_diff < report.output_scale
    assert abs(report.int8_top1 - report.fp32_top1) <= 1.0
    assert report.timings_ms["fp32 onnxruntime"] > 0 and report.speedup is not None
    assert report.backend in installed_runtimes() and f"int8 ({report.backend})" in str(report)
    # The graph is int8: quantize/dequantize pairs around per-channel int8 conv weights.
    graph = onnx.load_model_from_string(int8.onnx).graph
    ops = [node.op_type for node in graph.node]
    assert ops.count("QuantizeLinear") >= 4 and ops.count("DequantizeLinear") >= 8
    # Any batch size; its answers are the float32 model's for nearly every image.
    for batch in (1, 3, 17):
        assert int8(val_x[:batch]).shape == (batch, 10)
    with torch.no_grad():
        agree = (int8(val_x).argmax(1) == model(val_x).argmax(1)).float().mean()
    assert agree >= 0.95
    with pytest.raises(UsageError, match="takes inputs of shape Nx1x28x28, got 2x1x32x32"):
        int8(torch.zeros(2, 1, 32, 32))
    with pytest.raises(RuntimeError, match="inference only"):
        int8.train()
    assert int8.num_classes == 10  # the float32 model's attributes read through


def test_calibration_batches_samples_and_bad_arguments(lenet) -> None:
    model, images, (val_x, val_y) = lenet
    loader = [(images[i : i + 50], torch.zeros(50, dtype=torch.long)) for i in range(0, 200, 50)]
    assert quantize(model, loader, samples=64).report.samples == 64
    with pytest.raises(UsageError, match=f"at least {MIN_SAMPLES}"):
        quantize(model, images[:10])
    with pytest.raises(UsageError, match="at least 32 samples"):
        quantize(model, images, samples=8)
    with pytest.raises(UsageError, match="unknown calibration method"):
        quantize(model, images, method="kl")
    with pytest.raises(UsageError, match="validation data needs labels"):
        quantize(model, images, validation=val_x)
    with pytest.raises(UsageError, match="sensitivity analysis measures accuracy"):
        quantize(model, images, sensitivity=True)
    with pytest.raises(UsageError, match="no layer named 'conv9'"):
        quantize(model, images, exclude=["conv9"])
    with pytest.raises(UsageError, match="unknown quantizer 'ort'"):
        quantize(model, images, quantizer="ort")
    with pytest.raises(UsageError, match="NNCF's int8 graph is made for OpenVINO"):
        quantize(model, images, quantizer="nncf", backend="onnxruntime")
    if "openvino" not in installed_runtimes():  # this process keeps OpenVINO out (conftest.py)
        with pytest.raises(cnnzoo.errors.CnnzooError, match="needs OpenVINO and NNCF"):
            quantize(model, images, quantizer="nncf")


def test_calibration_unlike_the_inputs_fails_the_agreement_check(lenet) -> None:
    model, images, validation = lenet
    # Ranges measured on images 100 times too faint clip real images: answers collapse.
    with pytest.raises(QuantizationError, match="top-1 answer for only"):
        quantize(model, images * 0.01, validation=validation)


def test_sensitivity_costs_every_layer_and_keeps_the_costliest_in_float32(lenet) -> None:
    model, images, validation = lenet
    int8 = quantize(model, images, validation=validation, sensitivity=True, max_drop=0.0)
    report = int8.report
    layers = [cost.layer for cost in report.sensitivity]
    assert {"conv1", "conv2", "fc1", "fc"} <= set(layers) and len(layers) == len(set(layers))
    costs = [cost.cost for cost in report.sensitivity]
    assert costs == sorted(costs, reverse=True)
    for cost in report.sensitivity:  # each layer alone, against float32 on the same images
        assert cost.cost == pytest.approx(report.fp32_top1 - cost.top1)
    # The costliest layers, in order, until int8 is within max_drop of float32.
    assert report.fp32_layers == layers[: len(report.fp32_layers)]
    within = report.fp32_top1 - report.int8_top1 <= 0.0
    assert within or len(report.fp32_layers) == len(layers)
    if report.fp32_top1 - report.int8_top1_all > 0.0:
        assert report.fp32_layers  # it lost accuracy with every layer int8: some were kept
    # A generous max_drop keeps every layer in int8.
    few = (validation[0][:300], validation[1][:300])
    relaxed = quantize(model, images, validation=few, sensitivity=True, max_drop=50.0)
    assert relaxed.report.fp32_layers == [] and relaxed.report.quantized_nodes > 0


def test_layers_named_in_exclude_stay_float32(lenet) -> None:
    model, images, _ = lenet
    full = quantize(model, images)
    kept = quantize(model, images, exclude=["conv1", "fc"])
    assert kept.report.fp32_layers == ["conv1", "fc"]
    assert kept.report.quantized_nodes < full.report.quantized_nodes
    graph = onnx.load_model_from_string(kept.onnx).graph
    weights_dequantized = {
        node.output[0] for node in graph.node if node.op_type == "DequantizeLinear"
    }
    convs = [n for n in graph.node if n.op_type == "Conv"]
    # The first conv reads its float weight; the second a dequantized int8 one.
    assert convs[0].input[1] not in weights_dequantized
    assert convs[1].input[1] in weights_dequantized


def test_optimize_picks_int8_only_when_asked(lenet) -> None:
    model, images, validation = lenet
    example = images[:8]
    int8 = cnnzoo.optimize(model, example, precision="int8", calibration=images)
    assert isinstance(int8, QuantizedModel) and int8.report.timing_shape == (8, 1, 28, 28)
    fp32 = cnnzoo.optimize(model, example, compile=False)
    assert not isinstance(fp32, QuantizedModel) and fp32.report.max_abs_diff < 1e-4
    with pytest.raises(UsageError, match="precision='int8' needs calibration data"):
        cnnzoo.optimize(model, example, precision="int8")
    with pytest.raises(UsageError, match="calibration: only for precision='int8'"):
        cnnzoo.optimize(model, example, calibration=images)
    with pytest.raises(UsageError, match="unknown precision 'int4'"):
        cnnzoo.optimize(model, example, precision="int4")
    with pytest.raises(UsageError, match="int8 runs on onnxruntime or openvino"):
        cnnzoo.optimize(model, example, precision="int8", calibration=images, backend="inductor")


def test_the_int8_types_follow_the_cpu() -> None:
    with_vnni = int8_scheme({"avx2", "avx512_vnni"})
    assert not with_vnni.reduce_range and "avx512_vnni" in with_vnni.cpu
    avx2 = int8_scheme({"avx2", "fma"})
    assert avx2.reduce_range and avx2.cpu == "AVX2 without VNNI"
    assert (avx2.activation_type, avx2.weight_type) == ("uint8", "int8")


def _run_with_openvino(body: str) -> None:
    """``body`` in a Python process of its own that may use OpenVINO (this one may not: see
    conftest.py), with ``model``, ``images``, ``val_x`` as the ``lenet`` fixture makes them."""
    import subprocess
    import sys
    import textwrap

    _needs("openvino")
    setup = """
        import torch
        import cnnzoo
        from cnnzoo.calibration import calibration_data
        from cnnzoo.inference import load_model
        from cnnzoo.quantize import quantize
        loaded = load_model("lenet5", "fashion_mnist")
        data = calibration_data(loaded, samples=256, validation_samples=1000)
        model, images, (val_x, _) = loaded.model, data.images, data.validation
    """
    env = {k: v for k, v in os.environ.items() if k != "CNNZOO_RUNTIMES"}
    code = textwrap.dedent(setup) + textwrap.dedent(body) + "\nprint('checked')\n"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert done.returncode == 0 and done.stdout.strip().endswith("checked"), done.stderr[-3000:]


def test_openvino_runs_the_same_int8_graph() -> None:
    _run_with_openvino("""
        on_ort = quantize(model, images, backend="onnxruntime")
        on_openvino = quantize(model, images, backend="openvino", quantizer="onnxruntime")
        assert on_ort.report.backend == "onnxruntime" and on_openvino.report.backend == "openvino"
        assert set(on_openvino.report.timings_ms) == {"fp32 onnxruntime", "int8 openvino"}
        a, b = on_ort(val_x), on_openvino(val_x)
        assert (a.argmax(1) == b.argmax(1)).float().mean() >= 0.98
        assert on_openvino(val_x[:5]).shape == (5, 10)  # another batch size: compiled again
    """)


def test_nncf_quantizes_for_openvino_and_its_file_runs_there(tmp_path: Path) -> None:
    _run_with_openvino(f"""
        import os
        import sys
        from cnnzoo.runtime import read_metadata
        assert "nncf" not in sys.modules
        int8 = quantize(model, images, validation=data.validation, quantizer="nncf")
        report = int8.report
        assert (report.quantizer, report.backend) == ("nncf", "openvino")
        assert set(report.timings_ms) == {{"fp32 onnxruntime", "int8 openvino (nncf)"}}
        assert report.agreement >= 0.95 and abs(report.int8_top1 - report.fp32_top1) <= 1.5
        assert str(report).startswith("int8 (openvino (nncf)): NNCF's post-training")
        # NNCF's own graph: QDQ pairs, but not ONNX Runtime's placement (it quantizes fewer ops).
        ops = [n.op_type for n in __import__("onnx").load_model_from_string(int8.onnx).graph.node]
        assert ops.count("QuantizeLinear") >= 4
        # Its usage telemetry stays off, and the environment as it was.
        import nncf.telemetry.wrapper
        assert type(nncf.telemetry.wrapper.telemetry).__name__ != "NNCFTelemetry"
        assert "NNCF_CI" not in os.environ
        # The file records what made it and where it ran, and runs there again: same answers.
        meta = cnnzoo.inference.onnx_metadata(loaded, precision="int8")
        path = int8.save({str(tmp_path / "lenet5.int8.onnx")!r}, meta)
        meta = read_metadata(path)["quantization"]
        assert (meta["quantizer"], meta["backend"]) == ("nncf", "openvino")
        runner = load_model(path).model
        assert (runner.runtime, runner.exact_float) == ("openvino", False)
        assert torch.equal(runner(val_x[:64]), int8(val_x[:64]))
    """)


def test_auto_keeps_the_fastest_graph_within_max_drop() -> None:
    # On these weights NNCF's graph loses 0.7 points of top-1 on the 1,000 validation images and
    # ONNX Runtime's none (measured): with max_drop 0 the graphs that lose are passed over.
    _run_with_openvino("""
        fastest = quantize(model, images, validation=data.validation, max_drop=99.0)
        timed = {k.removeprefix("int8 ") for k in fastest.report.timings_ms}
        assert timed == {"fp32 onnxruntime", "onnxruntime", "openvino", "openvino (nncf)"}
        careful = quantize(model, images, validation=data.validation, max_drop=0.0)
        report = careful.report
        losing = [n for n in report.notes if "top-1 points on 1000 images (max_drop 0)" in n]
        assert losing and report.int8_top1 >= report.fp32_top1
        assert all(note.split(" not used")[0] != report.label for note in losing)
    """)


def test_optimize_can_run_float32_on_openvino_within_the_tolerance() -> None:
    _run_with_openvino("""
        fast = cnnzoo.optimize(model, images[:8], backend="openvino")
        assert fast.report.backend == "openvino" and fast.report.max_abs_diff <= 1e-4 * 10
        with torch.no_grad():
            assert torch.allclose(fast(images[:8]), model(images[:8]), atol=1e-3)
            assert fast(images[:3]).shape == (3, 10)  # another shape: the folded eager model
    """)


def test_an_int8_file_runs_where_it_was_measured_fastest_when_that_runtime_is_here(
    lenet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, images, _ = lenet
    int8 = quantize(model, images, backend="onnxruntime")
    int8.report.backend = "openvino"  # as if measured fastest on OpenVINO elsewhere
    meta = onnx_metadata(load_model("lenet5", "fashion_mnist"), precision="int8")
    path = int8.save(tmp_path / "lenet5.int8.onnx", meta)
    monkeypatch.setenv("CNNZOO_RUNTIMES", "onnxruntime")  # OpenVINO not allowed here: ORT
    runner = load_model(path).model
    assert (runner.runtime, runner.exact_float) == ("onnxruntime", False)
    assert torch.equal(runner(images[:8]), int8(images[:8]))


def test_runtimes_can_be_restricted(monkeypatch) -> None:
    monkeypatch.setenv("CNNZOO_RUNTIMES", "onnxruntime")
    assert installed_runtimes() == ["onnxruntime"]
    monkeypatch.setenv("CNNZOO_RUNTIMES", "openvino, onnxruntime")
    assert installed_runtimes() == [n for n in ("onnxruntime", "openvino")
                                    if importlib.util.find_spec(n)]  # fmt: skip


# --- .onnx files as a source -------------------------------------------------------------------


def _strip_metadata(path: Path, out: Path, *, open_sizes: bool = False) -> Path:
    model = onnx.load(str(path))
    kept = [p for p in model.metadata_props if p.key != METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    if open_sizes:
        for dim in model.graph.input[0].type.tensor_type.shape.dim[1:]:
            dim.dim_param = "side"
    onnx.save(model, str(out))
    return out


def test_an_exported_onnx_file_is_a_source_and_a_foreign_one_says_what_it_needs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    exported = tmp_path / "lenet5.onnx"
    code, _, err = _cli(
        capsys, "export", "lenet5", exported, "--weights", "fashion_mnist", "--format", "onnx"
    )
    assert code == 0, err
    loaded = load_model(exported)
    source = load_model("lenet5", "fashion_mnist")
    assert loaded.class_names == source.class_names and loaded.input_size == (28, 28)
    assert loaded.config["precision"] == "fp32" and loaded.dataset == "fashion_mnist"
    test = load_dataset("fashion_mnist", val_split=0.0).get_split("test")
    images = [test.images[i] for i in range(16)]  # type: ignore[union-attr]
    with torch.no_grad():
        expected = source.model(source.prepare(images))
    assert torch.allclose(loaded.model(loaded.prepare(images)), expected, atol=1e-4)

    foreign = _strip_metadata(exported, tmp_path / "foreign.onnx")
    code, _, err = _cli(capsys, "predict", foreign, tmp_path)
    assert code == 2 and err.count("\n") == 1
    assert "no cnnzoo metadata" in err and "--classes FILE" in err
    assert "--input-size" not in err  # its graph fixes the input size: nothing to guess
    open_sizes = _strip_metadata(exported, tmp_path / "open.onnx", open_sizes=True)
    code, _, err = _cli(capsys, "evaluate", open_sizes, "--dataset", "fashion_mnist")
    assert code == 2 and "--classes FILE" in err and "--input-size CxHxW" in err
    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(source.class_names) + "\n")
    described = load_model(
        open_sizes,
        classes=classes,
        input_size=(1, 28, 28),
        mean=tuple(source.mean),
        std=tuple(source.std),
    )
    assert described.class_names[6] == "Shirt"
    assert torch.allclose(described.model(described.prepare(images)), expected, atol=1e-4)
    code, _, err = _cli(
        capsys, "predict", "lenet5", "--weights", "fashion_mnist", tmp_path, "--classes", classes
    )
    assert code == 2 and "--classes is for an ONNX file cnnzoo did not write" in err


def test_commands_that_need_the_pytorch_model_refuse_an_onnx_source(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    exported = tmp_path / "lenet5.onnx"
    argv = ("export", "lenet5", exported, "--weights", "fashion_mnist", "--format", "onnx")
    assert _cli(capsys, *argv)[0] == 0
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((28, 28), dtype=np.uint8)).save(image)
    cases = [
        ("export", exported, tmp_path / "again.onnx", "--format", "onnx"),
        ("explain", exported, image, "--out", tmp_path / "maps"),
        ("summary", exported),
        ("evaluate", exported, "--fast"),
        ("predict", exported, image, "--plot", tmp_path / "plots", "--cam"),
    ]
    for argv in cases:
        code, _, err = _cli(capsys, *argv)
        assert code == 2 and err.count("\n") == 1, (argv, err)
        assert "ONNX graph" in err, err
    assert not (tmp_path / "again.onnx").exists()


# --- bad input ---------------------------------------------------------------------------------


def _fake_cifar(root: Path) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = [i % 10 for i in range(20)]
        batch = {"data": rng.integers(0, 256, (20, 3072), dtype=np.uint8), "labels": labels}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    names = [f"c{i}" for i in range(10)]
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": names}))
    return root


def test_bad_quantize_input_is_one_line_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = ("lenet5", "--weights", "fashion_mnist")
    out = tmp_path / "out.onnx"
    untrained = tmp_path / "untrained.onnx"
    assert _cli(capsys, "export", "lenet5", untrained, "--format", "onnx")[0] == 0
    few = tmp_path / "few"
    few.mkdir()
    for i in range(5):
        Image.fromarray(np.full((28, 28), i * 40, dtype=np.uint8)).save(few / f"{i}.png")
    afile = tmp_path / "afile.txt"
    afile.write_text("x")
    existing = tmp_path / "existing.onnx"
    existing.write_bytes(b"keep me")
    cifar = _fake_cifar(tmp_path / "data")
    cases = [
        (("quantize", untrained, "-o", out), 2, "no training data is known to calibrate on"),
        ((*source, "-o", out, "--samples", "8"), 2, "at least 32"),
        ((*source, "-o", out, "--calibration", few), 2, "has 5 images"),
        ((*source, "-o", out, "--calibration", "digits"), 2, "images are 8x8"),
        (
            (*source, "-o", out, "--calibration", "cifar10", "--data-dir", cifar),
            2,
            "3 channel(s)",
        ),
        ((*source, "-o", afile / "out.onnx"), 2, "is a file, not a folder"),
        ((*source, "-o", existing), 2, "exists; pass --force"),
        ((*source, "-o", tmp_path / "out.int8"), 2, "must end in .onnx"),
        (("quantize", untrained, "-o", untrained, "--force"), 2, "files the model comes from"),
        ((*source, "-o", out, "--calibration", few, "--sensitivity"), 2, "has 5 images"),
        ((*source, "-o", out, "--max-drop", "-1"), 2, "points in [0, 100)"),
    ]
    for argv, status, text in cases:
        argv = argv if argv[0] == "quantize" else ("quantize", *argv)
        code, _, err = _cli(capsys, *argv)
        assert code == status and err.count("\n") == 1, (argv, err)
        assert text in err, (argv, err)
        assert not out.exists() and existing.read_bytes() == b"keep me"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_an_int8_file_is_not_quantized_again_and_a_folder_is_no_sensitivity_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = tmp_path / "photos"
    images.mkdir()
    test = load_dataset("fashion_mnist", val_split=0.0).get_split("test")
    for i in range(40):
        Image.fromarray(test.images[i, 0].numpy()).save(images / f"{i}.png")  # type: ignore
    int8 = tmp_path / "l.int8.onnx"
    argv = ("quantize", "lenet5", "--weights", "fashion_mnist", "-o", int8)
    code, stdout, err = _cli(capsys, *argv, "--calibration", images, "--no-test")
    assert code == 0, err
    assert "40 images from" in err and "fashion_mnist test split" not in stdout
    assert read_metadata(int8)["calibration"]["samples"] == 40  # type: ignore[index]
    code, _, err = _cli(capsys, "quantize", int8, "-o", tmp_path / "again.onnx")
    assert code == 2 and "int8 already" in err
    code, _, err = _cli(capsys, *argv, "--force", "--calibration", images, "--sensitivity")
    assert code == 2 and "--sensitivity measures accuracy on labelled images" in err
