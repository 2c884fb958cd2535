"""Small layers shared by several model families."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
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


class WholeInputConv2d(nn.Conv2d):
    """A convolution whose kernel covers its whole input, such as LeNet-5's C5 (5x5 on 5x5).

    Parameters and state-dict keys are nn.Conv2d's. On an input exactly the kernel's size the
    convolution is one matrix product, so it is computed with ``F.linear``: the same numbers,
    and on CPU its backward is about 3x faster than the convolution kernel's for these shapes.
    Any other input goes through the ordinary convolution.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            x.dim() == 4
            and tuple(x.shape[-2:]) == self.kernel_size
            and self.padding == (0, 0)
            and self.dilation == (1, 1)
            and self.groups == 1
        ):
            # flatten(1) reads (C, H, W) in logical order, matching weight.flatten(1), whatever
            # the memory format of x.
            out = F.linear(x.flatten(1), self.weight.flatten(1), self.bias)
            return out[:, :, None, None]
        return super().forward(x)
