"""Residual networks for 32x32 images: the CIFAR ResNets, their pre-activation and wide variants.

* ResNet-20 ... ResNet-1202 and the matching plain nets: He et al. 2015, "Deep Residual Learning
  for Image Recognition", Section 4.2 (6n+2 layers, option-A identity shortcuts).
* Pre-activation ResNet-110 / ResNet-164: He et al. 2016, "Identity Mappings in Deep Residual
  Networks" (BN-ReLU-conv units, identity mappings after the addition).
* Wide ResNets WRN-d-k: Zagoruyko & Komodakis 2016, "Wide Residual Networks" (pre-activation
  basic blocks, k times wider, optional dropout between the two convolutions).

All of them end in global average pooling, so any input side >= 1 goes through.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cnnzoo.models.base import ZooModel
from cnnzoo.models.features import FeatureInfo
from cnnzoo.registry import Paper, register_model

__all__ = [
    "BasicBlock",
    "CifarResNet",
    "PreActBasicBlock",
    "PreActBottleneck",
    "PreActResNet",
    "ShortcutA",
    "wide_resnet_cifar",
]

RESNET_PAPER = Paper("Deep Residual Learning for Image Recognition", 2015, "1512.03385")
PREACT_PAPER = Paper("Identity Mappings in Deep Residual Networks", 2016, "1603.05027")
WRN_PAPER = Paper("Wide Residual Networks", 2016, "1605.07146")

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

# Test error (%) the papers report for each registered name: ResNet paper Table 6,
# pre-activation paper Table 3, WRN paper Table 4.
CIFAR10_TEST_ERROR: dict[str, float] = {
    "resnet20": 8.75,
    "resnet32": 7.51,
    "resnet44": 7.17,
    "resnet56": 6.97,
    "resnet110": 6.43,
    "resnet1202": 7.93,
    "preact_resnet110": 6.37,
    "preact_resnet164": 5.46,
    "wrn28_10": 4.00,
}
CIFAR100_TEST_ERROR: dict[str, float] = {"wrn28_10": 19.25}

# Paper depth -> residual blocks per stage (6n+2 layers for basic blocks, 9n+2 for bottlenecks).
CIFAR_RESNET_BLOCKS: dict[int, int] = {20: 3, 32: 5, 44: 7, 56: 9, 110: 18, 1202: 200}


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


def init_weights(model: nn.Module) -> None:
    """He-normal convolutions, BN as identity, as in the authors' Torch code.

    The ResNet paper cites He et al. 2015 ("Delving deep into rectifiers"); the released CIFAR
    code of all three papers draws conv weights from N(0, 2 / (k*k*out_channels)), i.e. the
    fan_out form, which is what ``mode="fan_out"`` gives. Linear layers keep PyTorch's default.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


# --------------------------------------------------------------------------------------------
# He et al. 2015: post-activation basic blocks with option-A shortcuts
# --------------------------------------------------------------------------------------------


