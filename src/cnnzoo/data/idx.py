"""Reader for the IDX files of (Fashion-)MNIST (LeCun et al., "THE MNIST DATABASE"), gzip or raw."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from cnnzoo.errors import DataError

# The third magic byte is the element type; MNIST-style files only ever use unsigned bytes.
_UBYTE = 0x08


def read_idx(path: str | Path, *, ndim: int | None = None) -> np.ndarray:
    """Read one IDX file (``.gz`` or uncompressed) into a read-only uint8 array.

    The magic number, the dimension count (``ndim`` when given) and the payload size are
    validated; any mismatch, a truncated gzip stream or a missing file is a DataError naming it.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except FileNotFoundError as exc:
        raise DataError(f"{path}: file not found") from exc
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: corrupt or truncated gzip file ({exc})") from exc

    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{path}: not an IDX file (bad magic number {raw[:4].hex() or 'empty'})")
    if raw[2] != _UBYTE:
        raise DataError(f"{path}: IDX element type 0x{raw[2]:02x} is not unsigned byte (0x08)")
    dims = raw[3]
    if ndim is not None and dims != ndim:
        raise DataError(f"{path}: expected a {ndim}-dimensional IDX file, found {dims} dimensions")
    header = 4 + 4 * dims
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=dims, offset=4))
    expected = int(np.prod(shape, dtype=np.int64))
    if len(raw) - header != expected:
        raise DataError(
            f"{path}: corrupt IDX file: header says {shape} = {expected} bytes of data, "
            f"found {len(raw) - header}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def read_idx_pair(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, H, W) and labels (N,) from two IDX files, checked to agree in length."""
    images = read_idx(images_path, ndim=3)
    labels = read_idx(labels_path, ndim=1)
    if len(images) != len(labels):
        raise DataError(
            f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels"
        )
    return images, labels
