"""One layer's activations for one image, and one unit of it explained.

* :func:`rank_channels`: a layer's channels, strongest first (highest mean activation, as
  ``cnnzoo features`` ranks them).
* :func:`unit_field`: the box of input pixels one unit sees (its receptive field), from the
  field and jump of :mod:`cnnzoo.analysis.receptive_field`.
* :func:`unit_arithmetic`: how the unit's value is computed from the layer's input, with the
  real numbers: for a convolution, per input channel the input patch times the kernel, summed,
  plus the bias (as CNN Explainer shows for its small network); for a dense layer the largest
  terms of its dot product; for batch norm, pooling, activations and merges their formula.
  Sums are taken in float64 from the float32 tensors, so they match the layer's own output to
  float32 rounding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cnnzoo.analysis.network_graph import NetworkGraph
from cnnzoo.errors import UsageError

__all__ = ["UnitField", "rank_channels", "unit_arithmetic", "unit_field"]

TOP_TERMS = 16  # dense layers: the largest products shown one by one; the rest as one sum


def rank_channels(maps: torch.Tensor) -> torch.Tensor:
    """Channel indices of one image's layer output, strongest (highest mean) first.

    ``maps`` is (C, H, W) or (C,); ties keep channel order."""
    strength = maps.float().flatten(1).mean(dim=1) if maps.dim() > 1 else maps.float()
    return torch.sort(strength, descending=True, stable=True).indices


@dataclass(frozen=True)
class UnitField:
    """Input pixels ``top..bottom`` x ``left..right`` (inclusive; may reach past the image,
    where the padding is) that one unit sees."""

    top: float
    left: float
    bottom: float
    right: float
    size: tuple[int, int]
    jump: tuple[float, float]
    global_context: bool  # also sees the whole image (squeeze-excitation)

    def to_dict(self, image_size: tuple[int, int]) -> dict[str, Any]:
        height, width = image_size
        return {
            "top": self.top,
            "left": self.left,
            "bottom": self.bottom,
            "right": self.right,
            "size": list(self.size),
            "jump": list(self.jump),
            "global": self.global_context,
            # The part inside the image, for drawing.
            "visible": [
                max(self.top, 0.0),
                max(self.left, 0.0),
                min(self.bottom, height - 1.0),
                min(self.right, width - 1.0),
            ],
        }


def unit_field(graph: NetworkGraph, node_id: str, y: int, x: int) -> UnitField | None:
    """The receptive field of unit (``y``, ``x``) of layer ``node_id``; None when the layer's
    units see the whole image (after global pooling) or the model has an op without a rule."""
    layer = graph.fields.get(node_id)
    if layer is None or layer.field.axes is None:
        return None
    rows, cols = layer.field.axes
    return UnitField(
        top=rows.lo + y * rows.jump,
        left=cols.lo + x * cols.jump,
        bottom=rows.hi + y * rows.jump,
        right=cols.hi + x * cols.jump,
        size=(rows.size, cols.size),
        jump=(rows.jump, cols.jump),
        global_context=layer.global_context,
    )


def _grid(values: torch.Tensor) -> list[list[float]]:
    return [[float(v) for v in row] for row in values.tolist()]


def _padding(conv: nn.Conv2d) -> tuple[int, int]:
    """Rows and columns of padding before the first input pixel."""
    if isinstance(conv.padding, str):
        if conv.padding == "valid":
            return 0, 0
        # "same": torch pads half the dilated kernel before (the odd pixel goes after).
        return tuple(  # type: ignore[return-value]
            d * (k - 1) // 2 for k, d in zip(conv.kernel_size, conv.dilation, strict=True)
        )
    return int(conv.padding[0]), int(conv.padding[1])


def _conv_unit(conv: nn.Conv2d, x: torch.Tensor, channel: int, y: int, col: int) -> dict[str, Any]:
    kh, kw = conv.kernel_size
    sh, sw = conv.stride
    dh, dw = conv.dilation
    ph, pw = _padding(conv)
    if conv.padding_mode != "zeros" and (ph or pw):
        mode = "circular" if conv.padding_mode == "circular" else conv.padding_mode
        x = F.pad(x[None], (pw, pw, ph, ph), mode=mode)[0]
        ph = pw = 0
    per_group = conv.in_channels // conv.groups
    group = channel // (conv.out_channels // conv.groups)
    rows = [y * sh - ph + i * dh for i in range(kh)]
    cols = [col * sw - pw + j * dw for j in range(kw)]
    height, width = x.shape[-2:]
    inside = torch.tensor(
        [[0 <= r < height and 0 <= c < width for c in cols] for r in rows], dtype=torch.bool
    )
    patch = torch.zeros(per_group, kh, kw, dtype=torch.float64)
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            if inside[i, j]:
                patch[:, i, j] = x[group * per_group : (group + 1) * per_group, r, c].double()
    kernel = conv.weight[channel].detach().double()
    sums = (patch * kernel).sum(dim=(1, 2))
    bias = float(conv.bias[channel]) if conv.bias is not None else 0.0
    total = float(sums.sum()) + bias
    channels = [
        {
            "index": group * per_group + k,
            "patch": _grid(patch[k]),
            "kernel": _grid(kernel[k]),
            "sum": float(sums[k]),
        }
        for k in range(per_group)
    ]
    return {
        "kind": "conv",
        "formula": "Σ over input channels (input patch × kernel) + bias",
        "rows": rows,
        "cols": cols,
        "inside": inside.tolist(),
        "stride": [sh, sw],
        "padding": [ph, pw],
        "dilation": [dh, dw],
        "groups": conv.groups,
        "channels": channels,
        "bias": bias,
        "total": total,
    }


def _linear_unit(linear: nn.Linear, x: torch.Tensor, unit: int) -> dict[str, Any]:
    values = x.reshape(-1).double()
    weights = linear.weight[unit].detach().double()
    products = values * weights
    order = torch.sort(products.abs(), descending=True, stable=True).indices
    shown = order[:TOP_TERMS]
    rest = order[TOP_TERMS:]
    bias = float(linear.bias[unit]) if linear.bias is not None else 0.0
    return {
        "kind": "linear",
        "formula": "Σ input × weight + bias",
        "terms": [
            {
                "index": int(i),
                "input": float(values[i]),
                "weight": float(weights[i]),
                "product": float(products[i]),
            }
            for i in shown
        ],
        "rest": {"count": int(rest.numel()), "sum": float(products[rest].sum())},
        "bias": bias,
        "total": float(products.sum()) + bias,
    }


def _batchnorm_unit(bn: nn.modules.batchnorm._BatchNorm, value: float, channel: int) -> dict:
    mean = float(bn.running_mean[channel]) if bn.running_mean is not None else 0.0
    var = float(bn.running_var[channel]) if bn.running_var is not None else 1.0
    gamma = float(bn.weight[channel]) if bn.weight is not None else 1.0
    beta = float(bn.bias[channel]) if bn.bias is not None else 0.0
    total = (value - mean) / math.sqrt(var + bn.eps) * gamma + beta
    return {
        "kind": "batchnorm",
        "formula": "(input − mean) / √(var + eps) × γ + β",
        "input": value,
        "mean": mean,
        "var": var,
        "eps": bn.eps,
        "gamma": gamma,
        "beta": beta,
        "total": total,
    }


def _pool_unit(pool: nn.Module, x: torch.Tensor, channel: int, y: int, col: int) -> dict | None:
    def pair(value: Any) -> tuple[int, int]:
        return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))

    kh, kw = pair(pool.kernel_size)
    sh, sw = pair(pool.stride or pool.kernel_size)
    ph, pw = pair(pool.padding)
    dh, dw = pair(getattr(pool, "dilation", 1))
    height, width = x.shape[-2:]
    rows = [y * sh - ph + i * dh for i in range(kh)]
    cols = [col * sw - pw + j * dw for j in range(kw)]
    window = [
        [float(x[channel, r, c]) if 0 <= r < height and 0 <= c < width else None for c in cols]
        for r in rows
    ]
    inside = [v for row in window for v in row if v is not None]
    if not inside:
        return None
    if isinstance(pool, nn.MaxPool2d):
        return {"kind": "maxpool", "formula": "max over the window", "window": window,
                "rows": rows, "cols": cols, "total": max(inside)}  # fmt: skip
    count = kh * kw if getattr(pool, "count_include_pad", True) else len(inside)
    if getattr(pool, "divisor_override", None):
        count = pool.divisor_override
    return {"kind": "avgpool", "formula": f"sum over the window / {count}", "window": window,
            "rows": rows, "cols": cols, "total": sum(inside) / count}  # fmt: skip


def _at(tensor: torch.Tensor, channel: int, y: int, x: int) -> float:
    if tensor.dim() == 3:
        if tensor.shape[-2:] == (1, 1):  # a broadcast gate
            return float(tensor[channel, 0, 0])
        return float(tensor[channel, y, x])
    if tensor.dim() == 1:
        return float(tensor[channel])
    return float(tensor.reshape(-1)[channel])


def unit_arithmetic(
    graph: NetworkGraph,
    node_id: str,
    inputs: list[torch.Tensor],
    output: torch.Tensor,
    channel: int,
    y: int = 0,
    x: int = 0,
) -> dict[str, Any]:
    """How unit (``channel``, ``y``, ``x``) of layer ``node_id`` got its value.

    ``inputs`` and ``output`` are the layer's tensors for one image (no batch axis), as
    :func:`~cnnzoo.analysis.network_graph.layer_values` returns them. The answer always has
    ``kind``, ``value`` (the layer's own output) and, where the layer has a formula, ``total``
    (the formula worked out: equal to ``value`` up to float32 rounding) and its terms.
    """
    with torch.no_grad():
        return _unit_arithmetic(graph, node_id, inputs, output, channel, y, x)


def _unit_arithmetic(
    graph: NetworkGraph,
    node_id: str,
    inputs: list[torch.Tensor],
    output: torch.Tensor,
    channel: int,
    y: int,
    x: int,
) -> dict[str, Any]:
    node = graph.node(node_id)
    limits = list(output.shape) if output.dim() == 3 else [output.numel(), 1, 1]
    for label, index, limit in zip(("channel", "y", "x"), (channel, y, x), limits, strict=True):
        if not 0 <= index < limit:
            raise UsageError(
                f"{label} {index} is outside {node_id}'s output {'x'.join(map(str, limits))}"
            )
    value = _at(output, channel, y, x)
    base: dict[str, Any] = {"layer": node_id, "channel": channel, "y": y, "x": x, "value": value}
    module = graph.graph_module.get_submodule(node.module) if node.module else None
    first = inputs[0] if inputs else None
    detail: dict[str, Any] | None = None
    if isinstance(module, nn.Conv2d) and first is not None and first.dim() == 3:
        detail = _conv_unit(module, first, channel, y, x)
    elif isinstance(module, nn.Linear) and first is not None:
        detail = _linear_unit(module, first, channel)
    elif isinstance(module, nn.modules.batchnorm._BatchNorm) and first is not None:
        detail = _batchnorm_unit(module, _at(first, channel, y, x), channel)
    elif isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)) and first is not None:
        detail = _pool_unit(module, first, channel, y, x)
    elif node.op in ("add", "mul") and len(inputs) >= 2 and output.dim() == 3:
        terms = [_at(item, channel, y, x) for item in inputs]
        total = math.fsum(terms) if node.op == "add" else math.prod(terms)
        formula = "sum of the inputs" if node.op == "add" else "product of the inputs"
        detail = {"kind": node.op, "formula": formula, "terms": terms, "total": total}
    elif (
        isinstance(module, nn.AdaptiveAvgPool2d)
        and first is not None
        and tuple(output.shape[-2:]) == (1, 1)
    ):
        region = first[channel].double()
        detail = {"kind": "globalpool", "formula": f"mean of the {region.numel()} values of "
                  "the channel", "total": float(region.mean())}  # fmt: skip
    elif first is not None and first.shape == output.shape:
        # Element-wise: activations, dropout (identity in eval mode), ...
        detail = {"kind": "elementwise", "formula": f"{node.type}(input)",
                  "input": _at(first, channel, y, x), "total": value}  # fmt: skip
    if detail is None:
        detail = {"kind": "other"}
    return {**base, **detail}
