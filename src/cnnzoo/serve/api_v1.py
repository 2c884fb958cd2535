"""cnnzoo's own endpoints: health, the models, predict and explain."""

from __future__ import annotations

import base64
import io
import time
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Query, Request
from starlette.responses import JSONResponse

from cnnzoo.errors import CnnzooError
from cnnzoo.serve.errors import ApiError, error_response
from cnnzoo.serve.uploads import read_images

if TYPE_CHECKING:
    import numpy as np

    from cnnzoo.serve.models import ServedModel, ServedModels
    from cnnzoo.serve.options import ServeOptions

__all__ = ["router", "served_models", "serve_options"]

router = APIRouter()
EXPLAIN_METHODS = ("gradcam", "gradcam++", "integrated-gradients", "occlusion")
HEATMAP_SIDE = 32  # the explain answer's array: the map averaged down to at most this side
OVERLAY_SIDE = 224  # small inputs are enlarged to about this side in the overlay PNG


# The body is read by hand (streamed, counted, sniffed); this tells /docs what it may be.
IMAGE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {"type": "array", "items": {"type": "string", "format": "binary"}}
                    },
                }
            },
            "image/*": {"schema": {"type": "string", "format": "binary"}},
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "images": {"type": "array", "items": {"type": "string", "format": "byte"}}
                    },
                    "required": ["images"],
                }
            },
        },
    }
}


def served_models(request: Request) -> ServedModels:
    return request.app.state.models


def serve_options(request: Request) -> ServeOptions:
    return request.app.state.options


def _top(served: ServedModel, top: list[tuple[int, float]]) -> list[dict[str, Any]]:
    names = served.loaded.class_names
    return [{"label": names[i], "index": i, "probability": p} for i, p in top]


@router.get("/healthz", tags=["health"])
async def healthz() -> JSONResponse:
    """The process answers (whether or not its models are warm yet)."""
    return JSONResponse({"status": "alive"})


@router.get("/readyz", tags=["health"])
async def readyz(request: Request) -> Any:
    """Every model loaded and warmed up: 200; 503 until then (or when one failed)."""
    models = served_models(request)
    models.start()
    failed = [f"{s.name} ({s.worker.error})" for s in models if s.worker.error is not None]
    if failed:
        return error_response(503, f"failed to start: {', '.join(failed)}")
    waiting = models.not_ready()
    if waiting:
        return error_response(503, f"warming up: {', '.join(waiting)}", {"Retry-After": "1"})
    return JSONResponse({"status": "ready", "models": models.names()})


@router.get("/v1/models", tags=["models"])
async def list_models(request: Request) -> JSONResponse:
    """Each served model: name, classes, input size, channels, weights, parameters, MACs."""
    return JSONResponse({"models": [served.info() for served in served_models(request)]})


@router.get("/v1/models/{name}", tags=["models"])
async def model_info(name: str, request: Request) -> JSONResponse:
    return JSONResponse(served_models(request).get(name).info())


async def _decoded(request: Request, served: ServedModel) -> list[Any]:
    with served.worker.incoming():
        return await read_images(request, served.loaded.channels, request.app.state.limits)


@router.post("/v1/models/{name}/predict", tags=["inference"], openapi_extra=IMAGE_BODY)
async def predict(
    name: str,
    request: Request,
    topk: int = Query(5, ge=1, le=1000, description="classes per image, best first"),
) -> JSONResponse:
    """The top-k classes of each image: multipart files (several = a batch), an image body, or
    JSON ``{"images": ["<base64>", ...]}``."""
    start = time.perf_counter()
    served = served_models(request).get(name)
    images = await _decoded(request, served)
    decoded = time.perf_counter()
    results = await served.worker.infer(
        [image.array for image in images], topk=topk, timeout=serve_options(request).timeout
    )
    predictions = [
        {
            "image": image.name,
            "topk": _top(served, result.top),
            "queue_ms": round(result.queue_ms, 3),
            "inference_ms": round(result.inference_ms, 3),
            "batch_size": result.batch_size,
        }
        for image, result in zip(images, results, strict=True)
    ]
    return JSONResponse(
        {
            "model": served.name,
            "predictions": predictions,
            "timings_ms": {
                "read_and_decode": round((decoded - start) * 1e3, 3),
                "queue": round(max(r.queue_ms for r in results), 3),
                "inference": round(max(r.inference_ms for r in results), 3),
                "total": round((time.perf_counter() - start) * 1e3, 3),
            },
        }
    )


def _target_index(target: str, top_index: int, class_names: list[str]) -> int:
    if target == "top":
        return top_index
    if target in class_names:
        return class_names.index(target)
    if target.isdigit() and int(target) < len(class_names):
        return int(target)
    raise ApiError(
        400, f"target {target!r}: use top, a class index below {len(class_names)} or a class name"
    )


