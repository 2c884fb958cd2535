"""One CSV row per epoch (Keras' CSVLogger)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cnnzoo.train.callbacks.base import Callback

__all__ = ["CSVLogger"]


class CSVLogger(Callback):
    """Write every epoch's row so far (the run's history.csv by default, else ``filename``).

    The file is rewritten whole and atomically each epoch from the trainer's history, which the
    checkpoint carries, so after a crash and ``--resume`` it holds exactly the epochs that were
    saved. Columns: epoch, train_loss, train_acc, val_loss, val_acc, lr, seconds, images_per_s.
    """

    main_process_only = True

    def __init__(self, filename: str | Path | None = None) -> None:
        super().__init__()
        self.filename = filename

    def replaces(self, other: Callback) -> bool:
        return isinstance(other, CSVLogger) and other.filename == self.filename

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        assert self.trainer is not None
        self.trainer.run.write_history(self.trainer.history, self.filename)
