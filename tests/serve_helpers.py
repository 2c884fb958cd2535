"""What the serve tests share: a real `cnnzoo serve` process on a free 127.0.0.1 port, Fashion-MNIST
test images as PNG files, and small crafted uploads."""

from __future__ import annotations

import io
import json
import os
import socket
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
FASHION_DIR = Path(os.environ.get("CNNZOO_FASHION_DIR", "/usr/share/datasets/fashion-mnist"))
START_TIMEOUT = 120.0  # a loaded 2-core machine takes seconds just to import torch


def fashion_pngs(directory: Path, count: int) -> list[Path]:
    """The first ``count`` Fashion-MNIST test images, written as PNG files."""
    from cnnzoo.data.idx import read_idx

    images_file = FASHION_DIR / "t10k-images-idx3-ubyte.gz"
    if not images_file.is_file():
        if os.environ.get("CI") == "true":
            raise FileNotFoundError(images_file)
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
    images = read_idx(images_file, ndim=3)[:count]
    paths = []
    for index, image in enumerate(images):
        path = directory / f"fashion-{index:03d}.png"
        Image.fromarray(np.asarray(image)).save(path)
        paths.append(path)
    return paths


def png_bytes(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="PNG")
    return out.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels (its data is one row)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


class Server:
    """`cnnzoo serve ARGS --port 0` in a subprocess; ``url`` once it is ready."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        environment = {**os.environ, **(env or {})}
        src = str(REPO / "src")
        environment["PYTHONPATH"] = os.pathsep.join(
            p for p in (src, environment.get("PYTHONPATH", "")) if p
        )
        self.args = args
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cnnzoo", "serve", *args, "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=environment,
        )
        self.lines: list[str] = []
        self.url = self._wait_for_url()

    def _wait_for_url(self) -> str:
        deadline = time.monotonic() + START_TIMEOUT
        assert self.process.stdout is not None
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                _, err = self.process.communicate(timeout=10)
                raise AssertionError(f"cnnzoo serve ended: {self.process.returncode}\n{err}")
            self.lines.append(line.rstrip("\n"))
            if line.startswith("cnnzoo serve: http://"):
                return line.split()[2]
        raise AssertionError(f"no URL within {START_TIMEOUT} s: {self.lines}")

    def wait_ready(self, headers: dict[str, str] | None = None) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if httpx.get(f"{self.url}/readyz", headers=headers, timeout=10).status_code == 200:
                return
            time.sleep(0.1)
        raise AssertionError("the server never became ready")

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS")

    def stop(self) -> tuple[int, str, str]:
        if self.process.poll() is None:
            self.process.terminate()
        out, err = self.process.communicate(timeout=60)
        return self.process.returncode, out, err


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one Prometheus sample (0 when absent)."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        series, _, label_text = head.partition("{")
        if series != name:
            continue
        found = dict(
            part.split("=", 1) for part in label_text.rstrip("}").split(",") if "=" in part
        )
        if all(found.get(k) == f'"{v}"' for k, v in labels.items()):
            total += float(value)
    return total


def raw_exchange(port: int, request: bytes, timeout: float = 30) -> tuple[int, dict]:
    """Send bytes as they are (headers no client library would send) and read one JSON answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        received = b""
        while True:
            head, sep, body = received.partition(b"\r\n\r\n")
            if sep:
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                if len(body) >= length:
                    return int(head.split()[1]), json.loads(body[:length])
            chunk = sock.recv(65536)
            if not chunk:
                raise AssertionError(f"connection closed after {received[:300]!r}")
            received += chunk


def without_cnnzoo_metadata(path: Path, out: Path) -> Path:
    """A copy of an ONNX file as another tool would have written it: no cnnzoo metadata."""
    import onnx

    from cnnzoo.runtime import METADATA_KEY

    model = onnx.load(str(path))
    kept = [p for p in model.metadata_props if p.key != METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    onnx.save(model, str(out))
    return out


def read_until(server: Server, prefix: str, timeout: float = START_TIMEOUT) -> str:
    """The next line of the server's output that starts with ``prefix`` (kept in ``lines``)."""
    assert server.process.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = server.process.stdout.readline()
        if not line:
            raise AssertionError(f"cnnzoo serve ended before {prefix!r}: {server.lines}")
        server.lines.append(line.rstrip("\n"))
        if line.startswith(prefix):
            return line.rstrip("\n")
    raise AssertionError(f"no {prefix!r} within {timeout} s: {server.lines}")
