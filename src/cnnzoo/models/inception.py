"""GoogLeNet (Inception-v1, Szegedy et al. 2014) and Inception-v3 (Szegedy et al. 2015).

Both follow torchvision, whose weights they load, including the places where torchvision departs
from the papers:

* every convolution is followed by batch normalisation (eps 0.001) and has no bias; the 2014
  paper has no BN at all (it came out later), so GoogLeNet here is "GoogLeNet + BN";
* the "5x5" branch of GoogLeNet's inception module uses a 3x3 kernel (torchvision issue #906,
  kept because the ported weights have that shape);
* GoogLeNet's max-pools use ``ceil_mode=True`` (as the Caffe original), and its stem has no local
  response normalisation;
* GoogLeNet's auxiliary heads start with an adaptive 4x4 average pool rather than the paper's
  fixed 5x5/3 pool, so they work at any input size;
* Inception-v3's 35x35 modules keep a 5x5 branch beside the factorised double-3x3 one, as in
  Google's released model; the paper's Figure 5 shows only the factorised branch;
* ``transform_input=True`` re-normalises ImageNet-normalised RGB to the [-1, 1] scaling the ported
  Google weights expect (off by default).

In training mode the networks also return their auxiliary classifiers' logits, as named tuples
in torchvision's order: ``GoogLeNetOutputs(logits, aux_logits2, aux_logits1)`` and
``InceptionOutputs(logits, aux_logits)``. The papers weight the auxiliary losses by 0.3
(GoogLeNet) and use one auxiliary head as a regulariser (Inception-v3); in eval mode only the
logits come back, as a plain tensor.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from cnnzoo.models.base import ZooModel
from cnnzoo.models.features import FeatureInfo
from cnnzoo.registry import IMAGENET_MEAN, IMAGENET_STD, Paper, register_model

__all__ = [
    "GoogLeNet",
    "GoogLeNetOutputs",
    "Inception3",
    "InceptionOutputs",
    "googlenet",
    "inception_v3",
]

GOOGLENET_PAPER = Paper("Going Deeper with Convolutions", 2014, "1409.4842")
INCEPTION_V3_PAPER = Paper(
    "Rethinking the Inception Architecture for Computer Vision", 2015, "1512.00567"
)


class GoogLeNetOutputs(NamedTuple):
    logits: torch.Tensor
    aux_logits2: torch.Tensor
    aux_logits1: torch.Tensor


class InceptionOutputs(NamedTuple):
    logits: torch.Tensor
    aux_logits: torch.Tensor


class BasicConv2d(nn.Module):
    """Conv (no bias) -> BatchNorm (eps 0.001, as in the TensorFlow originals) -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int, **conv_kwargs: Any) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **conv_kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


def imagenet_to_unit_range(x: torch.Tensor) -> torch.Tensor:
    """Turn ImageNet-normalised RGB into (pixel - 0.5) / 0.5, the input of Google's weights."""
    # Constants folded in double precision first, so results match torchvision bit for bit.
    scale = x.new_tensor([s / 0.5 for s in IMAGENET_STD]).view(1, 3, 1, 1)
    shift = x.new_tensor([(m - 0.5) / 0.5 for m in IMAGENET_MEAN]).view(1, 3, 1, 1)
    return x * scale + shift


def check_transform_input(transform_input: bool, in_chans: int) -> None:
    if transform_input and in_chans != 3:
        raise ValueError(
            f"transform_input=True re-normalises RGB images and needs in_chans=3, got {in_chans}"
        )


# --------------------------------------------------------------------------------------------
# GoogLeNet
# --------------------------------------------------------------------------------------------


