"""What the explorer computes, cached per image and model.

Every torch call for a model runs on that model's own inference worker (``ServedModel.call``),
so it never runs beside the model's batched inference and never oversubscribes the cores;
encoding PNGs and JSON happens off the worker. Only the layer asked for is computed: the traced
graph is cut after it (:func:`cnnzoo.analysis.network_graph.layer_values`). Results are kept
in byte-bounded LRU caches keyed by model, image and layer, so paging through a layer's maps,
clicking units and switching back to a layer cost no second forward pass.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import torch

from cnnzoo.analysis.activations import rank_channels, unit_arithmetic, unit_field
from cnnzoo.analysis.explain import LAYER_METHODS, METHODS, attribution_maps, resolve_layer
from cnnzoo.analysis.network_graph import NetworkGraph, layer_values, network_graph
from cnnzoo.errors import CnnzooError, UsageError
from cnnzoo.explorer import render
from cnnzoo.inference import InferenceModel
from cnnzoo.serve.api_v1 import _target_index as target_index
from cnnzoo.serve.worker import TORCH_THREAD

T = TypeVar("T")

MAX_PER_PAGE = 128
DEFAULT_PER_PAGE = 32
# Map pixels per page: 16 maps of 224 x 224 (VGG's first layers), 32 of 112 x 112. Bigger pages
# only make the page wait longer for maps nobody has scrolled to yet.
PAGE_PIXELS = 16 * 224 * 224


class NotFound(CnnzooError):
    """An unknown image, layer or model (HTTP 404)."""


class ServedModel(Protocol):
    """One model of the server, as the explorer uses it (``cnnzoo.serve.ServedModel``)."""

    name: str
    loaded: InferenceModel

    def call(self, fn: Callable[..., T], *args: Any) -> Awaitable[T]:
        """Run ``fn`` on the model's worker thread, between its inference batches."""
        ...


class ModelProvider(Protocol):
    """The served models (``cnnzoo.serve.ServedModels``, ``app.state.models``)."""

    def get(self, name: str) -> ServedModel: ...  # a 404 error for an unknown name
    def names(self) -> list[str]: ...
    async def add(self, source: Any, name: str | None = None) -> ServedModel: ...


class ByteCache:
    """A thread-safe LRU cache bounded by the bytes of what it holds."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[Any, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: Any) -> Any:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            self._items.move_to_end(key)
            return item[0]

    def put(self, key: Any, value: Any, size: int) -> None:
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            if size > self.max_bytes:
                return
            self._items[key] = (value, size)
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, (_, dropped) = self._items.popitem(last=False)
                self._bytes -= dropped

    def drop(self, match: Callable[[Any], bool]) -> None:
        with self._lock:
            for key in [key for key in self._items if match(key)]:
                self._bytes -= self._items.pop(key)[1]

    @property
    def nbytes(self) -> int:
        return self._bytes


def _nbytes(*tensors: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


async def _on_torch_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn`` on the server's torch thread, between batches (see cnnzoo.serve.worker: torch work
    on any other thread would start a second OpenMP team and slow every batch after it)."""
    return await asyncio.wrap_future(TORCH_THREAD.submit(fn, *args, **kwargs))


@dataclass
class StoredImage:
    id: str
    data: bytes
    media_type: str


@dataclass
class _Session:
    """What the explorer keeps for one loaded model."""

    token: int  # names the model in cache keys (an id() could be reused by a later model)
    graph: NetworkGraph | None = None
    cuts: dict[str, Any] = field(default_factory=dict)  # layer -> the graph cut after it
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


Decode = Callable[[bytes, int], torch.Tensor]  # file bytes, channels -> uint8 (C, H, W)


