"""What a run says: its opening lines, the test scores and metrics.json's contents."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from cnnzoo.train.callbacks import ModelCheckpoint, TensorBoard
from cnnzoo.train.defaults import TABLE_FIELDS

if TYPE_CHECKING:
    from cnnzoo.train.config import TrainConfig
    from cnnzoo.train.trainer import Trainer

__all__ = ["describe_recipe", "end_lines", "interrupted_line", "score_test", "start_lines"]


def describe_recipe(cfg: TrainConfig) -> str:
    """The recipe in one line: optimizer, schedule, batch, epochs, augmentation, regularisers."""
    warmup = f" ({cfg.warmup_epochs:g} warmup epochs)" if cfg.warmup_epochs else ""
    parts = [
        f"{cfg.optimizer} lr {cfg.lr:g} wd {cfg.weight_decay:g}"
        + (" nesterov" if cfg.nesterov else ""),
        f"{cfg.schedule} schedule{warmup}",
        f"batch {cfg.batch_size}",
        f"{cfg.epochs} epochs",
        f"augment {cfg.augment}",
    ]
    extras = {
        "label smoothing": cfg.label_smoothing,
        "ema": cfg.ema_decay,
        "random erasing": cfg.random_erasing,
        "mixup": cfg.mixup,
        "cutmix": cfg.cutmix,
    }
    return ", ".join(parts + [f"{name} {value:g}" for name, value in extras.items() if value])


def start_lines(trainer: Trainer) -> list[str]:
    """Model, data, device; the input plan; the recipe and which of it the defaults chose."""
    cfg, bundle, dist = trainer.config, trainer.bundle, trainer.dist
    val = len(bundle.val) if bundle.val is not None else 0
    amp = str(trainer.amp_dtype).removeprefix("torch.")
    sigmoid = getattr(trainer.model, "num_classes", None) == 1
    lines = [
        f"{cfg.model} ({trainer.num_params:,} params) on {bundle.name}: "
        f"{len(bundle.train):,} train / {val:,} val / {len(bundle.test):,} test, "
        f"{bundle.num_classes} classes"
        + (" (one sigmoid unit, binary cross-entropy)" if sigmoid else "")
        + f"; device {trainer.device}"
        + (f" x {dist.world_size} processes" if dist.enabled else "")
        + (f", amp {amp}" if trainer.amp_dtype else "")
        + f", {trainer.threads} thread{'s' if trainer.threads > 1 else ''}",
        f"input: {trainer.input_note}",
    ]
    source = ""
    if trainer.defaults:
        yours = sorted(set(TABLE_FIELDS) - set(trainer.defaults))
        source = f" (the default for {cfg.model} on {bundle.name}" + (
            f"; yours: {', '.join(yours)})" if yours else ")")
    lines.append(f"recipe{source}: {describe_recipe(cfg)} -> {trainer.run}")
    if trainer.initial_epoch:
        lines.append(f"resuming after epoch {trainer.initial_epoch}")
    elif cfg.resume:
        lines.append("no completed epoch was saved; starting from epoch 1")
    schedule = trainer.schedule
    if schedule.extended and cfg.schedule in ("cosine", "onecycle"):
        planned = schedule.planned_steps // max(1, trainer.steps_per_epoch)
        lines.append(f"the {cfg.schedule} schedule was planned for {planned} epochs; it restarts "
                     f"over epochs {planned + 1}-{trainer.epochs}")  # fmt: skip
    return lines


def score_test(trainer: Trainer) -> dict[str, Any]:
    """Score the evaluated network on the test split (calling the callbacks' test hooks); the
    run's metrics. Without a test split, the metrics have no test scores."""
    from cnnzoo.analysis.metrics import evaluate_model
    from cnnzoo.data import make_loader

    cfg, bundle = trainer.config, trainer.bundle
    if not len(bundle.test):
        return _metrics(trainer, None)
    trainer.callbacks.call("on_test_begin", {})
    loader = make_loader(bundle, "test", batch_size=cfg.batch_size, **trainer.loader_options)
    with trainer.autocast():
        result = evaluate_model(trainer.eval_model, loader, bundle.num_classes,
                                progress=not cfg.quiet and sys.stderr.isatty(),
                                class_names=bundle.class_names)  # fmt: skip
    trainer.test_result = result
    metrics = _metrics(trainer, result)
    trainer.log(
        f"test: loss {result.loss:.4f}  top-1 {100 * result.top1:.2f}%  "
        f"{result.topk_text()}({trainer.final_weights} weights, "
        f"{metrics['train_seconds']:.1f}s training) -> {trainer.run}"
    )
    trainer.callbacks.call("on_test_end", {"test_loss": result.loss, "test_accuracy": result.top1})
    return metrics


def interrupted_line(trainer: Trainer) -> str:
    """What Ctrl-C leaves: the saved epoch and the command that continues, or nothing."""
    if not trainer.saved_epoch:
        return "interrupted before the first epoch finished; nothing to resume"
    return (f"interrupted; epoch {trainer.saved_epoch}/{trainer.epochs} is saved in "
            f"{trainer.run}. Continue with: cnnzoo train --resume {trainer.run}")  # fmt: skip


def end_lines(trainer: Trainer) -> list[str]:
    written = ["metrics.json", "history.csv", "config.json", "train.log"]
    written += ["history.png", "confusion_matrix.png"] if trainer.config.plots else []
    lines = [f"wrote {', '.join(written)}, best/last checkpoints in {trainer.run}/"]
    # Where the event files are: the run, or the log_dir of a TensorBoard the user passed.
    boards = [str(cb.log_dir if cb.log_dir is not None else trainer.run)
              for cb in trainer.callbacks.find(TensorBoard)]  # fmt: skip
    for log_dir in dict.fromkeys(boards):
        lines.append(f"curves: tensorboard --logdir {log_dir}")
    return lines


def _metrics(trainer: Trainer, result: Any) -> dict[str, Any]:
    """metrics.json: the test scores and how the run went."""
    best = next((cb for cb in trainer.callbacks.find(ModelCheckpoint) if cb.filepath is None),
                None)  # fmt: skip
    metrics: dict[str, Any] = {
        "model": trainer.config.model, "dataset": trainer.bundle.name,
        "params": trainer.num_params,
    }  # fmt: skip
    if result is not None:
        metrics.update(test_top1=result.top1, test_top5=result.top5, test_loss=result.loss,
                       test_macro_f1=result.macro_f1)  # fmt: skip
    metrics.update(
        epochs_run=len(trainer.history),
        train_seconds=sum(row["seconds"] for row in trainer.history),
        best_epoch=best.best_epoch if best else None,
        monitor=best.monitor.name if best else None,
        best_value=best.best if best else None,
        final_weights=trainer.final_weights,
        weights_file=getattr(trainer, "weights_file", None),
        stopped_early=trainer.stop_training,
        image_size=trainer.facts["image_size"],
        input=trainer.input_note,
        device=str(trainer.device),
        world_size=trainer.dist.world_size,
    )
    if result is not None:
        metrics["test"] = result.to_dict()
    return metrics
