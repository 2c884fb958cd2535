"""What a run returns: Keras' ``History`` (per-epoch lists under Keras' names) plus the final
test metrics."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["KERAS_NAMES", "History", "epoch_logs"]

# history.csv's columns -> the names Keras' logs and History use.
KERAS_NAMES = {
    "train_loss": "loss",
    "train_acc": "accuracy",
    "val_loss": "val_loss",
    "val_acc": "val_accuracy",
    "lr": "lr",
    "seconds": "seconds",
    "images_per_s": "images_per_s",
}


def epoch_logs(row: Mapping[str, Any]) -> dict[str, Any]:
    """One history row as Keras' epoch ``logs`` (quantities that were not measured left out)."""
    return {KERAS_NAMES[k]: v for k, v in row.items() if k in KERAS_NAMES and v is not None}


class History:
    """``history.history["val_loss"]`` is the list of each epoch's validation loss, as in Keras;
    ``metrics`` holds the final test metrics (what ``metrics.json`` holds; empty without a test
    split), ``run_dir`` the run directory and ``model`` the trained network."""

    def __init__(
        self,
        rows: Sequence[Mapping[str, Any]],
        metrics: Mapping[str, Any],
        run_dir: str | Path | None = None,
        model: Any = None,
        params: Mapping[str, Any] | None = None,
    ) -> None:
        self.epoch = [int(row["epoch"]) - 1 for row in rows]
        self.history: dict[str, list[Any]] = {}
        for row in rows:
            for key, value in epoch_logs(row).items():
                self.history.setdefault(key, []).append(value)
        self.metrics = dict(metrics)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.model = model
        self.params = dict(params or {})

    def __getitem__(self, key: str) -> Any:
        # cnnzoo < 0.2 returned the metrics dict from fit(); keep such code working for now.
        warnings.warn(
            f"fit() returns a History now; read history.metrics[{key!r}] instead",
            FutureWarning,
            stacklevel=2,
        )
        return self.metrics[key]

    def __repr__(self) -> str:
        top1 = self.metrics.get("test_top1")
        test = f", test top-1 {100 * top1:.2f}%" if top1 is not None else ""
        return f"<History: {len(self.epoch)} epochs{test}, run {self.run_dir}>"
