"""Pretrained weights by name: torchvision's ImageNet weights and the small ones cnnzoo ships.

``create_model("resnet50", weights="IMAGENET1K_V2")`` resolves the name here. Two sources:

* **torchvision**: every weights enum of the torchvision model with the same architecture
  (``ModelEntry.torchvision_name``), read from torchvision's own registry
  (``torchvision.models.get_model_weights``): URL, categories, ``transforms()``, metrics.
* **cnnzoo**: small models torchvision lacks, trained with cnnzoo's own trainer and shipped
  inside the package (``cnnzoo/weights_data``, described by its ``manifest.json``;
  ``tools/build_shipped_weights.py`` regenerates them).

Downloaded files live in torch hub's checkpoint folder (``$TORCH_HOME/hub/checkpoints``), under
torchvision's own file names, so a file either library downloaded serves both. A missing file is
downloaded into a temporary file in that folder, its sha256 checked against the prefix the file
name carries, and only then renamed into place; a file that fails the check is deleted. As in
torch.hub, a file already in the cache is trusted by its name. ``offline=True`` (or
``CNNZOO_OFFLINE=1``, or the CLI's ``--offline``) never opens a connection.
"""

from __future__ import annotations

import errno
import fnmatch
import functools
import hashlib
import http.client
import itertools
import json
import math
import os
import re
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from cnnzoo.errors import CnnzooError, UsageError, WeightsError

if TYPE_CHECKING:
    from cnnzoo.weights import LoadReport

__all__ = [
    "OFFLINE_ENV",
    "WeightSpec",
    "build_pretrained",
    "cache_dir",
    "get_weight_spec",
    "is_cached",
    "list_weights",
    "load_pretrained",
    "offline_mode",
    "register_weights",
    "resolve_weights",
    "score_weights",
    "weights_file",
]

OFFLINE_ENV = "CNNZOO_OFFLINE"
SHIPPED_DIR = Path(__file__).resolve().parent / "weights_data"
SHIPPED_MANIFEST = SHIPPED_DIR / "manifest.json"
# Keras' word for "the model's default ImageNet weights" (keras.applications.VGG16(weights=...)).
KERAS_IMAGENET = "imagenet"
DEFAULT = "DEFAULT"
SHIPPED_DEFAULT = "fashion_mnist"
# torch.hub's convention: NAME-<sha256 prefix>.EXT (e.g. resnet18-f37072fd.pth).
_HASH_IN_FILE_NAME = re.compile(r"-([0-9a-f]{8,64})\.")
_WEIGHT_FILE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors")
# Options torchvision's builders force when they load weights (googlenet / inception_v3): the
# ported Google weights expect [-1, 1] inputs, and the files carry the auxiliary heads.
_TORCHVISION_BUILD_OPTIONS: dict[str, dict[str, Any]] = {
    "googlenet": {"transform_input": True, "aux_logits": True},
    "inception_v3": {"transform_input": True, "aux_logits": True},
}
_AUX_PREFIXES = ("aux1.", "aux2.", "AuxLogits.")


def _weights_build_options(tv_name: str, meta: Mapping[str, Any]) -> dict[str, Any]:
    """Builder options a torchvision weight needs: the fixed ones above, and for a Vision
    Transformer the image side its position embeddings were trained for (SWAG's end-to-end
    weights: 384, 512 or 518 px), which torchvision's builder also takes from ``min_size``."""
    options = dict(_TORCHVISION_BUILD_OPTIONS.get(tv_name, {}))
    if tv_name.startswith("vit_"):
        options["image_size"] = int(meta["min_size"][0])
    return options
_CHUNK = 1 << 16
_TIMEOUT_S = 30.0


# --- what a set of weights is -----------------------------------------------------------------


