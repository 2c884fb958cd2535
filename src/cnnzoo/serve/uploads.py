"""Reading images out of requests without trusting them.

The body is counted while it streams and refused (413) the moment it passes the limit, or at
once when its ``Content-Length`` says it will; an image is accepted only when its first bytes
are those of JPEG, PNG, WebP, BMP, GIF or TIFF (415); its pixel count is read from the header
and refused (413) before anything is decoded; a broken image is a 400 that says what is wrong.
Decoding happens on a small pool of threads, never in the event loop, and never calls torch.

Three forms carry images: ``multipart/form-data`` (every file field is one image, several make
a batch), a raw body with an ``image/*`` (or ``application/octet-stream``) content type, and
JSON ``{"images": ["<base64>", ...]}`` (``data:image/png;base64,...`` URLs too).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from cnnzoo.data.folder import ImageTooLargeError, decode_image
from cnnzoo.errors import DataError
from cnnzoo.serve.errors import ApiError

__all__ = [
    "ACCEPTED_FORMATS",
    "DecodedImage",
    "UploadLimits",
    "decode_upload",
    "read_body",
    "read_images",
    "read_json",
    "sniff_format",
    "stream_body",
]

ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")
_ACCEPTED_TEXT = "JPEG, PNG, WebP, BMP, GIF or TIFF"
# Few threads: decoding competes with inference for the same cores.
_DECODERS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="cnnzoo-decode")


@dataclass(frozen=True)
class UploadLimits:
    """What one request may carry."""

    max_bytes: int = 10 * 2**20  # the whole body, as it streams
    max_pixels: int = 40_000_000  # one image, from its header, before decoding
    max_images: int = 64  # images in one request

    @classmethod
    def of(cls, max_upload_mb: float, max_pixels: int, max_images: int) -> UploadLimits:
        return cls(int(max_upload_mb * 2**20), int(max_pixels), int(max_images))


@dataclass
class DecodedImage:
    """One uploaded image, decoded to uint8 (H, W) or (H, W, C) in the model's channels."""

    name: str
    array: np.ndarray
    format: str


def sniff_format(data: bytes) -> str | None:
    """The image format its magic bytes announce (one of :data:`ACCEPTED_FORMATS`), or None."""
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data.startswith(b"BM"):
        return "BMP"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "GIF"
    if data.startswith((b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")):  # TIFF, BigTIFF
        return "TIFF"
    return None


def _too_large(received: int | None, limit: int) -> ApiError:
    size = f"{received / 2**20:.1f} MB" if received is not None else "the body"
    return ApiError(413, f"request body too large: {size} is over the {limit / 2**20:g} MB limit")


async def stream_body(request: Request, max_bytes: int) -> AsyncIterator[bytes]:
    """The request body chunk by chunk, refused with 413 as soon as it passes ``max_bytes``
    (at once, unread, when its Content-Length announces more)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            length = int(declared)
        except ValueError:
            raise ApiError(400, f"bad Content-Length header {declared!r}") from None
        if length > max_bytes:
            raise _too_large(length, max_bytes)
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > max_bytes:
            raise _too_large(None, max_bytes)
        yield chunk


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The whole body, at most ``max_bytes`` (413 past it)."""
    parts = [chunk async for chunk in stream_body(request, max_bytes)]
    return b"".join(parts)


async def read_json(request: Request, max_bytes: int) -> Any:
    """The body parsed as JSON (400 when it is not), at most ``max_bytes``."""
    body = await read_body(request, max_bytes)
    try:
        if len(body) > 256 * 2**10:  # a big document would hold up the event loop
            return await asyncio.get_running_loop().run_in_executor(_DECODERS, json.loads, body)
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the body is not valid JSON ({exc})") from None


def decode_upload(data: bytes, name: str, channels: int, max_pixels: int) -> DecodedImage:
    """One image's bytes -> :class:`DecodedImage`, or the ApiError the client should get."""
    if not data:
        raise ApiError(400, f"{name}: empty image")
    kind = sniff_format(data)
    if kind is None:
        raise ApiError(415, f"{name}: not a {_ACCEPTED_TEXT} image (by its first bytes)")
    try:
        array = decode_image(
            io.BytesIO(data), channels, name=name, max_pixels=max_pixels, formats=(kind,)
        )
    except ImageTooLargeError as exc:
        raise ApiError(413, str(exc)) from None
    except DataError as exc:
        raise ApiError(400, str(exc)) from None
    return DecodedImage(name, array, kind)


async def _multipart_files(request: Request, limits: UploadLimits) -> list[tuple[str, bytes]]:
    parser = MultiPartParser(
        request.headers,
        stream_body(request, limits.max_bytes),
        max_files=limits.max_images,
        max_fields=64,
    )
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        message = str(exc.message)
        status = 413 if "Too many files" in message else 400
        raise ApiError(status, f"bad multipart body: {message}") from None
    try:
        files = []
        for field, value in form.multi_items():
            if isinstance(value, UploadFile):
                name = value.filename or field or f"file {len(files) + 1}"
                files.append((name, await value.read()))
        return files
    finally:
        await form.close()


def _from_base64(text: Any, index: int) -> tuple[str, bytes]:
    name = f"images[{index}]"
    if not isinstance(text, str):
        raise ApiError(400, f"{name}: expected a base64 string")
    if text.startswith("data:"):  # a data URL, as a browser's FileReader gives it
        _, _, text = text.partition(",")
    try:
        return name, base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, f"{name}: not valid base64") from None


async def read_images(request: Request, channels: int, limits: UploadLimits) -> list[DecodedImage]:
    """Every image the request carries, in any of the three forms, decoded and checked."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        blobs = await _multipart_files(request, limits)
    elif content_type == "application/json":
        document = await read_json(request, limits.max_bytes)
        images = document.get("images") if isinstance(document, dict) else None
        if not isinstance(images, list):
            raise ApiError(400, 'JSON bodies must be {"images": ["<base64>", ...]}')
        if len(images) > limits.max_images:
            raise ApiError(413, f"{len(images)} images; at most {limits.max_images} a request")
        blobs = [_from_base64(text, index) for index, text in enumerate(images)]
    elif content_type.startswith("image/") or content_type == "application/octet-stream":
        blobs = [("body", await read_body(request, limits.max_bytes))]
    else:
        shown = content_type or "none"
        raise ApiError(
            415,
            f"unsupported content type {shown}: send multipart/form-data files, an image/* "
            'body, or JSON {"images": ["<base64>", ...]}',
        )
    if not blobs:
        raise ApiError(400, "no image in the request")
    if len(blobs) > limits.max_images:
        raise ApiError(413, f"{len(blobs)} images; at most {limits.max_images} a request")
    loop = asyncio.get_running_loop()
    decoding = [
        loop.run_in_executor(_DECODERS, decode_upload, data, name, channels, limits.max_pixels)
        for name, data in blobs
    ]
    results = await asyncio.gather(*decoding, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return list(results)  # type: ignore[arg-type]
