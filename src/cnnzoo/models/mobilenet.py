"""MobileNetV2 (Sandler et al. 2018) and MobileNetV3 (Howard et al. 2019).

Both are stacks of inverted residuals: a 1x1 expansion, a depthwise kxk convolution and a linear
1x1 projection, with an identity shortcut when shapes allow. V3 adds squeeze-and-excitation and
hard-swish in some blocks. Module names follow torchvision, so its weights load as they are.

The small building blocks here (:func:`make_divisible`, :class:`ConvBNAct`,
:class:`SqueezeExcite`) are shared with EfficientNet, whose MBConv block is the same idea.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch import nn

from cnnzoo.models.base import ZooModel
from cnnzoo.models.features import last_at_each_reduction
from cnnzoo.models.layers import ActLayer, SqueezeExcite
from cnnzoo.registry import Paper, register_model

MOBILENET_V2_PAPER = Paper(
    "MobileNetV2: Inverted Residuals and Linear Bottlenecks", 2018, "1801.04381"
)
MOBILENET_V3_PAPER = Paper("Searching for MobileNetV3", 2019, "1905.02244")

NormLayer = Callable[[int], nn.Module]


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a channel count to the nearest multiple of ``divisor``, never losing more than 10 %.

    This is the rounding of the TensorFlow MobileNet/EfficientNet reference code; width
    multipliers go through it so every layer stays hardware-friendly.
    """
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


class ConvBNAct(nn.Sequential):
    """Convolution (no bias, "same" padding) -> batch norm -> optional activation."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        norm_layer: NormLayer = nn.BatchNorm2d,
        act_layer: ActLayer | None = nn.ReLU,
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size,
                stride=stride,
                padding=(kernel_size - 1) // 2,
                groups=groups,
                bias=False,
            ),
            norm_layer(out_channels),
        ]
        if act_layer is not None:
            layers.append(act_layer(inplace=True))
        super().__init__(*layers)
        self.out_channels = out_channels


def init_mobile_weights(model: nn.Module, linear_init: Callable[[nn.Linear], None]) -> None:
    """He-normal (fan-out) convolutions, unit/zero batch norm, and ``linear_init`` for FC layers."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            linear_init(m)


def _small_normal_linear(m: nn.Linear) -> None:
    nn.init.normal_(m.weight, 0.0, 0.01)
    nn.init.zeros_(m.bias)


# ---------------------------------------------------------------------------------------------
# MobileNetV2
# ---------------------------------------------------------------------------------------------

# Table 2 of the paper: expansion t, output channels c, repeats n, first stride s.
MOBILENET_V2_STAGES: list[tuple[int, int, int, int]] = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]


