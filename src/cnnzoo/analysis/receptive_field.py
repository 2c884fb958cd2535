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
  still shows the field of its convolutions and says that its units also see the whole image.

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
    "LayerField",
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
class Field:
    """What one tensor's units see: a local field (``axes``: H, W) and/or the whole input."""

    axes: tuple[Axis, Axis] | None
    global_context: bool = False

    def merge(self, other: Field) -> Field:
        if self.axes is None or other.axes is None:
            axes = self.axes or other.axes
        else:
            axes = (self.axes[0].union(other.axes[0]), self.axes[1].union(other.axes[1]))
        return Field(axes, self.global_context or other.global_context)


GLOBAL = Field(None, True)


@dataclass(frozen=True)
class LayerField:
    """The field of one module's output (its first call), as :func:`receptive_field` reports it."""

    name: str
    type: str
    field: Field
    output_size: tuple[int, int] | None  # (H, W) of the module's map; None when not spatial

    @property
    def size(self) -> tuple[int, int] | None:
        """(height, width) of the field in input pixels; None when only global."""
        axes = self.field.axes
        return None if axes is None else (axes[0].size, axes[1].size)

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
        return text + ("*" if self.global_context else "")

    @property
    def jump_text(self) -> str:
        jump = self.jump
        if jump is None:
            return "--"
        parts = [f"{value:g}" if float(value).is_integer() else f"{value:.2f}" for value in jump]
        return parts[0] if parts[0] == parts[1] else "x".join(parts)


GLOBAL_NOTE = "also sees the whole image through global pooling (squeeze-excitation)"


@dataclass
class ReceptiveField:
    """Per-module fields of one forward pass, in module order, and the deepest local map's."""

    input_size: tuple[int, ...]
    layers: dict[str, LayerField] = field(default_factory=dict)
    total: LayerField | None = None  # the last module output that is still a local map

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
        lines = [
            (f"Receptive field ({total.name})", f"{total.size_text} px"),
            ("Effective stride (jump)", f"{total.jump_text} px"),
        ]
        if any(layer.global_context for layer in self.layers.values() if layer.size):
            lines.append(("*", GLOBAL_NOTE))
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


def _spatial(tensor: Any) -> tuple[int, int] | None:
    if isinstance(tensor, torch.Tensor) and tensor.dim() >= 3:
        return int(tensor.shape[-2]), int(tensor.shape[-1])
    return None


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
    return _windowed(
        source,
        _arg(args, kwargs, 1, "kernel_size", None),
        _arg(args, kwargs, 2, "stride", None),
        _arg(args, kwargs, 3, "padding", 0),
        _arg(args, kwargs, 4, "dilation", 1),
    )


def _avg_pool(source: Field, args: Sequence[Any], kwargs: dict[str, Any], out: Any) -> Field:
    return _windowed(
        source,
        _arg(args, kwargs, 1, "kernel_size", None),
        _arg(args, kwargs, 2, "stride", None),
        _arg(args, kwargs, 3, "padding", 0),
    )


def _adaptive_pool(source: Field, args: Sequence[Any], kwargs: dict[str, Any], out: Any) -> Field:
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
    pads = list(_arg(args, kwargs, 1, "pad", ()))  # (left, right, top, bottom, channels...)
    left = pads[0] if len(pads) >= 2 else 0
    top = pads[2] if len(pads) >= 4 else 0
    h, w = source.axes
    shifted = (
        Axis(h.lo - top * h.jump, h.hi - top * h.jump, h.jump),
        Axis(w.lo - left * w.jump, w.hi - left * w.jump, w.jump),
    )
    return Field(shifted, source.global_context)


def _getitem(source: Field, args: Sequence[Any], kwargs: dict[str, Any], out: Any) -> Field:
    tensor, index = args[0], args[1]
    if source.axes is None:
        return source
    index = index if isinstance(index, tuple) else (index,)
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
    # Views that keep the last two axes (channel shuffles) keep the field; views that fold the
    # spatial axes away (flatten for a dense layer) make every output depend on every pixel.
    spatial = _spatial(out)
    if spatial is not None and spatial == _spatial(args[0]):
        return source
    return GLOBAL if source.axes is not None else source


def _reduce(source: Field, args: Sequence[Any], kwargs: dict[str, Any], out: Any) -> Field:
    # A mean or sum over the spatial axes sees the whole input; over channels only, the field.
    tensor = args[0]
    dims = _arg(args, kwargs, 1, "dim", None)
    dims = (dims,) if isinstance(dims, int) else tuple(dims or ())
    if dims and all(d % tensor.dim() < tensor.dim() - 2 for d in dims):
        return source
    return GLOBAL


def _channels_only(source: Field, args: Sequence[Any], kwargs: dict[str, Any], out: Any) -> Field:
    # transpose / permute that leave the spatial (last two) axes where they are.
    tensor, rank = args[0], args[0].dim()
    axes = [a % rank for a in tree_flatten((list(args[1:]), kwargs))[0] if isinstance(a, int)]
    spatial_stay = axes[-2:] == [rank - 2, rank - 1] if len(axes) == rank else max(axes) < rank - 2
    if tensor.dim() >= 3 and not spatial_stay:
        raise ReceptiveFieldError("an op that moves a spatial axis: no rule for it")
    return source


def _keep(source: Field, args: Sequence[Any], kwargs: dict[str, Any], out: Any) -> Field:
    return source  # local_response_norm: a window over channels only


def _no_field(source: Field, args: Sequence[Any], kwargs: dict[str, Any], out: Any) -> None:
    return None  # constructors read their argument's shape or dtype, never its values


Rule = Callable[[Field, Sequence[Any], dict[str, Any], Any], Field | None]

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
    "squeeze": _reshape,
    "unsqueeze": _reshape,
    "linear": _reshape,
    "mean": _reduce,
    "sum": _reduce,
    "amax": _reduce,
    "transpose": _channels_only,
    "permute": _channels_only,
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
    target_size = _spatial(target)
    merged: Field | None = None
    for tensor, source in inputs:
        size = _spatial(tensor)
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
        if rule is None:
            result: Field | None = _merge(name, inputs, outputs[0])
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
        if name is None or name in result.layers or not isinstance(output, torch.Tensor):
            return
        found = tracker.get(output)
        if found is None:
            return
        spatial = _spatial(output) if found.axes is not None else None
        result.layers[name] = layer = LayerField(name, type(module).__name__, found, spatial)
        if found.axes is not None and name:
            last_local[0] = layer

    handles = [model.register_forward_pre_hook(seed)]
    handles += [module.register_forward_hook(record) for module in names]
    try:
        run_forward(model, size, device or "meta", context=lambda: tracker)
    finally:
        for handle in handles:
            handle.remove()
    # Modules report in the order they finish; list them in the model's own order.
    order = {name: index for index, name in enumerate(names.values())}
    result.layers = dict(sorted(result.layers.items(), key=lambda item: order[item[0]]))
    # The total is the deepest stage's field (what the head reads), else the last local map.
    info = getattr(model, "feature_info", None)
    deepest = info[-1].module if info is not None else None
    result.total = result.layers.get(deepest) if deepest in result.layers else last_local[0]
    return result
