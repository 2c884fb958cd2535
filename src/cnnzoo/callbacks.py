"""``cnnzoo.callbacks``: the training callbacks under the name Keras users look for
(``keras.callbacks``); the same classes as :mod:`cnnzoo.train.callbacks`.

    from cnnzoo.callbacks import EarlyStopping, ModelCheckpoint, TensorBoard
"""

from cnnzoo.train.callbacks import (
    Callback,
    CallbackList,
    CSVLogger,
    EarlyStopping,
    ModelCheckpoint,
    Monitor,
    Plots,
    ProgressBar,
    ReduceLROnPlateau,
    TensorBoard,
    as_callback,
    with_defaults,
)

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
