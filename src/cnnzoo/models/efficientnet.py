"""EfficientNet-B0 ... B7 (Tan & Le 2019, "EfficientNet: Rethinking Model Scaling for CNNs").

The paper's recipe, as data: one baseline network (B0, Table 1) and one row of compound-scaling
coefficients per variant. Width scales every stage's channels (rounded to a multiple of 8),
depth scales every stage's repeats (rounded up), resolution is the default input side, and
dropout grows with model size. Module names follow torchvision, so its weights load as they are.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch import nn

from cnnzoo.models.base import ZooModel
from cnnzoo.models.features import last_at_each_reduction
from cnnzoo.models.layers import SqueezeExcite
from cnnzoo.models.mobilenet import ConvBNAct, NormLayer, init_mobile_weights, make_divisible
from cnnzoo.registry import Paper, register_model

EFFICIENTNET_PAPER = Paper(
    "EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks", 2019, "1905.11946"
)

# Table 1 (EfficientNet-B0), stages 2-8, all MBConv blocks:
# expand ratio, kernel, first stride, in channels, out channels, repeats.
B0_STAGES: list[tuple[int, int, int, int, int, int]] = [
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
]

# Compound scaling of B0, per variant: width, depth, resolution, dropout
# (the coefficients of the reference implementation; the paper fixes alpha=1.2, beta=1.1,
# gamma=1.15 and then rounds).
SCALING: dict[str, tuple[float, float, int, float]] = {
    "b0": (1.0, 1.0, 224, 0.2),
    "b1": (1.0, 1.1, 240, 0.2),
    "b2": (1.1, 1.2, 260, 0.3),
    "b3": (1.2, 1.4, 300, 0.3),
    "b4": (1.4, 1.8, 380, 0.4),
    "b5": (1.6, 2.2, 456, 0.4),
    "b6": (1.8, 2.6, 528, 0.5),
    "b7": (2.0, 3.1, 600, 0.5),
}

# torchvision's B5-B7 weights are ported from TensorFlow and need its batch-norm settings;
# B0-B4 were trained in PyTorch with the defaults.
_TF_NORM = partial(nn.BatchNorm2d, eps=0.001, momentum=0.01)
_TF_NORM_VARIANTS = {"b5", "b6", "b7"}


def scaled_stages(width: float, depth: float) -> list[tuple[int, int, int, int, int, int]]:
    """B0's stage table with channels scaled by ``width`` and repeats by ``depth``."""
    return [
        (t, k, s, make_divisible(c_in * width), make_divisible(c_out * width), math.ceil(n * depth))
        for t, k, s, c_in, c_out, n in B0_STAGES
    ]


class StochasticDepth(nn.Module):
    """Drop the residual branch of whole samples with probability ``p`` (Huang et al. 2016).

    Survivors are scaled by 1/(1-p) so that evaluation, which keeps every branch, needs no
    rescaling.
    """

    # Its forward branches on self.training: graph tracing (features_only) keeps it one module.
    trace_as_leaf = True

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"drop probability must be in [0, 1], got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep if keep > 0.0 else x * mask

    def extra_repr(self) -> str:
        return f"p={self.p}"


