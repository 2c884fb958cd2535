"""Keras-style callbacks: the protocol (:class:`Callback`) and the built-in ones."""

from cnnzoo.train.callbacks.base import Callback, CallbackList, Monitor, as_callback, with_defaults
from cnnzoo.train.callbacks.csv_logger import CSVLogger
from cnnzoo.train.callbacks.early_stopping import EarlyStopping
from cnnzoo.train.callbacks.model_checkpoint import ModelCheckpoint
from cnnzoo.train.callbacks.plots import Plots
from cnnzoo.train.callbacks.progress import ProgressBar
from cnnzoo.train.callbacks.reduce_lr import ReduceLROnPlateau
from cnnzoo.train.callbacks.tensorboard import TensorBoard

__all__ = [
    "CSVLogger",
    "Callback",
    "CallbackList",
    "EarlyStopping",
    "ModelCheckpoint",
    "Monitor",
    "Plots",
    "ProgressBar",
    "ReduceLROnPlateau",
    "TensorBoard",
    "as_callback",
    "with_defaults",
]
