"""ImageNet residual networks: ResNet, ResNeXt, Wide ResNet, SE-ResNet and pre-activation ResNet.

Module names follow torchvision (``conv1``, ``bn1``, ``layer1``…``layer4``, ``fc``; blocks with
``conv1``/``bn1``…, ``downsample``), so torchvision's ResNet checkpoints load strictly. Like
torchvision, the stride of a bottleneck sits on its 3×3 conv ("ResNet v1.5"), which is also what
ResNeXt and the pre-activation paper use.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from cnnzoo.models.base import ZooModel
from cnnzoo.models.features import FeatureInfo
from cnnzoo.models.layers import SqueezeExcite
from cnnzoo.registry import Paper, register_model

RESNET_PAPER = Paper("Deep Residual Learning for Image Recognition", 2015, "1512.03385")
RESNEXT_PAPER = Paper(
    "Aggregated Residual Transformations for Deep Neural Networks", 2016, "1611.05431"
)
WIDE_PAPER = Paper("Wide Residual Networks", 2016, "1605.07146")
SE_PAPER = Paper("Squeeze-and-Excitation Networks", 2017, "1709.01507")
PREACT_PAPER = Paper("Identity Mappings in Deep Residual Networks", 2016, "1603.05027")

SE_REDUCTION = 16  # Hu et al., Sec. 6.1


def conv3x3(in_planes: int, out_planes: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 3, stride, padding=1, groups=groups, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 1, stride, bias=False)


def squeeze_excite(channels: int, se: bool) -> nn.Module | None:
    return SqueezeExcite(channels, channels // SE_REDUCTION) if se else None


class BasicBlock(nn.Module):
    """Two 3×3 convs with an identity (or projection) shortcut; ResNet-18/34."""

    expansion = 1
    preact = False

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        groups: int = 1,
        base_width: int = 64,
        se: bool = False,
        stride_in_1x1: bool = False,
    ) -> None:
        super().__init__()
        if groups != 1 or base_width != 64:
            raise ValueError("BasicBlock supports only groups=1 and width_per_group=64")
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.se = squeeze_excite(planes, se)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.se is not None:
            out = self.se(out)
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1×1 reduce, 3×3 (grouped for ResNeXt), 1×1 expand ×4; ResNet-50 and deeper."""

    expansion = 4
    preact = False

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        groups: int = 1,
        base_width: int = 64,
        se: bool = False,
        stride_in_1x1: bool = False,
    ) -> None:
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        # The original ResNet (and SE-Net's Caffe models) stride the first 1x1 conv; torchvision
        # and ResNeXt stride the 3x3 conv instead ("v1.5": +0.23 GMACs, better accuracy).
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = conv1x1(inplanes, width, stride_1x1)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, stride_3x3, groups)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.se = squeeze_excite(planes * self.expansion, se)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.se is not None:
            out = self.se(out)
        return self.relu(out + identity)


class PreActBasicBlock(nn.Module):
    """BN-ReLU-conv ×2 with a clean identity path (He et al. 2016, Fig. 4e)."""

    expansion = 1
    preact = True

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        groups: int = 1,
        base_width: int = 64,
        se: bool = False,
        stride_in_1x1: bool = False,
    ) -> None:
        super().__init__()
        if groups != 1 or base_width != 64 or se:
            raise ValueError("PreActBasicBlock supports only plain ResNet widths")
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(x))
        # The projection reads the pre-activated input, as in the authors' code.
        identity = x if self.downsample is None else self.downsample(out)
        out = self.conv1(out)
        out = self.conv2(self.relu(self.bn2(out)))
        return out + identity


class PreActBottleneck(nn.Module):
    """Pre-activation bottleneck: BN-ReLU before each of the 1×1, 3×3, 1×1 convs."""

    expansion = 4
    preact = True

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        groups: int = 1,
        base_width: int = 64,
        se: bool = False,
        stride_in_1x1: bool = False,
    ) -> None:
        super().__init__()
        if se:
            raise ValueError("PreActBottleneck does not take squeeze-excitation")
        width = int(planes * (base_width / 64.0)) * groups
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.conv1 = conv1x1(inplanes, width)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, stride, groups)
        self.bn3 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(x))
        identity = x if self.downsample is None else self.downsample(out)
        out = self.conv1(out)
        out = self.conv2(self.relu(self.bn2(out)))
        out = self.conv3(self.relu(self.bn3(out)))
        return out + identity


Block = type[BasicBlock] | type[Bottleneck] | type[PreActBasicBlock] | type[PreActBottleneck]

# Stages: (module, channels before the block expansion, reduction, reduction with small_input).
# The stem after its ReLU, then the four residual stages; pre-activation nets end with their
# final BN-ReLU (``relu_final``) instead of layer4's un-normalised sum.
RESNET_STAGES = [
    ("relu", 64, 2, 1),
    ("layer1", 64, 4, 1),
    ("layer2", 128, 8, 2),
    ("layer3", 256, 16, 4),
    ("layer4", 512, 32, 8),
]


