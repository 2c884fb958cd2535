"""Image folders: one sub-folder per class (``PATH/cat``, ``PATH/dog``), or ``PATH/train``,
``PATH/val``, ``PATH/test`` each holding class sub-folders.

Without predefined parts the folder is split by ``split`` (ratios or counts, e.g. (400, 92, 10))
or, by default, into 10 % test, ``val_split`` validation and the rest train; the test part is
cut with a fixed seed so it never moves with ``seed``. With a ``train/`` folder, a missing
``val/`` or ``test/`` is carved from train the same way.

Every file is checked cheaply (its image header) at load time; unreadable and non-image files
are skipped with one warning that counts them. Images are decoded by PIL, converted (grayscale,
RGBA and palette with transparency composited on white, CMYK, 16-bit) to RGB, or to grey when
every image in the folder is grey.
"""

from __future__ import annotations

import os
import re
import stat
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps

from cnnzoo.data.bundle import DataBundle, FileSplit
from cnnzoo.data.splits import split_counts, stratified_order
from cnnzoo.errors import DataError, UsageError

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)
GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
DEFAULT_IMAGE_SIZE = 224
DEFAULT_TEST_FRACTION = 0.1
TEST_SEED = 0
STATS_SAMPLE = 32  # images decoded to estimate the train split's mean/std
_VAL_DIRS = ("val", "valid", "validation")
# Decoding a 12000x12000 photo takes 1.4 GB; nothing cnnzoo trains on needs more than this.
MAX_IMAGE_PIXELS = int(os.environ.get("CNNZOO_MAX_IMAGE_PIXELS", 64_000_000))


class DataWarning(UserWarning):
    """Something in the data was skipped or substituted; training goes on."""


def _is_hidden(name: str) -> bool:
    return name.startswith(".") or name.startswith("__")


class ImageTooLargeError(DataError):
    """An image whose header claims more pixels than allowed; it was not decoded."""


def read_image(
    path: str | Path, channels: int = 3, *, draft_size: int | None = None
) -> torch.Tensor:
    """Decode an image file to a uint8 tensor (channels, H, W).

    Grayscale is repeated to RGB (or RGB averaged to grey, ITU-R 601 weights), transparency is
    composited on white, CMYK and palette images are converted, 16-bit images are scaled to 8
    bits, and the EXIF orientation is applied. ``draft_size`` lets JPEG decoding shrink the
    image (by powers of two, never below that side), which is much faster for big photos.
    """
    check_regular_file(path)
    return image_tensor(decode_image(path, channels, name=str(path), draft_size=draft_size))


def image_tensor(array: np.ndarray) -> torch.Tensor:
    """A decoded (H, W) or (H, W, C) uint8 array as the (C, H, W) tensor models read."""
    tensor = torch.from_numpy(array.copy())
    return tensor.unsqueeze(0) if tensor.ndim == 2 else tensor.permute(2, 0, 1).contiguous()


def decode_image(
    source: str | Path | BinaryIO,
    channels: int = 3,
    *,
    name: str = "image",
    max_pixels: int | None = None,
    formats: Sequence[str] | None = None,
    draft_size: int | None = None,
) -> np.ndarray:
    """:func:`read_image`'s decoding, for a file or a binary stream (an upload held in memory),
    to a uint8 (H, W) or (H, W, C) array: no torch call, so any thread may run it.

    The pixel count is read from the header and checked against ``max_pixels`` (default
    ``CNNZOO_MAX_IMAGE_PIXELS``) before anything is decoded: :class:`ImageTooLargeError`.
    ``formats`` limits the decoders PIL tries (e.g. ``("PNG", "JPEG")``). Any other failure is
    a :class:`DataError` that starts with ``name``.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    limit = MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    limit_text = (
        f"{limit / 1e6:.0f}-megapixel limit (set CNNZOO_MAX_IMAGE_PIXELS to raise it)"
        if max_pixels is None
        else f"limit of {limit:,} pixels"
    )
    try:
        with warnings.catch_warnings():
            # PIL only warns below twice its own limit; cnnzoo's limit is checked just below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(source, formats=formats)
        with img:
            width, height = img.size
            if width * height > limit:
                raise ImageTooLargeError(
                    f"{name}: {width}x{height} pixels is more than the {limit_text}; not decoded"
                )
            if draft_size is not None and img.format == "JPEG":
                img.draft("L" if channels == 1 else "RGB", (draft_size, draft_size))
            img = ImageOps.exif_transpose(img)
            array = np.asarray(_convert(img, channels))
    except Image.DecompressionBombError as exc:  # PIL's own ceiling, met while opening
        claimed = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(claimed.group(1)):,} pixels" if claimed else "the image"
        raise ImageTooLargeError(
            f"{name}: {size} is more than the {limit_text}; not decoded"
        ) from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise DataError(f"{name}: not a readable image ({exc})") from exc
    return array


def check_regular_file(path: str | Path) -> None:
    """A DataError unless ``path`` is a regular file (a FIFO or a device would block or never
    end; a missing file and a folder get their own words)."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise DataError(f"{path}: no such image file ({exc.strerror})") from exc
    if stat.S_ISDIR(mode):
        raise DataError(f"{path} is a directory, not an image file")
    if not stat.S_ISREG(mode):
        raise DataError(f"{path} is not a regular file (a pipe, socket or device); not read")


