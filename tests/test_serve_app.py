"""The serve app in-process (httpx's ASGI transport): sources and names, the queue and the
timeout, explain, models added at run time, CORS, mounting, and the command line's errors."""

from __future__ import annotations

import asyncio
import base64
import io
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from fastapi import FastAPI
from PIL import Image
from serve_helpers import png_bytes
from test_predict_cli import _write_run as write_run
from torch import nn

import cnnzoo
import cnnzoo.cli.main as cli_main
from cnnzoo.errors import UsageError
from cnnzoo.inference import InferenceModel, load_model
from cnnzoo.serve import create_app, parse_source

PNG = {"Content-Type": "image/png"}


def client_for(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://serve")


def run(coroutine):  # noqa: ANN001, ANN201
    return asyncio.run(coroutine)


class Sleepy(nn.Module):
    """Three classes from an 8x8 grey image; a bright image takes ``delay`` seconds, and so does
    the all-zero warm-up input when ``slow_warmup``."""

    def __init__(self, delay: float = 1.0, slow_warmup: bool = False) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 3)
        self.delay, self.slow_warmup = delay, slow_warmup

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.mean() > 0.5 or (self.slow_warmup and not x.any()):
            time.sleep(self.delay)
        return self.fc(x.flatten(1))


def sleepy_model(**kwargs: float | bool) -> InferenceModel:
    return InferenceModel(
        model=Sleepy(**kwargs).eval(),
        name="sleepy",
        class_names=["a", "b", "c"],
        channels=1,
        input_size=(8, 8),
        preprocess=lambda image: image.float() / 255,
        mean=(0.0,),
        std=(1.0,),
        description="a test model",
    )


WHITE = png_bytes(np.full((8, 8), 255, np.uint8))  # slow
BLACK = png_bytes(np.zeros((8, 8), np.uint8))  # fast


