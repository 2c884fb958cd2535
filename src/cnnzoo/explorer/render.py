"""Pictures for the page: images, activation maps and heat maps as small PNG files."""

from __future__ import annotations

import base64
import functools
import io

import numpy as np
import torch
from PIL import Image

MAP_CMAP = "viridis"  # activations: perceptually even, readable for colour-blind users


@functools.cache
def _lut(name: str) -> np.ndarray:
    import matplotlib

    return (matplotlib.colormaps[name](np.arange(256))[:, :3] * 255).round().astype(np.uint8)


def png_bytes(array: np.ndarray) -> bytes:
    """(H, W) or (H, W, 3) uint8 -> PNG file bytes (fast compression: tiles are small)."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def image_png(image: torch.Tensor) -> bytes:
    """A uint8 (C, H, W) image, grey or RGB."""
    array = image.cpu().numpy()
    return png_bytes(array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0))


def quantize(maps: torch.Tensor, low: float, high: float) -> np.ndarray:
    """Maps scaled from [low, high] to 0..255 (one scale for all, so strengths compare)."""
    span = high - low if high > low else 1.0
    scaled = ((maps.float() - low) / span * 255).round().clamp(0, 255)
    return scaled.to(torch.uint8).numpy()


def palette(cmap: str = MAP_CMAP) -> str:
    """The colour map's 256 colours as one hex string (6 digits each), for the page to colour
    grey tiles itself: a grey PNG is a third of a coloured one."""
    return "".join(f"{r:02x}{g:02x}{b:02x}" for r, g, b in _lut(cmap).tolist())


def coloured_png(levels: np.ndarray, cmap: str = MAP_CMAP) -> bytes:
    """(H, W) uint8 levels through a colour map."""
    return png_bytes(_lut(cmap)[levels])


def heat_png(heat: torch.Tensor) -> bytes:
    """An (H, W) map in [0, 1] in the colours ``cnnzoo explain`` uses."""
    from cnnzoo.analysis.plots import HEAT_CMAP

    return coloured_png(quantize(heat, 0.0, 1.0), HEAT_CMAP)

