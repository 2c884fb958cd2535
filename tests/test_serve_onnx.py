"""`cnnzoo serve` with ONNX graphs (issue 18): an `.onnx` file cnnzoo wrote (int8 or float32) is
a source beside PyTorch ones, answering predict and v2 infer as `cnnzoo predict FILE.onnx` does
and refusing explain and the explorer's layers in one line; `--int8` quantizes PyTorch sources at
start-up (checked against float32) while explain keeps the float32 model. Shipped LeNet-5
Fashion-MNIST weights, real test images, small calibrations (32 images) to stay quick."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from serve_helpers import (
    Server,
    fashion_pngs,
    metric,
    read_until,
    without_cnnzoo_metadata,
)

import cnnzoo.cli.main as cli_main
from cnnzoo.analysis.predict import predict_images
from cnnzoo.data import read_image
from cnnzoo.errors import UsageError
from cnnzoo.inference import InferenceModel, load_model
from cnnzoo.serve import ModelSource, create_app

IMAGES = 16
CALIBRATION = ("--samples", "32", "--val-samples", "64")
LENET_PARAMETERS = 61706  # LeNet-5 for 1x28x28 and 10 classes: no BatchNorm to fold away


def client_for(app) -> httpx.AsyncClient:  # noqa: ANN001
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://serve")


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return fashion_pngs(tmp_path_factory.mktemp("fashion"), IMAGES)


@pytest.fixture(scope="module")
def onnx_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """lenet5:fashion_mnist as `cnnzoo quantize` (int8) and `cnnzoo export` (float32) write it."""
    folder = tmp_path_factory.mktemp("onnx")
    int8, fp32 = folder / "l5.int8.onnx", folder / "l5.onnx"
    source = ["lenet5", "--weights", "fashion_mnist"]
    assert cli_main.main(["quantize", *source, "-o", str(int8), *CALIBRATION, "--no-test"]) == 0
    assert cli_main.main(["export", "lenet5", str(fp32), "--weights", "fashion_mnist",
                          "--format", "onnx"]) == 0  # fmt: skip
    return {"int8": int8, "fp32": fp32}


def top5(answer: dict) -> tuple[list[int], list[float]]:
    return [e["index"] for e in answer["topk"]], [e["probability"] for e in answer["topk"]]


def assert_same_as_predict(predictions: list[dict], source: Path, paths: list[Path]) -> None:
    """Served top-5 = `cnnzoo predict SOURCE IMAGE...`'s, probability for probability."""
    expected = predict_images(load_model(source), paths, topk=5)  # no device: a graph runs on CPU
    for served, want in zip(predictions, expected, strict=True):
        indices, probs = top5(served)
        assert indices == want.indices
        assert np.allclose(probs, want.probs, atol=1e-5, rtol=0)


def multipart(paths: list[Path]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("file", (path.name, path.read_bytes(), "image/png")) for path in paths]


def assert_one_line_error(response: httpx.Response, status: int, *words: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "status"} and body["status"] == status
    assert "\n" not in body["error"] and "Traceback" not in body["error"]
    for word in words:
        assert word in body["error"], body["error"]


# ----------------------------------------------------------------------------- .onnx sources


@pytest.fixture(scope="module")
def mixed_app(onnx_files: dict[str, Path]):  # noqa: ANN201
    """The int8 file, the float32 file and the PyTorch model, one worker thread each."""
    app = create_app(
        [f"q={onnx_files['int8']}", onnx_files["fp32"], "lenet5:fashion_mnist"], threads=1
    )
    assert app.state.models.wait_ready(120)
    yield app
    app.state.models.stop()


