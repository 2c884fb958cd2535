"""Serving speed: `cnnzoo serve` against the servers users would otherwise write or install.

For each model (resnet18 at 224 px, lenet5 at 28 px) five servers are started on 127.0.0.1,
each with the same torch thread count, and an asyncio client (raw HTTP/1.1 over keep-alive
connections, so that the client costs little) sends the same multipart image upload at
concurrency 1, 8 and 32. The servers take turns (A, B, C, D, E, A, B, ...) so that a change in
the machine's load hits them all alike; requests/s is the median over the turns, p50/p99 latency
come from all of a server's requests. Between its turns a server is paused (SIGSTOP to its
process group, SIGCONT before its next turn): an idle server still wakes up (LitServe's polls its
queues, about 0.1 of a core), and on 2 cores that cut the requests/s of the server whose turn it
was from about 50 to 38 (resnet18, 32 clients).

- ``cnnzoo``: ``cnnzoo serve`` with dynamic batching (``--max-batch 8 --max-wait-ms 5``);
- ``cnnzoo-int8``: the same server serving the model's int8 ``.onnx`` file (made first by
  ``cnnzoo quantize``: lenet5 calibrated on 64 of its own training images, resnet18's random
  weights on 64 synthetic photos, its agreement check off since random weights' top-1 means
  nothing), on ONNX Runtime with the same threads (``--no-int8`` leaves it out);
- ``cnnzoo-nobatch``: the same server with ``--max-batch 1``;
- ``handwritten``: the FastAPI handler users write (a sync ``def predict(file: UploadFile)``,
  one torch call per request in FastAPI's thread pool), on uvicorn;
- ``litserve``: LitServe with ``max_batch_size=8, batch_timeout=0.005``, installed into the
  benchmark's own virtual environment (``--setup`` makes it: ``python -m venv`` at
  ``--litserve-venv``, default /tmp/cnnzoo-serve-bench, with a ``.pth`` file that lets it see this
  environment's torch, then ``pip install litserve``; nothing of it is in the repository).

The ceiling is the model's offline images/s at batch 8 in this process (a forward pass on a
ready batch: no HTTP, no decoding), timed between the servers' turns.

    python benchmarks/serve.py --setup                     # once: LitServe's environment
    nice -n 10 python benchmarks/serve.py --out serve.json  # the table in docs/guide/performance.md
    python benchmarks/serve.py --models lenet5 --concurrency 4 --seconds 1 --rounds 1 \\
        --no-litserve                                       # a quick check, ~30 s
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import math
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# At module level: FastAPI reads the handler's annotations by name (postponed evaluation).
from fastapi import FastAPI, File, UploadFile

REPO = Path(__file__).resolve().parents[1]
DEFAULT_VENV = Path(tempfile.gettempdir()) / "cnnzoo-serve-bench"
MODELS = {
    # name: (cnnzoo serve arguments, image side, channels)
    "resnet18": ("resnet18", 224, 3),
    "lenet5": ("lenet5", 28, 1),
}
SERVERS = ("cnnzoo", "cnnzoo-int8", "cnnzoo-nobatch", "handwritten", "litserve")
INT8_SAMPLES = 64
MAX_BATCH = 8
MAX_WAIT_MS = 5


# ================================================================== the servers compared


def _load(model: str, weights: str) -> Any:
    from cnnzoo.inference import load_model

    return load_model(model, weights)


def _decode(data: bytes, channels: int) -> Any:
    """What a user's handler does: PIL, then a (C, H, W) uint8 tensor."""
    import numpy as np
    import torch
    from PIL import Image

    image = Image.open(io.BytesIO(data)).convert("L" if channels == 1 else "RGB")
    array = torch.from_numpy(np.asarray(image).copy())
    return array[None] if array.ndim == 2 else array.permute(2, 0, 1).contiguous()


def handwritten_app(model: str, weights: str, threads: int) -> Any:
    """The FastAPI server users write: a sync handler, so FastAPI runs each request in its
    40-thread pool, each doing its own torch call on one image."""
    import torch

    torch.set_num_threads(threads)
    loaded = _load(model, weights)
    app = FastAPI()

    @app.get("/health")
    def health() -> dict:
        return {"ok": True}

    @app.post("/predict")
    def predict(file: UploadFile = File(...)) -> dict:  # noqa: B008 - FastAPI's idiom
        x = loaded.preprocess(_decode(file.file.read(), loaded.channels))
        with torch.inference_mode():
            probs = loaded.model(x[None]).softmax(dim=1)[0]
        top_p, top_i = probs.topk(5)
        return {
            "predictions": [
                {"label": loaded.class_names[i], "index": i, "probability": p}
                for p, i in zip(top_p.tolist(), top_i.tolist(), strict=True)
            ]
        }

    return app


