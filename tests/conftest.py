"""Shared test setup: keep cnnzoo's caches out of the home directory of whoever runs the tests."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    os.environ["CNNZOO_CACHE"] = str(tmp_path_factory.mktemp("cnnzoo-cache"))


@pytest.fixture()
def one_thread():
    """Correctness tests, not speed: one thread keeps them quick even on a busy 2-core machine,
    where two OpenMP threads per process can wait on each other for milliseconds per op."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
