"""Callbacks: Keras' semantics checked against hand-computed cases, user callbacks that stop
training, the order of the hooks, and callback state that survives a resume."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from cnnzoo.checkpoint import load_checkpoint
from cnnzoo.train import TrainConfig, Trainer, fit
from cnnzoo.train.callbacks import (
    Callback,
    CSVLogger,
    EarlyStopping,
    ModelCheckpoint,
    ReduceLROnPlateau,
    TensorBoard,
)
from cnnzoo.train.optim import LRSchedule

FAST = dict(quiet=True, num_threads=1, tensorboard=False, plots=False)
DIGITS = dict(model="lenet5", dataset="digits", batch_size=64, lr=3e-3, augment="none", **FAST)


class FakeTrainer:
    """What EarlyStopping and ReduceLROnPlateau touch: weights, a schedule, a log."""

    def __init__(self) -> None:
        self.stop_training = False
        self.initial_epoch = 0
        self.epoch = 0
        self.restored: tuple[dict, str] | None = None
        self.lines: list[str] = []
        self.model = nn.Linear(1, 1)
        self.schedule = LRSchedule(
            torch.optim.SGD(self.model.parameters(), lr=1.0),
            TrainConfig(model="m", epochs=100, lr=1.0, schedule="none", warmup_epochs=0),
            steps_per_epoch=1,
        )

    def get_weights(self) -> dict[str, torch.Tensor]:
        return {"w": torch.tensor(float(self.epoch))}  # the weights "are" the epoch number

    def set_weights(self, weights: dict[str, torch.Tensor], label: str) -> None:
        self.restored = (weights, label)

    def log(self, line: str) -> None:
        self.lines.append(line)


def drive(callback: Callback, values: list[float], monitor: str = "val_loss") -> FakeTrainer:
    """Feed one monitored value per epoch until the callback stops training."""
    trainer = FakeTrainer()
    callback.trainer = trainer  # type: ignore[assignment]
    callback.on_train_begin({})
    for epoch, value in enumerate(values):
        trainer.epoch = epoch
        callback.on_epoch_end(epoch, {monitor: value, "loss": 1.0})
        if trainer.stop_training:
            break
    callback.on_train_end({})
    return trainer


@pytest.mark.parametrize(
    ("kwargs", "values", "stopped", "best", "best_epoch"),
    [
        # Epochs 0 and 1 improve; 2 and 3 do not: wait reaches 2 at epoch 3.
        (dict(patience=2), [1.0, 0.9, 0.95, 0.91, 0.5], 3, 0.9, 1),
        # patience 0: the first epoch that does not improve stops (never epoch 0).
        (dict(patience=0), [1.0, 1.2, 0.5], 1, 1.0, 0),
        # min_delta 0.05: 0.96 is no improvement over 1.0 (needs < 0.95); 0.94 is.
        (dict(patience=1, min_delta=0.05), [1.0, 0.96, 0.94, 0.93], 1, 1.0, 0),
        (dict(patience=2, min_delta=0.05), [1.0, 0.96, 0.94, 0.93, 0.92], 4, 0.94, 2),
        # An equal value is no improvement.
        (dict(patience=1), [0.5, 0.5], 1, 0.5, 0),
        # Never triggers.
        (dict(patience=5), [1.0, 0.8, 0.9, 0.7], 0, 0.7, 3),
        # baseline: improvements that do not beat it do not reset the wait (without it, this
        # run would not stop).
        (dict(patience=2, baseline=0.5), [1.0, 0.9, 0.95], 2, 0.9, 1),
        (dict(patience=2), [1.0, 0.9, 0.95], 0, 0.9, 1),
    ],
)
def test_early_stopping_hand_computed(kwargs, values, stopped, best, best_epoch) -> None:
    stopper = EarlyStopping(monitor="val_loss", **kwargs)
    trainer = drive(stopper, values)
    assert stopper.stopped_epoch == stopped and trainer.stop_training == (stopped > 0)
    assert stopper.best == pytest.approx(best) and stopper.best_epoch == best_epoch


def test_early_stopping_on_accuracy_maximises_and_restores_the_best_weights() -> None:
    stopper = EarlyStopping(monitor="val_accuracy", patience=2, restore_best_weights=True)
    trainer = drive(stopper, [0.5, 0.7, 0.6, 0.65], monitor="val_accuracy")
    assert stopper.monitor.mode == "max" and stopper.stopped_epoch == 3
    weights, label = trainer.restored  # type: ignore[misc]
    assert float(weights["w"]) == 1 and label == "best (epoch 2)"
    assert any("early stop after epoch 4" in line for line in trainer.lines)


def test_restore_best_weights_even_when_it_never_triggers() -> None:
    stopper = EarlyStopping(patience=10, restore_best_weights=True)
    trainer = drive(stopper, [0.5, 0.4, 0.6])
    assert stopper.stopped_epoch == 0 and not trainer.stop_training
    weights, _ = trainer.restored  # type: ignore[misc]
    assert float(weights["w"]) == 1  # epoch 1 had the lowest loss


def test_early_stopping_with_a_missing_monitor_warns_once_and_waits() -> None:
    stopper = EarlyStopping(monitor="val_loss", patience=0)
    with pytest.warns(UserWarning, match="val_loss is not in the logs"):
        trainer = drive(stopper, [1.0, 2.0, 3.0], monitor="loss")
    assert not trainer.stop_training


def test_reduce_lr_on_plateau_hand_computed() -> None:
    # patience 2, cooldown 1: epochs 1-2 stall: cut at 2; the cooldown epoch 3 resets the wait
    # and counts again; 3-4 stall: cut at 4; 6 improves; 7-8 stall: cut to min_lr at 8; at 10
    # the lr is at min_lr already: no cut.
    cutter = ReduceLROnPlateau(factor=0.5, patience=2, cooldown=1, min_delta=0.0, min_lr=0.2)
    trainer = FakeTrainer()
    cutter.trainer = trainer  # type: ignore[assignment]
    cutter.on_train_begin({})
    lrs = []
    for epoch, value in enumerate([1.0, 1.0, 1.1, 1.2, 1.0, 1.0, 0.5, 0.6, 0.6, 0.6, 0.6]):
        cutter.on_epoch_end(epoch, {"val_loss": value})
        lrs.append(trainer.schedule.current_lr())
    assert lrs == pytest.approx([1, 1, 0.5, 0.5, 0.25, 0.25, 0.25, 0.25, 0.2, 0.2, 0.2])
    assert len(trainer.lines) == 3 and "lr 0.25 -> 0.2" in trainer.lines[-1]


class Recorder(Callback):
    """Records every hook with its arguments, and can stop training at a given point."""

    def __init__(self, stop_at_epoch: int | None = None, stop_at_batch: int | None = None):
        super().__init__()
        self.calls: list[tuple[Any, ...]] = []
        self.stop_at_epoch, self.stop_at_batch = stop_at_epoch, stop_at_batch
        self.epochs_seen = 0

    def on_train_begin(self, logs=None):
        self.calls.append(("train_begin",))

    def on_epoch_begin(self, epoch, logs=None):
        self.calls.append(("epoch_begin", epoch))

    def on_train_batch_end(self, batch, logs=None):
        self.calls.append(("batch_end", batch, sorted(logs or {})))
        if batch == self.stop_at_batch:
            self.trainer.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        self.epochs_seen += 1
        self.calls.append(("epoch_end", epoch, dict(logs)))
        if epoch == self.stop_at_epoch:
            self.trainer.stop_training = True

    def on_train_end(self, logs=None):
        self.calls.append(("train_end",))

    def on_test_end(self, logs=None):
        self.calls.append(("test_end", dict(logs)))

    def state_dict(self) -> dict[str, Any]:
        return {"epochs_seen": self.epochs_seen}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epochs_seen = state["epochs_seen"]


def test_hooks_run_in_keras_order_with_keras_logs(tmp_path: Path) -> None:
    recorder = Recorder()
    history = fit(**DIGITS, epochs=2, progress_every=5, output_dir=str(tmp_path / "r"),
                  callbacks=[recorder])  # fmt: skip
    kinds = [call[0] for call in recorder.calls]
    steps = kinds.count("batch_end") // 2
    assert kinds == ["train_begin", "epoch_begin", *["batch_end"] * steps, "epoch_end",
                     "epoch_begin", *["batch_end"] * steps, "epoch_end", "train_end",
                     "test_end"]  # fmt: skip
    epoch_logs = recorder.calls[steps + 2][2]
    assert {"loss", "accuracy", "val_loss", "val_accuracy", "lr"} <= set(epoch_logs)
    # Batch logs: empty until the first refresh (progress_every=5), then running averages.
    batch_logs = [call[2] for call in recorder.calls if call[0] == "batch_end"]
    assert batch_logs[0] == [] and batch_logs[4] == ["accuracy", "loss", "lr", "seen"]
    assert history.history["val_loss"] == [row[2]["val_loss"] for row in recorder.calls
                                           if row[0] == "epoch_end"]  # fmt: skip
    test = recorder.calls[-1][1]
    assert test["test_accuracy"] == pytest.approx(history.metrics["test_top1"])


def test_a_user_callback_stops_training_after_an_epoch(tmp_path: Path) -> None:
    history = fit(**DIGITS, epochs=5, output_dir=str(tmp_path / "r"),
                  callbacks=[Recorder(stop_at_epoch=1)])  # fmt: skip
    assert history.epoch == [0, 1]
    assert history.metrics["epochs_run"] == 2 and history.metrics["stopped_early"]


def test_a_user_callback_stops_training_within_an_epoch(tmp_path: Path) -> None:
    recorder = Recorder(stop_at_batch=3)
    history = fit(**DIGITS, epochs=3, output_dir=str(tmp_path / "r"), callbacks=[recorder])
    assert history.epoch == [0]  # Keras: the epoch still ends (validation, epoch_end)
    assert [c[1] for c in recorder.calls if c[0] == "batch_end"] == [0, 1, 2, 3]
    assert recorder.calls[-3][0] == "epoch_end"


def test_resumed_early_stopping_continues_its_count(tmp_path: Path) -> None:
    """min_delta=10 makes every epoch after the first a non-improvement: with patience 3 an
    uninterrupted run stops after epoch 4; a run killed after epoch 2 must stop there too."""
    cfg = dict(DIGITS, epochs=10, patience=3, min_delta=10.0)
    straight = fit(**cfg, output_dir=str(tmp_path / "straight"), callbacks=[Recorder()])
    assert straight.epoch == [0, 1, 2, 3] and straight.metrics["stopped_early"]

    split = tmp_path / "split"
    Trainer(TrainConfig(**cfg, output_dir=str(split)), callbacks=[Recorder()]).fit(stop_after=2)
    state = load_checkpoint(split, "last").state["callbacks"]
    assert state["EarlyStopping"]["wait"] == 1 and state["Recorder"] == {"epochs_seen": 2}
    recorder = Recorder()
    resumed = Trainer(TrainConfig(resume=str(split)), callbacks=[recorder]).fit()
    assert resumed.epoch == [0, 1, 2, 3] and resumed.metrics["stopped_early"]
    assert recorder.epochs_seen == 4  # the user callback's own count went on from 2
    assert resumed.metrics["final_weights"] == "best (epoch 1)"
    assert resumed.metrics["test_top1"] == straight.metrics["test_top1"]


def test_model_checkpoint_csv_logger_and_tensorboard_histograms(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "r"
    callbacks = [
        ModelCheckpoint("every/{epoch:02d}-{val_loss:.2f}.safetensors", save_best_only=False),
        CSVLogger("mine.csv"),
        TensorBoard(log_dir=tmp_path / "tb", histogram_freq=2),
    ]
    history = fit(**DIGITS, epochs=2, output_dir=str(run), callbacks=callbacks)
    saved = sorted(p.name for p in (run / "every").iterdir())
    assert [name[:3] for name in saved] == ["01-", "02-"]
    assert saved[1] == f"02-{history.history['val_loss'][1]:.2f}.safetensors"
    assert (run / "mine.csv").read_text() == (run / "history.csv").read_text()
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"histograms": 0})
    events.Reload()
    assert "conv1.weight" in events.Tags()["histograms"]
    assert [e.step for e in events.Histograms("conv1.weight")] == [2]  # every 2nd epoch
    assert [e.step for e in events.Scalars("val/loss")] == [1, 2]
    assert json.loads((run / "metrics.json").read_text())["best_epoch"] in (1, 2)


class Scramble(Callback):
    """Wrecks the weights as the last epoch begins, so that the last epoch is the worst and
    a run's best and last checkpoints differ for certain."""

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        assert self.trainer is not None
        if epoch == self.trainer.epochs - 1:
            with torch.no_grad():
                for param in self.trainer.model.parameters():
                    param.mul_(-40.0)