class Explorer:
    """The computations behind the page's endpoints."""

    def __init__(
        self,
        models: ModelProvider,
        decode: Decode,
        *,
        latency_ms: Callable[[str], float | None] = lambda name: None,
        cache_mb: int = 256,
        image_bytes: int = 128 * 2**20,
    ) -> None:
        self.models = models
        self.decode = decode
        self.latency_ms = latency_ms  # the server's measured time per image, by model
        self.images = ByteCache(image_bytes)  # uploads by digest, the oldest forgotten first
        self.values = ByteCache(cache_mb * 2**20)  # layer outputs and inputs, prepared inputs
        self.results = ByteCache(64 * 2**20)  # finished answers: map pages, overlays
        # Per model object: a model that is replaced or unloaded takes its session with it.
        self._sessions: weakref.WeakKeyDictionary[torch.nn.Module, _Session] = (
            weakref.WeakKeyDictionary()
        )
        self._tokens = itertools.count()
        self._catalogue_lock = asyncio.Lock()

    # --- images ------------------------------------------------------------------------------

    def add_image(self, data: bytes, media_type: str) -> StoredImage:
        """Keep an upload (already checked by the server's upload rules) under its digest."""
        image_id = hashlib.sha256(data).hexdigest()[:24]
        stored = self.images.get(image_id) or StoredImage(image_id, data, media_type)
        self.images.put(image_id, stored, len(data))
        return stored

    def image(self, image_id: str) -> StoredImage:
        stored = self.images.get(image_id)
        if stored is None:
            raise NotFound(
                f"no image {image_id!r} here (the server keeps the most recent "
                f"{self.images.max_bytes / 2**20:g} MB of them); send it again"
            )
        return stored

    # --- per model --------------------------------------------------------------------------

    def _session(self, served: ServedModel) -> _Session:
        model = served.loaded.model
        session = self._sessions.get(model)
        if session is None:
            session = self._sessions[model] = _Session(next(self._tokens))
        return session

    def _key(self, served: ServedModel, *parts: Any) -> tuple[Any, ...]:
        return (self._session(served).token, *parts)

    async def _graph(self, served: ServedModel) -> NetworkGraph:
        session = self._session(served)
        async with session.lock:
            if session.graph is None:
                loaded = served.loaded
                size = (loaded.channels, *loaded.input_size)
                try:
                    session.graph = await served.call(lambda: network_graph(loaded.model, size))
                except Exception as exc:  # torch.fx cannot trace some user models
                    raise CnnzooError(
                        f"cannot draw {served.name}: tracing its forward failed "
                        f"({type(exc).__name__}: {exc})"
                    ) from exc
            return session.graph

    def _batch(self, served: ServedModel, image_id: str) -> torch.Tensor:
        """The image as the model takes it (decoded, preprocessed; cached). Worker thread."""
        key = self._key(served, image_id, "batch")
        batch = self.values.get(key)
        if batch is None:
            loaded = served.loaded
            image = self.decode(self.image(image_id).data, loaded.channels)
            batch = loaded.prepare([image])
            self.values.put(key, batch, _nbytes(batch))
        return batch

    async def graph(self, name: str) -> dict[str, Any]:
        served = self.models.get(name)
        graph = await self._graph(served)
        data = graph.to_dict()
        loaded = served.loaded
        data.update(
            name=served.name,
            description=loaded.description,
            classes=loaded.class_names,
            channels=loaded.channels,
            cam_layers=_cam_layers(graph, loaded.model),
        )
        return data

    async def seen(self, name: str, image_id: str) -> tuple[bytes, dict[str, Any]]:
        """The image after the model's preprocessing, as a PNG, and its size."""
        served = self.models.get(name)
        self.image(image_id)
        batch = await served.call(lambda: self._batch(served, image_id))
        shown = served.loaded.shown(batch)[0]
        return render.image_png(shown), {"height": shown.shape[1], "width": shown.shape[2]}

    async def _layer(
        self, served: ServedModel, image_id: str, layer: str
    ) -> tuple[dict[str, Any], bool]:
        """(output, inputs, channel order, scale) of one layer for one image, and whether it
        came from the cache."""
        self.image(image_id)
        graph = await self._graph(served)
        if not graph.has(layer):
            raise NotFound(f"{served.name} has no layer {layer!r}")
        key = self._key(served, image_id, "layer", layer)
        found = self.values.get(key)
        if found is not None:
            return found, True
        session = self._session(served)

        def compute() -> dict[str, Any]:
            start = time.perf_counter()
            batch = self._batch(served, image_id)
            output, inputs = layer_values(graph, layer, batch, cache=session.cuts)
            output = output[0].detach()
            inputs = [item[0].detach() for item in inputs]
            spatial = output.dim() == 3 and output.shape[-2:].numel() > 1
            flat = output if spatial else output.reshape(-1)
            return {
                "output": output,
                "inputs": inputs,
                "order": rank_channels(flat),
                "low": float(flat.min()),
                "high": float(flat.max()),
                "spatial": spatial,
                "seconds": time.perf_counter() - start,
            }

        found = await served.call(compute)
        self.values.put(key, found, _nbytes(found["output"], *found["inputs"]))
        return found, False

    async def maps(
        self, name: str, image_id: str, layer: str, page: int = 0, per_page: int = DEFAULT_PER_PAGE
    ) -> dict[str, Any]:
        """One page of a layer's channels, strongest first: PNG tiles on one colour scale for
        spatial maps, the values themselves for vectors (dense layers, 1x1 maps)."""
        if not 1 <= per_page <= MAX_PER_PAGE:
            raise UsageError(f"per_page must be 1..{MAX_PER_PAGE}, got {per_page}")
        served = self.models.get(name)
        start = time.perf_counter()
        found, cached = await self._layer(served, image_id, layer)
        output, order = found["output"], found["order"]
        if found["spatial"]:
            per_page = max(1, min(per_page, PAGE_PIXELS // output[0].numel()))
        pages = max(1, -(-len(order) // per_page))
        if not 0 <= page < pages:
            raise UsageError(f"page {page} of {layer}: it has pages 0..{pages - 1}")
        key = self._key(served, image_id, "page", layer, page, per_page)
        answer = self.results.get(key)
        if answer is None:
            chosen = order[page * per_page : (page + 1) * per_page].tolist()
            answer = {
                "layer": layer,
                "shape": list(output.shape),
                "kind": "maps" if found["spatial"] else "vector",
                "low": found["low"],
                "high": found["high"],
                "page": page,
                "pages": pages,
                "per_page": per_page,
                "channels": len(order),
            }
            if found["spatial"]:
                answer["palette"] = render.palette()  # tiles are grey levels 0..255

                def tiles() -> list[dict[str, Any]]:
                    levels = render.quantize(output[chosen], found["low"], found["high"])
                    return [
                        {
                            "channel": channel,
                            "mean": float(output[channel].mean()),
                            "png": render.data_url(render.png_bytes(tile)),
                        }
                        for channel, tile in zip(chosen, levels, strict=True)
                    ]

                answer["tiles"] = await _on_torch_thread(tiles)
            else:
                flat = output.reshape(-1)
                names = served.loaded.class_names
                is_logits = layer == (await self._graph(served)).output
                answer["values"] = [
                    {
                        "channel": channel,
                        "value": float(flat[channel]),
                        "label": names[channel] if is_logits and channel < len(names) else None,
                    }
                    for channel in chosen
                ]
            self.results.put(key, answer, 2 * sum(len(t.get("png", "")) for t in
                                                  answer.get("tiles", [])) + 4096)  # fmt: skip
        return {**answer, "cached": cached, "seconds": round(time.perf_counter() - start, 4),
                "compute_seconds": round(found["seconds"], 4)}  # fmt: skip

    async def unit(
        self, name: str, image_id: str, layer: str, channel: int, y: int = 0, x: int = 0
    ) -> dict[str, Any]:
        """One unit: its value, its receptive field on the input, and its arithmetic."""
        served = self.models.get(name)
        found, _ = await self._layer(served, image_id, layer)
        graph = await self._graph(served)
        output = found["output"]
        if not found["spatial"] and output.dim() == 3:  # a 1x1 map shown as a vector
            y = x = 0
        answer = unit_arithmetic(graph, layer, found["inputs"], output, channel, y, x)
        box = unit_field(graph, layer, y, x) if found["spatial"] else None
        size = tuple(served.loaded.input_size)
        answer["field"] = box.to_dict(size) if box is not None else None
        node = graph.node(layer)
        answer["field_global"] = node.rf_global or box is None
        return answer

    async def explain(
        self, name: str, image_id: str, method: str = "gradcam", layer: str | None = None,
        target: str = "top",
    ) -> dict[str, Any]:  # fmt: skip
        """A heat map of where the image shows the target class, as a PNG over the image."""
        if method not in METHODS:
            raise UsageError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
        served = self.models.get(name)
        self.image(image_id)
        loaded = served.loaded
        if method not in LAYER_METHODS:
            layer = None
        key = self._key(served, image_id, "explain", method, layer, target)
        answer = self.results.get(key)
        if answer is not None:
            return {**answer, "cached": True}

        def compute() -> dict[str, Any]:
            start = time.perf_counter()
            batch = self._batch(served, image_id)
            with torch.no_grad():
                probs = torch.softmax(loaded.model(batch).float(), dim=1)[0]
            index = target_index(target or "top", int(probs.argmax()), loaded.class_names)
            used = resolve_layer(loaded.model, layer) if method in LAYER_METHODS else None
            heat = attribution_maps(loaded.model, batch, [index], method, used)[0]
            return {
                "heat": heat,
                "empty": bool(heat.max() <= 0),  # no positive evidence anywhere
                "target": index,
                "label": loaded.class_names[index],
                "probability": float(probs[index]),
                "layer": used,
                "seconds": time.perf_counter() - start,
            }

        found = await served.call(compute)
        png = await _on_torch_thread(render.heat_png, found.pop("heat"))
        answer = {**found, "method": method, "overlay": render.data_url(png)}
        answer["seconds"] = round(answer["seconds"], 4)
        self.results.put(key, answer, len(answer["overlay"]) + 1024)
        return {**answer, "cached": False}

    # --- the zoo ----------------------------------------------------------------------------

    async def catalogue(self, offset: int = 0, limit: int = 8) -> dict[str, Any]:
        """Rows ``offset``.. of the zoo table (counted once, then cached on disk), with the
        latency the server measured for the models it serves."""
        from cnnzoo.analysis.zoo_table import selection_guide, zoo_rows
        from cnnzoo.registry import list_models

        names = list_models()
        if offset < 0 or limit < 1:
            raise UsageError("offset must be >= 0 and limit >= 1")
        chosen = names[offset : offset + limit]
        async with self._catalogue_lock:
            rows = await _on_torch_thread(zoo_rows, chosen, progress=False)
        served = set(self.models.names())
        return {
            "total": len(names),
            "offset": offset,
            "rows": [
                {
                    **row.__dict__,
                    "weights": list(row.weights),
                    "served": row.name in served,
                    "latency_ms": self.latency_ms(row.name) if row.name in served else None,
                }
                for row in rows
            ],
            "presets": selection_guide(names),
        }

    async def load(self, model: str) -> dict[str, Any]:
        """Serve zoo model ``model`` (with weights when it has any) and say what was loaded.

        Without weights (none exist, or they cannot be had here) the model is served freshly
        initialised: its architecture and maps are real, its answers are not, and the message
        says so."""
        from cnnzoo.inference import load_model
        from cnnzoo.registry import list_models, unknown_model_message

        if model in self.models.names():
            served = self.models.get(model)
            return {"name": served.name, "loaded": False, "message": f"{model} is already here"}
        if model not in list_models():
            raise UsageError(unknown_model_message(model))
        weights = default_weights(model)
        why_not = _no_weights_reason(model)
        served = None
        if weights is not None:
            try:
                served = await self.models.add(f"{model}:{weights}", model)
            except Exception as exc:  # no network for a download, a full disk, ...
                if getattr(exc, "status", 400) != 400 and not isinstance(exc, CnnzooError):
                    raise
                why_not = f"its weights {weights} could not be had: {exc}"
                weights = None
        if served is None:
            # The server serves only trained sources by name; an untrained model is handed
            # over built.
            fresh = await _on_torch_thread(load_model, model)
            served = await self.models.add(fresh, model)
            message = (
                f"loaded {model} without trained weights ({why_not}): the architecture is "
                "real, its answers are not"
            )
        else:
            message = f"loaded {served.loaded.description}"
        return {"name": served.name, "loaded": True, "weights": weights, "message": message}


def _no_weights_reason(model: str) -> str:
    from cnnzoo.pretrained import list_weights

    specs = list_weights(model)
    if not specs:
        return "it has no published or shipped weights"
    names = ", ".join(spec.name for spec in specs)
    return f"its weights ({names}) are not on this machine and downloads are off"


def default_weights(model: str) -> str | None:
    """The weights the explorer loads a zoo model with: weights already on this machine
    (cnnzoo's shipped ones, then torchvision's default in the cache), else torchvision's
    default to download (unless offline), else none."""
    from cnnzoo.pretrained import get_weight_spec, is_cached, list_weights, offline_mode

    specs = list_weights(model)
    shipped = [spec for spec in specs if spec.source == "cnnzoo"]
    if shipped:
        return shipped[0].name
    try:
        default = get_weight_spec(model, "DEFAULT")
    except (UsageError, CnnzooError, ValueError):
        return None
    if is_cached(default) or not offline_mode():
        return default.name
    return None


def _cam_layers(graph: NetworkGraph, model: torch.nn.Module) -> dict[str, Any]:
    """The layers Grad-CAM can use (module outputs with a map bigger than 1x1) and its default."""
    stages = [stage.module for stage in getattr(model, "feature_info", [])]
    spatial = [
        node.module
        for node in graph.nodes
        if node.module and ":" not in node.id and len(node.shape) == 3 and node.shape[1:] != [1, 1]
    ]
    try:
        default = resolve_layer(model, None)
    except UsageError:
        default = spatial[-1] if spatial else None
    ordered = list(dict.fromkeys([*stages, *spatial]))
    return {"default": default, "stages": stages, "layers": ordered}