class MBConv(nn.Module):
    """Mobile inverted bottleneck with squeeze-and-excitation (MnasNet / EfficientNet).

    1x1 expand (SiLU) -> depthwise kxk (SiLU) -> SE -> linear 1x1, plus an identity shortcut
    with stochastic depth when input and output shapes match.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        expand_ratio: int,
        kernel: int,
        stride: int,
        drop_prob: float,
        norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        self.use_residual = stride == 1 and in_channels == out_channels
        hidden = make_divisible(in_channels * expand_ratio)
        conv = partial(ConvBNAct, norm_layer=norm_layer, act_layer=nn.SiLU)
        layers: list[nn.Module] = []
        if hidden != in_channels:
            layers.append(conv(in_channels, hidden, 1))
        layers += [
            conv(hidden, hidden, kernel, stride, groups=hidden),
            # The squeeze width is set by the block's input, not its expansion (ratio 0.25).
            SqueezeExcite(hidden, max(1, in_channels // 4), partial(nn.SiLU, inplace=True)),
            ConvBNAct(hidden, out_channels, 1, norm_layer=norm_layer, act_layer=None),
        ]
        self.block = nn.Sequential(*layers)
        self.stochastic_depth = StochasticDepth(drop_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + self.stochastic_depth(out) if self.use_residual else out


def _uniform_fan_out_linear(layer: nn.Linear) -> None:
    bound = 1.0 / math.sqrt(layer.out_features)
    nn.init.uniform_(layer.weight, -bound, bound)
    nn.init.zeros_(layer.bias)


class EfficientNet(ZooModel):
    """EfficientNet (Tan & Le 2019): B0's MBConv stages, compound-scaled."""

    first_conv = "features.0.0"
    classifier_name = "classifier.1"
    min_input_size = 1

    def __init__(
        self,
        width: float,
        depth: float,
        dropout: float,
        num_classes: int = 1000,
        in_chans: int = 3,
        stochastic_depth_prob: float = 0.2,
        norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        stages = scaled_stages(width, depth)
        stem_channels = stages[0][3]
        features: list[nn.Module] = [
            ConvBNAct(in_chans, stem_channels, 3, 2, norm_layer=norm_layer, act_layer=nn.SiLU)
        ]
        # The drop rate grows linearly with block index, from 0 towards stochastic_depth_prob.
        total_blocks = sum(stage[5] for stage in stages)
        index = 0
        for t, k, s, c_in, c_out, n in stages:
            blocks: list[nn.Module] = []
            for i in range(n):
                drop = stochastic_depth_prob * index / total_blocks
                in_channels, stride = (c_in, s) if i == 0 else (c_out, 1)
                blocks.append(MBConv(in_channels, c_out, t, k, stride, drop, norm_layer))
                index += 1
            features.append(nn.Sequential(*blocks))
        last_stage_channels = stages[-1][4]
        self.num_features = 4 * last_stage_channels
        features.append(
            ConvBNAct(
                last_stage_channels, self.num_features, 1, norm_layer=norm_layer, act_layer=nn.SiLU
            )
        )
        self.features = nn.Sequential(*features)
        # Stages: the last of features.0 (stem), .1-.7 (the MBConv stages) and .8 (head conv)
        # at each reduction, read off the stage table.
        self.feature_info = last_at_each_reduction(
            [("features.0", stem_channels, 2)]
            + [(f"features.{i}", c_out, s) for i, (_, _, s, _, c_out, _) in enumerate(stages, 1)]
            + [(f"features.{len(stages) + 1}", self.num_features, 1)]
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout, inplace=True),
            nn.Linear(self.num_features, num_classes),
        )
        init_mobile_weights(self, _uniform_fan_out_linear)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = torch.flatten(self.avgpool(x), 1)
        return x if pre_logits else self.classifier(x)


def _efficientnet(variant: str, num_classes: int, in_chans: int, **kwargs: Any) -> EfficientNet:
    width, depth, _, dropout = SCALING[variant]
    kwargs.setdefault("dropout", dropout)
    if variant in _TF_NORM_VARIANTS:
        kwargs.setdefault("norm_layer", _TF_NORM)
    return EfficientNet(width, depth, num_classes=num_classes, in_chans=in_chans, **kwargs)


def _register(
    variant: str, top1: float
) -> Callable[[Callable[..., ZooModel]], Callable[..., ZooModel]]:
    return register_model(
        family="efficientnet",
        paper=EFFICIENTNET_PAPER,
        input_size=SCALING[variant][2],
        torchvision=True,
        imagenet_top1=top1,
    )


@_register("b0", 77.692)
def efficientnet_b0(*, num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> EfficientNet:
    """EfficientNet-B0, the searched baseline (Tan & Le 2019, Table 1)."""
    return _efficientnet("b0", num_classes, in_chans, **kwargs)


@_register("b1", 79.838)
def efficientnet_b1(*, num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> EfficientNet:
    """EfficientNet-B1 (Tan & Le 2019): depth x1.1, 240 px."""
    return _efficientnet("b1", num_classes, in_chans, **kwargs)


@_register("b2", 80.608)
def efficientnet_b2(*, num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> EfficientNet:
    """EfficientNet-B2 (Tan & Le 2019): width x1.1, depth x1.2, 260 px."""
    return _efficientnet("b2", num_classes, in_chans, **kwargs)


@_register("b3", 82.008)
def efficientnet_b3(*, num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> EfficientNet:
    """EfficientNet-B3 (Tan & Le 2019): width x1.2, depth x1.4, 300 px."""
    return _efficientnet("b3", num_classes, in_chans, **kwargs)


@_register("b4", 83.384)
def efficientnet_b4(*, num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> EfficientNet:
    """EfficientNet-B4 (Tan & Le 2019): width x1.4, depth x1.8, 380 px."""
    return _efficientnet("b4", num_classes, in_chans, **kwargs)


@_register("b5", 83.444)
def efficientnet_b5(*, num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> EfficientNet:
    """EfficientNet-B5 (Tan & Le 2019): width x1.6, depth x2.2, 456 px."""
    return _efficientnet("b5", num_classes, in_chans, **kwargs)


@_register("b6", 84.008)
def efficientnet_b6(*, num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> EfficientNet:
    """EfficientNet-B6 (Tan & Le 2019): width x1.8, depth x2.6, 528 px."""
    return _efficientnet("b6", num_classes, in_chans, **kwargs)


@_register("b7", 84.122)
def efficientnet_b7(*, num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> EfficientNet:
    """EfficientNet-B7 (Tan & Le 2019): width x2.0, depth x3.1, 600 px."""
    return _efficientnet("b7", num_classes, in_chans, **kwargs)