def test_onnx_files_are_listed_with_precision_runtime_and_size(
    mixed_app, onnx_files: dict[str, Path]
) -> None:
    async def main() -> None:
        async with client_for(mixed_app) as client:
            listed = {m["name"]: m for m in (await client.get("/v1/models")).json()["models"]}
            v2_int8 = (await client.get("/v2/models/q")).json()
            v2_torch = (await client.get("/v2/models/lenet5")).json()
            ready = await client.get("/readyz")
        # A file's default name is its own ("l5" for l5.onnx), beside the model's name.
        assert list(listed) == ["q", "l5", "lenet5"]
        q, f, t = listed["q"], listed["l5"], listed["lenet5"]
        assert (q["precision"], q["runtime"], q["graph"], q["explain"]) == (
            "int8", "onnxruntime", True, False)  # fmt: skip
        assert (f["precision"], f["runtime"], f["graph"]) == ("fp32", "onnxruntime", True)
        assert (t["precision"], t["runtime"], t["graph"]) == ("fp32", "pytorch", False)
        for model in (q, f, t):
            assert model["input_size"] == [28, 28] and model["channels"] == 1
            assert model["classes"][6] == "Shirt" and model["num_classes"] == 10
            assert model["parameters"] == LENET_PARAMETERS and model["ready"]
        assert q["macs"] is None and t["macs"] > 0  # the flop counter sees no torch in a graph
        assert q["float32_source"] == "lenet5:fashion_mnist"
        assert q["int8"]["quantized"] == "in the file"
        assert q["int8"]["calibration"]["samples"] == 32 and q["int8"]["check_images"] == 64
        assert t["int8"] is None and f["int8"] is None
        assert v2_int8["platform"] == "onnxruntime_onnx" and v2_torch["platform"] == "pytorch"
        assert v2_int8["inputs"][0]["shape"] == [-1, 1, 28, 28]
        assert v2_int8["parameters"]["precision"] == "int8"
        assert v2_int8["parameters"]["classes"][9] == "Ankle boot"
        assert ready.status_code == 200 and ready.json()["models"] == ["q", "l5", "lenet5"]

    asyncio.run(main())
    optimized = create_app([onnx_files["int8"]], optimize=True).state.models["l5.int8"]
    assert optimized.startup_line().endswith(
        "int8 on onnxruntime (--optimize leaves a graph as it is)"
    )
    # Each graph runs on its worker's threads (1 here), not ONNX Runtime's default of all cores.
    for name in ("q", "l5"):
        runner = mixed_app.state.models[name].worker.runner
        assert runner.threads == 1
        assert runner._session.get_session_options().intra_op_num_threads == 1


def test_served_onnx_predictions_equal_predict_on_the_file(
    mixed_app, onnx_files: dict[str, Path], images: list[Path]
) -> None:
    async def main() -> dict[str, list[dict]]:
        async with client_for(mixed_app) as client:
            answers = {}
            for name in ("q", "l5", "lenet5"):
                url = f"/v1/models/{name}/predict?topk=5"
                response = await client.post(url, files=multipart(images))
                assert response.status_code == 200, response.text
                answers[name] = response.json()["predictions"]
            metrics = (await client.get("/metrics")).text
        assert metric(metrics, "cnnzoo_images_total", model="q") == IMAGES
        assert metric(metrics, "cnnzoo_batch_size_count", model="q") >= 2  # batches of <= 8
        return answers

    answers = asyncio.run(main())
    assert_same_as_predict(answers["q"], onnx_files["int8"], images)
    assert_same_as_predict(answers["l5"], onnx_files["fp32"], images)
    # The float32 graph answers as the PyTorch model; int8 does not, by a little.
    fp32 = np.array([top5(a)[1] for a in answers["l5"]])
    eager = np.array([top5(a)[1] for a in answers["lenet5"]])
    int8 = np.array([top5(a)[1] for a in answers["q"]])
    assert np.allclose(fp32, eager, atol=1e-5)
    assert np.abs(int8 - eager).max() > 1e-4
    pairs = zip(answers["q"], answers["lenet5"], strict=True)
    agree = sum(top5(a)[0][0] == top5(b)[0][0] for a, b in pairs)
    assert agree >= IMAGES - 2


