"""A Keras-style model summary: one row per module, with output shape, receptive field and jump,
parameters and MACs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from rich.console import Group
from rich.table import Table
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from cnnzoo.analysis.flops import InputSize, macs_by_module, resolve_input_size, run_forward
from cnnzoo.analysis.receptive_field import (
    LayerField,
    ReceptiveField,
    ReceptiveFieldError,
    receptive_field,
)

MB = 1e6  # decimal megabytes, as torchinfo and Keras print them


@dataclass(frozen=True)
class SummaryRow:
    name: str  # dotted module name; "" is the model itself
    type: str
    depth: int  # 0 for the model, 1 for its children, ...
    output_shapes: tuple[tuple[int, ...], ...]  # empty when the module did not run
    params: int  # the module's own parameters and its children's
    macs: int
    is_leaf: bool
    field: LayerField | None = None  # receptive field of the output; None: did not run or no map

    @property
    def rf_text(self) -> str:
        return self.field.size_text if self.field is not None else "--"

    @property
    def jump_text(self) -> str:
        return self.field.jump_text if self.field is not None else "--"

    @property
    def label(self) -> str:
        """The last name component, indented by depth."""
        short = self.name.rpartition(".")[2] if self.name else self.type
        return "  " * max(self.depth - 1, 0) + short if self.depth else short

    @property
    def shape_text(self) -> str:
        if not self.output_shapes:
            return "--"
        return ", ".join(str(list(shape)) for shape in self.output_shapes)


@dataclass
class ModelSummary:
    """Rows and totals of :func:`summary`; ``str()`` is a plain-text table, rich renders it too."""

    model_name: str
    input_size: tuple[int, ...]
    rows: list[SummaryRow]
    total_params: int
    trainable_params: int
    non_trainable_params: int
    total_macs: int
    param_bytes: int
    buffer_bytes: int
    activation_bytes: int  # output bytes of every leaf-module call in one forward pass
    depth: int | None = None
    output_shapes: tuple[tuple[int, ...], ...] = field(default_factory=tuple)
    # None when an op of the model has no receptive-field rule (then the columns show "?").
    receptive_field: ReceptiveField | None = None

    @property
    def param_mb(self) -> float:
        return self.param_bytes / MB

    @property
    def activation_mb(self) -> float:
        return self.activation_bytes / MB

    def visible_rows(self) -> list[SummaryRow]:
        return [row for row in self.rows if self.depth is None or row.depth <= self.depth]

    def totals(self) -> list[tuple[str, str]]:
        return [
            ("Total params", f"{self.total_params:,}"),
            ("Trainable params", f"{self.trainable_params:,}"),
            ("Non-trainable params", f"{self.non_trainable_params:,}"),
            ("Multiply-adds", f"{self.total_macs:,} ({format_macs(self.total_macs)})"),
            ("Input size", "x".join(str(v) for v in self.input_size)),
            ("Params size (MB)", f"{self.param_mb:.2f}"),
            ("Buffers size (MB)", f"{self.buffer_bytes / MB:.2f}"),
            ("Forward activations (MB)", f"{self.activation_mb:.2f}"),
            *self._field_totals(),
        ]

    def _field_totals(self) -> list[tuple[str, str]]:
        if self.receptive_field is None:
            return [("Receptive field", "? (an op of this model has no rule)")]
        return self.receptive_field.totals()

    def _cells(self, row: SummaryRow) -> tuple[str, ...]:
        unknown = self.receptive_field is None and bool(row.output_shapes)
        return (
            row.label,
            row.type,
            row.shape_text,
            "?" if unknown else row.rf_text,
            "?" if unknown else row.jump_text,
            f"{row.params:,}" if row.params else "--",
            f"{row.macs:,}" if row.macs else "--",
        )

    def __str__(self) -> str:
        header = ("Layer", "Type", "Output shape", "RF", "Jump", "Params", "Mult-adds")
        body = [self._cells(row) for row in self.visible_rows()]
        widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]

        def line(cells: Sequence[str]) -> str:
            left = [cell.ljust(width) for cell, width in zip(cells[:3], widths[:3], strict=True)]
            right = [cell.rjust(width) for cell, width in zip(cells[3:], widths[3:], strict=True)]
            return "  ".join(left + right).rstrip()

        rule_width = sum(widths) + 2 * (len(widths) - 1)
        out = [f"{self.model_name}", "=" * rule_width, line(header), "=" * rule_width]
        out += [line(cells) for cells in body]
        out.append("=" * rule_width)
        label_width = max(len(label) for label, _ in self.totals())
        out += [f"{label.ljust(label_width)}  {value}" for label, value in self.totals()]
        return "\n".join(out)

    def __rich__(self) -> Group:
        table = Table(title=self.model_name, title_justify="left", header_style="bold")
        table.add_column("Layer", no_wrap=True)
        table.add_column("Type", no_wrap=True)
        table.add_column("Output shape", no_wrap=True)
        table.add_column("RF", justify="right", no_wrap=True)
        table.add_column("Jump", justify="right", no_wrap=True)
        table.add_column("Params", justify="right", no_wrap=True)
        table.add_column("Mult-adds", justify="right", no_wrap=True)
        for row in self.visible_rows():
            table.add_row(*self._cells(row), style="bold" if row.depth == 0 else None)
        totals = Table.grid(padding=(0, 2))
        totals.add_column(style="bold")
        totals.add_column(justify="left")
        for label, value in self.totals():
            totals.add_row(label, value)
        return Group(table, totals)


def format_macs(macs: int) -> str:
    for scale, unit in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if macs >= scale:
            return f"{macs / scale:.3f} {unit}"
    return str(macs)


def _shapes(output: Any) -> tuple[tuple[int, ...], ...]:
    if isinstance(output, torch.Tensor):
        return (tuple(output.shape),)
    if isinstance(output, (tuple, list)):
        return tuple(shape for item in output for shape in _shapes(item))
    if isinstance(output, dict):
        return tuple(shape for item in output.values() for shape in _shapes(item))
    return ()


def _nbytes(output: Any) -> int:
    if isinstance(output, torch.Tensor):
        return output.numel() * output.element_size()
    if isinstance(output, (tuple, list)):
        return sum(_nbytes(item) for item in output)
    if isinstance(output, dict):
        return sum(_nbytes(item) for item in output.values())
    return 0


def summary(
    model: nn.Module,
    input_size: InputSize | None = None,
    *,
    depth: int | None = None,
    device: str | None = None,
) -> ModelSummary:
    """Summarise ``model`` for one image of ``input_size`` (``(C, H, W)``; default_cfg's size).

    The forward pass runs in eval mode on the meta device unless ``device`` is given (falling
    back to the model's own device when an op has no meta kernel); the model's train/eval state
    and device are left as they were. ``depth`` limits the rows shown, not the totals.
    """
    size = resolve_input_size(model, input_size)
    names = {module: name for name, module in model.named_modules()}
    outputs: dict[str, list[Any]] = {name: [] for name in names.values()}
    leaf_bytes = [0]
    leaves = {module for module in names if next(module.children(), None) is None}

    def record(module: nn.Module, _inputs: Any, output: Any) -> None:
        name = names.get(module)
        if name is None:
            return
        outputs[name].append(output)
        if module in leaves:
            leaf_bytes[0] += _nbytes(output)

    counters: list[FlopCounterMode] = []

    def counter() -> FlopCounterMode:
        for values in outputs.values():
            values.clear()
        leaf_bytes[0] = 0
        counters.append(FlopCounterMode(display=False))
        return counters[-1]

    handles = [module.register_forward_hook(record) for module in names]
    try:
        final = run_forward(model, size, device or "meta", context=counter)
    finally:
        for handle in handles:
            handle.remove()

    macs = macs_by_module(counters[-1], model)
    try:
        fields: ReceptiveField | None = receptive_field(model, size, device=device)
    except ReceptiveFieldError:
        fields = None

    rows = []
    for module, name in names.items():
        calls = outputs[name]
        rows.append(
            SummaryRow(
                name=name,
                type=type(module).__name__,
                depth=0 if not name else name.count(".") + 1,
                output_shapes=_shapes(calls[0]) if calls else (),
                params=sum(p.numel() for p in module.parameters()),
                macs=macs.get(name, 0),
                is_leaf=module in leaves,
                field=fields.layers.get(name) if fields is not None else None,
            )
        )
    params = list(model.parameters())
    trainable = sum(p.numel() for p in params if p.requires_grad)
    total = sum(p.numel() for p in params)
    return ModelSummary(
        model_name=getattr(model, "model_name", type(model).__name__),
        input_size=size,
        rows=rows,
        total_params=total,
        trainable_params=trainable,
        non_trainable_params=total - trainable,
        total_macs=counters[-1].get_total_flops() // 2,
        param_bytes=sum(p.numel() * p.element_size() for p in params),
        buffer_bytes=sum(b.numel() * b.element_size() for b in model.buffers()),
        activation_bytes=leaf_bytes[0],
        depth=depth,
        output_shapes=_shapes(final),
        receptive_field=fields,
    )
