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

Vision Transformers: a layer's tokens are read as a map of the patch tokens (the class token
set aside), so Grad-CAM and Grad-CAM++ work on them as on a convolution's maps; the default layer
is the input of the last attention block (the model's ``explain_layer``), since nothing after it
carries the patch tokens to the class token. ``attention-rollout`` (Abnar & Zuidema 2020,
"Quantifying Attention Flow in Transformers") is theirs alone: each block's attention, averaged
over heads, plus the identity for the residual path and renormalised, multiplied through the
blocks; the class token's row says how much each patch flowed into it. It is class-agnostic.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
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
from cnnzoo.models.features import map_to_tokens, tokens_to_map

__all__ = [
    "LAYER_METHODS",
    "METHODS",
    "LayerGradCamPlusPlus",
    "attention_rollout",
    "attribution_maps",
    "explanation_figure",
    "gradcam_maps",
    "place_on_input",
    "resolve_layer",
]

METHODS = ("gradcam", "gradcam++", "integrated-gradients", "occlusion", "attention-rollout")
LAYER_METHODS = ("gradcam", "gradcam++")  # the methods that read a layer's maps
TOKEN_METHODS = ("attention-rollout",)  # Vision Transformers only


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
        default = getattr(model, "explain_layer", None)
        if default is not None:
            return str(default)
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


def _prefix_tokens(model: nn.Module) -> int | None:
    """How many tokens precede a ViT's patch tokens; None for a model of maps."""
    prefix = getattr(model, "num_prefix_tokens", None)
    return int(prefix) if prefix is not None else None


def _check_spatial_layer(model: nn.Module, layer: str, example: torch.Tensor, method: str) -> None:
    shape = _layer_output_shape(model, layer, example)
    prefix = _prefix_tokens(model)
    if prefix is not None and len(shape) == 3 and shape[1] - prefix > 1:
        return  # a ViT's tokens: read as a map of its patches
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
    if method in TOKEN_METHODS:
        if layer is not None:
            raise UsageError(f"--layer applies to {' and '.join(LAYER_METHODS)}, not to {method}")
        return attention_rollout(model, batch)
    if method in LAYER_METHODS:
        name = resolve_layer(model, layer)
        _check_spatial_layer(model, name, batch, method)
        kind = LayerGradCam if method == "gradcam" else LayerGradCamPlusPlus
        with _layer_maps(model, name, batch) as module:
            coarse = kind(scores, module).attribute(batch, target=targets, relu_attributions=True)
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


class _TokenMap(nn.Identity):
    """Where a ViT layer's tokens pass as a map: the module Captum's layer methods hook."""


@contextmanager
def _layer_maps(model: nn.Module, name: str, batch: torch.Tensor) -> Iterator[nn.Module]:
    """The module whose output is ``name``'s maps: the layer itself, or for a ViT's token layer
    a stand-in that its tokens pass through as a map of the patches (values unchanged)."""
    module = model.get_submodule(name)
    prefix = _prefix_tokens(model)
    if prefix is None or len(_layer_output_shape(model, name, batch)) != 3:
        yield module
        return
    probe = _TokenMap()

    def as_map(_module: nn.Module, _inputs: Any, tokens: torch.Tensor) -> torch.Tensor:
        return map_to_tokens(probe(tokens_to_map(tokens, prefix)), tokens[:, :prefix])

    handle = module.register_forward_hook(as_map)
    try:
        yield probe
    finally:
        handle.remove()


def attention_rollout(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema 2020) of a Vision Transformer: (N, H, W) in [0, 1].

    Every block's attention weights A (N, L, L), averaged over heads, become 0.5·A + 0.5·I (the
    residual connection carries each token on), and their product over the blocks, first block
    rightmost, says how much of each input token reached each output token; the class token's
    row over the patch tokens is the map, placed on the image at the patches' centres.
    """
    prefix = _prefix_tokens(model)
    blocks = [m for m in model.modules() if isinstance(m, nn.MultiheadAttention)]
    if prefix is None or not blocks:
        name = getattr(model, "model_name", type(model).__name__)
        raise UsageError(
            f"attention-rollout needs a Vision Transformer (self-attention over patch tokens); "
            f"{name} has none: use gradcam, gradcam++, integrated-gradients or occlusion"
        )
    weights: list[torch.Tensor] = []

    def keep(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], _out: Any) -> None:
        # The model asks for no weights (faster); the same attention is run again for them.
        query, key, value = (
            args[i] if len(args) > i else kwargs[name]
            for i, name in enumerate(("query", "key", "value"))
        )
        _, attention = nn.MultiheadAttention.forward(
            module, query, key, value, need_weights=True, average_attn_weights=True
        )
        weights.append(attention.detach())

    model.eval()
    handles = [m.register_forward_hook(keep, with_kwargs=True) for m in blocks]
    try:
        with torch.no_grad():
            model(batch)
    finally:
        for handle in handles:
            handle.remove()
    tokens = weights[0].shape[-1]
    eye = torch.eye(tokens, dtype=weights[0].dtype, device=weights[0].device)
    flow = eye.expand(batch.shape[0], tokens, tokens)
    for attention in weights:
        flow = (0.5 * attention + 0.5 * eye) @ flow
    patches = flow[:, 0, prefix:]
    side = math.isqrt(patches.shape[-1])
    coarse = patches.reshape(-1, 1, side, side).float()
    embed = getattr(model, "first_conv", None)
    try:
        axes = receptive_field(model, tuple(batch.shape[1:]))[embed].field.axes if embed else None
    except (ReceptiveFieldError, KeyError):
        axes = None
    size = (int(batch.shape[-2]), int(batch.shape[-1]))
    return _normalise(place_on_input(coarse, size, axes)[:, 0])


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
