"""Figures for training runs and predictions, drawn off-screen.

Every figure is a bare ``matplotlib.figure.Figure`` rendered by the Agg canvas, never through
``pyplot``: nothing opens a window, and nothing touches matplotlib's global backend or figure list
(so the plots work on headless machines and inside other people's notebooks alike).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = [
    "CORRECT_COLOR",
    "WRONG_COLOR",
    "confusion_matrix_figure",
    "history_figure",
    "plot_accuracy_vs_macs",
    "plot_confusion_matrix",
    "plot_history",
    "plot_prediction_grid",
    "plot_topk_bars",
    "prediction_grid_figure",
    "read_history",
    "save_figure",
]

CORRECT_COLOR = "green"
WRONG_COLOR = "red"
NEUTRAL_COLOR = "black"
DPI = 100


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, out_png: str | Path) -> Path:
    """Write ``fig`` as a PNG of exactly figsize x dpi pixels (no tight cropping)."""
    path = Path(out_png)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=DPI)
    return path


def _as_hwc(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """A displayable array: (H, W) for one channel, (H, W, C) otherwise; uint8 or [0, 1] floats."""
    if isinstance(image, torch.Tensor):
        array = image.detach().cpu().numpy()
        if array.ndim == 3:
            array = np.moveaxis(array, 0, -1)  # tensors in this project are (C, H, W)
    else:
        array = np.asarray(image)
        if array.ndim == 3 and array.shape[-1] not in (1, 3, 4) and array.shape[0] in (1, 3, 4):
            array = np.moveaxis(array, 0, -1)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.dtype != np.uint8:
        array = np.clip(array.astype(np.float32), 0.0, 1.0)
    return array


def _show_image(ax: Axes, image: torch.Tensor | np.ndarray) -> None:
    array = _as_hwc(image)
    if array.ndim == 2:
        ax.imshow(array, cmap="gray", vmin=0, vmax=255 if array.dtype == np.uint8 else 1)
    else:
        ax.imshow(array)
    ax.set_xticks([])
    ax.set_yticks([])


HEAT_CMAP = "jet"
HEAT_LABEL = "Grad-CAM, top class (1 = strongest)"


def _overlay_heat(ax: Axes, heat: torch.Tensor | np.ndarray | None) -> None:
    """A heat map in [0, 1], on the input's grid, drawn half-transparent over the image."""
    if heat is not None:
        values = heat.detach().cpu().numpy() if isinstance(heat, torch.Tensor) else heat
        ax.imshow(values, cmap=HEAT_CMAP, alpha=0.45, vmin=0.0, vmax=1.0)


