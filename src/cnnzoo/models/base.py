"""The uniform model API every zoo model shares (after timm): features, head, classifier reset."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from cnnzoo.models.features import FeatureInfo
from cnnzoo.registry import IMAGENET_MEAN, IMAGENET_STD, check_class_and_channel_counts

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "ZooModel", "check_class_and_channel_counts"]


class ZooModel(nn.Module):
    """Base class of every cnnzoo model.

    Subclasses set ``first_conv`` and ``classifier_name`` (dotted module names, which are also
    their state-dict prefixes), ``min_input_size`` (the smallest square side the network accepts)
    and optionally ``fixed_input_size``; they implement :meth:`forward_features`,
    :meth:`forward_head` and :meth:`reset_classifier`. Each sets ``feature_info``, its stages
    as data (module, channels, reduction; see :mod:`cnnzoo.models.features`): the maps a
    ``features_only`` backbone returns and the layers explanations look at.
    """

    first_conv: str = "conv1"
    classifier_name: str = "fc"
    min_input_size: int = 1
    # When set, inputs must be exactly this side (after any padding the model applies itself).
    fixed_input_size: int | None = None
    # Set by each model: the width of the pooled features the classifier reads.
    num_features: int
    num_classes: int
    default_cfg: dict[str, Any]
    feature_info: FeatureInfo

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        raise NotImplementedError

    def get_classifier(self) -> nn.Module:
        return self.get_submodule(self.classifier_name)

    def reset_classifier(self, num_classes: int) -> None:
        """Put a freshly initialised classifier for ``num_classes`` (0: no classifier) in place."""
        if num_classes != 0:
            check_class_and_channel_counts(num_classes, 1)
        old = self.get_classifier()
        parent_name, _, attr = self.classifier_name.rpartition(".")
        parent = self.get_submodule(parent_name) if parent_name else self
        device = old.weight.device if isinstance(old, nn.Linear) else None
        new = (
            nn.Linear(self.num_features, num_classes, device=device)
            if num_classes
            else nn.Identity()
        )
        setattr(parent, attr, new)
        self.num_classes = num_classes

    @property
    def model_name(self) -> str:
        cfg = getattr(self, "default_cfg", None)
        return cfg["name"] if cfg else type(self).__name__

    def check_input(self, x: torch.Tensor) -> None:
        """Raise a ValueError that says what to do when ``x`` cannot go through this network."""
        if x.dim() != 4:
            raise ValueError(
                f"{self.model_name} expects a batch of images shaped (N, C, H, W), "
                f"got a tensor of shape {tuple(x.shape)}"
            )
        stem = self.get_submodule(self.first_conv)
        expected_chans = stem.in_channels if isinstance(stem, nn.Conv2d) else None
        if expected_chans is not None and x.shape[1] != expected_chans:
            raise ValueError(
                f"{self.model_name} was built for {expected_chans}-channel images, got "
                f"{x.shape[1]} channels; build it with in_chans={x.shape[1]}"
            )
        height, width = int(x.shape[-2]), int(x.shape[-1])
        fixed = self.fixed_input_size
        # A network whose one side is also its least (a Vision Transformer) is told "exactly".
        if min(height, width) < self.min_input_size and fixed != self.min_input_size:
            raise ValueError(
                f"{self.model_name} needs inputs of at least "
                f"{self.min_input_size}x{self.min_input_size} pixels, got {height}x{width}; "
                f"resize the images to at least {self.min_input_size} pixels"
                + self.rebuild_hint(height, width)
            )
        if fixed is not None and (height, width) != (fixed, fixed):
            raise ValueError(
                f"{self.model_name} takes exactly {fixed}x{fixed} inputs, got {height}x{width}; "
                "resize the images" + self.rebuild_hint(height, width)
            )

    def rebuild_hint(self, height: int, width: int) -> str:
        """How to build this network for ``height`` x ``width`` inputs instead, if a builder
        option does it (the end of check_input's message)."""
        if getattr(self, "supports_small_input", False):
            return " or build it with small_input=True"
        return ""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.forward_head(self.forward_features(x))
