"""The training loop: one :class:`Trainer` per run directory, resumable at every epoch boundary.

:meth:`Trainer.setup` builds data, model and optimizer (restoring ``last`` on ``--resume``);
:meth:`~Trainer.fit` runs epochs of :meth:`~Trainer.train_one_epoch` and
:meth:`~Trainer.validate`, calling the callbacks and saving ``last`` after each, then
:meth:`~Trainer.test`. Everything on disk goes through :class:`cnnzoo.rundir.RunDir`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cnnzoo.analysis.metrics import class_logits
from cnnzoo.errors import CnnzooError, DataError
from cnnzoo.pretrained import resolve_weights
from cnnzoo.progress import RunLog
from cnnzoo.rundir import (
    FINAL_WEIGHTS,
    RunDir,
    data_facts,
    default_run_dir,
    folder_of,
    resumed_config,
    weights_metadata,
)
from cnnzoo.signals import defer_sigint
from cnnzoo.train import report, rng
from cnnzoo.train.batchnorm import recompute_statistics
from cnnzoo.train.callbacks import (
    Callback,
    CallbackList,
    ModelCheckpoint,
    as_callback,
    with_defaults,
)
from cnnzoo.train.config import TrainConfig
from cnnzoo.train.distributed import DistInfo, all_gather_objects, all_reduce_sum, init_distributed
from cnnzoo.train.freeze import freeze_backbone_norms, frozen_norm_names, set_backbone_frozen
from cnnzoo.train.hardware import TorchSettings, amp_dtype, default_threads, resolve_device
from cnnzoo.train.history import History, epoch_logs
from cnnzoo.train.losses import ClassificationLoss
from cnnzoo.train.mixing import mix_batch
from cnnzoo.train.optim import LRSchedule, ModelEma, build_optimizer
from cnnzoo.train.planning import (
    build_model,
    input_statistics,
    load_initial_weights,
    make_loaders,
    plan_run,
)

__all__ = ["Trainer", "TrainingDiverged"]


class TrainingDiverged(CnnzooError):
    """The loss became NaN or infinite."""


class Trainer:
    """Train one model on one dataset into one run directory (see :class:`TrainConfig`).

    ``callbacks`` join those the config asks for (:meth:`TrainConfig.callbacks`); ``data`` (a
    DataBundle) replaces ``config.dataset`` and ``model`` (an nn.Module) ``config.model``. With
    ``config.resume`` the run continues with its own config (see :meth:`TrainConfig.resumed`).
    """

    def __init__(
        self,
        config: TrainConfig,
        callbacks: Iterable[Callback] | None = None,
        overrides: Iterable[str] | None = None,
        *,
        data: Any = None,
        model: nn.Module | None = None,
    ) -> None:
        config.validate()
        if config.resume:
            config = resumed_config(config, overrides)
        self.defaults = config.chosen_by_default(data)
        self.config = config.resolved(data)
        self.config.validate()
        self.data, self.given_model = data, model
        self.user_callbacks = [as_callback(callback) for callback in callbacks or []]
        self.dist, self.log = DistInfo(), RunLog(enabled=True)
        self.model: nn.Module | None = None
        self.history: list[dict[str, Any]] = []
        self.initial_epoch = 0  # the first epoch this process trains (Keras' name)
        self.stop_training, self.final_weights, self.test_result = False, "last", None
        self.steps_per_epoch = 0
        self._settings: TorchSettings | None = None
        self._set_up = False

    @property
    def epochs(self) -> int:
        return int(self.config.epochs)  # type: ignore[arg-type]

    # ------------------------------------------------------------------ set-up
    def setup(self) -> None:
        """Build everything: process group, data, model, optimizer; restore the checkpoint."""
        if self._set_up:
            return
        cfg = self.config
        requested = resolve_device(cfg.device)  # fail fast, before joining a process group
        self.dist = init_distributed(requested.type)
        self.device = resolve_device(cfg.device, self.dist.local_rank)
        self.threads = cfg.num_threads or default_threads(self.dist.local_world_size)
        self._settings = TorchSettings(self.threads, cfg.deterministic, self.device)
        self._settings.apply()
        self.log = RunLog(enabled=self.dist.is_main)
        name = cfg.output_dir or default_run_dir(cfg.model or "model", cfg.dataset or "data")
        # Rank 0 names the run (a timestamped default could differ by a second between ranks).
        self.run = RunDir(all_gather_objects(str(name), self.dist)[0])
        cfg.output_dir = str(self.run.path)
        if self.dist.is_main:
            self.run.prepare(resume=bool(cfg.resume), overwrite=cfg.overwrite, epochs=self.epochs)
        self.dist.barrier()
        try:
            self._build()
        except BaseException:
            self.run.unlock() if cfg.resume else self.run.abandon()
            self._settings.restore()
            raise
        self._set_up = True

    def _build(self) -> None:
        from cnnzoo.data import load_dataset

        cfg = self.config
        splits = None
        if cfg.resume and self.data is None and cfg.dataset.startswith("imagefolder:"):
            splits = self.run.read_splits(folder_of(cfg.dataset))
        if splits is not None:  # a resumed run goes on with the files it started with
            bundle = splits.bundle(seed=cfg.seed)
        else:
            bundle = self.data or load_dataset(
                cfg.dataset, data_dir=cfg.data_dir, download=cfg.download,
                val_split=cfg.val_split, split=cfg.split_parts(), seed=cfg.seed,
            )  # fmt: skip
        self.bundle = bundle
        self.weight_spec = resolve_weights(cfg.model, cfg.weights) if cfg.weights else None
        self.mean, self.std, cfg = input_statistics(cfg, bundle, self.weight_spec,
                                                    self.given_model, self.log)  # fmt: skip
        plan = plan_run(cfg, bundle, self.given_model)
        self.model_kwargs, self.image_size, self.input_note = plan
        self.facts = data_facts(bundle, self.mean, self.std, self.image_size, self.input_note)
        self.loader_options, self.train_loader, self.val_loader = make_loaders(
            cfg, bundle, self.mean, self.std, self.image_size, self.device, self.dist
        )
        self.steps_per_epoch = len(self.train_loader)

        # model: seeded so that every rank (and every resume) builds the same initial weights
        torch.manual_seed(cfg.seed)
        model = self.given_model or build_model(cfg.model, bundle, self.model_kwargs)
        resuming = bool(cfg.resume) and self.run.has_checkpoint("last")
        if cfg.weights and not resuming:
            load_initial_weights(model, cfg.weights, self.weight_spec, self.log,
                                 progress=self.dist.is_main)  # fmt: skip
        memory_format = torch.channels_last if cfg.channels_last else torch.preserve_format
        self.model = model.to(self.device, memory_format=memory_format)
        self.num_params = sum(p.numel() for p in model.parameters())
        self.ema = ModelEma(model, cfg.ema_decay) if cfg.ema_decay else None
        # Built over every parameter, frozen or not, so that --unfreeze-at finds them there.
        self.optimizer = build_optimizer(model, cfg)
        self.schedule = LRSchedule(self.optimizer, cfg, self.steps_per_epoch)
        self.frozen = False
        self._apply_freeze(0)
        self._say_what_is_frozen(model)
        self._wrap()
        self.amp_dtype = amp_dtype(cfg.amp, cfg.amp_dtype, self.device)
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=self.amp_dtype == torch.float16 and self.device.type == "cuda"
        )
        self.criterion = ClassificationLoss(label_smoothing=cfg.label_smoothing or 0.0)
        defaults = cfg.callbacks(validation=self.val_loader is not None)
        self.callbacks = CallbackList(with_defaults(defaults, self.user_callbacks),
                                      is_main=self.dist.is_main)  # fmt: skip
        self.callbacks.set_trainer(self)
        rng.seed_all(cfg.seed + self.dist.rank)  # per-rank dropout / mixing streams
        if resuming:
            last = self.run.load_checkpoint("last")
            self.load_state_dict({**last.state, "weights": last.weights})
        self.saved_epoch = self.initial_epoch  # the last epoch with a checkpoint on disk
        if self.dist.is_main:
            # The planned kwargs (e.g. small_input=True) are recorded, so a resume, `evaluate`
            # and `predict` rebuild exactly this network.
            recorded = replace(cfg, model_kwargs=self.model_kwargs, resume=None, overwrite=False)
            self.run.write_config(recorded, self.facts)
            if splits is None:  # a resumed run keeps the record it started with
                self.run.write_splits(bundle)

    def _wrap(self) -> None:
        """The module the loop calls: the model, under DDP and/or torch.compile when asked."""
        module: nn.Module = self.model  # type: ignore[assignment]
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            module = DistributedDataParallel(
                module, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        self.train_module = torch.compile(module) if self.config.compile else module

    def _say_what_is_frozen(self, model: nn.Module) -> None:
        """Parameters frozen before training (``requires_grad=False``, as the notes freeze a
        backbone in Python) train as --freeze backbone does; the log says so."""
        frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
        if frozen and not self.frozen:
            total = sum(p.numel() for p in model.parameters())
            self.log(f"{frozen:,} of {total:,} parameters are frozen (requires_grad=False): they "
                     "do not train, and the batch norms of the frozen layers stay in eval mode "
                     "with the statistics they came with")  # fmt: skip

    def _apply_freeze(self, epoch: int) -> None:
        """Freeze or release the backbone for ``epoch`` (0-based), per --freeze/--unfreeze-at."""
        cfg = self.config
        frozen = cfg.freeze == "backbone" and epoch + 1 < (cfg.unfreeze_at or math.inf)
        if frozen == self.frozen:
            return
        trainable = set_backbone_frozen(self.model, frozen)  # type: ignore[arg-type]
        if hasattr(self, "train_module"):
            self._wrap()  # DDP registers its gradient hooks for the trainable set only
        self.frozen = frozen
        state = "frozen" if frozen else "trainable"
        self.log(f"epoch {epoch + 1}: backbone {state}; {trainable:,} parameters train")

    # ------------------------------------------------------------------ weights and state
    @property
    def eval_model(self) -> nn.Module:
        """The network that is validated, tested and saved: the EMA when there is one."""
        return self.ema.module if self.ema is not None else self.model  # type: ignore[return-value]

    def get_weights(self) -> dict[str, torch.Tensor]:
        return self.eval_model.state_dict()

    def set_weights(self, weights: Mapping[str, torch.Tensor], label: str) -> None:
        """Load ``weights`` into the evaluated network; ``label`` names them in the metrics."""
        self.eval_model.load_state_dict(weights)
        self.final_weights = label
        self.log(f"restored the {label} weights")

    def weights_metadata(self) -> dict[str, str]:
        return weights_metadata(str(self.config.model), self.model_kwargs, self.facts)

    def state_dict(self) -> dict[str, Any]:
        """Everything a resume needs besides the weights (every rank joins the RNG gather)."""
        state: dict[str, Any] = {
            "epoch": len(self.history),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": all_gather_objects(rng.capture(), self.dist),
            "history": self.history,
            "stop_training": self.stop_training,
            "callbacks": self.callbacks.state_dict(),
            "world_size": self.dist.world_size,
        }
        if self.ema is not None:
            model = self.model.state_dict()  # type: ignore[union-attr]
            state["model"] = {k: v.detach().cpu() for k, v in model.items()}
            state["ema_updates"] = self.ema.updates
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` plus the saved (evaluated) weights under ``"weights"``."""
        self.eval_model.load_state_dict(state["weights"])
        if self.ema is not None:
            self.model.load_state_dict(state["model"])  # type: ignore[union-attr]
            self.ema.updates = int(state["ema_updates"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.scaler.load_state_dict(state["scaler"])
        if len(state["rng"]) == self.dist.world_size:
            rng.restore(state["rng"][self.dist.rank])
        else:
            self.log.warn(f"the run was saved with {len(state['rng'])} process(es), now "
                          f"{self.dist.world_size}; random streams restart, so results will not "
                          "match an uninterrupted run")  # fmt: skip
        self.initial_epoch = int(state["epoch"])
        self.history = list(state["history"])
        self.stop_training = bool(state.get("stop_training", state.get("stopped_early", False)))
        saved = state.get("callbacks")
        if saved is None:  # a checkpoint of cnnzoo < 0.2: only the best value was kept
            for callback in self.callbacks.find(ModelCheckpoint)[:1]:
                callback.load_state_dict({"best": state.get("best_value"),
                                          "best_epoch": state.get("best_epoch")})  # fmt: skip
        elif unused := self.callbacks.load_state_dict(saved):
            self.log.warn(f"the checkpoint has state for callbacks this run lacks: {unused}")

    # ------------------------------------------------------------------ the run
    def fit(self, stop_after: int | None = None) -> History:
        """Train to ``config.epochs`` (or for ``stop_after`` more epochs, leaving a resumable
        run), score the test split and return the :class:`History`."""
        self.setup()
        try:
            if self.dist.is_main:
                self.log.attach(self.run.log_path)
                for line in report.start_lines(self):
                    self.log(line)
            self.callbacks.call("on_train_begin", {})
            for epoch in range(self.initial_epoch, self.epochs):
                if self.stop_training:
                    break
                if stop_after is not None and epoch - self.initial_epoch >= stop_after:
                    return self._history({})
                self._run_epoch(epoch)
            last_logs = epoch_logs(self.history[-1] if self.history else {})
            self.callbacks.call("on_train_end", last_logs)
            return self._history(self.test())
        except KeyboardInterrupt:
            self.log.warn(report.interrupted_line(self))
            raise
        finally:
            self.close()

    def close(self) -> None:
        """Release what the run holds: callbacks' files, the log, the lock, torch settings."""
        if hasattr(self, "callbacks"):
            self.callbacks.close()
        self.log.close()
        if hasattr(self, "run"):
            self.run.unlock()
        if self._settings is not None:
            self._settings.restore()
        self.dist.shutdown()

    def _history(self, metrics: dict[str, Any]) -> History:
        params = {"epochs": self.epochs, "steps": self.steps_per_epoch}
        return History(self.history, metrics, self.run.path, self.eval_model, params)

    def _run_epoch(self, epoch: int) -> None:
        self.callbacks.call("on_epoch_begin", epoch, {})
        stats = self.train_one_epoch(epoch)
        if not self.frozen:  # a frozen backbone keeps the statistics it came with
            with self.autocast():
                recompute_statistics(self.eval_model, self.train_loader, self.config.precise_bn,
                                     self.dist, keep=frozen_norm_names(self.model))  # fmt: skip
        val_loss, val_acc = self.validate()
        self.history.append({"epoch": epoch + 1, **stats, "val_loss": val_loss, "val_acc": val_acc})
        with defer_sigint():
            self.callbacks.call("on_epoch_end", epoch, epoch_logs(self.history[-1]))
            self.stop_training = self._on_any_rank(self.stop_training)
            state = self.state_dict()  # every rank joins its gathers
            if self.dist.is_main:
                meta = self.weights_metadata()
                self.run.save_checkpoint("last", self.get_weights(), state, meta)
            self.saved_epoch = epoch + 1  # before a deferred Ctrl-C can fire

    def _on_any_rank(self, flag: bool) -> bool:
        return bool(all_reduce_sum(torch.tensor([float(flag)], device=self.device), self.dist) > 0)

    # ------------------------------------------------------------------ one epoch
    def train_one_epoch(self, epoch: int, max_steps: int | None = None) -> dict[str, float]:
        """Train one epoch (or its first ``max_steps`` batches, for benchmarks); its stats."""
        cfg, loader = self.config, self.train_loader
        loader.set_epoch(epoch)
        self._apply_freeze(epoch)
        self.train_module.train()
        if self.frozen:
            freeze_backbone_norms(self.model)  # type: ignore[arg-type]
        for name in frozen_norm_names(self.model):  # parameters the user froze
            self.model.get_submodule(name).eval()  # type: ignore[union-attr]
        # Mixing draws from its own (seed, epoch, rank) streams, so resuming reproduces it.
        mix_rng = np.random.default_rng([cfg.seed, epoch, self.dist.rank])
        mix_gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch * 1_009 + self.dist.rank)
        sums = torch.zeros(2, device=self.device)  # loss x samples, correct
        seen, logs = 0, {}
        total = len(loader) if max_steps is None else min(max_steps, len(loader))
        start = time.perf_counter()
        lr = self.schedule.current_lr()
        batches, batch = iter(loader), None
        for step in range(total):
            # Every rank takes len(loader) steps: one whose loader dropped a batch of unreadable
            # images repeats its last batch rather than leave the others waiting (DDP).
            batch = next(batches, batch)
            if batch is None:
                raise DataError(f"no readable training images on rank {self.dist.rank}")
            x, y = batch
            self.callbacks.call("on_train_batch_begin", step, logs)
            lr = self.schedule.apply()
            loss, correct = self.train_step(x, y, mix_rng, mix_gen)
            sums += torch.stack([loss * y.shape[0], correct])
            seen += y.shape[0]
            synced = (step + 1) % cfg.progress_every == 0 or step + 1 == total
            if synced:
                self._check_finite(sums[0], epoch, step + 1)
                logs = {"loss": sums[0].item() / seen, "accuracy": sums[1].item() / seen,
                        "lr": lr, "seen": seen * self.dist.world_size}  # fmt: skip
            self.callbacks.call("on_train_batch_end", step, logs)
            # Under DDP every rank must stop at the same step: only where flags were reduced.
            if self.stop_training and (synced or not self.dist.enabled):
                break
        if max_steps is None and not self.stop_training:
            next(batches, None)  # the loader ends its epoch (and reports unreadable files)
        seconds = time.perf_counter() - start
        totals = torch.cat([sums.double(), sums.new_tensor([seen], dtype=torch.float64)])
        loss_sum, correct, count = all_reduce_sum(totals, self.dist).tolist()
        self._check_finite(torch.tensor(loss_sum), epoch, total)
        return {"train_loss": loss_sum / count, "train_acc": correct / count, "lr": lr,
                "seconds": seconds, "images_per_s": count / seconds}  # fmt: skip

    def train_step(
        self, x: torch.Tensor, y: torch.Tensor, mix_rng: np.random.Generator,
        mix_gen: torch.Generator,
    ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """One optimizer step on a batch; (mean loss, correct predictions) as device tensors."""
        x, y2, lam = mix_batch(x, y, self.config.mixup, self.config.cutmix, mix_rng, mix_gen)
        loss, logits = self._forward_loss(x, y, y2, lam)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.config.clip_grad:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.train_module.parameters(), self.config.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.schedule.advance()
        if self.ema is not None:
            self.ema.update(self.model)  # type: ignore[arg-type]
        with torch.no_grad():
            predicted = class_logits(logits).argmax(1)
            hits = (predicted == y).sum().float()
            if y2 is not None:
                hits = lam * hits + (1 - lam) * (predicted == y2).sum()
        return loss.detach().float(), hits

    def _forward_loss(
        self, x: torch.Tensor, y: torch.Tensor, y2: torch.Tensor | None, lam: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss to minimise, main logits); auxiliary heads add aux_weight x their loss."""
        with self.autocast():
            output = self.train_module(x)
        aux: list[torch.Tensor] = []
        if isinstance(output, (tuple, list)):
            output, *aux = output
            aux = [a for a in aux if a is not None]

        def criterion(logits: torch.Tensor) -> torch.Tensor:
            logits = logits.float()
            if y2 is None:
                return self.criterion(logits, y)
            return lam * self.criterion(logits, y) + (1 - lam) * self.criterion(logits, y2)

        loss = criterion(output)
        if aux:
            loss = loss + self.config.aux_weight * sum(criterion(a) for a in aux)
        return loss, output

    def autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                              enabled=self.amp_dtype is not None)  # fmt: skip

    def _check_finite(self, loss_sum: torch.Tensor, epoch: int, step: int) -> None:
        """Stop on a NaN/inf loss on any rank; this sync also agrees on ``stop_training``."""
        stop = torch.tensor(float(self.stop_training), device=self.device)
        flags = torch.stack([(~torch.isfinite(loss_sum)).float().to(self.device), stop])
        nonfinite, stop = all_reduce_sum(flags, self.dist).tolist()
        self.stop_training = stop > 0
        if nonfinite > 0:
            saved = (
                f"the last good checkpoint (epoch {self.saved_epoch}) is in {self.run}"
                if self.saved_epoch
                else "no epoch completed, so no checkpoint was saved"
            )
            raise TrainingDiverged(
                f"the loss became NaN/inf at epoch {epoch + 1}, step {step}; training stopped "
                f"(lr {self.schedule.current_lr():.3g}: try a lower --lr, --warmup-epochs or "
                f"--clip-grad); {saved}"
            )

    @torch.no_grad()
    def validate(self) -> tuple[float | None, float | None]:
        """(loss, accuracy) of the evaluated network on the validation split, over all ranks."""
        if self.val_loader is None:
            return None, None
        model = self.eval_model.eval()
        sums = torch.zeros(3, dtype=torch.float64, device=self.device)
        with self.autocast():
            for x, y in self.val_loader:
                logits = class_logits(model(x)).float()  # a sigmoid head: its BCE, below
                sums[0] += F.cross_entropy(logits, y, reduction="sum")
                sums[1] += (logits.argmax(1) == y).sum()
                sums[2] += y.shape[0]
        loss_sum, correct, n = all_reduce_sum(sums, self.dist).tolist()
        return loss_sum / n, correct / n

    def _save_final_weights(self) -> str:
        """The run's file of the weights it ended with, which it scores and every reader loads
        (:func:`cnnzoo.rundir.resolve_run`): ``last``, the ``best`` checkpoint when early
        stopping restored the very same weights, else ``final.safetensors``, written here."""
        if self.final_weights == "last" and self.run.has_checkpoint("last"):
            return "last.safetensors"
        weights = {k: v.detach().cpu() for k, v in self.get_weights().items()}
        if self.run.has_checkpoint("best"):
            best = self.run.load_checkpoint("best").weights
            if best.keys() == weights.keys() and all(torch.equal(best[k], v)
                                                     for k, v in weights.items()):  # fmt: skip
                return "best.safetensors"
        self.run.save_weights(FINAL_WEIGHTS, weights, self.weights_metadata())
        return FINAL_WEIGHTS

    # ------------------------------------------------------------------ the test split
    def test(self) -> dict[str, Any]:
        """Score the evaluated network on the test split (rank 0), write metrics.json and
        return the metrics (without test scores when the data has no test split)."""
        metrics: dict[str, Any] = {}
        if self.dist.is_main:
            self.weights_file = self._save_final_weights()
            metrics = report.score_test(self)
            self.run.write_metrics(metrics)
            for line in report.end_lines(self):
                self.log(line)
        self.dist.barrier()
        return metrics
