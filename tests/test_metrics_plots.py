"""Metrics against hand-worked answers and scikit-learn; plots as real PNG files."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from sklearn.metrics import (
    confusion_matrix,
    precision_recall_fscore_support,
    top_k_accuracy_score,
)
from torch import nn

from cnnzoo.analysis.metrics import evaluate_model, result_from_logits
from cnnzoo.analysis.plots import (
    plot_accuracy_vs_macs,
    plot_confusion_matrix,
    plot_history,
    plot_prediction_grid,
    plot_topk_bars,
    prediction_grid_figure,
)
from cnnzoo.errors import DataError

# ----------------------------------------------------------------------------- metrics


def _one_hot_logits(predicted: list[int], num_classes: int) -> torch.Tensor:
    return F.one_hot(torch.tensor(predicted), num_classes).float() * 4.0


def test_hand_worked_confusion_accuracy_and_scores() -> None:
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    logits = _one_hot_logits([0, 1, 1, 1, 0, 2], 3)
    result = result_from_logits(logits, labels, class_names=["a", "b", "c"])

    assert result.confusion.dtype == torch.int64
    assert result.confusion.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert result.n == 6
    assert result.top1 == pytest.approx(4 / 6)
    assert result.topk == 3 and result.top5 == 1.0  # k = min(5, classes): every label is in top-3
    assert result.precision.tolist() == pytest.approx([1 / 2, 2 / 3, 1.0])
    assert result.recall.tolist() == pytest.approx([1 / 2, 1.0, 1 / 2])
    assert result.f1.tolist() == pytest.approx([1 / 2, 0.8, 2 / 3])
    assert result.support.tolist() == [2, 2, 2]
    # Right logit 4 vs two zeros: -log(e^4 / (e^4 + 2)); wrong: -log(1 / (e^4 + 2)).
    right, wrong = np.log1p(2 * np.exp(-4.0)), np.log(np.exp(4.0) + 2)
    assert result.loss == pytest.approx((4 * right + 2 * wrong) / 6, rel=1e-6)

    data = result.to_dict()
    assert data["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert data["per_class"]["b"] == {
        "precision": pytest.approx(2 / 3),
        "recall": 1.0,
        "f1": pytest.approx(0.8),
        "support": 2,
    }
    assert "macro avg" in result.to_text() and "0.8000" in result.to_text()


def test_against_sklearn_including_a_class_never_predicted() -> None:
    gen = torch.Generator().manual_seed(0)
    num_classes, n = 10, 1000
    labels = torch.randint(0, num_classes, (n,), generator=gen)
    logits = torch.randn(n, num_classes, generator=gen)
    logits[torch.arange(n), labels] += 1.0  # better than chance
    logits[:, 7] -= 100.0  # class 7 is never the top-1: precision 0/0 -> 0 as in sklearn

    result = result_from_logits(logits, labels)
    y, scores = labels.numpy(), logits.numpy()
    pred = scores.argmax(1)
    p, r, f, s = precision_recall_fscore_support(
        y, pred, labels=range(num_classes), zero_division=0
    )
    assert result.confusion.numpy().tolist() == confusion_matrix(y, pred).tolist()
    np.testing.assert_allclose(result.precision.numpy(), p, atol=1e-12)
    np.testing.assert_allclose(result.recall.numpy(), r, atol=1e-12)
    np.testing.assert_allclose(result.f1.numpy(), f, atol=1e-12)
    assert result.support.tolist() == s.tolist()
    assert result.precision[7] == 0.0 and result.support[7] > 0
    assert result.top1 == pytest.approx((pred == y).mean())
    assert result.top5 == pytest.approx(top_k_accuracy_score(y, scores, k=5))
    assert 0.3 < result.top1 < result.top5 < 1.0
    assert result.loss == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-6)


class _Passthrough(nn.Module):
    """A 'model' whose input already is the logits; returns a tuple like aux-head models."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x * self.scale, torch.zeros_like(x)


def test_evaluate_model_batches_equal_one_pass_and_handle_tuples() -> None:
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(103, 6, generator=gen)
    labels = torch.randint(0, 6, (103,), generator=gen)
    batches = [(logits[i : i + 25], labels[i : i + 25]) for i in range(0, 103, 25)]
    model = _Passthrough().train()

    result = evaluate_model(model, batches, 6, progress=False)
    whole = result_from_logits(logits, labels)

    assert not model.training
    assert result.n == 103
    assert torch.equal(result.confusion, whole.confusion)
    assert result.top1 == whole.top1 and result.top5 == whole.top5 and result.topk == 5
    assert result.loss == pytest.approx(whole.loss, rel=1e-6)  # float32 sums per batch


def test_evaluate_model_rejects_nothing_and_wrong_width() -> None:
    with pytest.raises(DataError):
        evaluate_model(_Passthrough(), [], 3, progress=False)
    with pytest.raises(ValueError, match=r"expected \(batch, 4\)"):
        evaluate_model(_Passthrough(), [(torch.zeros(2, 3), torch.zeros(2))], 4, progress=False)


