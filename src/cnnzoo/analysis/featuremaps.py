"""Pictures of a network's insides: the strongest feature maps of each stage, and the first
convolution's kernels (as in Krizhevsky et al. 2012, Fig. 3)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from cnnzoo.errors import UsageError
from cnnzoo.models.features import FeatureInfo, feature_extractor

__all__ = [
    "filters_figure",
    "first_conv_weight",
    "resolve_stages",
    "stage_maps",
    "stage_maps_figure",
]


def resolve_stages(info: FeatureInfo, stages: Sequence[str] | None) -> tuple[int, ...]:
    """Stage indices from names or (negative) indices as text; default: every stage."""
    if not stages:
        return info.resolve(None)
    names = info.module_name()
    indices = []
    for item in stages:
        if item in names:
            indices.append(names.index(item))
            continue
        try:
            indices.append(int(item))
        except ValueError:
            raise UsageError(
                f"no stage {item!r}; stages: {', '.join(names)} (or their indices "
                f"0..{len(names) - 1}, negative from the end)"
            ) from None
    try:
        return info.resolve(indices)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def stage_maps(
    model: nn.Module, batch: torch.Tensor, stages: Sequence[int] | None = None
) -> list[torch.Tensor]:
    """The maps of ``stages`` (indices into ``model.feature_info``) for a normalised batch."""
    backbone = feature_extractor(model, stages).eval()
    with torch.no_grad():
        return [m.detach().float().cpu() for m in backbone(batch)]


def stage_maps_figure(
    maps: Sequence[torch.Tensor],
    info: FeatureInfo,
    image: torch.Tensor | None = None,
    count: int = 8,
    title: str | None = None,
) -> Figure:
    """One row per stage: its ``count`` strongest channels (highest mean activation) for the
    first image of the batch, on one colour scale per row with its colour bar.

    ``info`` describes the stages of ``maps`` (e.g. a backbone's ``feature_info``); ``image``,
    the uint8 input, is shown at the left of the first row.
    """
    from cnnzoo.analysis.activations import rank_channels
    from cnnzoo.analysis.plots import _new_figure, _show_image

    if len(maps) != len(info):
        raise ValueError(f"{len(maps)} maps for {len(info)} stages")
    count = max(1, min(count, max(m.shape[1] for m in maps)))
    columns = count + 1  # the label / input column
    fig = _new_figure(1.45 * columns + 1.2, 1.6 * len(maps) + 0.6)
    grid = fig.add_gridspec(len(maps), columns + 1, width_ratios=[1] * columns + [0.08])
    for row, (stage_map, stage) in enumerate(zip(maps, info, strict=True)):
        first = stage_map[0]
        order = rank_channels(first)[:count]
        chosen = first[order]
        low, high = float(chosen.min()), float(chosen.max())
        high = high if high > low else low + 1e-6
        label_ax = fig.add_subplot(grid[row, 0])
        if image is not None and row == 0:
            _show_image(label_ax, image)
        else:
            label_ax.set_axis_off()
        label_ax.set_title(
            f"{stage.module}\n{stage.num_chs} ch, {first.shape[-2]}x{first.shape[-1]}, "
            f"1/{stage.reduction}",
            fontsize=8,
        )
        shown = None
        for column, (channel, values) in enumerate(zip(order.tolist(), chosen, strict=True)):
            ax = fig.add_subplot(grid[row, column + 1])
            shown = ax.imshow(values.numpy(), cmap="viridis", vmin=low, vmax=high)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"ch {channel}", fontsize=7)
        if shown is not None:
            bar = fig.colorbar(shown, cax=fig.add_subplot(grid[row, columns]))
            bar.ax.tick_params(labelsize=7)
            bar.set_label("activation", fontsize=7)
    fig.suptitle(title or "strongest feature maps per stage (mean activation)", fontsize=11)
    fig.tight_layout()
    return fig


def first_conv_weight(model: nn.Module) -> tuple[str, torch.Tensor]:
    """(name, weight) of the model's first convolution: ``first_conv``, else the first Conv2d."""
    name = getattr(model, "first_conv", None)
    module = model.get_submodule(name) if name else None
    if not isinstance(module, nn.Conv2d):
        found = next(((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)
        if found is None:
            raise UsageError("this model has no convolution to show")
        name, module = found
    return str(name), module.weight.detach().float().cpu()


def filters_figure(weight: torch.Tensor, title: str = "first convolution") -> Figure:
    """The kernels of a (out, in, kh, kw) weight as a grid of small images.

    Three-channel kernels are shown in colour (each channel is R, G, B), all kernels scaled by
    one common range so their strengths compare, as in AlexNet's Figure 3; other kernels as the
    mean over input channels on a diverging scale with a colour bar (weight value).
    """
    from cnnzoo.analysis.plots import _new_figure

    out_channels, in_channels = weight.shape[:2]
    columns = math.ceil(math.sqrt(out_channels * 1.5))
    rows = math.ceil(out_channels / columns)
    colour = in_channels == 3
    fig = _new_figure(0.55 * columns + (0.3 if colour else 1.3), 0.55 * rows + 0.9)
    grid = fig.add_gridspec(rows, columns + (0 if colour else 1), wspace=0.08, hspace=0.08)
    if colour:
        low, high = float(weight.min()), float(weight.max())
        images = ((weight - low) / max(high - low, 1e-12)).permute(0, 2, 3, 1).numpy()
    else:
        images = weight.mean(dim=1).numpy()
        bound = float(np.abs(images).max()) or 1.0
    shown = None
    for index in range(out_channels):
        ax = fig.add_subplot(grid[index // columns, index % columns])
        if colour:
            ax.imshow(images[index], interpolation="nearest")
        else:
            shown = ax.imshow(
                images[index], cmap="RdBu_r", vmin=-bound, vmax=bound, interpolation="nearest"
            )
        ax.set_xticks([])
        ax.set_yticks([])
    kh, kw = weight.shape[-2:]
    scale = "RGB, one scale for all kernels" if colour else f"mean over {in_channels} channel(s)"
    fig.suptitle(f"{title}: {out_channels} kernels of {kh}x{kw} ({scale})", fontsize=10)
    if shown is not None:
        bar = fig.colorbar(shown, cax=fig.add_subplot(grid[:, columns]))
        bar.set_label("weight", fontsize=8)
    return fig
