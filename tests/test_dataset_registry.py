"""Datasets are registered like models: one entry per set, and load_dataset reads it by name."""

from __future__ import annotations

import pytest
import torch

from cnnzoo.data import datasets as datasets_module
from cnnzoo.data import load_dataset
from cnnzoo.data.datasets import DatasetEntry, TensorSplit, dataset_names, register_dataset
from cnnzoo.errors import UsageError


def test_a_registered_dataset_loads_by_name_and_alias(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets_module, "_DATASETS", dict(datasets_module._DATASETS))
    generator = torch.Generator().manual_seed(0)

    def read(directory):
        assert directory is None  # no files to look for
        images = torch.randint(0, 256, (40, 1, 6, 6), dtype=torch.uint8, generator=generator)
        labels = torch.arange(40) % 4
        return TensorSplit(images, labels), TensorSplit(images[:8], labels[:8]), list("abcd")

    register_dataset(DatasetEntry("squares", "Squares", read, augment="flip", aliases=("sq",)))
    assert "squares" in dataset_names()
    bundle = load_dataset("SQ", val_split=0.25)
    assert bundle.name == "squares" and bundle.class_names == ["a", "b", "c", "d"]
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (30, 10, 8)
    assert bundle.augment == "flip" and bundle.channels == 1 and bundle.image_size == (6, 6)
    with pytest.raises(RuntimeError, match="registered twice"):
        register_dataset(DatasetEntry("squares", "Squares", read, augment="flip"))
    with pytest.raises(UsageError, match=r"did you mean 'squares'.*known: .*squares"):
        load_dataset("squres")


def test_the_built_in_sets_are_all_registered() -> None:
    assert dataset_names() == ["fashion_mnist", "mnist", "cifar10", "cifar100", "digits"]
    assert load_dataset("digits").num_classes == 10
