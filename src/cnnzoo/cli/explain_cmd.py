"""`cnnzoo explain`, `cnnzoo features`, `cnnzoo filters`: see what a network looks at."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from cnnzoo.cli.options import add_source_arguments, positive_int
from cnnzoo.errors import UsageError
from cnnzoo.train.hardware import resolve_device

METHODS = ("gradcam", "gradcam++", "integrated-gradients", "occlusion", "attention-rollout")

# preprocess(uint8 (C, H, W) image) -> (model input (C, H', W') float, the uint8 image as fed)
Preprocess = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "explain",
        help="heat maps of where a model looked: Grad-CAM, Grad-CAM++, integrated gradients...",
        description=(
            "For each image, write a PNG with the image, a heat map of the evidence for the "
            "target class over it, and the top-k classes. Grad-CAM and Grad-CAM++ read a layer "
            "(default: the model's deepest feature stage; for a Vision Transformer the input of "
            "its last attention, its tokens read as a map); integrated gradients and occlusion "
            "attribute to pixels; attention-rollout (Vision Transformers only) follows the "
            "attention from the patches to the class token."
        ),
    )
    add_source_arguments(p)
    p.add_argument("images", metavar="IMAGE", nargs="+")
    p.add_argument("--method", choices=METHODS, default="gradcam")
    p.add_argument(
        "--target", default="top", help="'top' (the predicted class), a class name or an index"
    )
    p.add_argument("--layer", help="module name for gradcam / gradcam++ (see `cnnzoo summary`)")
    p.add_argument("--out", required=True, help="folder for the PNGs")
    p.add_argument("--topk", type=positive_int, default=5)
    p.add_argument("--steps", type=positive_int, default=32, help="integrated-gradients steps")
    p.add_argument("--window", type=positive_int, help="occlusion window side in pixels")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... or auto")
    p.set_defaults(run=run_explain)

    p = subparsers.add_parser(
        "features",
        help="the strongest feature maps of each stage for one image",
        description="A grid, one row per feature stage, of the channels most active on IMAGE.",
    )
    add_source_arguments(p)
    p.add_argument("image", metavar="IMAGE")
    p.add_argument(
        "--stages", nargs="+", help="stage names or indices (negative from the end); default all"
    )
    p.add_argument("--maps", type=positive_int, default=8, help="maps per stage")
    p.add_argument("--out", required=True, help="a .png file or a folder")
    p.set_defaults(run=run_features)

    p = subparsers.add_parser(
        "filters",
        help="the first convolution's kernels as an image grid",
        description="Draw the first convolution's kernels (in colour for RGB stems).",
    )
    add_source_arguments(p)
    p.add_argument("--out", required=True, help="a .png file or a folder")
    p.set_defaults(run=run_filters)


# --------------------------------------------------------------------------- loading


def _load_source(
    source: str, weights: str | None, command: str = "explain"
) -> tuple[Any, list[str], Preprocess]:
    """(model in eval mode, class names, preprocess) for a run directory, a checkpoint or a
    model name with ``--weights``, through the loader predict and evaluate use.

    ``preprocess`` turns a decoded uint8 (C, H, W) image into the model's input (prepared
    exactly as the weights expect) and the uint8 image the model sees, to draw under maps.
    """
    from cnnzoo.inference import load_model

    loaded = load_model(source, weights, need_module=command)
    if not loaded.trained:
        print(f"note: {source} has untrained weights (no --weights)", file=sys.stderr)

    def preprocess(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = loaded.preprocess(image)
        return x, loaded.shown(x[None])[0]

    return loaded.model, loaded.class_names, preprocess


def _read(paths: Sequence[str], channels: int) -> list[torch.Tensor]:
    from cnnzoo.data import read_image

    images = []
    for path in paths:
        if not Path(path).is_file():
            raise UsageError(f"{path}: no such image file")
        images.append(read_image(path, channels))  # DataError (exit 1) when undecodable
    return images


def _channels(model: Any) -> int:
    return int(model.default_cfg["input_size"][0])


def _output_file(out: str, stem: str) -> Path:
    path = Path(out)
    return path if path.suffix.lower() == ".png" else path / f"{stem}.png"


def _resolve_target(target: str, class_names: list[str]) -> int | None:
    if target == "top":
        return None
    if target in class_names:
        return class_names.index(target)
    if target.isdigit() and int(target) < len(class_names):
        return int(target)
    listed = ", ".join(class_names[:12]) + (", ..." if len(class_names) > 12 else "")
    raise UsageError(
        f"--target {target!r} is not a class of this model; use 'top', an index below "
        f"{len(class_names)} or a class name ({listed})"
    )


def _progress(total: int) -> Any:
    from rich.progress import Progress

    return Progress(disable=not sys.stderr.isatty() or total < 2, transient=True)


# --------------------------------------------------------------------------- commands


def run_explain(args: argparse.Namespace) -> int:
    from cnnzoo.analysis.explain import (
        LAYER_METHODS,
        AttributionOptions,
        attribution_maps,
        explanation_figure,
        resolve_layer,
    )
    from cnnzoo.analysis.metrics import class_logits
    from cnnzoo.analysis.plots import save_figure

    model, class_names, preprocess = _load_source(args.source, args.weights)
    if args.method in LAYER_METHODS:
        layer = resolve_layer(model, args.layer)
    elif args.layer is not None:
        raise UsageError(f"--layer applies to {' and '.join(LAYER_METHODS)}, not to {args.method}")
    else:
        layer = None
    target = _resolve_target(args.target, class_names)
    images = _read(args.images, _channels(model))
    device = resolve_device(args.device)
    model.to(device)
    options = AttributionOptions(steps=args.steps, window=args.window)
    out_dir = Path(args.out)
    suffix = args.method.replace("+", "p")
    with _progress(len(images)) as progress:
        task = progress.add_task(f"{args.method}", total=len(images))
        for path, image in zip(args.images, images, strict=True):
            batch, shown = preprocess(image)
            batch = batch[None].to(device)
            with torch.no_grad():
                probs = torch.softmax(class_logits(model(batch)).float(), dim=1)[0].cpu()
            index = int(probs.argmax()) if target is None else target
            heat = attribution_maps(model, batch, [index], args.method, layer, options)[0]
            fig = explanation_figure(
                shown, heat.cpu(), probs, class_names, index, args.method, layer,
                title=Path(path).name, k=args.topk,
            )  # fmt: skip
            written = save_figure(fig, out_dir / f"{Path(path).stem}_{suffix}.png")
            print(f"{path}: {class_names[index]} (p = {float(probs[index]):.3f}) -> {written}")
            progress.advance(task)
    return 0


def run_features(args: argparse.Namespace) -> int:
    from cnnzoo.analysis.featuremaps import resolve_stages, stage_maps, stage_maps_figure
    from cnnzoo.analysis.plots import save_figure

    model, _, preprocess = _load_source(args.source, args.weights, "features")
    indices = resolve_stages(model.feature_info, args.stages)
    (image,) = _read([args.image], _channels(model))
    batch, shown = preprocess(image)
    maps = stage_maps(model, batch[None], indices)
    info = model.feature_info
    chosen = type(info)(info[i] for i in indices)
    title = f"{model.model_name}: strongest feature maps of {Path(args.image).name}"
    fig = stage_maps_figure(maps, chosen, shown, args.maps, title)
    written = save_figure(fig, _output_file(args.out, f"{Path(args.image).stem}_features"))
    print(f"{len(indices)} stages -> {written}")
    return 0


def run_filters(args: argparse.Namespace) -> int:
    from cnnzoo.analysis.featuremaps import filters_figure, first_conv_weight
    from cnnzoo.analysis.plots import save_figure

    model, _, _ = _load_source(args.source, args.weights, "filters")
    name, weight = first_conv_weight(model)
    fig = filters_figure(weight, f"{model.model_name} {name}")
    written = save_figure(fig, _output_file(args.out, "filters"))
    print(f"{weight.shape[0]} kernels of {name} -> {written}")
    return 0
