"""``create_app``: the ASGI application behind ``cnnzoo serve``."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable, Mapping
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response

import cnnzoo
from cnnzoo.inference import InferenceModel
from cnnzoo.serve import api_v1, api_v2
from cnnzoo.serve.errors import install_error_handlers
from cnnzoo.serve.guard import ModuleGuard
from cnnzoo.serve.metrics import MetricsMiddleware, ServeMetrics
from cnnzoo.serve.models import ModelSource, ServedModels, parse_source
from cnnzoo.serve.options import ServeOptions
from cnnzoo.serve.security import PUBLIC_PATHS, ApiKeyMiddleware
from cnnzoo.serve.uploads import UploadLimits

__all__ = ["create_app"]

Source = str | Path | InferenceModel | ModelSource


def _sources(sources: Source | Iterable[Source] | Mapping[str, Source]) -> list[ModelSource]:
    if isinstance(sources, (str, Path, InferenceModel, ModelSource)):
        sources = [sources]
    if isinstance(sources, Mapping):
        specs = []
        for name, source in sources.items():
            spec = source if isinstance(source, ModelSource) else parse_source(source)
            spec.name = name
            specs.append(spec)
        return specs
    return [s if isinstance(s, ModelSource) else parse_source(s) for s in sources]


def create_app(
    sources: Source | Iterable[Source] | Mapping[str, Source], **options: Any
) -> FastAPI:
    """The server as an ASGI app, its models loaded (their workers warm up when it starts).

    ``sources``: what ``cnnzoo serve`` takes (``"runs/r20"``, ``"lenet5:digits"``,
    ``"mnist=runs/lenet"``, a checkpoint path, an ``.onnx`` file cnnzoo wrote),
    :class:`~cnnzoo.inference.InferenceModel` objects, or a mapping from the name to serve under
    to either. ``options`` are :class:`~cnnzoo.serve.options.ServeOptions` fields
    (``max_batch=8``, ``api_key=...``, ``int8=True, samples=64``).

    The served models are ``app.state.models`` (:class:`~cnnzoo.serve.models.ServedModels`);
    ``/`` is the explorer page (:mod:`cnnzoo.explorer`). Mounted inside another app (whose
    lifespan does not reach it) the workers start with the first request.
    """
    settings = ServeOptions.from_kwargs(options)
    from cnnzoo.train.hardware import resolve_device

    device = resolve_device(settings.device)
    metrics = ServeMetrics()
    models = ServedModels(
        {
            "max_batch": settings.max_batch,
            "max_wait_ms": settings.max_wait_ms,
            "queue_size": settings.queue_size,
            "threads": settings.threads,
            "device": device,
            "optimize": settings.optimize,
            "int8": settings.quantize_options(),
        },
        metrics,
        calibration={
            "spec": settings.calibration,
            "samples": settings.samples,
            "validation_samples": settings.val_samples,
        },
    )
    for spec in _sources(sources):
        models.load(spec)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        models.start()
        try:
            yield
        finally:
            models.stop()

    app = FastAPI(
        title="cnnzoo",
        version=cnnzoo.__version__,
        description="Classic CNNs behind an HTTP API: cnnzoo's /v1 endpoints and the Open "
        "Inference Protocol (v2).",
        lifespan=lifespan,
    )
    app.state.models = models
    app.state.options = settings
    app.state.metrics = metrics
    app.state.api_key = settings.api_key
    app.state.limits = UploadLimits.of(
        settings.max_upload_mb, settings.max_pixels, settings.max_images
    )
    # A router added later may open its own paths (a page, its assets) by adding them here.
    app.state.public_paths = set(PUBLIC_PATHS)
    install_error_handlers(app)
    app.include_router(api_v1.router)
    app.include_router(api_v2.router)

    # The explorer page at / and its endpoints under /explorer (cnnzoo.explorer).
    from cnnzoo.explorer.router import mount_explorer

    mount_explorer(app)

    @app.get("/metrics", tags=["health"], include_in_schema=True)
    async def prometheus_metrics(request: Request) -> Response:
        """Prometheus text: requests and errors by model and code, latency, batch sizes,
        queue depth."""
        return Response(metrics.render(), media_type=metrics.content_type)

    # The last added runs first: metrics see every answer, CORS answers preflights before the
    # key is asked for (browsers send none with them), the key guards everything else; an
    # ONNX-graph model refuses the endpoints that need its PyTorch module.
    app.add_middleware(ModuleGuard, models=models)
    if settings.api_key:
        app.add_middleware(
            ApiKeyMiddleware, key=settings.api_key, public_paths=app.state.public_paths
        )
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )
    app.add_middleware(MetricsMiddleware, metrics=metrics, served=models.__contains__)
    return app
