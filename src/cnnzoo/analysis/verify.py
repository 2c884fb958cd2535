"""Check every model against its reference figures and against torchvision's implementation."""

from __future__ import annotations

import gc
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from cnnzoo.analysis.flops import count_macs
from cnnzoo.errors import UsageError
from cnnzoo.progress import each_with_bar
from cnnzoo.reference import Figure, reference
from cnnzoo.registry import ModelEntry, get_entry, list_models

OK, MISMATCH, NA, ERROR = "ok", "MISMATCH", "n/a", "ERROR"
OUTPUT_TOLERANCE = 1e-5
# torchvision builders that need init_weights=True to avoid a slow scipy-based init warning.
_TV_INIT_WEIGHTS = {"googlenet", "inception_v3"}


@dataclass
class VerifyRow:
    name: str
    params: int | None = None
    params_expected: Figure | None = None
    params_status: str = NA
    macs: int | None = None
    macs_input: int | None = None  # the side the MACs were counted at
    macs_expected: Figure | None = None
    macs_status: str = NA
    max_abs_diff: float | None = None
    torchvision_status: str = NA
    notes: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def status(self) -> str:
        statuses = (self.params_status, self.macs_status, self.torchvision_status)
        if self.error or ERROR in statuses:
            return ERROR
        return MISMATCH if MISMATCH in statuses else OK

    @property
    def ok(self) -> bool:
        return self.status == OK


def _build(entry: ModelEntry, conditions: dict[str, Any], meta: bool) -> torch.nn.Module:
    if meta:
        with torch.device("meta"):
            return entry.builder(**conditions)
    return entry.builder(**conditions)


def _key(conditions: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted(conditions.items()))


def _check(
    figures: Sequence[Figure], measure: Any
) -> tuple[int | None, Figure | None, str, list[str]]:
    """(value under the first strict figure's conditions, that figure, status, notes)."""
    value: int | None = None
    expected: Figure | None = None
    status, notes = NA, []
    for figure in figures:
        measured = measure(figure)
        holds = figure.holds(measured)
        if figure.strict:
            if value is None:
                value, expected = measured, figure
                status = OK
            if not holds:
                status = MISMATCH
                notes.append(f"{measured:,} vs {figure.describe()} ({figure.source})")
        else:
            verdict = "holds" if holds else "differs"
            notes.append(
                f"{figure.describe()} quoted by {figure.source}: {verdict} ({measured:,})"
                + (f"; {figure.note}" if figure.note and not holds else "")
            )
    return value, expected, status, notes


def verify_one(name: str, *, input_size: int | None = None) -> VerifyRow:
    row = VerifyRow(name=name)
    try:
        entry = get_entry(name)
        ref = reference(name)
        param_cache: dict[Any, int] = {}

        def params_of(figure: Figure) -> int:
            key = _key(figure.conditions)
            if key not in param_cache:
                model = _build(entry, figure.conditions, meta=True)
                param_cache[key] = sum(p.numel() for p in model.parameters())
            return param_cache[key]

        mac_cache: dict[Any, int] = {}

        def macs_of(figure: Figure) -> int:
            key = (_key(figure.conditions), figure.input_size)
            if key not in mac_cache:
                model = _build(entry, figure.conditions, meta=True)
                side = figure.input_size or model.default_cfg["input_size"][-1]
                mac_cache[key] = count_macs(model, side)
            return mac_cache[key]

        if ref and ref.params:
            row.params, row.params_expected, row.params_status, notes = _check(
                ref.params, params_of
            )
            row.notes += notes
        if row.params is None:
            row.params = params_of(Figure(0))
        if ref and ref.macs:
            row.macs, row.macs_expected, row.macs_status, notes = _check(ref.macs, macs_of)
            row.notes += notes
            strict = [f for f in ref.macs if f.strict]
            row.macs_input = (strict or list(ref.macs))[0].input_size
        if row.macs is None:
            model = _build(entry, {}, meta=True)
            row.macs_input = model.default_cfg["input_size"][-1]
            row.macs = count_macs(model)
        if entry.torchvision_name:
            row.max_abs_diff = compare_with_torchvision(entry, input_size=input_size)
            row.torchvision_status = OK if row.max_abs_diff <= OUTPUT_TOLERANCE else MISMATCH
            if row.torchvision_status == MISMATCH:
                row.notes.append(
                    f"outputs differ from torchvision's by {row.max_abs_diff:.3g} "
                    f"(> {OUTPUT_TOLERANCE:g})"
                )
    except Exception as exc:  # one broken model must not hide the others' results
        row.error = f"{type(exc).__name__}: {exc}"
    finally:
        gc.collect()
    return row


