"""Experiments: the course notes' claims, reproduced and measured by one call (or command) each.

Every experiment trains ordinary run directories (its sub-runs) under one output directory,
reuses the finished ones, continues unfinished ones when asked (``resume=True``), and writes a
markdown table, a figure and a JSON record that names the command, the machine and the date.
"""

from cnnzoo.experiments import degradation, zoo_table  # noqa: F401  (they register themselves)
from cnnzoo.experiments.degradation import run_degradation
from cnnzoo.experiments.registry import Experiment, get_experiment, list_experiments
from cnnzoo.experiments.zoo_table import run_zoo_table

__all__ = ["Experiment", "get_experiment", "list_experiments", "run_degradation", "run_zoo_table"]
