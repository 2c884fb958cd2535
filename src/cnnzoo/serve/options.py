"""The server's settings, shared by :func:`cnnzoo.serve.create_app` and ``cnnzoo serve``."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from cnnzoo.errors import UsageError

__all__ = ["ServeOptions"]


@dataclass
class ServeOptions:
    """Batching, limits and access; every field is a ``create_app`` keyword and a flag."""

    max_batch: int = 8  # images in one forward pass
    max_wait_ms: float = 5.0  # how long a batch may wait to fill (only while more is coming)
    queue_size: int = 128  # images queued or computing per model before requests get 503
    timeout: float = 30.0  # seconds a request may wait for its answer (504 past it)
    max_upload_mb: float = 10.0  # request body, counted as it streams (413 past it)
    max_pixels: int = 40_000_000  # one image, from its header (413 past it, not decoded)
    max_images: int = 64  # images in one request
    api_key: str | None = None  # Authorization: Bearer KEY on all but the health endpoints
    cors_origins: tuple[str, ...] = ()  # origins allowed to call from a browser; none: CORS off
    optimize: bool = False  # serve cnnzoo.optimize's checked fast copy
    threads: int | None = None  # torch threads (default: the free cores, as `train` picks)
    device: str = "cpu"  # auto, cpu, cuda, cuda:N, mps

    @classmethod
    def from_kwargs(cls, options: dict[str, Any]) -> ServeOptions:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise UsageError(
                f"unknown serve option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        made = cls(**options)
        made.cors_origins = tuple(made.cors_origins or ())
        made.check()
        return made

    def check(self) -> None:
        for name in ("max_batch", "queue_size", "max_pixels", "max_images"):
            if int(getattr(self, name)) < 1:
                raise UsageError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("timeout", "max_upload_mb"):
            if not float(getattr(self, name)) > 0:
                raise UsageError(f"{name} must be positive, got {getattr(self, name)}")
        if self.max_wait_ms < 0:
            raise UsageError(f"max_wait_ms cannot be negative, got {self.max_wait_ms}")
        if self.threads is not None and self.threads < 1:
            raise UsageError(f"threads must be at least 1, got {self.threads}")
