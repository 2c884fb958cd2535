"""Classification metrics over a whole split: loss, top-1/top-k, confusion matrix, per-class P/R/F1.

Everything is accumulated batch by batch on tensors (a ``bincount`` builds the confusion matrix),
so evaluating a 10,000-image test set costs one forward pass and no per-sample Python.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cnnzoo.errors import DataError

__all__ = [
    "Comparison",
    "EvalResult",
    "class_logits",
    "classes_of",
    "compare_models",
    "evaluate_model",
    "logits_of",
    "per_class_scores",
    "result_from_logits",
]


@dataclass
class EvalResult:
    """Metrics of one model on one split. Accuracies are fractions in [0, 1]."""

    loss: float  # mean cross-entropy
    top1: float
    top5: float  # top-k accuracy with k = min(5, num_classes)
    topk: int
    confusion: torch.Tensor  # int64 (C, C); rows are true classes, columns predictions
    precision: torch.Tensor  # float64 (C,); 0 for a class never predicted
    recall: torch.Tensor  # float64 (C,); 0 for a class absent from the split
    f1: torch.Tensor
    support: torch.Tensor  # int64 (C,): samples per true class
    n: int
    class_names: list[str] | None = None

    @property
    def num_classes(self) -> int:
        return int(self.confusion.shape[0])

    @property
    def macro_f1(self) -> float:
        return float(self.f1.mean())

    def names(self) -> list[str]:
        if self.class_names is not None and len(self.class_names) == self.num_classes:
            return list(self.class_names)
        return [str(i) for i in range(self.num_classes)]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable numbers (lists for the per-class tensors)."""
        return {
            "n": self.n,
            "loss": self.loss,
            "top1": self.top1,
            "top5": self.top5,
            "topk": self.topk,
            "macro_precision": float(self.precision.mean()),
            "macro_recall": float(self.recall.mean()),
            "macro_f1": self.macro_f1,
            "class_names": self.names(),
            "per_class": {
                name: {
                    "precision": float(self.precision[i]),
                    "recall": float(self.recall[i]),
                    "f1": float(self.f1[i]),
                    "support": int(self.support[i]),
                }
                for i, name in enumerate(self.names())
            },
            "confusion_matrix": self.confusion.tolist(),
        }

    def summary_line(self) -> str:
        return (
            f"n={self.n}  loss={self.loss:.4f}  top-1={100 * self.top1:.2f}%  "
            f"{self.topk_text('=')}macro-F1={100 * self.macro_f1:.2f}%"
        )

    def topk_text(self, sep: str = " ") -> str:
        """``top-5=93.10%  ``, or nothing where top-k covers every class (100 % by definition)."""
        if self.topk >= self.num_classes:
            return ""
        return f"top-{self.topk}{sep}{100 * self.top5:.2f}%  "

    def per_class_rows(self) -> list[tuple[str, float, float, float, int]]:
        return [
            (
                name,
                float(self.precision[i]),
                float(self.recall[i]),
                float(self.f1[i]),
                int(self.support[i]),
            )
            for i, name in enumerate(self.names())
        ]

    def to_text(self) -> str:
        """The per-class table as fixed-width text (what sklearn's classification_report shows)."""
        names = self.names()
        width = max(12, *(len(name) for name in names))
        lines = [f"{'class':<{width}}  precision  recall     f1  support"]
        for name, p, r, f, s in self.per_class_rows():
            lines.append(f"{name:<{width}}  {p:9.4f}  {r:6.4f}  {f:6.4f}  {s:7d}")
        lines.append(
            f"{'macro avg':<{width}}  {float(self.precision.mean()):9.4f}  "
            f"{float(self.recall.mean()):6.4f}  {self.macro_f1:6.4f}  {self.n:7d}"
        )
        return "\n".join(lines)

    def to_rich_table(self, title: str | None = None) -> Any:
        from rich.markup import escape
        from rich.table import Table

        table = Table(title=escape(title) if title else None)
        table.add_column("class")
        for column in ("precision", "recall", "F1", "support"):
            table.add_column(column, justify="right")
        for name, p, r, f, s in self.per_class_rows():
            table.add_row(escape(name), f"{p:.4f}", f"{r:.4f}", f"{f:.4f}", str(s))
        table.add_section()
        table.add_row(
            "macro avg",
            f"{float(self.precision.mean()):.4f}",
            f"{float(self.recall.mean()):.4f}",
            f"{self.macro_f1:.4f}",
            str(self.n),
        )
        return table


def logits_of(output: Any) -> torch.Tensor:
    """The main logits of a model output; tuple outputs (e.g. auxiliary heads) give their first."""
    while isinstance(output, (tuple, list)):
        output = output[0]
    return output


def class_logits(output: Any) -> torch.Tensor:
    """The main logits of a model output, one score per class.

    A single logit ``z`` (a sigmoid head on two classes, as Keras' ``Dense(1, "sigmoid")``)
    becomes ``(-z/2, z/2)``: its softmax is ``(1 - sigmoid(z), sigmoid(z))`` and its
    cross-entropy is the binary cross-entropy, so every metric, probability and explanation of
    a two-class model applies unchanged (and the first class has a score that gradients reach).
    """
    logits = logits_of(output)
    if logits.dim() == 2 and logits.shape[1] == 1:
        half = logits / 2
        return torch.cat([-half, half], dim=1)
    return logits


def classes_of(outputs: int) -> int:
    """How many classes a head of ``outputs`` units tells apart (one sigmoid unit: two)."""
    return 2 if outputs == 1 else outputs