@dataclass(frozen=True)
class WeightSpec:
    """One available set of weights for one cnnzoo model."""

    model: str  # cnnzoo model name
    name: str  # "IMAGENET1K_V2", "fashion_mnist", ...
    source: str  # "torchvision" or "cnnzoo"
    dataset: str  # "ImageNet-1K", "Fashion-MNIST", "digits"
    url: str | None  # None for weights shipped inside the package
    file_name: str  # in the cache folder (torchvision's own name) or in the package
    sha256: str  # the full hash, or the prefix torchvision's file names carry
    categories: tuple[str, ...]
    num_classes: int
    in_chans: int
    crop_size: int  # input side the weights were evaluated at
    resize_size: int | None  # resize before the centre crop (None: resize to crop_size)
    interpolation: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    metrics: dict[str, float] = field(default_factory=dict)
    file_size: int | None = None  # bytes, when known (torchvision gives MiB to 3 decimals)
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    # torchvision's enum member, whose .transforms() is the evaluation transform.
    torchvision_weights: Any = field(default=None, repr=False, compare=False)

    @property
    def full_name(self) -> str:
        return f"{self.model}.{self.name}"

    @property
    def shipped(self) -> bool:
        return self.url is None

    def transforms(self) -> Callable[[Any], torch.Tensor]:
        """The evaluation transform the weights were scored with (PIL image or tensor in)."""
        if self.torchvision_weights is not None:
            return self.torchvision_weights.transforms()
        return SmallImageClassification(
            size=self.crop_size,
            in_chans=self.in_chans,
            mean=self.mean,
            std=self.std,
            interpolation=self.interpolation,
        )

    def build_options(
        self, num_classes: int | None, in_chans: int | None, kwargs: dict[str, Any]
    ) -> tuple[int, int, dict[str, Any]]:
        """(num_classes, in_chans, builder options) for a model that loads these weights: the
        weights' own unless the caller chose otherwise."""
        num_classes = self.num_classes if num_classes is None else num_classes
        in_chans = self.in_chans if in_chans is None else in_chans
        options = {**self.model_kwargs, **kwargs}
        if options.get("transform_input") and in_chans != 3 and "transform_input" not in kwargs:
            options["transform_input"] = False  # defined for RGB only; the stem is adapted instead
        return num_classes, in_chans, options

    def pretrained_cfg(self, num_classes: int | None = None, in_chans: int | None = None) -> dict:
        """What inference needs to know, for a model built with these weights (timm's name)."""
        from cnnzoo.registry import fit_channel_stats

        num_classes = self.num_classes if num_classes is None else num_classes
        in_chans = self.in_chans if in_chans is None else in_chans
        mean, std = fit_channel_stats(self.mean, self.std, in_chans)
        return {
            "model": self.model,
            "weights": self.name,
            "source": self.source,
            "dataset": self.dataset,
            # A new head for other classes (fine-tuning) no longer predicts these.
            "categories": list(self.categories) if num_classes == self.num_classes else [],
            "num_classes": num_classes,
            "in_chans": in_chans,
            "crop_size": self.crop_size,
            "resize_size": self.resize_size,
            "interpolation": self.interpolation,
            "mean": list(mean),
            "std": list(std),
            "metrics": dict(self.metrics),
            "url": self.url,
            "file_name": self.file_name,
        }


