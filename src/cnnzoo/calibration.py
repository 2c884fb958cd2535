"""The images a source is quantized with: by default a class-balanced sample of its own training
data, prepared exactly as its evaluation prepares images (the loaders ``cnnzoo evaluate`` uses,
or the source's own transform for a folder of image files).

``--calibration`` may name another dataset, ``imagefolder:DIR`` or a plain folder of images; a
named dataset whose images have another channel count or size than the source's own data is
refused, since quantization ranges measured on other images do not fit the ones it will see.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cnnzoo.errors import DataError, UsageError
from cnnzoo.inference import InferenceModel
from cnnzoo.quantize import DEFAULT_SAMPLES, MIN_SAMPLES

__all__ = ["VALIDATION_SAMPLES", "CalibrationData", "calibration_data"]

# Labelled images the int8 accuracy is measured on before the test split (and each layer's
# cost by --sensitivity): the source's validation split, else training images not calibrated on.
VALIDATION_SAMPLES = 2000


@dataclass
class CalibrationData:
    images: torch.Tensor  # model inputs, normalised as at inference (N, C, H, W)
    labels: torch.Tensor | None
    validation: tuple[torch.Tensor, torch.Tensor] | None  # labelled, disjoint from ``images``
    spec: str  # what was named: a dataset, imagefolder:DIR or a folder
    description: str  # one line for the user


def calibration_data(
    loaded: InferenceModel,
    spec: str | None = None,
    *,
    samples: int = DEFAULT_SAMPLES,
    validation_samples: int = VALIDATION_SAMPLES,
    data_dir: str | None = None,
) -> CalibrationData:
    """``samples`` calibration images for ``loaded`` from ``spec`` (default: its own training
    data) and, for a labelled dataset, up to ``validation_samples`` validation images."""
    if samples < MIN_SAMPLES:
        raise UsageError(
            f"--samples: calibration needs at least {MIN_SAMPLES} images "
            f"(default {DEFAULT_SAMPLES}), got {samples}"
        )
    own = loaded.dataset
    spec = spec or own
    if not spec:
        raise UsageError(
            f"{loaded.description}: no training data is known to calibrate on; pass "
            "--calibration DATASET, imagefolder:DIR or DIR (a folder of images like those it "
            "will see)"
        )
    folder = Path(spec).expanduser()
    if not spec.startswith("imagefolder:") and folder.is_dir():
        return _from_folder(loaded, folder, samples)
    if not spec.startswith("imagefolder:") and (folder.exists() or "/" in spec):
        raise UsageError(f"--calibration {spec}: not a folder of images nor a dataset name")
    return _from_dataset(loaded, spec, own, samples, validation_samples, data_dir)


def _too_few(what: str, found: int) -> UsageError:
    return UsageError(
        f"{what} has {found} images; calibration needs at least {MIN_SAMPLES} "
        f"({DEFAULT_SAMPLES} by default)"
    )


def _from_folder(loaded: InferenceModel, folder: Path, samples: int) -> CalibrationData:
    """Image files under ``folder`` (any layout), through the source's own transform."""
    from cnnzoo.data.folder import iter_image_files, read_image

    files = [path for path, _ in iter_image_files(folder)]
    if len(files) < MIN_SAMPLES:
        raise _too_few(f"--calibration {folder}", len(files))
    order = np.random.default_rng(0).permutation(len(files))
    images, skipped = [], 0
    for index in order:
        if len(images) == samples:
            break
        try:
            image = read_image(files[index], loaded.channels)
        except DataError:
            skipped += 1
            continue
        images.append(loaded.preprocess(image))
    if skipped:
        warnings.warn(f"{skipped} unreadable images in {folder} skipped", stacklevel=2)
    if len(images) < MIN_SAMPLES:
        raise _too_few(f"--calibration {folder} (readable)", len(images))
    return CalibrationData(
        images=torch.stack(images).float(),
        labels=None,
        validation=None,
        spec=str(folder),
        description=f"{len(images)} images from {folder}",
    )