def per_class_scores(
    confusion: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Precision, recall, F1 and support from a confusion matrix (rows true), 0 where undefined."""
    cm = confusion.to(torch.float64)
    true_pos = cm.diagonal()
    predicted = cm.sum(dim=0)
    support = cm.sum(dim=1)
    # Same convention as sklearn's zero_division=0: an empty denominator scores 0, not NaN.
    precision = torch.where(predicted > 0, true_pos / predicted.clamp(min=1), 0.0)
    recall = torch.where(support > 0, true_pos / support.clamp(min=1), 0.0)
    denom = precision + recall
    f1 = torch.where(denom > 0, 2 * precision * recall / denom.clamp(min=1e-300), 0.0)
    return precision, recall, f1, confusion.sum(dim=1).to(torch.int64)


class _Accumulator:
    """Running sums for the metrics; all state lives on the evaluation device."""

    def __init__(self, num_classes: int, device: torch.device) -> None:
        self.num_classes = num_classes
        self.k = min(5, num_classes)
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.top1 = torch.zeros((), dtype=torch.int64, device=device)
        self.topk = torch.zeros((), dtype=torch.int64, device=device)
        self.confusion = torch.zeros(num_classes * num_classes, dtype=torch.int64, device=device)
        self.n = 0

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        logits = class_logits(logits)
        if logits.dim() != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(
                f"the model gives logits of shape {tuple(logits.shape)}, "
                f"expected (batch, {self.num_classes})"
            )
        logits = logits.float()
        labels = labels.to(logits.device, torch.int64)
        self.loss_sum += F.cross_entropy(logits, labels, reduction="sum").double()
        top = logits.topk(self.k, dim=1).indices
        hits = top == labels[:, None]
        self.top1 += hits[:, 0].sum()
        self.topk += hits.any(dim=1).sum()
        self.confusion += torch.bincount(
            labels * self.num_classes + top[:, 0], minlength=self.num_classes**2
        )
        self.n += int(labels.shape[0])

    def result(self, class_names: Sequence[str] | None) -> EvalResult:
        if self.n == 0:
            raise DataError("there are no samples to evaluate")
        confusion = self.confusion.view(self.num_classes, self.num_classes).cpu()
        precision, recall, f1, support = per_class_scores(confusion)
        return EvalResult(
            loss=float(self.loss_sum) / self.n,
            top1=int(self.top1) / self.n,
            top5=int(self.topk) / self.n,
            topk=self.k,
            confusion=confusion,
            precision=precision,
            recall=recall,
            f1=f1,
            support=support,
            n=self.n,
            class_names=list(class_names) if class_names is not None else None,
        )


def result_from_logits(
    logits: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
) -> EvalResult:
    """Metrics of precomputed logits (N, C), or (N, 1) of a sigmoid head, against integer
    labels (N,)."""
    acc = _Accumulator(num_classes or classes_of(int(logits.shape[1])), logits.device)
    acc.update(logits, labels)
    return acc.result(class_names)


def _model_device(model: nn.Module) -> torch.device:
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def _tracked(
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]], progress: bool
) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """The loader's batches, behind a progress bar when asked for."""
    if not progress:
        return loader
    from rich.progress import track

    total = len(loader) if hasattr(loader, "__len__") else None  # type: ignore[arg-type]
    return track(loader, description="evaluating", total=total, transient=True)


def evaluate_model(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    num_classes: int,
    *,
    device: torch.device | str | None = None,
    progress: bool = True,
    class_names: Sequence[str] | None = None,
) -> EvalResult:
    """Run ``model`` over every ``(images, labels)`` batch of ``loader`` and score it.

    The model is put in eval mode (and left there); ``device`` defaults to where its parameters
    live, and batches are moved there.
    """
    device = torch.device(device) if device is not None else _model_device(model)
    model.eval()
    acc = _Accumulator(num_classes, device)
    with torch.inference_mode():
        for images, labels in _tracked(loader, progress):
            images = images.to(device, non_blocking=True)
            acc.update(logits_of(model(images)), labels.to(device, non_blocking=True))
    return acc.result(class_names)


@dataclass
class Comparison:
    """Two or more models scored on the same batches, the first being the reference."""

    results: dict[str, EvalResult]
    agreement: dict[str, float]  # fraction of samples whose top-1 is the reference's
    max_abs_diff: dict[str, float]  # largest |logit - reference logit|
    seconds: dict[str, float]  # time spent in each model's forward passes

    def images_per_second(self, name: str) -> float:
        n = next(iter(self.results.values())).n
        return n / self.seconds[name] if self.seconds[name] > 0 else float("inf")


def compare_models(
    models: dict[str, nn.Module],
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    num_classes: int,
    *,
    device: torch.device | str = "cpu",
    progress: bool = True,
    class_names: Sequence[str] | None = None,
) -> Comparison:
    """Score every model on every batch, in turns (so drifting machine load hits all alike),
    and compare each one's logits with the first model's."""
    import time

    device = torch.device(device)
    names = list(models)
    accumulators = {name: _Accumulator(num_classes, device) for name in names}
    agree = {name: 0 for name in names}
    diff = {name: 0.0 for name in names}
    seconds = {name: 0.0 for name in names}
    with torch.inference_mode():
        for images, labels in _tracked(loader, progress):
            images, labels = images.to(device), labels.to(device)
            reference = None
            for name in names:
                start = time.perf_counter()
                logits = logits_of(models[name](images)).float()
                seconds[name] += time.perf_counter() - start
                accumulators[name].update(logits, labels)
                if reference is None:
                    reference = logits
                agree[name] += int((logits.argmax(1) == reference.argmax(1)).sum())
                diff[name] = max(diff[name], float((logits - reference).abs().max()))
    results = {name: acc.result(class_names) for name, acc in accumulators.items()}
    n = results[names[0]].n
    return Comparison(
        results=results,
        agreement={name: agree[name] / n for name in names},
        max_abs_diff=diff,
        seconds=seconds,
    )
