"""Save weights when a monitored quantity improves (Keras' ModelCheckpoint)."""

from __future__ import annotations

from typing import Any

from cnnzoo.train.callbacks.base import Callback, Monitor

__all__ = ["ModelCheckpoint"]


class ModelCheckpoint(Callback):
    """Keras' ModelCheckpoint, writing through the run directory.

    Without ``filepath`` it keeps the run's ``best`` checkpoint (``best.safetensors`` and
    ``best.state.pt``; `cnnzoo evaluate` and `predict` read it when the run ended with those
    weights, or when it did not finish). With one, e.g.
    ``"ckpt-{epoch:02d}-{val_loss:.3f}.safetensors"`` (formatted with the 1-based epoch and the
    epoch's logs, relative to the run directory), it writes the evaluated weights there: every
    epoch, or with ``save_best_only`` only when ``monitor`` improved by more than ``min_delta``.
    ``best_epoch`` (1-based) and ``best`` say where the best value was seen.
    """

    main_process_only = True

    def __init__(
        self,
        filepath: str | None = None,
        monitor: str = "val_loss",
        mode: str = "auto",
        save_best_only: bool = True,
        min_delta: float = 0.0,
    ) -> None:
        super().__init__()
        self.filepath = filepath
        self.monitor = Monitor(monitor, mode, min_delta)
        self.save_best_only = save_best_only or filepath is None
        self.best: float | None = None
        self.best_epoch: int | None = None

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        assert self.trainer is not None
        logs = logs if logs is not None else {}
        current = self.monitor.value(logs, "ModelCheckpoint")
        improved = current is not None and self.monitor.improved(current, self.best)
        if improved:
            self.best, self.best_epoch = current, epoch + 1
        if self.filepath is None:
            logs["improved"] = improved
            if improved:
                self._save_best(epoch + 1, current)  # type: ignore[arg-type]
        elif improved or not self.save_best_only:
            name = self.filepath.format(epoch=epoch + 1, **logs)
            self.trainer.run.save_weights(
                name, self.trainer.get_weights(), self.trainer.weights_metadata()
            )

    def _save_best(self, epoch: int, value: float) -> None:
        assert self.trainer is not None
        name = self.monitor.name
        state = {"epoch": epoch, "monitor": name, "value": value}
        meta = {**self.trainer.weights_metadata(), "monitor": name, "value": str(value)}
        self.trainer.run.save_checkpoint("best", self.trainer.get_weights(), state, meta)

    def replaces(self, other: Callback) -> bool:
        return isinstance(other, ModelCheckpoint) and other.filepath == self.filepath

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_epoch = state["best"], state["best_epoch"]