class Inception(nn.Module):
    """GoogLeNet's inception module (Figure 2b): 1x1 | 1x1->3x3 | 1x1->"5x5" | pool->1x1."""

    def __init__(
        self,
        in_channels: int,
        ch1x1: int,
        ch3x3red: int,
        ch3x3: int,
        ch5x5red: int,
        ch5x5: int,
        pool_proj: int,
    ) -> None:
        super().__init__()
        self.branch1 = BasicConv2d(in_channels, ch1x1, kernel_size=1)
        self.branch2 = nn.Sequential(
            BasicConv2d(in_channels, ch3x3red, kernel_size=1),
            BasicConv2d(ch3x3red, ch3x3, kernel_size=3, padding=1),
        )
        self.branch3 = nn.Sequential(
            BasicConv2d(in_channels, ch5x5red, kernel_size=1),
            # 3x3, not the paper's 5x5: torchvision's layout, which its weights need.
            BasicConv2d(ch5x5red, ch5x5, kernel_size=3, padding=1),
        )
        self.branch4 = nn.Sequential(
            nn.MaxPool2d(kernel_size=3, stride=1, padding=1, ceil_mode=True),
            BasicConv2d(in_channels, pool_proj, kernel_size=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = (self.branch1, self.branch2, self.branch3, self.branch4)
        return torch.cat([branch(x) for branch in branches], 1)


class InceptionAux(nn.Module):
    """GoogLeNet's auxiliary classifier: pool to 4x4, 1x1 conv 128, fc 1024, dropout 0.7, fc."""

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.7) -> None:
        super().__init__()
        self.conv = BasicConv2d(in_channels, 128, kernel_size=1)
        self.fc1 = nn.Linear(128 * 4 * 4, 1024)
        self.fc2 = nn.Linear(1024, num_classes)
        self.dropout = nn.Dropout(p=dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(F.adaptive_avg_pool2d(x, (4, 4)))
        x = F.relu(self.fc1(torch.flatten(x, 1)), inplace=True)
        return self.fc2(self.dropout(x))


# Table 1 of the paper, one row per module:
# (in, #1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj).
GOOGLENET_MODULES: dict[str, tuple[int, int, int, int, int, int, int]] = {
    "inception3a": (192, 64, 96, 128, 16, 32, 32),
    "inception3b": (256, 128, 128, 192, 32, 96, 64),
    "inception4a": (480, 192, 96, 208, 16, 48, 64),
    "inception4b": (512, 160, 112, 224, 24, 64, 64),
    "inception4c": (512, 128, 128, 256, 24, 64, 64),
    "inception4d": (512, 112, 144, 288, 32, 64, 64),
    "inception4e": (528, 256, 160, 320, 32, 128, 128),
    "inception5a": (832, 256, 160, 320, 32, 128, 128),
    "inception5b": (832, 384, 192, 384, 48, 128, 128),
}


# Stages, the last module at each resolution: (module, channels, reduction).
GOOGLENET_STAGES = [
    ("conv1", 64, 2),
    ("conv3", 192, 4),
    ("inception3b", 480, 8),
    ("inception4e", 832, 16),
    ("inception5b", 1024, 32),
]


class GoogLeNet(ZooModel):
    """GoogLeNet (Szegedy et al. 2014, Table 1), torchvision's BN variant; see the module notes.

    The auxiliary heads read the outputs of inception4a (``aux1``) and inception4d (``aux2``);
    they pool adaptively, so training with them works at any size the network accepts.
    """

    first_conv = "conv1.conv"
    classifier_name = "fc"
    min_input_size = 15
    aux_min_input_size = 15

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        aux_logits: bool = True,
        transform_input: bool = False,
        dropout: float = 0.2,
        dropout_aux: float = 0.7,
    ) -> None:
        super().__init__()
        check_transform_input(transform_input, in_chans)
        self.num_classes = num_classes
        self.num_features = 1024
        self.aux_logits = aux_logits
        self.transform_input = transform_input
        self.feature_info = FeatureInfo(GOOGLENET_STAGES)

        self.conv1 = BasicConv2d(in_chans, 64, kernel_size=7, stride=2, padding=3)
        self.maxpool1 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.conv2 = BasicConv2d(64, 64, kernel_size=1)
        self.conv3 = BasicConv2d(64, 192, kernel_size=3, padding=1)
        self.maxpool2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.inception3a = Inception(*GOOGLENET_MODULES["inception3a"])
        self.inception3b = Inception(*GOOGLENET_MODULES["inception3b"])
        self.maxpool3 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.inception4a = Inception(*GOOGLENET_MODULES["inception4a"])
        self.inception4b = Inception(*GOOGLENET_MODULES["inception4b"])
        self.inception4c = Inception(*GOOGLENET_MODULES["inception4c"])
        self.inception4d = Inception(*GOOGLENET_MODULES["inception4d"])
        self.inception4e = Inception(*GOOGLENET_MODULES["inception4e"])
        self.maxpool4 = nn.MaxPool2d(2, stride=2, ceil_mode=True)
        self.inception5a = Inception(*GOOGLENET_MODULES["inception5a"])
        self.inception5b = Inception(*GOOGLENET_MODULES["inception5b"])

        self.aux1: InceptionAux | None = None
        self.aux2: InceptionAux | None = None
        if aux_logits:
            self.aux1 = InceptionAux(512, num_classes, dropout=dropout_aux)
            self.aux2 = InceptionAux(528, num_classes, dropout=dropout_aux)

        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(1024, num_classes)
        self.init_weights()

    def init_weights(self) -> None:
        """Torchvision's scheme: N(0, 0.01) truncated at +-2 for conv and dense weights."""
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(module.weight, mean=0.0, std=0.01, a=-2.0, b=2.0)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def _features(
        self, x: torch.Tensor, with_aux: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        if self.transform_input:
            x = imagenet_to_unit_range(x)
        x = self.maxpool1(self.conv1(x))
        x = self.maxpool2(self.conv3(self.conv2(x)))
        x = self.maxpool3(self.inception3b(self.inception3a(x)))
        x = self.inception4a(x)
        aux1 = self.aux1(x) if with_aux and self.aux1 is not None else None
        x = self.inception4d(self.inception4c(self.inception4b(x)))
        aux2 = self.aux2(x) if with_aux and self.aux2 is not None else None
        x = self.maxpool4(self.inception4e(x))
        x = self.inception5b(self.inception5a(x))
        return x, aux2, aux1

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self._features(x, with_aux=False)[0]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.dropout(torch.flatten(self.avgpool(x), 1))
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> Any:
        self.check_input(x)
        with_aux = self.training and self.aux_logits
        features, aux2, aux1 = self._features(x, with_aux=with_aux)
        logits = self.forward_head(features)
        if with_aux and aux1 is not None and aux2 is not None:
            return GoogLeNetOutputs(logits, aux2, aux1)
        return logits

    def reset_classifier(self, num_classes: int) -> None:
        """Reset the main and both auxiliary classifiers (0 drops the auxiliary heads)."""
        super().reset_classifier(num_classes)
        for head in (self.aux1, self.aux2):
            if head is not None and num_classes:
                head.fc2 = nn.Linear(1024, num_classes, device=head.fc2.weight.device)
        if not num_classes:
            self.aux1 = self.aux2 = None
            self.aux_logits = False


# --------------------------------------------------------------------------------------------
# Inception-v3
# --------------------------------------------------------------------------------------------


class InceptionA(nn.Module):
    """35x35 module (Figure 5): the 5x5 of v1 factorised into two 3x3s.

    Like Google's released model (and torchvision), it also keeps a plain 1x1 -> 5x5 branch,
    which the paper's figure does not show.
    """

    def __init__(self, in_channels: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch1x1 = self.branch1x1(x)
        branch5x5 = self.branch5x5_2(self.branch5x5_1(x))
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        branch_pool = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1))
        return torch.cat([branch1x1, branch5x5, branch3x3dbl, branch_pool], 1)


class InceptionB(nn.Module):
    """Grid reduction 35 -> 17 (Figure 10): stride-2 convs beside a stride-2 max-pool."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch3x3 = self.branch3x3(x)
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        branch_pool = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([branch3x3, branch3x3dbl, branch_pool], 1)


class InceptionC(nn.Module):
    """17x17 module (Figure 6): 7x7 convolutions factorised into 1x7 and 7x1."""

    def __init__(self, in_channels: int, channels_7x7: int) -> None:
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch1x1 = self.branch1x1(x)
        branch7x7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        branch7x7dbl = x
        for layer in (
            self.branch7x7dbl_1,
            self.branch7x7dbl_2,
            self.branch7x7dbl_3,
            self.branch7x7dbl_4,
            self.branch7x7dbl_5,
        ):
            branch7x7dbl = layer(branch7x7dbl)
        branch_pool = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1))
        return torch.cat([branch1x1, branch7x7, branch7x7dbl, branch_pool], 1)


class InceptionD(nn.Module):
    """Grid reduction 17 -> 8: stride-2 3x3 convs (one after a 1x7/7x1 pair) beside a max-pool."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch3x3 = self.branch3x3_2(self.branch3x3_1(x))
        branch7x7x3 = self.branch7x7x3_1(x)
        branch7x7x3 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(branch7x7x3)))
        branch_pool = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([branch3x3, branch7x7x3, branch_pool], 1)


