"""VGG (Simonyan & Zisserman 2014): stacks of 3x3 convolutions, configurations A, B, D and E.

Torchvision-compatible (``features`` / ``avgpool`` / ``classifier``), with and without batch
normalisation. ``small_input=True`` adapts the same network to 28-32 px images (MNIST, CIFAR).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from cnnzoo.models.base import ZooModel
from cnnzoo.models.features import FeatureInfo
from cnnzoo.registry import Paper, register_model

__all__ = ["VGG", "VGG_CONFIGS", "feature_stages", "make_features"] + [
    f"vgg{depth}{suffix}" for depth in (11, 13, 16, 19) for suffix in ("", "_bn")
]

VGG_PAPER = Paper(
    "Very Deep Convolutional Networks for Large-Scale Image Recognition", 2014, "1409.1556"
)

# Table 1 of the paper: output channels of each 3x3 convolution, "M" for a 2x2 max-pool.
# fmt: off
VGG_CONFIGS: dict[str, list[int | str]] = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "B": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "D": [
        64, 64, "M",
        128, 128, "M",
        256, 256, 256, "M",
        512, 512, 512, "M",
        512, 512, 512, "M",
    ],
    "E": [
        64, 64, "M",
        128, 128, "M",
        256, 256, 256, 256, "M",
        512, 512, 512, 512, "M",
        512, 512, 512, 512, "M",
    ],
}
# fmt: on


def make_features(config: list[int | str], in_chans: int, batch_norm: bool) -> nn.Sequential:
    """The conv stack of one configuration: conv3x3 (+ BN) + ReLU per number, max-pool per "M"."""
    layers: list[nn.Module] = []
    channels = in_chans
    for item in config:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        assert isinstance(item, int)
        layers.append(nn.Conv2d(channels, item, kernel_size=3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(item))
        layers.append(nn.ReLU(inplace=True))
        channels = item
    return nn.Sequential(*layers)


def feature_stages(config: list[int | str], batch_norm: bool) -> list[tuple[str, int, int]]:
    """(module, channels, reduction) per stage: the ReLU before each max-pool, then the last
    layer (pool5; the last ReLU when ``small_input`` drops pool5).

    Indices count the layers :func:`make_features` builds (conv, BN, ReLU per number; one pool
    per "M"): for VGG-16, conv1_2 ... conv5_3 after their ReLU, and pool5.
    """
    stages: list[tuple[str, int, int]] = []
    index, channels, reduction = -1, 0, 1
    for item in config:
        if item == "M":
            stages.append((f"features.{index}", channels, reduction))
            index, reduction = index + 1, reduction * 2
        else:
            assert isinstance(item, int)
            index, channels = index + (3 if batch_norm else 2), item
    return [*stages, (f"features.{index}", channels, reduction)]


class VGG(ZooModel):
    """VGG: ``features`` (conv stack), ``avgpool``, ``classifier`` (4096-4096-classes MLP).

    Normal mode is torchvision's: five max-pools take 224 px to 7x7, an adaptive pool makes any
    input of 32 px or more 7x7, and the first dense layer reads 512 * 7 * 7 features.

    ``small_input=True`` is for 28-32 px images: the last max-pool is dropped (32 px ends at 2x2
    rather than 1x1) and a global average pool feeds a first dense layer of 512 inputs, which
    saves ~100 M parameters that a 7x7 upsampling of a 1x1 map would waste. The 4096-4096 hidden
    layers and their dropout are kept.
    """

    first_conv = "features.0"
    classifier_name = "classifier.6"
    supports_small_input = True

    def __init__(
        self,
        config: list[int | str],
        num_classes: int = 1000,
        in_chans: int = 3,
        batch_norm: bool = False,
        small_input: bool = False,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.num_features = 4096
        self.small_input = small_input
        if small_input:
            config = config[:-1] if config[-1] == "M" else config
        pools = config.count("M")
        # Each 2x2/2 max-pool halves the side (floor), so 2**pools px reaches the last one as 1x1.
        self.min_input_size = 2**pools
        self.features = make_features(config, in_chans, batch_norm)
        self.feature_info = FeatureInfo(feature_stages(config, batch_norm))
        pooled = 1 if small_input else 7
        self.avgpool = nn.AdaptiveAvgPool2d((pooled, pooled))
        self.classifier = nn.Sequential(
            nn.Linear(512 * pooled * pooled, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, num_classes),
        )
        self.init_weights()

    def init_weights(self) -> None:
        """Torchvision's scheme: He-normal (fan-out) convs, N(0, 0.01) dense, zero biases."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, 0.01)
                nn.init.zeros_(module.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = torch.flatten(self.avgpool(x), 1)
        # The classifier runs as one module, so that hooks (summary, profilers) see it whole.
        return self.classifier[:-1](x) if pre_logits else self.classifier(x)


def _vgg(config: str, batch_norm: bool, num_classes: int, in_chans: int, **kwargs: Any) -> VGG:
    return VGG(
        VGG_CONFIGS[config],
        num_classes=num_classes,
        in_chans=in_chans,
        batch_norm=batch_norm,
        **kwargs,
    )


@register_model(family="vgg", paper=VGG_PAPER, torchvision=True, imagenet_top1=69.020)
def vgg11(*, num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> VGG:
    """VGG-11, configuration A (Simonyan & Zisserman 2014, Table 1)."""
    return _vgg("A", False, num_classes, in_chans, **kwargs)


@register_model(family="vgg", paper=VGG_PAPER, torchvision=True, imagenet_top1=70.370)
def vgg11_bn(*, num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> VGG:
    """VGG-11 (configuration A) with batch normalisation after every convolution."""
    return _vgg("A", True, num_classes, in_chans, **kwargs)


@register_model(family="vgg", paper=VGG_PAPER, torchvision=True, imagenet_top1=69.928)
def vgg13(*, num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> VGG:
    """VGG-13, configuration B (Simonyan & Zisserman 2014, Table 1)."""
    return _vgg("B", False, num_classes, in_chans, **kwargs)


@register_model(family="vgg", paper=VGG_PAPER, torchvision=True, imagenet_top1=71.586)
def vgg13_bn(*, num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> VGG:
    """VGG-13 (configuration B) with batch normalisation after every convolution."""
    return _vgg("B", True, num_classes, in_chans, **kwargs)


@register_model(family="vgg", paper=VGG_PAPER, torchvision=True, imagenet_top1=71.592)
def vgg16(*, num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> VGG:
    """VGG-16, configuration D (Simonyan & Zisserman 2014, Table 1)."""
    return _vgg("D", False, num_classes, in_chans, **kwargs)


@register_model(family="vgg", paper=VGG_PAPER, torchvision=True, imagenet_top1=73.360)
def vgg16_bn(*, num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> VGG:
    """VGG-16 (configuration D) with batch normalisation after every convolution."""
    return _vgg("D", True, num_classes, in_chans, **kwargs)


@register_model(family="vgg", paper=VGG_PAPER, torchvision=True, imagenet_top1=72.376)
def vgg19(*, num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> VGG:
    """VGG-19, configuration E (Simonyan & Zisserman 2014, Table 1)."""
    return _vgg("E", False, num_classes, in_chans, **kwargs)


@register_model(family="vgg", paper=VGG_PAPER, torchvision=True, imagenet_top1=74.218)
def vgg19_bn(*, num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> VGG:
    """VGG-19 (configuration E) with batch normalisation after every convolution."""
    return _vgg("E", True, num_classes, in_chans, **kwargs)
