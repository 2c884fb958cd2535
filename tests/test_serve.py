"""`cnnzoo serve` as a user runs it: a real server process on a free 127.0.0.1 port.

The issue's "Must hold" list: served top-5 equal `cnnzoo predict`'s through every input form and
the v2 protocol; 64 concurrent requests from 16 clients answered right, with batches; memory
flat over 2,000 requests; every bad input its code and a one-line JSON error without disturbing
the next request; a client that leaves mid-upload costs nothing; SIGTERM lets requests in flight
finish and exits 0; the API key.
"""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import socket
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from serve_helpers import Server, fashion_pngs, metric, png_claiming, raw_exchange

from cnnzoo.analysis.predict import predict_images
from cnnzoo.inference import load_model

KEY = "test-key-1234"
AUTH = {"Authorization": f"Bearer {KEY}"}
MODEL = "lenet5"
IMAGES = 16


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return fashion_pngs(tmp_path_factory.mktemp("fashion"), IMAGES)


@pytest.fixture(scope="module")
def expected(images: list[Path]) -> list[tuple[list[int], list[float]]]:
    """What `cnnzoo predict lenet5 --weights fashion_mnist IMAGE...` computes: its top-5."""
    loaded = load_model("lenet5", "fashion_mnist")
    return [(p.indices, p.probs) for p in predict_images(loaded, images, topk=5)]


@pytest.fixture(scope="module")
def server() -> Server:
    # One torch thread: the tests' clients need the other core of a 2-core machine.
    running = Server(f"{MODEL}:fashion_mnist", "--api-key", KEY, "--threads", "1")
    running.wait_ready()
    yield running
    code, _, err = running.stop()
    assert code == 0, err


def check_top5(answer: dict, want: tuple[list[int], list[float]]) -> None:
    indices = [entry["index"] for entry in answer["topk"]]
    probs = [entry["probability"] for entry in answer["topk"]]
    assert indices == want[0]
    assert np.allclose(probs, want[1], atol=1e-5, rtol=0)


def assert_json_error(response: httpx.Response, status: int, *words: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "status"} and body["status"] == status
    assert "\n" not in body["error"] and body["error"]
    for word in words:
        assert word in body["error"]
    return body["error"]


def test_startup_names_each_model_and_the_url(server: Server) -> None:
    model_line = next(line for line in server.lines if line.startswith(f"cnnzoo serve: {MODEL}:"))
    assert "10 classes (T-shirt/top" in model_line and "input 1x28x28" in model_line
    assert "fashion_mnist" in model_line
    assert server.url.startswith("http://127.0.0.1:")


def test_served_top5_equal_predict_in_every_form(
    server: Server, images: list[Path], expected: list
) -> None:
    url = f"{server.url}/v1/models/{MODEL}/predict?topk=5"
    data = [path.read_bytes() for path in images]
    with httpx.Client(headers=AUTH, timeout=60) as client:
        # Several multipart files make one request (a batch).
        files = [
            ("file", (path.name, blob, "image/png"))
            for path, blob in zip(images, data, strict=True)
        ]
        answer = client.post(url, files=files).json()
        assert [p["image"] for p in answer["predictions"]] == [p.name for p in images]
        for prediction, want in zip(answer["predictions"], expected, strict=True):
            check_top5(prediction, want)
        assert set(answer["timings_ms"]) >= {"queue", "inference", "total"}
        # A raw image body, one request per image.
        for blob, want in zip(data[:4], expected[:4], strict=True):
            response = client.post(url, content=blob, headers={"Content-Type": "image/png"})
            check_top5(response.json()["predictions"][0], want)
        # JSON with base64 images, a data URL among them.
        encoded = [base64.b64encode(blob).decode() for blob in data[:4]]
        encoded[1] = "data:image/png;base64," + encoded[1]
        answer = client.post(url, json={"images": encoded}).json()
        for prediction, want in zip(answer["predictions"], expected[:4], strict=True):
            check_top5(prediction, want)


