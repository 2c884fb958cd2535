"""Load a trained run and classify image files with it.

A run directory (written by ``cnnzoo train``) holds ``config.json`` (model name and kwargs, class
names, input size, normalisation) beside ``best.safetensors`` / ``last.safetensors``; that is all
:func:`load_run` needs to rebuild the network and :func:`predict_images` to preprocess new images
exactly as the training data was.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from cnnzoo.errors import CnnzooError, DataError, WeightsError
from cnnzoo.models.base import ZooModel
from cnnzoo.weights import load_weights

if TYPE_CHECKING:
    from cnnzoo.inference import InferenceModel

__all__ = [
    "Prediction",
    "class_names_of",
    "collect_images",
    "input_size_of",
    "iter_predictions",
    "load_run",
    "normalization_of",
    "predict_images",
    "resolve_run",
]

CHECKPOINT_NAMES = ("best.safetensors", "last.safetensors")


def _one_line(exc: BaseException, limit: int = 300) -> str:
    """Exception text on one line: state-dict errors list every key over many lines."""
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def resolve_run(run_or_checkpoint: str | Path) -> tuple[Path, Path]:
    """(run directory, checkpoint file) for a run directory or a checkpoint inside one.

    A directory gives its ``best.safetensors``, else its ``last.safetensors``.
    """
    path = Path(run_or_checkpoint)
    if not path.exists():
        raise CnnzooError(f"{path}: no such run directory or checkpoint file")
    if path.is_dir():
        for name in CHECKPOINT_NAMES:
            if (path / name).is_file():
                return path, path / name
        raise WeightsError(f"{path}: no {' or '.join(CHECKPOINT_NAMES)} in this run directory")
    return path.parent, path


def _read_config(run_dir: Path) -> dict[str, Any]:
    config_path = run_dir / "config.json"
    if not config_path.is_file():
        raise CnnzooError(
            f"{run_dir}: no config.json, so this is not a run directory written by `cnnzoo train`"
        )
    try:
        config = json.loads(config_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CnnzooError(f"{config_path}: unreadable run config ({_one_line(exc)})") from exc
    if not isinstance(config, dict) or not isinstance(config.get("model"), str):
        raise CnnzooError(f"{config_path}: the run config names no model")
    return config


def _model_kwargs(config: dict[str, Any]) -> dict[str, Any]:
    kwargs = dict(config.get("model_kwargs") or {})
    # Builder options the trainer may record at the top level instead of under model_kwargs.
    for key in ("small_input",):
        if config.get(key) is not None:
            kwargs.setdefault(key, config[key])
    return kwargs


# What predict/evaluate need to know about a run besides the TrainConfig fields; the trainer may
# keep them at the top level of config.json or in a nested "data" section.
_RUN_FACTS = ("num_classes", "in_chans", "class_names", "mean", "std", "image_size")


def _checkpoint_shapes(checkpoint: Path) -> dict[str, list[int]]:
    from safetensors import safe_open

    try:
        with safe_open(str(checkpoint), framework="pt") as handle:
            return {key: list(handle.get_slice(key).get_shape()) for key in handle.keys()}
    except Exception as exc:
        raise WeightsError(
            f"{checkpoint}: not a readable safetensors file (truncated or another format?): "
            f"{_one_line(exc)}"
        ) from exc


def _fill_run_facts(config: dict[str, Any], checkpoint: Path) -> dict[str, Any]:
    """The config with num_classes and in_chans always set (read off the checkpoint if needed)."""
    config = dict(config)
    nested = config.get("data") if isinstance(config.get("data"), dict) else {}
    for key in _RUN_FACTS:
        if config.get(key) is None and nested.get(key) is not None:
            config[key] = nested[key]
    if not config.get("num_classes") and config.get("class_names"):
        config["num_classes"] = len(config["class_names"])
    if config.get("num_classes") and config.get("in_chans"):
        return config
    from cnnzoo.registry import create_model

    shapes = _checkpoint_shapes(checkpoint)
    with torch.device("meta"):
        probe = create_model(config["model"], **_model_kwargs(config))
    for fact, key, axis in (
        ("in_chans", f"{probe.first_conv}.weight", 1),
        ("num_classes", f"{probe.classifier_name}.weight", 0),
    ):
        if not config.get(fact):
            if key not in shapes:
                raise WeightsError(
                    f"{checkpoint}: no {key} tensor, so these are not {config['model']} weights"
                )
            config[fact] = int(shapes[key][axis])
    return config


def load_run(run_or_checkpoint: str | Path) -> tuple[ZooModel, dict[str, Any]]:
    """Rebuild a trained model from its run directory (or a checkpoint file inside one).

    Returns the model in eval mode on the CPU and the run's config dict, completed with
    ``num_classes`` and ``in_chans`` (read off the checkpoint's tensor shapes when config.json
    lacks them), ``run_dir`` and ``checkpoint`` (the file loaded). Every failure is a one-line
    :class:`CnnzooError`: a missing run or config, a truncated or foreign checkpoint, a
    checkpoint of another architecture.
    """
    from cnnzoo.registry import create_model

    run_dir, checkpoint = resolve_run(run_or_checkpoint)
    config = _read_config(run_dir)
    name = config["model"]
    try:
        config = _fill_run_facts(config, checkpoint)
        model = create_model(
            name,
            num_classes=int(config["num_classes"]),
            in_chans=int(config["in_chans"]),
            **_model_kwargs(config),
        )
    except CnnzooError:
        raise
    except (ValueError, TypeError) as exc:
        raise CnnzooError(f"{run_dir}: cannot build the run's model: {_one_line(exc)}") from exc
    try:
        with warnings.catch_warnings():
            # load_weights keeps a fresh classifier (with a warning) when the file's does not
            # fit; for a trained run that is an error, raised below.
            warnings.simplefilter("ignore")
            report = load_weights(model, checkpoint)
    except Exception as exc:
        reason = _one_line(exc)
        where = "" if str(checkpoint) in reason else f"{checkpoint}: "
        raise WeightsError(f"{where}cannot load these weights into {name}: {reason}") from exc
    unfit = [*report.fresh_classifier, *report.adapted]
    if unfit:
        raise WeightsError(
            f"{checkpoint} does not match the run's config ({config['num_classes']} classes, "
            f"{config['in_chans']} input channels): {', '.join(unfit[:4])} have other shapes"
        )
    model.eval()
    return model, {**config, "run_dir": str(run_dir), "checkpoint": str(checkpoint)}


def input_size_of(model: ZooModel, config: dict[str, Any]) -> tuple[int, int]:
    """(H, W) the model was trained at: the run's ``image_size``, else the model's own size."""
    for key in ("image_size", "input_size"):
        value = config.get(key)
        if isinstance(value, int) and value > 0:
            return value, value
        if isinstance(value, (list, tuple)) and len(value) >= 2:
            return int(value[-2]), int(value[-1])
    if model.fixed_input_size:
        return model.fixed_input_size, model.fixed_input_size
    _, height, width = model.default_cfg["input_size"]
    return int(height), int(width)


def normalization_of(
    model: ZooModel, config: dict[str, Any], channels: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std, shaped (1, C, 1, 1), from the run (else the model's defaults)."""
    stats = []
    for key in ("mean", "std"):
        values = config.get(key) or model.default_cfg[key]
        values = [float(v) for v in values]
        if len(values) != channels:
            values = [sum(values) / len(values)] * channels
        stats.append(torch.tensor(values).view(1, channels, 1, 1))
    return stats[0], stats[1]


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

    @property
    def correct(self) -> bool | None:
        return None if self.true_index is None else self.indices[0] == self.true_index


