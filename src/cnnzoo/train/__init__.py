"""Training: :class:`TrainConfig`, :class:`Trainer` and the one-call :func:`fit`."""

from cnnzoo.train.config import TrainConfig
from cnnzoo.train.trainer import Trainer, TrainingDiverged, fit, plan_input

__all__ = ["TrainConfig", "Trainer", "TrainingDiverged", "fit", "plan_input"]