def _overlay_png(image: Any, heat: Any) -> bytes:
    """The image as the model saw it with the heat map blended over it, as PNG bytes."""
    import numpy as np
    from matplotlib import colormaps
    from PIL import Image

    from cnnzoo.analysis.plots import HEAT_CMAP

    rgb = image.numpy()
    rgb = np.repeat(rgb, 3, axis=0) if rgb.shape[0] == 1 else rgb
    rgb = rgb.transpose(1, 2, 0).astype(np.float32) / 255
    colours = colormaps[HEAT_CMAP](heat.numpy())[..., :3]
    blended = (0.55 * rgb + 0.45 * colours).clip(0, 1)
    picture = Image.fromarray((blended * 255).round().astype(np.uint8))
    scale = max(1, round(OVERLAY_SIDE / max(picture.size)))
    if scale > 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    out = io.BytesIO()
    picture.save(out, format="PNG")
    return out.getvalue()


def _explain_on_worker(
    served: ServedModel,
    arrays: list[np.ndarray],
    method: str,
    layer: str | None,
    target: str,
    topk: int,
) -> tuple[str | None, list[dict[str, Any]]]:
    """Runs on the model's worker thread: forward, attribution, overlay; (layer used, answers)."""
    import torch
    import torch.nn.functional as F

    from cnnzoo.analysis.explain import LAYER_METHODS, attribution_maps, resolve_layer
    from cnnzoo.data.folder import image_tensor

    loaded = served.loaded
    model = loaded.model  # the eager model: an optimized copy has no gradients
    batch = loaded.prepare([image_tensor(array) for array in arrays])
    batch = batch.to(next(model.parameters()).device)
    with torch.inference_mode():
        output = model(batch)
        while isinstance(output, (tuple, list)):
            output = output[0]
        probs = F.softmax(output.float(), dim=1).cpu()
    k = min(topk, probs.shape[1])
    top_p, top_i = probs.topk(k, dim=1)
    targets = [_target_index(target, int(row[0]), loaded.class_names) for row in top_i]
    used = resolve_layer(model, layer) if method in LAYER_METHODS else None
    heat = attribution_maps(model, batch, targets, method, used).cpu()
    shown = loaded.shown(batch)
    side = max(heat.shape[-2:])
    small = (
        F.adaptive_avg_pool2d(heat[:, None], HEATMAP_SIDE)[:, 0] if side > HEATMAP_SIDE else heat
    )
    answers = []
    for row, target_index in enumerate(targets):
        answers.append(
            {
                "target": {
                    "label": loaded.class_names[target_index],
                    "index": target_index,
                    "probability": float(probs[row, target_index]),
                },
                "topk": _top(
                    served, list(zip(top_i[row].tolist(), top_p[row].tolist(), strict=True))
                ),
                "heatmap": [[round(float(v), 4) for v in line] for line in small[row]],
                "overlay_png": base64.b64encode(_overlay_png(shown[row], heat[row])).decode(),
            }
        )
    return used, answers


@router.post("/v1/models/{name}/explain", tags=["inference"], openapi_extra=IMAGE_BODY)
async def explain(
    name: str,
    request: Request,
    method: str = Query("gradcam", description=", ".join(EXPLAIN_METHODS)),
    layer: str | None = Query(None, description="module name (default: the deepest stage)"),
    target: str = Query("top", description="top, a class index or a class name"),
    topk: int = Query(5, ge=1, le=1000),
) -> JSONResponse:
    """Where the network looked: per image the heat map (a PNG overlay, base64, and an array of
    at most 32x32 in [0, 1]), the top-k, and the layer used."""
    start = time.perf_counter()
    if method not in EXPLAIN_METHODS:
        raise ApiError(400, f"unknown method {method!r}; choose from {', '.join(EXPLAIN_METHODS)}")
    served = served_models(request).get(name)
    served.require_module("explain")  # create_app's ModuleGuard says so before the upload
    images = await _decoded(request, served)
    arrays = [image.array for image in images]
    try:
        used, answers = await served.worker.call(
            _explain_on_worker, served, arrays, method, layer, target, topk,
            timeout=serve_options(request).timeout,
        )  # fmt: skip
    except CnnzooError as exc:  # an unknown layer, a layer without spatial maps
        raise ApiError(400, str(exc)) from None
    for image, answer in zip(images, answers, strict=True):
        answer["image"] = image.name
    return JSONResponse(
        {
            "model": served.name,
            "method": method,
            "layer": used,
            "explanations": answers,
            "timings_ms": {"total": round((time.perf_counter() - start) * 1e3, 3)},
        }
    )
