"""The Keras-style calls: ``fit``, ``evaluate`` and ``predict`` on a model and your data.

    history = cnnzoo.fit("lenet5", x_train, y_train, validation_split=0.1, epochs=5,
                         callbacks=[EarlyStopping(patience=2)])
    model = history.model
    scores = cnnzoo.evaluate(model, x_test, y_test)      # {"loss": ..., "accuracy": ...}
    probabilities = cnnzoo.predict(model, x_test[:8])   # (8, classes), rows sum to 1

``x`` is a NumPy array or tensor (NHWC as Keras loads images, or NCHW; uint8 or float), a torch
``Dataset``, a ``DataLoader`` or a dataset name; see :mod:`cnnzoo.data.arrays`. A trained model
remembers the input it was trained on (``default_cfg``: mean, std, input size), so evaluate and
predict prepare new images the same way.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cnnzoo.errors import UsageError
from cnnzoo.train.callbacks import Callback
from cnnzoo.train.config import TrainConfig
from cnnzoo.train.history import History

__all__ = ["evaluate", "fit", "predict"]


def fit(
    model: str | nn.Module = "lenet5",
    x: Any = None,
    y: Any = None,
    *,
    validation_split: float | None = None,
    validation_data: Sequence[Any] | None = None,
    test_data: Sequence[Any] | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    callbacks: Iterable[Callback] | None = None,
    recipe: str | None = None,
    **config: Any,
) -> History:
    """Train ``model`` (a zoo name or an ``nn.Module``) on ``x``; the :class:`History`.

    ``recipe`` names a shipped recipe or a recipe file whose fields ``config`` (any
    :class:`TrainConfig` field) overrides. Arrays: ``validation_split`` holds out a stratified
    fraction, ``validation_data=(x_val, y_val)`` gives the validation split and ``test_data``
    a test split scored at the end (``history.metrics``). Without ``x`` (or with a name) the
    named dataset is used (``dataset=`` works too).
    """
    from cnnzoo.train.recipes import load_recipe
    from cnnzoo.train.trainer import Trainer

    fields: dict[str, Any] = dict(load_recipe(recipe)) if recipe else {}
    fields.update(config)
    fields.update({k: v for k, v in (("epochs", epochs), ("batch_size", batch_size))
                   if v is not None})  # fmt: skip
    module = model if isinstance(model, nn.Module) else None
    fields["model"] = _name_of(model) if module is not None else model
    data = None
    if x is None or isinstance(x, str):
        if x is not None:
            fields["dataset"] = x
        if validation_data is not None or test_data is not None or y is not None:
            raise UsageError("validation_data, test_data and y go with arrays, not a dataset name")
        if validation_split is not None:
            fields["val_split"] = validation_split
    else:
        from cnnzoo.data.arrays import bundle_from_arrays

        data = bundle_from_arrays(
            x, y, validation_split=validation_split, validation_data=validation_data,
            test_data=test_data, seed=int(fields.get("seed", 0)),
        )  # fmt: skip
        fields["dataset"] = data.name
        # What share of the images validates (recorded; the split itself is made above).
        held = len(data.val) if data.val is not None else 0
        fields["val_split"] = round(held / (held + len(data.train)), 6)
    cfg = TrainConfig.from_dict(fields, source="cnnzoo.fit()")
    trainer = Trainer(cfg, callbacks, data=data, model=module)
    history = trainer.fit()
    trained = trainer.eval_model
    if module is not None and trained is not module:
        module.load_state_dict(trained.state_dict())  # the EMA's weights are the result
        history.model = trained = module
    _remember_input(trained, trainer)
    return history


def _name_of(module: nn.Module) -> str:
    cfg = getattr(module, "default_cfg", None)
    return str(cfg["name"]) if isinstance(cfg, dict) and "name" in cfg else type(module).__name__


def _remember_input(model: nn.Module, trainer: Any) -> None:
    """Record how inputs were prepared in the model's ``default_cfg`` (timm's place for it)."""
    side = trainer.image_size or max(trainer.bundle.image_size)
    cfg = dict(getattr(model, "default_cfg", None) or {})
    cfg.update(
        mean=tuple(trainer.mean), std=tuple(trainer.std),
        input_size=(trainer.bundle.channels, side, side),
        class_names=list(trainer.bundle.class_names),
        resize=trainer.image_size,
        dataset=trainer.bundle.name,
        run_dir=str(trainer.run.path),  # where its data split is recorded
    )  # fmt: skip
    model.default_cfg = cfg  # type: ignore[assignment]


# --- using a trained model --------------------------------------------------------------------


def _prepare(model: Any) -> tuple[nn.Module, dict[str, Any]]:
    """(module in eval mode, its input facts) for a module or a run directory. A module that
    ``fit`` did not train but that carries weights by name (``pretrained_cfg``) is fed as its
    weights expect."""
    if isinstance(model, nn.Module):
        facts = dict(getattr(model, "default_cfg", None) or {})
        pretrained = getattr(model, "pretrained_cfg", None) or {}
        if "class_names" not in facts and pretrained.get("mean") and pretrained.get("std"):
            channels = pretrained.get("in_chans") or facts["input_size"][0]
            facts.update(mean=pretrained["mean"], std=pretrained["std"],
                         resize=pretrained.get("crop_size"), input_size=(channels,))  # fmt: skip
        return model.eval(), facts
    from cnnzoo.rundir import load_run

    module, config = load_run(model)
    facts = {
        "mean": config["mean"],
        "std": config["std"],
        "resize": config.get("image_size"),
        "input_size": (config["in_chans"],),
        "class_names": config.get("class_names"),
    }
    return module, facts


def _loader(model: nn.Module, facts: dict[str, Any], images: torch.Tensor, labels: torch.Tensor,
            batch_size: int) -> Any:  # fmt: skip
    from cnnzoo.data import make_loader
    from cnnzoo.data.datasets import DataBundle, TensorSplit

    if batch_size < 1:
        raise UsageError(f"batch_size must be positive, got {batch_size}")
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    channels = int(facts.get("input_size", (images.shape[1],))[0])
    split = TensorSplit(images, labels)
    bundle = DataBundle("arrays", [], images.shape[1], tuple(images.shape[2:]),  # type: ignore[arg-type]
                        (0.0,), (1.0,), split, None, split)  # fmt: skip
    mean, std = facts.get("mean"), facts.get("std")
    if mean is None or std is None:
        raise UsageError("the model has no input statistics: train it with cnnzoo.fit, or load a "
                         "run directory")  # fmt: skip
    resize = facts.get("resize") or _model_side(model, images)
    return make_loader(bundle, "test", batch_size=batch_size, image_size=resize, mean=mean,
                       std=std, channels=channels, device=device)  # fmt: skip


def _model_side(model: nn.Module, images: torch.Tensor) -> int | None:
    """A zoo model that cannot take the images as they are gets them at its own size."""
    check = getattr(model, "check_input", None)
    if check is None:
        return None
    try:
        check(torch.empty(1, *images.shape[1:], device="meta"))
    except ValueError:
        _, height, _ = model.default_cfg["input_size"]  # type: ignore[index]
        return int(height)
    return None


def _arrays(x: Any, y: Any, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    from cnnzoo.data.arrays import as_images, as_labels, materialize

    if isinstance(x, str):
        from cnnzoo.data import load_dataset

        test = load_dataset(x, val_split=0).test
        return test.images, test.labels  # type: ignore[union-attr]
    if y is None and not isinstance(x, (np.ndarray, torch.Tensor)):
        x, y = materialize(x, what)
    images = as_images(x, what)
    labels = as_labels(y, len(images), what) if y is not None else torch.zeros(len(images)).long()
    return images, labels


def evaluate(model: Any, x: Any, y: Any = None, *, batch_size: int = 256) -> dict[str, float]:
    """Loss and accuracy of ``model`` (a module or a run directory) on ``x``/``y``, with the
    input preparation it was trained with: ``{"loss", "accuracy", "top5_accuracy"}``.

    A module is scored with the weights it holds: after ``fit``, the weights the run ended with
    (the last epoch's, or the best when early stopping restored them), which a run directory
    also gives (see :func:`cnnzoo.rundir.resolve_run`) and ``history.metrics`` scored.

    ``x`` a dataset by name scores its test split as ``cnnzoo evaluate`` does: an image folder
    the model's run trained on is split as the run recorded it (``splits.json``)."""
    from cnnzoo.analysis.metrics import classes_of, evaluate_model

    if isinstance(x, str):
        return _evaluate_dataset(model, x, batch_size)
    module, facts = _prepare(model)
    images, labels = _arrays(x, y, "x")
    units = getattr(module, "num_classes", 0)
    num_classes = classes_of(int(units)) if units else int(labels.max()) + 1
    result = evaluate_model(module, _loader(module, facts, images, labels, batch_size),
                            num_classes, progress=sys.stderr.isatty())  # fmt: skip
    return {"loss": result.loss, "accuracy": result.top1, "top5_accuracy": result.top5}


@torch.inference_mode()
def predict(model: Any, x: Any, *, batch_size: int = 256) -> np.ndarray:
    """Class probabilities (N, classes) for the images ``x``, as Keras' ``predict`` returns for
    a softmax classifier; ``argmax(1)`` gives the classes. A one-unit (sigmoid) head gives
    (N, 1), the probability of the second class, as Keras' ``Dense(1, "sigmoid")`` does.

    ``x`` may also be image files: a path, a folder (its images in sorted order, as `cnnzoo
    predict` lists them) or a list of paths, each prepared as the model's own inputs are (the
    input ``fit`` recorded, a run's evaluation transform, or the weights' own transforms).
    ``imagefolder:PATH`` gives its test images, split as the model's run recorded them.
    """
    from cnnzoo.analysis.metrics import class_logits

    if isinstance(x, str) and x.startswith("imagefolder:"):  # its test split, as the run split it
        loaded = _loaded(model)
        return _predict_files(loaded, list(_run_data(loaded, x).test.paths), batch_size)
    files = _image_files(x)
    if files is not None:
        return _predict_files(_loaded(model), files, batch_size)
    module, facts = _prepare(model)
    images, labels = _arrays(x, None, "x")
    rows = [torch.softmax(class_logits(module(batch)).float(), dim=1).cpu()
            for batch, _ in _loader(module, facts, images, labels, batch_size)]  # fmt: skip
    probabilities = torch.cat(rows)
    return _keras_columns(module, probabilities).numpy()


def _loaded(model: Any) -> Any:
    """The InferenceModel of a module or a run directory (or checkpoint)."""
    from cnnzoo.inference import from_module, load_model

    return from_module(model) if isinstance(model, nn.Module) else load_model(model)


def _run_data(loaded: Any, spec: str) -> Any:
    """The dataset ``spec``, split as the model's run split it (an image folder's recorded
    split; see :func:`cnnzoo.rundir.run_data`)."""
    from cnnzoo.rundir import run_data

    return run_data(loaded.config, loaded.run_dir, dataset=spec)


def _evaluate_dataset(model: Any, spec: str, batch_size: int) -> dict[str, float]:
    """The test split of a dataset by name, scored as ``cnnzoo evaluate`` scores it."""
    from cnnzoo.cli.eval_cmd import evaluate_source

    loaded = _loaded(model)
    device = next((p.device for p in loaded.model.parameters()), torch.device("cpu"))
    result, _ = evaluate_source(loaded, dataset=spec, batch_size=batch_size, device=device,
                                progress=sys.stderr.isatty())  # fmt: skip
    return {"loss": result.loss, "accuracy": result.top1, "top5_accuracy": result.top5}


def _keras_columns(module: Any, probabilities: torch.Tensor) -> torch.Tensor:
    """A sigmoid head's one column (the second class's probability); others as they are."""
    return probabilities[:, 1:] if getattr(module, "num_classes", None) == 1 else probabilities


def _image_files(x: Any) -> list[Path] | None:
    """The image files or folders ``x`` names, or None when ``x`` is data or a dataset name."""
    from cnnzoo.data.folder import IMAGE_EXTENSIONS

    items = x if isinstance(x, (list, tuple)) else [x]
    if not items or not all(isinstance(i, (str, os.PathLike)) for i in items):
        return None
    paths = [Path(i).expanduser() for i in items]
    if len(paths) == 1 and isinstance(x, str) and not paths[0].exists():
        named = x.lower().endswith(tuple(IMAGE_EXTENSIONS)) or "/" in x or os.sep in x
        if not named:
            return None  # a dataset name
    return paths


def _predict_files(loaded: Any, paths: list[Path], batch_size: int) -> np.ndarray:
    import warnings

    from cnnzoo.analysis.predict import collect_images, iter_predictions
    from cnnzoo.errors import DataError

    found = [path for path, _ in collect_images(paths)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rows = [p.probabilities for p in iter_predictions(
            loaded, found, topk=1, batch_size=batch_size, keep_images=False)]  # fmt: skip
    if len(rows) != len(found):  # a row per file, or the rows would not say which is which
        reason = next((str(w.message) for w in caught), "unreadable images")
        raise DataError(f"cannot predict every image: {reason}")
    return _keras_columns(loaded.model, torch.stack(rows)).numpy()
