"""The server's settings, shared by :func:`cnnzoo.serve.create_app` and ``cnnzoo serve``."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from cnnzoo.calibration import VALIDATION_SAMPLES
from cnnzoo.errors import UsageError
from cnnzoo.quantize import DEFAULT_MAX_DROP, DEFAULT_MIN_AGREEMENT, DEFAULT_SAMPLES

__all__ = ["ServeOptions"]


@dataclass
class ServeOptions:
    """Batching, limits and access; every field is a ``create_app`` keyword and a flag."""

    max_batch: int = 8  # images in one forward pass
    max_wait_ms: float = 5.0  # how long a batch may wait to fill (only while more is coming)
    queue_size: int = 128  # images queued or computing per model before requests get 503
    timeout: float = 30.0  # seconds a request may wait for its answer (504 past it)
    max_upload_mb: float = 10.0  # request body, counted as it streams (413 past it)
    max_pixels: int = 40_000_000  # one image, from its header (413 past it, not decoded)
    max_images: int = 64  # images in one request
    api_key: str | None = None  # Authorization: Bearer KEY on all but the health endpoints
    cors_origins: tuple[str, ...] = ()  # origins allowed to call from a browser; none: CORS off
    optimize: bool = False  # serve cnnzoo.optimize's checked fast copy
    # int8: each PyTorch source quantized at start-up by cnnzoo.quantize (explain keeps float32),
    # calibrated as `cnnzoo quantize` does; the fields below are its options.
    int8: bool = False
    calibration: str | None = None  # dataset, imagefolder:DIR or DIR (default: its own data)
    samples: int = DEFAULT_SAMPLES  # calibration images
    val_samples: int = VALIDATION_SAMPLES  # labelled images int8's top-1 is checked on
    method: str = "minmax"  # minmax, entropy, percentile
    sensitivity: bool = False  # keep the costliest layers in float32 (within max_drop)
    max_drop: float = DEFAULT_MAX_DROP  # accuracy points, with sensitivity
    min_agreement: float = DEFAULT_MIN_AGREEMENT  # top-1 answers int8 must share with float32
    int8_backend: str = "auto"  # onnxruntime, openvino, or the fastest that passes
    quantizer: str = "auto"  # onnxruntime, nncf (for OpenVINO), or both competing
    threads: int | None = None  # torch threads (default: the free cores, as `train` picks)
    device: str = "cpu"  # auto, cpu, cuda, cuda:N, mps

    @classmethod
    def from_kwargs(cls, options: dict[str, Any]) -> ServeOptions:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise UsageError(
                f"unknown serve option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        made = cls(**options)
        made.cors_origins = tuple(made.cors_origins or ())
        made.check()
        return made

    def check(self) -> None:
        for name in ("max_batch", "queue_size", "max_pixels", "max_images"):
            if int(getattr(self, name)) < 1:
                raise UsageError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("timeout", "max_upload_mb"):
            if not float(getattr(self, name)) > 0:
                raise UsageError(f"{name} must be positive, got {getattr(self, name)}")
        if self.max_wait_ms < 0:
            raise UsageError(f"max_wait_ms cannot be negative, got {self.max_wait_ms}")
        if self.threads is not None and self.threads < 1:
            raise UsageError(f"threads must be at least 1, got {self.threads}")
        if self.int8:
            from cnnzoo.quantize import BACKENDS, METHODS, MIN_SAMPLES, QUANTIZERS

            if self.samples < MIN_SAMPLES:
                raise UsageError(
                    f"samples: calibration needs at least {MIN_SAMPLES} images, got {self.samples}"
                )
            if self.method not in METHODS:
                raise UsageError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
            if self.int8_backend not in BACKENDS:
                raise UsageError(
                    f"int8_backend must be one of {', '.join(BACKENDS)}, got {self.int8_backend!r}"
                )
            if self.quantizer not in ("auto", *QUANTIZERS):
                raise UsageError(
                    f"quantizer must be one of auto, {', '.join(QUANTIZERS)}, got "
                    f"{self.quantizer!r}"
                )

    def quantize_options(self) -> dict[str, object] | None:
        """What the workers pass to :func:`cnnzoo.quantize` (None without ``int8``)."""
        if not self.int8:
            return None
        return {
            "samples": self.samples,
            "method": self.method,
            "sensitivity": self.sensitivity,
            "max_drop": self.max_drop,
            "min_agreement": self.min_agreement,
            "backend": self.int8_backend,
            "quantizer": self.quantizer,
        }
