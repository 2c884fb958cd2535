"""``cnnzoo.callbacks``: the training callbacks under the name Keras users look for
(``keras.callbacks``); the same classes as :mod:`cnnzoo.train.callbacks`.

    from cnnzoo.callbacks import EarlyStopping, ModelCheckpoint, TensorBoard
"""

from cnnzoo.train.callbacks import *  # noqa: F403  (this module is that one's public name)
from cnnzoo.train.callbacks import __all__  # noqa: F401