async def until(condition, timeout: float = 30.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition never held"
        await asyncio.sleep(0.01)


# ----------------------------------------------------------------------------- sources


def test_sources_parse_as_the_command_line_writes_them(tmp_path: Path) -> None:
    plain = parse_source("lenet5:digits")
    assert (plain.source, plain.weights, plain.name) == ("lenet5", "digits", None)
    named = parse_source("mnist=lenet5:fashion_mnist")
    assert (named.source, named.weights, named.name) == ("lenet5", "fashion_mnist", "mnist")
    assert parse_source("lenet5", "digits").weights == "digits"
    weird = tmp_path / "a=b:c"
    weird.mkdir()
    assert parse_source(str(weird)).source == str(weird)  # an existing path is a path
    with pytest.raises(UsageError, match="unknown model 'lenet6'"):
        parse_source("lenet6:digits")
    with pytest.raises(UsageError, match="give the weights"):
        parse_source("lenet5:")


def test_several_models_by_run_name_model_name_and_chosen_name(tmp_path: Path) -> None:
    from cnnzoo.data import load_dataset

    torch.manual_seed(0)
    model = cnnzoo.create_model("lenet5", num_classes=10, in_chans=1).eval()
    run_dir = write_run(tmp_path / "r-digits", model, load_dataset("digits"))
    app = create_app([str(run_dir), "lenet5:fashion_mnist", "d2=lenet5:digits"], threads=1)
    digit = png_bytes((np.arange(64).reshape(8, 8) * 4).astype(np.uint8))

    async def main() -> None:
        async with client_for(app) as client:
            listed = (await client.get("/v1/models")).json()["models"]
            assert [m["name"] for m in listed] == ["r-digits", "lenet5", "d2"]
            assert listed[0]["input_size"] == [32, 32] and listed[2]["classes"][0] == "0"
            for name in ("r-digits", "d2"):
                answer = await client.post(f"/v1/models/{name}/predict", content=digit, headers=PNG)
                assert answer.status_code == 200
            # The run's prediction is the run's own: the same as predict on it.
            from cnnzoo.analysis.predict import predict_images

            path = tmp_path / "digit.png"
            path.write_bytes(digit)
            (want,) = predict_images(load_model(run_dir), [path], topk=3)
            got = (await client.post("/v1/models/r-digits/predict?topk=3", content=digit,
                                     headers=PNG)).json()["predictions"][0]["topk"]  # fmt: skip
            assert [g["index"] for g in got] == want.indices
            assert np.allclose([g["probability"] for g in got], want.probs, atol=1e-5)

    run(main())
    app.state.models.stop()
    with pytest.raises(UsageError, match="served as 'lenet5'"):
        create_app(["lenet5:fashion_mnist", "lenet5:digits"])
    with pytest.raises(UsageError, match="no weights"):
        create_app(["lenet5"])
    with pytest.raises(UsageError, match="unknown serve option"):
        create_app(["lenet5:digits"], max_batches=4)


# ----------------------------------------------------------------------------- queue, timeout


def test_a_full_queue_is_503_with_retry_after_and_the_rest_are_served() -> None:
    app = create_app({"sleepy": sleepy_model(delay=1.0)}, max_batch=1, queue_size=2, timeout=60)
    worker = app.state.models["sleepy"].worker

    async def main() -> None:
        async with client_for(app) as client:
            url = "/v1/models/sleepy/predict"
            slow = asyncio.create_task(client.post(url, content=WHITE, headers=PNG))
            await until(lambda: worker.depth == 1)
            queued = asyncio.create_task(client.post(url, content=BLACK, headers=PNG))
            await until(lambda: worker.depth == 2)
            refused = await client.post(url, content=BLACK, headers=PNG)
            assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
            assert refused.json()["status"] == 503 and "busy" in refused.json()["error"]
            assert (await slow).status_code == 200 and (await queued).status_code == 200
            assert (await client.post(url, content=BLACK, headers=PNG)).status_code == 200

    run(main())
    app.state.models.stop()


def test_past_the_timeout_is_504_and_the_abandoned_work_is_skipped() -> None:
    app = create_app({"sleepy": sleepy_model(delay=1.0)}, max_batch=1, timeout=0.3)
    worker = app.state.models["sleepy"].worker

    async def main() -> None:
        async with client_for(app) as client:
            url = "/v1/models/sleepy/predict"
            app.state.models.start()
            await until(lambda: worker.ready.is_set())
            done_before = worker.images_done
            late = await asyncio.gather(
                client.post(url, content=WHITE, headers=PNG),
                client.post(url, content=WHITE, headers=PNG),
            )
            for response in late:
                assert response.status_code == 504 and "0.3 s" in response.json()["error"]
            await until(lambda: worker.depth == 0)
            # The second slow image was dropped when its request gave up: only one ran.
            assert worker.images_done == done_before + 1
            fine = await client.post(url, content=BLACK, headers=PNG)
            assert fine.status_code == 200

    run(main())
    app.state.models.stop()


def test_readyz_is_503_until_warm_and_early_requests_wait() -> None:
    app = create_app({"sleepy": sleepy_model(delay=0.4, slow_warmup=True)}, max_batch=2)

    async def main() -> None:
        async with client_for(app) as client:
            early = await client.get("/readyz")
            assert early.status_code == 503 and "warming up: sleepy" in early.json()["error"]
            assert (await client.get("/v2/health/ready")).status_code == 503
            assert (await client.get("/healthz")).status_code == 200
            answer = await client.post("/v1/models/sleepy/predict", content=BLACK, headers=PNG)
            assert answer.status_code == 200
            await until(lambda: app.state.models.ready)
            assert (await client.get("/readyz")).json() == {"status": "ready", "models": ["sleepy"]}

    run(main())
    app.state.models.stop()


# ----------------------------------------------------------------------------- explain, add


@pytest.fixture(scope="module")
def fashion_app() -> FastAPI:
    app = create_app(["lenet5:fashion_mnist"], threads=1)
    yield app
    app.state.models.stop()


def test_explain_gives_gradcam_as_array_and_png(fashion_app: FastAPI) -> None:
    from cnnzoo.analysis.explain import gradcam_maps, resolve_layer
    from cnnzoo.data.folder import decode_image, image_tensor

    torch.manual_seed(1)
    picture = (np.random.default_rng(1).random((28, 28)) * 255).astype(np.uint8)
    picture[6:22, 10:18] = 255
    blob = png_bytes(picture)
    loaded = fashion_app.state.models["lenet5"].loaded
    batch = loaded.prepare([image_tensor(decode_image(io.BytesIO(blob), 1))])
    with torch.no_grad():
        top = int(loaded.model(batch).argmax())
    want = gradcam_maps(loaded.model, batch, [top])[0].numpy()

    async def main() -> None:
        async with client_for(fashion_app) as client:
            url = "/v1/models/lenet5/explain"
            answer = (await client.post(url, content=blob, headers=PNG)).json()
            assert answer["layer"] == resolve_layer(loaded.model) and answer["method"] == "gradcam"
            (explained,) = answer["explanations"]
            assert explained["target"]["index"] == top == explained["topk"][0]["index"]
            heat = np.asarray(explained["heatmap"])
            assert heat.shape == (28, 28) and np.allclose(heat, want, atol=1e-4)
            overlay = Image.open(io.BytesIO(base64.b64decode(explained["overlay_png"])))
            assert overlay.format == "PNG" and overlay.size == (224, 224)
            by_name = (await client.post(f"{url}?target=Trouser&layer=conv1", content=blob,
                                         headers=PNG)).json()  # fmt: skip
            assert by_name["layer"] == "conv1"
            assert by_name["explanations"][0]["target"]["label"] == "Trouser"
            bad = await client.post(f"{url}?layer=conv9", content=blob, headers=PNG)
            assert bad.status_code == 400 and "conv9" in bad.json()["error"]
            bad = await client.post(f"{url}?method=lime", content=blob, headers=PNG)
            assert bad.status_code == 400 and "gradcam" in bad.json()["error"]
            bad = await client.post(f"{url}?target=Hat", content=blob, headers=PNG)
            assert bad.status_code == 400 and "Hat" in bad.json()["error"]

    run(main())


def test_a_model_added_at_run_time_warms_up_and_is_listed(fashion_app: FastAPI) -> None:
    models = fashion_app.state.models
    digit = png_bytes((np.arange(64).reshape(8, 8) * 4).astype(np.uint8))

    async def main() -> None:
        async with client_for(fashion_app) as client:
            served = await models.add("lenet5:digits", name="digits")
            assert served.ready and served.loaded.class_names[0] == "0"
            names = [m["name"] for m in (await client.get("/v1/models")).json()["models"]]
            assert names == ["lenet5", "digits"]
            answer = await client.post("/v1/models/digits/predict", content=digit, headers=PNG)
            assert answer.status_code == 200
            # Every model's torch work runs on the one torch thread (one OpenMP team).
            here = lambda: __import__("threading").current_thread()  # noqa: E731
            thread = await models.call("digits", here)
            assert thread.name == "cnnzoo-torch"
            assert await models.call("lenet5", here) is thread
            from cnnzoo.serve import ApiError

            with pytest.raises(ApiError) as clash:
                await models.add("lenet5:fashion_mnist")
            assert clash.value.status == 409
            with pytest.raises(ApiError) as bad:
                await models.add("lenet7:digits")
            assert bad.value.status == 400 and "lenet7" in bad.value.message

    run(main())


class ThreadRecorder(nn.Module):
    """Records the thread of every forward pass (warm-up and batches)."""

    def __init__(self, seen: set[str]) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 3)
        self.seen = seen

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.add(threading.current_thread().name)
        return self.fc(x.flatten(1))