def test_v2_protocol_gives_predicts_logits(server: Server, images: list[Path], expected) -> None:
    loaded = load_model("lenet5", "fashion_mnist")
    from cnnzoo.data import read_image

    batch = loaded.prepare([read_image(path, 1) for path in images[:3]])
    with httpx.Client(headers=AUTH, timeout=60) as client:
        meta = client.get(f"{server.url}/v2/models/{MODEL}").json()
        assert meta["inputs"][0]["shape"] == [-1, 1, 28, 28]
        assert meta["inputs"][0]["datatype"] == "FP32"
        assert client.get(f"{server.url}/v2/health/ready").status_code == 200
        request = {
            "id": "r1",
            "inputs": [
                {
                    "name": "input",
                    "shape": list(batch.shape),
                    "datatype": "FP32",
                    "data": batch.flatten().tolist(),
                }
            ],
            "outputs": [{"name": "logits"}, {"name": "probabilities"}],
        }
        answer = client.post(f"{server.url}/v2/models/{MODEL}/infer", json=request).json()
    assert answer["id"] == "r1" and answer["model_name"] == MODEL
    logits, probs = answer["outputs"]
    assert logits["name"] == "logits" and logits["shape"] == [3, 10]
    probabilities = np.asarray(probs["data"]).reshape(3, 10)
    from_logits = np.exp(np.asarray(logits["data"]).reshape(3, 10))
    assert np.allclose(probabilities, from_logits / from_logits.sum(1, keepdims=True), atol=1e-6)
    for row, (indices, want) in zip(probabilities, expected[:3], strict=True):
        assert list(np.argsort(-row)[:5]) == indices
        assert np.allclose(row[indices], want, atol=1e-5, rtol=0)


async def _client_session(url: str, blobs: list[tuple[int, bytes]], answers: dict) -> None:
    async with httpx.AsyncClient(headers=AUTH, timeout=120) as client:
        for index, blob in blobs:
            response = await client.post(url, content=blob, headers={"Content-Type": "image/png"})
            answers[(index, len(answers))] = (index, response.status_code, response.json())


def test_64_concurrent_requests_from_16_clients_batch_and_stay_right(
    server: Server, images: list[Path], expected
) -> None:
    url = f"{server.url}/v1/models/{MODEL}/predict"
    data = [path.read_bytes() for path in images]
    before = httpx.get(f"{server.url}/metrics", headers=AUTH).text

    async def main() -> dict:
        answers: dict = {}
        sessions = [
            _client_session(url, [((c + 4 * r) % IMAGES, data[(c + 4 * r) % IMAGES])
                                  for r in range(4)], answers)
            for c in range(16)
        ]  # fmt: skip
        await asyncio.gather(*sessions)
        return answers

    answers = asyncio.run(main())
    assert len(answers) == 64
    for index, status, body in answers.values():
        assert status == 200
        check_top5(body["predictions"][0], expected[index])
    after = httpx.get(f"{server.url}/metrics", headers=AUTH).text
    batches = metric(after, "cnnzoo_batch_size_count", model=MODEL) - metric(
        before, "cnnzoo_batch_size_count", model=MODEL
    )
    single = metric(after, "cnnzoo_batch_size_bucket", model=MODEL, le="1.0") - metric(
        before, "cnnzoo_batch_size_bucket", model=MODEL, le="1.0"
    )
    images_done = metric(after, "cnnzoo_images_total", model=MODEL) - metric(
        before, "cnnzoo_images_total", model=MODEL
    )
    assert images_done == 64
    assert batches < 64 and batches - single >= 1  # some batches held several images
    assert max(b["predictions"][0]["batch_size"] for _, _, b in answers.values()) > 1


def test_memory_stays_flat_over_2000_requests(server: Server, images: list[Path]) -> None:
    url = f"{server.url}/v1/models/{MODEL}/predict"
    data = [path.read_bytes() for path in images]

    async def send(count: int) -> None:
        async def one_client(offset: int) -> None:
            async with httpx.AsyncClient(headers=AUTH, timeout=120) as client:
                for n in range(offset, count, 8):
                    response = await client.post(
                        url, content=data[n % IMAGES], headers={"Content-Type": "image/png"}
                    )
                    assert response.status_code == 200

        await asyncio.gather(*(one_client(offset) for offset in range(8)))

    asyncio.run(send(100))
    after_100 = server.rss_mb()
    asyncio.run(send(1900))
    after_2000 = server.rss_mb()
    assert after_2000 - after_100 < 50, (after_100, after_2000)