def test_v2_infer_on_an_int8_file_gives_its_logits(
    mixed_app, onnx_files: dict[str, Path], images: list[Path]
) -> None:
    loaded = load_model(onnx_files["int8"])
    batch = loaded.prepare([read_image(path, 1) for path in images[:3]])
    want = loaded.model(batch).numpy()
    request = {
        "inputs": [{"name": "input", "shape": list(batch.shape), "datatype": "FP32",
                    "data": batch.flatten().tolist()}],
    }  # fmt: skip

    async def main() -> dict:
        async with client_for(mixed_app) as client:
            response = await client.post("/v2/models/q/infer", json=request)
            assert response.status_code == 200, response.text
            return response.json()

    (logits,) = asyncio.run(main())["outputs"]
    assert logits["name"] == "logits" and logits["shape"] == [3, 10]
    assert np.allclose(np.asarray(logits["data"]).reshape(3, 10), want, atol=1e-5)


def test_graphs_refuse_explain_and_the_explorers_layers_in_one_line(
    mixed_app, images: list[Path]
) -> None:
    blob = images[0].read_bytes()
    png = {"Content-Type": "image/png"}

    async def main() -> None:
        async with client_for(mixed_app) as client:
            refused = await client.post("/v1/models/q/explain", content=blob, headers=png)
            assert_one_line_error(refused, 409, "q is served from an ONNX graph", "l5.int8.onnx",
                                  "cnnzoo serve q=lenet5:fashion_mnist --int8")  # fmt: skip
            refused = await client.post("/v1/models/l5/explain", content=blob, headers=png)
            assert_one_line_error(refused, 409, "ONNX graph", "cnnzoo serve l5=lenet5:fashion")
            stored = (await client.post("/explorer/api/images", content=blob)).json()["id"]
            query = f"image={stored}&layer=conv1"
            for endpoint in ("graph", "maps", "unit", "explain"):
                refused = await client.get(f"/explorer/api/models/q/{endpoint}?{query}&channel=0")
                assert_one_line_error(refused, 409, "ONNX graph", "lenet5:fashion_mnist")
            # What needs no module still works: the image as the graph sees it.
            seen = await client.get(f"/explorer/api/models/q/seen?image={stored}")
            assert seen.status_code == 200 and seen.json()["height"] == 28
            # The server goes on: the graph predicts, the PyTorch model explains.
            answer = await client.post("/v1/models/q/predict", content=blob, headers=png)
            assert answer.status_code == 200
            explained = await client.post("/v1/models/lenet5/explain", content=blob, headers=png)
            assert explained.status_code == 200 and explained.json()["layer"]
            unknown = await client.post("/v1/models/nope/explain", content=blob, headers=png)
            assert_one_line_error(unknown, 404, "q, l5, lenet5")
            metrics = (await client.get("/metrics")).text
        explain = "/v1/models/{name}/explain"
        assert metric(metrics, "cnnzoo_requests_total", model="q", endpoint=explain,
                      code="409") == 1  # fmt: skip
        maps = "/explorer/api/models/{name}/maps"
        assert metric(metrics, "cnnzoo_requests_total", model="q", endpoint=maps, code="409") == 1

    asyncio.run(main())


# ----------------------------------------------------------------------------- --int8


