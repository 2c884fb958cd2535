"""The live bar of each epoch and its summary line (Keras' progress bar, on stderr)."""

from __future__ import annotations

import time
from typing import Any

from cnnzoo.progress import EpochBar
from cnnzoo.train.callbacks.base import Callback

__all__ = ["ProgressBar"]


def _percent(value: float | None) -> str:
    return "  -   " if value is None else f"{100 * value:6.2f}%"


class ProgressBar(Callback):
    """A rich bar per epoch on stderr (loss, accuracy, lr, images/s, ETA; only on a terminal and
    when ``bar``), and one line per epoch in the run's log. A ``*`` marks an epoch that gave
    the run's new best checkpoint."""

    main_process_only = True

    def __init__(self, bar: bool = True) -> None:
        super().__init__()
        self.bar = EpochBar(enabled=bar)
        self._start = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        assert self.trainer is not None
        self._start = time.perf_counter()
        self.bar.start(f"epoch {epoch + 1}/{self.trainer.epochs}", self.trainer.steps_per_epoch)

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        assert self.trainer is not None
        step = batch + 1
        if not self.bar.enabled or not logs or (
            step % self.trainer.config.progress_every and step != self.trainer.steps_per_epoch
        ):
            return
        rate = logs.get("seen", 0) / max(time.perf_counter() - self._start, 1e-9)
        self.bar.update(
            step,
            f"loss {logs['loss']:.4f}  acc {logs['accuracy']:6.2%}  lr {logs['lr']:.2e}  "
            f"{rate:,.0f} img/s",
        )

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        assert self.trainer is not None
        self.bar.stop()
        logs = logs or {}
        val = (
            f"  val loss {logs['val_loss']:.4f} acc {_percent(logs.get('val_accuracy'))}"
            if logs.get("val_loss") is not None
            else ""
        )
        self.trainer.log(
            f"epoch {epoch + 1:>3}/{self.trainer.epochs}  train loss {logs['loss']:.4f} acc "
            f"{_percent(logs.get('accuracy'))}{val}  lr {logs['lr']:.2e}  "
            f"{logs['seconds']:.1f}s {logs['images_per_s']:,.0f} img/s"
            + ("  *" if logs.get("improved") else "")
        )

    def close(self) -> None:
        self.bar.stop()
