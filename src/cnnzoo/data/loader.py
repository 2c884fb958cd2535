"""Batch loaders: pure tensor ops for in-memory sets, DataLoader workers for image folders.

Both yield ``(x, y)``: x float32 (B, C, H, W) normalised on ``device``, y int64 (B,). An epoch's
order and augmentation depend only on (seed, epoch, rank), so ``set_epoch`` makes runs
repeatable. DDP: every rank draws the same permutation, pads it by wrapping to a multiple of
``world_size`` and takes ``indices[rank::world_size]``.
"""

from __future__ import annotations

import functools
import math
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from cnnzoo.data.augment import (
    convert_channels,
    random_crop,
    random_erasing,
    random_flip,
    random_resized_crop,
    resize,
)
from cnnzoo.data.datasets import DataBundle, FileSplit, TensorSplit
from cnnzoo.data.folder import DataWarning, read_image
from cnnzoo.data.transforms import FOLDER_CROP_FRACTION, eval_geometry, normalizer
from cnnzoo.errors import DataError, UsageError
from cnnzoo.registry import fit_channel_stats

AUGMENTS = ("none", "flip", "crop", "crop_flip", "rrc", "auto")


def _mix(*values: int) -> int:
    """A 63-bit seed from integers (stable across runs, unlike hash() of strings)."""
    state = 0x2545F4914F6CDD1D
    for value in values:
        state = (state * 6364136223846793005 + int(value) + 1442695040888963407) % (1 << 63)
    return state


def _generator(*values: int) -> torch.Generator:
    return torch.Generator().manual_seed(_mix(*values))