def test_int8_quantizes_pytorch_sources_at_startup_and_explain_keeps_float32(
    onnx_files: dict[str, Path], images: list[Path]
) -> None:
    app = create_app(
        ["lenet5:fashion_mnist", f"f32={onnx_files['fp32']}", f"q={onnx_files['int8']}"],
        threads=1, int8=True, samples=32, val_samples=64,
    )  # fmt: skip
    models = app.state.models
    lines = [served.startup_line() for served in models]
    assert "int8 once calibrated on 32 class-balanced images of fashion_mnist's" in lines[0]
    assert lines[2].endswith("int8 on onnxruntime")  # already int8: served as it is
    try:
        assert models.wait_ready(180)
        assert [served.worker.error for served in models] == [None, None, None]
        loaded = models["lenet5"].loaded
        batch = loaded.prepare([read_image(path, 1) for path in images])

        async def main() -> tuple[dict, list[dict], dict]:
            async with client_for(app) as client:
                info = (await client.get("/v1/models/lenet5")).json()
                response = await client.post("/v1/models/lenet5/predict", files=multipart(images))
                assert response.status_code == 200, response.text
                explained = await client.post(
                    "/v1/models/lenet5/explain",
                    content=images[0].read_bytes(),
                    headers={"Content-Type": "image/png"},
                )
                assert explained.status_code == 200, explained.text
                return info, response.json()["predictions"], explained.json()

        info, predictions, explained = asyncio.run(main())
        assert (info["precision"], info["graph"], info["explain"]) == ("int8", False, True)
        assert info["runtime"] in ("onnxruntime", "openvino")
        facts = info["int8"]
        assert facts["quantized"] == "at start-up" and facts["calibration"] == "minmax on 32 images"
        assert facts["agreement"] >= 0.9 and facts["check_images"] == 64
        assert facts["int8_top1"] >= facts["fp32_top1"] - 5  # 64 images: one is 1.6 points
        note = models["lenet5"].ready_note()
        assert note.startswith(f"lenet5 int8 on {info['runtime']}: top-1 agreement with float32")
        # Predictions come from the int8 graph, through the model's own preprocessing...
        runner = models["lenet5"].worker.runner
        with torch.inference_mode():
            probs = torch.softmax(runner(batch), dim=1)
        for row, prediction in zip(probs, predictions, strict=True):
            indices, values = top5(prediction)
            assert np.allclose(values, row[indices].numpy(), atol=1e-5)
        # ...not from the float32 model, which explain uses (with its gradients).
        float32 = predict_images(load_model("lenet5", "fashion_mnist"), images, topk=5)
        served = np.array([top5(p)[1] for p in predictions])
        assert np.abs(served - np.array([p.probs for p in float32])).max() > 1e-4
        assert runner.module is not loaded.model  # quantize folds a copy
        with torch.no_grad():
            eager_top = int(loaded.model(batch[:1]).argmax())
        assert explained["explanations"][0]["target"]["index"] == eager_top
        # A float32 .onnx source is quantized too; an int8 one is served as it is.
        assert models["f32"].worker.precision == "int8" and models["f32"].graph
        assert models["f32"].info()["int8"]["quantized"] == "at start-up"
        assert models["q"].info()["int8"]["quantized"] == "in the file"
    finally:
        models.stop()


