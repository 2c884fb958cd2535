"""Your own data as a :class:`DataBundle`: NumPy arrays or tensors, a torch ``Dataset`` or a
``DataLoader``, laid out as Keras loads them or as PyTorch does.

Images may be ``(N, H, W)``, ``(N, H, W, C)`` (NHWC, Keras) or ``(N, C, H, W)`` (NCHW) with 1 or
3 channels; uint8 0-255 or float. Floats in [0, 1] (``x / 255.0``, ``ToTensor``) are scaled to
0-255; other floats (already normalised data) are kept as they are. Either way each channel is
then standardised with the training split's own mean and std, as named datasets are. Labels are
class indices or one-hot rows (Keras' ``to_categorical``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from cnnzoo.data.datasets import DataBundle, TensorSplit, channel_stats
from cnnzoo.data.splits import stratified_split
from cnnzoo.errors import UsageError

__all__ = ["as_images", "as_labels", "bundle_from_arrays", "load_data", "materialize"]

CHANNEL_COUNTS = (1, 3)


def _tensor(data: Any) -> torch.Tensor:
    """A tensor sharing ``data``'s memory where it can (read-only arrays are copied)."""
    if isinstance(data, torch.Tensor):
        return data
    return torch.as_tensor(np.require(np.asarray(data), requirements="W"))


def as_images(x: Any, what: str = "x") -> torch.Tensor:
    """Images as (N, C, H, W): uint8, or float32 in 0-255 units (see the module docstring)."""
    images = _tensor(x)
    if images.dtype == torch.bool:
        images = images.to(torch.uint8) * 255
    if images.ndim == 3:
        images = images.unsqueeze(1)
    if images.ndim != 4:
        raise UsageError(f"{what}: expected images shaped (N, H, W), (N, H, W, C) or "
                         f"(N, C, H, W); got {tuple(images.shape)}")  # fmt: skip
    last, second = images.shape[-1], images.shape[1]
    if last in CHANNEL_COUNTS and second not in CHANNEL_COUNTS:
        images = images.permute(0, 3, 1, 2)  # NHWC, as Keras loads images
    elif second not in CHANNEL_COUNTS:
        raise UsageError(
            f"{what}: cannot tell the channel axis of shape {tuple(images.shape)}; give 1 or 3 "
            "channels first (N, C, H, W) or last (N, H, W, C)"
        )
    if images.dtype == torch.uint8:
        return images.contiguous()
    images = images.float()
    if images.numel() and not bool(torch.isfinite(images).all()):
        raise UsageError(f"{what}: the images contain NaN or infinite values")
    unit_range = images.numel() == 0 or (float(images.min()) >= 0 and float(images.max()) <= 1)
    return (images * 255 if unit_range else images).contiguous()


def as_labels(y: Any, n: int, what: str = "y") -> torch.Tensor:
    """Class indices (N,) int64 from indices or one-hot rows."""
    labels = _tensor(y)
    if labels.ndim == 2 and labels.shape[1] > 1:
        labels = labels.argmax(1)  # one-hot (Keras' to_categorical)
    labels = labels.reshape(-1)
    if labels.is_floating_point():
        if not bool((labels == labels.round()).all()):
            raise UsageError(f"{what}: labels must be class indices or one-hot rows")
    labels = labels.long()
    if len(labels) != n:
        raise UsageError(f"{what}: {len(labels)} labels for {n} images")
    if len(labels) and int(labels.min()) < 0:
        raise UsageError(f"{what}: labels must be >= 0, got {int(labels.min())}")
    return labels


def materialize(data: Any, what: str = "x") -> tuple[torch.Tensor, torch.Tensor]:
    """(images, labels) from a map-style ``Dataset`` or a ``DataLoader`` of (image, label)
    pairs or batches; PIL images, arrays and tensors are all read."""
    from torch.utils.data import DataLoader

    images: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    batched = isinstance(data, DataLoader) and data.batch_size is not None
    for item in data:
        if not isinstance(item, (tuple, list)) or len(item) < 2:
            raise UsageError(f"{what}: expected (image, label) items, got {type(item).__name__}")
        image, label = item[0], item[1]
        image = _pil_to_tensor(image)
        images.append(torch.as_tensor(np.asarray(image) if not torch.is_tensor(image) else image))
        labels.append(torch.as_tensor(label).reshape(-1))
    if not images:
        raise UsageError(f"{what}: the dataset is empty")
    stacked = torch.cat(images) if batched else torch.stack(images)
    return stacked, torch.cat(labels)


