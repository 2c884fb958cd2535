"""The end-of-run plots: learning curves and the test confusion matrix."""

from __future__ import annotations

from typing import Any

from cnnzoo.train.callbacks.base import Callback

__all__ = ["Plots"]


class Plots(Callback):
    """``history.png`` (loss and accuracy per epoch) when training ends and
    ``confusion_matrix.png`` once the test split is scored, in the run directory."""

    main_process_only = True

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        from cnnzoo.analysis.plots import plot_history

        assert self.trainer is not None
        if self.trainer.history:
            plot_history(self.trainer.history, self.trainer.run.history_plot)

    def on_test_end(self, logs: dict[str, Any] | None = None) -> None:
        from cnnzoo.analysis.plots import plot_confusion_matrix

        assert self.trainer is not None
        result = self.trainer.test_result
        if result is not None:
            names = list(self.trainer.bundle.class_names)
            plot_confusion_matrix(result.confusion, names, self.trainer.run.confusion_plot)