def test_bad_inputs_get_their_code_and_a_json_line(server: Server, images: list[Path]) -> None:
    url = f"{server.url}/v1/models/{MODEL}/predict"
    good = images[0].read_bytes()
    png = {"Content-Type": "image/png"}
    with httpx.Client(headers=AUTH, timeout=60) as client:

        def still_works() -> None:
            response = client.post(url, content=good, headers=png)
            assert response.status_code == 200 and response.json()["predictions"][0]["topk"]

        # A body that says it is too large is refused unread; one that grows too large as it
        # streams (no length given), as soon as it passes the limit.
        head = (
            f"POST /v1/models/{MODEL}/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
            f"Authorization: Bearer {KEY}\r\nContent-Length: {11 * 2**20}\r\n\r\n"
        )
        status, declared = raw_exchange(server.port, head.encode() + good)
        assert status == 413 and declared["status"] == 413 and "10 MB" in declared["error"]
        still_works()

        # Chunked, no length: 10 MB + 64 KB sent and the body not ended; the answer comes
        # without waiting for the rest.
        head = (
            f"POST /v1/models/{MODEL}/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
            f"Authorization: Bearer {KEY}\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        piece = 64 * 2**10
        chunk = f"{piece:x}\r\n".encode() + b"\xff\xd8\xff" + b"\0" * (piece - 3) + b"\r\n"
        status, streamed = raw_exchange(server.port, head.encode() + chunk * 161)
        assert status == 413 and "10 MB" in streamed["error"]
        still_works()
        assert_json_error(client.post(url, content=b"%PDF-1.4 ...", headers=png), 415, "PNG")
        assert_json_error(
            client.post(url, content=good, headers={"Content-Type": "text/plain"}),
            415,
            "text/plain",
        )
        bomb = png_claiming(30000, 30000)
        assert len(bomb) < 200
        assert_json_error(client.post(url, content=bomb, headers=png), 413, "900,000,000 pixels")
        big = png_claiming(8000, 6000)  # 48 M pixels: past --max-pixels' 40 M, below PIL's own
        assert_json_error(client.post(url, content=big, headers=png), 413, "8000x6000")
        broken = good[: len(good) // 2]
        assert_json_error(client.post(url, content=broken, headers=png), 400, "not a readable")
        assert_json_error(client.post(url, json={"images": ["***"]}), 400, "base64")
        assert_json_error(client.post(url, json={"pictures": []}), 400, "images")
        assert_json_error(
            client.post(url, content=b"{", headers={"Content-Type": "application/json"}),
            400,
            "JSON",
        )
        missing = client.post(f"{server.url}/v1/models/resnet9/predict", content=good, headers=png)
        assert_json_error(missing, 404, "resnet9", MODEL)
        assert_json_error(client.post(f"{url}?topk=0", content=good, headers=png), 400, "topk")
        v2 = {"inputs": [{"name": "input", "shape": [1, 3, 28, 28], "datatype": "FP32",
                          "data": [0.0] * (3 * 28 * 28)}]}  # fmt: skip
        assert_json_error(
            client.post(f"{server.url}/v2/models/{MODEL}/infer", json=v2), 400, "[N, 1, 28, 28]"
        )
        assert_json_error(client.get(f"{server.url}/nowhere"), 404, "/nowhere")
        still_works()
        text = client.get(f"{server.url}/metrics").text
    assert metric(text, "cnnzoo_request_errors_total", code="500") == 0
    assert metric(text, "cnnzoo_request_errors_total", code="413") >= 4


def test_a_client_that_leaves_mid_upload_costs_nothing(server: Server, images: list[Path]) -> None:
    good = images[0].read_bytes()
    before = httpx.get(f"{server.url}/metrics", headers=AUTH).text
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            head = (
                f"POST /v1/models/{MODEL}/predict HTTP/1.1\r\nHost: x\r\n"
                f"Authorization: Bearer {KEY}\r\nContent-Type: image/png\r\n"
                f"Content-Length: {len(good) * 100}\r\n\r\n"
            )
            sock.sendall(head.encode() + good[:200])
            time.sleep(0.2)
    deadline = time.monotonic() + 30
    while True:  # the server notices the three disconnects on its own time
        after = httpx.get(f"{server.url}/metrics", headers=AUTH).text
        closed = metric(after, "cnnzoo_requests_total", code="499") - metric(
            before, "cnnzoo_requests_total", code="499"
        )
        if closed >= 3 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert closed == 3
    assert metric(after, "cnnzoo_images_total", model=MODEL) == metric(
        before, "cnnzoo_images_total", model=MODEL
    )
    assert f'cnnzoo_queue_depth{{model="{MODEL}"}} 0.0' in after
    assert metric(after, "cnnzoo_request_errors_total", code="500") == 0
    response = httpx.post(
        f"{server.url}/v1/models/{MODEL}/predict",
        content=good,
        headers={**AUTH, "Content-Type": "image/png"},
    )
    assert response.status_code == 200


def test_api_key_is_required_except_on_health(server: Server) -> None:
    models = f"{server.url}/v1/models"
    assert_json_error(httpx.get(models), 401, "API key")
    wrong = httpx.get(models, headers={"Authorization": "Bearer not-the-key"})
    assert_json_error(wrong, 401, "wrong")
    assert wrong.headers["WWW-Authenticate"].startswith("Bearer")
    assert httpx.get(models, headers=AUTH).status_code == 200
    assert httpx.get(f"{server.url}/metrics").status_code == 401
    assert httpx.get(f"{server.url}/healthz").json() == {"status": "alive"}
    assert httpx.get(f"{server.url}/readyz").status_code == 200
    assert httpx.get(f"{server.url}/v2/health/live").status_code == 200
    # CORS is off unless asked for: no header lets a page elsewhere read the answer.
    answer = httpx.get(models, headers={**AUTH, "Origin": "http://elsewhere.example"})
    assert "access-control-allow-origin" not in answer.headers


def test_models_endpoint_describes_each_model(server: Server) -> None:
    (info,) = httpx.get(f"{server.url}/v1/models", headers=AUTH).json()["models"]
    assert info["name"] == MODEL and info["classes"][0] == "T-shirt/top"
    assert info["input_size"] == [28, 28] and info["channels"] == 1
    assert info["weights"] == "fashion_mnist"
    assert info["parameters"] == 61706
    assert info["macs"] == 416520  # LeNet-5 at 28 px (cnnzoo summary lenet5 --input-size 1x28x28)
    assert info["ready"] is True


def test_sigterm_lets_requests_in_flight_finish_and_exits_0(images: list[Path], expected) -> None:
    running = Server(f"fashion={MODEL}:fashion_mnist", "--threads", "1")
    running.wait_ready()
    body = images[1].read_bytes()
    sockets = []
    for _ in range(3):  # three requests whose bodies are half sent when the signal comes
        sock = socket.create_connection(("127.0.0.1", running.port), timeout=30)
        head = (
            "POST /v1/models/fashion/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        sock.sendall(head.encode() + body[:100])
        sockets.append(sock)
    time.sleep(0.5)
    running.process.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    for sock in sockets:
        sock.sendall(body[100:])
    for sock in sockets:
        response = b""
        while b"\r\n\r\n" not in response or not response.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            response += chunk
        sock.close()
        status_line, _, rest = response.partition(b"\r\n")
        assert b" 200 " in status_line, response[:300]
        answer = json.loads(rest.split(b"\r\n\r\n", 1)[1])
        check_top5(answer["predictions"][0], expected[1])
    code, out, err = running.stop()
    assert code == 0, err
    assert "stopped on SIGTERM" in out
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", running.port), timeout=5).close()


def test_ctrl_c_stops_cleanly_with_status_0() -> None:
    running = Server(f"{MODEL}:fashion_mnist", "--threads", "1")
    running.wait_ready()
    assert httpx.get(f"{running.url}/healthz").status_code == 200
    running.process.send_signal(signal.SIGINT)
    running.process.wait(60)
    code, out, err = running.stop()
    assert code == 0, err
    assert "stopped on SIGINT" in out and "Traceback" not in err
