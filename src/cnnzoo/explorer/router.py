"""The explorer's HTTP endpoints (``/explorer/api/...``), its static files and ``/``.

Mounted by ``cnnzoo.serve.create_app``; uploads, errors and the API key follow the server's own
rules (its functions are passed in), so the page's requests are checked exactly like the API's.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from cnnzoo.errors import CnnzooError, UsageError
from cnnzoo.explorer import STATIC_DIR
from cnnzoo.explorer.samples import GROUP_TITLES, samples
from cnnzoo.explorer.service import DEFAULT_PER_PAGE, MAX_PER_PAGE, Explorer, NotFound

ReadUpload = Callable[[Request], Awaitable[tuple[bytes, str]]]  # -> (file bytes, media type)

NO_STORE = {"Cache-Control": "no-store"}


def error_response(message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status_code=status)


def _status(exc: Exception) -> int:
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, UsageError):
        return 400
    return 500


def explorer_router(
    explorer: Explorer,
    read_upload: ReadUpload,
    *,
    dependencies: list[Any] | None = None,
) -> APIRouter:
    """The explorer's API routes; ``read_upload`` reads and checks one uploaded image the way
    the server's predict endpoint does (size, type by magic bytes, pixel count) and raises the
    server's own HTTP errors; ``dependencies`` (the API key check) guard every data route."""
    api = APIRouter(prefix="/explorer/api", dependencies=[Depends(d) for d in dependencies or []])
    # Sample images are public data (scikit-learn's and the test sets'): open, so that <img>
    # tags, which cannot send a key, can show them.
    samples_api = APIRouter(prefix="/explorer/api")

    async def guarded(work: Awaitable[Any]) -> Any:
        try:
            return await work
        except (CnnzooError, KeyError) as exc:
            message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
            status = 404 if isinstance(exc, KeyError) else _status(exc)
            return error_response(str(message), status)

    @api.post("/images")
    async def add_image(request: Request) -> Any:
        data, media_type = await read_upload(request)
        stored = explorer.add_image(data, media_type)
        return {"id": stored.id, "bytes": len(data), "media_type": media_type}

    @api.get("/models/{name}/graph")
    async def graph(name: str) -> Any:
        return await guarded(explorer.graph(name))

    @api.get("/models/{name}/seen")
    async def seen(name: str, image: str) -> Any:
        async def work() -> Any:
            png, size = await explorer.seen(name, image)
            return {"png": "data:image/png;base64," + base64.b64encode(png).decode(), **size}

        return await guarded(work())

    @api.get("/models/{name}/maps")
    async def maps(
        name: str,
        image: str,
        layer: str,
        page: int = 0,
        per_page: int = Query(DEFAULT_PER_PAGE, ge=1, le=MAX_PER_PAGE),
    ) -> Any:
        return await guarded(explorer.maps(name, image, layer, page, per_page))

    @api.get("/models/{name}/unit")
    async def unit(name: str, image: str, layer: str, channel: int, y: int = 0, x: int = 0) -> Any:
        return await guarded(explorer.unit(name, image, layer, channel, y, x))

    @api.get("/models/{name}/explain")
    async def explain(
        name: str, image: str, method: str = "gradcam", layer: str | None = None,
        target: str = "top",
    ) -> Any:  # fmt: skip
        return await guarded(explorer.explain(name, image, method, layer or None, target))

    @api.get("/catalogue")
    async def catalogue(offset: int = 0, limit: int = Query(8, ge=1, le=66)) -> Any:
        return await guarded(explorer.catalogue(offset, limit))

    @api.get("/zoo")
    async def zoo() -> Any:
        from cnnzoo.analysis.zoo_table import selection_guide
        from cnnzoo.registry import list_models

        names = list_models()
        return {"models": names, "presets": selection_guide(names)}

    @api.post("/models")
    async def load(request: Request) -> Any:
        try:
            body = await request.json()
            model = str(body["model"])
        except (ValueError, KeyError, TypeError):
            return error_response('send JSON {"model": "NAME"}', 400)
        return await guarded(explorer.load(model))

    @samples_api.get("/samples")
    async def sample_list() -> Any:
        found = await asyncio.to_thread(samples)
        return {
            "groups": GROUP_TITLES,
            "samples": [sample.to_dict() for sample in found.values()],
        }

    @samples_api.get("/samples/{sample_id}")
    async def sample(sample_id: str) -> Any:
        found = (await asyncio.to_thread(samples)).get(sample_id)
        if found is None:
            return error_response(f"no sample {sample_id!r}", 404)
        return Response(found.data, media_type=found.media_type)

    router = APIRouter()
    router.include_router(api)
    router.include_router(samples_api)
    return router


def page_routes(router: APIRouter | None = None) -> APIRouter:
    """``/`` (the page) and its files under ``/explorer/static``. The page itself holds no data,
    so it is open even with an API key: it asks for the key before its first request."""
    pages = router or APIRouter()

    @pages.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers=NO_STORE)

    return pages


def mount_static(app: Any) -> None:
    app.mount("/explorer/static", StaticFiles(directory=STATIC_DIR), name="explorer-static")
