"""The server's one error format, ``{"error": "...", "status": N}``, and the handlers that give
every failure that shape: cnnzoo's own :class:`ApiError`, Starlette's 404/405, FastAPI's
parameter validation, a client that went away, and bugs (500, one line)."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse, Response

__all__ = [
    "CLIENT_CLOSED",
    "ApiError",
    "error_response",
    "install_error_handlers",
]

log = logging.getLogger("cnnzoo.serve")

# nginx's code for "the client closed the connection before the answer": never sent, only counted.
CLIENT_CLOSED = 499


class ApiError(Exception):
    """An answer with an HTTP error code and a one-line message (and headers such as
    ``Retry-After`` or ``WWW-Authenticate``)."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = " ".join(message.split())
        self.headers = dict(headers or {})


def error_response(status: int, message: str, headers: Mapping[str, str] | None = None) -> Response:
    """The JSON body every error has: ``{"error": message, "status": status}``."""
    text = " ".join(str(message).split())
    return JSONResponse({"error": text, "status": status}, status_code=status, headers=headers)


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.message, exc.headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404 and exc.detail == "Not Found":
        message = f"no such endpoint: {request.method} {request.url.path}"
    elif exc.status_code == 405:
        message = f"{request.method} is not allowed on {request.url.path}"
    else:
        message = str(exc.detail)
    return error_response(exc.status_code, message, exc.headers)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    problems = []
    for error in exc.errors():
        where = ".".join(
            str(part) for part in error.get("loc", ()) if part not in ("query", "path")
        )
        problems.append(f"{where}: {error.get('msg', 'invalid')}" if where else error.get("msg"))
    return error_response(400, "; ".join(problems) or "invalid request")


async def _client_disconnect(request: Request, exc: Exception) -> Response:
    # Nobody is left to read this; the status only reaches the metrics.
    return Response(status_code=CLIENT_CLOSED)


async def _internal_error(request: Request, exc: Exception) -> Response:
    log.exception("internal error on %s %s", request.method, request.url.path)
    text = " ".join(str(exc).split()) or type(exc).__name__
    return error_response(500, f"internal error: {text}")


def install_error_handlers(app: FastAPI) -> None:
    """Make every error the app (and any router added to it) raises a one-line JSON error."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(ClientDisconnect, _client_disconnect)
    app.add_exception_handler(Exception, _internal_error)
