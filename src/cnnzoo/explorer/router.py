"""The explorer's HTTP side: ``/`` (the page), ``/explorer/static/...`` (its files) and
``/explorer/api/...`` (what the page asks for), added to a ``cnnzoo serve`` app by
:func:`mount_explorer` (``create_app`` does it).

Uploads are read and checked by the server's own functions (size while streaming, type by magic
bytes, pixel count before decoding), errors have the server's format, and the API key guards
the data as it guards the API. The page, its files and the sample images are public: a browser
cannot send a key when it opens a page or shows an ``<img>``; the page asks for the key and
sends it with its requests.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles

from cnnzoo.errors import CnnzooError, UsageError
from cnnzoo.explorer import STATIC_DIR
from cnnzoo.explorer.samples import GROUP_TITLES, samples
from cnnzoo.explorer.service import DEFAULT_PER_PAGE, MAX_PER_PAGE, Explorer, NotFound
from cnnzoo.serve.errors import ApiError
from cnnzoo.serve.security import require_api_key
from cnnzoo.serve.uploads import decode_upload, read_body

__all__ = ["explorer_router", "mount_explorer"]

NO_STORE = {"Cache-Control": "no-store"}
SAMPLES = "/explorer/api/samples"


async def _answer(work: Awaitable[Any]) -> Any:
    """The explorer's own errors as the server's JSON errors."""
    try:
        return await work
    except NotFound as exc:
        raise ApiError(404, str(exc)) from None
    except UsageError as exc:
        raise ApiError(400, str(exc)) from None
    except CnnzooError as exc:
        raise ApiError(500, str(exc)) from None


def explorer_router(explorer: Explorer, public_paths: set[str] | None = None) -> APIRouter:
    """The explorer's routes; the paths it opens to everyone are added to ``public_paths``."""
    api = APIRouter(prefix="/explorer/api", dependencies=[Depends(require_api_key)])
    open_api = APIRouter(prefix="/explorer/api")

    @api.post("/images")
    async def add_image(request: Request, name: str = "the image") -> Any:
        """Keep one image for the page's later requests; refused as the API refuses it."""
        limits = request.app.state.limits
        data = await read_body(request, limits.max_bytes)
        loop = asyncio.get_running_loop()
        decoded = await loop.run_in_executor(None, decode_upload, data, name, 3, limits.max_pixels)
        stored = explorer.add_image(data, f"image/{decoded.format.lower()}")
        height, width = decoded.array.shape[:2]
        return {"id": stored.id, "bytes": len(data), "format": decoded.format,
                "height": height, "width": width}  # fmt: skip

    @api.get("/models/{name}/graph")
    async def graph(name: str) -> Any:
        return await _answer(explorer.graph(name))

    @api.get("/models/{name}/seen")
    async def seen(name: str, image: str) -> Any:
        png, size = await _answer(explorer.seen(name, image))
        return {"png": "data:image/png;base64," + base64.b64encode(png).decode(), **size}

    @api.get("/models/{name}/maps")
    async def maps(
        name: str,
        image: str,
        layer: str,
        page: int = Query(0, ge=0),
        per_page: int = Query(DEFAULT_PER_PAGE, ge=1, le=MAX_PER_PAGE),
    ) -> Any:
        return await _answer(explorer.maps(name, image, layer, page, per_page))

    @api.get("/models/{name}/unit")
    async def unit(
        name: str, image: str, layer: str, channel: int = Query(ge=0), y: int = Query(0, ge=0),
        x: int = Query(0, ge=0),
    ) -> Any:  # fmt: skip
        return await _answer(explorer.unit(name, image, layer, channel, y, x))

    @api.get("/models/{name}/explain")
    async def explain(
        name: str, image: str, method: str = "gradcam", layer: str | None = None,
        target: str = "top",
    ) -> Any:  # fmt: skip
        return await _answer(explorer.explain(name, image, method, layer or None, target))

    @api.get("/catalogue")
    async def catalogue(offset: int = Query(0, ge=0), limit: int = Query(8, ge=1, le=100)) -> Any:
        return await _answer(explorer.catalogue(offset, limit))

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
            raise ApiError(400, 'send JSON {"model": "NAME"}') from None
        return await _answer(explorer.load(model))

    @open_api.get("/samples")
    async def sample_list() -> Any:
        found = await asyncio.to_thread(samples)
        if public_paths is not None:  # each sample's own path opens once it exists
            public_paths.update(f"{SAMPLES}/{sample_id}" for sample_id in found)
        return {"groups": GROUP_TITLES, "samples": [s.to_dict() for s in found.values()]}

    @open_api.get("/samples/{sample_id}")
    async def sample(sample_id: str) -> Any:
        found = (await asyncio.to_thread(samples)).get(sample_id)
        if found is None:
            raise ApiError(404, f"no sample {sample_id!r}")
        return Response(found.data, media_type=found.media_type)

    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers=NO_STORE)

    router = APIRouter()
    router.include_router(api)
    router.include_router(open_api)
    # The page itself at /, outside the API prefix.
    router.add_api_route("/", index, include_in_schema=False)
    return router


def mount_explorer(app: FastAPI) -> Explorer:
    """Add the explorer to a ``cnnzoo serve`` app (``create_app`` calls this)."""
    from cnnzoo.data.folder import image_tensor

    limits = app.state.limits
    metrics = getattr(app.state, "metrics", None)

    def decode(data: bytes, channels: int) -> Any:
        return image_tensor(decode_upload(data, "the image", channels, limits.max_pixels).array)

    def latency_ms(name: str) -> float | None:
        if metrics is None:
            return None
        labels = {"model": name}
        # The mean forward pass the server timed for this model (its batches, warm).
        seconds = metrics.registry.get_sample_value("cnnzoo_inference_seconds_sum", labels)
        passes = metrics.registry.get_sample_value("cnnzoo_inference_seconds_count", labels)
        return seconds / passes * 1e3 if seconds and passes else None

    explorer = Explorer(app.state.models, decode, latency_ms=latency_ms)
    public = getattr(app.state, "public_paths", None)
    app.include_router(explorer_router(explorer, public))
    app.mount("/explorer/static", StaticFiles(directory=STATIC_DIR), name="explorer-static")
    if public is not None:
        public.update({"/", SAMPLES})
        public.update(
            f"/explorer/static/{path.relative_to(STATIC_DIR).as_posix()}"
            for path in STATIC_DIR.rglob("*")
            if path.is_file()
        )
    app.state.explorer = explorer
    return explorer
