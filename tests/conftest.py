"""Shared test setup: keep cnnzoo's caches out of the home directory of whoever runs the tests."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    os.environ["CNNZOO_CACHE"] = str(tmp_path_factory.mktemp("cnnzoo-cache"))


@pytest.fixture(autouse=True, scope="session")
def _one_thread_per_worker() -> None:
    """Under pytest-xdist (`make test` runs a worker per core), one torch thread per worker: two
    workers of two OpenMP threads each on 2 cores made a ResNet-1202 forward/backward 4x slower
    than one worker did alone. Tests that set their own thread count still do."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)


@pytest.fixture(scope="session")
def fashion_mnist() -> None:
    """Skips a test where Fashion-MNIST is not installed, except under CI (Debian's
    dataset-fashion-mnist is there: a missing dataset must fail the run)."""
    from cnnzoo.data import load_dataset
    from cnnzoo.errors import DataError

    try:
        load_dataset("fashion_mnist", val_split=0)
    except DataError:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")


# optimize/quantize pick OpenVINO where it measures faster; once loaded, it does not survive the
# forks later tests make (DataLoader workers, servers started as subprocesses), and the test
# process died of SIGSEGV in about half of the full runs. The tests that are about OpenVINO run
# it in a process of their own (tests/test_quantize.py).
os.environ.setdefault("CNNZOO_RUNTIMES", "onnxruntime")


def write_pets(root: Path, per_class: int, start: int = 0, side: int = 20) -> None:
    """A two-class image folder told apart by colour: 'cat' images reddish, 'dog' greenish
    (the notes' dogs-vs-cats layout, small enough to train in a second)."""
    from PIL import Image

    rng = np.random.default_rng(start)
    for channel, name in enumerate(("cat", "dog")):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(start, start + per_class):
            pixels = rng.integers(0, 120, (side, side, 3), dtype=np.uint8)
            pixels[..., channel] += 120
            Image.fromarray(pixels).save(root / name / f"{name}{i:03d}.png")


@pytest.fixture(scope="session")
def pets() -> Callable[..., None]:
    """:func:`write_pets`, for tests that need an image folder of their own."""
    return write_pets


@pytest.fixture()
def one_thread():
    """Correctness tests, not speed: one thread keeps them quick even on a busy 2-core machine,
    where two OpenMP threads per process can wait on each other for milliseconds per op."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