@pytest.mark.parametrize("restore", [False, True])
def test_python_and_the_cli_score_the_weights_the_run_ended_with(tmp_path, restore) -> None:
    """One rule: a run's weights are those it ended with (the last epoch's, or the best when
    early stopping restored them); history.model holds them, metrics.json scored them, and
    `cnnzoo evaluate RUN` and cnnzoo.evaluate(RUN) load them."""
    import cnnzoo
    from cnnzoo.cli.eval_cmd import evaluate_run
    from cnnzoo.data import load_dataset

    callbacks: list[Callback] = [Scramble()]
    if restore:
        callbacks.append(EarlyStopping(patience=5, restore_best_weights=True))
    run = tmp_path / "run"
    history = fit(**DIGITS, epochs=2, output_dir=str(run), callbacks=callbacks)
    test = load_dataset("digits").test
    scored = history.metrics["test_top1"]
    assert cnnzoo.evaluate(history.model, test.images, test.labels)["accuracy"] == scored
    assert cnnzoo.evaluate(run, test.images, test.labels)["accuracy"] == scored
    assert evaluate_run(run)[0].top1 == pytest.approx(scored, abs=1e-12)
    last = load_checkpoint(run, "last").weights
    best = load_checkpoint(run, "best").weights
    assert not torch.equal(last["fc.weight"], best["fc.weight"])  # the case that matters
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["weights_file"] == ("best.safetensors" if restore else "last.safetensors")