class ShortcutA(nn.Module):
    """Option-A shortcut: identity subsampled by ``stride``, new channels filled with zeros.

    Parameter-free, so a ResNet has exactly as many weights as its plain counterpart. The zero
    channels are appended after the input's, as in the authors' Torch code.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        if out_planes < in_planes:
            raise ValueError(f"option-A shortcut cannot drop channels ({in_planes}->{out_planes})")
        self.stride = stride
        self.extra_planes = out_planes - in_planes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        # F.pad lists dimensions from the last one: (W left, W right, H top, H bottom, C, C).
        return F.pad(x, (0, 0, 0, 0, 0, self.extra_planes))

    def extra_repr(self) -> str:
        return f"stride={self.stride}, extra_planes={self.extra_planes}"


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut, then ReLU (He et al. 2015, Fig. 2).

    With ``shortcut=False`` the addition is dropped and the block is two layers of a plain net.
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: bool = True) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module | None = None
        if shortcut:
            reshapes = stride != 1 or in_planes != planes
            self.shortcut = ShortcutA(in_planes, planes, stride) if reshapes else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        return self.relu(out)


class CifarResNet(ZooModel):
    """The 6n+2-layer CIFAR ResNet of He et al. 2015, Section 4.2 (``shortcut=False``: plain net).

    conv3x3 16 -> three stages of n = ``blocks`` basic blocks with 16, 32, 64 filters on 32, 16,
    8 px maps (stages 2 and 3 start with a stride-2 block) -> global average pool -> fc.
    """

    first_conv = "conv1"
    classifier_name = "fc"
    min_input_size = 1

    def __init__(
        self,
        blocks: int,
        num_classes: int = 10,
        in_chans: int = 3,
        shortcut: bool = True,
        widths: tuple[int, int, int] = (16, 32, 64),
    ) -> None:
        super().__init__()
        if blocks < 1:
            raise ValueError(f"each stage needs at least one block, got {blocks}")
        self.depth = 6 * blocks + 2
        self.num_classes = num_classes
        self.num_features = widths[2]

        self.conv1 = conv3x3(in_chans, widths[0])
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_stage(widths[0], widths[0], blocks, 1, shortcut)
        self.layer2 = self._make_stage(widths[0], widths[1], blocks, 2, shortcut)
        self.layer3 = self._make_stage(widths[1], widths[2], blocks, 2, shortcut)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[2], num_classes)
        # Stages: the three residual stages at 1, 1/2 and 1/4 of the input side.
        self.feature_info = FeatureInfo(
            [("layer1", widths[0], 1), ("layer2", widths[1], 2), ("layer3", widths[2], 4)]
        )
        init_weights(self)

    @staticmethod
    def _make_stage(
        in_planes: int, planes: int, blocks: int, stride: int, shortcut: bool
    ) -> nn.Sequential:
        layers = [BasicBlock(in_planes, planes, stride, shortcut)]
        layers += [BasicBlock(planes, planes, 1, shortcut) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer1(x)
        x = self.layer2(x)
        return self.layer3(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = torch.flatten(self.avgpool(x), 1)
        return x if pre_logits else self.fc(x)


# --------------------------------------------------------------------------------------------
# He et al. 2016 / Zagoruyko & Komodakis 2016: pre-activation blocks with projection shortcuts
# --------------------------------------------------------------------------------------------


class PreActBasicBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3, added to the shortcut, no ReLU after.

    Where the shape changes the shortcut is a 1x1 convolution. Such a block, and the first block
    of each stage (``shared_preact``), applies its first BN-ReLU before splitting into the two
    paths, so the shortcut reads the activated input (He et al. 2016, appendix; the authors' and
    the WRN authors' code).
    """

    expansion = 1

    def __init__(
        self,
        in_planes: int,
        planes: int,
        stride: int = 1,
        dropout: float = 0.0,
        shared_preact: bool = False,
    ) -> None:
        super().__init__()
        out_planes = planes * self.expansion
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = conv3x3(planes, out_planes)
        self.relu = nn.ReLU(inplace=True)
        reshapes = stride != 1 or in_planes != out_planes
        self.shortcut = conv1x1(in_planes, out_planes, stride) if reshapes else nn.Identity()
        self.shared_preact = shared_preact or reshapes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Out-of-place ReLU: x itself may still feed the identity shortcut.
        preact = F.relu(self.bn1(x))
        identity = self.shortcut(preact if self.shared_preact else x)
        out = self.conv1(preact)
        out = self.conv2(self.dropout(self.relu(self.bn2(out))))
        return out + identity


