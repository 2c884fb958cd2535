"""Transfer learning: freezing a network's backbone while its classifier (and auxiliary heads)
train."""

from __future__ import annotations

from torch import nn

__all__ = ["freeze_backbone_norms", "frozen_norm_names", "is_head", "set_backbone_frozen"]

_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def is_head(model: nn.Module, name: str) -> bool:
    """Parameters (or modules) that train while the backbone is frozen: the classifier and any
    auxiliary head."""
    top = name.split(".", 1)[0]
    classifier = getattr(model, "classifier_name", "fc").split(".", 1)[0]
    return top == classifier or "aux" in top.lower()


def set_backbone_frozen(model: nn.Module, frozen: bool) -> int:
    """Freeze (or release) every parameter outside the heads; the number that train now."""
    for name, param in model.named_parameters():
        param.requires_grad_(not frozen or is_head(model, name))
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def freeze_backbone_norms(model: nn.Module) -> None:
    """Frozen layers keep their running statistics: their norm layers go to eval mode (call it
    after ``model.train()``)."""
    for name, module in model.named_modules():
        if name and not is_head(model, name) and isinstance(module, _NORMS):
            module.eval()


def frozen_norm_names(model: nn.Module) -> list[str]:
    """Norm layers whose parameters are all frozen (``requires_grad=False``, set by the user or
    by --freeze): they keep the running statistics they came with, in eval mode, as Keras'
    ``trainable = False`` does."""
    names = []
    for name, module in model.named_modules():
        params = list(module.parameters(recurse=False))
        if isinstance(module, _NORMS) and params and not any(p.requires_grad for p in params):
            names.append(name)
    return names
