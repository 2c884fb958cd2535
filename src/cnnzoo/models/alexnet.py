"""AlexNet (Krizhevsky, Sutskever & Hinton 2012): torchvision's variant and the paper's.

``alexnet`` is torchvision's model (the "one weird trick" 64-192-384-256-256 layout, no local
response normalisation), loadable from its weights. ``alexnet_v1`` is the network of the paper:
96-256-384-384-256 filters on 227x227 inputs, local response normalisation after conv1 and conv2,
and the two-GPU split kept as grouped convolutions.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from cnnzoo.models.base import ZooModel
from cnnzoo.models.features import FeatureInfo
from cnnzoo.registry import Paper, register_model

__all__ = ["AlexNet", "alexnet", "alexnet_v1"]

ALEXNET_PAPER = Paper("ImageNet Classification with Deep Convolutional Neural Networks", 2012)

# Local response normalisation, Section 3.3: b = a / (k + alpha * sum_{n neighbours} a^2)^beta.
LRN_K, LRN_SIZE, LRN_ALPHA, LRN_BETA = 2.0, 5, 1e-4, 0.75

# Stages, one per resolution: (module in ``features``, channels, reduction). conv1, conv2 and
# conv5 after their ReLU (and LRN), then pool5.
TORCHVISION_STAGES = [
    ("features.1", 64, 4),
    ("features.4", 192, 8),
    ("features.11", 256, 16),
    ("features.12", 256, 32),
]
PAPER_STAGES = [
    ("features.2", 96, 4),
    ("features.6", 256, 8),
    ("features.13", 256, 16),
    ("features.14", 256, 32),
]


def paper_lrn() -> nn.LocalResponseNorm:
    """The paper's LRN. PyTorch divides alpha by the window size and the paper does not, so the
    paper's alpha is multiplied by n here to compute exactly the paper's formula."""
    return nn.LocalResponseNorm(LRN_SIZE, alpha=LRN_ALPHA * LRN_SIZE, beta=LRN_BETA, k=LRN_K)


class AlexNet(ZooModel):
    """AlexNet: ``features`` (the conv stack), ``avgpool`` to 6x6, ``classifier`` (fc6-fc8).

    The state-dict keys are torchvision's. ``features`` is given as a built ``nn.Sequential`` so
    the same class serves both layouts; the classifier reads 256 * 6 * 6 features either way.
    ``stages`` are the layout's feature stages (module, channels, reduction).
    """

    first_conv = "features.0"
    classifier_name = "classifier.6"

    def __init__(
        self,
        features: nn.Sequential,
        num_classes: int = 1000,
        dropout: float = 0.5,
        min_input_size: int = 63,
        stages: list[tuple[str, int, int]] = TORCHVISION_STAGES,
    ) -> None:
        super().__init__()
        self.feature_info = FeatureInfo(stages)
        self.num_classes = num_classes
        self.num_features = 4096
        self.min_input_size = min_input_size
        self.features = features
        # Identity at the native size (the conv stack already ends at 6x6); lets other sizes work.
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout),
            nn.Linear(256 * 6 * 6, 4096),  # fc6
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, 4096),  # fc7
            nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),  # fc8
        )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = torch.flatten(self.avgpool(x), 1)
        # The classifier runs as one module, so that hooks (summary, profilers) see it whole.
        return self.classifier[:-1](x) if pre_logits else self.classifier(x)


def torchvision_features(in_chans: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_chans, 64, kernel_size=11, stride=4, padding=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(64, 192, kernel_size=5, padding=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(192, 384, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(256, 256, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
    )


def paper_features(in_chans: int) -> nn.Sequential:
    """Section 3.5 / Figure 2. ``groups=2`` reproduces the two-GPU split: conv2, conv4 and conv5
    see only the kernel maps on their own GPU, conv3 and the dense layers see both."""
    return nn.Sequential(
        nn.Conv2d(in_chans, 96, kernel_size=11, stride=4),  # conv1: 227 -> 55
        nn.ReLU(inplace=True),
        paper_lrn(),
        nn.MaxPool2d(kernel_size=3, stride=2),  # overlapping pooling (Section 3.4): 55 -> 27
        nn.Conv2d(96, 256, kernel_size=5, padding=2, groups=2),  # conv2
        nn.ReLU(inplace=True),
        paper_lrn(),
        nn.MaxPool2d(kernel_size=3, stride=2),  # 27 -> 13
        nn.Conv2d(256, 384, kernel_size=3, padding=1),  # conv3
        nn.ReLU(inplace=True),
        nn.Conv2d(384, 384, kernel_size=3, padding=1, groups=2),  # conv4
        nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, kernel_size=3, padding=1, groups=2),  # conv5
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),  # 13 -> 6
    )


def init_as_in_paper(model: AlexNet) -> None:
    """Section 5: weights ~ N(0, 0.01); biases 1 in conv2, conv4, conv5 and the hidden dense
    layers (to give the ReLUs positive inputs early on), 0 elsewhere."""
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    conv1, conv2, conv3, conv4, conv5, fc6, fc7, fc8 = layers
    for layer in layers:
        nn.init.normal_(layer.weight, 0.0, 0.01)
        bias_one = layer in (conv2, conv4, conv5, fc6, fc7)
        nn.init.constant_(layer.bias, 1.0 if bias_one else 0.0)


@register_model(family="alexnet", paper=ALEXNET_PAPER, torchvision=True, imagenet_top1=56.522)
def alexnet(*, num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> AlexNet:
    """AlexNet as in torchvision (64-192-384-256-256, no LRN, single tower); 224 input, min 63."""
    return AlexNet(torchvision_features(in_chans), num_classes=num_classes, **kwargs)


@register_model(
    family="alexnet",
    paper=ALEXNET_PAPER,
    input_size=227,
    imagenet_top1=59.3,
    top1_source="paper, 1 CNN (Table 2: 40.7% top-1 error)",
)
def alexnet_v1(*, num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> AlexNet:
    """AlexNet as in the paper: 96-256-384-384-256, LRN, two-tower groups; 60,965,224 params.

    The smallest input is 67 px: the last max-pool needs a 3x3 map, so the second pool needs 7x7,
    the first 15x15, and conv1 (11x11, stride 4, unpadded) makes 15 from 67.
    """
    model = AlexNet(
        paper_features(in_chans),
        num_classes=num_classes,
        min_input_size=67,
        stages=PAPER_STAGES,
        **kwargs,
    )
    init_as_in_paper(model)
    return model
