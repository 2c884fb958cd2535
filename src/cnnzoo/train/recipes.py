"""Recipes as files: a YAML or JSON mapping of :class:`TrainConfig` fields.

``cnnzoo train --config FILE`` (or ``--recipe NAME`` for one shipped in ``cnnzoo/recipes/``)
reads one; flags given beside it override its fields. A run's ``config.json`` is a recipe too:
its ``data`` section and where-to-write fields (output_dir, resume, overwrite) are left out, so
that it repeats the experiment into a new run.
"""

from __future__ import annotations

import difflib
from importlib import resources
from pathlib import Path
from typing import Any

from cnnzoo.errors import UsageError
from cnnzoo.train.config import RUN_FACT_KEYS, TrainConfig, read_mapping

__all__ = ["load_recipe", "recipe_names", "recipe_path"]

RUN_LOCATION = ("output_dir", "resume", "overwrite")


def _shipped() -> dict[str, Path]:
    folder = resources.files("cnnzoo") / "recipes"
    return {
        Path(entry.name).stem: Path(str(entry))
        for entry in folder.iterdir()
        if entry.name.endswith((".yaml", ".yml", ".json"))
    }


def recipe_names() -> list[str]:
    """The recipes shipped with cnnzoo (``--recipe NAME``)."""
    return sorted(_shipped())


def recipe_path(name_or_path: str | Path) -> Path:
    """A recipe file: an existing path, else a shipped recipe's name."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    shipped = _shipped()
    if str(name_or_path) in shipped:
        return shipped[str(name_or_path)]
    if path.suffix or path.parent != Path("."):
        raise UsageError(f"recipe {name_or_path}: no such file")
    close = difflib.get_close_matches(str(name_or_path), list(shipped), n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise UsageError(f"unknown recipe {str(name_or_path)!r}; {hint}shipped: {', '.join(shipped)}")


def load_recipe(name_or_path: str | Path) -> dict[str, Any]:
    """The recipe's fields, each checked against TrainConfig (a UsageError names the file and
    the field)."""
    path = recipe_path(name_or_path)
    data = read_mapping(path)
    fields = TrainConfig.check_fields(data, str(path))
    if isinstance(data, dict) and any(key in data for key in RUN_FACT_KEYS):  # a run's config
        fields = {k: v for k, v in fields.items() if k not in RUN_LOCATION}
    return fields
