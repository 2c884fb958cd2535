"""Shared test setup: keep cnnzoo's caches out of the home directory of whoever runs the tests."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    os.environ["CNNZOO_CACHE"] = str(tmp_path_factory.mktemp("cnnzoo-cache"))
