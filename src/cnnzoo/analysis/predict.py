"""Classify image files with any loaded model (:func:`cnnzoo.inference.load_model`): decode,
prepare each image exactly as the model's weights expect, batch, softmax, top-k."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from cnnzoo.errors import CnnzooError, DataError

if TYPE_CHECKING:
    from cnnzoo.inference import InferenceModel

__all__ = ["Prediction", "collect_images", "iter_predictions", "predict_images"]

def _one_line(exc: BaseException, limit: int = 300) -> str:
    """Exception text on one line: state-dict errors list every key over many lines."""
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def collect_images(inputs: Iterable[str | Path]) -> list[tuple[Path, str | None]]:
    """(image file, folder label) for the files named and for every image under the folders named.

    Under a folder the label is the file's first-level sub-folder (``DIR/cat/x.png`` -> cat);
    a file named directly is labelled by its parent folder. A missing path is an error, and
    finding no image at all is a :class:`DataError`.
    """
    from cnnzoo.data.folder import check_regular_file, iter_image_files, printable_name

    inputs = list(inputs)
    found: list[tuple[Path, str | None]] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found.extend(iter_image_files(path))
        elif path.exists() or path.is_symlink():
            check_regular_file(path)  # a FIFO or device is named as such, not "missing"
            found.append((path, printable_name(path.parent.name) or None))
        else:
            raise CnnzooError(f"{path}: no such image file or directory")
    if not found:
        raise DataError(f"no image files found in {', '.join(map(str, inputs))}")
    return found


@dataclass
class Prediction:
    """The top-k classes of one image; ``true_*`` come from its folder name when it is a class."""

    path: Path
    indices: list[int]
    labels: list[str]
    probs: list[float]
    true_index: int | None = None
    true_label: str | None = None
    probabilities: torch.Tensor = field(default_factory=lambda: torch.empty(0), repr=False)
    image: torch.Tensor | None = field(default=None, repr=False)  # uint8 (C, H, W) as fed
    cam: torch.Tensor | None = field(default=None, repr=False)  # (H, W) Grad-CAM in [0, 1]

    @property
    def correct(self) -> bool | None:
        return None if self.true_index is None else self.indices[0] == self.true_index


def iter_predictions(
    loaded: InferenceModel,
    paths: Sequence[str | Path],
    topk: int = 5,
    batch_size: int = 64,
    device: torch.device | str | None = None,
    keep_images: bool = True,
    folder_labels: Sequence[str | None] | None = None,
    cam: bool = False,
    images: Sequence[torch.Tensor] | None = None,
) -> Iterator[Prediction]:
    """Classify image files a batch at a time, as they are decoded (memory stays bounded).

    Each image is decoded to the model's channels and prepared by ``loaded.preprocess`` (the
    run's evaluation transform, or the weights' own ``transforms()``). An image whose folder label
    (``folder_labels[i]``, by default its parent folder's name) is one of the class names gets
    that class as its true label. Images that cannot be decoded are skipped with a
    :class:`UserWarning`; when none can be read the result is a :class:`DataError`.
    ``keep_images`` stores the image the model saw, as uint8, in each prediction (for plots);
    ``cam`` also its Grad-CAM map for the top class (at the deepest feature stage).
    ``images``: uint8 (C, H, W) images already decoded (an in-memory dataset's), one per entry
    of ``paths``, which then only names them.
    """
    from cnnzoo.analysis.explain import gradcam_maps
    from cnnzoo.analysis.metrics import class_logits
    from cnnzoo.data import read_image

    if not paths:
        raise DataError("no images to classify")
    if topk < 1:
        raise ValueError(f"topk must be at least 1, got {topk}")
    model, names = loaded.model, loaded.class_names
    if device is None:  # an ONNX graph has no parameters: it runs on the CPU
        parameters = model.parameters() if isinstance(model, torch.nn.Module) else iter(())
        device = next((p.device for p in parameters), torch.device("cpu"))
    device = torch.device(device)
    if folder_labels is None:
        folder_labels = [Path(p).parent.name for p in paths]
    elif len(folder_labels) != len(paths):
        raise ValueError("folder_labels must have one entry per path")
    if images is not None and len(images) != len(paths):
        raise ValueError("images must have one entry per path")

    def prepare(index: int) -> torch.Tensor | None:
        path = Path(paths[index])
        try:
            if images is not None:
                return loaded.preprocess(images[index])
            return loaded.preprocess(read_image(path, loaded.channels))
        except Exception as exc:  # any decoder failure means "skip this file", not "stop"
            reason = _one_line(exc)
            if not reason.startswith(str(path)):
                reason = f"{path}: {reason}"
            warnings.warn(f"skipped {reason}", UserWarning, stacklevel=3)
            return None

    model.eval()
    produced = 0
    for start in range(0, len(paths), batch_size):
        prepared, kept = [], []
        for index in range(start, min(start + batch_size, len(paths))):
            image = prepare(index)
            if image is not None:
                prepared.append(image)
                kept.append((Path(paths[index]), folder_labels[index]))
        if not prepared:
            continue
        batch = torch.stack(prepared).to(device)
        with torch.inference_mode():
            output = model(batch)
        probs = F.softmax(class_logits(output).float(), dim=1).cpu()
        shown = loaded.shown(batch) if keep_images else None
        top_p, top_i = probs.topk(min(topk, probs.shape[1]), dim=1)
        heats = gradcam_maps(model, batch, top_i[:, 0].tolist()).cpu() if cam else None
        for row, (path, folder) in enumerate(kept):
            indices = top_i[row].tolist()
            true_index = names.index(folder) if folder in names else None
            produced += 1
            yield Prediction(
                path=path,
                indices=indices,
                labels=[names[i] if i < len(names) else str(i) for i in indices],
                probs=top_p[row].tolist(),
                true_index=true_index,
                true_label=folder if true_index is not None else None,
                probabilities=probs[row].clone(),
                image=shown[row] if shown is not None else None,
                cam=heats[row] if heats is not None else None,
            )
    if not produced:
        raise DataError(f"none of the {len(paths)} images could be read")


def predict_images(loaded: InferenceModel, paths: Sequence[str | Path], **options: Any) -> list:
    """:func:`iter_predictions` as a list."""
    return list(iter_predictions(loaded, paths, **options))