def _heat_colorbar(
    fig: Figure, axes: Any = None, label: str = HEAT_LABEL, cax: Axes | None = None
) -> None:
    """One colour bar saying what the overlay's colours mean (opaque: alpha would wash it out),
    beside ``axes`` or in its own axes ``cax``."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    mappable = ScalarMappable(norm=Normalize(0.0, 1.0), cmap=HEAT_CMAP)
    if cax is not None:
        bar = fig.colorbar(mappable, cax=cax)
    else:
        bar = fig.colorbar(mappable, ax=axes, fraction=0.046, pad=0.04)
    bar.set_label(label, fontsize=7)


# --------------------------------------------------------------------------- training history


def _number(value: Any) -> float:
    if value is None or value == "":
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def read_history(history: str | Path | Sequence[Mapping[str, Any]]) -> list[dict[str, float]]:
    """Rows of a history CSV (or the given dicts) with every value as a float (NaN if blank)."""
    if isinstance(history, (str, Path)):
        with open(history, newline="") as handle:
            rows: Sequence[Mapping[str, Any]] = list(csv.DictReader(handle))
    else:
        rows = history
    return [{key: _number(value) for key, value in row.items()} for row in rows]


def history_figure(history: str | Path | Sequence[Mapping[str, Any]]) -> Figure:
    """Loss and accuracy per epoch, train and validation, side by side (as Keras tutorials do)."""
    rows = read_history(history)
    if not rows:
        raise ValueError("the training history is empty; nothing to plot")
    epochs = [row.get("epoch", i + 1) for i, row in enumerate(rows)]
    fig = _new_figure(12, 4.5)
    panels = (("loss", "Loss"), ("acc", "Accuracy"))
    for ax, (metric, title) in zip(fig.subplots(1, 2), panels, strict=True):
        for split, style in (("train", "-o"), ("val", "-s")):
            values = [row.get(f"{split}_{metric}", math.nan) for row in rows]
            if all(math.isnan(v) for v in values):
                continue  # e.g. no validation split
            ax.plot(epochs, values, style, markersize=3, label=split)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    return fig


def plot_history(history: str | Path | Sequence[Mapping[str, Any]], out_png: str | Path) -> Path:
    """Write the two-panel (loss, accuracy) training-history plot; returns the path."""
    return save_figure(history_figure(history), out_png)


# --------------------------------------------------------------------------- confusion matrix


def confusion_matrix_figure(
    cm: torch.Tensor | np.ndarray, class_names: Sequence[str], normalize: bool = True
) -> Figure:
    matrix = np.asarray(cm.cpu() if isinstance(cm, torch.Tensor) else cm, dtype=np.float64)
    n = matrix.shape[0]
    if matrix.shape != (n, n) or len(class_names) != n:
        raise ValueError(
            f"confusion matrix of shape {matrix.shape} does not match {len(class_names)} classes"
        )
    if normalize:
        totals = matrix.sum(axis=1, keepdims=True)
        matrix = np.divide(matrix, totals, out=np.zeros_like(matrix), where=totals > 0)
    side = min(4 + 0.45 * n, 30)
    fig = _new_figure(side + 1.5, side)
    ax = fig.add_subplot()
    vmax = 1.0 if normalize else max(float(matrix.max()), 1.0)
    im = ax.imshow(matrix, cmap="Blues", vmin=0.0, vmax=vmax)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ticks = np.arange(n)
    # Past ~40 classes the labels would overlap; the matrix itself stays readable.
    if n <= 40:
        ax.set_xticks(ticks, labels=list(class_names), rotation=45, ha="right", fontsize=8)
        ax.set_yticks(ticks, labels=list(class_names), fontsize=8)
    if n <= 20:
        for i in range(n):
            for j in range(n):
                value = matrix[i, j]
                text = f"{value:.2f}" if normalize else f"{int(value)}"
                color = "white" if value > 0.5 * vmax else "black"
                ax.text(j, i, text, ha="center", va="center", color=color, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("confusion matrix" + (" (row-normalised)" if normalize else ""))
    fig.tight_layout()
    return fig


def plot_confusion_matrix(
    cm: torch.Tensor | np.ndarray,
    class_names: Sequence[str],
    out_png: str | Path,
    normalize: bool = True,
) -> Path:
    """Write the confusion matrix (rows true, columns predicted) as a heat map; returns the path."""
    return save_figure(confusion_matrix_figure(cm, class_names, normalize), out_png)


# --------------------------------------------------------------------------- predictions


def _draw_topk(
    image_ax: Axes | None,
    bar_ax: Axes,
    image: torch.Tensor | np.ndarray,
    probs: torch.Tensor | np.ndarray | Sequence[float],
    class_names: Sequence[str],
    true_label: int | str | None,
    k: int,
    heat: torch.Tensor | np.ndarray | None = None,
) -> None:
    p = torch.as_tensor(np.asarray(probs, dtype=np.float64)).flatten()
    k = min(k, p.numel())
    values, indices = p.topk(k)
    names = [class_names[i] for i in indices.tolist()]
    true_index = true_label
    if isinstance(true_label, str):
        true_index = list(class_names).index(true_label) if true_label in class_names else None
    colors = [
        CORRECT_COLOR if i == true_index else ("tab:red" if rank == 0 else "tab:gray")
        for rank, i in enumerate(indices.tolist())
    ]
    if true_index is None:
        colors = ["tab:blue"] * k
    positions = np.arange(k)[::-1]  # best at the top
    bar_ax.barh(positions, values.numpy(), color=colors)
    bar_ax.set_yticks(positions, labels=names)
    bar_ax.set_xlim(0.0, 1.0)
    bar_ax.set_xlabel("probability")
    for pos, value in zip(positions, values.tolist(), strict=True):
        bar_ax.text(min(value + 0.01, 0.85), pos, f"{value:.3f}", va="center", fontsize=8)
    bar_ax.set_title(f"top-{k}")
    if image_ax is not None:
        _show_image(image_ax, image)
        _overlay_heat(image_ax, heat)
        if true_index is not None:
            right = int(indices[0]) == true_index
            image_ax.set_title(
                f"true: {class_names[true_index]}",
                color=CORRECT_COLOR if right else WRONG_COLOR,
            )


def plot_topk_bars(
    image: torch.Tensor | np.ndarray,
    probs: torch.Tensor | np.ndarray | Sequence[float],
    class_names: Sequence[str],
    out: str | Path | Axes | tuple[Axes, Axes],
    true_label: int | str | None = None,
    k: int = 5,
    heat: torch.Tensor | np.ndarray | None = None,
) -> Path | Figure:
    """The image beside a horizontal bar chart of its ``k`` most probable classes.

    ``probs`` is the full probability vector over ``class_names``. The true class's bar (when
    known and in the top k) is green; a wrong top-1 is red. ``heat`` (an (H, W) map in [0, 1] on
    the image's grid, e.g. Grad-CAM) is drawn over the image with a colour bar. ``out`` is a PNG
    path (returned after writing), or axes to draw into: a pair ``(image_ax, bar_ax)`` or a single
    bar axes (then the image is left out); with axes the figure they belong to is returned.
    """
    if isinstance(out, (str, Path)):
        fig = _new_figure(9.8 if heat is not None else 9, 3.5)
        image_ax, bar_ax = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.6]})
        _draw_topk(image_ax, bar_ax, image, probs, class_names, true_label, k, heat)
        if heat is not None:
            _heat_colorbar(fig, image_ax)
        fig.tight_layout()
        return save_figure(fig, out)
    image_ax, bar_ax = out if isinstance(out, tuple) else (None, out)
    _draw_topk(image_ax, bar_ax, image, probs, class_names, true_label, k, heat)
    return bar_ax.get_figure()  # type: ignore[return-value]


def prediction_grid_figure(
    images: Sequence[torch.Tensor | np.ndarray] | torch.Tensor,
    predicted: Sequence[int],
    true: Sequence[int | None] | None,
    class_names: Sequence[str],
    cols: int = 5,
    heats: Sequence[torch.Tensor | np.ndarray | None] | None = None,
) -> Figure:
    """A grid of images titled with their predicted class: green when right, red when wrong,
    black when the true class is unknown; ``heats`` (e.g. Grad-CAM maps) overlay the images."""
    count = len(images)
    if count == 0:
        raise ValueError("no images to show")
    if len(predicted) != count or (true is not None and len(true) != count):
        raise ValueError("images, predicted and true labels must have the same length")
    cols = max(1, min(cols, count))
    rows = math.ceil(count / cols)
    bar_width = 1.4 if heats is not None else 0.0  # room for the colour bar and its label
    fig = _new_figure(2.4 * cols + bar_width, 2.9 * rows)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for i, ax in enumerate(axes):
        if i >= count:
            ax.set_axis_off()
            continue
        _show_image(ax, images[i])
        _overlay_heat(ax, heats[i] if heats is not None else None)
        pred = int(predicted[i])
        label = true[i] if true is not None else None
        if label is None:
            color, title = NEUTRAL_COLOR, class_names[pred]
        elif int(label) == pred:
            color, title = CORRECT_COLOR, class_names[pred]
        else:
            color, title = WRONG_COLOR, f"{class_names[pred]}\n(true: {class_names[int(label)]})"
        ax.set_title(title, color=color, fontsize=9)
    if heats is not None:
        width = fig.get_figwidth()
        fig.tight_layout(rect=(0.0, 0.0, 1.0 - bar_width / width, 1.0))
        left = 1.0 - (bar_width - 0.25) / width
        _heat_colorbar(fig, cax=fig.add_axes((left, 0.18, 0.12 / width, 0.64)))
    else:
        fig.tight_layout()
    return fig


def plot_prediction_grid(
    images: Sequence[torch.Tensor | np.ndarray] | torch.Tensor,
    predicted: Sequence[int],
    true_or_none: Sequence[int | None] | None,
    class_names: Sequence[str],
    out_png: str | Path,
    cols: int = 5,
    heats: Sequence[torch.Tensor | np.ndarray | None] | None = None,
) -> Path:
    """Write :func:`prediction_grid_figure` as a PNG; returns the path."""
    fig = prediction_grid_figure(images, predicted, true_or_none, class_names, cols, heats)
    return save_figure(fig, out_png)


# --------------------------------------------------------------------------- model comparison


def _first(row: Mapping[str, Any], keys: Sequence[str]) -> Any:
    for key in keys:
        if row.get(key) not in (None, ""):
            return row[key]
    return None


def plot_accuracy_vs_macs(rows: Sequence[Mapping[str, Any]], out_png: str | Path) -> Path:
    """Scatter of test accuracy against multiply-adds, one labelled point per model.

    Each row needs a name (``model`` or ``name``), a cost (``macs`` as a count, or ``gmacs`` in
    billions) and an accuracy (``test_top1``, ``test_acc``, ``top1`` or ``accuracy``; a fraction
    or a percent).
    Rows missing either number are skipped. The x axis is logarithmic: zoo models span 1000x.
    """
    points: list[tuple[str, float, float]] = []
    for row in rows:
        name = str(_first(row, ("model", "name")) or "?")
        macs = _first(row, ("macs",))
        gmacs = float(macs) / 1e9 if macs is not None else _number(_first(row, ("gmacs",)))
        accuracy = _number(_first(row, ("test_top1", "test_acc", "top1", "accuracy", "acc")))
        if math.isnan(gmacs) or math.isnan(accuracy) or gmacs <= 0:
            continue
        points.append((name, gmacs, accuracy))
    if not points:
        raise ValueError("no rows with both multiply-adds and accuracy to plot")
    # Accuracies may come as fractions or percents; show percents either way.
    scale = 100.0 if max(acc for _, _, acc in points) <= 1.0 else 1.0
    fig = _new_figure(8, 5.5)
    ax = fig.add_subplot()
    xs = [g for _, g, _ in points]
    ys = [a * scale for _, _, a in points]
    ax.scatter(xs, ys, s=30, zorder=3)
    # Labels go above and to the right; a point whose label would land on an earlier one (nets
    # of equal cost and near-equal accuracy, such as resnet20 and plain20) gets it below.
    span = (max(ys) - min(ys)) or 1.0
    placed: list[tuple[float, float]] = []
    for (name, _, _), x, y in zip(points, xs, ys, strict=True):
        clash = any(abs(math.log10(x / px)) < 0.15 and abs(y - py) < 0.04 * span
                    for px, py in placed)  # fmt: skip
        offset = (4, -11) if clash else (4, 4)
        ax.annotate(name, (x, y), textcoords="offset points", xytext=offset, fontsize=8)
        placed.append((x, y))
    ax.set_xscale("log")
    ax.set_xlabel("multiply-adds (GMACs, log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("accuracy vs. compute")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, out_png)