def class_names_of(config: dict[str, Any], num_classes: int) -> list[str]:
    """The run's class names, or "0".."C-1" when the config has none that fit."""
    names = config.get("class_names")
    if names and len(names) == num_classes:
        return [str(n) for n in names]
    return [str(i) for i in range(num_classes)]


def iter_predictions(
    loaded: InferenceModel,
    paths: Sequence[str | Path],
    topk: int = 5,
    batch_size: int = 64,
    device: torch.device | str | None = None,
    keep_images: bool = True,
    folder_labels: Sequence[str | None] | None = None,
) -> Iterator[Prediction]:
    """Classify image files a batch at a time, as they are decoded (memory stays bounded).

    Each image is decoded to the model's channels and prepared by ``loaded.preprocess`` (the
    run's evaluation transform, or the weights' own ``transforms()``). An image whose folder label
    (``folder_labels[i]``, by default its parent folder's name) is one of the class names gets
    that class as its true label. Images that cannot be decoded are skipped with a
    :class:`UserWarning`; when none can be read the result is a :class:`DataError`.
    ``keep_images`` stores the image the model saw, as uint8, in each prediction (for plots).
    """
    from cnnzoo.data import read_image

    if not paths:
        raise DataError("no images to classify")
    if topk < 1:
        raise ValueError(f"topk must be at least 1, got {topk}")
    model, names = loaded.model, loaded.class_names
    device = torch.device(device) if device is not None else next(model.parameters()).device
    k = min(topk, len(names))
    if folder_labels is None:
        folder_labels = [Path(p).parent.name for p in paths]
    elif len(folder_labels) != len(paths):
        raise ValueError("folder_labels must have one entry per path")

    def prepare(path: Path) -> torch.Tensor | None:
        try:
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
        images, kept = [], []
        chunk = slice(start, start + batch_size)
        for raw_path, folder in zip(paths[chunk], folder_labels[chunk], strict=True):
            image = prepare(Path(raw_path))
            if image is not None:
                images.append(image)
                kept.append((Path(raw_path), folder))
        if not images:
            continue
        batch = torch.stack(images).to(device)
        with torch.inference_mode():
            output = model(batch)
        while isinstance(output, (tuple, list)):
            output = output[0]
        probs = F.softmax(output.float(), dim=1).cpu()
        shown = loaded.shown(batch) if keep_images else None
        top_p, top_i = probs.topk(k, dim=1)
        for row, (path, folder) in enumerate(kept):
            indices = top_i[row].tolist()
            true_index = names.index(folder) if folder in names else None
            produced += 1
            yield Prediction(
                path=path,
                indices=indices,
                labels=[names[i] for i in indices],
                probs=top_p[row].tolist(),
                true_index=true_index,
                true_label=folder if true_index is not None else None,
                probabilities=probs[row].clone(),
                image=shown[row] if shown is not None else None,
            )
    if not produced:
        raise DataError(f"none of the {len(paths)} images could be read")


def predict_images(loaded: InferenceModel, paths: Sequence[str | Path], **options: Any) -> list:
    """:func:`iter_predictions` as a list."""
    return list(iter_predictions(loaded, paths, **options))