# ----------------------------------------------------------------------------- plots


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from the PNG signature and IHDR chunk."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_history_plot_from_csv_with_a_missing_validation_column(tmp_path: Path) -> None:
    csv_path = tmp_path / "history.csv"
    csv_path.write_text(
        "epoch,train_loss,val_loss,train_acc,val_acc,lr\n"
        "1,2.1,1.9,0.31,0.35,0.1\n"
        "2,1.2,1.3,0.61,0.58,0.05\n"
        "3,0.8,,0.75,,0.01\n"
    )
    out = plot_history(csv_path, tmp_path / "sub" / "history.png")
    assert out == tmp_path / "sub" / "history.png"
    assert png_size(out) == (1200, 450)

    rows = [{"epoch": e, "train_loss": 1 / e, "train_acc": 0.5} for e in (1, 2)]
    assert png_size(plot_history(rows, tmp_path / "train_only.png")) == (1200, 450)
    with pytest.raises(ValueError, match="empty"):
        plot_history([], tmp_path / "none.png")


def test_confusion_matrix_plot(tmp_path: Path) -> None:
    cm = torch.tensor([[5, 1, 0], [0, 4, 2], [0, 0, 0]])  # an empty row must not divide by 0
    out = plot_confusion_matrix(cm, ["cat", "dog", "emu"], tmp_path / "cm.png")
    assert png_size(out) == (685, 535)  # (4 + 0.45 * 3 + 1.5) x (4 + 0.45 * 3) inches at 100 dpi
    with pytest.raises(ValueError, match="does not match"):
        plot_confusion_matrix(cm, ["cat", "dog"], tmp_path / "bad.png")


def test_topk_bars_highlight_the_true_class(tmp_path: Path) -> None:
    image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    probs = torch.tensor([0.05, 0.6, 0.02, 0.2, 0.1, 0.03])
    names = ["a", "b", "c", "d", "e", "f"]
    assert png_size(plot_topk_bars(image, probs, names, tmp_path / "bars.png", true_label=3)) == (
        900,
        350,
    )

    fig = Figure()
    image_ax, bar_ax = fig.subplots(1, 2)
    assert plot_topk_bars(image, probs, names, (image_ax, bar_ax), true_label="d") is fig
    bars = bar_ax.patches
    assert len(bars) == 5
    widths = [round(bar.get_width(), 4) for bar in bars]
    assert widths == [0.6, 0.2, 0.1, 0.05, 0.03]  # drawn best first (at the top)
    assert bars[1].get_facecolor() == to_rgba("green")  # true class "d", ranked second
    assert bars[0].get_facecolor() == to_rgba("tab:red")  # the wrong top-1
    assert image_ax.title.get_color() == "red"
    ticks = zip(bar_ax.get_yticks(), bar_ax.get_yticklabels(), strict=True)
    top_down = [label.get_text() for _, label in sorted(ticks, key=lambda t: -t[0])]
    assert top_down == ["b", "d", "e", "a", "f"]


def test_prediction_grid_titles_green_when_right_red_when_wrong(tmp_path: Path) -> None:
    images = [torch.full((1, 28, 28), 40 * i, dtype=torch.uint8) for i in range(6)]
    predicted = [0, 1, 2, 0, 1, 2]
    true = [0, 1, 1, 0, 2, 2]
    names = ["zero", "one", "two"]
    fig = prediction_grid_figure(images, predicted, true, names, cols=4)
    axes = fig.axes
    assert len(axes) == 8  # 2 rows x 4, the last two blank
    colors = [ax.title.get_color() for ax in axes[:6]]
    assert colors == ["green", "green", "red", "green", "red", "green"]
    assert axes[2].title.get_text() == "two\n(true: one)"
    assert not axes[7].axison

    unknown = prediction_grid_figure(images[:2], [0, 1], None, names)
    assert [ax.title.get_color() for ax in unknown.axes] == ["black", "black"]

    out = plot_prediction_grid(images, predicted, true, names, tmp_path / "grid.png", cols=5)
    assert png_size(out) == (1200, 580)  # 5 x 2.4 by 2 x 2.9 inches


def test_accuracy_vs_macs_scatter(tmp_path: Path) -> None:
    rows = [
        {"model": "lenet5", "macs": 416_000, "test_acc": 0.89},
        {"model": "resnet20", "gmacs": 0.041, "test_acc": 0.91},
        {"model": "untrained", "gmacs": 1.0, "test_acc": None},  # skipped
    ]
    out = plot_accuracy_vs_macs(rows, tmp_path / "acc_macs.png")
    assert png_size(out) == (800, 550)
    with pytest.raises(ValueError, match="no rows"):
        plot_accuracy_vs_macs(rows[2:], tmp_path / "none.png")
