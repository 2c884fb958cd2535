"""The experiments by name: what each reproduces and how long it takes on this kind of machine."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cnnzoo.errors import UsageError

__all__ = ["Experiment", "get_experiment", "list_experiments", "register_experiment"]


@dataclass(frozen=True)
class Experiment:
    """One experiment: ``run(output_dir, **options)`` trains its sub-runs and writes its results."""

    name: str  # as the command line spells it: `cnnzoo experiment NAME`
    title: str
    reproduces: str  # the paper and its figure or table
    run: Callable[..., dict[str, Any]]
    duration: Callable[[], str]  # how long the defaults take here, saying measured or estimated


_EXPERIMENTS: dict[str, Experiment] = {}


def register_experiment(experiment: Experiment) -> Experiment:
    if experiment.name in _EXPERIMENTS:
        raise RuntimeError(f"experiment {experiment.name!r} registered twice")
    _EXPERIMENTS[experiment.name] = experiment
    return experiment


def list_experiments() -> list[Experiment]:
    return list(_EXPERIMENTS.values())


def get_experiment(name: str) -> Experiment:
    if name in _EXPERIMENTS:
        return _EXPERIMENTS[name]
    close = difflib.get_close_matches(name, list(_EXPERIMENTS), n=2, cutoff=0.5)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    raise UsageError(f"unknown experiment {name!r}{hint} (known: {', '.join(_EXPERIMENTS)})")