class ResNet(ZooModel):
    """The ImageNet ResNet skeleton: stem, four stages of residual blocks, global pool, fc.

    ``small_input=True`` swaps the 7×7/2 stem and max-pool for a 3×3/1 conv, for 28–32-px images.
    """

    supports_small_input = True

    def __init__(
        self,
        block: Block,
        layers: list[int],
        num_classes: int = 1000,
        in_chans: int = 3,
        groups: int = 1,
        width_per_group: int = 64,
        se: bool = False,
        small_input: bool = False,
        zero_init_residual: bool = False,
        drop_rate: float = 0.0,
        stride_in_1x1: bool = False,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.groups = groups
        self.base_width = width_per_group
        self.se = se
        self.stride_in_1x1 = stride_in_1x1
        self.inplanes = 64
        if small_input:
            self.conv1 = nn.Conv2d(in_chans, 64, 3, stride=1, padding=1, bias=False)
        else:
            self.conv1 = nn.Conv2d(in_chans, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.Identity() if small_input else nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.num_features = 512 * block.expansion
        # Pre-activation blocks leave their sum un-normalised; the paper ends with BN-ReLU.
        self.bn_final = nn.BatchNorm2d(self.num_features) if block.preact else None
        self.relu_final = nn.ReLU(inplace=True) if block.preact else None
        self.feature_info = FeatureInfo(
            (
                "relu_final" if block.preact and name == "layer4" else name,
                planes if name == "relu" else planes * block.expansion,
                small_reduction if small_input else reduction,
            )
            for name, planes, reduction, small_reduction in RESNET_STAGES
        )
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.drop_rate = drop_rate
        self.fc = nn.Linear(self.num_features, num_classes)
        self._init_weights(zero_init_residual)

    def _make_layer(self, block: Block, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample: nn.Module | None = None
        out_planes = planes * block.expansion
        if stride != 1 or self.inplanes != out_planes:
            projection = conv1x1(self.inplanes, out_planes, stride)
            downsample = (
                nn.Sequential(projection)
                if block.preact
                else nn.Sequential(projection, nn.BatchNorm2d(out_planes))
            )
        options = dict(
            groups=self.groups,
            base_width=self.base_width,
            se=self.se,
            stride_in_1x1=self.stride_in_1x1,
        )
        stage = [block(self.inplanes, planes, stride, downsample, **options)]
        self.inplanes = out_planes
        stage += [block(self.inplanes, planes, 1, None, **options) for _ in range(1, blocks)]
        return nn.Sequential(*stage)

    def _init_weights(self, zero_init_residual: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            # Each residual branch starts as zero, so every block starts as the identity.
            for m in self.modules():
                last_bn = getattr(m, "bn3", None) if isinstance(m, Bottleneck) else None
                if isinstance(m, BasicBlock):
                    last_bn = m.bn2
                if last_bn is not None:
                    nn.init.zeros_(last_bn.weight)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        if self.bn_final is not None and self.relu_final is not None:
            x = self.relu_final(self.bn_final(x))
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = torch.flatten(self.avgpool(x), 1)
        if self.drop_rate:
            x = nn.functional.dropout(x, self.drop_rate, self.training)
        return x if pre_logits else self.fc(x)


# Stage depths from He et al. 2015, Table 1.
DEPTHS = {
    18: (BasicBlock, [2, 2, 2, 2]),
    34: (BasicBlock, [3, 4, 6, 3]),
    50: (Bottleneck, [3, 4, 6, 3]),
    101: (Bottleneck, [3, 4, 23, 3]),
    152: (Bottleneck, [3, 8, 36, 3]),
}
PREACT_BLOCKS = {BasicBlock: PreActBasicBlock, Bottleneck: PreActBottleneck}


def _resnet(depth: int, *, preact: bool = False, **kwargs: Any) -> ResNet:
    block, layers = DEPTHS[depth]
    return ResNet(PREACT_BLOCKS[block] if preact else block, layers, **kwargs)


@register_model(family="resnet", paper=RESNET_PAPER, torchvision=True, imagenet_top1=69.758)
def resnet18(**kwargs: Any) -> ResNet:
    """ResNet-18 (He et al. 2015)."""
    return _resnet(18, **kwargs)


@register_model(family="resnet", paper=RESNET_PAPER, torchvision=True, imagenet_top1=73.314)
def resnet34(**kwargs: Any) -> ResNet:
    """ResNet-34 (He et al. 2015)."""
    return _resnet(34, **kwargs)


@register_model(family="resnet", paper=RESNET_PAPER, torchvision=True, imagenet_top1=80.858)
def resnet50(**kwargs: Any) -> ResNet:
    """ResNet-50 (He et al. 2015)."""
    return _resnet(50, **kwargs)


@register_model(family="resnet", paper=RESNET_PAPER, torchvision=True, imagenet_top1=81.886)
def resnet101(**kwargs: Any) -> ResNet:
    """ResNet-101 (He et al. 2015)."""
    return _resnet(101, **kwargs)


@register_model(family="resnet", paper=RESNET_PAPER, torchvision=True, imagenet_top1=82.284)
def resnet152(**kwargs: Any) -> ResNet:
    """ResNet-152 (He et al. 2015)."""
    return _resnet(152, **kwargs)


@register_model(family="resnext", paper=RESNEXT_PAPER, torchvision=True, imagenet_top1=81.198)
def resnext50_32x4d(**kwargs: Any) -> ResNet:
    """ResNeXt-50, cardinality 32, bottleneck width 4 (Xie et al. 2016)."""
    return _resnet(50, groups=32, width_per_group=4, **kwargs)


@register_model(family="resnext", paper=RESNEXT_PAPER, torchvision=True, imagenet_top1=82.834)
def resnext101_32x8d(**kwargs: Any) -> ResNet:
    """ResNeXt-101, cardinality 32, bottleneck width 8 (Xie et al. 2016)."""
    return _resnet(101, groups=32, width_per_group=8, **kwargs)


@register_model(family="resnext", paper=RESNEXT_PAPER, torchvision=True, imagenet_top1=83.246)
def resnext101_64x4d(**kwargs: Any) -> ResNet:
    """ResNeXt-101, cardinality 64, bottleneck width 4 (Xie et al. 2016)."""
    return _resnet(101, groups=64, width_per_group=4, **kwargs)


@register_model(family="wide_resnet", paper=WIDE_PAPER, torchvision=True, imagenet_top1=81.602)
def wide_resnet50_2(**kwargs: Any) -> ResNet:
    """Wide ResNet-50-2: ResNet-50 with bottlenecks twice as wide (Zagoruyko & Komodakis 2016)."""
    return _resnet(50, width_per_group=128, **kwargs)


@register_model(family="wide_resnet", paper=WIDE_PAPER, torchvision=True, imagenet_top1=82.510)
def wide_resnet101_2(**kwargs: Any) -> ResNet:
    """Wide ResNet-101-2 (Zagoruyko & Komodakis 2016)."""
    return _resnet(101, width_per_group=128, **kwargs)


@register_model(family="se_resnet", paper=SE_PAPER)
def se_resnet18(**kwargs: Any) -> ResNet:
    """SE-ResNet-18 (Hu et al. 2017): a squeeze-excitation gate on every residual branch."""
    return _resnet(18, se=True, stride_in_1x1=True, **kwargs)


@register_model(family="se_resnet", paper=SE_PAPER)
def se_resnet34(**kwargs: Any) -> ResNet:
    """SE-ResNet-34 (Hu et al. 2017)."""
    return _resnet(34, se=True, stride_in_1x1=True, **kwargs)


# Hu et al., Table 2: single-crop top-1 error 23.29 %.
@register_model(family="se_resnet", paper=SE_PAPER, imagenet_top1=76.71, top1_source="paper")
def se_resnet50(**kwargs: Any) -> ResNet:
    """SE-ResNet-50 (Hu et al. 2017): 28.1 M params, 3.87 GFLOPs; as in the paper's Caffe
    models, bottlenecks stride their first 1x1 conv (the original ResNet layout)."""
    return _resnet(50, se=True, stride_in_1x1=True, **kwargs)


@register_model(family="se_resnet", paper=SE_PAPER)
def se_resnet101(**kwargs: Any) -> ResNet:
    """SE-ResNet-101 (Hu et al. 2017)."""
    return _resnet(101, se=True, stride_in_1x1=True, **kwargs)


@register_model(family="se_resnet", paper=SE_PAPER)
def se_resnet152(**kwargs: Any) -> ResNet:
    """SE-ResNet-152 (Hu et al. 2017)."""
    return _resnet(152, se=True, stride_in_1x1=True, **kwargs)


@register_model(family="se_resnet", paper=SE_PAPER)
def se_resnext50_32x4d(**kwargs: Any) -> ResNet:
    """SE-ResNeXt-50 (32×4d) (Hu et al. 2017)."""
    return _resnet(50, se=True, groups=32, width_per_group=4, **kwargs)


@register_model(family="preact_resnet", paper=PREACT_PAPER)
def preact_resnet18(**kwargs: Any) -> ResNet:
    """Pre-activation ResNet-18 (He et al. 2016)."""
    return _resnet(18, preact=True, **kwargs)


@register_model(family="preact_resnet", paper=PREACT_PAPER)
def preact_resnet34(**kwargs: Any) -> ResNet:
    """Pre-activation ResNet-34 (He et al. 2016)."""
    return _resnet(34, preact=True, **kwargs)


@register_model(family="preact_resnet", paper=PREACT_PAPER)
def preact_resnet50(**kwargs: Any) -> ResNet:
    """Pre-activation ResNet-50 (He et al. 2016)."""
    return _resnet(50, preact=True, **kwargs)


@register_model(family="preact_resnet", paper=PREACT_PAPER)
def preact_resnet101(**kwargs: Any) -> ResNet:
    """Pre-activation ResNet-101 (He et al. 2016)."""
    return _resnet(101, preact=True, **kwargs)


@register_model(family="preact_resnet", paper=PREACT_PAPER)
def preact_resnet152(**kwargs: Any) -> ResNet:
    """Pre-activation ResNet-152 (He et al. 2016)."""
    return _resnet(152, preact=True, **kwargs)
