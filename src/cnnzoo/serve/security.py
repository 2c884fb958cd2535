"""``--api-key``: ``Authorization: Bearer KEY`` on everything but the health endpoints.

:class:`ApiKeyMiddleware` guards the whole app, routes added later included; paths in
``app.state.public_paths`` (the health endpoints, and whatever a router adds there) stay open.
:func:`require_api_key` is the same check as a FastAPI dependency, for a router that is
mounted somewhere else.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Collection
from typing import Any

from starlette.requests import Request

from cnnzoo.serve.errors import ApiError, error_response

__all__ = ["PUBLIC_PATHS", "ApiKeyMiddleware", "check_api_key", "require_api_key"]

PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"})
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="cnnzoo"'}


def check_api_key(authorization: str | None, key: str | None) -> None:
    """Raise a 401 :class:`ApiError` unless ``authorization`` is ``Bearer <key>`` (no key set:
    nothing to check). The comparison takes the same time whatever the guess."""
    if not key:
        return
    if not authorization:
        raise ApiError(401, "an API key is required: Authorization: Bearer KEY", _CHALLENGE)
    scheme, _, given = authorization.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), key.encode()):
        raise ApiError(401, "wrong API key", _CHALLENGE)


async def require_api_key(request: Request) -> None:
    """FastAPI dependency: the app's ``--api-key`` (``app.state.api_key``), checked."""
    check_api_key(request.headers.get("authorization"), getattr(request.app.state, "api_key", None))


class ApiKeyMiddleware:
    """Refuse (401, JSON) every HTTP request without the key, except ``public_paths``."""

    def __init__(self, app: Any, key: str, public_paths: Collection[str]) -> None:
        self.app, self.key, self.public_paths = app, key, public_paths

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "http" and scope["path"] not in self.public_paths:
            authorization = None
            for name, value in scope["headers"]:
                if name == b"authorization":
                    authorization = value.decode("latin-1")
                    break
            try:
                check_api_key(authorization, self.key)
            except ApiError as exc:
                await error_response(exc.status, exc.message, exc.headers)(scope, receive, send)
                return
        await self.app(scope, receive, send)