class PreActBottleneck(nn.Module):
    """BN-ReLU-conv1x1-BN-ReLU-conv3x3-BN-ReLU-conv1x1 (x4 channels), added to the shortcut.

    The stride sits on the first 1x1 convolution and the shortcut is a strided 1x1 projection
    where the shape changes, as in the authors' code (KaimingHe/resnet-1k-layers).
    """

    expansion = 4

    def __init__(
        self,
        in_planes: int,
        planes: int,
        stride: int = 1,
        dropout: float = 0.0,
        shared_preact: bool = False,
    ) -> None:
        super().__init__()
        out_planes = planes * self.expansion
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = conv1x1(in_planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn3 = nn.BatchNorm2d(planes)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv3 = conv1x1(planes, out_planes)
        self.relu = nn.ReLU(inplace=True)
        reshapes = stride != 1 or in_planes != out_planes
        self.shortcut = conv1x1(in_planes, out_planes, stride) if reshapes else nn.Identity()
        self.shared_preact = shared_preact or reshapes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        preact = F.relu(self.bn1(x))
        identity = self.shortcut(preact if self.shared_preact else x)
        out = self.conv1(preact)
        out = self.conv2(self.relu(self.bn2(out)))
        out = self.conv3(self.dropout(self.relu(self.bn3(out))))
        return out + identity


class PreActResNet(ZooModel):
    """Pre-activation CIFAR ResNet (He et al. 2016); with wider stages, a WRN (Zagoruyko 2016).

    conv3x3 16 -> three stages of ``blocks`` units whose outputs have ``widths`` channels, on
    32, 16, 8 px maps -> BN-ReLU (the last unit's addition is not activated otherwise) ->
    global average pool -> fc.
    """

    first_conv = "conv1"
    classifier_name = "fc"
    min_input_size = 1

    def __init__(
        self,
        block: type[PreActBasicBlock | PreActBottleneck],
        blocks: int,
        widths: tuple[int, int, int],
        num_classes: int = 10,
        in_chans: int = 3,
        dropout: float = 0.0,
        stem_width: int = 16,
    ) -> None:
        super().__init__()
        if blocks < 1:
            raise ValueError(f"each stage needs at least one block, got {blocks}")
        self.num_classes = num_classes
        self.num_features = widths[2]

        self.conv1 = conv3x3(in_chans, stem_width)
        stage_in = (stem_width, widths[0], widths[1])
        self.layer1 = self._make_stage(block, stage_in[0], widths[0], blocks, 1, dropout)
        self.layer2 = self._make_stage(block, stage_in[1], widths[1], blocks, 2, dropout)
        self.layer3 = self._make_stage(block, stage_in[2], widths[2], blocks, 2, dropout)
        self.bn_final = nn.BatchNorm2d(widths[2])
        self.relu = nn.ReLU(inplace=True)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[2], num_classes)
        # Stages: the first two stages' sums, then the final BN-ReLU (what the head reads).
        self.feature_info = FeatureInfo(
            [("layer1", widths[0], 1), ("layer2", widths[1], 2), ("relu", widths[2], 4)]
        )
        init_weights(self)

    @staticmethod
    def _make_stage(
        block: type[PreActBasicBlock | PreActBottleneck],
        in_planes: int,
        out_planes: int,
        blocks: int,
        stride: int,
        dropout: float,
    ) -> nn.Sequential:
        if out_planes % block.expansion:
            raise ValueError(f"{out_planes} channels do not split into {block.__name__} units")
        planes = out_planes // block.expansion
        layers = [block(in_planes, planes, stride, dropout, shared_preact=True)]
        layers += [block(out_planes, planes, 1, dropout) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.relu(self.bn_final(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = torch.flatten(self.avgpool(x), 1)
        return x if pre_logits else self.fc(x)


def wide_resnet_cifar(
    depth: int,
    widen_factor: int,
    dropout: float = 0.0,
    num_classes: int = 10,
    in_chans: int = 3,
) -> PreActResNet:
    """WRN-``depth``-``widen_factor`` (Zagoruyko & Komodakis 2016, Table 1).

    Following the paper's (and its code's) depth convention, a stage holds n = (depth - 4) / 6
    pre-activation basic blocks, with 16k, 32k and 64k channels.
    """
    if depth < 10 or (depth - 4) % 6 != 0:
        raise ValueError(f"WRN depth must be 6n+4 (10, 16, 22, 28, 40, ...), got {depth}")
    if widen_factor < 1:
        raise ValueError(f"widen_factor must be a positive integer, got {widen_factor}")
    k = widen_factor
    return PreActResNet(
        PreActBasicBlock,
        (depth - 4) // 6,
        (16 * k, 32 * k, 64 * k),
        num_classes=num_classes,
        in_chans=in_chans,
        dropout=dropout,
    )


# --------------------------------------------------------------------------------------------
# Registered builders
# --------------------------------------------------------------------------------------------

_CIFAR = {
    "family": "resnet_cifar",
    "input_size": 32,
    "mean": CIFAR10_MEAN,
    "std": CIFAR10_STD,
    "num_classes": 10,
}


def _resnet(
    depth: int, shortcut: bool, num_classes: int, in_chans: int, **kwargs: Any
) -> CifarResNet:
    blocks = CIFAR_RESNET_BLOCKS[depth]
    return CifarResNet(
        blocks, num_classes=num_classes, in_chans=in_chans, shortcut=shortcut, **kwargs
    )


@register_model(paper=RESNET_PAPER, **_CIFAR)
def resnet20(*, num_classes: int = 10, in_chans: int = 3, **kwargs: Any) -> CifarResNet:
    """ResNet-20 for CIFAR (He et al. 2015, Table 6): n=3, 0.27 M params."""
    return _resnet(20, True, num_classes, in_chans, **kwargs)


@register_model(paper=RESNET_PAPER, **_CIFAR)
def resnet32(*, num_classes: int = 10, in_chans: int = 3, **kwargs: Any) -> CifarResNet:
    """ResNet-32 for CIFAR (He et al. 2015, Table 6): n=5, 0.46 M params."""
    return _resnet(32, True, num_classes, in_chans, **kwargs)


@register_model(paper=RESNET_PAPER, **_CIFAR)
def resnet44(*, num_classes: int = 10, in_chans: int = 3, **kwargs: Any) -> CifarResNet:
    """ResNet-44 for CIFAR (He et al. 2015, Table 6): n=7, 0.66 M params."""
    return _resnet(44, True, num_classes, in_chans, **kwargs)


@register_model(paper=RESNET_PAPER, **_CIFAR)
def resnet56(*, num_classes: int = 10, in_chans: int = 3, **kwargs: Any) -> CifarResNet:
    """ResNet-56 for CIFAR (He et al. 2015, Table 6): n=9, 0.85 M params."""
    return _resnet(56, True, num_classes, in_chans, **kwargs)


@register_model(paper=RESNET_PAPER, **_CIFAR)
def resnet110(*, num_classes: int = 10, in_chans: int = 3, **kwargs: Any) -> CifarResNet:
    """ResNet-110 for CIFAR (He et al. 2015, Table 6): n=18, 1.7 M params."""
    return _resnet(110, True, num_classes, in_chans, **kwargs)


@register_model(paper=RESNET_PAPER, **_CIFAR)
def resnet1202(*, num_classes: int = 10, in_chans: int = 3, **kwargs: Any) -> CifarResNet:
    """ResNet-1202 for CIFAR (He et al. 2015, Table 6): n=200, 19.4 M params."""
    return _resnet(1202, True, num_classes, in_chans, **kwargs)


@register_model(paper=RESNET_PAPER, **_CIFAR)
def plain20(*, num_classes: int = 10, in_chans: int = 3, **kwargs: Any) -> CifarResNet:
    """Plain-20 (He et al. 2015, Fig. 6): ResNet-20 without its shortcuts."""
    return _resnet(20, False, num_classes, in_chans, **kwargs)


@register_model(paper=RESNET_PAPER, **_CIFAR)
def plain32(*, num_classes: int = 10, in_chans: int = 3, **kwargs: Any) -> CifarResNet:
    """Plain-32 (He et al. 2015, Fig. 6): ResNet-32 without its shortcuts."""
    return _resnet(32, False, num_classes, in_chans, **kwargs)


@register_model(paper=RESNET_PAPER, **_CIFAR)
def plain44(*, num_classes: int = 10, in_chans: int = 3, **kwargs: Any) -> CifarResNet:
    """Plain-44 (He et al. 2015, Fig. 6): ResNet-44 without its shortcuts."""
    return _resnet(44, False, num_classes, in_chans, **kwargs)


@register_model(paper=RESNET_PAPER, **_CIFAR)
def plain56(*, num_classes: int = 10, in_chans: int = 3, **kwargs: Any) -> CifarResNet:
    """Plain-56 (He et al. 2015, Fig. 6): ResNet-56 without its shortcuts."""
    return _resnet(56, False, num_classes, in_chans, **kwargs)


@register_model(paper=RESNET_PAPER, **_CIFAR)
def plain110(*, num_classes: int = 10, in_chans: int = 3, **kwargs: Any) -> CifarResNet:
    """Plain-110 (He et al. 2015, Section 4.2): ResNet-110 without its shortcuts."""
    return _resnet(110, False, num_classes, in_chans, **kwargs)


@register_model(paper=PREACT_PAPER, **_CIFAR)
def preact_resnet110(*, num_classes: int = 10, in_chans: int = 3, **kwargs: Any) -> PreActResNet:
    """Pre-activation ResNet-110 (He et al. 2016, Table 3): 18 basic units per stage, 1.7 M."""
    return PreActResNet(
        PreActBasicBlock, 18, (16, 32, 64), num_classes=num_classes, in_chans=in_chans, **kwargs
    )


@register_model(paper=PREACT_PAPER, **_CIFAR)
def preact_resnet164(*, num_classes: int = 10, in_chans: int = 3, **kwargs: Any) -> PreActResNet:
    """Pre-activation ResNet-164 (He et al. 2016, Table 3): 18 bottlenecks per stage, 1.7 M."""
    return PreActResNet(
        PreActBottleneck, 18, (64, 128, 256), num_classes=num_classes, in_chans=in_chans, **kwargs
    )


@register_model(paper=WRN_PAPER, **_CIFAR)
def wrn16_8(*, num_classes: int = 10, in_chans: int = 3, **kwargs: Any) -> PreActResNet:
    """WRN-16-8 (Zagoruyko & Komodakis 2016, Table 4): 11.0 M params."""
    return wide_resnet_cifar(16, 8, num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model(paper=WRN_PAPER, **_CIFAR)
def wrn28_10(*, num_classes: int = 10, in_chans: int = 3, **kwargs: Any) -> PreActResNet:
    """WRN-28-10 (Zagoruyko & Komodakis 2016, Table 4): 36.5 M params."""
    return wide_resnet_cifar(28, 10, num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model(paper=WRN_PAPER, **_CIFAR)
def wrn40_4(*, num_classes: int = 10, in_chans: int = 3, **kwargs: Any) -> PreActResNet:
    """WRN-40-4 (Zagoruyko & Komodakis 2016, Table 4): 8.9 M params."""
    return wide_resnet_cifar(40, 4, num_classes=num_classes, in_chans=in_chans, **kwargs)
