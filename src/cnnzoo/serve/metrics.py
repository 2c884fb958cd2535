"""Prometheus metrics of one app (its own registry, so that several apps in one process, as in
tests, never collide), and the ASGI middleware that counts every request."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from cnnzoo.serve.errors import CLIENT_CLOSED

__all__ = ["MetricsMiddleware", "ServeMetrics"]

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)


class ServeMetrics:
    """Requests and errors by model, endpoint and code; latency, queue-wait, inference-time and
    batch-size histograms; queue depth."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        labels = ("model", "endpoint", "code")
        self.requests = Counter(
            "cnnzoo_requests", "HTTP requests answered", labels, registry=self.registry
        )
        self.errors = Counter(
            "cnnzoo_request_errors", "HTTP requests answered with an error code (>= 400)",
            labels, registry=self.registry,
        )  # fmt: skip
        self.latency = Histogram(
            "cnnzoo_request_duration_seconds", "Time from the request's start to its answer",
            ("model", "endpoint"), buckets=_LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.batch_size = Histogram(
            "cnnzoo_batch_size", "Images per forward pass", ("model",),
            buckets=_BATCH_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.inference = Histogram(
            "cnnzoo_inference_seconds", "Preprocessing and forward pass of one batch",
            ("model",), buckets=_LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.queue_wait = Histogram(
            "cnnzoo_queue_wait_seconds", "Time an image waited for its batch", ("model",),
            buckets=_LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.images = Counter(
            "cnnzoo_images", "Images classified", ("model",), registry=self.registry
        )
        self.queue_depth = Gauge(
            "cnnzoo_queue_depth", "Images waiting for a batch", ("model",), registry=self.registry
        )

    def watch_queue(self, model: str, depth: Callable[[], float]) -> None:
        self.queue_depth.labels(model).set_function(depth)

    def batch(self, model: str, size: int, seconds: float, waits: Iterable[float]) -> None:
        """One forward pass of ``size`` images (called from the model's worker thread)."""
        self.batch_size.labels(model).observe(size)
        self.inference.labels(model).observe(seconds)
        self.images.labels(model).inc(size)
        wait = self.queue_wait.labels(model)
        for value in waits:
            wait.observe(value)

    def request(self, model: str, endpoint: str, code: int, seconds: float) -> None:
        self.requests.labels(model, endpoint, str(code)).inc()
        if code >= 400:
            self.errors.labels(model, endpoint, str(code)).inc()
        self.latency.labels(model, endpoint).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Pure ASGI (no per-request task): counts each HTTP request by its route's template (not
    its raw path, which would let anyone create series) and by the served model it names."""

    def __init__(self, app: Any, metrics: ServeMetrics, served: Callable[[str], bool]) -> None:
        self.app, self.metrics, self.served = app, metrics, served

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = CLIENT_CLOSED  # until an answer starts: a client that left never gets one

        async def sending(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception:
            status = 500
            raise
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            name = (scope.get("path_params") or {}).get("name", "")
            model = name if name and self.served(name) else ""
            self.metrics.request(model, endpoint, status, time.perf_counter() - start)
