"""Model registry: build any zoo model by name, list them, and describe them."""

from __future__ import annotations

import difflib
import fnmatch
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:  # the model packages import this module, so no runtime import back
    from cnnzoo.models.base import ZooModel

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def check_class_and_channel_counts(num_classes: int, in_chans: int) -> None:
    """Reject impossible head or stem sizes before any layer is built."""
    for label, value in (("num_classes", num_classes), ("in_chans", in_chans)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{label} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class Paper:
    title: str
    year: int
    arxiv: str | None = None

    def __str__(self) -> str:
        suffix = f", arXiv:{self.arxiv}" if self.arxiv else ""
        return f"{self.title} ({self.year}{suffix})"


@dataclass(frozen=True)
class ModelEntry:
    """What the registry knows about one name before building it."""

    name: str
    builder: Callable[..., ZooModel]
    family: str
    paper: Paper
    input_size: int  # default square side
    torchvision_name: str | None = None  # same architecture and state-dict keys in torchvision
    imagenet_top1: float | None = None
    top1_source: str | None = None
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    # The classes and channels of the data the paper trained on (ImageNet RGB unless stated).
    num_classes: int = 1000
    in_chans: int = 3
    default_kwargs: dict[str, Any] = field(default_factory=dict)


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(
    *,
    family: str,
    paper: Paper,
    input_size: int = 224,
    torchvision: bool | str = False,
    imagenet_top1: float | None = None,
    top1_source: str | None = None,
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
    num_classes: int = 1000,
    in_chans: int = 3,
    **default_kwargs: Any,
) -> Callable[[Callable[..., ZooModel]], Callable[..., ZooModel]]:
    """Register a builder ``fn(num_classes=..., in_chans=..., **kwargs) -> ZooModel``.

    ``num_classes`` and ``in_chans`` are the model's defaults (its paper's data: 1000 RGB
    ImageNet classes unless the model was made for MNIST or CIFAR). The returned builder attaches
    ``default_cfg`` to every model it makes, so calling it directly gives the same model as
    :func:`create_model`.
    """

    def decorate(fn: Callable[..., ZooModel]) -> Callable[..., ZooModel]:
        name = fn.__name__
        if name in _REGISTRY:
            raise RuntimeError(f"model {name!r} registered twice")
        tv_name = (name if torchvision is True else torchvision) or None

        @functools.wraps(fn)
        def build(
            num_classes: int | None = None, in_chans: int | None = None, **kwargs: Any
        ) -> ZooModel:
            entry = _REGISTRY[name]
            num_classes = entry.num_classes if num_classes is None else num_classes
            in_chans = entry.in_chans if in_chans is None else in_chans
            check_class_and_channel_counts(num_classes, in_chans)
            model = fn(num_classes=num_classes, in_chans=in_chans, **{**default_kwargs, **kwargs})
            model.default_cfg = _make_cfg(entry, model, in_chans)
            return model

        _REGISTRY[name] = ModelEntry(
            name=name,
            builder=build,
            family=family,
            paper=paper,
            input_size=input_size,
            torchvision_name=tv_name,
            imagenet_top1=imagenet_top1,
            top1_source=top1_source or ("torchvision" if imagenet_top1 and tv_name else None),
            mean=mean,
            std=std,
            num_classes=num_classes,
            in_chans=in_chans,
            default_kwargs=dict(default_kwargs),
        )
        return build

    return decorate


def _channel_stats(values: tuple[float, ...], in_chans: int) -> tuple[float, ...]:
    if len(values) == in_chans:
        return values
    average = sum(values) / len(values)
    return (round(average, 4),) * in_chans


def _make_cfg(entry: ModelEntry, model: ZooModel, in_chans: int) -> dict[str, Any]:
    side = model.fixed_input_size or entry.input_size
    return {
        "name": entry.name,
        "family": entry.family,
        "input_size": (in_chans, side, side),
        "min_input_size": model.min_input_size,
        "fixed_input_size": model.fixed_input_size is not None,
        "mean": _channel_stats(entry.mean, in_chans),
        "std": _channel_stats(entry.std, in_chans),
        "first_conv": model.first_conv,
        "classifier": model.classifier_name,
        "num_classes": model.num_classes,
        "paper": str(entry.paper),
    }


def _ensure_models_imported() -> None:
    import cnnzoo.models  # noqa: F401  (importing registers every family)


def get_entry(name: str) -> ModelEntry:
    _ensure_models_imported()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(unknown_model_message(name)) from None


def unknown_model_message(name: str) -> str:
    close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else "; `cnnzoo models` lists them"
    return f"unknown model {name!r}{hint}"


def list_models(pattern: str = "*", family: str | None = None) -> list[str]:
    """Registered names matching a shell-style ``pattern``, in registration order."""
    _ensure_models_imported()
    return [
        name
        for name, entry in _REGISTRY.items()
        if fnmatch.fnmatch(name, pattern) and (family is None or entry.family == family)
    ]


def create_model(
    name: str,
    num_classes: int | None = None,
    in_chans: int | None = None,
    weights: Any = None,
    *,
    features_only: bool = False,
    out_indices: int | Sequence[int] | None = None,
    **kwargs: Any,
) -> ZooModel:
    """Build a zoo model by name, optionally with ``weights``.

    ``num_classes`` and ``in_chans`` default to the model's own: 1000 classes and 3 channels for
    ImageNet models, 10 classes for the CIFAR networks, 10 classes of 1-channel images for LeNet.
    ``weights`` is a weight name (``"IMAGENET1K_V2"``, ``"DEFAULT"``, ``"imagenet"``,
    ``"fashion_mnist"``; see :func:`cnnzoo.list_weights`), a file path or a state-dict. Named
    weights build the model for their own classes, channels and options unless given otherwise,
    and set ``model.pretrained_cfg`` (class names, transform, metrics).
    ``features_only=True`` returns a backbone instead (timm's API): its forward gives the maps
    of the stages ``out_indices`` of ``model.feature_info`` (default all; negative indices count
    from the deepest), see :func:`cnnzoo.models.features.feature_extractor`.
    """
    spec = None
    if weights is not None:
        from cnnzoo.pretrained import resolve_weights

        spec = resolve_weights(name, weights)
        if spec is not None:
            num_classes, in_chans, kwargs = spec.build_options(num_classes, in_chans, kwargs)
    model = get_entry(name).builder(num_classes=num_classes, in_chans=in_chans, **kwargs)
    if spec is not None:
        from cnnzoo.pretrained import load_pretrained

        load_pretrained(model, spec)
    elif weights is not None:
        from cnnzoo.weights import load_weights

        load_weights(model, weights)
    if features_only:
        from cnnzoo.models.features import feature_extractor

        return feature_extractor(model, out_indices)  # type: ignore[return-value]
    if out_indices is not None:
        raise ValueError("out_indices needs features_only=True")
    return model


@functools.cache
def count_params(name: str) -> int:
    """Parameter count of the model with its default classes and channels (no memory used)."""
    with torch.device("meta"):
        model = create_model(name)
    return sum(p.numel() for p in model.parameters())


@dataclass(frozen=True)
class ModelInfo:
    name: str
    family: str
    paper: Paper
    input_size: tuple[int, int, int]
    min_input_size: int
    params: int
    imagenet_top1: float | None
    top1_source: str | None
    torchvision_name: str | None


def model_info(name: str) -> ModelInfo:
    entry = get_entry(name)
    with torch.device("meta"):
        model = entry.builder()
    return ModelInfo(
        name=name,
        family=entry.family,
        paper=entry.paper,
        input_size=model.default_cfg["input_size"],
        min_input_size=model.min_input_size,
        params=count_params(name),
        imagenet_top1=entry.imagenet_top1,
        top1_source=entry.top1_source,
        torchvision_name=entry.torchvision_name,
    )