def test_all_torch_work_of_every_model_runs_on_one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading, warming up, preprocessing and batches of two models: all on the torch thread, so
    that one OpenMP team exists (a second team slows every batch; see cnnzoo.serve.worker)."""
    seen: set[str] = set()

    def recorded(name: str) -> InferenceModel:
        def preprocess(image: torch.Tensor) -> torch.Tensor:
            seen.add(threading.current_thread().name)
            return image.float() / 255

        return InferenceModel(
            model=ThreadRecorder(seen).eval(), name=name, class_names=["a", "b", "c"], channels=1,
            input_size=(8, 8), preprocess=preprocess, mean=(0.0,), std=(1.0,), description=name,
        )  # fmt: skip

    import cnnzoo.inference

    real_load = cnnzoo.inference.load_model

    def load_model(*args: object, **kwargs: object) -> InferenceModel:
        seen.add(threading.current_thread().name)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(cnnzoo.inference, "load_model", load_model)
    app = create_app({"one": recorded("one"), "two": recorded("two")}, max_wait_ms=1)
    models = app.state.models

    async def main() -> None:
        async with client_for(app) as client:
            answers = await asyncio.gather(
                *(
                    client.post(f"/v1/models/{name}/predict", content=BLACK, headers=PNG)
                    for name in ("one", "two") * 4
                )
            )
            assert [a.status_code for a in answers] == [200] * 8
            await models.add("lenet5:digits", name="digits")

    run(main())
    models.stop()
    assert seen == {"cnnzoo-torch"}, seen


def test_cors_is_opt_in_and_preflight_needs_no_key() -> None:
    app = create_app({"sleepy": sleepy_model()}, cors_origins=("http://page.example",), api_key="k")

    async def main() -> None:
        async with client_for(app) as client:
            preflight = await client.options(
                "/v1/models",
                headers={"Origin": "http://page.example", "Access-Control-Request-Method": "GET"},
            )
            assert preflight.status_code == 200
            assert preflight.headers["access-control-allow-origin"] == "http://page.example"
            answer = await client.get(
                "/v1/models", headers={"Origin": "http://page.example", "Authorization": "Bearer k"}
            )
            assert answer.headers["access-control-allow-origin"] == "http://page.example"
            assert (await client.get("/v1/models")).status_code == 401

    run(main())
    app.state.models.stop()


def test_the_app_mounts_inside_another_and_starts_on_first_use() -> None:
    outer = FastAPI()
    outer.mount("/zoo", create_app({"sleepy": sleepy_model()}))

    async def main() -> None:
        async with client_for(outer) as client:  # no lifespan reaches a mounted app
            answer = await client.post("/zoo/v1/models/sleepy/predict", content=BLACK, headers=PNG)
            assert answer.status_code == 200
            assert answer.json()["predictions"][0]["topk"][0]["label"] in ("a", "b", "c")

    run(main())


# ----------------------------------------------------------------------------- command line


def test_command_line_errors_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main.main(["serve", "lenet6"]) == 2
    assert "unknown model 'lenet6'" in capsys.readouterr().err
    assert cli_main.main(["serve", "lenet5", "resnet18", "--weights", "digits"]) == 2
    assert "--weights goes with one model" in capsys.readouterr().err
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert cli_main.main(["serve", "lenet5:digits", "--port", str(port)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"cannot listen on 127.0.0.1:{port}" in err


def test_optimize_serves_the_checked_fast_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    import functools
    import importlib

    # The module, not cnnzoo.optimize (the package exports the function under that name).
    optimize_module = importlib.import_module("cnnzoo.optimize")
    # torch.compile would take minutes here: folding and layout are what is checked.
    monkeypatch.setattr(
        optimize_module, "optimize", functools.partial(optimize_module.optimize, compile=False)
    )
    plain = create_app(["lenet5:fashion_mnist"], threads=1)
    fast = create_app(["lenet5:fashion_mnist"], threads=1, optimize=True)
    picture = png_bytes((np.random.default_rng(3).random((28, 28)) * 255).astype(np.uint8))

    async def ask(app: FastAPI) -> dict:
        async with client_for(app) as client:
            url = "/v1/models/lenet5/predict?topk=10"
            return (await client.post(url, content=picture, headers=PNG)).json()

    want, got = run(ask(plain)), run(ask(fast))
    served = fast.state.models["lenet5"]
    assert served.worker.optimize_report.folded_batchnorms >= 0
    assert served.info()["optimized"].startswith("folded")
    want_top = {e["index"]: e["probability"] for e in want["predictions"][0]["topk"]}
    got_top = {e["index"]: e["probability"] for e in got["predictions"][0]["topk"]}
    assert want_top.keys() == got_top.keys()
    assert all(abs(want_top[i] - got_top[i]) < 1e-4 for i in want_top)
    plain.state.models.stop()
    fast.state.models.stop()


def test_the_api_docs_describe_the_three_upload_forms(fashion_app: FastAPI) -> None:
    async def main() -> dict:
        async with client_for(fashion_app) as client:
            assert (await client.get("/docs")).status_code == 200
            return (await client.get("/openapi.json")).json()

    paths = run(main())["paths"]
    for endpoint in ("predict", "explain"):
        body = paths[f"/v1/models/{{name}}/{endpoint}"]["post"]["requestBody"]["content"]
        assert set(body) == {"multipart/form-data", "image/*", "application/json"}
    assert "/v2/models/{name}/infer" in paths and "/metrics" in paths
