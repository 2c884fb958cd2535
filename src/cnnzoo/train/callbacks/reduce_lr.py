"""Cut the learning rate when a monitored quantity stalls (Keras' ReduceLROnPlateau)."""

from __future__ import annotations

from typing import Any

from cnnzoo.train.callbacks.base import Callback, Monitor

__all__ = ["ReduceLROnPlateau"]


class ReduceLROnPlateau(Callback):
    """Keras' ReduceLROnPlateau: after ``patience`` epochs without an improvement of more than
    ``min_delta``, multiply the learning rate by ``factor`` (not below ``min_lr``), then wait
    ``cooldown`` epochs before counting again. The cut scales the run's schedule, so warmup and
    cosine keep their shape at the lower level."""

    def __init__(
        self,
        monitor: str = "val_loss",
        factor: float = 0.1,
        patience: int = 10,
        mode: str = "auto",
        min_delta: float = 1e-4,
        cooldown: int = 0,
        min_lr: float = 0.0,
    ) -> None:
        super().__init__()
        if not 0 < factor < 1:
            raise ValueError(f"factor must be in (0, 1), got {factor}")
        self.monitor = Monitor(monitor, mode, min_delta)
        self.factor = factor
        self.patience = patience
        self.cooldown = cooldown
        self.min_lr = min_lr
        self._reset()

    def _reset(self) -> None:
        self.best: float | None = None
        self.wait = 0
        self.cooldown_counter = 0

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        if self.trainer is None or self.trainer.initial_epoch == 0:
            self._reset()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        current = self.monitor.value(logs, "ReduceLROnPlateau")
        if current is None:
            return
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.wait = 0
        if self.monitor.improved(current, self.best):
            self.best, self.wait = current, 0
            return
        if self.cooldown_counter > 0:
            return
        self.wait += 1
        if self.wait >= self.patience:
            assert self.trainer is not None
            schedule = self.trainer.schedule
            old = schedule.current_lr()
            if old > self.min_lr:
                new = max(old * self.factor, self.min_lr)
                schedule.plateau_scale *= new / old
                self.trainer.log(
                    f"epoch {epoch + 1}: {self.monitor.name} stalled for {self.wait} epochs; "
                    f"lr {old:.3g} -> {new:.3g}"
                )
                self.cooldown_counter, self.wait = self.cooldown, 0

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "wait": self.wait, "cooldown_counter": self.cooldown_counter}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = state["best"]
        self.wait = int(state["wait"])
        self.cooldown_counter = int(state["cooldown_counter"])
