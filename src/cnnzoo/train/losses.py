"""The training loss: cross-entropy over the classes, or binary cross-entropy for a sigmoid head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ClassificationLoss"]


class ClassificationLoss(nn.Module):
    """Cross-entropy of (N, C) logits against integer labels; for a single logit per image (a
    sigmoid head on two classes, Keras' ``Dense(1, "sigmoid")`` with ``binary_crossentropy``)
    the binary cross-entropy with logits, label 1 being the second class. Label smoothing moves
    the targets toward the uniform distribution in both cases (``y (1 - s) + s / 2`` for one
    logit), so the two agree on a two-class problem."""

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        smoothing = self.label_smoothing
        if logits.dim() == 2 and logits.shape[1] == 1:
            target = labels.to(logits.dtype) * (1 - smoothing) + smoothing / 2
            return F.binary_cross_entropy_with_logits(logits[:, 0], target)
        return F.cross_entropy(logits, labels, label_smoothing=smoothing)
