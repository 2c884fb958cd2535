"""The one evaluation transform: what an image goes through before a trained model sees it.

Validation and test batches, `cnnzoo evaluate` and `cnnzoo predict` all use :class:`EvalTransform`,
so a photo given to `predict` is prepared exactly as the images the run was scored on: resize the
shorter side to ``size / crop_fraction`` (bilinear, in float, antialiased when shrinking — as the
in-memory loaders resize their batches), take the centre ``size`` x ``size`` crop, normalise.
``crop_fraction`` is 0.875 for image folders (the usual ImageNet evaluation crop) and 1 for the
in-memory sets, whose images all have one size already.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torchvision.transforms.v2 import functional as TF

from cnnzoo.data.augment import resize
from cnnzoo.errors import UsageError

FOLDER_CROP_FRACTION = 0.875


def normalizer(
    mean: Sequence[float], std: Sequence[float], device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift), shaped (1, C, 1, 1), with ``x_255 * scale + shift == (x/255 - mean)/std``.

    Computed in float64 once, so every path that normalises gets the very same float32 values.
    """
    mean_t = torch.tensor(tuple(mean), dtype=torch.float64)
    std_t = torch.tensor(tuple(std), dtype=torch.float64)
    if mean_t.shape != std_t.shape or mean_t.ndim != 1 or len(mean_t) == 0:
        raise UsageError(f"mean and std need one value per channel, got {list(mean)}, {list(std)}")
    if not bool(torch.isfinite(mean_t).all()) or not bool((std_t > 0).all()):
        raise UsageError(
            f"std must be positive and mean finite, got mean {list(mean)}, std {list(std)}"
        )
    scale = (1.0 / (255.0 * std_t)).float().view(1, -1, 1, 1).to(device)
    shift = (-mean_t / std_t).float().view(1, -1, 1, 1).to(device)
    return scale, shift


def resized_side_lengths(height: int, width: int, short_side: int) -> tuple[int, int]:
    """(H, W) after resizing the shorter side to ``short_side`` (torchvision's rounding)."""
    if height <= width:
        return short_side, int(short_side * width / height)
    return int(short_side * height / width), short_side


def eval_geometry(image: torch.Tensor, size: int, crop_fraction: float = 1.0) -> torch.Tensor:
    """Resize the shorter side to ``size / crop_fraction``, take the centre ``size`` square.

    ``image`` is (C, H, W) or (B, C, H, W), uint8 or float in [0, 255]; the result is float in
    [0, 255], not normalised (what plots show).
    """
    if not 0 < crop_fraction <= 1:
        raise UsageError(f"crop fraction must be in (0, 1], got {crop_fraction}")
    batch = image if image.dim() == 4 else image[None]
    height, width = batch.shape[-2:]
    target = resized_side_lengths(height, width, round(size / crop_fraction))
    batch = TF.center_crop(resize(batch.float(), target), [size, size])
    return batch if image.dim() == 4 else batch[0]


@dataclass(frozen=True)
class EvalTransform:
    """Decoded image (C, H, W) or batch (B, C, H, W), uint8 or float in [0, 255] -> model input."""

    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_fraction: float = 1.0

    def __post_init__(self) -> None:
        normalizer(self.mean, self.std)  # refuses a std of 0 or NaN statistics now, not later
        eval_geometry(torch.zeros(1, 1, 1), 1, self.crop_fraction)

    def geometry(self, image: torch.Tensor) -> torch.Tensor:
        return eval_geometry(image, self.size, self.crop_fraction)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        scale, shift = normalizer(self.mean, self.std, x.device)
        return x * scale + shift if x.dim() == 4 else (x[None] * scale + shift)[0]

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Model input back to [0, 255] values, for showing what the model saw."""
        scale, shift = normalizer(self.mean, self.std, x.device)
        return (x - shift) / scale if x.dim() == 4 else ((x[None] - shift) / scale)[0]

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return self.normalize(self.geometry(image))
