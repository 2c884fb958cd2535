"""Response times of the explorer's endpoints for big networks (default ResNet-50 and VGG-16) on
this machine, as the page sees them: a real ``cnnzoo serve`` on 127.0.0.1, plain HTTP requests.

For each model and each of ``--images`` photos (scikit-learn's two, then shifted crops of them, so
no answer comes from the cache by accident), it times what a user's clicks cost: the layer graph
(first request, then again), what the network saw, the API's top-5, Grad-CAM, the activation maps
of a shallow, a middle and the deepest layer (a first page, computed; the next page, from the
cached layer) and one unit's arithmetic. Medians over the images; the first request of a layer
is the cost of running the network up to it, a repeated one the cost of the cache.

    python benchmarks/explorer.py                      # resnet50 vgg16, 4 images
    python benchmarks/explorer.py --models resnet18 --images 2 --out explorer.json

The server starts with LeNet-5 only; each measured model is then loaded the way the page loads
a zoo model (``POST /explorer/api/models``): with its weights when they are on this machine,
otherwise freshly initialised (the times are the same: the same layers run). Nothing is
downloaded (``CNNZOO_OFFLINE=1``).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import header, load_average, machine_info  # noqa: E402

# Layers timed per model: (shallow, middle, deepest stage output) and the unit whose arithmetic
# is asked for (a convolution in the middle).
LAYERS = {
    "resnet50": ("conv1", "layer2.3.conv2", "layer4.2.relu:3", "layer3.0.conv2"),
    "vgg16": ("features.0", "features.14", "features.29", "features.17"),
    "resnet18": ("conv1", "layer2.1.conv2", "layer4.1.relu:2", "layer3.0.conv2"),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["resnet50", "vgg16"],
                        choices=sorted(LAYERS))  # fmt: skip
    parser.add_argument("--images", type=int, default=4, help="photos per model (default 4)")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.images < 1:
        parser.error("--images must be >= 1")
    return args


def photos(count: int) -> list[bytes]:
    from PIL import Image
    from sklearn.datasets import load_sample_images

    found = []
    for index in range(count):
        array = load_sample_images().images[index % 2]
        shift = 37 * (index // 2)
        image = Image.fromarray(array[shift:, shift:])
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=92)
        found.append(buffer.getvalue())
    return found


class Server:
    def __init__(self, sources: list[str]) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "cnnzoo", "serve", *sources, "--port", str(self.port)]
        env = {**os.environ, "CNNZOO_OFFLINE": "1"}
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE, env=env)  # fmt: skip
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"cnnzoo serve exited: {self.process.stderr.read().decode()}")
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=5) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.5)
        raise SystemExit("cnnzoo serve was not ready in 10 minutes")

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=60)

    def time(self, path: str, params: dict | None = None, body: bytes | None = None,
             content_type: str = "image/jpeg") -> tuple[float, dict]:  # fmt: skip
        """(milliseconds, answer) of one request."""
        url = f"{self.url}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        request = urllib.request.Request(url, data=body, method="POST" if body else "GET")
        if body:
            request.add_header("Content-Type", content_type)
        start = time.perf_counter()
        with urllib.request.urlopen(request, timeout=600) as response:
            payload = response.read()
        elapsed = time.perf_counter() - start
        return elapsed * 1000, json.loads(payload)


def measure(server: Server, model: str, images: list[bytes]) -> dict[str, list[float]]:
    shallow, middle, deep, unit_layer = LAYERS[model]
    api = f"/explorer/api/models/{model}"
    times: dict[str, list[float]] = {}

    def note(name: str, ms: float) -> None:
        times.setdefault(name, []).append(ms)

    for number, data in enumerate(images):
        if number == 0:
            note("layer graph, first request", server.time(f"{api}/graph")[0])
        note("layer graph, again", server.time(f"{api}/graph")[0])
        _, stored = server.time("/explorer/api/images", body=data)
        image = stored["id"]
        note("top-5 (the API's predict)", server.time(f"/v1/models/{model}/predict",
                                                      {"topk": 5}, body=data)[0])  # fmt: skip
        note("what the network saw", server.time(f"{api}/seen", {"image": image})[0])
        note("Grad-CAM (deepest stage)", server.time(f"{api}/explain", {"image": image})[0])
        note("Grad-CAM, again (cached)", server.time(f"{api}/explain", {"image": image})[0])
        for label, layer in (("shallow", shallow), ("middle", middle), ("deepest", deep)):
            ms, first = server.time(f"{api}/maps", {"image": image, "layer": layer})
            note(f"maps {layer} ({label}), first page", ms)
            if first["pages"] > 1:
                params = {"image": image, "layer": layer, "page": 1}
                note(f"maps {layer} ({label}), next page", server.time(f"{api}/maps", params)[0])
        params = {"image": image, "layer": unit_layer, "channel": 0, "y": 3, "x": 3}
        note(f"unit arithmetic {unit_layer}", server.time(f"{api}/unit", params)[0])
    return times


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    info = machine_info()
    print(header(info))
    images = photos(args.images)
    server = Server(["lenet5:digits"])
    results = {}
    try:
        for model in args.models:
            ms, loaded = server.time("/explorer/api/models", body=json.dumps({"model": model})
                                     .encode(), content_type="application/json")  # fmt: skip
            print(f"\n{loaded['message']} ({ms / 1e3:.1f} s)")
            times = measure(server, model, images)
            results[model] = {name: statistics.median(values) for name, values in times.items()}
            print(f"\n{model} ({args.images} images; median ms)")
            for name, ms in results[model].items():
                print(f"  {name:48s} {ms:8.1f}")
    finally:
        server.stop()
    after = load_average()
    print(f"\nload average after: {after[0]:.1f}" if after else "")
    if args.out:
        record = {"machine": info, "models": results, "images": args.images,
                  "load_average_after": load_average()}  # fmt: skip
        args.out.write_text(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