def test_cnnzoo_callbacks_is_a_module_path_as_keras_callbacks_is() -> None:
    import importlib

    import cnnzoo

    module = importlib.import_module("cnnzoo.callbacks")
    from cnnzoo.callbacks import EarlyStopping as Imported

    assert cnnzoo.callbacks is module and Imported is EarlyStopping
    assert module.TensorBoard is TensorBoard and module.Callback is Callback


class DuckRecorder:
    """A callback as PyTorch users write them: no base class, only the hooks it needs (one by
    Keras' older name), and its own state."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []
        self.batches = 0

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.calls.append(("epoch_end", epoch))
        assert logs is not None and "val_loss" in logs

    def on_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self.batches += 1

    def state_dict(self) -> dict[str, Any]:
        return {"seen": len(self.calls)}


def test_duck_typed_callbacks_run_and_other_objects_are_one_clear_error(tmp_path) -> None:
    recorder = DuckRecorder()
    fit(**DIGITS, epochs=2, output_dir=str(tmp_path / "run"), callbacks=[recorder])
    assert recorder.calls == [("epoch_end", 0), ("epoch_end", 1)]
    assert recorder.batches == 2 * math.ceil(1294 / 64)
    state = load_checkpoint(tmp_path / "run", "last").state["callbacks"]
    assert state["DuckRecorder"] == {"seen": 2}
    with pytest.raises(TypeError, match="subclass cnnzoo.callbacks.Callback") as caught:
        fit(**DIGITS, epochs=1, output_dir=str(tmp_path / "bad"), callbacks=[object()])
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "bad").exists()


def test_the_tensorboard_hint_points_at_the_event_files(tmp_path, capsys) -> None:
    logs = tmp_path / "logs"
    fit(**{**DIGITS, "tensorboard": True}, epochs=1, output_dir=str(tmp_path / "run"),
        callbacks=[TensorBoard(log_dir=str(logs))])  # fmt: skip
    assert list(logs.glob("events.out.tfevents.*"))
    assert not list((tmp_path / "run").glob("events.out.tfevents.*"))
    log = (tmp_path / "run" / "train.log").read_text()
    assert f"curves: tensorboard --logdir {logs}" in log
    assert f"--logdir {tmp_path / 'run'}" not in log
