"""Batch augmentation on tensors: every op draws per-sample parameters and transforms the
whole batch in one or two tensor ops, so a batch costs about as much as one image."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Zero-pad a batch (B, C, H, W) by ``padding`` and crop H x W at per-sample offsets.

    ``unfold`` views the padded batch as all vertical (then horizontal) windows without
    copying; one index op per axis then picks each sample's window (about 2.5x faster than
    gathering every pixel with broadcast index tensors).
    """
    b, _, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    top = torch.randint(0, 2 * padding + 1, (b,), generator=generator).to(x.device)
    left = torch.randint(0, 2 * padding + 1, (b,), generator=generator).to(x.device)
    batch = torch.arange(b, device=x.device)
    rows = padded.unfold(2, h, 1)[batch, :, top]  # (B, C, W + 2p, H): columns first
    return rows.unfold(2, w, 1)[batch, :, left]  # (B, C, H, W)


def random_flip(x: torch.Tensor, generator: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """Mirror each image of a batch left-right with probability ``p``."""
    mask = (torch.rand(x.shape[0], generator=generator) < p).to(x.device)
    return torch.where(mask[:, None, None, None], x.flip(-1), x)


def random_resized_crop(
    x: torch.Tensor,
    size: tuple[int, int],
    generator: torch.Generator,
    *,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    flip: bool = True,
) -> torch.Tensor:
    """Inception-style random-resized crop (+ optional flip) of a float batch to ``size``.

    Each sample's crop (area fraction from ``scale``, aspect from log-uniform ``ratio``) is an
    affine map; one ``grid_sample`` resamples every crop bilinearly. Crops that would not fit
    are shrunk to fit (torchvision retries instead; the distributions differ only at the edges).
    """
    b = x.shape[0]
    area = torch.empty(b).uniform_(scale[0], scale[1], generator=generator)
    log_ratio = torch.empty(b).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    aspect = log_ratio.exp()
    # Fractions of the image's width and height that the crop spans.
    crop_w = (area * aspect).sqrt().clamp(max=1.0)
    crop_h = (area / aspect).sqrt().clamp(max=1.0)
    centre_x = (torch.rand(b, generator=generator) * 2 - 1) * (1 - crop_w)
    centre_y = (torch.rand(b, generator=generator) * 2 - 1) * (1 - crop_h)
    sign = torch.ones(b)
    if flip:
        sign = torch.where(torch.rand(b, generator=generator) < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = crop_w * sign
    theta[:, 0, 2] = centre_x
    theta[:, 1, 1] = crop_h
    theta[:, 1, 2] = centre_y
    theta = theta.to(device=x.device, dtype=x.dtype)
    grid = F.affine_grid(theta, [b, x.shape[1], size[0], size[1]], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of a float batch; antialiased only when shrinking (upsampling needs none)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    shrinking = size[0] < x.shape[-2] or size[1] < x.shape[-1]
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=shrinking)


def convert_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """Grey -> RGB by repeating the channel; RGB -> grey by averaging the channels."""
    have = x.shape[1]
    if have == channels:
        return x
    if have == 1:
        return x.expand(-1, channels, -1, -1)
    if channels == 1:
        return x.mean(dim=1, keepdim=True)
    raise ValueError(f"cannot convert {have}-channel images to {channels} channels")


def random_erasing(
    x: torch.Tensor,
    generator: torch.Generator,
    p: float = 0.5,
    *,
    scale: tuple[float, float] = (0.02, 1 / 3),
    ratio: tuple[float, float] = (0.3, 1 / 0.3),
) -> torch.Tensor:
    """Random erasing (Zhong et al. 2017) of a normalised float batch (B, C, H, W).

    With probability ``p`` an image gets one rectangle (area fraction from ``scale``, aspect
    log-uniform in ``ratio``, the same on every channel) replaced by per-pixel standard-normal
    noise, which is what random pixel values look like after normalisation. All boxes are drawn
    at once and applied with one ``where``; the noise is drawn on the batch's device.
    """
    b, _, h, w = x.shape
    erase = torch.rand(b, generator=generator) < p
    area = torch.empty(b).uniform_(scale[0], scale[1], generator=generator) * (h * w)
    log_ratio = torch.empty(b).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    box_h = (area * log_ratio.exp()).sqrt().round().clamp(1, h).long()
    box_w = (area / log_ratio.exp()).sqrt().round().clamp(1, w).long()
    top = (torch.rand(b, generator=generator) * (h - box_h + 1)).long()
    left = (torch.rand(b, generator=generator) * (w - box_w + 1)).long()
    rows, cols = torch.arange(h), torch.arange(w)
    in_rows = (rows >= top[:, None]) & (rows < (top + box_h)[:, None])  # (B, H)
    in_cols = (cols >= left[:, None]) & (cols < (left + box_w)[:, None])  # (B, W)
    mask = in_rows[:, :, None] & in_cols[:, None, :] & erase[:, None, None]  # (B, H, W)
    noise_seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    noise_generator = torch.Generator(device=x.device).manual_seed(noise_seed)
    noise = torch.randn(x.shape, generator=noise_generator, device=x.device, dtype=x.dtype)
    return torch.where(mask[:, None].to(x.device), noise, x)
