"""Datasets by name: where their files are looked up, how they are read, how they are split.

Look-up order for every named set (the first directory that has all the files wins):

1. ``data_dir`` (the ``--data-dir`` option),
2. ``$CNNZOO_DATA``,
3. the Debian package location (``/usr/share/datasets/fashion-mnist`` from
   ``dataset-fashion-mnist``; Debian packages no MNIST or CIFAR),
4. ``~/.cache/cnnzoo`` (where ``download=True`` puts files when neither of the first two is set),
5. ``./data`` (the ``root="data"`` of the torchvision tutorials).

In each directory both torchvision's layout (``FashionMNIST/raw/*``, ``MNIST/raw/*``,
``cifar-10-batches-py/``, ``cifar-100-python/``) and a flat one (the files directly in it) are
accepted; IDX files may be gzipped or not. Nothing is downloaded unless ``download=True``.

``digits`` is scikit-learn's 8x8 digits (1,797 images; values 0..16 scaled to 0..255). It has
no official test split, so a fixed stratified 20 % (seed ``DIGITS_TEST_SEED``, independent of
``seed``) is the test set; ``seed`` only moves the validation split.
"""

from __future__ import annotations

import difflib
import functools
import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnzoo.data.bundle import DataBundle, FileSplit, Split, TensorSplit
from cnnzoo.data.folder import load_image_folder
from cnnzoo.data.idx import read_idx_pair
from cnnzoo.data.splits import partition, stratified_split
from cnnzoo.errors import DataError, UsageError

DIGITS_TEST_FRACTION = 0.2
DIGITS_TEST_SEED = 0
SYSTEM_DATA_DIR = Path("/usr/share/datasets")


# --- where each named set lives ---------------------------------------------------------------


@dataclass(frozen=True)
class DatasetEntry:
    """What the registry knows about one named dataset: how to find its files and read them."""

    name: str
    title: str
    # (directory holding the files, or None for a set that comes with a package)
    # -> (train, test, class names)
    read: Callable[[Path | None], tuple[TensorSplit, TensorSplit, list[str]]]
    augment: str  # the training augmentation make_loader(augment="auto") uses
    aliases: tuple[str, ...] = ()
    files: tuple[str, ...] = ()  # what must be present (IDX names without ".gz"); () = no files
    layouts: tuple[str, ...] = ()  # sub-directories (torchvision's first) tried in every root
    torchvision_class: str | None = None  # what --download uses
    apt_package: str | None = None
    system_dir: str | None = None


_DATASETS: dict[str, DatasetEntry] = {}


def register_dataset(entry: DatasetEntry) -> DatasetEntry:
    """Make ``entry`` loadable by its name and aliases (`load_dataset`, `--dataset`)."""
    if entry.name in _DATASETS:
        raise RuntimeError(f"dataset {entry.name!r} registered twice")
    _DATASETS[entry.name] = entry
    return entry


_IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
FASHION_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip


def dataset_names() -> list[str]:
    """Names load_dataset accepts (besides ``imagefolder:PATH``)."""
    return list(_DATASETS)


