"""What a loaded dataset is: its splits (in memory or image files) and what a model and a loader
need to know about them. Readers of every kind (named sets, image folders, your own arrays)
produce a :class:`DataBundle`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from cnnzoo.errors import UsageError

__all__ = ["DataBundle", "FileSplit", "Split", "TensorSplit"]


@dataclass
class TensorSplit:
    """An in-memory split: uint8 images (N, C, H, W) and int64 labels (N,)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass
class FileSplit:
    """An image-folder split, decoded lazily by the loader."""

    paths: list[Path]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.paths)


Split = TensorSplit | FileSplit


@dataclass
class DataBundle:
    """A dataset's splits plus what a model and a loader need to know about them."""

    name: str
    class_names: list[str]
    channels: int
    image_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    train: Split
    val: Split | None
    test: Split
    augment: str = "crop"  # what make_loader(augment="auto") uses for this set
    source: str = ""  # where the files were found, for messages
    # Image folders: (width, height) of a sample of the files, which image_size (the side they
    # are decoded at) does not tell.
    file_sizes: tuple[tuple[int, int], ...] = ()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def in_memory(self) -> bool:
        return isinstance(self.train, TensorSplit)

    def get_split(self, split: str) -> Split:
        if split not in ("train", "val", "test"):
            raise UsageError(f"unknown split {split!r}; choose train, val or test")
        found = getattr(self, split)
        if found is None:
            raise UsageError(f"{self.name} has no {split} split (val_split was 0)")
        return found
