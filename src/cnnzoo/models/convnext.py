"""ConvNeXt (Liu et al. 2022, "A ConvNet for the 2020s").

The CNN that answered the Vision Transformer: a ResNet modernised step by step towards a Swin
Transformer's design. A 4x4, stride-4 "patchify" stem; four stages (depths 3-3-9-3 or 3-3-27-3)
of blocks that each run a 7x7 depthwise convolution, a layer norm over channels and an inverted
bottleneck MLP (1x1 up by 4, GELU, 1x1 down) applied per pixel, scaled by a learnt per-channel
layer scale and added to the block's input (with stochastic depth); a layer norm and a 2x2,
stride-2 convolution between stages; global average pooling, a layer norm and a linear head.
Module names follow torchvision's, so its checkpoints load strictly.

``convnext_cifar`` is a three-stage ConvNeXt for 28-32 px images with about as many parameters
as ResNet-20 and 2x2 patches in its stem, so that its stages see 16, 8 and 4 px maps of a 32 px
image (ConvNeXt-T: 56, 28, 14, 7 of 224). A 3x3 stride-1 stem (ResNet-20's map sizes) trained
five times slower here (190 against 950 images/s, one thread, batch 128).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cnnzoo.models.base import ZooModel
from cnnzoo.models.efficientnet import StochasticDepth
from cnnzoo.models.features import FeatureInfo
from cnnzoo.registry import Paper, register_model

__all__ = ["CNBlock", "ConvNeXt", "LayerNorm2d", "Permute"]

CONVNEXT_PAPER = Paper("A ConvNet for the 2020s", 2022, "2201.03545")
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)

# Liu et al., Sec. 3 / Table 9: channels per stage, blocks per stage, and the stochastic-depth
# rate of torchvision's recipe for each size.
CONVNEXT_CONFIGS: dict[str, tuple[tuple[int, ...], tuple[int, ...], float]] = {
    "tiny": ((96, 192, 384, 768), (3, 3, 9, 3), 0.1),
    "small": ((96, 192, 384, 768), (3, 3, 27, 3), 0.4),
    "base": ((128, 256, 512, 1024), (3, 3, 27, 3), 0.5),
    "large": ((192, 384, 768, 1536), (3, 3, 27, 3), 0.5),
}
CIFAR_CONFIG: tuple[tuple[int, ...], tuple[int, ...], float] = ((24, 48, 96), (2, 2, 2), 0.0)

LAYER_SCALE_INIT = 1e-6  # the paper's initial layer scale


class Permute(nn.Module):
    """Reorder the axes (between NCHW and channels-last NHWC inside a block)."""

    def __init__(self, dims: Sequence[int]) -> None:
        super().__init__()
        self.dims = list(dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(*self.dims)

    def extra_repr(self) -> str:
        return f"dims={self.dims}"


class LayerNorm2d(nn.LayerNorm):
    """Layer norm over the channels of an NCHW map (each pixel normalised on its own)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class CNBlock(nn.Module):
    """7x7 depthwise conv, LN, 1x1 to 4x, GELU, 1x1 back (per pixel, channels-last),
    times the layer scale, stochastic depth, plus the input."""

    def __init__(self, dim: int, drop_prob: float, layer_scale: float = LAYER_SCALE_INIT) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim),
            Permute([0, 2, 3, 1]),
            nn.LayerNorm(dim, eps=1e-6),
            nn.Linear(dim, 4 * dim),
            nn.GELU(),
            nn.Linear(4 * dim, dim),
            Permute([0, 3, 1, 2]),
        )
        self.layer_scale = nn.Parameter(torch.full((dim, 1, 1), layer_scale))
        self.stochastic_depth = StochasticDepth(drop_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.stochastic_depth(self.layer_scale * self.block(x))


class ConvNeXt(ZooModel):
    """ConvNeXt: stem, stages of CNBlocks with LN + 2x2/2 convolutions between them, head."""

    first_conv = "features.0.0"
    classifier_name = "classifier.2"

    def __init__(
        self,
        dims: Sequence[int],
        depths: Sequence[int],
        stochastic_depth_prob: float = 0.0,
        num_classes: int = 1000,
        in_chans: int = 3,
        stem_patch: int = 4,
        layer_scale: float = LAYER_SCALE_INIT,
    ) -> None:
        super().__init__()
        if len(dims) != len(depths) or not dims:
            raise ValueError(f"one width per stage: dims {list(dims)}, depths {list(depths)}")
        self.num_classes = num_classes
        self.num_features = dims[-1]
        norm = partial(LayerNorm2d, eps=1e-6)
        # The "patchify" stem: non-overlapping stem_patch x stem_patch patches.
        stem_conv = nn.Conv2d(in_chans, dims[0], kernel_size=stem_patch, stride=stem_patch)
        layers: list[nn.Module] = [nn.Sequential(stem_conv, norm(dims[0]))]
        total, index = sum(depths), 0
        stages: list[tuple[str, int, int]] = []
        reduction = stem_patch
        for stage, (dim, depth) in enumerate(zip(dims, depths, strict=True)):
            if stage:
                # Downsampling between stages: LN, then a 2x2 stride-2 convolution.
                previous = dims[stage - 1]
                layers.append(nn.Sequential(norm(previous), nn.Conv2d(previous, dim, 2, 2)))
                reduction *= 2
            blocks = []
            for _ in range(depth):
                # The drop rate grows linearly from 0 at the first block to the full rate.
                drop = stochastic_depth_prob * index / max(total - 1, 1)
                blocks.append(CNBlock(dim, drop, layer_scale))
                index += 1
            layers.append(nn.Sequential(*blocks))
            stages.append((f"features.{len(layers) - 1}", dim, reduction))
        self.features = nn.Sequential(*layers)
        # Stages: the output of each stage of blocks.
        self.feature_info = FeatureInfo(stages)
        # Each 2x2/2 downsampling needs a 2x2 map, and each unit of the stem a whole patch.
        self.min_input_size = stem_patch * 2 ** (len(dims) - 1)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            norm(dims[-1]), nn.Flatten(1), nn.Linear(dims[-1], num_classes)
        )
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.avgpool(x)
        # The classifier runs as one module, so that hooks (summary, profilers) see it whole.
        return self.classifier[:2](x) if pre_logits else self.classifier(x)