def default_download_root(data_dir: str | Path | None = None) -> Path:
    """Where ``download=True`` writes: data_dir, else $CNNZOO_DATA, else ~/.cache/cnnzoo."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    env = os.environ.get("CNNZOO_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "cnnzoo"


def _roots(source: DatasetEntry, data_dir: str | Path | None) -> list[Path]:
    roots: list[Path] = []
    if data_dir is not None:
        roots.append(Path(data_dir).expanduser())
    if os.environ.get("CNNZOO_DATA"):
        roots.append(Path(os.environ["CNNZOO_DATA"]).expanduser())
    if source.system_dir:
        roots.append(SYSTEM_DATA_DIR / source.system_dir)
    roots += [Path.home() / ".cache" / "cnnzoo", Path("data")]
    return roots


def _candidates(source: DatasetEntry, data_dir: str | Path | None) -> list[Path]:
    dirs: list[Path] = []
    for root in _roots(source, data_dir):
        for sub in (*source.layouts, ""):
            candidate = root / sub if sub else root
            if candidate not in dirs:
                dirs.append(candidate)
    return dirs


def _file(directory: Path, name: str) -> Path | None:
    for candidate in (directory / f"{name}.gz", directory / name):
        if candidate.is_file():
            return candidate
    return None


def _locate(source: DatasetEntry, data_dir: str | Path | None) -> Path | None:
    for directory in _candidates(source, data_dir):
        if all(_file(directory, name) is not None for name in source.files):
            return directory
    return None


def _missing_message(source: DatasetEntry, data_dir: str | Path | None) -> str:
    looked = ", ".join(str(r) for r in _roots(source, data_dir))
    target = default_download_root(data_dir)
    ways = []
    if source.apt_package:
        ways.append(f"install it with `sudo apt-get install {source.apt_package}`")
    if source.torchvision_class:
        ways.append("pass --download (load_dataset(..., download=True))")
    if source.files == _IDX_FILES:
        files = ", ".join(f"{n}.gz" for n in _IDX_FILES)
        ways.append(f"or put {files} in {target}/{source.layouts[0]}")
    else:
        ways.append(
            f"or unpack the python version of the archive so that {target}/{source.layouts[0]}/"
            f"{source.files[0]} exists"
        )
    return f"{source.title} not found (looked in {looked}); " + ", ".join(ways)


def _download(source: DatasetEntry, data_dir: str | Path | None) -> None:
    import torchvision.datasets as tvd

    root = default_download_root(data_dir)
    root.mkdir(parents=True, exist_ok=True)
    dataset_class = getattr(tvd, source.torchvision_class)
    try:
        for train in (True, False):
            dataset_class(str(root), train=train, download=True)
    except Exception as exc:  # network errors come in many types; all mean the same here
        raise DataError(f"downloading {source.title} into {root} failed: {exc}") from exc


# --- readers ----------------------------------------------------------------------------------


def _read_mnist_like(
    directory: Path, class_names: tuple[str, ...]
) -> tuple[TensorSplit, TensorSplit, list[str]]:
    def read(prefix: str) -> TensorSplit:
        images, labels = read_idx_pair(
            _file(directory, f"{prefix}-images-idx3-ubyte"),  # type: ignore[arg-type]
            _file(directory, f"{prefix}-labels-idx1-ubyte"),  # type: ignore[arg-type]
        )
        return TensorSplit(
            torch.from_numpy(images.copy()).unsqueeze(1).contiguous(),
            torch.from_numpy(labels.astype(np.int64)),
        )

    return read("train"), read("t10k"), list(class_names)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only: a pickle naming any other global
    (the way pickles run code) is refused, so a planted data file cannot execute anything."""

    def find_class(self, module: str, name: str) -> Any:
        allowed = _allowed_globals()
        if (module, name) not in allowed:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")
        return allowed[(module, name)]


def _allowed_globals() -> dict[tuple[str, str], Any]:
    import codecs

    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 2
        from numpy.core import multiarray  # type: ignore[no-redef]
    table: dict[tuple[str, str], Any] = {("_codecs", "encode"): codecs.encode}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        table[(module, "_reconstruct")] = multiarray._reconstruct
        table[(module, "scalar")] = multiarray.scalar
    table[("numpy", "ndarray")] = np.ndarray
    table[("numpy", "dtype")] = np.dtype
    return table


