"""The experiments' figures (cnnzoo.experiments), drawn off-screen like cnnzoo.analysis.plots."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from cnnzoo.analysis.plots import DPI, save_figure

__all__ = ["plot_data_efficiency", "plot_degradation"]


def plot_degradation(curves: Sequence[Mapping[str, Any]], out_png: str | Path) -> Path:
    """Training error (left) and test error (right) against epochs, in percent: the figure of
    He et al. 2015 (Fig. 1 and 6). Plain nets dashed, residual nets solid, one colour per depth.

    Each curve: ``label``, ``depth``, ``residual`` (bool), ``epochs`` and the fractions
    ``train_error`` and ``test_error`` per epoch (NaN where an epoch was not scored).
    """
    if not curves:
        raise ValueError("no curves to plot")
    fig = Figure(figsize=(12, 5), dpi=DPI)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2, sharey=False)
    depths = sorted({int(curve["depth"]) for curve in curves})
    colours = {depth: f"C{i % 10}" for i, depth in enumerate(depths)}
    for ax, key, title in (
        (axes[0], "train_error", "training error"),
        (axes[1], "test_error", "test error"),
    ):
        for curve in sorted(curves, key=lambda c: (int(c["depth"]), bool(c["residual"]))):
            values = [100 * float(v) for v in curve[key]]
            if all(math.isnan(v) for v in values):
                continue
            ax.plot(
                list(curve["epochs"]),
                values,
                color=colours[int(curve["depth"])],
                linestyle="-" if curve["residual"] else "--",
                linewidth=2 if curve["residual"] else 1.6,
                marker="o" if len(values) <= 12 else None,
                markersize=3,
                label=str(curve["label"]),
            )
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(f"{title} (%)")
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        ax.legend(title="dashed: plain, solid: residual", fontsize=9, title_fontsize=9)
    fig.tight_layout()
    return save_figure(fig, out_png)


def plot_data_efficiency(lines: Sequence[Mapping[str, Any]], out_png: str | Path) -> Path:
    """Test accuracy (%) against the number of training images (log scale), one line per model:
    the shape of Dosovitskiy et al. 2021, Fig. 3 and 4 (accuracy against pre-training data).

    Each line: ``label``, ``sizes`` (training images) and ``test_accuracy`` (fractions, NaN
    where a run is missing), optionally ``train_accuracy`` (drawn dotted in the same colour).
    """
    if not lines:
        raise ValueError("no lines to plot")
    fig = Figure(figsize=(8, 5.5), dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    sizes: set[int] = set()
    for index, line in enumerate(lines):
        colour = f"C{index % 10}"
        xs = [int(size) for size in line["sizes"]]
        sizes.update(xs)
        tests = [100 * float(value) for value in line["test_accuracy"]]
        ax.plot(xs, tests, color=colour, marker="o", linewidth=2, label=str(line["label"]))
        for x, y in zip(xs, tests, strict=True):
            if not math.isnan(y):
                ax.annotate(f"{y:.1f}", (x, y), textcoords="offset points", xytext=(4, -12),
                            fontsize=8, color=colour)  # fmt: skip
        trains = line.get("train_accuracy")
        if trains is not None:
            ax.plot(xs, [100 * float(v) for v in trains], color=colour, linestyle=":",
                    linewidth=1.2, alpha=0.8)  # fmt: skip
    ax.set_xscale("log")
    ticks = sorted(sizes)
    ax.set_xticks(ticks, [f"{size:,}" for size in ticks])
    ax.minorticks_off()
    ax.set_xlabel("training images (log scale)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("test accuracy against training-set size (dotted: final training accuracy)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=9)
    fig.tight_layout()
    return save_figure(fig, out_png)