class InceptionE(nn.Module):
    """8x8 module (Figure 7): expanded filter banks, 3x3 split into parallel 1x3 and 3x1."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch1x1 = self.branch1x1(x)
        branch3x3 = self.branch3x3_1(x)
        branch3x3 = torch.cat([self.branch3x3_2a(branch3x3), self.branch3x3_2b(branch3x3)], 1)
        branch3x3dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        branch3x3dbl = torch.cat(
            [self.branch3x3dbl_3a(branch3x3dbl), self.branch3x3dbl_3b(branch3x3dbl)], 1
        )
        branch_pool = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1))
        return torch.cat([branch1x1, branch3x3, branch3x3dbl, branch_pool], 1)


class InceptionAuxV3(nn.Module):
    """Inception-v3's auxiliary classifier on the 17x17 grid (Figure 8), with BN (Section 7).

    Its 5x5/3 average pool and unpadded 5x5 conv need a 17x17 grid, i.e. a 299 px input.
    """

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.conv0 = BasicConv2d(in_channels, 128, kernel_size=1)
        self.conv1 = BasicConv2d(128, 768, kernel_size=5)
        self.fc = nn.Linear(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(self.conv0(F.avg_pool2d(x, kernel_size=5, stride=3)))
        x = F.adaptive_avg_pool2d(x, (1, 1))
        return self.fc(torch.flatten(x, 1))


# Stages, the last module at each resolution: (module, channels, reduction).
INCEPTION_V3_STAGES = [
    ("Conv2d_2b_3x3", 64, 2),
    ("Conv2d_4a_3x3", 192, 4),
    ("Mixed_5d", 288, 8),
    ("Mixed_6e", 768, 16),
    ("Mixed_7c", 2048, 32),
]


class Inception3(ZooModel):
    """Inception-v3 (Szegedy et al. 2015, Table 1), torchvision's layout and weights.

    Stem of plain convs, 3 x InceptionA (35x35), InceptionB, 4 x InceptionC (17x17),
    InceptionD, 2 x InceptionE (8x8); an auxiliary head on the last 17x17 map.

    The network runs from 75 px, but in training mode the auxiliary head needs the full 299 px
    (:attr:`aux_min_input_size`); smaller training inputs raise a ValueError saying so.
    """

    first_conv = "Conv2d_1a_3x3.conv"
    classifier_name = "fc"
    min_input_size = 75
    aux_min_input_size = 299

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        aux_logits: bool = True,
        transform_input: bool = False,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        check_transform_input(transform_input, in_chans)
        self.num_classes = num_classes
        self.num_features = 2048
        self.aux_logits = aux_logits
        self.transform_input = transform_input
        self.feature_info = FeatureInfo(INCEPTION_V3_STAGES)

        self.Conv2d_1a_3x3 = BasicConv2d(in_chans, 32, kernel_size=3, stride=2)  # 299 -> 149
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)  # -> 147
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.maxpool1 = nn.MaxPool2d(kernel_size=3, stride=2)  # -> 73
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)  # -> 71
        self.maxpool2 = nn.MaxPool2d(kernel_size=3, stride=2)  # -> 35
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)  # -> 17
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.AuxLogits: InceptionAuxV3 | None = (
            InceptionAuxV3(768, num_classes) if aux_logits else None
        )
        self.Mixed_7a = InceptionD(768)  # -> 8
        self.Mixed_7b = InceptionE(1280)
        self.Mixed_7c = InceptionE(2048)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(2048, num_classes)
        self.init_weights()

    def init_weights(self) -> None:
        """Torchvision's scheme: truncated N(0, 0.1) for conv and dense weights, except
        N(0, 0.001) for the auxiliary head's classifier. (Torchvision also tags the aux conv1 with
        0.01, but on the wrapper rather than its Conv2d, so that tag has no effect; matched here.)
        """
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                std = 0.001 if self.AuxLogits is not None and module is self.AuxLogits.fc else 0.1
                nn.init.trunc_normal_(module.weight, mean=0.0, std=std, a=-2.0, b=2.0)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def _features(
        self, x: torch.Tensor, with_aux: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.transform_input:
            x = imagenet_to_unit_range(x)
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = self.maxpool1(x)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = self.maxpool2(x)
        x = self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x)))
        x = self.Mixed_6a(x)
        x = self.Mixed_6e(self.Mixed_6d(self.Mixed_6c(self.Mixed_6b(x))))
        aux = self.AuxLogits(x) if with_aux and self.AuxLogits is not None else None
        x = self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(x)))
        return x, aux

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self._features(x, with_aux=False)[0]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.dropout(torch.flatten(self.avgpool(x), 1))
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> Any:
        self.check_input(x)
        with_aux = self.training and self.aux_logits and self.AuxLogits is not None
        if with_aux and min(x.shape[-2:]) < self.aux_min_input_size:
            height, width = x.shape[-2:]
            raise ValueError(
                f"{self.model_name}'s auxiliary classifier needs inputs of at least "
                f"{self.aux_min_input_size}x{self.aux_min_input_size} pixels in training mode, "
                f"got {height}x{width}; train at {self.aux_min_input_size} px or build the model "
                "with aux_logits=False"
            )
        features, aux = self._features(x, with_aux=with_aux)
        logits = self.forward_head(features)
        if with_aux and aux is not None:
            return InceptionOutputs(logits, aux)
        return logits

    def reset_classifier(self, num_classes: int) -> None:
        """Reset the main and the auxiliary classifier (0 drops the auxiliary head)."""
        super().reset_classifier(num_classes)
        if self.AuxLogits is not None and num_classes:
            device = self.AuxLogits.fc.weight.device
            self.AuxLogits.fc = nn.Linear(768, num_classes, device=device)
        elif not num_classes:
            self.AuxLogits = None
            self.aux_logits = False


@register_model(family="inception", paper=GOOGLENET_PAPER, torchvision=True, imagenet_top1=69.778)
def googlenet(*, num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> GoogLeNet:
    """GoogLeNet / Inception-v1 (Szegedy et al. 2014), torchvision's BN variant, aux heads on."""
    return GoogLeNet(num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model(
    family="inception",
    paper=INCEPTION_V3_PAPER,
    input_size=299,
    torchvision=True,
    imagenet_top1=77.294,
)
def inception_v3(*, num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> Inception3:
    """Inception-v3 (Szegedy et al. 2015) as in torchvision; 299 px input, aux head on."""
    return Inception3(num_classes=num_classes, in_chans=in_chans, **kwargs)
