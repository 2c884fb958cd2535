"""Mixup (Zhang et al. 2018) and CutMix (Yun et al. 2019) of a batch."""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["mix_batch"]


def mix_batch(
    x: torch.Tensor, y: torch.Tensor, mixup: float, cutmix: float,
    rng: np.random.Generator, generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor | None, float]:  # fmt: skip
    """(mixed x, the second labels, the first labels' weight); a coin picks mixup or cutmix
    when both are on. With both off, x comes back as it is (and no second labels)."""
    if mixup <= 0 and cutmix <= 0:
        return x, None, 1.0
    use_cutmix = cutmix > 0 and (mixup <= 0 or rng.random() < 0.5)
    alpha = cutmix if use_cutmix else mixup
    lam = float(rng.beta(alpha, alpha))
    perm = torch.randperm(x.shape[0], generator=generator).to(x.device)
    if not use_cutmix:
        return x.mul(lam).add_(x[perm], alpha=1 - lam), y[perm], lam
    height, width = x.shape[-2:]
    cut = math.sqrt(1 - lam)
    cy, cx = int(rng.integers(height)), int(rng.integers(width))
    half_h, half_w = int(height * cut) // 2, int(width * cut) // 2
    y0, y1 = max(cy - half_h, 0), min(cy + half_h, height)
    x0, x1 = max(cx - half_w, 0), min(cx + half_w, width)
    x = x.clone()
    x[:, :, y0:y1, x0:x1] = x[perm, :, y0:y1, x0:x1]
    lam = 1 - (y1 - y0) * (x1 - x0) / (height * width)  # the pasted area decides the mix
    return x, y[perm], lam