def _pil_to_tensor(image: Any) -> Any:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - pillow is a dependency
        return image
    if not isinstance(image, Image.Image):
        return image
    array = torch.from_numpy(np.array(image))
    return array.unsqueeze(0) if array.ndim == 2 else array.permute(2, 0, 1)


def _split_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if images.dtype == torch.uint8:
        return channel_stats(images)
    values = images.double().transpose(0, 1).reshape(images.shape[1], -1) / 255
    return tuple(values.mean(1).tolist()), tuple(values.std(1, unbiased=False).tolist())


def _pair(x: Any, y: Any, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    if y is None:
        if isinstance(x, (np.ndarray, torch.Tensor)):
            raise UsageError(f"{what}: images given without labels (y)")
        x, y = materialize(x, what)
    images = as_images(x, what)
    return images, as_labels(y, len(images), what)


def bundle_from_arrays(
    x: Any,
    y: Any = None,
    *,
    validation_split: float | None = None,
    validation_data: Sequence[Any] | None = None,
    test_data: Sequence[Any] | None = None,
    class_names: Sequence[str] | None = None,
    seed: int = 0,
    name: str = "arrays",
) -> DataBundle:
    """A DataBundle over ``(x, y)`` (or a Dataset / DataLoader as ``x``).

    ``validation_data=(x_val, y_val)`` is the validation split; else ``validation_split`` holds
    out a stratified, seeded fraction of the training data (as ``--val-split`` does; Keras takes
    the last samples instead). ``test_data`` is scored at the end of training when given.
    """
    images, labels = _pair(x, y, "x")
    if len(images) == 0:
        raise UsageError("x: no images")
    val = None
    if validation_data is not None:
        if validation_split:
            raise UsageError("give validation_data or validation_split, not both")
        val = TensorSplit(*_pair(*_unpack(validation_data), "validation_data"))
    elif validation_split:
        if not 0 < validation_split < 1:
            raise UsageError(f"validation_split must be in (0, 1), got {validation_split}")
        keep, held = stratified_split(labels.numpy(), validation_split, seed)
        index_keep, index_held = torch.from_numpy(keep), torch.from_numpy(held)
        val = TensorSplit(images[index_held].contiguous(), labels[index_held].contiguous())
        images, labels = images[index_keep].contiguous(), labels[index_keep].contiguous()
    test = (TensorSplit(*_pair(*_unpack(test_data), "test_data")) if test_data is not None
            else TensorSplit(images[:0], labels[:0]))  # fmt: skip
    for split_name, split in (("validation_data", val), ("test_data", test)):
        if split is not None and len(split) and split.images.shape[1:] != images.shape[1:]:
            raise UsageError(f"{split_name}: images of shape {tuple(split.images.shape[1:])}, "
                             f"training images {tuple(images.shape[1:])}")  # fmt: skip
    num_classes = max(int(t.labels.max()) + 1 for t in (TensorSplit(images, labels), val, test)
                      if t is not None and len(t))  # fmt: skip
    names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
    if len(names) < num_classes:
        raise UsageError(f"{len(names)} class names for labels up to {num_classes - 1}")
    mean, std = _split_stats(images)
    return DataBundle(
        name=name, class_names=names, channels=int(images.shape[1]),
        image_size=(int(images.shape[2]), int(images.shape[3])), mean=mean, std=std,
        train=TensorSplit(images, labels), val=val, test=test, augment="none",
        source="arrays given to cnnzoo.fit",
    )  # fmt: skip


def _unpack(pair: Sequence[Any] | Any) -> tuple[Any, Any]:
    """(x, y) from a pair, or (dataset, None) from a Dataset / DataLoader."""
    if isinstance(pair, (tuple, list)) and len(pair) == 2:
        return pair[0], pair[1]
    return pair, None


def load_data(
    name: str, *, data_dir: str | None = None, download: bool = False
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """``(x_train, y_train), (x_test, y_test)`` as NumPy arrays, as Keras' ``load_data()``
    returns them: uint8 images (N, H, W) for grey sets and (N, H, W, 3) for colour ones, and
    integer labels. ``name`` is any dataset :func:`~cnnzoo.data.load_dataset` knows; nothing
    is downloaded unless ``download`` is set."""
    from cnnzoo.data.datasets import load_dataset

    bundle = load_dataset(name, data_dir=data_dir, download=download, val_split=0)
    if not bundle.in_memory:
        raise UsageError(f"load_data reads in-memory datasets, not {name}")

    def keras(split: Any) -> tuple[np.ndarray, np.ndarray]:
        images = split.images.permute(0, 2, 3, 1)
        images = images[..., 0] if images.shape[-1] == 1 else images
        return images.numpy(), split.labels.numpy()

    return keras(bundle.train), keras(bundle.test)