class SmallImageClassification(nn.Module):
    """Evaluation transform of cnnzoo's shipped weights, in the style of torchvision's presets.

    Any image (PIL, ``(C, H, W)`` or ``(B, C, H, W)`` tensor, uint8 or float in [0, 1]) is
    converted to the weights' channels (luma for grey, as PIL's "L"), resized to ``size`` x
    ``size`` in floating point (as the trainer resizes batches) and normalised.
    """

    def __init__(
        self,
        *,
        size: int,
        in_chans: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        interpolation: str = "bilinear",
    ) -> None:
        super().__init__()
        self.size = size
        self.in_chans = in_chans
        self.mean = list(mean)
        self.std = list(std)
        self.interpolation = interpolation

    def forward(self, img: Any) -> torch.Tensor:
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms.v2 import functional as F

        if not isinstance(img, torch.Tensor):  # PIL
            img = F.pil_to_tensor(img.convert("L" if self.in_chans == 1 else "RGB"))
        img = F.to_dtype(img, torch.float32, scale=True).as_subclass(torch.Tensor)
        channels = img.shape[-3]
        if channels != self.in_chans:
            if self.in_chans == 1 and channels in (3, 4):
                img = F.rgb_to_grayscale(img[..., :3, :, :])
            elif channels == 1:
                img = img.expand(*img.shape[:-3], self.in_chans, *img.shape[-2:])
            else:
                raise UsageError(f"cannot turn a {channels}-channel image into {self.in_chans}")
        mode = InterpolationMode(self.interpolation)
        img = F.resize(img, [self.size, self.size], interpolation=mode, antialias=True)
        return F.normalize(img, mean=self.mean, std=self.std)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(size={self.size}, in_chans={self.in_chans}, "
            f"mean={self.mean}, std={self.std}, interpolation={self.interpolation})"
        )


# --- the two sources --------------------------------------------------------------------------


def _hash_prefix(file_name: str) -> str:
    found = _HASH_IN_FILE_NAME.findall(file_name)
    return found[-1] if found else ""


def _torchvision_specs(model: str, tv_name: str) -> list[WeightSpec]:
    from torchvision.models import get_model_weights

    specs = []
    for weights in get_model_weights(tv_name):
        meta = weights.meta
        preset = weights.transforms()
        categories = tuple(meta.get("categories") or ())
        file_name = weights.url.rsplit("/", 1)[-1]
        metrics = {
            key: float(value)
            for results in meta.get("_metrics", {}).values()
            for key, value in results.items()
            if not math.isnan(value)  # vgg16's IMAGENET1K_FEATURES has no classifier metrics
        }
        size_mib = meta.get("_file_size")
        specs.append(
            WeightSpec(
                model=model,
                name=weights.name,
                source="torchvision",
                dataset=", ".join(meta.get("_metrics", {})) or "ImageNet-1K",
                url=weights.url,
                file_name=file_name,
                sha256=_hash_prefix(file_name),
                categories=categories,
                num_classes=len(categories) or 1000,
                in_chans=3,
                crop_size=preset.crop_size[0],
                resize_size=preset.resize_size[0],
                interpolation=preset.interpolation.value,
                mean=tuple(preset.mean),
                std=tuple(preset.std),
                metrics=metrics,
                file_size=round(size_mib * 2**20) if size_mib else None,
                model_kwargs=_weights_build_options(tv_name, meta),
                torchvision_weights=weights,
            )
        )
    return specs


def read_manifest() -> dict[str, dict[str, Any]]:
    """``weights_data/manifest.json``: one entry per shipped file, keyed ``MODEL.NAME``."""
    if not SHIPPED_MANIFEST.is_file():
        return {}
    return json.loads(SHIPPED_MANIFEST.read_text(encoding="utf-8"))


def shipped_file_name(model: str, name: str) -> str:
    return f"{model}-{name}.safetensors"


def _shipped_spec(entry: Mapping[str, Any]) -> WeightSpec:
    return WeightSpec(
        model=entry["model"],
        name=entry["name"],
        source="cnnzoo",
        dataset=entry["dataset"],
        url=None,
        file_name=entry["file_name"],
        sha256=entry["sha256"],
        categories=tuple(entry["categories"]),
        num_classes=int(entry["num_classes"]),
        in_chans=int(entry["in_chans"]),
        crop_size=int(entry["input_size"]),
        resize_size=None,
        interpolation="bilinear",
        mean=tuple(entry["mean"]),
        std=tuple(entry["std"]),
        metrics=dict(entry.get("metrics", {})),
        file_size=entry.get("file_size"),
        model_kwargs=dict(entry.get("model_kwargs", {})),
    )