def _convnext(size: str, num_classes: int, in_chans: int, **kwargs: Any) -> ConvNeXt:
    dims, depths, drop = CONVNEXT_CONFIGS[size]
    kwargs.setdefault("stochastic_depth_prob", drop)
    return ConvNeXt(dims, depths, num_classes=num_classes, in_chans=in_chans, **kwargs)


_IMAGENET = {"family": "convnext", "paper": CONVNEXT_PAPER, "torchvision": True}


@register_model(**_IMAGENET, imagenet_top1=82.520)
def convnext_tiny(*, num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> ConvNeXt:
    """ConvNeXt-T (Liu et al. 2022): 96-192-384-768 channels, 3-3-9-3 blocks."""
    return _convnext("tiny", num_classes, in_chans, **kwargs)


@register_model(**_IMAGENET, imagenet_top1=83.616)
def convnext_small(*, num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> ConvNeXt:
    """ConvNeXt-S: ConvNeXt-T's widths, 3-3-27-3 blocks."""
    return _convnext("small", num_classes, in_chans, **kwargs)


@register_model(**_IMAGENET, imagenet_top1=84.062)
def convnext_base(*, num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> ConvNeXt:
    """ConvNeXt-B: 128-256-512-1024 channels, 3-3-27-3 blocks."""
    return _convnext("base", num_classes, in_chans, **kwargs)


@register_model(**_IMAGENET, imagenet_top1=84.414)
def convnext_large(*, num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> ConvNeXt:
    """ConvNeXt-L: 192-384-768-1536 channels, 3-3-27-3 blocks."""
    return _convnext("large", num_classes, in_chans, **kwargs)


@register_model(
    family="convnext",
    paper=CONVNEXT_PAPER,
    input_size=32,
    mean=CIFAR_MEAN,
    std=CIFAR_STD,
    num_classes=10,
)
def convnext_cifar(*, num_classes: int = 10, in_chans: int = 3, **kwargs: Any) -> ConvNeXt:
    """A ConvNeXt for 28-32 px images: 2x2 patches in the stem, then three stages of two blocks
    with 24-48-96 channels (maps of 16, 8 and 4 px at 32 px)."""
    dims, depths, drop = CIFAR_CONFIG
    options = {"stochastic_depth_prob": drop, "stem_patch": 2, **kwargs}
    return ConvNeXt(dims, depths, num_classes=num_classes, in_chans=in_chans, **options)