def printable_name(name: str) -> str:
    """A file or folder name as text that can be printed, plotted and saved: bytes that are not
    UTF-8 (kept by Python as surrogates) are shown escaped, e.g. ``caf\\xe9``."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _convert(img: Image.Image, channels: int) -> Image.Image:
    mode = img.mode
    if mode.startswith("I") or mode == "F":
        values = np.asarray(img, dtype=np.float64)
        # 16-bit files arrive as I;16 or I (0..65535); F is taken to be 8-bit-ranged already.
        if mode != "F" and values.max(initial=0) > 255:
            values = values / 257.0
        img = Image.fromarray(np.round(values).clip(0, 255).astype(np.uint8), mode="L")
    elif mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba).convert("RGB")
    target = "L" if channels == 1 else "RGB"
    return img if img.mode == target else img.convert(target)


def _probe(path: Path) -> str | None:
    """The image mode from the file's header, or None when it is not a readable image."""
    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        return None
    try:
        check_regular_file(path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
        with img:
            width, height = img.size
            fits = 0 < width * height <= MAX_IMAGE_PIXELS
            return img.mode if fits else None
    except Exception:  # PIL raises many types for garbage; every one means "skip it"
        return None


def _class_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not _is_hidden(p.name))


def _files_under(directory: Path) -> list[Path]:
    return sorted(
        p
        for p in directory.rglob("*")
        if p.is_file() and not any(_is_hidden(part) for part in p.relative_to(directory).parts)
    )


class _Scan:
    """Images found under class folders, with what was skipped (for one warning in the end)."""

    def __init__(self) -> None:
        self.skipped: list[Path] = []
        self.modes: set[str] = set()

    def scan(self, root: Path, classes: list[str]) -> FileSplit:
        index = {name: i for i, name in enumerate(classes)}
        files: list[tuple[Path, int]] = []
        for class_dir in _class_dirs(root):
            if class_dir.name not in index:
                raise DataError(
                    f"{class_dir}: class {class_dir.name!r} does not exist in the train folder "
                    f"(classes: {', '.join(classes)})"
                )
            files += [(p, index[class_dir.name]) for p in _files_under(class_dir)]
        with ThreadPoolExecutor(max_workers=8) as pool:
            modes = list(pool.map(_probe, [p for p, _ in files]))
        paths, labels = [], []
        for (path, label), mode in zip(files, modes, strict=True):
            if mode is None:
                self.skipped.append(path)
            else:
                self.modes.add(mode)
                paths.append(path)
                labels.append(label)
        return FileSplit(paths, labels)

    def warn(self) -> None:
        if self.skipped:
            examples = ", ".join(str(p) for p in self.skipped[:3])
            more = ", ..." if len(self.skipped) > 3 else ""
            warnings.warn(
                f"skipped {len(self.skipped)} file(s) that are not readable images "
                f"({examples}{more})",
                DataWarning,
                stacklevel=3,
            )


def _take(split: FileSplit, idx: np.ndarray) -> FileSplit:
    return FileSplit([split.paths[i] for i in idx], [split.labels[i] for i in idx])