try:  # only in LitServe's own environment (see --setup)
    import litserve as ls
except ImportError:
    ls = None

if ls is not None:
    # LitServe pickles the API into its worker process: the class must live at module level.
    class LitClassifier(ls.LitAPI):
        """The same decoding, preprocessing and model as the others, in LitServe's shape;
        decode_request gets the parsed multipart form."""

        def __init__(self, model: str, weights: str, threads: int, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.source, self.weights, self.threads = model, weights, threads

        def setup(self, device: str) -> None:
            import torch

            torch.set_num_threads(self.threads)
            self.loaded = _load(self.source, self.weights)

        def decode_request(self, request):  # noqa: ANN001 - unannotated: LitServe then passes
            # the parsed form (it reads the annotation to choose what to pass)
            data = request["file"].file.read()
            return self.loaded.preprocess(_decode(data, self.loaded.channels))

        def batch(self, inputs: list) -> Any:
            import torch

            return torch.stack(inputs)

        def predict(self, x: Any) -> Any:
            import torch

            with torch.inference_mode():
                return self.loaded.model(x).softmax(dim=1)

        def unbatch(self, output: Any) -> list:
            return list(output)

        def encode_response(self, probs: Any) -> dict:
            top_p, top_i = probs.topk(5)
            names = self.loaded.class_names
            return {
                "predictions": [
                    {"label": names[i], "index": i, "probability": p}
                    for p, i in zip(top_p.tolist(), top_i.tolist(), strict=True)
                ]
            }


def run_litserve(model: str, weights: str, threads: int, port: int) -> None:
    """LitServe with its batching (max_batch_size=8, batch_timeout=5 ms), one CPU worker."""
    api = LitClassifier(
        model, weights, threads, max_batch_size=MAX_BATCH, batch_timeout=MAX_WAIT_MS / 1e3
    )
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1)
    server.run(host="127.0.0.1", port=port, generate_client_file=False, log_level="warning")


def serve_main(args: argparse.Namespace) -> None:
    """``--serve KIND``: this process is one of the compared servers."""
    if args.serve == "handwritten":
        import uvicorn

        app = handwritten_app(args.model, args.weights, args.threads)
        uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")
    else:
        run_litserve(args.model, args.weights, args.threads, args.port)


# ================================================================== the client


def multipart(image: bytes, filename: str, content_type: str) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"'
        f"\r\nContent-Type: {content_type}\r\n\r\n".encode()
        + image
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def http_request(path: str, port: int, body: bytes, content_type: str) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip().split(b";")[0], 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                return status, body
            body += chunk[:-2]
    return status, await reader.readexactly(int(headers.get(b"content-length", b"0")))


@dataclass
class Measured:
    requests: int = 0
    errors: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


async def load_test(
    port: int, request: bytes, concurrency: int, seconds: float, warmup: float
) -> Measured:
    """``concurrency`` keep-alive connections, each sending the next request as soon as the last
    is answered. The answers that arrive in the ``seconds`` after ``warmup`` count: their number
    over ``seconds`` is the throughput (right even when a latency is longer than the window),
    their latencies give p50/p99."""
    result = Measured(seconds=seconds)
    start = time.perf_counter()
    counting_from, stop_at = start + warmup, start + warmup + seconds

    async def connection() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.perf_counter() < stop_at:
                sent = time.perf_counter()
                writer.write(request)
                status, _ = await asyncio.wait_for(read_response(reader), 300)
                done = time.perf_counter()
                if counting_from <= done <= stop_at:
                    result.requests += status == 200
                    result.errors += status != 200
                    result.latencies.append(done - sent)
        finally:
            writer.close()

    await asyncio.gather(*(connection() for _ in range(concurrency)))
    return result


