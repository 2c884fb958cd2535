"""Training: :class:`TrainConfig`, :class:`Trainer`, callbacks and the Keras-style
:func:`fit` / :func:`evaluate` / :func:`predict`."""

from cnnzoo.train import callbacks
from cnnzoo.train.api import evaluate, fit, predict
from cnnzoo.train.config import TrainConfig
from cnnzoo.train.history import History
from cnnzoo.train.planning import plan_input
from cnnzoo.train.trainer import Trainer, TrainingDiverged

__all__ = [
    "History",
    "TrainConfig",
    "Trainer",
    "TrainingDiverged",
    "callbacks",
    "evaluate",
    "fit",
    "plan_input",
    "predict",
]