@functools.cache
def _builtin_specs(model: str) -> tuple[WeightSpec, ...]:
    from cnnzoo.registry import get_entry

    entry = get_entry(model)
    specs = _torchvision_specs(model, entry.torchvision_name) if entry.torchvision_name else []
    specs += [_shipped_spec(e) for e in read_manifest().values() if e["model"] == model]
    return tuple(specs)


# Weights added at run time with register_weights (a mirror of one's own, a test server).
_REGISTERED: dict[tuple[str, str], WeightSpec] = {}


def register_weights(spec: WeightSpec, *, replace: bool = False) -> None:
    """Make ``spec`` available by name; with ``replace=True`` it shadows a built-in name.

    Useful for weights hosted elsewhere: the same download, hash check and cache apply.
    """
    _entry(spec.model)
    if not spec.sha256:
        raise UsageError(f"{spec.full_name}: a sha256 (or its prefix) is required")
    key = (spec.model, spec.name)
    exists = key in _REGISTERED or any(s.name == spec.name for s in _builtin_specs(spec.model))
    if exists and not replace:
        raise UsageError(f"weights {spec.full_name} exist already (pass replace=True)")
    _REGISTERED[key] = spec


def _specs_for(model: str) -> list[WeightSpec]:
    specs = {s.name: s for s in _builtin_specs(model)}
    specs.update({name: s for (m, name), s in _REGISTERED.items() if m == model})
    return list(specs.values())


def _entry(model: str) -> Any:
    from cnnzoo.registry import get_entry

    try:
        return get_entry(model)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


# --- finding weights by name ------------------------------------------------------------------


def list_weights(pattern: str = "*") -> list[WeightSpec]:
    """Every available weight whose model matches ``pattern``.

    A model name gives that model's weights; a shell pattern (``resnet*``) is matched against
    model names and ``MODEL.NAME``; other text is a case-insensitive substring of ``MODEL.NAME``.
    """
    from cnnzoo.registry import list_models

    models = list_models()
    if pattern in models:
        return _specs_for(pattern)
    wild = any(ch in pattern for ch in "*?[")
    needle = pattern.lower()
    found = []
    for model in models:
        for spec in _specs_for(model):
            full = spec.full_name.lower()
            if wild:
                hit = fnmatch.fnmatchcase(model, needle) or fnmatch.fnmatchcase(full, needle)
            else:
                hit = needle in full
            if hit:
                found.append(spec)
    return found


def _valid_names(model: str, specs: list[WeightSpec]) -> str:
    names = [s.name for s in specs]
    aliases = [DEFAULT] + ([KERAS_IMAGENET] if _imagenet_default(specs) else [])
    return ", ".join(aliases + names)


def _imagenet_default(specs: list[WeightSpec]) -> WeightSpec | None:
    for spec in specs:
        tv = spec.torchvision_weights
        if tv is not None and tv is type(tv).DEFAULT and spec.num_classes == 1000:
            return spec
    return None


def get_weight_spec(model: str, name: Any) -> WeightSpec:
    """The weights ``name`` of ``model``: an enum name (``IMAGENET1K_V2``, any case), ``DEFAULT``,
    ``imagenet`` (Keras' word: the default ImageNet weights), a cnnzoo name (``fashion_mnist``),
    torchvision's ``ResNet50_Weights.IMAGENET1K_V2`` (as a string or the enum member) or
    ``MODEL.NAME``. A :class:`UsageError` lists the valid names when there is no such weight."""
    _entry(model)
    specs = _specs_for(model)
    if not specs:
        raise UsageError(
            f"no pretrained weights for {model} (torchvision has no such architecture and cnnzoo "
            "ships none); `cnnzoo weights` lists the models that have some"
        )
    text = _weights_text(name)
    owner, _, short = text.rpartition(".")
    if owner:
        _check_owner(model, owner, text, specs)
        text = short
    key = text.casefold()
    for spec in specs:
        if spec.name.casefold() == key:
            return spec
    if key == DEFAULT.casefold():
        # torchvision's DEFAULT; for cnnzoo's own weights, Fashion-MNIST's (the zoo's default set)
        shipped = [s for s in specs if s.name == SHIPPED_DEFAULT]
        return _imagenet_default(specs) or (shipped or specs)[0]
    if key == KERAS_IMAGENET:
        found = _imagenet_default(specs)
        if found is None:
            raise UsageError(
                f"{model} has no ImageNet weights; valid weights: {_valid_names(model, specs)}"
            )
        return found
    raise UsageError(f"unknown weights {text!r} for {model}; valid: {_valid_names(model, specs)}")


