"""Curves (and weight histograms) for TensorBoard (Keras' TensorBoard callback)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cnnzoo.train.callbacks.base import Callback

__all__ = ["TensorBoard"]

# history row -> TensorBoard tag
TAGS = {
    "train_loss": "train/loss",
    "train_acc": "train/acc",
    "val_loss": "val/loss",
    "val_acc": "val/acc",
    "lr": "lr",
    "images_per_s": "images/per_s",
}


class TensorBoard(Callback):
    """Event files in ``log_dir`` (default: the run directory): the epoch's scalars, the test
    scores at the end, and with ``histogram_freq=N`` every parameter's histogram each N-th
    epoch (as Keras' ``histogram_freq``). A resumed run drops the events a killed run wrote past
    its last checkpoint."""

    main_process_only = True

    def __init__(self, log_dir: str | Path | None = None, histogram_freq: int = 0) -> None:
        super().__init__()
        self.log_dir = log_dir
        self.histogram_freq = histogram_freq
        self.writer: Any = None

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        assert self.trainer is not None
        log_dir = self.log_dir if self.log_dir is not None else self.trainer.run.path
        self.writer = SummaryWriter(str(log_dir), purge_step=self.trainer.initial_epoch + 1)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        assert self.trainer is not None and self.writer is not None
        row = self.trainer.history[-1]
        for key, tag in TAGS.items():
            if row.get(key) is not None:
                self.writer.add_scalar(tag, row[key], epoch + 1)
        if self.histogram_freq and (epoch + 1) % self.histogram_freq == 0:
            for name, tensor in self.trainer.get_weights().items():
                if tensor.is_floating_point():
                    self.writer.add_histogram(name, tensor.detach().float().cpu(), epoch + 1)
        self.writer.flush()

    def on_test_end(self, logs: dict[str, Any] | None = None) -> None:
        if self.writer is None or not logs:
            return
        assert self.trainer is not None
        step = len(self.trainer.history)
        self.writer.add_scalar("test/top1", logs["test_accuracy"], step)
        self.writer.add_scalar("test/loss", logs["test_loss"], step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