class InvertedResidual(nn.Module):
    """MobileNetV2 bottleneck: 1x1 expand (ReLU6) -> 3x3 depthwise (ReLU6) -> linear 1x1."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = int(round(in_channels * expand_ratio))
        self.use_residual = stride == 1 and in_channels == out_channels
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNAct(in_channels, hidden, 1, act_layer=nn.ReLU6))
        layers += [
            ConvBNAct(hidden, hidden, 3, stride=stride, groups=hidden, act_layer=nn.ReLU6),
            # The projection is linear: the paper shows ReLU here destroys information.
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class MobileNetV2(ZooModel):
    """MobileNetV2 (Sandler et al. 2018, Table 2)."""

    first_conv = "features.0.0"
    classifier_name = "classifier.1"
    min_input_size = 1

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        width_mult: float = 1.0,
        dropout: float = 0.2,
        stages: list[tuple[int, int, int, int]] | None = None,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        channels = make_divisible(32 * width_mult)
        # The last layer only widens, never narrows, for thin models (paper §5.1).
        self.num_features = make_divisible(1280 * max(1.0, width_mult))

        features: list[nn.Module] = [ConvBNAct(in_chans, channels, 3, stride=2, act_layer=nn.ReLU6)]
        layers = [("features.0", channels, 2)]  # (module, channels, stride) of each layer
        for t, c, n, s in stages or MOBILENET_V2_STAGES:
            out_channels = make_divisible(c * width_mult)
            for i in range(n):
                stride = s if i == 0 else 1
                layers.append((f"features.{len(features)}", out_channels, stride))
                features.append(InvertedResidual(channels, out_channels, stride, t))
                channels = out_channels
        layers.append((f"features.{len(features)}", self.num_features, 1))
        features.append(ConvBNAct(channels, self.num_features, 1, act_layer=nn.ReLU6))
        self.features = nn.Sequential(*features)
        # Stages: the last block at each reduction, the head conv at 1/32.
        self.feature_info = last_at_each_reduction(layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout),
            nn.Linear(self.num_features, num_classes),
        )
        init_mobile_weights(self, _small_normal_linear)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = torch.flatten(self.avgpool(x), 1)
        return x if pre_logits else self.classifier(x)


# ---------------------------------------------------------------------------------------------
# MobileNetV3
# ---------------------------------------------------------------------------------------------

# Tables 1 and 2 of the paper, one row per bneck block:
# kernel, expanded ("exp size"), out channels, squeeze-excite, non-linearity, stride.
MOBILENET_V3_LARGE: list[tuple[int, int, int, bool, str, int]] = [
    (3, 16, 16, False, "RE", 1),
    (3, 64, 24, False, "RE", 2),
    (3, 72, 24, False, "RE", 1),
    (5, 72, 40, True, "RE", 2),
    (5, 120, 40, True, "RE", 1),
    (5, 120, 40, True, "RE", 1),
    (3, 240, 80, False, "HS", 2),
    (3, 200, 80, False, "HS", 1),
    (3, 184, 80, False, "HS", 1),
    (3, 184, 80, False, "HS", 1),
    (3, 480, 112, True, "HS", 1),
    (3, 672, 112, True, "HS", 1),
    (5, 672, 160, True, "HS", 2),
    (5, 960, 160, True, "HS", 1),
    (5, 960, 160, True, "HS", 1),
]
MOBILENET_V3_SMALL: list[tuple[int, int, int, bool, str, int]] = [
    (3, 16, 16, True, "RE", 2),
    (3, 72, 24, False, "RE", 2),
    (3, 88, 24, False, "RE", 1),
    (5, 96, 40, True, "HS", 2),
    (5, 240, 40, True, "HS", 1),
    (5, 240, 40, True, "HS", 1),
    (5, 120, 48, True, "HS", 1),
    (5, 144, 48, True, "HS", 1),
    (5, 288, 96, True, "HS", 2),
    (5, 576, 96, True, "HS", 1),
    (5, 576, 96, True, "HS", 1),
]
_V3_ACTIVATIONS: dict[str, ActLayer] = {"RE": nn.ReLU, "HS": nn.Hardswish}
# Hyper-parameters of TensorFlow's batch norm, which the V3 reference training used.
_V3_NORM = partial(nn.BatchNorm2d, eps=0.001, momentum=0.01)


class V3Block(nn.Module):
    """MobileNetV3 bneck: optional 1x1 expand -> depthwise kxk -> optional SE -> linear 1x1."""

    def __init__(
        self,
        in_channels: int,
        kernel: int,
        expanded: int,
        out_channels: int,
        use_se: bool,
        activation: str,
        stride: int,
    ) -> None:
        super().__init__()
        act = _V3_ACTIVATIONS[activation]
        self.use_residual = stride == 1 and in_channels == out_channels
        layers: list[nn.Module] = []
        if expanded != in_channels:
            layers.append(ConvBNAct(in_channels, expanded, 1, norm_layer=_V3_NORM, act_layer=act))
        layers.append(
            ConvBNAct(
                expanded,
                expanded,
                kernel,
                stride,
                groups=expanded,
                norm_layer=_V3_NORM,
                act_layer=act,
            )
        )
        if use_se:
            # §5.3: the squeeze is a quarter of the expansion width, with a hard-sigmoid gate.
            squeeze = make_divisible(expanded // 4)
            layers.append(SqueezeExcite(expanded, squeeze, nn.ReLU, nn.Hardsigmoid))
        layers.append(ConvBNAct(expanded, out_channels, 1, norm_layer=_V3_NORM, act_layer=None))
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.use_residual else out


class MobileNetV3(ZooModel):
    """MobileNetV3-Large / -Small (Howard et al. 2019, Tables 1 and 2)."""

    first_conv = "features.0.0"
    classifier_name = "classifier.3"
    min_input_size = 1

    def __init__(
        self,
        blocks: list[tuple[int, int, int, bool, str, int]],
        last_channel: int,
        num_classes: int = 1000,
        in_chans: int = 3,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.num_features = last_channel
        channels = 16
        layers: list[nn.Module] = [
            ConvBNAct(in_chans, channels, 3, stride=2, norm_layer=_V3_NORM, act_layer=nn.Hardswish)
        ]
        strides = [2]
        for kernel, expanded, out_channels, use_se, activation, stride in blocks:
            layers.append(
                V3Block(channels, kernel, expanded, out_channels, use_se, activation, stride)
            )
            strides.append(stride)
            channels = out_channels
        head_channels = 6 * channels
        layers.append(
            ConvBNAct(channels, head_channels, 1, norm_layer=_V3_NORM, act_layer=nn.Hardswish)
        )
        strides.append(1)
        self.features = nn.Sequential(*layers)
        # Stages: the last block at each reduction (read off the block table), the head conv
        # at 1/32.
        widths = [16] + [row[2] for row in blocks] + [head_channels]
        self.feature_info = last_at_each_reduction(
            (f"features.{i}", width, stride)
            for i, (width, stride) in enumerate(zip(widths, strides, strict=True))
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        # §5.3 "efficient last stage": pool first, then a 1x1 (here linear) layer to last_channel.
        self.classifier = nn.Sequential(
            nn.Linear(head_channels, last_channel),
            nn.Hardswish(inplace=True),
            nn.Dropout(p=dropout, inplace=True),
            nn.Linear(last_channel, num_classes),
        )
        init_mobile_weights(self, _small_normal_linear)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = torch.flatten(self.avgpool(x), 1)
        # The classifier runs as one module, so that hooks (summary, profilers) see it whole.
        return self.classifier[:2](x) if pre_logits else self.classifier(x)


@register_model(
    family="mobilenet", paper=MOBILENET_V2_PAPER, torchvision=True, imagenet_top1=72.154
)
def mobilenet_v2(*, num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> MobileNetV2:
    """MobileNetV2 1.0 (Sandler et al. 2018, Table 2)."""
    return MobileNetV2(num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model(
    family="mobilenet", paper=MOBILENET_V3_PAPER, torchvision=True, imagenet_top1=75.274
)
def mobilenet_v3_large(*, num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> MobileNetV3:
    """MobileNetV3-Large (Howard et al. 2019, Table 1)."""
    return MobileNetV3(
        MOBILENET_V3_LARGE, 1280, num_classes=num_classes, in_chans=in_chans, **kwargs
    )


@register_model(
    family="mobilenet", paper=MOBILENET_V3_PAPER, torchvision=True, imagenet_top1=67.668
)
def mobilenet_v3_small(*, num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> MobileNetV3:
    """MobileNetV3-Small (Howard et al. 2019, Table 2)."""
    return MobileNetV3(
        MOBILENET_V3_SMALL, 1024, num_classes=num_classes, in_chans=in_chans, **kwargs
    )