# ================================================================== running the comparison


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    name: str
    port: int
    path: str
    ready_path: str
    process: subprocess.Popen
    log: Path

    def wait_ready(self, timeout: float = 300.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = "\n".join(self.log.read_text().splitlines()[-15:])
                raise SystemExit(
                    f"{self.name} server exited with {self.process.returncode}:\n{tail}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
                    sock.sendall(f"GET {self.ready_path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                    if b" 200 " in sock.recv(256).split(b"\r\n")[0]:
                        return
            except OSError:
                pass
            time.sleep(0.3)
        raise SystemExit(f"{self.name} server not ready within {timeout:.0f} s")

    def pause(self) -> None:
        """SIGSTOP to the server's process group: between its turns it takes no CPU at all."""
        import signal

        os.killpg(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        import signal

        os.killpg(self.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        """SIGTERM to the server's process group (LitServe has worker processes), KILL to what
        is left after 20 s."""
        import signal

        with contextlib.suppress(ProcessLookupError):
            self.resume()  # a stopped process acts on SIGTERM only once it runs again
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                return
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                self.process.poll()  # reap the leader
                try:
                    os.killpg(self.process.pid, 0)
                except ProcessLookupError:
                    return
                time.sleep(0.1)


def start_servers(
    names: list[str],
    model: str,
    weights: str,
    threads: int,
    litserve_python: Path | None,
    logs: Path,
    int8_file: Path | None = None,
) -> list[Server]:
    paths = [str(REPO / "src"), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    servers = []
    for name in names:
        port = free_port()
        if name.startswith("cnnzoo"):
            batch = 1 if name == "cnnzoo-nobatch" else MAX_BATCH
            source = f"{model}={int8_file}" if name == "cnnzoo-int8" else f"{model}:{weights}"
            argv = [
                sys.executable, "-m", "cnnzoo", "serve", source,
                "--port", str(port), "--threads", str(threads), "--max-batch", str(batch),
                "--max-wait-ms", str(MAX_WAIT_MS), "--queue-size", "256",
            ]  # fmt: skip
            path, ready = f"/v1/models/{model}/predict", "/readyz"
        else:
            python = litserve_python if name == "litserve" else Path(sys.executable)
            argv = [
                str(python), __file__, "--serve", name, "--model", model, "--weights", weights,
                "--port", str(port), "--threads", str(threads),
            ]  # fmt: skip
            path, ready = "/predict", "/health"
        log = logs / f"{model}-{name}.log"
        with log.open("w") as errors:
            process = subprocess.Popen(
                argv, env=env, stdout=subprocess.DEVNULL, stderr=errors, start_new_session=True
            )
        servers.append(Server(name, port, path, ready, process, log))
    try:
        for server in servers:
            server.wait_ready()
    except BaseException:
        for server in servers:
            server.stop()
        raise
    return servers


def test_image(model: str, side: int, channels: int) -> tuple[bytes, str, str]:
    """A Fashion-MNIST test image as PNG for lenet5; a 224 px photo-like JPEG for resnet18."""
    import numpy as np
    from PIL import Image

    if channels == 1:
        try:
            from cnnzoo.data.idx import read_idx

            array = read_idx(Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz"))[0]
        except Exception:  # noqa: BLE001 - any grey picture will do for timing
            array = (np.arange(side * side).reshape(side, side) % 251).astype(np.uint8)
        out = io.BytesIO()
        Image.fromarray(np.asarray(array)).save(out, format="PNG")
        return out.getvalue(), "image.png", "image/png"
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:side, 0:side] / side
    smooth = np.stack([np.sin(6 * x + c) * np.cos(4 * y - c) for c in range(3)], axis=-1)
    array = ((smooth + 1) * 110 + rng.normal(0, 12, smooth.shape)).clip(0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="JPEG", quality=90)
    return out.getvalue(), "photo.jpg", "image/jpeg"


def random_weights(model: str, directory: Path) -> str:
    """resnet18 with fresh weights saved to a file (serving speed does not depend on their
    values, and the benchmark must not download ImageNet weights)."""
    import torch

    import cnnzoo
    from cnnzoo.weights import save_weights

    torch.manual_seed(0)
    path = directory / f"{model}-random.safetensors"
    save_weights(cnnzoo.create_model(model).eval(), path)
    return str(path)


def int8_file(model: str, weights: str, side: int, channels: int, work: Path) -> Path:
    """The model's int8 .onnx file, written by `cnnzoo quantize` (its report goes to the log)."""
    out = work / f"{model}.int8.onnx"
    argv = [sys.executable, "-m", "cnnzoo", "quantize", model, "--weights", weights, "-o",
            str(out), "--samples", str(INT8_SAMPLES), "--no-test"]  # fmt: skip
    if model != "lenet5":  # random weights: no data of their own, no answers worth checking
        import numpy as np
        from PIL import Image

        folder = work / "calibration"
        folder.mkdir(exist_ok=True)
        rng = np.random.default_rng(1)
        for index in range(INT8_SAMPLES):
            y, x = np.mgrid[0:side, 0:side] / side
            phase = rng.uniform(0, 6, 3)
            waves = np.stack([np.sin(6 * x + c) * np.cos(4 * y - c) for c in phase], axis=-1)
            array = ((waves + 1) * 110 + rng.normal(0, 12, waves.shape)).clip(0, 255)
            Image.fromarray(array.astype(np.uint8)).save(folder / f"{index:03d}.jpg")
        argv += ["--calibration", str(folder), "--min-agreement", "0"]
    paths = [str(REPO / "src"), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    log = work / f"{model}-quantize.log"
    with log.open("w") as output:
        done = subprocess.run(argv, env=env, stdout=output, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise SystemExit(f"cnnzoo quantize failed:\n{log.read_text()[-2000:]}")
    return out


def offline_images_per_second(model: str, weights: str, side: int, channels: int) -> Any:
    """A closure timing one forward pass at batch 8 (returns images/s)."""
    import torch

    loaded = _load(model, weights)
    x = torch.randn(MAX_BATCH, channels, side, side)

    def run(repeats: int = 5) -> float:
        with torch.inference_mode():
            loaded.model(x)
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                loaded.model(x)
                times.append(time.perf_counter() - start)
        return MAX_BATCH / statistics.median(times)

    return run


def percentile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(math.ceil(q / 100 * len(ordered))) - 1)]


def check_answers(servers: list[Server], request_of: dict[str, bytes]) -> dict[str, Any]:
    """One request to each server: every one answers 200 with the same top class."""

    async def ask(server: Server) -> Any:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(request_of[server.name])
        status, body = await read_response(reader)
        writer.close()
        if status != 200:
            raise SystemExit(f"{server.name} answered {status}: {body[:300]!r}")
        return json.loads(body)["predictions"]

    answers = {}
    for server in servers:
        predictions = asyncio.run(ask(server))
        first = predictions[0]
        answers[server.name] = (first["topk"] if "topk" in first else predictions)[0]["index"]
    # int8 may differ from float32 (for random weights, often): it answers, as the rest agree.
    float32 = {name: index for name, index in answers.items() if name != "cnnzoo-int8"}
    if len(set(float32.values())) != 1:
        raise SystemExit(f"the servers disagree on the top class: {answers}")
    return answers


def compare_model(model: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    source, side, channels = MODELS[model]
    weights = "fashion_mnist" if model == "lenet5" else random_weights(model, work)
    names = [n for n in SERVERS if n != "litserve" or args.litserve_python is not None]
    names = [n for n in names if n != "cnnzoo-int8" or args.int8]
    quantized = None
    if args.int8:
        print(f"\n{model}: quantizing to int8 ...", flush=True)
        quantized = int8_file(source, weights, side, channels, work)
    print(f"\n{model} ({side} px): starting {', '.join(names)} ...", flush=True)
    image, filename, image_type = test_image(model, side, channels)
    body, content_type = multipart(image, filename, image_type)
    servers = start_servers(
        names, source, weights, args.threads, args.litserve_python, work, quantized
    )
    try:
        request_of = {s.name: http_request(s.path, s.port, body, content_type) for s in servers}
        check_answers(servers, request_of)
        ceiling = offline_images_per_second(source, weights, side, channels)
        for server in servers:
            server.pause()
        rows = []
        for concurrency in args.concurrency:
            runs: dict[str, list[Measured]] = {s.name: [] for s in servers}
            ceilings = []
            for turn in range(args.rounds):
                order = servers[turn % len(servers) :] + servers[: turn % len(servers)]
                for server in order:
                    server.resume()
                    runs[server.name].append(
                        asyncio.run(
                            load_test(
                                server.port,
                                request_of[server.name],
                                concurrency,
                                args.seconds,
                                args.warmup,
                            )
                        )  # fmt: skip
                    )
                    server.pause()
                ceilings.append(ceiling())
            row: dict[str, Any] = {
                "model": model,
                "concurrency": concurrency,
                "offline_images_per_s": statistics.median(ceilings),
            }
            for name, measured in runs.items():
                latencies = [v for m in measured for v in m.latencies]
                row[name] = {
                    "requests_per_s": statistics.median(m.per_second for m in measured),
                    "p50_ms": percentile(latencies, 50) * 1e3,
                    "p99_ms": percentile(latencies, 99) * 1e3,
                    "errors": sum(m.errors for m in measured),
                    "requests": sum(m.requests for m in measured),
                }
            rows.append(row)
            print_row(row, names)
        return {"model": model, "side": side, "rows": rows}
    finally:
        for server in servers:
            server.stop()


def print_row(row: dict[str, Any], names: list[str]) -> None:
    cnnzoo = row["cnnzoo"]
    parts = [f"  c={row['concurrency']:>2}"]
    for name in names:
        r = row[name]
        errors = f" {r['errors']} errors" if r["errors"] else ""
        parts.append(
            f"{name} {r['requests_per_s']:7.1f} req/s p50 {r['p50_ms']:6.1f} "
            f"p99 {r['p99_ms']:6.1f} ms{errors}"
        )
    print(" | ".join(parts), flush=True)
    ratios = [f"cnnzoo / {n} {cnnzoo['requests_per_s'] / row[n]['requests_per_s']:.2f}x"
              for n in names if n not in ("cnnzoo", "cnnzoo-int8")
              and row[n]["requests_per_s"]]  # fmt: skip
    if "cnnzoo-int8" in row and cnnzoo["requests_per_s"]:
        int8 = row["cnnzoo-int8"]["requests_per_s"] / cnnzoo["requests_per_s"]
        ratios.insert(0, f"int8 file / float32 model {int8:.2f}x")
    ceiling = row["offline_images_per_s"]
    ratios.append(
        f"served / offline ceiling {cnnzoo['requests_per_s'] / ceiling:.2f} "
        f"(ceiling {ceiling:.0f} images/s at batch {MAX_BATCH})"
    )
    print("        " + "; ".join(ratios), flush=True)


# ================================================================== setup and main


def setup_litserve(venv: Path) -> Path:
    """A virtual environment with LitServe that also sees this environment's packages (torch
    is not downloaded again): ``python -m venv``, a ``.pth`` file, ``pip install litserve``."""
    import sysconfig

    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    (Path(site) / "cnnzoo-bench-parent.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(python), "-m", "pip", "install", "-q", "litserve"], check=True)
    return python


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="resnet18,lenet5", help="comma-separated")
    parser.add_argument("--concurrency", default="1,8,32", help="comma-separated client counts")
    parser.add_argument("--seconds", type=float, default=4.0, help="measured per turn")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured, before each turn")
    parser.add_argument("--rounds", type=int, default=3, help="turns per server and concurrency")
    parser.add_argument(
        "--threads",
        type=int,
        help="torch threads in every server (default: what `cnnzoo serve` picks here: the cores "
        "other processes leave free)",
    )
    parser.add_argument("--litserve-venv", type=Path, default=DEFAULT_VENV)
    parser.add_argument("--setup", action="store_true", help="make LitServe's venv and stop")
    parser.add_argument("--no-litserve", action="store_true", help="compare without LitServe")
    parser.add_argument(
        "--no-int8", dest="int8", action="store_false", help="compare without the int8 server"
    )
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    # When this script is one of the compared servers:
    parser.add_argument("--serve", choices=("handwritten", "litserve"), help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--weights", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    args.concurrency = [int(c) for c in args.concurrency.split(",") if c.strip()]
    unknown = set(args.models) - set(MODELS)
    if unknown:
        parser.error(f"unknown model(s) {sorted(unknown)}; choose from {', '.join(MODELS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve:
        serve_main(args)
        return 0
    if args.setup:
        python = setup_litserve(args.litserve_venv)
        print(f"LitServe is installed for the benchmark: {python}")
        return 0
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import torch
    from _machine import header, machine_info

    from cnnzoo.train.hardware import default_threads

    args.threads = args.threads or default_threads()
    torch.set_num_threads(args.threads)
    args.litserve_python = None
    if not args.no_litserve:
        python = args.litserve_venv / "bin" / "python"
        if not python.exists():
            raise SystemExit(
                f"no LitServe environment at {args.litserve_venv}: run `python {__file__} "
                "--setup` first (or pass --no-litserve)"
            )
        args.litserve_python = python
    info = machine_info()
    print(header(info), flush=True)
    print(
        f"every server: {args.threads} torch thread(s); clients send one multipart image per "
        f"request; {args.rounds} turns of {args.seconds:g} s per server and concurrency",
        flush=True,
    )
    results = {"machine": info, "threads": args.threads, "models": []}
    with tempfile.TemporaryDirectory() as work:
        for model in args.models:
            results["models"].append(compare_model(model, args, Path(work)))
    results["load_average_after"] = os.getloadavg()
    print(f"\nload average at the end: {', '.join(f'{v:.2f}' for v in os.getloadavg())}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
