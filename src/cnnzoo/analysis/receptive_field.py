"""Receptive field and effective stride (jump) of every layer, for any model, by one mechanism.

One forward pass on the meta device (nothing is computed or allocated) runs under a
``TorchFunctionMode`` that follows every tensor from the input: each op's rule turns the
geometry of its inputs into the geometry of its output (Araujo, Norris & Sim, "Computing
Receptive Fields of Convolutional Neural Networks", Distill 2019). Along each spatial axis a
tensor carries the input interval ``[lo, hi]`` that its unit 0 sees and the ``jump`` between
neighbouring units (unit ``u`` sees ``[lo + u·jump, hi + u·jump]``):

* convolution and pooling with kernel ``k``, stride ``s``, padding ``p``, dilation ``d``:
  ``lo -= p·jump``, ``hi += (d·(k−1) − p)·jump``, ``jump *= s``;
* strided slicing (option-A shortcuts) and padding shift or subsample the grid;
* element-wise merges (residual sums, squeeze-excitation products) and concatenations take
  the union of their inputs' intervals: the largest field over all paths;
* global pooling, spatial means and flattening for a dense layer see the whole input. That is
  kept as a flag, ``global_context``, beside the local field, so a squeeze-excitation network
  still shows the field of its convolutions and says that its units also see the whole image;
* tensors keep their spatial axes where they put them (a :class:`Layout`): permutes to
  channels-last (ConvNeXt's blocks) move them, flattening a map into a sequence of tokens (a
  Vision Transformer's patches) and unflattening it keep the grid, a class token put in front
  is skipped, and per-pixel or per-token layers (layer norm, linear layers over the channels)
  keep the field;
* self-attention gives every token the whole input: the field is then flagged ``whole``, and the
  axes go on placing each token at its own patch (a ViT: a patch at the embedding, the whole
  image from the first attention block on).

Any op that changes the spatial layout in a way these rules do not cover raises
:class:`ReceptiveFieldError` instead of guessing. Sizes do not depend on padding (they may
exceed the image); ``lo``/``hi`` do, and give the field's centre in input pixels.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from cnnzoo.analysis.flops import InputSize, resolve_input_size, run_forward

__all__ = [
    "Axis",
    "Field",
    "LAYOUT_NCHW",
    "LayerField",
    "Layout",
    "ReceptiveField",
    "ReceptiveFieldError",
    "receptive_field",
]


class ReceptiveFieldError(ValueError):
    """An op whose effect on the spatial layout has no rule."""


@dataclass(frozen=True)
class Axis:
    """One spatial axis: unit ``u`` sees input pixels ``lo + u·jump`` to ``hi + u·jump``."""

    lo: float
    hi: float
    jump: float

    @property
    def size(self) -> int:
        return int(round(self.hi - self.lo + 1))

    @property
    def center(self) -> float:
        """Centre of unit 0's field, in input pixel coordinates (pixel i's centre is i)."""
        return (self.lo + self.hi) / 2

    def window(self, kernel: int, stride: float, padding: int, dilation: int = 1) -> Axis:
        return Axis(
            lo=self.lo - padding * self.jump,
            hi=self.hi + (dilation * (kernel - 1) - padding) * self.jump,
            jump=self.jump * stride,
        )

    def union(self, other: Axis) -> Axis:
        if not math.isclose(self.jump, other.jump):
            raise ReceptiveFieldError(
                f"merging maps of different strides ({self.jump:g} and {other.jump:g} px)"
            )
        return Axis(min(self.lo, other.lo), max(self.hi, other.hi), self.jump)


@dataclass(frozen=True)
class Layout:
    """Where a tensor keeps its spatial positions, as axes counted from the last one (-1).

    A map has two: ``dims`` = (height axis, width axis), (-2, -1) for NCHW, (-3, -2) for
    channels-last NHWC. A sequence of tokens has one, (-2,) for (N, L, C) or (-1,) for (N, C, L),
    whose positions are ``prefix`` extra tokens (a ViT's class token) and then a ``grid`` (h, w)
    read row by row.
    """

    dims: tuple[int, ...] = (-2, -1)
    grid: tuple[int, int] | None = None
    prefix: int = 0

    @property
    def tokens(self) -> bool:
        return len(self.dims) == 1

    def positions(self, rank: int) -> tuple[int, ...] | None:
        """The spatial axes as indices into a tensor of ``rank`` axes (None if it has too few)."""
        if rank < max(-d for d in self.dims):
            return None
        return tuple(rank + d for d in self.dims)

    def spatial(self, tensor: Any) -> tuple[int, int] | None:
        """(H, W) of a tensor in this layout; None when it is not one."""
        if not isinstance(tensor, torch.Tensor):
            return None
        where = self.positions(tensor.dim())
        if where is None or (not self.tokens and tensor.dim() < 3):
            return None
        if self.tokens:
            return self.grid
        return int(tensor.shape[where[0]]), int(tensor.shape[where[1]])

    def moved(self, positions: Sequence[int], rank: int) -> Layout:
        """The same layout with its spatial axes at ``positions`` of a ``rank``-axis tensor."""
        return Layout(tuple(p - rank for p in positions), self.grid, self.prefix)


LAYOUT_NCHW = Layout()


@dataclass(frozen=True)
class Field:
    """What one tensor's units see: a local field (``axes``: H, W) and/or the whole input.

    ``whole``: every unit sees the whole input (self-attention); ``axes`` then still say where
    each unit sits (its own patch) and the jump between units. ``layout``: where the tensor
    keeps its spatial axes.
    """

    axes: tuple[Axis, Axis] | None
    global_context: bool = False
    whole: bool = False
    layout: Layout = LAYOUT_NCHW

    def merge(self, other: Field) -> Field:
        if self.axes is None or other.axes is None:
            axes = self.axes or other.axes
            layout = self.layout if self.axes is not None else other.layout
        else:
            if self.layout.dims != other.layout.dims:
                raise ReceptiveFieldError("merging tensors whose spatial axes sit differently")
            axes = (self.axes[0].union(other.axes[0]), self.axes[1].union(other.axes[1]))
            layout = self.layout
        return Field(
            axes,
            self.global_context or other.global_context,
            self.whole or other.whole,
            layout,
        )


GLOBAL = Field(None, True)


@dataclass(frozen=True)
class LayerField:
    """The field of one module's output (its first call), as :func:`receptive_field` reports it."""

    name: str
    type: str
    field: Field
    output_size: tuple[int, int] | None  # (H, W) of the module's map; None when not spatial
    input_size: tuple[int, int] | None = None  # (H, W) of the image the pass ran on

    @property
    def size(self) -> tuple[int, int] | None:
        """(height, width) of the field in input pixels (the input's, for a unit that sees it
        all through attention); None when only global."""
        axes = self.field.axes
        if axes is None:
            return None
        if self.field.whole and self.input_size is not None:
            return self.input_size
        return (axes[0].size, axes[1].size)

    @property
    def jump(self) -> tuple[float, float] | None:
        axes = self.field.axes
        return None if axes is None else (axes[0].jump, axes[1].jump)

    @property
    def center(self) -> tuple[float, float] | None:
        axes = self.field.axes
        return None if axes is None else (axes[0].center, axes[1].center)

    @property
    def global_context(self) -> bool:
        return self.field.global_context

    @property
    def size_text(self) -> str:
        size = self.size
        if size is None:
            return "global"
        text = str(size[0]) if size[0] == size[1] else f"{size[0]}x{size[1]}"
        if self.field.whole:
            return f"{text} (all)"
        return text + ("*" if self.global_context else "")

    @property
    def jump_text(self) -> str:
        jump = self.jump
        if jump is None:
            return "--"
        parts = [f"{value:g}" if float(value).is_integer() else f"{value:.2f}" for value in jump]
        return parts[0] if parts[0] == parts[1] else "x".join(parts)


GLOBAL_NOTE = "also sees the whole image through global pooling (squeeze-excitation)"
WHOLE_NOTE = "every token sees the whole image through self-attention"


@dataclass
class ReceptiveField:
    """Per-module fields of one forward pass, in module order, and the deepest local map's."""

    input_size: tuple[int, ...]
    layers: dict[str, LayerField] = field(default_factory=dict)
    total: LayerField | None = None  # the last module output that is still a local map
    attention_from: str | None = None  # the first module whose units see the whole input

    def __getitem__(self, name: str) -> LayerField:
        try:
            return self.layers[name]
        except KeyError:
            raise KeyError(f"no module {name!r} ran in the forward pass") from None

    def __str__(self) -> str:
        rows = [("Layer", "Type", "RF", "Jump")]
        rows += [
            (layer.name, layer.type, layer.size_text, layer.jump_text)
            for layer in self.layers.values()
            if layer.name
        ]
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        lines = [
            "  ".join(
                [row[0].ljust(widths[0]), row[1].ljust(widths[1])]
                + [row[2].rjust(widths[2]), row[3].rjust(widths[3])]
            ).rstrip()
            for row in rows
        ]
        lines += [f"{label}  {value}" for label, value in self.totals()]
        return "\n".join(lines)

    def totals(self) -> list[tuple[str, str]]:
        """(label, value) lines: the deepest map's field and jump, and the global-context note."""
        total = self.total
        if total is None:
            return [("Receptive field", "global")]
        size = total.size_text.removesuffix(" (all)")
        lines = [
            (
                f"Receptive field ({total.name})",
                f"{size} px" + (", the whole image" if total.field.whole else ""),
            ),
            ("Effective stride (jump)", f"{total.jump_text} px"),
        ]
        if any(layer.global_context for layer in self.layers.values() if layer.size):
            lines.append(("*", GLOBAL_NOTE))
        if self.attention_from is not None:
            lines.append(("(all)", f"{WHOLE_NOTE}, from {self.attention_from} on"))
        return lines


# --- rules ---------------------------------------------------------------------------------


def _pair(value: Any) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    values = tuple(int(v) for v in value)
    return (values[0], values[0]) if len(values) == 1 else (values[-2], values[-1])


def _arg(args: Sequence[Any], kwargs: dict[str, Any], index: int, name: str, default: Any) -> Any:
    if len(args) > index:
        return args[index]
    return kwargs.get(name, default)


def _spatial(tensor: Any, layout: Layout = LAYOUT_NCHW) -> tuple[int, int] | None:
    return layout.spatial(tensor)


def _needs_map(source: Field, what: str) -> None:
    """Kernels, pools and padding work on the last two axes: the field must be an NCHW map."""
    if source.axes is not None and source.layout != LAYOUT_NCHW:
        raise ReceptiveFieldError(f"{what} on a tensor whose spatial axes are not its last two")


def _windowed(source: Field, kernel: Any, stride: Any, padding: Any, dilation: Any = 1) -> Field:
    if source.axes is None:
        return source
    kernel, dilation = _pair(kernel), _pair(dilation)
    stride = _pair(stride) if stride not in (None, ()) and stride != [] else kernel
    if isinstance(padding, str):  # "same" pads half the dilated kernel before, "valid" none
        padding = tuple((d * (k - 1)) // 2 for k, d in zip(kernel, dilation, strict=True))
    padding = _pair(padding)
    axes = tuple(
        axis.window(k, s, p, d)
        for axis, k, s, p, d in zip(source.axes, kernel, stride, padding, dilation, strict=True)
    )
    return Field((axes[0], axes[1]), source.global_context)


def _conv(source: Field, args: Sequence[Any], kwargs: dict[str, Any], out: Any) -> Field:
    _needs_map(source, "a convolution")
    weight = _arg(args, kwargs, 1, "weight", None)
    padding = _arg(args, kwargs, 4, "padding", 0)
    return _windowed(
        source,
        tuple(weight.shape[-2:]),
        _arg(args, kwargs, 3, "stride", 1),
        0 if padding == "valid" else padding,
        _arg(args, kwargs, 5, "dilation", 1),
    )


def _max_pool(source: Field, args: Sequence[Any], kwargs: dict[str, Any], out: Any) -> Field:
    _needs_map(source, "a pool")
    return _windowed(
        source,
        _arg(args, kwargs, 1, "kernel_size", None),
        _arg(args, kwargs, 2, "stride", None),
        _arg(args, kwargs, 3, "padding", 0),
        _arg(args, kwargs, 4, "dilation", 1),
    )


def _avg_pool(source: Field, args: Sequence[Any], kwargs: dict[str, Any], out: Any) -> Field:
    _needs_map(source, "a pool")
    return _windowed(
        source,
        _arg(args, kwargs, 1, "kernel_size", None),
        _arg(args, kwargs, 2, "stride", None),
        _arg(args, kwargs, 3, "padding", 0),
    )


def _adaptive_pool(source: Field, args: Sequence[Any], kwargs: dict[str, Any], out: Any) -> Field:
    _needs_map(source, "a pool")
    before, after = _spatial(args[0]), _spatial(out[0] if isinstance(out, tuple) else out)
    if source.axes is None or before is None or after is None or after == before:
        return source
    if 1 in after:
        return GLOBAL  # global pooling: every output sees the whole map
    # Output unit i pools input units floor(i·n/m) .. ceil((i+1)·n/m) − 1: unit 0 sees the
    # first ceil(n/m); the step between units is n/m on average.
    axes = tuple(
        Axis(axis.lo, axis.hi + (math.ceil(n / m) - 1) * axis.jump, axis.jump * n / m)
        for axis, n, m in zip(source.axes, before, after, strict=True)
    )
    return Field((axes[0], axes[1]), source.global_context)


def _pad(source: Field, args: Sequence[Any], kwargs: dict[str, Any], out: Any) -> Field:
    if source.axes is None:
        return source
    _needs_map(source, "padding")
    pads = list(_arg(args, kwargs, 1, "pad", ()))  # (left, right, top, bottom, channels...)
    left = pads[0] if len(pads) >= 2 else 0
    top = pads[2] if len(pads) >= 4 else 0
    h, w = source.axes
    shifted = (
        Axis(h.lo - top * h.jump, h.hi - top * h.jump, h.jump),
        Axis(w.lo - left * w.jump, w.hi - left * w.jump, w.jump),
    )
    return Field(shifted, source.global_context)


def _getitem(source: Field, args: Sequence[Any], kwargs: dict[str, Any], out: Any) -> Field | None:
    tensor, index = args[0], args[1]
    if source.axes is None:
        return source
    index = index if isinstance(index, tuple) else (index,)
    if source.layout != LAYOUT_NCHW:
        return _getitem_moved(source, tensor, index, out)
    if any(item is Ellipsis or item is None for item in index):
        if _spatial(out) == _spatial(tensor):
            return source
        raise ReceptiveFieldError("indexing with ... or None that changes the spatial layout")
    first_spatial = tensor.dim() - 2
    axes = list(source.axes)
    for position, item in enumerate(index[first_spatial:], start=0):
        if not isinstance(item, slice) or (item.start or 0) < 0:
            raise ReceptiveFieldError("indexing a spatial axis other than by a forward slice")
        start, step, axis = item.start or 0, item.step or 1, axes[position]
        axes[position] = Axis(
            axis.lo + start * axis.jump, axis.hi + start * axis.jump, axis.jump * step
        )
    return Field((axes[0], axes[1]), source.global_context)


def _reshape(source: Field, args: Sequence[Any], kwargs: dict[str, Any], out: Any) -> Field:
    # Views that keep the spatial axes (channel shuffles) keep the field, and so do views that
    # turn a map into tokens or back; views that fold the spatial axes away (flatten for a
    # dense layer) make every output depend on every pixel.
    if source.axes is None or not isinstance(out, torch.Tensor):
        return source
    moved = _reshape_moved(source, args[0].shape, out.shape)
    return moved if moved is not None else GLOBAL


def _linear(source: Field, args: Sequence[Any], kwargs: dict[str, Any], out: Any) -> Field:
    # A dense layer mixes its input's last axis: channels (per pixel or token) keep the field,
    # a spatial axis (a flattened map) is seen whole.
    if source.axes is None:
        return source
    where = source.layout.positions(args[0].dim())
    if where is None or args[0].dim() - 1 in where:
        return GLOBAL
    return source


def _layer_norm(source: Field, args: Sequence[Any], kwargs: dict[str, Any], out: Any) -> Field:
    # Normalising over the last k axes: over channels only (per pixel or token) keeps the field.
    if source.axes is None:
        return source
    shape = _arg(args, kwargs, 1, "normalized_shape", ())
    count = 1 if isinstance(shape, int) else len(tuple(shape))
    where = source.layout.positions(args[0].dim()) or ()
    rank = args[0].dim()
    return GLOBAL if any(p >= rank - count for p in where) else source


def _attention(source: Field, args: Sequence[Any], kwargs: dict[str, Any], out: Any) -> Field:
    # Self-attention: every query token weighs every key token, so it sees the whole input;
    # the output keeps the query's layout (each token stays where its patch is).
    if source.axes is None:
        return source
    if not source.layout.tokens:
        raise ReceptiveFieldError("attention over a tensor that is not a sequence of tokens")
    return Field(source.axes, source.global_context, True, source.layout)


def _reduce(source: Field, args: Sequence[Any], kwargs: dict[str, Any], out: Any) -> Field:
    # A mean or sum over the spatial axes sees the whole input; over channels only, the field.
    tensor = args[0]
    dims = _arg(args, kwargs, 1, "dim", None)
    dims = (dims,) if isinstance(dims, int) else tuple(dims or ())
    if source.axes is None:
        return source
    rank = tensor.dim()
    where = source.layout.positions(rank)
    reduced = {d % rank for d in dims}
    if not dims or where is None or reduced & set(where):
        return GLOBAL
    if _arg(args, kwargs, 2, "keepdim", False):
        return source
    kept = [p - sum(r < p for r in reduced) for p in where]
    return Field(source.axes, source.global_context, source.whole,
                 source.layout.moved(kept, rank - len(reduced)))  # fmt: skip


def _permute(source: Field, args: Sequence[Any], kwargs: dict[str, Any], out: Any) -> Field:
    # transpose / permute: the spatial axes go where the permutation puts them.
    rank = args[0].dim()
    where = source.layout.positions(rank)
    if source.axes is None or where is None:
        return source
    axes = [a % rank for a in tree_flatten((list(args[1:]), kwargs))[0] if isinstance(a, int)]
    if len(axes) == rank:  # permute(dims): output axis i is input axis axes[i]
        order = axes
    elif len(axes) == 2:  # transpose(a, b)
        order = list(range(rank))
        order[axes[0]], order[axes[1]] = order[axes[1]], order[axes[0]]
    else:
        raise ReceptiveFieldError("a permutation of the axes that has no rule")
    return Field(source.axes, source.global_context, source.whole,
                 source.layout.moved([order.index(p) for p in where], rank))  # fmt: skip


def _keep(source: Field, args: Sequence[Any], kwargs: dict[str, Any], out: Any) -> Field:
    return source  # local_response_norm: a window over channels only


def _no_field(source: Field, args: Sequence[Any], kwargs: dict[str, Any], out: Any) -> None:
    return None  # constructors read their argument's shape or dtype, never its values


Rule = Callable[[Field, Sequence[Any], dict[str, Any], Any], Field | None]


def _getitem_moved(source: Field, tensor: Any, index: tuple[Any, ...], out: Any) -> Field | None:
    """Indexing a channels-last map or a token sequence: whole slices of the spatial axes, ints
    on other axes, and on a token axis dropping the prefix tokens (``x[:, 1:]``) or taking one of
    them (a ViT's class token, ``x[:, 0]``)."""
    layout = source.layout
    if any(item is Ellipsis or item is None for item in index):
        raise ReceptiveFieldError("indexing with ... or None a tensor in a moved layout")
    spatial = layout.positions(tensor.dim()) or ()
    removed = 0
    for position, item in enumerate(index):
        whole_slice = isinstance(item, slice) and item == slice(None)
        if position not in spatial:
            if isinstance(item, int):
                removed += 1 if position < min(spatial, default=0) else 0
            elif not whole_slice:
                raise ReceptiveFieldError("slicing a non-spatial axis of a moved layout")
            continue
        if whole_slice:
            continue
        if not layout.tokens:
            raise ReceptiveFieldError("indexing a spatial axis of a channels-last map")
        if isinstance(item, int) and 0 <= item < layout.prefix:
            # A class token: after attention it has seen the whole image, before it nothing.
            return GLOBAL if source.whole or source.global_context else None
        if isinstance(item, slice) and item.step in (None, 1) and item.stop is None:
            if item.start == layout.prefix:
                rank = out.dim()
                moved = Layout(layout.dims, layout.grid, 0).moved(
                    [p - removed for p in spatial], rank
                )
                return Field(source.axes, source.global_context, source.whole, moved)
        raise ReceptiveFieldError("indexing a token axis other than to drop its prefix tokens")
    rank = out.dim()
    return Field(
        source.axes, source.global_context, source.whole,
        layout.moved([p - removed for p in spatial], rank),
    )  # fmt: skip


def _reshape_moved(source: Field, before: torch.Size, after: torch.Size) -> Field | None:
    """A view of a tensor whose spatial axes are tracked: the new layout, or None if the view
    mixes the spatial axes with others (then it is no rule's business: the caller decides)."""
    layout = source.layout
    rank, new_rank = len(before), len(after)
    where = layout.positions(rank)
    if where is None:
        return None
    first, last = min(where), max(where)
    # Axes up to the last spatial one unchanged (only later ones regrouped): same positions.
    if tuple(after[: last + 1]) == tuple(before[: last + 1]):
        return Field(source.axes, source.global_context, source.whole,
                     layout.moved(where, new_rank))  # fmt: skip
    # Axes from the first spatial one on unchanged (only earlier ones regrouped).
    if tuple(after[new_rank - (rank - first) :]) == tuple(before[first:]):
        return Field(source.axes, source.global_context, source.whole,
                     layout.moved([p - rank + new_rank for p in where], new_rank))  # fmt: skip
    lead, trail = tuple(before[:first]), tuple(before[last + 1 :])
    if not layout.tokens and where == (first, first + 1):
        # (…, H, W, …) -> (…, H·W, …): the map becomes a sequence of tokens, row by row.
        h, w = int(before[first]), int(before[first + 1])
        if tuple(after) == (*lead, h * w, *trail):
            tokens = Layout((first - new_rank,), (h, w), 0)
            return Field(source.axes, source.global_context, source.whole, tokens)
    if layout.tokens and layout.prefix == 0 and layout.grid is not None:
        # (…, h·w, …) -> (…, h, w, …): the tokens become a map again.
        h, w = layout.grid
        if tuple(after) == (*lead, h, w, *trail):
            dims = (first - new_rank, first + 1 - new_rank)
            return Field(source.axes, source.global_context, source.whole, Layout(dims))
    return None


RULES: dict[str, Rule] = {
    "conv2d": _conv,
    "max_pool2d": _max_pool,
    "avg_pool2d": _avg_pool,
    "adaptive_avg_pool2d": _adaptive_pool,
    "adaptive_max_pool2d": _adaptive_pool,
    "pad": _pad,
    "__getitem__": _getitem,
    "view": _reshape,
    "reshape": _reshape,
    "flatten": _reshape,
    "unflatten": _reshape,
    "squeeze": _reshape,
    "unsqueeze": _reshape,
    "linear": _linear,
    "layer_norm": _layer_norm,
    "multi_head_attention_forward": _attention,
    "scaled_dot_product_attention": _attention,
    "mean": _reduce,
    "sum": _reduce,
    "amax": _reduce,
    "transpose": _permute,
    "permute": _permute,
    "local_response_norm": _keep,
    **dict.fromkeys(
        ["new_tensor", "new_empty", "new_zeros", "new_ones", "new_full", "empty_like"], _no_field
    ),
}
UNSUPPORTED = {"conv_transpose2d", "interpolate", "upsample", "grid_sample", "unfold", "fold"}


def _merge(name: str, inputs: list[tuple[torch.Tensor, Field]], target: Any) -> Field:
    """Element-wise ops, concatenations and splits: the union over inputs shaped like the
    output. A 1x1 input broadcast over a bigger map (a squeeze-excitation gate) must be global
    and adds its flag."""
    local = [source for _, source in inputs if source.axes is not None]
    target_size = _spatial(target, local[0].layout if local else LAYOUT_NCHW)
    merged: Field | None = None
    for tensor, source in inputs:
        size = _spatial(tensor, source.layout)
        if target_size is None and size is not None and source.axes is not None:
            source = GLOBAL  # an unknown reduction of the spatial axes: assume all of them
        elif target_size is not None and size is not None and size != target_size:
            if size != (1, 1) or source.axes is not None:
                raise ReceptiveFieldError(
                    f"{name} maps {size[0]}x{size[1]} to {target_size[0]}x{target_size[1]}: "
                    "no rule for it"
                )
        merged = source if merged is None else merged.merge(source)
    assert merged is not None
    return merged


def _cat(fields: list[Field | None], tensors: Sequence[Any], dim: int, out: Any) -> Field:
    """Concatenation: along channels, the union of the inputs' fields; along a token axis,
    untraced tokens in front (a ViT's class token) become the layout's prefix."""
    traced = [(t, f) for t, f in zip(tensors, fields, strict=True) if f is not None]
    local = [f for _, f in traced if f.axes is not None]
    if not local:
        return _merge("cat", traced, out)
    layout, rank = local[0].layout, out.dim()
    where = layout.positions(rank) or ()
    if dim % rank not in where:
        return _merge("cat", traced, out)
    if not layout.tokens or len(local) != 1:
        raise ReceptiveFieldError("concatenating maps along a spatial axis: no rule for it")
    first = next(i for i, f in enumerate(fields) if f is not None and f.axes is not None)
    added = sum(int(t.shape[dim]) for t in tensors[:first])
    source = local[0]
    prefix = Layout(layout.dims, layout.grid, layout.prefix + added)
    return Field(source.axes, source.global_context, source.whole, prefix)


def _func_name(func: Any) -> str:
    # F.max_pool2d reaches the mode as max_pool2d, _max_pool2d or max_pool2d_with_indices.
    name = getattr(func, "__name__", "") or ""
    return "max_pool2d" if name.lstrip("_").startswith("max_pool2d") else name


class _FieldTracker(TorchFunctionMode):
    """Carries a :class:`Field` along with every tensor the forward pass makes."""

    def __init__(self) -> None:
        super().__init__()
        # id -> (tensor, field): holding the tensor keeps its id from being reused.
        self.fields: dict[int, tuple[torch.Tensor, Field]] = {}

    def get(self, tensor: Any) -> Field | None:
        entry = self.fields.get(id(tensor))
        return entry[1] if entry is not None and entry[0] is tensor else None

    def set(self, tensor: torch.Tensor, value: Field | None) -> None:
        if value is None:
            self.fields.pop(id(tensor), None)
        else:
            self.fields[id(tensor)] = (tensor, value)

    def seed(self, tensor: torch.Tensor) -> None:
        self.fields.clear()
        self.set(tensor, Field((Axis(0.0, 0.0, 1.0), Axis(0.0, 0.0, 1.0))))

    def __torch_function__(
        self, func: Any, types: Any, args: Sequence[Any] = (), kwargs: Any = None
    ) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = [
            (t, f)
            for t in tree_flatten((args, kwargs))[0]
            if isinstance(t, torch.Tensor) and (f := self.get(t)) is not None
        ]
        outputs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        if not inputs or not outputs:
            return out
        name = _func_name(func)
        if name in UNSUPPORTED:
            raise ReceptiveFieldError(f"no receptive-field rule for {name}")
        rule = RULES.get(name)
        if name in ("cat", "concat", "concatenate"):
            tensors = list(_arg(args, kwargs, 0, "tensors", ()))
            dim = int(_arg(args, kwargs, 1, "dim", 0))
            fields = [self.get(t) for t in tensors]
            result: Field | None = _cat(fields, tensors, dim, outputs[0])
        elif rule is None:
            result = _merge(name, inputs, outputs[0])
        else:
            source = self.get(args[0]) if args else None
            if source is None:
                raise ReceptiveFieldError(f"{name}: its first argument is not a traced map")
            result = rule(source, args, kwargs, out)
        for tensor in outputs:
            self.set(tensor, result)
        return out


def receptive_field(
    model: nn.Module, input_size: InputSize | None = None, *, device: str | None = None
) -> ReceptiveField:
    """Receptive field size and jump of every module's output, for one image of ``input_size``.

    ``input_size`` is a side, ``(H, W)`` or ``(C, H, W)`` (default: the model's default size;
    fields do not depend on it except where pooling adapts to the map). The pass runs on the
    meta device (or ``device``) in eval mode and leaves the model as it was. Raises
    :class:`ReceptiveFieldError` for an op that changes the spatial layout without a rule.
    """
    size = resolve_input_size(model, input_size)
    tracker = _FieldTracker()
    names = {module: name for name, module in model.named_modules()}
    result = ReceptiveField(input_size=size)
    last_local: list[LayerField | None] = [None]

    def seed(_module: nn.Module, args: tuple[Any, ...]) -> None:
        if args and isinstance(args[0], torch.Tensor):
            tracker.seed(args[0])  # (again, if a meta pass failed and run_forward retries)
            result.layers.clear()
            last_local[0] = None

    def record(module: nn.Module, _args: Any, output: Any) -> None:
        name = names.get(module)
        if isinstance(module, nn.MultiheadAttention):
            output = output[0]  # (attention output, weights or None)
        if name is None or name in result.layers or not isinstance(output, torch.Tensor):
            return
        found = tracker.get(output)
        if found is None:
            return
        spatial = _spatial(output, found.layout) if found.axes is not None else None
        result.layers[name] = layer = LayerField(
            name, type(module).__name__, found, spatial, (int(size[-2]), int(size[-1]))
        )
        if found.axes is not None and name:
            last_local[0] = layer

    handles = [model.register_forward_pre_hook(seed)]
    handles += [module.register_forward_hook(record) for module in names]
    try:
        run_forward(model, size, device or "meta", context=lambda: tracker)
    finally:
        for handle in handles:
            handle.remove()
    # Modules report in the order they finish: the first to see everything is the attention.
    result.attention_from = next(
        (name for name, layer in result.layers.items() if layer.field.whole), None
    )
    # List them in the model's own order.
    order = {name: index for index, name in enumerate(names.values())}
    result.layers = dict(sorted(result.layers.items(), key=lambda item: order[item[0]]))
    # The total is the deepest stage's field (what the head reads), else the last local map.
    info = getattr(model, "feature_info", None)
    deepest = info[-1].module if info is not None else None
    result.total = result.layers.get(deepest) if deepest in result.layers else last_local[0]
    return result
