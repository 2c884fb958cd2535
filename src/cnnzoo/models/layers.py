"""Small layers shared by several model families."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

ActLayer = Callable[..., nn.Module]


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation (Hu et al. 2017) with 1x1 convolutions as the two FC layers."""

    def __init__(
        self,
        channels: int,
        squeeze_channels: int,
        act_layer: ActLayer = nn.ReLU,
        gate_layer: ActLayer = nn.Sigmoid,
    ) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze_channels, 1)
        self.activation = act_layer()
        self.fc2 = nn.Conv2d(squeeze_channels, channels, 1)
        self.scale_activation = gate_layer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.fc2(self.activation(self.fc1(self.avgpool(x))))
        return x * self.scale_activation(scale)
