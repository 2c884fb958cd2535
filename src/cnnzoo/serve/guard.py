"""Endpoints that need a model's PyTorch module (explain, the explorer's graph, maps and units)
answer a one-line 409 for a model served from an ONNX graph, naming the float32 source to
serve instead. One ASGI layer checks them all, whichever router added them, before their
handler (which would otherwise fail deep inside torch) runs."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from starlette.routing import compile_path

from cnnzoo.serve.errors import ApiError, error_response

__all__ = ["MODULE_ENDPOINTS", "ModuleGuard"]

# Route templates -> what they do with the module (the error says it).
MODULE_ENDPOINTS: dict[str, str] = {
    "/v1/models/{name}/explain": "explain",
    "/explorer/api/models/{name}/graph": "the explorer's network graph",
    "/explorer/api/models/{name}/maps": "feature maps",
    "/explorer/api/models/{name}/unit": "a unit's receptive field and arithmetic",
    "/explorer/api/models/{name}/explain": "explain",
}


@dataclass(frozen=True)
class _Endpoint:
    """Stands for the route in the scope, so that the metrics count a refusal under it."""

    path: str


class ModuleGuard:
    """Pure ASGI: a request for one of ``endpoints`` (route templates with ``{name}``) that
    names a graph-served model is answered 409 here; everything else passes through."""

    def __init__(
        self, app: Any, models: Any, endpoints: Mapping[str, str] = MODULE_ENDPOINTS
    ) -> None:
        self.app, self.models = app, models
        self.endpoints = [
            (compile_path(template)[0], template, what) for template, what in endpoints.items()
        ]

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "http":
            refusal = self._refusal(scope)
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _refusal(self, scope: dict) -> Any:
        # A mounted app sees the whole path; its own part follows its root_path.
        path = scope["path"].removeprefix(scope.get("root_path", ""))
        for pattern, template, what in self.endpoints:
            found = pattern.match(path)
            if found is None:
                continue
            name = found["name"]
            if name not in self.models:
                return None  # the handler's 404 lists the served models
            try:
                self.models[name].require_module(what)
            except ApiError as exc:
                scope.update(route=_Endpoint(template), path_params={"name": name})
                return error_response(exc.status, exc.message, exc.headers)
            return None
        return None
