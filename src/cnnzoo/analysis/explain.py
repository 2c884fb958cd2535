"""What a network looked at: Grad-CAM, Grad-CAM++, integrated gradients and occlusion maps.

The attribution arithmetic is Captum's (``LayerGradCam``, ``IntegratedGradients``,
``Occlusion``); Grad-CAM++ (Chattopadhay et al. 2018), which Captum lacks, is written here in
the same style. cnnzoo supplies what needs to know the model: the default layer (the deepest
stage of ``feature_info``), checks that a method fits the layer, and the placement of a layer's
coarse map on the image. Captum's ``LayerAttribution.interpolate`` stretches an h x w map over
the image, which puts unit ``u``'s value at ``(u + 0.5)·H/h``; here each unit's value goes to
the centre of its receptive field, ``centre_0 + u·jump`` (see
:mod:`cnnzoo.analysis.receptive_field`), which is where the unit looks. The two agree for
"same"-padded networks at sides that are multiples of the jump, up to half a jump; for
unpadded ones such as LeNet-5 or Inception-v3 the stretch is off by several pixels.

Every map comes back as an (N, H, W) tensor in [0, 1] on the input's grid: 1 is the most
evidence for the target class in that image, 0 none (negative evidence is clipped, as in the
Grad-CAM paper).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

# Captum has no Grad-CAM++; ours reuses the layer-gradient helper that its LayerGradCam is
# built on, which Captum does not export (hence the pin in pyproject.toml).
from captum._utils.gradient import compute_layer_gradients_and_eval
from captum.attr import (
    GradientAttribution,
    IntegratedGradients,
    LayerAttribution,
    LayerGradCam,
    Occlusion,
)
from matplotlib.figure import Figure
from torch import nn

from cnnzoo.analysis.metrics import class_logits
from cnnzoo.analysis.receptive_field import Axis, ReceptiveFieldError, receptive_field
from cnnzoo.errors import UsageError

__all__ = [
    "LAYER_METHODS",
    "METHODS",
    "LayerGradCamPlusPlus",
    "attribution_maps",
    "explanation_figure",
    "gradcam_maps",
    "place_on_input",
    "resolve_layer",
]

METHODS = ("gradcam", "gradcam++", "integrated-gradients", "occlusion")
LAYER_METHODS = ("gradcam", "gradcam++")  # the methods that read a layer's maps


class LayerGradCamPlusPlus(LayerAttribution, GradientAttribution):
    """Grad-CAM++ (Chattopadhay, Sarkar, Howlader & Balasubramanian, WACV 2018).

    Grad-CAM weighs each channel k of the layer's maps A by the mean gradient of the class
    score. Grad-CAM++ weighs by a weighted sum of the positive gradients, with per-position
    weights (eq. 19, for the exponential of the score, which turns the higher derivatives into
    powers of the first one, g = dS/dA):

        alpha_ij = g_ij² / (2·g_ij² + Σ_ab A_ab·g_ij³),   w_k = Σ_ij alpha_ij · relu(g_ij)

    so that several instances of a class each count in full. Output: Σ_k w_k·A_k, (N, 1, h, w),
    as Captum's ``LayerGradCam`` returns it.
    """

    def __init__(self, forward_func: Any, layer: nn.Module, device_ids: Any = None) -> None:
        LayerAttribution.__init__(self, forward_func, layer, device_ids)
        GradientAttribution.__init__(self, forward_func)

    def attribute(
        self,
        inputs: torch.Tensor,
        target: Any = None,
        additional_forward_args: Any = None,
        relu_attributions: bool = True,
    ) -> torch.Tensor:
        grads, evals = compute_layer_gradients_and_eval(
            self.forward_func,
            self.layer,
            (inputs,),
            target,
            additional_forward_args,
            device_ids=self.device_ids,
        )
        grad, acts = grads[0], evals[0]
        grad_sq = grad.pow(2)
        denominator = 2 * grad_sq + acts.sum(dim=(2, 3), keepdim=True) * grad.pow(3)
        # Where the gradient is 0 the numerator is too; any finite denominator gives alpha 0.
        denominator = torch.where(denominator != 0, denominator, torch.ones_like(denominator))
        alpha = grad_sq / denominator
        weights = (alpha * F.relu(grad)).sum(dim=(2, 3), keepdim=True)
        cam = (weights * acts).sum(dim=1, keepdim=True)
        return F.relu(cam) if relu_attributions else cam


def layer_names(model: nn.Module) -> list[str]:
    return [name for name, _ in model.named_modules() if name]


def resolve_layer(model: nn.Module, layer: str | None = None) -> str:
    """``layer``, checked, or the model's deepest feature stage (what its head reads)."""
    info = getattr(model, "feature_info", None)
    if layer is None:
        if info is None:
            raise UsageError("this model declares no feature stages: name a layer with --layer")
        return info[-1].module
    names = layer_names(model)
    if layer not in names:
        stages = info.module_name() if info is not None else []
        close = difflib.get_close_matches(layer, names, n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise UsageError(
            f"no layer {layer!r} in {getattr(model, 'model_name', type(model).__name__)}; "
            f"{hint}feature stages: {', '.join(stages)} (any module name from "
            "`cnnzoo summary` works too)"
        )
    return layer


def _layer_output_shape(model: nn.Module, layer: str, example: torch.Tensor) -> torch.Size:
    from cnnzoo.analysis.flops import run_forward

    shapes: list[torch.Size] = []
    module = model.get_submodule(layer)
    handle = module.register_forward_hook(
        lambda _m, _i, out: shapes.append(out.shape) if isinstance(out, torch.Tensor) else None
    )
    try:
        run_forward(model, tuple(example.shape[1:]), "meta")
    finally:
        handle.remove()
    if not shapes:
        raise UsageError(f"layer {layer!r} does not output one tensor; pick another")
    return shapes[0]


def _check_spatial_layer(model: nn.Module, layer: str, example: torch.Tensor, method: str) -> None:
    shape = _layer_output_shape(model, layer, example)
    if len(shape) != 4 or shape[-1] * shape[-2] <= 1:
        info = getattr(model, "feature_info", None)
        stages = ", ".join(info.module_name()) if info is not None else "a convolutional layer"
        what = "a 1x1 map" if len(shape) == 4 else f"shape {tuple(shape)}"
        raise UsageError(
            f"{method} needs a layer with spatial maps, and {layer} gives {what}, which cannot "
            f"point at a place in the image; use one of: {stages}"
        )


def place_on_input(
    maps: torch.Tensor, size: tuple[int, int], axes: tuple[Axis, Axis] | None = None
) -> torch.Tensor:
    """Resample (N, 1, h, w) layer maps onto the (H, W) input grid.

    With the layer's receptive-field ``axes``, unit ``u``'s value lands on the centre of its
    field, ``axis.center + u·axis.jump``, with bilinear interpolation between centres and the
    edge values held beyond them. Without, the map is stretched over the image
    (``LayerAttribution.interpolate``).
    """
    if axes is None:
        return LayerAttribution.interpolate(maps, size, interpolate_mode="bilinear")
    grids = []
    for axis, units, pixels in zip(axes, maps.shape[-2:], size, strict=True):
        # Position of each input pixel in map units, scaled to grid_sample's [-1, 1].
        coordinate = (torch.arange(pixels, dtype=maps.dtype) - axis.center) / axis.jump
        scale = max(units - 1, 1)
        grids.append((2 * coordinate / scale - 1).clamp(-1, 1) if units > 1 else 0 * coordinate)
    rows, cols = torch.meshgrid(grids[0], grids[1], indexing="ij")
    grid = torch.stack((cols, rows), dim=-1).to(maps.device).expand(maps.shape[0], -1, -1, -1)
    return F.grid_sample(maps, grid, mode="bilinear", align_corners=True)


def _normalise(heat: torch.Tensor) -> torch.Tensor:
    """(N, H, W) -> [0, 1] per image: negative evidence clipped, the maximum scaled to 1."""
    heat = F.relu(heat)
    peak = heat.flatten(1).amax(dim=1).clamp_min(torch.finfo(heat.dtype).tiny)
    return heat / peak[:, None, None]


@dataclass
class AttributionOptions:
    """Knobs of the methods that have them."""

    steps: int = 32  # integrated gradients: points on the path from the baseline
    window: int | None = None  # occlusion: square window side (default about side / 7)
    stride: int | None = None  # occlusion: step (default half the window)
    baseline: torch.Tensor | None = None  # (C, 1, 1) or (C, H, W) model input; default 0


def attribution_maps(
    model: nn.Module,
    batch: torch.Tensor,
    targets: torch.Tensor | Sequence[int],
    method: str = "gradcam",
    layer: str | None = None,
    options: AttributionOptions | None = None,
) -> torch.Tensor:
    """(N, H, W) maps in [0, 1] of where ``batch`` (model inputs, normalised) shows ``targets``.

    ``layer`` applies to Grad-CAM and Grad-CAM++ (default: the deepest feature stage); the
    other methods attribute to input pixels. The model is put in eval mode.
    """
    if method not in METHODS:
        raise UsageError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    options = options or AttributionOptions()
    targets = torch.as_tensor(targets, dtype=torch.long, device=batch.device).flatten()
    if targets.numel() != batch.shape[0]:
        raise ValueError(f"{batch.shape[0]} images but {targets.numel()} targets")
    model.eval()

    def scores(x: torch.Tensor) -> torch.Tensor:  # one per class, also for a sigmoid head
        return class_logits(model(x))

    size = (int(batch.shape[-2]), int(batch.shape[-1]))
    if method in LAYER_METHODS:
        name = resolve_layer(model, layer)
        _check_spatial_layer(model, name, batch, method)
        module = model.get_submodule(name)
        explainer = (LayerGradCam if method == "gradcam" else LayerGradCamPlusPlus)(scores, module)
        coarse = explainer.attribute(batch, target=targets, relu_attributions=True)
        try:
            axes = receptive_field(model, tuple(batch.shape[1:]))[name].field.axes
        except (ReceptiveFieldError, KeyError):
            axes = None
        heat = place_on_input(coarse.detach().float(), size, axes)[:, 0]
        return _normalise(heat)
    if layer is not None:
        raise UsageError(f"--layer applies to {' and '.join(LAYER_METHODS)}, not to {method}")
    baseline = options.baseline if options.baseline is not None else torch.zeros(())
    baseline = baseline.to(batch.device, batch.dtype).expand_as(batch[0])[None]
    if method == "integrated-gradients":
        attribution = IntegratedGradients(scores).attribute(
            batch,
            baselines=baseline,
            target=targets,
            n_steps=options.steps,
            internal_batch_size=max(16, batch.shape[0]),  # images per pass along the path
        )
    else:
        window = options.window or max(2, round(max(size) / 7))
        if window > min(size):
            raise UsageError(f"the occlusion window ({window} px) is larger than the image")
        stride = options.stride or max(1, window // 2)
        channels = batch.shape[1]
        attribution = Occlusion(scores).attribute(
            batch,
            sliding_window_shapes=(channels, window, window),
            strides=(channels, stride, stride),
            baselines=baseline,
            target=targets,
            perturbations_per_eval=16,
        )
    return _normalise(attribution.detach().float().sum(dim=1))


def gradcam_maps(
    model: nn.Module,
    batch: torch.Tensor,
    targets: torch.Tensor | Sequence[int],
    layer: str | None = None,
) -> torch.Tensor:
    """Grad-CAM of ``targets`` for normalised ``batch``: (N, H, W) in [0, 1] on the input grid,
    at ``layer`` (default: the deepest feature stage). The overlay of ``predict --cam``."""
    return attribution_maps(model, batch, targets, "gradcam", layer)


# --------------------------------------------------------------------------- the figure


def explanation_figure(
    image: torch.Tensor,
    heat: torch.Tensor,
    probs: torch.Tensor,
    class_names: Sequence[str],
    target: int,
    method: str,
    layer: str | None = None,
    title: str | None = None,
    k: int = 5,
) -> Figure:
    """The image, the heat map over it (with a colour bar) and the top-k classes' probabilities.

    ``image`` is the uint8 (C, H, W) image as the model saw it, ``heat`` an (H, W) map in
    [0, 1], ``probs`` the full probability vector.
    """
    from cnnzoo.analysis.plots import (
        _heat_colorbar,
        _new_figure,
        _overlay_heat,
        _show_image,
        plot_topk_bars,
    )

    fig = _new_figure(13.5, 4.4)
    image_ax, heat_ax, bar_ax = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1, 1.2, 1.3]})
    _show_image(image_ax, image)
    image_ax.set_title(title or "input", fontsize=10)
    _show_image(heat_ax, image)
    _overlay_heat(heat_ax, heat)
    _heat_colorbar(fig, heat_ax, "evidence for the class (1 = strongest)")
    where = f" at {layer}" if layer else ""
    heat_ax.set_title(f"{method}{where}", fontsize=10)
    plot_topk_bars(image, probs, class_names, bar_ax, k=k)
    name = class_names[target]
    fig.suptitle(f"why '{name}' (p = {float(probs[target]):.3f})", fontsize=12)
    fig.tight_layout()
    return fig
