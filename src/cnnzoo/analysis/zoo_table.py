"""The figures `cnnzoo models` lists for each model, kept in a cache between calls.

Counting multiply-adds runs every model once on the meta device: about 16 s for the whole zoo on
a 2-core CPU, for figures that only change when a model's code or torch changes. So each model's
figures are stored in ``$CNNZOO_CACHE/tables/models.json`` (default ``~/.cache/cnnzoo``) with a
key made from torch's version and the source of the model's file and of the code it is built and
counted with. A changed key recomputes that model; a cache that cannot be read or written is
ignored.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import inspect
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console

import cnnzoo
from cnnzoo.progress import each_with_bar
from cnnzoo.registry import get_entry

__all__ = [
    "SELECTION_GUIDE",
    "ModelFigures",
    "ZooRow",
    "cache_file",
    "compute_figures",
    "figures_key",
    "model_figures",
    "read_cache",
    "selection_guide",
    "write_cache",
    "zoo_rows",
]

# Code every model's figures depend on besides its own file.
SHARED_SOURCES = ("registry.py", "models/base.py", "models/layers.py", "analysis/flops.py")


@dataclass(frozen=True)
class ModelFigures:
    params: int
    macs: int
    input_side: int
    min_input_size: int


def cache_file() -> Path:
    root = os.environ.get("CNNZOO_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "cnnzoo"
    return base / "tables" / "models.json"


@functools.cache
def _file_digest(path: Path) -> bytes:
    """Read once per process: the zoo's 66 models share a handful of source files."""
    try:
        return hashlib.sha256(path.read_bytes()).digest()
    except OSError:
        return b""


def figures_key(name: str) -> str:
    """Changes whenever torch or the code that builds and counts ``name`` changes."""
    package = Path(cnnzoo.__file__).parent
    sources = [package / relative for relative in SHARED_SOURCES]
    # The registered builder is registry.py's wrapper: its model's own file is the wrapped one.
    builder_file = inspect.getsourcefile(inspect.unwrap(get_entry(name).builder))
    if builder_file:
        sources.append(Path(builder_file))
    digest = hashlib.sha256(torch.__version__.encode())
    for path in sources:
        digest.update(_file_digest(path))
    return digest.hexdigest()[:20]


def compute_figures(name: str) -> ModelFigures:
    from cnnzoo.analysis.flops import count_macs

    with torch.device("meta"):
        model = get_entry(name).builder()
    return ModelFigures(
        params=sum(p.numel() for p in model.parameters()),
        macs=count_macs(model),
        input_side=model.default_cfg["input_size"][-1],
        min_input_size=model.min_input_size,
    )


def read_cache(path: Path) -> dict[str, dict]:
    """A cache file's table; empty when it is missing or unreadable."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_cache(path: Path, data: dict[str, dict]) -> None:
    from cnnzoo.checkpoint import atomic_write_bytes

    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, json.dumps(data, indent=1, sort_keys=True).encode())


def model_figures(
    names: list[str], *, progress: bool = True, console: Console | None = None
) -> dict[str, ModelFigures]:
    """Figures for ``names``, from the cache where its key still matches, computed otherwise."""
    path = cache_file()
    stored = read_cache(path)
    keys = {name: figures_key(name) for name in names}
    figures: dict[str, ModelFigures] = {}
    for name in names:
        entry = stored.get(name)
        if isinstance(entry, dict) and entry.get("key") == keys[name]:
            with contextlib.suppress(TypeError, KeyError):
                figures[name] = ModelFigures(**entry["figures"])
    missing = [name for name in names if name not in figures]
    if not missing:
        return figures
    console = console or Console(stderr=True)
    shown = progress and console.is_terminal  # no bar residue in piped output
    for name in each_with_bar(missing, "counting", enabled=shown, console=console):
        figures[name] = compute_figures(name)
        stored[name] = {"key": keys[name], "figures": dataclasses.asdict(figures[name])}
    write_cache(path, stored)
    return figures


@dataclass(frozen=True)
class ZooRow:
    """One line of the zoo catalogue: ``cnnzoo models``' columns and what the explorer adds."""

    name: str
    family: str
    year: int
    paper: str
    params: int
    macs: int
    input_side: int
    min_input_size: int
    imagenet_top1: float | None
    weights: tuple[str, ...]  # weight names, cnnzoo's shipped ones first


def zoo_rows(
    names: list[str], *, progress: bool = True, console: Console | None = None
) -> list[ZooRow]:
    """The catalogue rows of ``names``, with :func:`model_figures`' cached counts."""
    from cnnzoo.pretrained import list_weights

    figures = model_figures(names, progress=progress, console=console)
    weights: dict[str, list[str]] = {}
    for spec in sorted(list_weights(), key=lambda spec: spec.source != "cnnzoo"):
        weights.setdefault(spec.model, []).append(spec.name)
    rows = []
    for name in names:
        entry, row = get_entry(name), figures[name]
        rows.append(
            ZooRow(
                name=name,
                family=entry.family,
                year=entry.paper.year,
                paper=entry.paper.title,
                params=row.params,
                macs=row.macs,
                input_side=row.input_side,
                min_input_size=row.min_input_size,
                imagenet_top1=entry.imagenet_top1,
                weights=tuple(weights.get(name, ())),
            )
        )
    return rows


# The course notes' model selection guide (seed 003, section 7: 용도별 추천), as patterns over
# the zoo's names.
SELECTION_GUIDE: dict[str, tuple[str, ...]] = {
    "fast inference": ("mobilenet_*", "efficientnet_b0"),  # MobileNet, EfficientNet-B0
    "high accuracy": ("efficientnet_b[4-7]",),  # EfficientNet-B4~B7
    "learning": ("vgg*", "resnet18"),  # VGG, ResNet-18
    "memory limited": ("mobilenet_*", "shufflenet_*"),  # MobileNet, ShuffleNet
}


def selection_guide(names: list[str]) -> dict[str, list[str]]:
    """Each preset of :data:`SELECTION_GUIDE` as the model names it picks."""
    import fnmatch

    return {
        preset: [name for name in names if any(fnmatch.fnmatch(name, p) for p in patterns)]
        for preset, patterns in SELECTION_GUIDE.items()
    }
