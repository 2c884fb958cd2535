"""Loading and saving weights: torchvision ``.pth`` files, safetensors files and state-dicts.

Loading never runs code from a file: pickles go through ``torch.load(weights_only=True)``, which
refuses anything but tensors and plain containers. Two adaptations make ImageNet weights useful
for other tasks: a classifier for another number of classes is left freshly initialised (with a
warning), and RGB stem filters are folded into the model's input channels (timm's convention).
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnzoo.errors import WeightsError

StateDict = dict[str, torch.Tensor]

# Wrappers training scripts put around the state-dict, tried in this order.
_CONTAINER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "weights")
# Prefixes DistributedDataParallel / DataParallel and torch.compile put on every key.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_SHOW = 5  # keys listed per category in error messages


@dataclass
class LoadReport:
    """What :func:`load_weights` did: keys loaded, left as they were, ignored or adapted."""

    source: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # in the model, not in the file
    unexpected: list[str] = field(default_factory=list)  # in the file, not in the model
    mismatched: list[str] = field(default_factory=list)  # skipped for their shape (strict=False)
    adapted: dict[str, str] = field(default_factory=dict)  # key -> what was done to it
    fresh_classifier: list[str] = field(default_factory=list)  # kept at their new init
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def __str__(self) -> str:
        parts = [f"loaded {len(self.loaded)} tensors from {self.source}"]
        for label, keys in (
            ("kept the new classifier", self.fresh_classifier),
            ("adapted", list(self.adapted)),
            ("missing", self.missing),
            ("unexpected", self.unexpected),
            ("shape mismatch", self.mismatched),
        ):
            if keys:
                parts.append(f"{label}: {_first(keys)}")
        return "; ".join(parts)


def _first(keys: list[str], n: int = _SHOW) -> str:
    shown = ", ".join(keys[:n])
    return f"{shown} (+{len(keys) - n} more)" if len(keys) > n else shown


# --- reading --------------------------------------------------------------------------------


def read_state_dict(source: str | Path | Mapping[str, Any]) -> tuple[StateDict, dict[str, str]]:
    """The tensors of a weights file (or mapping), unwrapped, and the file's metadata."""
    if isinstance(source, Mapping):
        return _unwrap(source, "the given state-dict"), {}
    path = Path(source).expanduser()
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "does not exist"
        raise WeightsError(f"weights file {path} {what}")
    with path.open("rb") as handle:
        head = handle.read(16)
    if path.suffix == ".safetensors" or _looks_like_safetensors(head):
        tensors, metadata = _read_safetensors(path)
    else:
        tensors, metadata = _read_torch(path), {}
    return _unwrap(tensors, str(path)), metadata


def read_metadata(path: str | Path) -> dict[str, str]:
    """The metadata of a safetensors file (cnnzoo records the model, classes and input there);
    empty for other files. Reads the header only."""
    path = Path(path).expanduser()
    try:
        with path.open("rb") as handle:
            head = handle.read(16)
    except OSError:
        return {}
    if not _looks_like_safetensors(head):
        return {}
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            return dict(handle.metadata() or {})
    except Exception:  # a damaged file: whoever reads its tensors reports it
        return {}


def _looks_like_safetensors(head: bytes) -> bool:
    # 8-byte little-endian header length, then a JSON object.
    return len(head) > 8 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 1 << 30


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as exc:  # safetensors raises its own error type for every kind of damage
        raise WeightsError(
            f"cannot read {path} as a safetensors file (corrupt or truncated?): {exc}"
        ) from exc
    return tensors, metadata


def _read_torch(path: Path) -> Any:
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": noise for a user
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        text = str(exc)
        code = re.search(r"GLOBAL ([\w.]+)", text) or re.search(r"Unsupported global: (\S+)", text)
        if code:
            raise WeightsError(
                f"refusing to load {path}: the pickle would call {code.group(1)}, not just "
                "build tensors (loading it could run arbitrary code); only plain state-dicts "
                "are accepted"
            ) from exc
        if "Weights only load failed" in text:
            reason = "not a pickle that safe, weights-only loading can read"
        else:
            first = text.strip().split(". ")[0].splitlines()[0] if text.strip() else ""
            reason = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
        raise WeightsError(
            f"cannot read {path}: not a PyTorch or safetensors weights file, or it is corrupt "
            f"or truncated ({reason[:160]})"
        ) from exc