def default_crop_padding(height: int, width: int) -> int:
    """4 pixels for 28/32-pixel images (the ResNet CIFAR recipe), one eighth for smaller ones."""
    side = min(height, width)
    return 4 if side >= 24 else max(1, side // 8)


@contextmanager
def _one_thread(device: torch.device) -> Iterator[None]:
    """Run batch preparation on one CPU thread, then restore the caller's setting.

    Preparing a batch is a chain of small ops (~100 k elements each); splitting them across
    OpenMP threads costs more in barriers than it saves, and on a busy 2-core machine it
    measured ~20x more CPU time (Fashion-MNIST epoch: 2.2 s vs 0.1 s without augmentation).
    """
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class BatchLoader:
    """Iterable of normalised (x, y) batches for one split; see the module docstring."""

    def __init__(
        self,
        bundle: DataBundle,
        split: str,
        *,
        batch_size: int,
        train: bool,
        augment: str,
        image_size: int | None,
        mean: Sequence[float] | None,
        std: Sequence[float] | None,
        channels: int | None,
        device: torch.device | str,
        seed: int,
        rank: int,
        world_size: int,
        drop_last: bool,
        channels_last: bool,
        random_erasing: float = 0.0,
    ) -> None:
        if batch_size < 1:
            raise UsageError(f"batch_size must be positive, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise UsageError(f"rank {rank} is not in a world of size {world_size}")
        if augment not in AUGMENTS:
            raise UsageError(f"unknown augment {augment!r}; choose from {', '.join(AUGMENTS)}")
        if not 0 <= random_erasing <= 1:
            raise UsageError(f"random-erasing must be in [0, 1], got {random_erasing}")
        if channels not in (None, 1, 3):
            raise UsageError(f"channels must be 1 or 3, got {channels}")
        self.bundle = bundle
        self.split_name = split
        self.split = bundle.get_split(split)
        self.batch_size = batch_size
        self.shuffle = train
        self.augment = "none" if not train else (bundle.augment if augment == "auto" else augment)
        self.channels = channels or bundle.channels
        self.device = torch.device(device)
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self.channels_last = channels_last
        self.erase_p = random_erasing if train else 0.0
        self.epoch = 0
        self.output_size = (image_size, image_size) if image_size else None
        self._scale, self._shift = self._normaliser(mean, std)

        per_rank = math.ceil(len(self.split) / world_size)
        self._batches = per_rank // batch_size if drop_last else math.ceil(per_rank / batch_size)
        self.num_samples = self._batches * batch_size if drop_last else per_rank

    def _normaliser(
        self, mean: Sequence[float] | None, std: Sequence[float] | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x_uint8 * scale + shift == (x / 255 - mean) / std, per channel."""
        if (mean is None) != (std is None):
            raise UsageError("give both mean and std, or neither")
        if mean is None or std is None:
            mean, std = fit_channel_stats(self.bundle.mean, self.bundle.std, self.channels)
            return normalizer(mean, std, self.device)
        if len(mean) != self.channels or len(std) != self.channels:
            raise UsageError(
                f"mean/std have {len(mean)}/{len(std)} values for {self.channels} channels"
            )
        return normalizer(mean, std, self.device)

    def __len__(self) -> int:
        return self._batches

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose shuffle and augmentation the next iteration uses."""
        self.epoch = int(epoch)

    def epoch_indices(self) -> torch.Tensor:
        """The sample indices this rank visits in the current epoch, in order."""
        n = len(self.split)
        if self.shuffle:
            order = torch.randperm(n, generator=_generator(self.seed, self.epoch))
        else:
            order = torch.arange(n)
        total = math.ceil(n / self.world_size) * self.world_size
        if total > n:
            order = torch.cat([order, order.repeat(math.ceil((total - n) / n))[: total - n]])
        order = order[self.rank :: self.world_size]
        if self.drop_last:
            order = order[: self._batches * self.batch_size]
        return order

    def _erasing_generator(self) -> torch.Generator:
        return _generator(self.seed, self.epoch, self.rank, 3)

    def _finish(self, x: torch.Tensor, erasing: torch.Generator) -> torch.Tensor:
        """uint8 or float [0, 255] batch on device -> resized, channel-converted, normalised
        (then randomly erased, on a training loader asked to)."""
        x = x.float()
        if self.output_size is not None:
            x = resize(x, self.output_size)
        x = convert_channels(x, self.channels)
        x = x * self._scale + self._shift
        if self.erase_p > 0:
            x = random_erasing(x, erasing, self.erase_p)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        raise NotImplementedError

    def images_for_display(self, indices: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """Un-normalised uint8 images (B, C, H, W) of this split, without augmentation."""
        raise NotImplementedError


class TensorBatchLoader(BatchLoader):
    """In-memory split: gather a batch with one index op and augment it on tensors."""

    def __init__(self, bundle: DataBundle, split: str, *, crop_padding: int | None, **kw) -> None:
        super().__init__(bundle, split, **kw)
        assert isinstance(self.split, TensorSplit)
        self.images = self.split.images.to(self.device)
        self.labels = self.split.labels.to(self.device)
        h, w = self.images.shape[-2:]
        self.crop_padding = default_crop_padding(h, w) if crop_padding is None else crop_padding
        if self.crop_padding < 0:
            raise UsageError(f"crop padding must not be negative, got {crop_padding}")

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self.epoch_indices().to(self.device)
        augment = _generator(self.seed, self.epoch, self.rank, 1)
        erasing = self._erasing_generator()
        for batch in order.split(self.batch_size):
            with _one_thread(self.device):
                x = self.images[batch]
                if self.augment in ("crop", "crop_flip"):
                    x = random_crop(x, self.crop_padding, augment)
                if self.augment in ("flip", "crop_flip"):
                    x = random_flip(x, augment)
                if self.augment == "rrc":
                    size = self.output_size or (x.shape[-2], x.shape[-1])
                    x = random_resized_crop(x.float(), size, augment)
                x, y = self._finish(x, erasing), self.labels[batch]
            yield x, y

    def images_for_display(self, indices: Sequence[int] | torch.Tensor) -> torch.Tensor:
        index = torch.as_tensor(indices, dtype=torch.int64)
        return self.split.images[index].clone()  # type: ignore[union-attr]


# --- image folders ----------------------------------------------------------------------------


def folder_transform(augment: str, size: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """uint8 image tensor -> (C, size, size): torchvision v2 augmentation for training, and the
    one evaluation transform (the 0.875 centre crop, in float) otherwise."""
    if augment == "rrc":
        return v2.Compose([v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip()])
    if augment == "none":
        return functools.partial(eval_geometry, size=size, crop_fraction=FOLDER_CROP_FRACTION)
    if augment in ("crop", "crop_flip"):
        steps: list[v2.Transform] = [
            v2.Resize(size, antialias=True),
            v2.RandomCrop(size, padding=max(1, size // 8)),
        ]
    else:  # "flip": the evaluation crop, flipped
        steps = [v2.Resize(round(size / FOLDER_CROP_FRACTION), antialias=True), v2.CenterCrop(size)]
    if augment in ("flip", "crop_flip"):
        steps.append(v2.RandomHorizontalFlip())
    return v2.Compose(steps)


class _FolderDataset(Dataset):
    """Decodes one file; a file that fails is replaced by a blank image flagged as bad."""

    def __init__(self, split: FileSplit, channels: int, size: int, augment: str) -> None:
        self.paths, self.labels = split.paths, split.labels
        self.channels, self.size = channels, size
        self.transform = folder_transform(augment, size)
        self.seed = 0  # set per epoch; every sample's randomness derives from (seed, index)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, bool]:
        ok = True
        try:
            image = read_image(self.paths[index], self.channels, draft_size=self.size)
        except DataError:
            image, ok = torch.zeros(self.channels, self.size, self.size, dtype=torch.uint8), False
        # Seeding per sample makes augmentation independent of worker count and scheduling.
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(_mix(self.seed, index))
            image = self.transform(image)
        return image, self.labels[index], ok


def fork_safe_workers(num_workers: int) -> int:
    """``num_workers``, or 0 (decode in this process) once OpenVINO is loaded here: its thread
    pool does not survive fork, and forked DataLoader workers then crashed the parent process
    (a segfault in about half of the test runs that used OpenVINO before an image folder)."""
    if num_workers and "openvino" in sys.modules:
        if not _warned_openvino_fork:
            _warned_openvino_fork.append(True)
            warnings.warn(
                "OpenVINO is loaded in this process, which does not survive fork: image files "
                "are decoded in this process instead of DataLoader workers",
                DataWarning,
                stacklevel=3,
            )
        return 0
    return num_workers


_warned_openvino_fork: list[bool] = []


class FolderBatchLoader(BatchLoader):
    """Image-folder split: decode with PIL and transforms v2 in DataLoader workers."""

    def __init__(self, bundle: DataBundle, split: str, *, num_workers: int | None, **kw) -> None:
        super().__init__(bundle, split, **kw)
        assert isinstance(self.split, FileSplit)
        size = self.output_size[0] if self.output_size else bundle.image_size[0]
        self.output_size = None  # decoding already produces the requested size
        self.dataset = _FolderDataset(self.split, self.channels, size, self.augment)
        self._display = _FolderDataset(self.split, self.channels, size, "none")
        self.num_workers = min(4, os.cpu_count() or 1) if num_workers is None else num_workers
        self.bad_samples = 0  # files that failed to decode, over all epochs

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.dataset.seed = _mix(self.seed, self.epoch, self.rank, 2)
        loader = DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            sampler=self.epoch_indices().tolist(),
            num_workers=fork_safe_workers(self.num_workers),
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
        )
        bad = 0
        erasing = self._erasing_generator()
        last_good: tuple[torch.Tensor, torch.Tensor] | None = None
        try:
            for images, labels, ok in loader:
                if not bool(ok.all()):
                    bad += int((~ok).sum())
                    images, labels = images[ok], labels[ok]
                if len(labels) == 0:
                    # Every rank must take the same number of steps (DDP would hang waiting for
                    # this one): a batch with no readable image is replaced by the last good one.
                    images, labels = last_good or self._readable_batch()
                last_good = images, labels
                images = images.to(self.device, non_blocking=True)
                with _one_thread(self.device):
                    x = self._finish(images, erasing)
                yield x, labels.to(self.device, non_blocking=True)
        finally:  # also when the consumer stops early (the trainer leaves on its last step)
            if bad:
                self.bad_samples += bad
                warnings.warn(
                    f"{bad} image(s) of {self.bundle.name} failed to decode this epoch; "
                    "skipped them",
                    DataWarning,
                    stacklevel=2,
                )

    def _readable_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One readable image of the split as a batch (when the first batch had none)."""
        for index in range(len(self.dataset)):
            image, label, ok = self._display[index]
            if ok:
                return image[None], torch.tensor([label])
        raise DataError(f"none of the images of {self.bundle.name} can be decoded")

    def images_for_display(self, indices: Sequence[int] | torch.Tensor) -> torch.Tensor:
        index = torch.as_tensor(indices, dtype=torch.int64).tolist()
        images = torch.stack([self._display[i][0] for i in index])
        return images.round().clamp(0, 255).to(torch.uint8)


def make_loader(
    bundle: DataBundle,
    split: str,
    *,
    batch_size: int,
    train: bool = False,
    augment: str = "auto",
    image_size: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    channels: int | None = None,
    device: torch.device | str = "cpu",
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    drop_last: bool = False,
    num_workers: int | None = None,
    channels_last: bool = False,
    crop_padding: int | None = None,
    random_erasing: float = 0.0,
) -> BatchLoader:
    """A loader for ``bundle``'s ``split``; ``train=True`` shuffles and augments.

    ``augment``: none | flip | crop (zero-padded random crop) | crop_flip | rrc (random-resized
    crop + flip) | auto (the bundle's default). ``image_size`` resizes batches (bilinear, no
    antialias when enlarging); ``channels`` converts grey <-> RGB; ``mean``/``std`` default to
    the bundle's train statistics. ``crop_padding`` defaults to 4 (one eighth below 24 px).
    ``random_erasing``: the probability that a training image gets a random-erasing box.
    """
    common = dict(
        batch_size=batch_size,
        train=train,
        augment=augment,
        image_size=image_size,
        mean=mean,
        std=std,
        channels=channels,
        device=device,
        seed=seed,
        rank=rank,
        world_size=world_size,
        drop_last=drop_last,
        channels_last=channels_last,
        random_erasing=random_erasing,
    )
    if bundle.in_memory:
        return TensorBatchLoader(bundle, split, crop_padding=crop_padding, **common)
    return FolderBatchLoader(bundle, split, num_workers=num_workers, **common)
