"""Any model, ready for predict, evaluate, export, summary and explain.

A *source* is one of:

- a run directory written by ``cnnzoo train`` (the weights it ended with, which its metrics.json
  scored; see :func:`cnnzoo.rundir.resolve_run`), or a checkpoint file inside one;
- a weights file on its own: a cnnzoo ``.safetensors`` (its metadata names the model) or a
  torchvision ``.pth`` (its file name names the weights, e.g. ``resnet18-f37072fd.pth``);
- a model name, with ``weights`` a weight name (``IMAGENET1K_V1``, ``DEFAULT``, ``imagenet``,
  ``fashion_mnist``, ...) or a file, or without weights (a freshly initialised network);
- an ``.onnx`` file: one cnnzoo wrote (``cnnzoo export``, ``cnnzoo quantize``) carries its class
  names, preprocessing and data in its metadata (:func:`onnx_metadata`); any other needs
  ``classes`` and, unless its graph fixes it, ``input_size``. Its network is an
  :class:`~cnnzoo.runtime.OnnxModel`: a module whose call returns the logits.

:func:`load_model` turns each into an :class:`InferenceModel`: the network in eval mode, its class
names, and the exact transform its weights expect (a run's evaluation transform, or the weights'
own ``transforms()``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnzoo.errors import CnnzooError, UsageError, WeightsError

__all__ = ["InferenceModel", "from_module", "load_model", "onnx_metadata", "weights_dataset"]

ONNX_FORMAT = 1  # the version of the metadata layout below

Preprocess = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class InferenceModel:
    """A network ready for inference and what its inputs and outputs mean."""

    model: nn.Module  # in eval mode, on the CPU
    name: str  # the cnnzoo model name
    class_names: list[str]
    channels: int  # what images are decoded to
    input_size: tuple[int, int]  # (H, W) the network is fed
    preprocess: Preprocess  # decoded uint8 image (C, H, W) -> normalised float model input
    mean: tuple[float, ...]  # the normalisation, to show what the model saw
    std: tuple[float, ...]
    description: str  # one line: where the network and its weights came from
    weights: str | None = None  # the weight name, when the weights came by name
    run_dir: Path | None = None
    config: dict[str, Any] = field(default_factory=dict)  # the run's config.json, for a run
    files: list[Path] = field(default_factory=list)  # the files it was loaded from
    trained: bool = True  # False for a freshly initialised network

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def dataset(self) -> str | None:
        """The cnnzoo dataset it was trained on (a run's, named weights'), or None."""
        named = self.config.get("dataset")
        if named:
            return str(named)
        return weights_dataset(self.name, self.weights) if self.weights else None

    @property
    def is_graph(self) -> bool:
        """True for an ONNX graph (no PyTorch module: no gradients, no re-export)."""
        from cnnzoo.runtime import OnnxModel

        return isinstance(self.model, OnnxModel)

    def prepare(self, images: list[torch.Tensor]) -> torch.Tensor:
        """Decoded images -> one normalised batch."""
        return torch.stack([self.preprocess(image) for image in images])

    def shown(self, batch: torch.Tensor) -> torch.Tensor:
        """A normalised batch back as uint8 images (what the network saw)."""
        mean = torch.tensor(self.mean, dtype=batch.dtype).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=batch.dtype).view(1, -1, 1, 1)
        return (batch.cpu() * std + mean).mul(255).round().clamp(0, 255).to(torch.uint8)


def load_model(
    source: str | Path,
    weights: str | Path | None = None,
    *,
    num_classes: int | None = None,
    in_chans: int | None = None,
    model_kwargs: dict[str, Any] | None = None,
    classes: str | Path | list[str] | None = None,
    input_size: tuple[int, ...] | None = None,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    need_module: str | None = None,
) -> InferenceModel:
    """Load a source (see the module docstring) for inference; every failure is one line.

    Weights by name come from the cache, or are downloaded unless ``CNNZOO_OFFLINE=1`` (the
    CLI's ``--offline``) forbids it. ``classes`` (a file with one name per line, or the names),
    ``input_size`` ((C, H, W) or (H, W)), ``mean`` and ``std`` describe an ONNX file that cnnzoo
    did not write. ``need_module``: what the caller does that needs the PyTorch module (an ONNX
    source is then refused with one line saying so).
    """
    path = Path(source).expanduser()
    foreign = {"classes": classes, "input_size": input_size, "mean": mean, "std": std}
    if weights is None and path.is_file() and path.suffix.lower() == ".onnx":
        return _from_onnx(path, foreign, need_module)
    given = [name for name, value in foreign.items() if value is not None]
    if given:
        raise UsageError(
            f"--{given[0].replace('_', '-')} is for an ONNX file cnnzoo did not write; "
            f"{source} describes its own inputs and classes"
        )
    if weights is not None and str(weights).lower().endswith(".onnx"):
        raise UsageError(f"an ONNX file is a source on its own: give {weights} without {source}")
    if weights is None and path.is_dir():
        return _from_run(path)
    if weights is None and path.is_file():
        if _inside_run(path):
            return _from_run(path)
        return _from_model(_model_of_file(path), path, num_classes, in_chans, model_kwargs)
    from cnnzoo.registry import list_models, unknown_model_message

    name = str(source)
    if name not in list_models():
        from cnnzoo.pretrained import looks_like_path

        if weights is not None and (looks_like_path(name) or path.exists()):
            raise UsageError(f"{name}: with --weights, give a model name (`cnnzoo models`)")
        if looks_like_path(name):
            raise CnnzooError(f"{name}: no such run directory or checkpoint file")
        raise UsageError(unknown_model_message(name))
    return _from_model(name, weights, num_classes, in_chans, model_kwargs)


def from_module(model: nn.Module) -> InferenceModel:
    """A module in memory, with the input preparation it was trained with: what ``cnnzoo.fit``
    recorded in its ``default_cfg``, else its pretrained weights' own transforms
    (``pretrained_cfg``), else its ``default_cfg``'s size and statistics."""
    cfg = dict(getattr(model, "default_cfg", None) or {})
    name = str(cfg.get("name") or type(model).__name__)
    pretrained = getattr(model, "pretrained_cfg", None)
    if "class_names" not in cfg and pretrained:
        from cnnzoo.pretrained import get_weight_spec

        spec = get_weight_spec(pretrained["model"], pretrained["weights"])
        categories = list(pretrained.get("categories") or [])
        return InferenceModel(
            model=model.eval(), name=name, class_names=categories,
            channels=int(pretrained.get("in_chans") or spec.in_chans),
            input_size=(int(spec.crop_size), int(spec.crop_size)), preprocess=spec.transforms(),
            mean=tuple(pretrained["mean"]), std=tuple(pretrained["std"]),
            description=f"{name} with {spec.source} weights {spec.name} ({spec.dataset})",
            weights=spec.name,
        )  # fmt: skip
    if cfg.get("mean") is None or cfg.get("std") is None or "input_size" not in cfg:
        raise UsageError("the model has no input statistics: train it with cnnzoo.fit, or load a "
                         "run directory")  # fmt: skip
    facts = {
        "class_names": cfg.get("class_names"),
        "mean": list(cfg["mean"]),
        "std": list(cfg["std"]),
        "image_size": cfg.get("resize") or int(cfg["input_size"][-1]),
        "in_chans": int(cfg["input_size"][0]),
        "dataset": cfg.get("dataset", ""),
    }
    # The run fit trained it in: its recorded split is the model's own data split.
    run_dir = Path(cfg["run_dir"]) if cfg.get("run_dir") else None
    return _generic(model.eval(), name, f"{name} (in memory)", config=facts, run_dir=run_dir)


# --- runs -------------------------------------------------------------------------------------


def _inside_run(checkpoint: Path) -> bool:
    config = checkpoint.parent / "config.json"
    if not config.is_file():
        return False
    try:
        data = json.loads(config.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return True  # a damaged run config: let the run loader say what is wrong with it
    return isinstance(data, dict) and "model" in data


def _from_run(path: Path) -> InferenceModel:
    from cnnzoo.rundir import load_run

    model, config = load_run(path)
    run_dir, checkpoint = Path(config["run_dir"]), Path(config["checkpoint"])
    return _prepared_as_config(
        model,
        str(config["model"]),
        config,
        f"run {run_dir} ({checkpoint.name})",
        run_dir=run_dir,
        # Everything the run wrote that holds weights or settings: export never writes over it.
        files=[
            checkpoint,
            run_dir / "config.json",
            *run_dir.glob("*.safetensors*"),
            *run_dir.glob("*.state.pt"),
        ],
    )


# --- models by name, with weights by name or by file -------------------------------------------


def _model_of_file(path: Path) -> str:
    """Which model a weights file outside any run is for: its metadata or its file name."""
    from cnnzoo.pretrained import list_weights
    from cnnzoo.weights import read_metadata

    named = read_metadata(path).get("model")
    if named:
        return named
    for spec in list_weights():
        if spec.file_name == path.name:
            return spec.model
    raise UsageError(
        f"{path}: cannot tell which model these weights are for; name it: MODEL --weights {path}"
    )


def _spec_for_file(model: str, path: Path) -> Any:
    from cnnzoo.pretrained import list_weights

    return next((s for s in list_weights(model) if s.file_name == path.name), None)


def _from_model(
    name: str,
    weights: str | Path | None,
    num_classes: int | None,
    in_chans: int | None,
    model_kwargs: dict[str, Any] | None,
) -> InferenceModel:
    from cnnzoo.pretrained import resolve_weights
    from cnnzoo.registry import create_model

    kwargs = dict(model_kwargs or {})
    if weights is None:
        model = create_model(name, num_classes=num_classes, in_chans=in_chans, **kwargs).eval()
        return _generic(model, name, f"{name} (randomly initialised; no --weights)", trained=False)
    spec = resolve_weights(name, str(weights) if isinstance(weights, Path) else weights)
    files: list[Path] = []
    if spec is None:  # a file: a torchvision file keeps its meaning, a cnnzoo one carries it
        path = Path(weights).expanduser()
        if not path.is_file():
            raise WeightsError(f"--weights {weights}: no such file")
        files.append(path)
        spec = _spec_for_file(name, path)
        if spec is None:
            return _from_weights_file(name, path, num_classes, in_chans, kwargs)
    model = create_model(name, num_classes=num_classes, in_chans=in_chans, weights=spec.name,
                         **kwargs)  # fmt: skip
    cfg = getattr(model, "pretrained_cfg", None) or spec.pretrained_cfg(num_classes, in_chans)
    categories = list(cfg.get("categories") or [])
    if len(categories) != model.num_classes:
        categories = [str(i) for i in range(model.num_classes)]
    height = width = int(spec.crop_size)
    from cnnzoo.pretrained import is_cached, weights_file

    if not files and is_cached(spec):
        files.append(weights_file(spec, offline=True, progress=False))
    return InferenceModel(
        model=model.eval(),
        name=name,
        class_names=categories,
        channels=int(cfg.get("in_chans") or spec.in_chans),
        input_size=(height, width),
        preprocess=spec.transforms(),
        mean=tuple(cfg.get("mean") or spec.mean),
        std=tuple(cfg.get("std") or spec.std),
        description=f"{name} with {spec.source} weights {spec.name} ({spec.dataset})",
        weights=spec.name,
        files=files,
    )


def _from_weights_file(
    name: str, path: Path, num_classes: int | None, in_chans: int | None, kwargs: dict[str, Any]
) -> InferenceModel:
    """A model built to fit a weights file that names no known weights: cnnzoo's metadata (the
    trainer records classes, normalisation and input size) or the tensors' shapes decide."""
    from cnnzoo.registry import create_model
    from cnnzoo.weights import load_weights, read_metadata, read_state_dict

    meta = read_metadata(path)
    state, _ = read_state_dict(path)
    kwargs = {**_json(meta.get("model_kwargs"), {}), **kwargs}
    with torch.device("meta"):
        probe = create_model(name, **kwargs)
    stem = state.get(f"{probe.first_conv}.weight")
    head = state.get(f"{probe.classifier_name}.weight")
    if num_classes is None:
        num_classes = int(head.shape[0]) if head is not None else None
    if in_chans is None:
        in_chans = int(stem.shape[1]) if stem is not None and stem.dim() == 4 else None
    model = create_model(name, **{"num_classes": num_classes, "in_chans": in_chans, **kwargs})
    load_weights(model, state)
    model.eval()
    names = _json(meta.get("class_names"), None)
    facts = {
        "class_names": names,
        "mean": _json(meta.get("mean"), None),
        "std": _json(meta.get("std"), None),
        "image_size": int(meta["image_size"]) if meta.get("image_size") else None,
        "in_chans": model.default_cfg["input_size"][0],
        "dataset": meta.get("dataset", ""),
    }
    loaded = _generic(model, name, f"{name} with weights from {path}", config=facts)
    loaded.files = [path]
    return loaded


def _generic(
    model: nn.Module,
    name: str,
    description: str,
    *,
    config: dict[str, Any] | None = None,
    trained: bool = True,
    run_dir: Path | None = None,
) -> InferenceModel:
    """A model without a run or named weights: the model's own size and statistics, or what
    ``config`` (metadata a file carried) says."""
    config = {k: v for k, v in (config or {}).items() if v is not None}
    config.setdefault("in_chans", model.default_cfg["input_size"][0])
    return _prepared_as_config(model, name, config, description, trained=trained,
                               run_dir=run_dir)  # fmt: skip


def _prepared_as_config(
    model: nn.Module, name: str, config: dict[str, Any], description: str, **extra: Any
) -> InferenceModel:
    """``model`` with the classes and the evaluation transform a run config describes."""
    from cnnzoo.analysis.metrics import classes_of
    from cnnzoo.rundir import class_names_of, run_transform

    transform = run_transform(config, model)
    return InferenceModel(
        model=model,
        name=name,
        class_names=class_names_of(config, classes_of(_outputs(model, config))),
        channels=int(config["in_chans"]),
        input_size=(transform.size, transform.size),
        preprocess=transform,
        mean=transform.mean,
        std=transform.std,
        description=description,
        config=config,
        **extra,
    )


def _outputs(model: nn.Module, config: dict[str, Any]) -> int:
    """The model's output units (a module of one's own may not say: its class names count)."""
    units = getattr(model, "num_classes", None)
    return int(units) if units else len(config.get("class_names") or []) or 1


def _json(text: str | None, default: Any) -> Any:
    if not text:
        return default
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return default


# --- ONNX files -------------------------------------------------------------------------------


def onnx_metadata(
    loaded: InferenceModel,
    *,
    precision: str = "fp32",
    source: str | None = None,
    weights: str | None = None,
) -> dict[str, Any]:
    """What an ONNX file of ``loaded``'s network carries so that it is a source on its own:
    classes, input size, preprocessing, the data it belongs to and where it came from
    (``source`` and ``weights`` as the user named them, to load the float32 model again)."""
    from cnnzoo.data.transforms import EvalTransform

    config = loaded.config
    if "preprocess" in config:  # an ONNX source made again: its record carries over
        preprocess = dict(config["preprocess"])
    elif loaded.weights:
        preprocess = {"kind": "weights", "model": loaded.name, "weights": loaded.weights}
    elif isinstance(loaded.preprocess, EvalTransform):
        t = loaded.preprocess
        preprocess = {"kind": "eval", "size": t.size, "crop_fraction": t.crop_fraction}
    else:
        raise CnnzooError(f"{loaded.description}: cannot describe its preprocessing")
    keys = ("dataset", "data_dir", "val_split", "seed", "stored_image_size")
    data = {key: config[key] for key in keys if key in config}
    stored = (config.get("data") or {}).get("stored_image_size")  # a run's own images
    if stored:
        data["stored_image_size"] = list(stored)
    if "dataset" not in data and loaded.dataset:
        data["dataset"] = loaded.dataset
    origin = dict(config.get("origin") or {})
    if source is not None:
        shown = Path(source).expanduser()
        origin = {
            "source": str(shown.resolve()) if shown.exists() else str(source),
            "weights": str(Path(weights).resolve()) if weights and Path(weights).exists()
            else weights,
            "description": loaded.description,
        }  # fmt: skip
    return {
        "format": ONNX_FORMAT,
        "model": loaded.name,
        "precision": precision,
        "class_names": list(loaded.class_names),
        "input_size": [loaded.channels, *loaded.input_size],
        "mean": list(loaded.mean),
        "std": list(loaded.std),
        "preprocess": preprocess,
        "data": data,
        "origin": origin,
    }


def weights_dataset(model: str, weights: str) -> str | None:
    """The cnnzoo dataset named weights were trained on (None for ImageNet: not here)."""
    from cnnzoo.data.datasets import canonical_name
    from cnnzoo.pretrained import get_weight_spec

    try:
        return canonical_name(get_weight_spec(model, weights).dataset)
    except UsageError:
        return None


def _from_onnx(path: Path, foreign: dict[str, Any], need_module: str | None) -> InferenceModel:
    from cnnzoo.runtime import OnnxModel, read_metadata

    meta = read_metadata(path)
    if need_module:
        made_from = (meta or {}).get("origin", {})
        hint = f" (it was made from {made_from['description']})" if made_from else ""
        raise UsageError(
            f"{path} is an ONNX graph; {need_module} needs the PyTorch model: give its source, "
            f"a run, a checkpoint or MODEL --weights{hint}"
        )
    if meta is None:
        return _from_foreign_onnx(path, foreign)
    given = [name for name, value in foreign.items() if value is not None]
    if given:
        raise UsageError(
            f"{path} was written by cnnzoo and carries its classes and preprocessing; "
            f"drop --{given[0].replace('_', '-')}"
        )
    try:
        channels, height, width = (int(v) for v in meta["input_size"])
        names = [str(n) for n in meta["class_names"]]
        record = dict(meta["preprocess"])
        mean, std = tuple(meta["mean"]), tuple(meta["std"])
    except (KeyError, TypeError, ValueError):
        raise CnnzooError(f"{path}: its cnnzoo metadata is incomplete") from None
    if record.get("kind") == "weights":
        from cnnzoo.pretrained import get_weight_spec

        preprocess = get_weight_spec(record["model"], record["weights"]).transforms()
    else:
        from cnnzoo.data.transforms import EvalTransform

        preprocess = EvalTransform(
            size=int(record.get("size", height)),
            mean=mean,
            std=std,
            crop_fraction=float(record.get("crop_fraction", 1.0)),
        )
    precision = str(meta.get("precision", "fp32"))
    origin = meta.get("origin") or {}
    made_from = f" of {origin['description']}" if origin.get("description") else ""
    return InferenceModel(
        model=OnnxModel(
            path,
            _recorded_runtime(meta),
            name=str(path),
            exact_float=precision != "int8",
        ),
        name=str(meta.get("model", "onnx")),
        class_names=names,
        channels=channels,
        input_size=(height, width),
        preprocess=preprocess,
        mean=mean,
        std=std,
        description=f"{path} ({precision} ONNX{made_from})",
        config={
            **(meta.get("data") or {}),
            "in_chans": channels,
            "class_names": names,
            "preprocess": record,
            "origin": origin,
            "precision": precision,
            "onnx": meta,
        },
        files=[path],
    )


def _recorded_runtime(meta: dict[str, Any]) -> str:
    """The runtime ``cnnzoo quantize`` found fastest for this int8 file, when it is installed
    here (and allowed by ``$CNNZOO_RUNTIMES``); ONNX Runtime otherwise."""
    from cnnzoo.runtime import installed_runtimes

    recorded = (meta.get("quantization") or {}).get("backend")
    return recorded if recorded in installed_runtimes() else "onnxruntime"


def _from_foreign_onnx(path: Path, foreign: dict[str, Any]) -> InferenceModel:
    """An ONNX file without cnnzoo's metadata: what it cannot say, the caller must."""
    from cnnzoo.data.transforms import EvalTransform
    from cnnzoo.runtime import OnnxModel

    model = OnnxModel(path, name=str(path))
    fixed = model.input_shape[1:]
    size = foreign["input_size"]
    if size is not None and len(size) == 2 and fixed and fixed[0] is not None:
        size = (fixed[0], *size)
    if size is None and len(fixed) == 3 and all(isinstance(v, int) for v in fixed):
        size = fixed  # the graph itself fixes it: nothing is guessed
    missing = []
    if foreign["classes"] is None:
        missing.append("--classes FILE (one class name per line)")
    if size is None or len(size) != 3:
        missing.append("--input-size CxHxW")
    if missing:
        raise UsageError(
            f"{path} has no cnnzoo metadata (cnnzoo did not write it): pass "
            + " and ".join(missing)
            + "; and --mean/--std if it expects normalised inputs"
        )
    channels, height, width = (int(v) for v in size)
    if any(f is not None and f != v for f, v in zip(fixed, size, strict=False)):
        raise UsageError(
            f"{path} takes {'x'.join(map(str, fixed))} inputs, not {'x'.join(map(str, size))}"
        )
    if height != width:
        raise UsageError(f"--input-size: only square inputs are supported, got {height}x{width}")
    names = _class_names(foreign["classes"])
    mean = tuple(foreign["mean"] or (0.0,) * channels)
    std = tuple(foreign["std"] or (1.0,) * channels)
    if len(mean) != channels or len(std) != channels:
        raise UsageError(f"--mean and --std need {channels} values each, one per channel")
    normalised = "" if foreign["mean"] or foreign["std"] else ", pixels in [0, 1] (no --mean/--std)"
    return InferenceModel(
        model=model,
        name=path.stem,
        class_names=names,
        channels=channels,
        input_size=(height, width),
        preprocess=EvalTransform(size=height, mean=mean, std=std),
        mean=mean,
        std=std,
        description=f"{path} (ONNX without cnnzoo metadata{normalised})",
        config={"in_chans": channels, "class_names": names},
        files=[path],
    )


def _class_names(classes: str | Path | list[str]) -> list[str]:
    if isinstance(classes, (list, tuple)):
        names = [str(n) for n in classes]
    else:
        try:
            text = Path(classes).expanduser().read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"--classes {classes}: cannot read it ({exc})") from None
        names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise UsageError(f"--classes {classes}: no class names in it (one per line)")
    return names