def _unwrap(obj: Any, where: str) -> StateDict:
    for _ in range(3):  # e.g. {"model": {"state_dict": ...}}
        if not isinstance(obj, Mapping):
            break
        inner = next(
            (obj[key] for key in _CONTAINER_KEYS if isinstance(obj.get(key), Mapping)), None
        )
        if inner is None or any(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        obj = inner
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{where} holds a {type(obj).__name__}, not a mapping of tensors")
    if not obj:
        raise WeightsError(f"{where} holds no tensors (an empty mapping)")
    not_tensors = [str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise WeightsError(
            f"{where} is not a state-dict: {len(not_tensors)} of its {len(obj)} entries are "
            f"not tensors ({_first(not_tensors)})"
        )
    state = {str(k): v for k, v in obj.items()}
    for prefix in _WRAPPER_PREFIXES:
        if all(key.startswith(prefix) for key in state):
            state = {key[len(prefix) :]: value for key, value in state.items()}
    return state


# --- loading --------------------------------------------------------------------------------


def load_weights(
    model: nn.Module,
    path_or_state_dict: str | Path | Mapping[str, Any],
    *,
    strict: bool = True,
    source: str | None = None,
) -> LoadReport:
    """Load a ``.pth``/``.pt``/``.safetensors`` file or a state-dict into ``model``.

    A classifier (or auxiliary classifier) for a different number of classes is not loaded:
    the model keeps its fresh one and a warning says so. 3-channel stem filters are adapted to a
    model with another ``in_chans`` (summed for 1 channel, else repeated and rescaled by
    3/in_chans). With ``strict=True`` any other missing, unexpected or mis-shaped key raises a
    :class:`WeightsError`; with ``strict=False`` the tensors that fit are loaded and the rest are
    listed in the returned :class:`LoadReport`. ``source`` names a state-dict in messages (e.g.
    the file it was read from).
    """
    if source is None:
        is_mapping = isinstance(path_or_state_dict, Mapping)
        source = "a state-dict" if is_mapping else str(path_or_state_dict)
    state, metadata = read_state_dict(path_or_state_dict)
    report = LoadReport(source=source, metadata=metadata)
    target = model.state_dict()
    classifier_keys = _classifier_keys(model)

    state = dict(state)
    # A model may know how older or differently sized checkpoints of its own kind map onto it
    # (a ViT: legacy MLP keys, position embeddings for another image size).
    adapt = getattr(model, "adapt_state_dict", None)
    if callable(adapt):
        adapt(state, target, report)
    _adapt_first_conv(model, state, target, report)

    mismatched = [k for k in state if k in target and state[k].shape != target[k].shape]
    report.fresh_classifier = [k for k in mismatched if k in classifier_keys]
    report.mismatched = [k for k in mismatched if k not in classifier_keys]
    report.missing = [k for k in target if k not in state and k not in report.fresh_classifier]
    report.unexpected = [k for k in state if k not in target]
    # A file's classifier has nowhere to go in a model built without one (num_classes=0).
    head_prefix = getattr(model, "classifier_name", None)
    if head_prefix and not any(k.startswith(head_prefix + ".") for k in target):
        dropped = [k for k in report.unexpected if k.startswith(head_prefix + ".")]
        report.unexpected = [k for k in report.unexpected if k not in dropped]
        report.fresh_classifier += dropped

    problems = report.missing or report.unexpected or report.mismatched
    loadable = {k: v for k, v in state.items() if k in target and k not in mismatched}
    if (strict and problems) or not loadable:
        raise WeightsError(_mismatch_message(model, source, metadata, report, state, target))

    if report.fresh_classifier:
        warnings.warn(
            f"{source}: the classifier in the file does not fit this model "
            f"({_shape_note(report.fresh_classifier, state, target)}); "
            "keeping the model's freshly initialised classifier",
            stacklevel=2,
        )
    assign = any(t.is_meta for t in target.values())
    model.load_state_dict(loadable, strict=False, assign=assign)
    report.loaded = list(loadable)
    return report


def _classifier_keys(model: nn.Module) -> set[str]:
    """State-dict keys of the classifier and of any linear layer with num_classes outputs."""
    heads = set()
    name = getattr(model, "classifier_name", None) or (getattr(model, "default_cfg", {}) or {}).get(
        "classifier"
    )
    if name:
        heads.add(name)
    num_classes = getattr(model, "num_classes", None)
    for module_name, module in model.named_modules():
        if isinstance(module, nn.Linear) and module.out_features == num_classes:
            heads.add(module_name)
    keys = set()
    for head in heads:
        try:
            module = model.get_submodule(head)
        except AttributeError:
            continue
        keys |= {f"{head}.{k}" if head else k for k in module.state_dict()}
    return keys


def _adapt_first_conv(
    model: nn.Module, state: StateDict, target: StateDict, report: LoadReport
) -> None:
    stem = getattr(model, "first_conv", None)
    key = f"{stem}.weight" if stem else None
    if key not in state or key not in target:
        return
    weight, wanted = state[key], target[key]
    if weight.dim() != 4 or weight.shape[1] != 3 or wanted.shape[1] == 3:
        return
    if weight.shape[0] != wanted.shape[0] or weight.shape[2:] != wanted.shape[2:]:
        return
    in_chans = wanted.shape[1]
    if in_chans == 1:
        state[key] = weight.sum(dim=1, keepdim=True)
        report.adapted[key] = "summed the RGB filters into 1 input channel"
    else:
        repeats = math.ceil(in_chans / 3)
        state[key] = weight.repeat(1, repeats, 1, 1)[:, :in_chans] * (3 / in_chans)
        report.adapted[key] = (
            f"repeated the RGB filters over {in_chans} channels, scaled by 3/{in_chans}"
        )


def _shape_note(keys: list[str], state: StateDict, target: StateDict) -> str:
    notes = []
    for key in keys[:_SHOW]:
        if key in target:
            notes.append(f"{key} {list(state[key].shape)} vs {list(target[key].shape)}")
        else:
            notes.append(f"{key} (the model has no classifier)")
    return ", ".join(notes)


def _mismatch_message(
    model: nn.Module,
    source: str,
    metadata: dict[str, str],
    report: LoadReport,
    state: StateDict,
    target: StateDict,
) -> str:
    name = getattr(model, "model_name", type(model).__name__)
    saved_from = f" (saved from {metadata['model']!r})" if metadata.get("model") else ""
    lines = [
        f"{source}{saved_from} does not fit {name}: "
        f"{len(report.missing)} missing, {len(report.unexpected)} unexpected, "
        f"{len(report.mismatched)} mis-shaped keys "
        f"(file has {len(state)} tensors, model {len(target)})"
    ]
    if report.missing:
        lines.append(f"missing: {_first(report.missing)}")
    if report.unexpected:
        lines.append(f"unexpected: {_first(report.unexpected)}")
    if report.mismatched:
        shapes = [
            f"{k} {list(state[k].shape)} vs {list(target[k].shape)}"
            for k in report.mismatched[:_SHOW]
        ]
        lines.append(f"shape mismatch (file vs model): {', '.join(shapes)}")
    if not (report.missing or report.unexpected or report.mismatched):
        lines.append("no tensor in the file fits the model")
    return "; ".join(lines)


# --- saving ---------------------------------------------------------------------------------


def save_weights(model: nn.Module, path: str | Path) -> Path:
    """Write the model's state-dict as a safetensors file with cnnzoo metadata."""
    from safetensors.torch import save_file

    from cnnzoo import __version__

    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors: StateDict = {}
    seen: set[int] = set()
    for key, tensor in model.state_dict().items():
        if tensor.is_meta:
            raise WeightsError(f"cannot save {key}: the model lives on the meta device")
        tensor = tensor.detach().to("cpu").contiguous()
        pointer = tensor.untyped_storage().data_ptr()
        # safetensors refuses tensors sharing memory (tied weights): give each its own copy.
        tensors[key] = tensor.clone() if pointer in seen else tensor
        seen.add(pointer)
    metadata = {"format": "pt", "cnnzoo_version": __version__}
    cfg = getattr(model, "default_cfg", None) or {}
    if cfg.get("name"):
        metadata["model"] = str(cfg["name"])
    if getattr(model, "num_classes", None) is not None:
        metadata["num_classes"] = str(model.num_classes)
    stem = getattr(model, "first_conv", None)
    if stem:
        conv = model.get_submodule(stem)
        if isinstance(conv, nn.Conv2d):
            metadata["in_chans"] = str(conv.in_channels)
    save_file(tensors, str(path), metadata=metadata)
    return path