def _from_dataset(
    loaded: InferenceModel,
    spec: str,
    own: str | None,
    samples: int,
    validation_samples: int,
    data_dir: str | None,
) -> CalibrationData:
    from cnnzoo.data import load_dataset, make_loader
    from cnnzoo.data.bundle import FileSplit, TensorSplit
    from cnnzoo.data.datasets import canonical_name
    from cnnzoo.data.splits import stratified_order

    config = loaded.config
    is_own = own is not None and _same_dataset(spec, own)
    bundle = load_dataset(
        spec,
        data_dir=data_dir or (config.get("data_dir") if is_own else None),
        val_split=float(config.get("val_split", 0.1)) if is_own else 0.1,
        seed=int(config.get("seed", 0)),
    )
    if not is_own:
        _check_fits(loaded, spec, bundle)
    train = bundle.train
    if len(train) < MIN_SAMPLES:
        raise _too_few(f"--calibration {spec} (training split)", len(train))
    order = stratified_order(np.asarray(_labels(train)), seed=0)
    chosen, rest = order[:samples], order[samples:]

    def subset(split: TensorSplit | FileSplit, index: np.ndarray) -> TensorSplit | FileSplit:
        index = np.sort(index)
        if isinstance(split, TensorSplit):
            picked = torch.from_numpy(index)
            return TensorSplit(split.images[picked], split.labels[picked])
        return FileSplit([split.paths[i] for i in index], [split.labels[i] for i in index])

    def prepared(split: TensorSplit | FileSplit) -> tuple[torch.Tensor, torch.Tensor]:
        side = loaded.input_size[0]
        loader = make_loader(
            dataclasses.replace(bundle, train=split),
            "train",
            batch_size=256,
            image_size=side if (side, side) != tuple(bundle.image_size) else None,
            mean=loaded.mean,
            std=loaded.std,
            channels=loaded.channels,
        )
        xs, ys = zip(*loader, strict=True)
        return torch.cat(xs).float(), torch.cat(ys)

    images, labels = prepared(subset(train, chosen))
    validation = None
    if validation_samples > 0:
        held_out = bundle.val
        if held_out is not None and len(held_out) > 0:
            picked = stratified_order(np.asarray(_labels(held_out)), seed=0)
            validation = prepared(subset(held_out, picked[:validation_samples]))
        elif len(rest) > 0:
            validation = prepared(subset(train, rest[:validation_samples]))
    if not is_own:
        validation = None  # another dataset's labels say nothing about this model's classes
        labels = None
    name = canonical_name(spec) if not spec.startswith("imagefolder:") else spec
    return CalibrationData(
        images=images,
        labels=labels,
        validation=validation,
        spec=name,
        description=f"{len(images)} class-balanced images of {name}'s training split",
    )


def _labels(split: object) -> list[int] | torch.Tensor:
    labels = split.labels  # type: ignore[attr-defined]
    return labels.numpy() if isinstance(labels, torch.Tensor) else labels


def _same_dataset(spec: str, own: str) -> bool:
    from cnnzoo.data.datasets import canonical_name

    if spec.startswith("imagefolder:") or own.startswith("imagefolder:"):
        return spec == own
    try:
        return canonical_name(spec) == canonical_name(own)
    except UsageError:
        return False


def _check_fits(loaded: InferenceModel, spec: str, bundle: object) -> None:
    """Another named dataset must look like the source's own data: its channels and size."""
    if not getattr(bundle, "in_memory", False):
        return  # image files go through resizing and channel conversion, as at inference
    channels = int(bundle.channels)  # type: ignore[attr-defined]
    if channels != loaded.channels:
        raise UsageError(
            f"--calibration {spec}: its images have {channels} channel(s), "
            f"{loaded.description} takes {loaded.channels}; calibrate on images like its own"
        )
    size = tuple(bundle.image_size)  # type: ignore[attr-defined]
    config = loaded.config
    stored = config.get("stored_image_size") or (config.get("data") or {}).get("stored_image_size")
    fits = {tuple(loaded.input_size)} | ({tuple(stored)} if stored else set())
    if size not in fits:
        wanted = " or ".join("x".join(map(str, s)) for s in sorted(fits))
        raise UsageError(
            f"--calibration {spec}: its images are {'x'.join(map(str, size))}, "
            f"{loaded.description} was trained on {wanted}; calibrate on images like its own"
        )
