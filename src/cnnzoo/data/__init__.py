"""Datasets by name, image folders and fast batch loaders (``load_dataset``, ``make_loader``)."""

from cnnzoo.data.arrays import load_data
from cnnzoo.data.datasets import (
    DataBundle,
    FileSplit,
    Split,
    TensorSplit,
    channel_stats,
    dataset_names,
    default_download_root,
    load_dataset,
)
from cnnzoo.data.folder import DataWarning, iter_image_files, load_image_folder, read_image
from cnnzoo.data.idx import read_idx
from cnnzoo.data.loader import BatchLoader, make_loader
from cnnzoo.data.splits import stratified_split

__all__ = [
    "BatchLoader",
    "DataBundle",
    "DataWarning",
    "FileSplit",
    "Split",
    "TensorSplit",
    "channel_stats",
    "dataset_names",
    "default_download_root",
    "iter_image_files",
    "load_data",
    "load_dataset",
    "load_image_folder",
    "make_loader",
    "read_idx",
    "read_image",
    "stratified_split",
]