def _carve(
    pool: FileSplit, n_val: int, n_test: int, n_train: int | None, seed: int
) -> tuple[FileSplit, FileSplit, FileSplit]:
    """Stratified (train, val, test) from one pool; test uses a fixed seed, val uses ``seed``."""
    order = stratified_order(pool.labels, TEST_SEED)
    test_idx, rest = np.sort(order[:n_test]), np.sort(order[n_test:])
    rest_split = _take(pool, rest)
    order = stratified_order(rest_split.labels, seed)
    end = len(order) if n_train is None else n_val + n_train
    val_idx, train_idx = np.sort(order[:n_val]), np.sort(order[n_val:end])
    return _take(rest_split, train_idx), _take(rest_split, val_idx), _take(pool, test_idx)


def _sample_stats(
    split: FileSplit, channels: int, size: int, seed: int
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean/std of up to STATS_SAMPLE seeded train images, decoded about as big as training
    sees them (a much smaller decode would average texture away and understate the std)."""
    rng = np.random.default_rng(seed)
    picks = rng.permutation(len(split))[:STATS_SAMPLE]

    def decode(i: int) -> torch.Tensor | None:
        try:
            return read_image(split.paths[i], channels, draft_size=size)
        except DataError:
            return None

    total = torch.zeros(channels, dtype=torch.float64)
    squares = torch.zeros(channels, dtype=torch.float64)
    count = 0
    with ThreadPoolExecutor(max_workers=4) as pool:  # PIL decodes without holding the GIL
        for image in pool.map(decode, picks.tolist()):
            if image is None:
                continue
            x = image.to(torch.float64) / 255
            total += x.sum(dim=(1, 2))
            squares += (x * x).sum(dim=(1, 2))
            count += x.shape[1] * x.shape[2]
    if count == 0:
        return (0.5,) * channels, (0.25,) * channels
    mean = total / count
    std = (squares / count - mean * mean).clamp_min(1e-12).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())


def load_image_folder(
    path: str | Path,
    *,
    val_split: float = 0.1,
    split: Sequence[float] | Sequence[int] | None = None,
    image_size: int | None = None,
    seed: int = 0,
) -> DataBundle:
    """A DataBundle of FileSplits for an image folder (layouts in the module docstring)."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist or is not a directory")
    if not 0.0 <= val_split < 1.0:
        raise UsageError(f"val_split must be in [0, 1), got {val_split}")
    scan = _Scan()
    train_dir = root / "train"
    presplit = train_dir.is_dir() and bool(_class_dirs(train_dir))
    top = train_dir if presplit else root
    classes = [d.name for d in _class_dirs(top)]
    pool = scan.scan(top, classes)

    # Empty class folders would be classes the model can never learn: drop them, and say so.
    present = sorted(set(pool.labels))
    if len(present) != len(classes):
        dropped = [printable_name(c) for i, c in enumerate(classes) if i not in set(present)]
        warnings.warn(
            f"{printable_name(str(top))}: class folder(s) {', '.join(dropped)} hold no readable "
            f"image; training on the other {len(present)} classes",
            DataWarning,
            stacklevel=2,
        )
        remap = {old: new for new, old in enumerate(present)}
        classes = [classes[i] for i in present]
        pool = FileSplit(pool.paths, [remap[label] for label in pool.labels])
    if not pool.paths:
        scan.warn()
        raise DataError(
            f"no images found in {top} (expected one sub-folder of images per class, "
            f"e.g. {top}/cat/1.jpg, {top}/dog/1.jpg)"
        )
    if len(classes) < 2:
        scan.warn()
        raise DataError(
            f"{top} has a single class ({classes[0]!r}); a classifier needs at least two "
            "class sub-folders"
        )

    val: FileSplit | None = None
    test: FileSplit | None = None
    if presplit:
        val_dir = next((root / n for n in _VAL_DIRS if (root / n).is_dir()), None)
        if val_dir is not None and _class_dirs(val_dir):
            val = scan.scan(val_dir, classes)
        if (root / "test").is_dir() and _class_dirs(root / "test"):
            test = scan.scan(root / "test", classes)
        n_val = 0 if val is not None else int(round(val_split * len(pool)))
        n_test = 0 if test is not None else int(round(DEFAULT_TEST_FRACTION * len(pool)))
        train, carved_val, carved_test = _carve(pool, n_val, n_test, None, seed)
        val = val if val is not None else carved_val
        test = test if test is not None else carved_test
    else:
        if split is None:
            split = (1.0 - val_split - DEFAULT_TEST_FRACTION, val_split, DEFAULT_TEST_FRACTION)
        n_train, n_val, n_test = split_counts(len(pool), split)
        train, val, test = _carve(pool, n_val, n_test, n_train, seed)
    scan.warn()
    _check_split_sizes(root, train, val, test, val_split if split is None else split)

    channels = 1 if scan.modes and scan.modes <= GREY_MODES else 3
    return folder_bundle(root, [printable_name(c) for c in classes],
                         {"train": train, "val": val, "test": test}, channels=channels,
                         image_size=image_size, seed=seed)  # fmt: skip


