"""How a model meets the data: builder options, batch resizing and input normalisation."""

from __future__ import annotations

import math
from typing import Any

import torch

from cnnzoo.errors import UsageError

__all__ = [
    "SMALL_INPUT_SIDE",
    "build_model",
    "check_head",
    "imagenet_stats",
    "make_loaders",
    "plan_input",
    "plan_run",
    "side_options",
]

# Images up to this side get the small-input stem where a model has one: an ImageNet stem
# (stride-2 convolution and max-pool) would shrink 28-32 px images to 7-8 px before the first
# block and 1 px before the last.
SMALL_INPUT_SIDE = 64


def imagenet_stats(channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """ImageNet mean/std for ``channels`` (see :func:`cnnzoo.registry.fit_channel_stats`)."""
    from cnnzoo.registry import IMAGENET_MEAN, IMAGENET_STD, fit_channel_stats

    return fit_channel_stats(IMAGENET_MEAN, IMAGENET_STD, channels)


def input_statistics(
    cfg: Any, bundle: Any, spec: Any, given_model: Any = None, log: Any = None
) -> tuple[tuple, tuple, Any]:
    """(mean, std, config) for a run's inputs. Pretrained weights expect the statistics they
    were trained with: a named weight's own (``spec``, whose model options join the config's),
    ImageNet's for a weights file, the ``pretrained_cfg``'s of a module given ready-made with
    its weights (``create_model(..., weights=...)``, as the CLI's --weights); otherwise the
    data's own. What a given module brings is said in ``log``."""
    from dataclasses import replace

    from cnnzoo.registry import fit_channel_stats

    if spec is not None:
        mean, std = fit_channel_stats(spec.mean, spec.std, bundle.channels)
        return mean, std, replace(cfg, model_kwargs={**spec.model_kwargs, **cfg.model_kwargs})
    if cfg.weights:
        return (*imagenet_stats(bundle.channels), cfg)
    pretrained = getattr(given_model, "pretrained_cfg", None) or {}
    if pretrained.get("mean") and pretrained.get("std"):
        mean, std = fit_channel_stats(pretrained["mean"], pretrained["std"], bundle.channels)
        if log is not None:
            log(f"weights: the model carries {pretrained.get('source', '')} weights "
                f"{pretrained.get('weights')} ({pretrained.get('dataset')}); inputs normalised "
                f"with the statistics of its {pretrained.get('weights')} weights, as "
                "`cnnzoo train --weights` does (the data's own would be "
                f"{_rounded(bundle.mean)} / {_rounded(bundle.std)})")  # fmt: skip
        return mean, std, cfg
    return bundle.mean, bundle.std, cfg


def _rounded(values: Any) -> str:
    return "(" + ", ".join(f"{float(v):.3f}" for v in values) + ")"


def load_initial_weights(
    model: Any, weights: str, spec: Any, log: Any, progress: bool = True
) -> None:
    """Start from --weights: a weight name (``spec``: from the cache, downloaded unless offline)
    or a .pth / .safetensors file; what happened goes to ``log``."""
    import warnings

    from cnnzoo.pretrained import load_pretrained
    from cnnzoo.weights import load_weights

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if spec is not None:
            report = load_pretrained(model, spec, progress=progress)
        else:
            report = load_weights(model, weights)
    for warning in caught:
        if report.fresh_classifier and "classifier in the file does not fit" in str(warning):
            continue  # said below, as what it is: the new head transfer learning wants
        log(f"weights: {warning.message}")
    if report.fresh_classifier:
        theirs = f"{spec.num_classes}-class " if spec is not None else ""
        units = getattr(model, "num_classes", None)
        log(f"weights: a new head for the data's classes ({units} output"
            f"{'' if units == 1 else 's'}) takes the place of the file's {theirs}classifier, as "
            "transfer learning intends; it trains from a fresh initialisation")  # fmt: skip
    if spec is not None:
        what, stats = f"{spec.source} weights {spec.name} ({spec.dataset})", "their own statistics"
    else:
        what, stats = weights, "ImageNet statistics"
    log(f"weights: loaded {what}; inputs normalised with {stats}")


def _accepts(model: Any, channels: int, height: int, width: int) -> bool:
    try:
        model.check_input(torch.empty(1, channels, height, width, device="meta"))
    except ValueError:
        return False
    return True


def _build_on_meta(name: str, num_classes: int, channels: int, kwargs: dict[str, Any]) -> Any:
    from cnnzoo.registry import create_model

    try:
        with torch.device("meta"):
            # A num_classes in kwargs (--model-arg num_classes=1: a sigmoid head) wins.
            return create_model(name, **{"num_classes": num_classes, "in_chans": channels,
                                         **kwargs})  # fmt: skip
    except TypeError as exc:  # an option the builder does not take (--model-arg)
        raise UsageError(f"{name}: {exc}") from None


def plan_input(
    model_name: str,
    num_classes: int,
    channels: int,
    image_hw: tuple[int, int],
    model_kwargs: dict[str, Any],
    image_size: int | None = None,
    small_input: bool = True,
    files: str | None = None,
) -> tuple[dict[str, Any], int | None, str]:
    """Decide how ``model_name`` meets images of ``image_hw``: (model kwargs, resize side, note).

    ``files`` says what the images are when they are files decoded at ``image_hw`` (an image
    folder): the note then speaks of decoding them, not of resizing batches.

    Images up to :data:`SMALL_INPUT_SIDE` get ``small_input=True`` where the model supports it,
    the option was not given and ``small_input`` allows it (starting from weights made for the
    ImageNet stem, it does not). Batches are resized to ``image_size`` when given, else only
    when the model cannot take the stored size: to its fixed size or to the multiple of 32 at or
    above its minimum. A Vision Transformer is built for the images' side instead (a multiple
    of its patch; again not when starting from weights). An auxiliary classifier that cannot
    train at the planned size (Inception-v3 below 299 px) is left out. The plan is made on the
    meta device, so nothing is allocated.
    """
    kwargs, side, note = _plan_size(model_name, num_classes, channels, image_hw, model_kwargs,
                                    image_size, small_input, files)  # fmt: skip
    model = _build_on_meta(model_name, num_classes, channels, kwargs)
    least = getattr(model, "aux_min_input_size", 0)
    auxiliary = getattr(model, "aux_logits", False) and "aux_logits" not in kwargs
    if auxiliary and (side or min(image_hw)) < least:
        kwargs = {**kwargs, "aux_logits": False}
        note += f"; auxiliary classifier left out (it needs {least} px)"
    return kwargs, side, note


def _plan_size(
    model_name: str,
    num_classes: int,
    channels: int,
    image_hw: tuple[int, int],
    model_kwargs: dict[str, Any],
    image_size: int | None = None,
    small_input: bool = True,
    files: str | None = None,
) -> tuple[dict[str, Any], int | None, str]:
    height, width = image_hw

    def resizing(side: int) -> str:
        if files is not None:
            return f"{files} decoded at {side}x{side}"
        return f"resizing batches from {height}x{width} to {side}x{side}"

    stored = f"{height}x{width} images" if files is None else (
        f"{files} decoded at {height}x{width} (the image-folder default)")  # fmt: skip
    model = _build_on_meta(model_name, num_classes, channels, model_kwargs)
    side = image_size or max(height, width)
    if (
        small_input
        and getattr(type(model), "supports_small_input", False)
        and "small_input" not in model_kwargs
        and side <= SMALL_INPUT_SIDE
    ):
        small_kwargs = {**model_kwargs, "small_input": True}
        small = _build_on_meta(model_name, num_classes, channels, small_kwargs)
        resize = image_size or _resize_for(small, channels, height, width)
        if resize is None or _accepts(small, channels, resize, resize):
            note = f"{model_name} built with small_input=True for {stored}"
            resized = f"; {resizing(resize)}" if resize else ""
            return small_kwargs, resize, note + resized
    fitted = _fit_image_size(model, model_name, image_hw, model_kwargs, image_size, small_input)
    if fitted is not None:
        return fitted
    if image_size is not None:
        if not _accepts(model, channels, image_size, image_size):
            raise UsageError(
                f"{model_name} cannot take {image_size}x{image_size} inputs (minimum "
                f"{model.min_input_size}"
                + (f", exactly {model.fixed_input_size}" if model.fixed_input_size else "")
                + ")"
            )
        asked = (f"{files} decoded at {image_size}x{image_size}" if files is not None
                 else f"resizing batches to {image_size}x{image_size}")  # fmt: skip
        return model_kwargs, image_size, asked
    resize = _resize_for(model, channels, height, width)
    if resize is None:
        return model_kwargs, None, f"{stored} fit {model_name} as they are"
    if _accepts(model, channels, height, width):
        return model_kwargs, resize, (
            f"{stored} would leave {model_name} a last feature map under 2x2; "
            f"{resizing(resize)}"
        )
    return (
        model_kwargs,
        resize,
        f"{model_name} needs {'exactly' if model.fixed_input_size else 'at least'} "
        f"{model.fixed_input_size or model.min_input_size} px; {resizing(resize)}",
    )


def side_options(
    model_name: str, channels: int, height: int, width: int, model_kwargs: dict[str, Any]
) -> dict[str, Any]:
    """``model_kwargs`` with the option that builds ``model_name`` for ``height`` x ``width``
    inputs where its side is a builder option (a Vision Transformer's ``image_size``: its
    position embeddings fix the side); unchanged for every other model, or when that side is
    already the model's. Sides it cannot be built for are a UsageError."""
    model = _build_on_meta(model_name, 1, channels, model_kwargs)
    if not getattr(type(model), "supports_image_size", False) or "image_size" in model_kwargs:
        return model_kwargs
    if (height, width) == (model.fixed_input_size, model.fixed_input_size):
        return model_kwargs
    if height != width:
        raise UsageError(
            f"{model_name} takes square images (its position embeddings are a square grid of "
            f"patches), got {height}x{width}"
        )
    options = {**model_kwargs, "image_size": height}
    try:
        _build_on_meta(model_name, 1, channels, options)
    except ValueError as exc:
        raise UsageError(f"{model_name}: {exc}") from None
    return options


def _fit_image_size(
    model: Any,
    model_name: str,
    image_hw: tuple[int, int],
    model_kwargs: dict[str, Any],
    image_size: int | None,
    adapt: bool,
) -> tuple[dict[str, Any], int | None, str] | None:
    """A model built for one input side that can be built for any multiple of its patch (a
    Vision Transformer: its position embeddings fix the side) is built for the images' side
    (or ``image_size``), rounded up to a multiple of the patch, rather than fed resized images.
    Not when ``image_size`` is among the model options already, nor when starting from weights
    (``adapt`` False): those were made at their own side."""
    if not (adapt and getattr(type(model), "supports_image_size", False)):
        return None
    if "image_size" in model_kwargs:
        return None
    height, width = image_hw
    patch = int(model.patch_size)
    side = patch * math.ceil((image_size or max(height, width)) / patch)
    resize = None if (height, width) == (side, side) else side
    note = f"{model_name} built with image_size={side} for {height}x{width} images"
    return {**model_kwargs, "image_size": side}, resize, note + (
        f", resized to {side}x{side}" if resize else ""
    )


def _resize_for(model: Any, channels: int, height: int, width: int) -> int | None:
    """The side to resize images to, or None when they suit the model as they are: a model
    with a stated minimum gets at least that; one without (most mobile and residual nets)
    gets twice its total stride, so that its last feature map keeps 2x2 positions."""
    if not _accepts(model, channels, height, width):
        return _least_side(model)
    if model.fixed_input_size or model.min_input_size > 1:
        return None
    useful = 2 * _total_stride(model, channels)
    return useful if min(height, width) < useful else None


def _total_stride(model: Any, channels: int, probe: int = 224) -> int:
    try:
        features = model.forward_features(torch.empty(1, channels, probe, probe, device="meta"))
    except Exception:  # a model whose features are not a 2-D map: no opinion
        return 1
    return max(1, probe // max(1, int(features.shape[-1])))


def _least_side(model: Any) -> int:
    """The model's fixed side, else the multiple of 32 at or above its minimum."""
    return model.fixed_input_size or max(32, 32 * math.ceil(model.min_input_size / 32))


def plan_run(
    config: Any, bundle: Any, given_model: Any = None
) -> tuple[dict[str, Any], int | None, str]:
    """:func:`plan_input` for a run's config and data; a model given ready-made is fed the
    images as they are (or at ``config.image_size``)."""
    if given_model is not None:
        units = head_units(given_model)
        check_head(units, bundle, "the model", exact=False)
        kwargs = dict(config.model_kwargs)
        if isinstance(units, int) and units != bundle.num_classes:
            kwargs["num_classes"] = units  # recorded, so that the run rebuilds this head
        side = config.image_size
        height, width = bundle.image_size
        if side is None and hasattr(given_model, "check_input"):
            if not _accepts(given_model, bundle.channels, height, width):
                side = _least_side(given_model)
        if bundle.in_memory:
            note = f"resizing batches to {side}x{side}" if side else "images fed as they are"
        else:
            note = f"{describe_files(bundle)} decoded at {side or height}x{side or width}"
        return kwargs, side, note
    from cnnzoo.registry import list_models, unknown_model_message

    if config.model not in list_models():
        raise UsageError(unknown_model_message(config.model or ""))
    if "num_classes" in config.model_kwargs:
        check_head(config.model_kwargs["num_classes"], bundle,
                   f"--model-arg num_classes={config.model_kwargs['num_classes']}")  # fmt: skip
    return plan_input(config.model, bundle.num_classes, bundle.channels, bundle.image_size,
                      dict(config.model_kwargs), config.image_size,
                      small_input=not config.weights,
                      files=None if bundle.in_memory else describe_files(bundle))  # fmt: skip


def head_units(model: Any) -> Any:
    """The outputs of ``model``'s classifier. A zoo model whose classifier the user replaced
    (``m.fc = nn.Linear(m.fc.in_features, 2)``, the notes' transfer recipe) is told its new
    ``num_classes``, as timm's ``reset_classifier`` keeps it in step, so that the run records
    and rebuilds the head it trained."""
    units = getattr(model, "num_classes", None)
    try:
        head = model.get_classifier()
    except (AttributeError, TypeError):  # not a zoo model, or its classifier moved
        return units
    outputs = getattr(head, "out_features", None) or getattr(head, "out_channels", None)
    if isinstance(outputs, int) and outputs != units:
        model.num_classes = outputs
        return outputs
    return units


def describe_files(bundle: Any) -> str:
    """What an image folder's files are, from a sample of their sizes: "image files of
    128x128 px", "image files from 96x120 to 480x640 px"."""
    sizes = [(height, width) for width, height in getattr(bundle, "file_sizes", ())]
    if not sizes:
        return "image files"
    if len(set(sizes)) == 1:
        return f"image files of {sizes[0][0]}x{sizes[0][1]} px"
    least = min(sizes, key=lambda hw: hw[0] * hw[1])
    most = max(sizes, key=lambda hw: hw[0] * hw[1])
    return f"image files from {least[0]}x{least[1]} to {most[0]}x{most[1]} px"


def check_head(units: Any, bundle: Any, what: str, exact: bool = True) -> None:
    """A classifier of ``units`` outputs must fit the data's classes: one each, or one sigmoid
    unit for two classes (``exact=False``: more outputs than classes are allowed, unused)."""
    classes = bundle.num_classes
    if not isinstance(units, int) or units == classes or (units > classes and not exact):
        return
    if units == 1:
        if classes == 2:
            return
        raise UsageError(f"{what}: one output unit (a sigmoid head) needs two classes; "
                         f"{bundle.name} has {classes}: give num_classes={classes}")  # fmt: skip
    raise UsageError(f"{what}: {bundle.name} has {classes} classes; give num_classes={classes}"
                     + (", or 1 for a sigmoid head" if classes == 2 else ""))


def build_model(name: str, bundle: Any, kwargs: dict[str, Any]) -> Any:
    """The zoo model ``name`` for ``bundle``'s classes and channels."""
    from cnnzoo.registry import create_model

    return create_model(name, **{"num_classes": bundle.num_classes, "in_chans": bundle.channels,
                                 **kwargs})  # fmt: skip


def make_loaders(
    config: Any, bundle: Any, mean: Any, std: Any, image_size: int | None, device: Any, dist: Any
) -> tuple[dict[str, Any], Any, Any]:
    """(the options every split's loader shares, the train loader, the val loader or None)."""
    from cnnzoo.data import make_loader

    options = dict(image_size=image_size, mean=mean, std=std, device=device, seed=config.seed,
                   channels_last=config.channels_last, num_workers=config.num_workers)  # fmt: skip
    ranks = dict(rank=dist.rank, world_size=dist.world_size)
    per_rank = math.ceil(len(bundle.train) / dist.world_size)
    batch = config.batch_size
    train = make_loader(
        bundle, "train", batch_size=batch, train=True, augment=config.augment,
        random_erasing=config.random_erasing,
        # A last batch of one sample would break BatchNorm in training mode.
        drop_last=per_rank > batch and per_rank % batch == 1, **ranks, **options,
    )  # fmt: skip
    val = None
    if bundle.val is not None and len(bundle.val) > 0:
        val = make_loader(bundle, "val", batch_size=batch, **ranks, **options)
    return options, train, val
