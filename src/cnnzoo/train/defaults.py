"""The default recipe for a model on a dataset: one table, read top to bottom.

Every row whose model pattern and data pattern match applies, later rows overriding earlier
ones; a field the user set (not ``None``) always wins over the table. A row may name a shipped
recipe file (``cnnzoo/recipes/NAME.yaml``) instead of listing fields: its fields apply. Model
patterns are family names (``resnet_cifar``) or shell patterns over model names (``vgg1?``),
``|`` separating alternatives. Data patterns are dataset names or kinds of data: ``tiny``
(8-16 px, e.g. digits), ``small`` (17-64 px: MNIST, Fashion-MNIST, CIFAR) and ``photos``
(image folders, larger arrays).
Figures quoted beside the rows were measured by ``benchmarks/defaults.py`` and
``benchmarks/families.py`` (docs/guide/performance.md).
"""

from __future__ import annotations

import fnmatch
from typing import Any

__all__ = ["DEFAULTS", "OPTIMIZER_DEFAULTS", "TABLE_FIELDS", "data_kind", "default_recipe"]

# The optimizer's own defaults: (lr, weight decay), used when the user picks another optimizer
# than the table's row without giving an lr or weight decay.
OPTIMIZER_DEFAULTS = {"sgd": (0.1, 5e-4), "adam": (1e-3, 0.0), "adamw": (1e-3, 0.05)}

SGD = dict(optimizer="sgd", lr=0.1, nesterov=True, weight_decay=5e-4)

DEFAULTS: tuple[tuple[str, str, dict[str, Any] | str], ...] = (
    ("*", "*", dict(epochs=10, batch_size=128, optimizer="adamw", lr=1e-3, weight_decay=0.05,
                    nesterov=False, schedule="cosine", warmup_epochs=0.0, augment="auto",
                    label_smoothing=0.0, ema_decay=0.0, random_erasing=0.0)),
    # 1,437 training images: small batches give enough steps per epoch.
    ("*", "tiny", dict(batch_size=32, augment="none")),
    ("lenet", "tiny", dict(lr=3e-3)),
    # The time-to-accuracy recipe: 91 % on Fashion-MNIST in under a minute on 2 CPU cores.
    ("lenet", "fashion_mnist", "lenet5_fashion_mnist"),
    # That recipe trains on all 60,000 images; the default 10 % hold-out cost it 0.06 points
    # (90.94 % after 12 epochs, 34 s wall); 16 epochs win it back within the minute.
    ("lenet", "fashion_mnist", dict(epochs=16)),
    ("lenet", "mnist", dict(epochs=12, lr=3e-3, schedule="onecycle", label_smoothing=0.1,
                            ema_decay=0.998)),
    # He et al. 2016 trained the CIFAR nets with SGD 0.1; one-cycle reaches it in fewer epochs.
    ("resnet_cifar", "*", dict(**SGD, epochs=20, schedule="onecycle", label_smoothing=0.1)),
    ("resnet_cifar", "fashion_mnist|cifar10|cifar100", dict(augment="crop_flip")),
    ("resnet_cifar", "tiny", dict(epochs=10, lr=0.05)),
    # Without batch norm, 13-16 stacked convolutions need a gentle start (AdamW 1e-3 stays at
    # chance): Adam 1e-4 warmed up over an epoch.
    ("vgg11|vgg13|vgg16|vgg19", "*", dict(optimizer="adam", lr=1e-4, weight_decay=0.0,
                                         warmup_epochs=1.0)),
    ("alexnet*", "*", dict(optimizer="adam", lr=1e-4, weight_decay=0.0, warmup_epochs=1.0)),
    # Vision Transformers and ConvNeXt: their papers' recipe shape (AdamW, weight decay 0.05, a
    # linear warm-up, cosine decay, label smoothing 0.1), with ResNet-20's crop + flip and epoch
    # count so that the three compare on equal terms. The peak lrs are the best of those tried
    # on 5,000 Fashion-MNIST images for 8 epochs (ViT 1e-3, 2e-3, 3e-3; ConvNeXt 2e-3, 4e-3).
    ("vit|convnext", "*", dict(optimizer="adamw", weight_decay=0.05, schedule="cosine",
                               label_smoothing=0.1, epochs=20, warmup_epochs=2.0)),
    ("vit|convnext", "fashion_mnist|mnist|cifar10|cifar100", dict(augment="crop_flip")),
    ("vit", "*", dict(lr=2e-3)),
    ("convnext", "*", dict(lr=4e-3)),
)

# The fields the table decides (those left as None).
TABLE_FIELDS = tuple(DEFAULTS[0][2])  # type: ignore[arg-type]
# Recipe fields that say what to train, not how: a row's recipe does not set them.
SUBJECT = ("model", "dataset", "model_kwargs", "output_dir")


def data_kind(dataset: str | None, data: Any = None) -> str:
    """``tiny``, ``small`` or ``photos`` for a dataset name (or a DataBundle's image size)."""
    if data is not None:
        side = min(data.image_size)
    elif dataset is None or dataset.startswith("imagefolder:"):
        return "photos"
    else:
        side = {"digits": 8}.get(_canonical(dataset), 32)
    return "tiny" if side <= 16 else "small" if side <= 64 else "photos"


def _canonical(dataset: str) -> str:
    from cnnzoo.data.datasets import canonical_name

    try:
        return canonical_name(dataset)
    except Exception:  # an unknown name fails later, with the loader's message
        return dataset


def _family(model: str) -> str | None:
    from cnnzoo.registry import get_entry

    try:
        return get_entry(model).family
    except ValueError:
        return None


def _matches(pattern: str, *names: str | None) -> bool:
    return any(
        name is not None and (pattern == "*" or fnmatch.fnmatch(name, alternative))
        for alternative in pattern.split("|")
        for name in names
    )


def default_recipe(
    model: str, dataset: str | None, data: Any = None, optimizer: str | None = None
) -> dict[str, Any]:
    """The table's fields for ``model`` on ``dataset`` (or on ``data``, a DataBundle).

    With ``optimizer`` (the user's choice) different from the table's, the optimizer-dependent
    fields come from :data:`OPTIMIZER_DEFAULTS` instead.
    """
    family = _family(model)
    name = data.name if data is not None else _canonical(dataset) if dataset else None
    kind = data_kind(dataset, data)
    recipe: dict[str, Any] = {}
    for models, datas, fields in DEFAULTS:
        if _matches(models, model, family) and _matches(datas, name, kind):
            recipe.update(_recipe_fields(fields) if isinstance(fields, str) else fields)
    if optimizer is not None and optimizer != recipe["optimizer"]:
        lr, weight_decay = OPTIMIZER_DEFAULTS[optimizer]
        recipe.update(optimizer=optimizer, lr=lr, weight_decay=weight_decay, nesterov=False)
    return recipe


def _recipe_fields(name: str) -> dict[str, Any]:
    from cnnzoo.train.recipes import load_recipe

    return {k: v for k, v in load_recipe(name).items() if k not in SUBJECT}