def _weights_text(name: Any) -> str:
    if isinstance(name, str):
        return name.strip()
    try:
        from torchvision.models import WeightsEnum

        if isinstance(name, WeightsEnum):
            return f"{type(name).__name__}.{name.name}"
    except ImportError:  # pragma: no cover - torchvision is a dependency
        pass
    raise UsageError(f"weights must be a name, a file path or a state-dict, got {name!r}")


def _check_owner(model: str, owner: str, text: str, specs: list[WeightSpec]) -> None:
    """``ResNet18_Weights.X`` or ``resnet18.X`` given for ``model``: it must be model's own."""
    own = {model.casefold()}
    own |= {type(s.torchvision_weights).__name__.casefold() for s in specs if s.torchvision_weights}
    if owner.casefold() in own:
        return
    raise UsageError(
        f"{text} are weights of another architecture, not of {model}; valid for {model}: "
        f"{_valid_names(model, specs)}"
    )


def looks_like_path(source: str | os.PathLike) -> bool:
    """Whether a ``weights=`` string names a file rather than a weight (suffix or separator)."""
    if isinstance(source, os.PathLike):
        return True
    text = str(source)
    return (
        text.lower().endswith(_WEIGHT_FILE_SUFFIXES)
        or "/" in text
        or os.sep in text
        or text.startswith("~")
    )


def resolve_weights(model: str, weights: Any) -> WeightSpec | None:
    """The :class:`WeightSpec` a ``weights=`` argument names, or None for a file or state-dict."""
    if weights is None or isinstance(weights, Mapping) or looks_like_path(weights):
        return None
    try:
        return get_weight_spec(model, weights)
    except UsageError as exc:
        if not isinstance(weights, str):
            raise
        if Path(weights).is_file():
            return None  # a weights file without a suffix, in the working directory
        raise UsageError(f"{exc}; nor is there a file named {weights!r}") from None


# --- the cache --------------------------------------------------------------------------------


