"""ShuffleNet V2 (Ma et al. 2018, "ShuffleNet V2: Practical Guidelines for Efficient CNNs").

Each unit splits its channels in two, transforms one half (1x1 -> depthwise 3x3 -> 1x1),
concatenates and shuffles the channels so the halves mix in the next unit (Fig. 3c/d). Module
names follow torchvision, so its weights load as they are.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from cnnzoo.models.base import ZooModel
from cnnzoo.models.features import FeatureInfo
from cnnzoo.registry import Paper, register_model

SHUFFLENET_V2_PAPER = Paper(
    "ShuffleNet V2: Practical Guidelines for Efficient CNN Architecture Design", 2018, "1807.11164"
)

# Table 5: units per stage (stage2, stage3, stage4); the first of each halves the resolution.
STAGE_REPEATS = (4, 8, 4)
# Table 5, output channels of conv1, stage2, stage3, stage4, conv5 per width multiplier.
STAGE_CHANNELS: dict[str, tuple[int, int, int, int, int]] = {
    "x0_5": (24, 48, 96, 192, 1024),
    "x1_0": (24, 116, 232, 464, 1024),
    "x1_5": (24, 176, 352, 704, 1024),
    "x2_0": (24, 244, 488, 976, 2048),
}


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave the channels of ``groups`` equal groups: [a0 a1 | b0 b1] -> [a0 b0 a1 b1]."""
    n, c, h, w = x.shape
    x = x.view(n, groups, c // groups, h, w).transpose(1, 2)
    return x.reshape(n, c, h, w)


def _conv_bn(
    in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1
) -> list[nn.Module]:
    return [
        nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding=kernel_size // 2,
            groups=groups,
            bias=False,
        ),
        nn.BatchNorm2d(out_channels),
    ]


class ShuffleUnit(nn.Module):
    """ShuffleNet V2 unit: channel split (stride 1) or two-branch downsampling (stride 2)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        if stride == 1 and in_channels != out_channels:
            raise ValueError("a stride-1 unit keeps its width: in_channels must equal out_channels")
        self.stride = stride
        half = out_channels // 2
        # Without downsampling the left half passes through untouched (guideline G1: equal
        # widths), so only the downsampling unit has a left branch with weights.
        self.branch1 = nn.Sequential()
        if stride == 2:
            self.branch1 = nn.Sequential(
                *_conv_bn(in_channels, in_channels, 3, stride, groups=in_channels),
                *_conv_bn(in_channels, half, 1),
                nn.ReLU(inplace=True),
            )
        self.branch2 = nn.Sequential(
            *_conv_bn(in_channels if stride == 2 else half, half, 1),
            nn.ReLU(inplace=True),
            *_conv_bn(half, half, 3, stride, groups=half),
            *_conv_bn(half, half, 1),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            left, right = x.chunk(2, dim=1)
            out = torch.cat((left, self.branch2(right)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(ZooModel):
    """ShuffleNet V2 (Ma et al. 2018, Table 5)."""

    first_conv = "conv1.0"
    classifier_name = "fc"
    min_input_size = 1

    stage2: nn.Sequential
    stage3: nn.Sequential
    stage4: nn.Sequential

    def __init__(
        self,
        channels: tuple[int, int, int, int, int],
        repeats: tuple[int, int, int] = STAGE_REPEATS,
        num_classes: int = 1000,
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.num_features = channels[-1]
        self.conv1 = nn.Sequential(*_conv_bn(in_chans, channels[0], 3, 2), nn.ReLU(inplace=True))
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        width = channels[0]
        for name, n, out_channels in zip(
            ("stage2", "stage3", "stage4"), repeats, channels[1:4], strict=True
        ):
            units = [ShuffleUnit(width, out_channels, 2)]
            units += [ShuffleUnit(out_channels, out_channels, 1) for _ in range(n - 1)]
            setattr(self, name, nn.Sequential(*units))
            width = out_channels
        self.conv5 = nn.Sequential(*_conv_bn(width, channels[4], 1), nn.ReLU(inplace=True))
        self.fc = nn.Linear(channels[4], num_classes)
        # Stages, the last module at each resolution: conv1, the max-pool, stage2, stage3, conv5.
        self.feature_info = FeatureInfo(
            [
                ("conv1", channels[0], 2),
                ("maxpool", channels[0], 4),
                ("stage2", channels[1], 8),
                ("stage3", channels[2], 16),
                ("conv5", channels[4], 32),
            ]
        )
        # Initialisation: PyTorch's layer defaults, as in torchvision.

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.conv1(x))
        x = self.stage4(self.stage3(self.stage2(x)))
        return self.conv5(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean(dim=(2, 3))
        return x if pre_logits else self.fc(x)


def _shufflenet(width: str, num_classes: int, in_chans: int, **kwargs: Any) -> ShuffleNetV2:
    return ShuffleNetV2(STAGE_CHANNELS[width], num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model(
    family="shufflenet", paper=SHUFFLENET_V2_PAPER, torchvision=True, imagenet_top1=60.552
)
def shufflenet_v2_x0_5(
    *, num_classes: int = 1000, in_chans: int = 3, **kwargs: Any
) -> ShuffleNetV2:
    """ShuffleNet V2 0.5x (Ma et al. 2018, Table 5)."""
    return _shufflenet("x0_5", num_classes, in_chans, **kwargs)


@register_model(
    family="shufflenet", paper=SHUFFLENET_V2_PAPER, torchvision=True, imagenet_top1=69.362
)
def shufflenet_v2_x1_0(
    *, num_classes: int = 1000, in_chans: int = 3, **kwargs: Any
) -> ShuffleNetV2:
    """ShuffleNet V2 1.0x (Ma et al. 2018, Table 5)."""
    return _shufflenet("x1_0", num_classes, in_chans, **kwargs)


@register_model(
    family="shufflenet", paper=SHUFFLENET_V2_PAPER, torchvision=True, imagenet_top1=72.996
)
def shufflenet_v2_x1_5(
    *, num_classes: int = 1000, in_chans: int = 3, **kwargs: Any
) -> ShuffleNetV2:
    """ShuffleNet V2 1.5x (Ma et al. 2018, Table 5)."""
    return _shufflenet("x1_5", num_classes, in_chans, **kwargs)


@register_model(
    family="shufflenet", paper=SHUFFLENET_V2_PAPER, torchvision=True, imagenet_top1=76.230
)
def shufflenet_v2_x2_0(
    *, num_classes: int = 1000, in_chans: int = 3, **kwargs: Any
) -> ShuffleNetV2:
    """ShuffleNet V2 2.0x (Ma et al. 2018, Table 5)."""
    return _shufflenet("x2_0", num_classes, in_chans, **kwargs)