def load_pickle(path: Path) -> Any:
    """Load a CIFAR python batch (a Python 2 pickle of lists and numpy arrays), safely."""
    try:
        with open(path, "rb") as handle:
            return _ArrayUnpickler(handle, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise DataError(f"{path}: not a readable CIFAR batch ({exc})") from exc


def _cifar_split(paths: list[Path], label_key: str) -> TensorSplit:
    images, labels = [], []
    for path in paths:
        batch = load_pickle(path)
        try:
            data = np.asarray(batch["data"], dtype=np.uint8)
            images.append(data.reshape(len(data), 3, 32, 32))
            labels.append(np.asarray(batch[label_key], dtype=np.int64))
        except (KeyError, ValueError, TypeError) as exc:
            raise DataError(f"{path}: unexpected CIFAR batch contents ({exc})") from exc
        if len(images[-1]) != len(labels[-1]):
            raise DataError(f"{path}: {len(images[-1])} images but {len(labels[-1])} labels")
    return TensorSplit(
        torch.from_numpy(np.concatenate(images)).contiguous(),
        torch.from_numpy(np.concatenate(labels)),
    )


def _read_cifar10(directory: Path) -> tuple[TensorSplit, TensorSplit, list[str]]:
    train = _cifar_split([directory / f"data_batch_{i}" for i in range(1, 6)], "labels")
    test = _cifar_split([directory / "test_batch"], "labels")
    names = list(CIFAR10_CLASSES)
    if (directory / "batches.meta").is_file():
        names = [str(n) for n in load_pickle(directory / "batches.meta")["label_names"]]
    return train, test, names


def _read_cifar100(directory: Path) -> tuple[TensorSplit, TensorSplit, list[str]]:
    train = _cifar_split([directory / "train"], "fine_labels")
    test = _cifar_split([directory / "test"], "fine_labels")
    names = [str(i) for i in range(100)]
    if (directory / "meta").is_file():
        names = [str(n) for n in load_pickle(directory / "meta")["fine_label_names"]]
    return train, test, names


def _read_digits(_: Path | None = None) -> tuple[TensorSplit, TensorSplit, list[str]]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise DataError(
            "the digits dataset comes with scikit-learn; install it with `pip install scikit-learn`"
        ) from exc
    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    labels = digits.target.astype(np.int64)
    n_test = int(round(DIGITS_TEST_FRACTION * len(labels)))
    train_idx, _, test_idx = partition(labels, (len(labels) - n_test, 0, n_test), DIGITS_TEST_SEED)

    def take(idx: np.ndarray) -> TensorSplit:
        return TensorSplit(
            torch.from_numpy(images[idx]).unsqueeze(1).contiguous(),
            torch.from_numpy(labels[idx]),
        )

    return take(train_idx), take(test_idx), [str(d) for d in range(10)]


# --- statistics and splitting -----------------------------------------------------------------


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images (N, C, H, W), in [0, 1] units.

    Computed exactly from a 256-bin histogram per channel (bincount reads uint8 directly,
    ~20x faster than summing a float copy of 47 M pixels).
    """
    values = torch.arange(256, dtype=torch.float64) / 255
    means, stds = [], []
    for c in range(images.shape[1]):
        counts = torch.bincount(images[:, c].reshape(-1), minlength=256).to(torch.float64)
        counts /= counts.sum()
        mean = float((counts * values).sum())
        var = float((counts * values * values).sum()) - mean * mean
        means.append(mean)
        stds.append(max(var, 0.0) ** 0.5)
    return tuple(means), tuple(stds)


def _subset(split: TensorSplit, idx: np.ndarray) -> TensorSplit:
    index = torch.from_numpy(idx)
    return TensorSplit(split.images[index].contiguous(), split.labels[index].contiguous())


def _bundle_in_memory(
    name: str,
    class_names: list[str],
    train: TensorSplit,
    test: TensorSplit,
    *,
    val_split: float,
    seed: int,
    augment: str,
    source: str,
) -> DataBundle:
    if not 0.0 <= val_split < 1.0:
        raise UsageError(f"val_split must be in [0, 1), got {val_split}")
    val = None
    if val_split > 0:
        keep, held = stratified_split(train.labels.numpy(), val_split, seed)
        train, val = _subset(train, keep), _subset(train, held)
    mean, std = channel_stats(train.images)
    return DataBundle(
        name=name,
        class_names=class_names,
        channels=int(train.images.shape[1]),
        image_size=(int(train.images.shape[2]), int(train.images.shape[3])),
        mean=mean,
        std=std,
        train=train,
        val=val,
        test=test,
        augment=augment,
        source=source,
    )


def _aliases() -> dict[str, str]:
    return {alias: entry.name for entry in _DATASETS.values() for alias in entry.aliases}


def canonical_name(spec: str) -> str:
    """The registered name for ``spec`` (aliases and case folded); UsageError when unknown."""
    aliases = _aliases()
    key = spec.strip().lower()
    key = aliases.get(key, key.replace("-", "_"))
    if key in _DATASETS:
        return key
    choices = dataset_names() + list(aliases)
    close = difflib.get_close_matches(key, choices, n=3, cutoff=0.5)
    close = list(dict.fromkeys(aliases.get(c, c) for c in close))
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    known = ", ".join(dataset_names())
    raise UsageError(f"unknown dataset {spec!r}{hint} (known: {known}, imagefolder:PATH)")


def load_dataset(
    spec: str,
    *,
    data_dir: str | Path | None = None,
    download: bool = False,
    val_split: float = 0.1,
    split: tuple[float, float, float] | tuple[int, int, int] | None = None,
    image_size: int | None = None,
    seed: int = 0,
) -> DataBundle:
    """Load a dataset by name (see the module docstring) or ``imagefolder:PATH``.

    ``val_split`` holds out a stratified, seeded fraction of train as validation (0: none).
    ``split`` and ``image_size`` apply to image folders only (see ``cnnzoo.data.folder``).
    """
    if spec.startswith("imagefolder:"):
        folder = spec.split(":", 1)[1]
        if not folder.strip():
            raise UsageError("imagefolder: needs the folder, e.g. --dataset imagefolder:photos")
        return load_image_folder(
            folder,
            val_split=val_split,
            split=split,
            image_size=image_size,
            seed=seed,
        )
    entry = _DATASETS[canonical_name(spec)]
    directory = None
    if entry.files:
        directory = _locate(entry, data_dir)
        if directory is None and download and entry.torchvision_class:
            _download(entry, data_dir)
            directory = _locate(entry, data_dir)
        if directory is None:
            raise DataError(_missing_message(entry, data_dir))
    train, test, class_names = entry.read(directory)
    return _bundle_in_memory(
        entry.name,
        class_names,
        train,
        test,
        val_split=val_split,
        seed=seed,
        augment=entry.augment,
        source=str(directory) if directory is not None else entry.title,
    )


register_dataset(
    DatasetEntry(
        "fashion_mnist",
        "Fashion-MNIST",
        functools.partial(_read_mnist_like, class_names=FASHION_CLASSES),
        augment="crop",
        aliases=("fashion-mnist", "fashionmnist", "fmnist"),
        files=_IDX_FILES,
        layouts=("FashionMNIST/raw", "fashion-mnist", "fashion_mnist"),
        torchvision_class="FashionMNIST",
        apt_package="dataset-fashion-mnist",
        system_dir="fashion-mnist",
    )
)
register_dataset(
    DatasetEntry(
        "mnist",
        "MNIST",
        functools.partial(_read_mnist_like, class_names=tuple(str(d) for d in range(10))),
        augment="crop",
        files=_IDX_FILES,
        layouts=("MNIST/raw", "mnist"),
        torchvision_class="MNIST",
    )
)
register_dataset(
    DatasetEntry(
        "cifar10",
        "CIFAR-10",
        _read_cifar10,
        augment="crop_flip",
        aliases=("cifar-10", "cifar_10"),
        files=tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",),
        layouts=("cifar-10-batches-py",),
        torchvision_class="CIFAR10",
    )
)
register_dataset(
    DatasetEntry(
        "cifar100",
        "CIFAR-100",
        _read_cifar100,
        augment="crop_flip",
        aliases=("cifar-100", "cifar_100"),
        files=("train", "test"),
        layouts=("cifar-100-python",),
        torchvision_class="CIFAR100",
    )
)
register_dataset(DatasetEntry("digits", "scikit-learn's digits", _read_digits, augment="crop"))


__all__ = [
    "DataBundle",
    "DatasetEntry",
    "FileSplit",
    "Split",
    "TensorSplit",
    "channel_stats",
    "dataset_names",
    "load_dataset",
    "register_dataset",
]
