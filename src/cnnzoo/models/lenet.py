"""LeNet-5 (LeCun et al. 1998) and the 20-50-500 "Caffe" LeNet of the Keras tutorials.

Both are tiny, fixed-size networks for 28x28 / 32x32 grey digits, kept here as the historical
baseline of the zoo.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cnnzoo.models.base import ZooModel
from cnnzoo.models.features import FeatureInfo
from cnnzoo.models.layers import WholeInputConv2d
from cnnzoo.registry import Paper, register_model

__all__ = ["LeNet5", "LeNetCaffe", "lenet5", "lenet_caffe"]

LENET_PAPER = Paper("Gradient-based learning applied to document recognition", 1998)

# Stages: (module, channels, reduction). C5 is left out: its 1x1 output is the classifier's
# input vector, not a map.
LENET5_STAGES = [("relu1", 6, 2), ("relu2", 16, 4)]  # S2 (14x14), S4 (5x5), after ReLU
LENET_CAFFE_STAGES = [("pool1", 20, 2), ("pool2", 50, 4)]  # 12x12, 4x4


@torch.fx.wrap
def pad_to_side(x: torch.Tensor, side: int, min_side: int) -> torch.Tensor:
    """Centre ``min_side``..``side``-px images in a ``side`` x ``side`` zero field.

    Other sizes come back unchanged (already ``side``, or a size the input check rejects).
    Wrapped for torch.fx: tracing records one call instead of looking at concrete shapes.
    """
    height, width = x.shape[-2:]
    if (height, width) == (side, side) or not all(
        min_side <= edge <= side for edge in (height, width)
    ):
        return x
    top, left = (side - height) // 2, (side - width) // 2
    return F.pad(x, (left, side - width - left, top, side - height - top))


class LeNet5(ZooModel):
    """LeNet-5 (LeCun et al. 1998, Fig. 2), modernised with ReLU and max-pooling.

    The layers keep the paper's names in their docstrings: C1 6@5x5 -> S2 -> C3 16@5x5 -> S4 ->
    C5 120@5x5 (a convolution whose output is 1x1) -> F6 84 -> output. Two departures from the
    paper: C3 is densely connected (the paper's sparse connection table of Table I is dropped),
    and the output is a plain linear layer instead of Euclidean RBF units. With one input channel
    and ten classes that gives 61,706 parameters (the paper's sparse, RBF-output version: 60,000).

    The network takes 32x32 images. As in the paper's MNIST setup, smaller images (28..31 px) are
    centred in a 32x32 zero field before C1; larger ones are rejected.
    """

    first_conv = "conv1"
    classifier_name = "fc"
    min_input_size = 28
    fixed_input_size = 32

    def __init__(self, num_classes: int = 10, in_chans: int = 1) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.num_features = 84
        self.conv1 = nn.Conv2d(in_chans, 6, kernel_size=5)  # C1: 32 -> 28
        self.pool1 = nn.MaxPool2d(2)  # S2: 28 -> 14
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(6, 16, kernel_size=5)  # C3: 14 -> 10
        self.pool2 = nn.MaxPool2d(2)  # S4: 10 -> 5
        self.relu2 = nn.ReLU()
        self.conv3 = WholeInputConv2d(16, 120, kernel_size=5)  # C5: 5 -> 1, a matrix product
        self.relu3 = nn.ReLU()
        self.fc1 = nn.Linear(120, 84)  # F6
        self.fc = nn.Linear(84, num_classes)
        self.feature_info = FeatureInfo(LENET5_STAGES)

    def pad_to_32(self, x: torch.Tensor) -> torch.Tensor:
        """Centre a 28..31-px image in a 32x32 zero field (the paper's 28x28 MNIST -> 32x32)."""
        return pad_to_side(x, 32, self.min_input_size)

    def check_input(self, x: torch.Tensor) -> None:
        if x.dim() == 4 and all(self.min_input_size <= s <= 32 for s in x.shape[-2:]):
            # Validate the shape the network will really see, without materialising the padding.
            x = torch.empty((*x.shape[:2], 32, 32), device="meta")
        super().check_input(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = pad_to_side(x, 32, self.min_input_size)
        # Max-pooling commutes with ReLU (both are monotone), so pooling first gives the same
        # values and gradients while the ReLU touches a quarter of the elements.
        x = self.relu1(self.pool1(self.conv1(x)))
        x = self.relu2(self.pool2(self.conv2(x)))
        return self.relu3(self.conv3(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = F.relu(self.fc1(torch.flatten(x, 1)))
        return x if pre_logits else self.fc(x)


class LeNetCaffe(ZooModel):
    """The 20-50-500 LeNet of Caffe's MNIST example and of the Keras tutorial (seed 001).

    conv 20@5x5 -> max-pool -> conv 50@5x5 -> max-pool -> dense 500 (ReLU) -> dense classes, on
    28x28 inputs (24 -> 12 -> 8 -> 4 spatially); 431,080 parameters for 1 channel, 10 classes.
    ReLU follows both convolutions as in the tutorial; the final softmax lives in the loss.
    """

    first_conv = "conv1"
    classifier_name = "fc"
    min_input_size = 28
    fixed_input_size = 28

    def __init__(self, num_classes: int = 10, in_chans: int = 1) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.num_features = 500
        self.conv1 = nn.Conv2d(in_chans, 20, kernel_size=5)
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(20, 50, kernel_size=5)
        self.pool2 = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(50 * 4 * 4, 500)
        self.fc = nn.Linear(500, num_classes)
        self.feature_info = FeatureInfo(LENET_CAFFE_STAGES)
        # Keras defaults, so a run matches the tutorial: Glorot-uniform kernels, zero biases.
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(F.relu(self.conv1(x)))
        return self.pool2(F.relu(self.conv2(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = F.relu(self.fc1(torch.flatten(x, 1)))
        return x if pre_logits else self.fc(x)


@register_model(family="lenet", paper=LENET_PAPER, input_size=32, num_classes=10, in_chans=1)
def lenet5(*, num_classes: int = 10, in_chans: int = 1, **kwargs: Any) -> LeNet5:
    """LeNet-5 (LeCun et al. 1998), ReLU/max-pool, dense C3; 32x32 input (28x28 is padded)."""
    return LeNet5(num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model(family="lenet", paper=LENET_PAPER, input_size=28, num_classes=10, in_chans=1)
def lenet_caffe(*, num_classes: int = 10, in_chans: int = 1, **kwargs: Any) -> LeNetCaffe:
    """The 20-50-500 Caffe/Keras LeNet on 28x28 inputs."""
    return LeNetCaffe(num_classes=num_classes, in_chans=in_chans, **kwargs)
