"""Experiments: the course notes' claims, reproduced and measured by one call (or command) each.

Every experiment trains ordinary run directories (its sub-runs) under one output directory,
reuses the finished ones, continues unfinished ones when asked (``resume=True``), and writes a
markdown table, a figure and a JSON record that names the command, the machine and the date.
"""

from cnnzoo.experiments import (  # noqa: F401  (they register themselves)
    data_efficiency,
    degradation,
    zoo_table,
)
from cnnzoo.experiments.data_efficiency import run_data_efficiency
from cnnzoo.experiments.degradation import run_degradation
from cnnzoo.experiments.registry import Experiment, get_experiment, list_experiments
from cnnzoo.experiments.zoo_table import run_zoo_table

__all__ = [
    "Experiment",
    "get_experiment",
    "list_experiments",
    "run_data_efficiency",
    "run_degradation",
    "run_zoo_table",
]