def cache_dir() -> Path:
    """torch hub's checkpoint folder (``$TORCH_HOME/hub/checkpoints``), shared with torchvision."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def offline_mode() -> bool:
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def _local_path(spec: WeightSpec) -> Path:
    return SHIPPED_DIR / spec.file_name if spec.shipped else cache_dir() / spec.file_name


def is_cached(spec: WeightSpec) -> bool:
    """Whether the file is on this machine (always, for the weights shipped in the package)."""
    return _local_path(spec).is_file()


def _by_hand(spec: WeightSpec, folder: Path) -> str:
    return f"download {spec.url} and save it as {spec.file_name} in {folder}"


def weights_file(spec: WeightSpec, *, offline: bool | None = None, progress: bool = True) -> Path:
    """The local file of ``spec``, downloaded first when it is missing and that is allowed.

    ``offline`` defaults to ``CNNZOO_OFFLINE=1``. Raises a :class:`CnnzooError` with one line
    saying what to do when the file cannot be had (offline, no network, unwritable cache, a
    download that is cut short or fails its hash check).
    """
    path = _local_path(spec)
    if spec.shipped:
        if not path.is_file():
            raise WeightsError(f"{spec.full_name}: {path} is missing from the installed package")
        _check_shipped(spec, path)
        return path
    if path.is_file():
        return path
    if offline is None:
        offline = offline_mode()
    if offline:
        raise CnnzooError(
            f"{spec.full_name} weights are not on this machine and offline mode forbids "
            f"downloading; {_by_hand(spec, path.parent)}"
        )
    _download(spec, path, progress)
    return path


@functools.cache
def _shipped_digest(path: Path, mtime_ns: int, size: int) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _check_shipped(spec: WeightSpec, path: Path) -> None:
    stat = path.stat()
    digest = _shipped_digest(path, stat.st_mtime_ns, stat.st_size)
    if not digest.startswith(spec.sha256):
        raise WeightsError(
            f"{path} does not match its recorded sha256 {spec.sha256[:16]}... (got "
            f"{digest[:16]}...): the installed package is damaged; reinstall cnnzoo"
        )


def _download(spec: WeightSpec, path: Path, progress: bool) -> None:
    folder = path.parent
    assert spec.url is not None
    if not spec.sha256:
        raise WeightsError(f"{spec.full_name}: no hash to check a download against")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, temp_name = tempfile.mkstemp(
            prefix=f".{spec.file_name}.", suffix=".partial", dir=folder
        )
    except OSError as exc:
        raise CnnzooError(
            f"cannot write to the weights cache {folder} ({exc.strerror or exc}); set TORCH_HOME "
            f"to a writable folder, or {_by_hand(spec, folder)}"
        ) from None
    temp = Path(temp_name)
    try:
        with os.fdopen(handle, "wb") as out:
            digest = _fetch(spec, folder, out, progress)
        if not digest.startswith(spec.sha256):
            raise WeightsError(
                f"the download of {spec.url} does not match its sha256 prefix {spec.sha256} "
                f"(got {digest[: len(spec.sha256)]}): corrupt or tampered with, so it was "
                "deleted; try again later"
            )
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def _fetch(spec: WeightSpec, folder: Path, out: Any, progress: bool) -> str:
    """Stream ``spec.url`` into ``out``; the sha256 of what was received."""
    assert spec.url is not None
    hasher = hashlib.sha256()
    received = 0
    expected: int | None = None
    try:
        with urllib.request.urlopen(spec.url, timeout=_TIMEOUT_S) as response:
            expected = int(response.headers.get("Content-Length") or 0) or None
            note = f"downloading {spec.url} to {folder / spec.file_name}"
            with _download_bar(spec.file_name, expected, progress, note) as advance:
                while chunk := response.read(_CHUNK):
                    _write(out, chunk, spec, folder)
                    hasher.update(chunk)
                    received += len(chunk)
                    advance(len(chunk))
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        if isinstance(exc, CnnzooError):
            raise
        if received:
            raise CnnzooError(
                f"the download of {spec.url} broke off after {received:,} bytes "
                f"({_reason(exc)}); nothing was kept; try again, or {_by_hand(spec, folder)}"
            ) from None
        raise CnnzooError(
            f"cannot download {spec.url} ({_reason(exc)}); {_by_hand(spec, folder)}"
        ) from None
    if expected is not None and received != expected:
        raise CnnzooError(
            f"the download of {spec.url} stopped after {received:,} of {expected:,} bytes; "
            f"nothing was kept; try again, or {_by_hand(spec, folder)}"
        )
    return hasher.hexdigest()


def _write(out: Any, chunk: bytes, spec: WeightSpec, folder: Path) -> None:
    try:
        out.write(chunk)
    except OSError as exc:
        what = "no space left on the device" if exc.errno == errno.ENOSPC else exc.strerror
        raise CnnzooError(
            f"cannot write {spec.file_name} into the weights cache {folder} ({what or exc}); "
            f"nothing was kept; free some space or set TORCH_HOME to another folder"
        ) from None


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    text = str(reason if reason is not None else exc) or type(exc).__name__
    return " ".join(text.split())


class _download_bar:  # noqa: N801  (used like a function: `with _download_bar(...) as advance`)
    """A rich bar on stderr (bytes, speed, time left) under a note saying what goes where,
    while a terminal is there to show them (a log gets neither, so errors stay one line)."""

    def __init__(self, label: str, total: int | None, enabled: bool, note: str) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        console = Console(stderr=True)
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=console,
            disable=not (enabled and console.is_terminal),
        )
        self.task = self.progress.add_task(label, total=total)
        self.console, self.note = console, note

    def __enter__(self) -> Callable[[int], None]:
        if not self.progress.disable:
            self.console.print(self.note, highlight=False, soft_wrap=True)
        self.progress.start()
        return lambda n: self.progress.advance(self.task, n)

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()


# --- loading ----------------------------------------------------------------------------------


def load_pretrained(
    model: nn.Module, spec: WeightSpec, *, offline: bool | None = None, progress: bool = True
) -> LoadReport:
    """Load ``spec``'s weights into ``model`` and attach ``model.pretrained_cfg``.

    A model built for other classes or channels gets :func:`cnnzoo.load_weights`' adaptations
    (fresh classifier with a warning, stem filters folded into its channels).
    """
    from cnnzoo.weights import load_weights, read_state_dict

    path = weights_file(spec, offline=offline, progress=progress)
    state, _ = read_state_dict(path)
    if not any(key.startswith(_AUX_PREFIXES) for key in model.state_dict()):
        # torchvision's googlenet / inception_v3 files carry auxiliary heads; a model built with
        # aux_logits=False has no place for them (torchvision drops them the same way).
        state = {k: v for k, v in state.items() if not k.startswith(_AUX_PREFIXES)}
    report = load_weights(model, state, source=str(path))
    first_conv = getattr(model, "first_conv", None)
    stem = model.get_submodule(first_conv) if first_conv else None
    model.pretrained_cfg = spec.pretrained_cfg(
        getattr(model, "num_classes", None), getattr(stem, "in_channels", None)
    )
    return report


def build_pretrained(
    builder: Callable[..., nn.Module],
    spec: WeightSpec,
    num_classes: int | None = None,
    in_chans: int | None = None,
    kwargs: dict[str, Any] | None = None,
) -> nn.Module:
    """``builder(...)`` for ``spec`` (its classes, channels, options unless given), loaded."""
    num_classes, in_chans, options = spec.build_options(num_classes, in_chans, kwargs or {})
    weights_file(spec)  # fetched, or refused, before any model is built
    if (num_classes, in_chans) == (spec.num_classes, spec.in_chans) and (
        torch.get_default_device().type == "cpu"
    ):
        # The file holds every tensor: initialising them first only to overwrite them costs
        # seconds for big models (Inception-v3: 8 s on 2 cores), so build on the meta device
        # and adopt the file's tensors.
        with torch.device("meta"):
            model = builder(num_classes=num_classes, in_chans=in_chans, **options)
        load_pretrained(model, spec)
        if not any(t.is_meta for t in itertools.chain(model.parameters(), model.buffers())):
            return model
    model = builder(num_classes=num_classes, in_chans=in_chans, **options)
    load_pretrained(model, spec)
    return model


# --- scoring shipped weights ------------------------------------------------------------------


def score_weights(
    spec: WeightSpec, *, data_dir: str | None = None, batch_size: int = 1000
) -> float:
    """Test accuracy (%) of shipped weights on their dataset's official test split, through
    :meth:`WeightSpec.transforms` exactly as a user's images go."""
    from cnnzoo.data import load_dataset
    from cnnzoo.registry import create_model

    bundle = load_dataset(spec.name, data_dir=data_dir, val_split=0.0)
    test = bundle.get_split("test")
    net = create_model(spec.model, weights=spec.name).eval()
    transform = spec.transforms()
    correct = 0
    with torch.inference_mode():
        for start in range(0, len(test), batch_size):
            images = test.images[start : start + batch_size]  # type: ignore[union-attr]
            labels = test.labels[start : start + batch_size]  # type: ignore[union-attr]
            correct += int((net(transform(images)).argmax(1) == labels).sum())
    return round(100 * correct / len(test), 2)