def folder_bundle(
    root: Path,
    class_names: list[str],
    splits: dict[str, FileSplit | None],
    *,
    channels: int,
    image_size: int | None = None,
    seed: int = 0,
) -> DataBundle:
    """The DataBundle of an image folder already split into ``splits`` (train, val, test): a
    fresh split by :func:`load_image_folder`, or the one a run recorded."""
    size = image_size or DEFAULT_IMAGE_SIZE
    train, val = splits["train"] or FileSplit([], []), splits.get("val")
    mean, std = _sample_stats(train, channels, size, seed)
    return DataBundle(
        name=f"imagefolder:{root}",
        class_names=class_names,
        channels=channels,
        image_size=(size, size),
        mean=mean,
        std=std,
        train=train,
        val=val if val is not None and len(val) else None,
        test=splits.get("test") or FileSplit([], []),
        augment="rrc",
        source=str(root),
        file_sizes=_file_sizes(train),
    )


def _file_sizes(split: FileSplit, sample: int = STATS_SAMPLE) -> tuple[tuple[int, int], ...]:
    """(width, height) of up to ``sample`` files spread over the split, read off their headers:
    what the images are, for messages (the bundle's image_size is the side they are decoded at)."""
    step = max(1, len(split.paths) // sample)
    sizes = []
    for path in split.paths[::step][:sample]:
        try:
            with Image.open(path) as img:
                sizes.append((int(img.size[0]), int(img.size[1])))
        except Exception:  # unreadable now: it says nothing about the others
            continue
    return tuple(sizes)


def folder_changes(root: Path, known: set[Path]) -> tuple[list[Path], list[Path]]:
    """(images added to the folder's class folders, files of ``known`` now missing): how an
    image folder differs from what a run recorded. Only new files are probed, so this costs a
    directory listing."""
    root = Path(root)
    train_dir = root / "train"
    presplit = train_dir.is_dir() and bool(_class_dirs(train_dir))
    tops = [train_dir, *(root / n for n in (*_VAL_DIRS, "test"))] if presplit else [root]
    present: set[Path] = set()
    for top in tops:
        if top.is_dir():
            for class_dir in _class_dirs(top):
                present.update(_files_under(class_dir))
    added = sorted(path for path in present - known if _probe(path) is not None)
    missing = sorted(path for path in known if path not in present)
    return added, missing


def _check_split_sizes(
    root: Path,
    train: FileSplit,
    val: FileSplit | None,
    test: FileSplit | None,
    asked: float | Sequence[float] | Sequence[int],
) -> None:
    """Fail before any training when a split the run needs came out empty."""
    sizes = {"train": len(train), "val": len(val) if val else 0, "test": len(test) if test else 0}
    if isinstance(asked, (int, float)):  # --val-split, with the default 10 % test part
        wanted = {"train": True, "val": asked > 0, "test": True}
    else:  # explicit (train, val, test) ratios or counts: a 0 asks for no such split
        wanted = {name: part > 0 for name, part in zip(sizes, asked, strict=False)}
    empty = [name for name, size in sizes.items() if size == 0 and wanted.get(name, False)]
    if empty:
        total = sum(sizes.values())
        counts = ", ".join(f"{k} {v}" for k, v in sizes.items())
        raise DataError(
            f"{printable_name(str(root))}: {total} images are too few for the split ({counts}): "
            f"the {' and '.join(empty)} split would be empty; add images, or give --split "
            "counts / --val-split 0"
        )


def iter_image_files(directory: str | Path) -> list[tuple[Path, str | None]]:
    """Image files (by extension) under ``directory``, sorted, each with its class: the name of
    its first-level sub-folder, or None for files directly in ``directory``."""
    directory = Path(directory).expanduser()
    if not directory.is_dir():
        raise DataError(f"{directory} is not a directory")
    found = []
    for path in _files_under(directory):
        if path.suffix.lower() in IMAGE_EXTENSIONS:
            parts = path.relative_to(directory).parts
            found.append((path, printable_name(parts[0]) if len(parts) > 1 else None))
    return found