def test_int8_without_training_data_and_onnx_without_metadata_are_refused_in_one_line(
    tmp_path: Path, onnx_files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    # Weights with no record of their data: nothing to calibrate on.
    bare = tmp_path / "bare.safetensors"
    save_file(load_model("lenet5", "fashion_mnist").model.state_dict(), str(bare))
    assert cli_main.main(["serve", "lenet5", "--weights", str(bare), "--int8"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no training data is known to calibrate on" in err
    assert "--calibration" in err
    assert cli_main.main(["serve", "lenet5:fashion_mnist", "--calibration", "digits"]) == 2
    assert "--calibration: for --int8" in capsys.readouterr().err
    in_memory = InferenceModel(
        model=torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2)).eval(), name="tiny",
        class_names=["a", "b"], channels=1, input_size=(2, 2),
        preprocess=lambda image: image.float() / 255, mean=(0.0,), std=(1.0,),
        description="tiny (in memory)",
    )  # fmt: skip
    with pytest.raises(UsageError, match="no training data is known"):
        create_app({"tiny": in_memory}, int8=True)
    # A folder of images has no labels to measure each layer's cost on: refused before serving.
    folder = tmp_path / "calibration"
    folder.mkdir()
    fashion_pngs(folder, 32)
    with pytest.raises(UsageError, match="--sensitivity measures accuracy"):
        create_app(["lenet5:fashion_mnist"], int8=True, sensitivity=True, calibration=str(folder))

    # An .onnx file cnnzoo did not write says what it needs; --classes goes to that file only.
    foreign = without_cnnzoo_metadata(onnx_files["fp32"], tmp_path / "foreign.onnx")
    assert cli_main.main(["serve", str(foreign), "lenet5:fashion_mnist"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no cnnzoo metadata" in err and "--classes FILE" in err
    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(load_model(onnx_files["fp32"]).class_names) + "\n")
    assert cli_main.main(["serve", "lenet5:fashion_mnist", "--classes", str(classes)]) == 2
    assert "none of the sources is one" in capsys.readouterr().err


def test_an_onnx_file_without_metadata_is_served_as_described(
    tmp_path: Path, onnx_files: dict[str, Path], images: list[Path]
) -> None:
    foreign = without_cnnzoo_metadata(onnx_files["fp32"], tmp_path / "foreign.onnx")
    described = load_model(onnx_files["fp32"])
    options = {"classes": described.class_names, "mean": described.mean, "std": described.std}
    app = create_app([ModelSource(foreign, options=options)], threads=1)

    async def main() -> list[dict]:
        async with client_for(app) as client:
            info = (await client.get("/v1/models/foreign")).json()
            assert info["classes"][6] == "Shirt" and info["float32_source"] is None
            response = await client.post("/v1/models/foreign/predict", files=multipart(images))
            assert response.status_code == 200, response.text
            refused = await client.post("/v1/models/foreign/explain",
                                        content=images[0].read_bytes(),
                                        headers={"Content-Type": "image/png"})  # fmt: skip
            assert_one_line_error(refused, 409, "serve the PyTorch model it was exported from")
            return response.json()["predictions"]

    try:
        predictions = asyncio.run(main())
    finally:
        app.state.models.stop()
    # The same numbers as `cnnzoo predict FILE.onnx` on the file cnnzoo wrote.
    assert_same_as_predict(predictions, onnx_files["fp32"], images)


# ----------------------------------------------------------------------------- a real server


def test_a_real_server_serves_an_int8_file_and_quantizes_a_model_with_int8(
    onnx_files: dict[str, Path], images: list[Path]
) -> None:
    server = Server(f"q={onnx_files['int8']}", "lenet5:fashion_mnist", "--int8", *CALIBRATION,
                    "--threads", "1")  # fmt: skip
    try:
        q_line = next(line for line in server.lines if line.startswith("cnnzoo serve: q:"))
        assert "int8 ONNX of lenet5" in q_line and q_line.endswith("int8 on onnxruntime")
        assert any("int8 once calibrated on 32 class-balanced" in line for line in server.lines)
        server.wait_ready()
        ready = read_until(server, "cnnzoo serve: ready in")
        assert "lenet5 int8 on " in ready and "top-1 agreement with float32" in ready
        with httpx.Client(base_url=server.url, timeout=60) as client:
            answer = client.post("/v1/models/q/predict?topk=5", files=multipart(images))
            assert answer.status_code == 200, answer.text
            refused = client.post("/v1/models/q/explain", content=images[0].read_bytes(),
                                  headers={"Content-Type": "image/png"})  # fmt: skip
            assert_one_line_error(refused, 409, "ONNX graph")
            again = client.post("/v1/models/lenet5/predict", files=multipart(images[:2]))
            assert again.status_code == 200
            metrics = client.get("/metrics").text
        assert metric(metrics, "cnnzoo_images_total", model="q") == IMAGES
        assert metric(metrics, "cnnzoo_images_total", model="lenet5") == 2
        assert_same_as_predict(answer.json()["predictions"], onnx_files["int8"], images)
    finally:
        code, _, err = server.stop()
    assert code == 0, err  # stopped by SIGTERM, as a service manager stops it
    assert "Traceback" not in err
