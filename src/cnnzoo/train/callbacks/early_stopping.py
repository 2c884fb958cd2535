"""Stop training when a monitored quantity stops improving (Keras' EarlyStopping)."""

from __future__ import annotations

from typing import Any

from cnnzoo.train.callbacks.base import Callback, Monitor

__all__ = ["EarlyStopping"]


class EarlyStopping(Callback):
    """Keras' EarlyStopping: after ``patience`` epochs in a row without an improvement of more
    than ``min_delta`` in ``monitor``, set ``stop_training``.

    ``wait`` counts the epochs since the last improvement; training stops at the end of the
    epoch where ``wait`` reaches ``patience`` (never on the first epoch). With
    ``restore_best_weights`` the weights of the best epoch (the evaluated ones: the EMA when
    there is one) are put back when training ends, whether or not it stopped early; the weights
    are kept in memory and in the run's checkpoint. ``baseline``: improvements only reset
    ``wait`` once they also beat it. ``start_from_epoch``: epochs before it are not watched.
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        min_delta: float = 0.0,
        patience: int = 0,
        mode: str = "auto",
        baseline: float | None = None,
        restore_best_weights: bool = False,
        start_from_epoch: int = 0,
    ) -> None:
        super().__init__()
        self.monitor = Monitor(monitor, mode, min_delta)
        self.patience = patience
        self.baseline = baseline
        self.restore_best_weights = restore_best_weights
        self.start_from_epoch = start_from_epoch
        self._reset()

    def _reset(self) -> None:
        self.wait = 0
        self.stopped_epoch = 0
        self.best: float | None = None
        self.best_epoch = 0
        self.best_weights: dict[str, Any] | None = None

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        if self.trainer is None or self.trainer.initial_epoch == 0:  # not a resumed run
            self._reset()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        current = self.monitor.value(logs, "EarlyStopping")
        if current is None or epoch < self.start_from_epoch:
            return
        if self.restore_best_weights and self.best_weights is None:
            # Until something improves, the current weights are the best there are.
            self.best_weights, self.best_epoch = self._weights(), epoch
        self.wait += 1
        if self.monitor.improved(current, self.best):
            self.best, self.best_epoch = current, epoch
            if self.restore_best_weights:
                self.best_weights = self._weights()
            if self.baseline is None or self.monitor.improved(current, self.baseline):
                self.wait = 0
            return
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            assert self.trainer is not None
            self.trainer.stop_training = True

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        assert self.trainer is not None
        if self.stopped_epoch > 0:
            best = self.best if self.best is not None else float("nan")
            self.trainer.log(
                f"early stop after epoch {self.stopped_epoch + 1}: {self.monitor.name} has not "
                f"improved for {self.patience} epochs (best {best:.4f} at epoch "
                f"{self.best_epoch + 1})"
            )
        if self.restore_best_weights and self.best_weights is not None:
            self.trainer.set_weights(self.best_weights, f"best (epoch {self.best_epoch + 1})")

    def _weights(self) -> dict[str, Any]:
        assert self.trainer is not None
        return {k: v.detach().to("cpu", copy=True) for k, v in self.trainer.get_weights().items()}

    def state_dict(self) -> dict[str, Any]:
        return {
            "wait": self.wait,
            "stopped_epoch": self.stopped_epoch,
            "best": self.best,
            "best_epoch": self.best_epoch,
            "best_weights": self.best_weights,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.wait = int(state["wait"])
        self.stopped_epoch = int(state["stopped_epoch"])
        self.best = state["best"]
        self.best_epoch = int(state["best_epoch"])
        self.best_weights = state["best_weights"]
