"""The Open Inference Protocol (v2), as KServe, Triton and MLServer speak it (REST, JSON).

A request's input is the model's input tensor, already preprocessed: float32, shape
``[N, C, H, W]`` (``[C, H, W]`` for one image), data flat in row-major order or nested. The
answer's outputs are ``logits`` (by default) and, when asked for, ``probabilities``, each
``[N, num_classes]``. Requests join the same batches as ``/v1`` predictions.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from starlette.responses import JSONResponse

import cnnzoo
from cnnzoo.serve.api_v1 import serve_options, served_models
from cnnzoo.serve.errors import ApiError, error_response
from cnnzoo.serve.models import ServedModel
from cnnzoo.serve.uploads import read_json

__all__ = ["router"]

router = APIRouter(prefix="/v2", tags=["open inference protocol v2"])
VERSION = "1"  # every model is served at one version
INPUT_NAME = "input"
OUTPUTS = ("logits", "probabilities")


@router.get("")
async def server_metadata() -> JSONResponse:
    return JSONResponse({"name": "cnnzoo", "version": cnnzoo.__version__, "extensions": []})


@router.get("/health/live")
async def live() -> JSONResponse:
    return JSONResponse({"live": True})


@router.get("/health/ready")
async def ready(request: Request) -> Any:
    models = served_models(request)
    models.start()
    if not models.ready:
        return error_response(503, f"not ready: {', '.join(models.not_ready())}")
    return JSONResponse({"ready": True})


def _model(request: Request, name: str, version: str | None) -> ServedModel:
    served = served_models(request).get(name)
    if version is not None and version != VERSION:
        raise ApiError(404, f"model {name} has no version {version!r}; it has version {VERSION}")
    return served


# The platform names Triton gives these runtimes.
PLATFORMS = {"pytorch": "pytorch", "onnxruntime": "onnxruntime_onnx", "openvino": "openvino"}


def _metadata(served: ServedModel) -> dict[str, Any]:
    classes = served.loaded.num_classes
    runtime = served.worker.runtime
    return {
        "name": served.name,
        "versions": [VERSION],
        "platform": PLATFORMS.get(runtime or "", "pytorch"),
        "inputs": [{"name": INPUT_NAME, "datatype": "FP32", "shape": [-1, *served.input_shape]}],
        "outputs": [{"name": n, "datatype": "FP32", "shape": [-1, classes]} for n in OUTPUTS],
        # What the protocol has no field for: the input is always float32, the arithmetic not.
        "parameters": {
            "precision": served.worker.precision,
            "runtime": runtime,
            "classes": list(served.loaded.class_names),
        },
    }


@router.get("/models/{name}")
@router.get("/models/{name}/versions/{version}")
async def model_metadata(name: str, request: Request, version: str | None = None) -> JSONResponse:
    return JSONResponse(_metadata(_model(request, name, version)))


@router.get("/models/{name}/ready")
@router.get("/models/{name}/versions/{version}/ready")
async def model_ready(name: str, request: Request, version: str | None = None) -> Any:
    served = _model(request, name, version)
    if not served.ready:
        return error_response(503, f"model {name} is not ready")
    return JSONResponse({"name": name, "ready": True})


def _input_tensors(document: Any, served: ServedModel, max_images: int) -> list[np.ndarray]:
    if not isinstance(document, dict) or not isinstance(document.get("inputs"), list):
        raise ApiError(
            400, 'an inference request is {"inputs": [{"name", "shape", "datatype", "data"}]}'
        )
    if len(document["inputs"]) != 1:
        raise ApiError(
            400, f"expected one input tensor ({INPUT_NAME}), got {len(document['inputs'])}"
        )
    tensor = document["inputs"][0]
    if not isinstance(tensor, dict):
        raise ApiError(400, "an input must be an object with name, shape, datatype and data")
    if tensor.get("datatype") != "FP32":
        raise ApiError(400, f"input datatype must be FP32, got {tensor.get('datatype')!r}")
    shape = tensor.get("shape")
    expected = list(served.input_shape)
    if not isinstance(shape, list) or not all(isinstance(v, int) and v >= 0 for v in shape):
        raise ApiError(400, f"input shape must be a list of sizes, got {shape!r}")
    if len(shape) == 3:
        shape = [1, *shape]
    if len(shape) != 4 or shape[1:] != expected or shape[0] < 1:
        raise ApiError(
            400,
            f"input shape must be [N, {', '.join(map(str, expected))}] "
            f"(preprocessed, as /v2/models/{served.name} says), got {shape}",
        )
    if shape[0] > max_images:
        raise ApiError(413, f"{shape[0]} images; at most {max_images} a request")
    try:
        data = np.asarray(tensor.get("data"), dtype=np.float32)
    except (TypeError, ValueError):
        raise ApiError(400, "input data must be numbers") from None
    if data.size != math.prod(shape):
        raise ApiError(
            400, f"input data has {data.size} values; shape {shape} needs {math.prod(shape)}"
        )
    if not np.isfinite(data).all():
        raise ApiError(400, "input data holds NaN or infinity")
    batch = data.reshape(shape)
    return [np.ascontiguousarray(item) for item in batch]


def _requested_outputs(document: dict[str, Any]) -> list[str]:
    asked = document.get("outputs")
    if not asked:
        return ["logits"]
    names = [item.get("name") if isinstance(item, dict) else None for item in asked]
    unknown = [n for n in names if n not in OUTPUTS]
    if unknown:
        raise ApiError(400, f"unknown output(s) {unknown}; this model has {', '.join(OUTPUTS)}")
    return names


@router.post("/models/{name}/infer")
@router.post("/models/{name}/versions/{version}/infer")
async def infer(name: str, request: Request, version: str | None = None) -> JSONResponse:
    """Logits (and probabilities) for a preprocessed float32 input tensor."""
    served = _model(request, name, version)
    options = serve_options(request)
    with served.worker.incoming():
        document = await read_json(request, request.app.state.limits.max_bytes)
        tensors = _input_tensors(document, served, options.max_images)
    wanted = _requested_outputs(document)
    results = await served.worker.infer(
        tensors=tensors, topk=1, outputs=True, timeout=options.timeout
    )
    classes = served.loaded.num_classes
    outputs = []
    for output in wanted:
        rows = [r.logits if output == "logits" else r.probabilities for r in results]
        data = [value for row in rows for value in row]  # type: ignore[union-attr]
        outputs.append(
            {"name": output, "datatype": "FP32", "shape": [len(rows), classes], "data": data}
        )
    answer: dict[str, Any] = {
        "model_name": served.name,
        "model_version": VERSION,
        "outputs": outputs,
    }
    if "id" in document:
        answer["id"] = document["id"]
    return JSONResponse(answer)
