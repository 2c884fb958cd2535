"""Sample images for the page, all from what is installed (nothing is downloaded):
scikit-learn's two photos, and test images of Fashion-MNIST (when Debian's package or
``$CNNZOO_DATA`` has it) and of scikit-learn's digits, for the models trained on them."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from importlib import resources

import numpy as np

from cnnzoo.explorer.render import png_bytes

log = logging.getLogger(__name__)

PER_DATASET = 10  # one test image per class


@dataclass(frozen=True)
class Sample:
    id: str
    title: str
    group: str  # "photos", "fashion_mnist", "digits"
    label: str | None  # the true class, for test images
    media_type: str
    data: bytes

    def to_dict(self) -> dict[str, str | None]:
        return {
            "id": self.id,
            "title": self.title,
            "group": self.group,
            "label": self.label,
            "url": f"/explorer/api/samples/{self.id}",
        }


GROUP_TITLES = {
    "photos": "Photos (scikit-learn)",
    "fashion_mnist": "Fashion-MNIST test images",
    "digits": "Digits test images (scikit-learn)",
}


def _photos() -> list[Sample]:
    folder = resources.files("sklearn.datasets") / "images"
    found = []
    for name in ("china.jpg", "flower.jpg"):
        path = folder / name
        if path.is_file():
            title = {"china.jpg": "a temple in China", "flower.jpg": "a flower"}[name]
            found.append(
                Sample(f"photo-{name[:-4]}", title, "photos", None, "image/jpeg", path.read_bytes())
            )
    return found


def _test_images(dataset: str) -> list[Sample]:
    from cnnzoo.data.datasets import load_dataset

    try:
        bundle = load_dataset(dataset, val_split=0)
    except Exception as exc:  # a missing dataset only means fewer samples
        log.info("no %s samples: %s", dataset, exc)
        return []
    images, labels = bundle.test.images, bundle.test.labels.numpy()
    found = []
    for label, name in enumerate(bundle.class_names[:PER_DATASET]):
        index = int(np.flatnonzero(labels == label)[0])
        found.append(
            Sample(
                f"{dataset}-{index}",
                f"test image {index}: {name}",
                dataset,
                name,
                "image/png",
                png_bytes(images[index, 0].numpy()),
            )
        )
    return found


@functools.cache
def samples() -> dict[str, Sample]:
    """Every sample by id (read once per process)."""
    found = _photos() + _test_images("fashion_mnist") + _test_images("digits")
    return {sample.id: sample for sample in found}