def compare_with_torchvision(entry: ModelEntry, *, input_size: int | None = None) -> float:
    """Strict-load a randomly initialised torchvision model into the zoo's; max |output diff|.

    The comparison runs in eval mode on a random batch of 2 at ``input_size`` (default: the
    model's minimum side, at least 64).
    """
    import torchvision.models

    torch.manual_seed(0)
    zoo = entry.builder()
    kwargs: dict[str, Any] = {"weights": None}
    if entry.torchvision_name in _TV_INIT_WEIGHTS:
        kwargs["init_weights"] = True
        # Aux heads must match on both sides for a strict load.
        kwargs["aux_logits"] = any(key.startswith(("aux", "Aux")) for key in zoo.state_dict())
    tv = torchvision.models.get_model(entry.torchvision_name, **kwargs)
    # Tensors initialised to zero (a ViT's head) would hide whatever reads them: an all-zero
    # head gives all-zero outputs on both sides.
    with torch.no_grad():
        for param in tv.parameters():
            if not param.any():
                param.normal_(std=0.02)
    try:
        zoo.load_state_dict(tv.state_dict(), strict=True)
        side = input_size or max(zoo.min_input_size, 64)
        if zoo.fixed_input_size:
            side = zoo.fixed_input_size
        x = torch.randn(2, zoo.default_cfg["input_size"][0], side, side)
        zoo.eval()
        tv.eval()
        with torch.no_grad():
            ours, theirs = zoo(x), tv(x)
        return float((ours - theirs).abs().max())
    finally:
        del zoo, tv


def verify(
    names: Iterable[str] | None = None,
    *,
    input_size: int | None = None,
    progress: bool = True,
    console: Console | None = None,
) -> list[VerifyRow]:
    """Verify the given models (names or shell patterns; default: every registered model)."""
    selected = _expand(names)
    return [
        verify_one(name, input_size=input_size)
        for name in each_with_bar(selected, "verify", enabled=progress, console=console)
    ]


def _expand(names: Iterable[str] | None) -> list[str]:
    if names is None:
        return list_models()
    selected: list[str] = []
    for name in names:
        if any(ch in name for ch in "*?["):
            matches = list_models(name)
            if not matches:
                raise UsageError(f"no model matches {name!r}; `cnnzoo models` lists them all")
            selected += [m for m in matches if m not in selected]
        else:
            get_entry(name)  # unknown names fail here, with close matches suggested
            if name not in selected:
                selected.append(name)
    return selected


_STYLE = {OK: "green", MISMATCH: "bold red", NA: "dim", ERROR: "bold red"}


def verify_table(rows: Sequence[VerifyRow], *, notes: bool = True) -> Table:
    """A rich table of verify rows, with the notes (paper figures, errors) under it."""
    table = Table(title="cnnzoo verify", title_justify="left", header_style="bold")
    for column, justify in (
        ("model", "left"),
        ("params", "right"),
        ("expected", "right"),
        ("", "left"),
        ("GMACs", "right"),
        ("@", "right"),
        ("expected", "right"),
        ("", "left"),
        ("vs torchvision", "right"),
        ("", "left"),
    ):
        table.add_column(column, justify=justify, no_wrap=True)  # type: ignore[arg-type]

    def mark(status: str) -> str:
        return f"[{_STYLE[status]}]{status}[/]"

    for row in rows:
        table.add_row(
            row.name,
            f"{row.params:,}" if row.params is not None else "--",
            row.params_expected.describe() if row.params_expected else "--",
            mark(row.params_status),
            f"{row.macs / 1e9:.3f}" if row.macs is not None else "--",
            str(row.macs_input or ""),
            _gmacs(row.macs_expected),
            mark(row.macs_status),
            f"{row.max_abs_diff:.1e}" if row.max_abs_diff is not None else "--",
            mark(row.torchvision_status),
        )
    if notes:
        lines = [
            f"{row.name}: {text}"
            for row in rows
            for text in ([f"[bold red]{row.error}[/]"] if row.error else []) + row.notes
        ]
        if lines:
            table.caption = "\n".join(lines)
            table.caption_justify = "left"
    return table


def _gmacs(figure: Figure | None) -> str:
    if figure is None:
        return "--"
    if figure.tolerance <= 0.0005e9:  # torchvision's figures, to three decimals
        return f"{figure.value / 1e9:.3f}"
    return f"{figure.value / 1e9:g} ± {figure.tolerance / 1e9:g}"


def summarize(rows: Sequence[VerifyRow]) -> str:
    bad = [row.name for row in rows if not row.ok]
    if not bad:
        return f"{len(rows)} models verified: all ok"
    return f"{len(rows)} models verified: {len(bad)} failed ({', '.join(bad)})"
