"""The training loop: one :class:`Trainer` per run directory, resumable at every epoch boundary."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import random
import re
import time
from collections.abc import Iterable
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cnnzoo.errors import CnnzooError, UsageError
from cnnzoo.train.checkpoint import (
    atomic_write_bytes,
    checkpoint_exists,
    defer_sigint,
    load_checkpoint,
    remove_stale_temps,
    save_checkpoint,
)
from cnnzoo.train.config import RESUME_OVERRIDES, TrainConfig
from cnnzoo.train.distributed import DistInfo, all_gather_objects, all_reduce_sum, init_distributed
from cnnzoo.train.optim import LRSchedule, ModelEma, build_optimizer
from cnnzoo.train.progress import EpochBar, RunLog

__all__ = ["HISTORY_FIELDS", "Trainer", "TrainingDiverged", "fit", "plan_input"]

HISTORY_FIELDS = (
    "epoch",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "lr",
    "seconds",
    "images_per_s",
)
# Files that mark a directory as holding a run (and that --overwrite removes).
RUN_FILES = (
    "config.json",
    "history.csv",
    "metrics.json",
    "train.log",
    "last.safetensors",
    "last.state.pt",
    "last.safetensors.prev",
    "best.safetensors",
    "best.state.pt",
    "best.safetensors.prev",
    "history.png",
    "confusion_matrix.png",
)


def imagenet_stats(channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """ImageNet mean/std for ``channels`` (their average for grey or other channel counts)."""
    from cnnzoo.registry import IMAGENET_MEAN, IMAGENET_STD

    if channels == 3:
        return IMAGENET_MEAN, IMAGENET_STD
    mean = sum(IMAGENET_MEAN) / 3
    std = sum(IMAGENET_STD) / 3
    return (mean,) * channels, (std,) * channels


class TrainingDiverged(CnnzooError):
    """The loss became NaN or infinite."""


# ---------------------------------------------------------------------------------------------
# fitting a model to the data


def _accepts(model: nn.Module, channels: int, height: int, width: int) -> bool:
    try:
        model.check_input(torch.empty(1, channels, height, width, device="meta"))  # type: ignore[operator]
    except ValueError:
        return False
    return True


def plan_input(
    model_name: str,
    num_classes: int,
    channels: int,
    image_hw: tuple[int, int],
    model_kwargs: dict[str, Any],
    image_size: int | None = None,
) -> tuple[dict[str, Any], int | None, str]:
    """Decide how ``model_name`` meets images of ``image_hw``: (model kwargs, resize side, note).

    Models that cannot take the stored size are built with ``small_input=True`` when they support
    it, else the batches are resized to the model's fixed size or to the multiple of 32 at or
    above its minimum. The plan is made on the meta device, so nothing is allocated.
    """
    from cnnzoo.registry import create_model

    height, width = image_hw
    try:
        with torch.device("meta"):
            model = create_model(
                model_name, num_classes=num_classes, in_chans=channels, **model_kwargs
            )
    except TypeError as exc:  # an option the builder does not take (--model-arg)
        raise UsageError(f"{model_name}: {exc}") from None
    if image_size is not None:
        if not _accepts(model, channels, image_size, image_size):
            raise UsageError(
                f"{model_name} cannot take {image_size}x{image_size} inputs (minimum "
                f"{model.min_input_size}"
                + (f", exactly {model.fixed_input_size}" if model.fixed_input_size else "")
                + ")"
            )
        return (
            model_kwargs,
            image_size,
            f"resizing batches to {image_size}x{image_size} (--image-size)",
        )
    if _accepts(model, channels, height, width):
        return model_kwargs, None, f"{height}x{width} images fit {model_name} as they are"
    if getattr(type(model), "supports_small_input", False) and "small_input" not in model_kwargs:
        small_kwargs = {**model_kwargs, "small_input": True}
        with torch.device("meta"):
            small = create_model(
                model_name, num_classes=num_classes, in_chans=channels, **small_kwargs
            )
        if _accepts(small, channels, height, width):
            return (
                small_kwargs,
                None,
                f"{model_name} built with small_input=True for {height}x{width} images",
            )
    side = model.fixed_input_size or max(32, 32 * math.ceil(model.min_input_size / 32))
    return (
        model_kwargs,
        side,
        f"{model_name} needs {'exactly' if model.fixed_input_size else 'at least'} "
        f"{model.fixed_input_size or model.min_input_size} px; resizing batches from "
        f"{height}x{width} to {side}x{side}",
    )


# ---------------------------------------------------------------------------------------------
# small helpers


def resolve_device(name: str, dist_info_local_rank: int = 0) -> torch.device:
    """``--device`` (auto, cpu, cuda, mps, ...) -> the device, or a UsageError saying why not."""
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            name = "mps"
        else:
            name = "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise UsageError("--device cuda was asked for, but CUDA is not available here")
        return torch.device("cuda", dist_info_local_rank)
    if name == "mps" and not (torch.backends.mps.is_available()):
        raise UsageError("--device mps was asked for, but MPS is not available here")
    return torch.device(name)


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _default_run_dir(model: str, dataset: str) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", dataset.split(":", 1)[0])
    return Path("runs") / f"{model}-{slug}-{stamp}"


def _format_acc(value: float | None) -> str:
    return "  -   " if value is None else f"{100 * value:6.2f}%"


# ---------------------------------------------------------------------------------------------


class Trainer:
    """Train one model on one dataset into one run directory (see :class:`TrainConfig`).

    ``Trainer(config).fit()`` returns the final metrics (what ``metrics.json`` holds). With
    ``config.resume = RUN`` it continues RUN from its last completed epoch; the run's own
    config.json is used, except for the fields in ``RESUME_OVERRIDES`` named in ``overrides``
    (by default: those set away from their defaults in ``config``).
    """

    def __init__(self, config: TrainConfig, overrides: Iterable[str] | None = None) -> None:
        config.validate()
        self.config = (
            self._merge_resume(config, overrides).resolved() if config.resume else config.resolved()
        )
        self.config.validate()
        self.dist = DistInfo()
        self.model: nn.Module | None = None
        self.history: list[dict[str, Any]] = []
        self._set_up = False

    # ------------------------------------------------------------------ configuration
    @staticmethod
    def _merge_resume(given: TrainConfig, overrides: Iterable[str] | None) -> TrainConfig:
        run_dir = Path(given.resume)  # type: ignore[arg-type]
        config_path = run_dir / "config.json"
        if not config_path.is_file():
            raise UsageError(f"cannot resume {run_dir}: it holds no training run (no config.json)")
        saved = TrainConfig.load(config_path)
        defaults = TrainConfig()
        chosen = {
            name: getattr(given, name)
            for name in RESUME_OVERRIDES
            if (
                name in overrides
                if overrides is not None
                else getattr(given, name) != getattr(defaults, name)
            )
        }
        return replace(
            saved, **chosen, resume=str(run_dir), output_dir=str(run_dir), overwrite=False
        )

    # ------------------------------------------------------------------ set-up
    def setup(self) -> None:
        """Build everything: process group, data, model, optimizer; restore the checkpoint."""
        if self._set_up:
            return
        cfg = self.config
        from cnnzoo.data import load_dataset, make_loader
        from cnnzoo.registry import list_models, unknown_model_message

        if cfg.model not in list_models():
            raise UsageError(unknown_model_message(cfg.model or ""))

        requested = resolve_device(cfg.device)  # fail fast, before joining a process group
        self.dist = init_distributed(requested.type)
        self.device = resolve_device(cfg.device, self.dist.local_rank)
        torch.set_num_threads(
            cfg.num_threads or max(1, (os.cpu_count() or 1) // self.dist.local_world_size)
        )
        if cfg.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.deterministic = True
            torch.backends.cudnn.benchmark = False
        elif self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True

        self.log = RunLog(enabled=self.dist.is_main)
        self.bar = EpochBar(enabled=not cfg.quiet and self.dist.is_main)
        run_dir = cfg.output_dir or str(_default_run_dir(cfg.model, cfg.dataset or "data"))
        # Rank 0 names the run (a timestamped default could differ by a second between ranks).
        self.run_dir = Path(all_gather_objects(run_dir, self.dist)[0])
        cfg.output_dir = str(self.run_dir)
        if self.dist.is_main:
            self._prepare_run_dir()
        self.dist.barrier()

        # data
        bundle = load_dataset(
            cfg.dataset,
            data_dir=cfg.data_dir,
            download=cfg.download,
            val_split=cfg.val_split,
            seed=cfg.seed,
        )
        self.bundle = bundle
        # Pretrained weights expect the statistics they were trained with (ImageNet's).
        self.mean, self.std = bundle.mean, bundle.std
        if cfg.pretrained:
            self.mean, self.std = imagenet_stats(bundle.channels)
        kwargs, self.image_size, self.input_note = plan_input(
            cfg.model,
            bundle.num_classes,
            bundle.channels,
            bundle.image_size,
            dict(cfg.model_kwargs),
            cfg.image_size,
        )
        self.model_kwargs = kwargs
        if self.dist.is_main:
            # The planned kwargs (e.g. small_input=True) are recorded, so a resume, `evaluate` and
            # `predict` rebuild exactly this network.
            replace(cfg, model_kwargs=kwargs, resume=None, overwrite=False).save(
                self.run_dir / "config.json", data=self._data_facts()
            )
        # What every split's batches share: size, normalisation, device, layout.
        self.loader_options = dict(
            image_size=self.image_size,
            mean=self.mean,
            std=self.std,
            device=self.device,
            seed=cfg.seed,
            channels_last=cfg.channels_last,
            num_workers=cfg.num_workers,
        )
        per_rank = math.ceil(len(bundle.train) / self.dist.world_size)
        self.train_loader = make_loader(
            bundle,
            "train",
            batch_size=cfg.batch_size,
            train=True,
            augment=cfg.augment,
            random_erasing=cfg.random_erasing,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
            # A last batch of one sample would break BatchNorm in training mode.
            drop_last=per_rank > cfg.batch_size and per_rank % cfg.batch_size == 1,
            **self.loader_options,
        )
        self.val_loader = (
            make_loader(
                bundle,
                "val",
                batch_size=cfg.batch_size,
                rank=self.dist.rank,
                world_size=self.dist.world_size,
                **self.loader_options,
            )
            if bundle.val is not None and len(bundle.val) > 0
            else None
        )

        # model: seeded so that every rank (and every resume) builds the same initial weights
        from cnnzoo.registry import create_model

        torch.manual_seed(cfg.seed)
        model = create_model(
            cfg.model, num_classes=bundle.num_classes, in_chans=bundle.channels, **kwargs
        )
        memory_format = torch.channels_last if cfg.channels_last else torch.preserve_format
        resuming = bool(cfg.resume) and checkpoint_exists(self.run_dir, "last")
        if cfg.pretrained and not resuming:
            self._load_pretrained(model, cfg.pretrained)
        model = model.to(self.device, memory_format=memory_format)
        self.model = model
        self.num_params = sum(p.numel() for p in model.parameters())
        self.ema = ModelEma(model, cfg.ema_decay) if cfg.ema_decay > 0 else None

        # Built over every parameter, frozen or not, so that --unfreeze-at finds them there.
        self.optimizer = build_optimizer(model, cfg)
        self.schedule = LRSchedule(self.optimizer, cfg, len(self.train_loader))
        self.frozen = False
        self._apply_freeze(0)
        self._wrap()
        self.amp_dtype = self._amp_dtype()
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=self.amp_dtype == torch.float16 and self.device.type == "cuda"
        )
        self.criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        self.higher_is_better = cfg.monitor == "val_acc" and self.val_loader is not None
        self.monitor = cfg.monitor if self.val_loader is not None else "train_loss"

        # loop state (what last.state.pt restores)
        self.start_epoch = 0
        self.best_value: float | None = None
        self.best_epoch: int | None = None
        self.bad_epochs = 0
        self.stopped_early = False
        self.history = []
        torch.manual_seed(cfg.seed + self.dist.rank)  # per-rank dropout / mixing streams
        random.seed(cfg.seed + self.dist.rank)
        np.random.seed(cfg.seed + self.dist.rank)
        if cfg.resume and checkpoint_exists(self.run_dir, "last"):
            self._restore()
        self.saved_epoch = self.start_epoch  # the last epoch with a checkpoint on disk
        self._set_up = True

    def _load_pretrained(self, model: nn.Module, path: str) -> None:
        import warnings

        from cnnzoo.weights import load_weights

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            load_weights(model, path)
        for warning in caught:
            self.log(f"pretrained: {warning.message}")
        self.log(f"pretrained: loaded {path}; inputs normalised with ImageNet statistics")

    def _wrap(self) -> None:
        """The module the loop calls: the model, under DDP and/or torch.compile when asked."""
        assert self.model is not None
        module: nn.Module = self.model
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            module = DistributedDataParallel(
                module, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        if self.config.compile:
            module = torch.compile(module)  # type: ignore[assignment]
        self.train_module = module

    def _is_head(self, name: str) -> bool:
        """Parameters that train while the backbone is frozen: classifier and auxiliary heads."""
        top = name.split(".", 1)[0]
        classifier = getattr(self.model, "classifier_name", "fc").split(".", 1)[0]
        return top == classifier or "aux" in top.lower()

    def _apply_freeze(self, epoch: int) -> None:
        """Freeze or release the backbone for ``epoch`` (0-based), per --freeze/--unfreeze-at."""
        assert self.model is not None
        cfg = self.config
        frozen = cfg.freeze == "backbone" and (
            cfg.unfreeze_at is None or epoch + 1 < cfg.unfreeze_at
        )
        if frozen == self.frozen:
            return
        for name, param in self.model.named_parameters():
            param.requires_grad_(not frozen or self._is_head(name))
        if hasattr(self, "train_module"):
            self._wrap()  # DDP registers its gradient hooks for the trainable set only
        self.frozen = frozen
        trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        state = "frozen" if frozen else "trainable"
        self.log(f"epoch {epoch + 1}: backbone {state}; {trainable:,} parameters train")

    def _freeze_norms(self) -> None:
        """Frozen layers keep their running statistics: their norm layers stay in eval mode."""
        assert self.model is not None
        norm_types = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
        for name, module in self.model.named_modules():
            if name and not self._is_head(name) and isinstance(module, norm_types):
                module.eval()

    def _autocast(self) -> torch.autocast:
        return torch.autocast(
            self.device.type,
            dtype=self.amp_dtype or torch.float32,
            enabled=self.amp_dtype is not None,
        )

    def _amp_dtype(self) -> torch.dtype | None:
        cfg = self.config
        if not cfg.amp:
            return None
        if cfg.amp_dtype == "fp16":
            return torch.float16
        if cfg.amp_dtype == "bf16":
            return torch.bfloat16
        if self.device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float16 if self.device.type == "mps" else torch.bfloat16

    def _prepare_run_dir(self) -> None:
        cfg = self.config
        run_dir = self.run_dir
        holds_run = run_dir.is_dir() and any((run_dir / name).exists() for name in RUN_FILES)
        if run_dir.exists() and not run_dir.is_dir():
            raise UsageError(f"--output-dir {run_dir} exists and is not a directory")
        if holds_run and not cfg.resume:
            if not cfg.overwrite:
                raise UsageError(
                    f"{run_dir} already holds a training run; continue it with --resume "
                    f"{run_dir}, replace it with --overwrite, or pick another --output-dir"
                )
            for name in RUN_FILES:
                (run_dir / name).unlink(missing_ok=True)
            for events in run_dir.glob("events.out.tfevents.*"):
                events.unlink()
        run_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(run_dir)
        if cfg.resume and (run_dir / "metrics.json").exists():
            done = json.loads((run_dir / "metrics.json").read_text())
            if int(done.get("epochs_run", 0)) >= cfg.epochs or done.get("stopped_early"):
                raise UsageError(
                    f"{run_dir} is already complete ({done.get('epochs_run')} epochs); pass a "
                    "larger --epochs to train it further"
                )
            (run_dir / "metrics.json").unlink()

    # ------------------------------------------------------------------ checkpoints
    def _eval_model(self) -> nn.Module:
        assert self.model is not None
        return self.ema.module if self.ema is not None else self.model

    def _data_facts(self) -> dict[str, Any]:
        bundle = self.bundle
        return {
            "name": bundle.name,
            "num_classes": bundle.num_classes,
            "in_chans": bundle.channels,
            "class_names": list(bundle.class_names),
            "mean": list(self.mean),
            "std": list(self.std),
            "image_size": self.image_size or max(bundle.image_size),
            "stored_image_size": list(bundle.image_size),
            "input": self.input_note,
        }

    def _weights_metadata(self) -> dict[str, str]:
        bundle = self.bundle
        return {
            "model": str(self.config.model),
            "model_kwargs": json.dumps(self.model_kwargs),
            "num_classes": str(bundle.num_classes),
            "in_chans": str(bundle.channels),
            "image_size": str(self.image_size or max(bundle.image_size)),
            "dataset": bundle.name,
            "class_names": json.dumps(list(bundle.class_names)),
            "mean": json.dumps(list(self.mean)),
            "std": json.dumps(list(self.std)),
        }

    def _save(self, epoch: int, improved: bool) -> None:
        """Write best (when improved) then last; every rank joins the RNG gather."""
        rng = all_gather_objects(_rng_state(), self.dist)
        if not self.dist.is_main:
            self.saved_epoch = epoch
            return
        assert self.model is not None
        weights = self._eval_model().state_dict()
        meta = self._weights_metadata()
        with defer_sigint():
            if improved:
                save_checkpoint(
                    self.run_dir,
                    "best",
                    weights,
                    {"epoch": epoch, "monitor": self.monitor, "value": self.best_value},
                    {**meta, "monitor": self.monitor, "value": str(self.best_value)},
                )
            state: dict[str, Any] = {
                "epoch": epoch,
                "optimizer": self.optimizer.state_dict(),
                "schedule": self.schedule.state_dict(),
                "scaler": self.scaler.state_dict(),
                "rng": rng,
                "best_value": self.best_value,
                "best_epoch": self.best_epoch,
                "bad_epochs": self.bad_epochs,
                "stopped_early": self.stopped_early,
                "history": self.history,
                "world_size": self.dist.world_size,
            }
            if self.ema is not None:
                state["model"] = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
                state["ema_updates"] = self.ema.updates
            save_checkpoint(self.run_dir, "last", weights, state, meta)
            self.saved_epoch = epoch  # before a deferred Ctrl-C can fire
            self._write_history()

    def _restore(self) -> None:
        assert self.model is not None
        ckpt = load_checkpoint(self.run_dir, "last")
        state = ckpt.state
        if self.ema is not None:
            self.ema.module.load_state_dict(ckpt.weights)
            self.model.load_state_dict(state["model"])
            self.ema.updates = int(state["ema_updates"])
        else:
            self.model.load_state_dict(ckpt.weights)
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.scaler.load_state_dict(state["scaler"])
        rng = state["rng"]
        if len(rng) == self.dist.world_size:
            _set_rng_state(rng[self.dist.rank])
        else:
            self.log.warn(
                f"the run was saved with {len(rng)} process(es), now {self.dist.world_size}; "
                "random streams restart, so results will not match an uninterrupted run"
            )
        self.start_epoch = ckpt.epoch
        self.best_value = state["best_value"]
        self.best_epoch = state["best_epoch"]
        self.bad_epochs = int(state["bad_epochs"])
        self.stopped_early = bool(state["stopped_early"])
        self.history = list(state["history"])

    def _write_history(self) -> None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=HISTORY_FIELDS, lineterminator="\n")
        writer.writeheader()
        for row in self.history:
            writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in HISTORY_FIELDS})
        atomic_write_bytes(self.run_dir / "history.csv", buffer.getvalue().encode())

    # ------------------------------------------------------------------ one epoch
    def _forward_loss(
        self, x: torch.Tensor, y: torch.Tensor, y2: torch.Tensor | None, lam: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss to minimise, main logits); auxiliary heads add aux_weight x their loss."""
        with self._autocast():
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

    def _mix(
        self, x: torch.Tensor, y: torch.Tensor, rng: np.random.Generator, gen: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor | None, float]:
        cfg = self.config
        if cfg.mixup <= 0 and cfg.cutmix <= 0:
            return x, None, 1.0
        use_cutmix = cfg.cutmix > 0 and (cfg.mixup <= 0 or rng.random() < 0.5)
        alpha = cfg.cutmix if use_cutmix else cfg.mixup
        lam = float(rng.beta(alpha, alpha))
        perm = torch.randperm(x.shape[0], generator=gen).to(x.device)
        if not use_cutmix:
            return x.mul(lam).add_(x[perm], alpha=1 - lam), y[perm], lam
        height, width = x.shape[-2:]
        cut = math.sqrt(1 - lam)
        cy, cx = int(rng.integers(height)), int(rng.integers(width))
        half_h, half_w = int(height * cut) // 2, int(width * cut) // 2
        y0, y1 = max(cy - half_h, 0), min(cy + half_h, height)
        x0, x1 = max(cx - half_w, 0), min(cx + half_w, width)
        x = x.clone()
        x[:, :, y0:y1, x0:x1] = x[perm, :, y0:y1, x0:x1]
        lam = 1 - (y1 - y0) * (x1 - x0) / (height * width)  # the pasted area decides the mix
        return x, y[perm], lam

    def _check_finite(self, loss_sum: torch.Tensor, epoch: int, step: int) -> None:
        flag = (~torch.isfinite(loss_sum)).to(torch.float32).reshape(1)
        if all_reduce_sum(flag, self.dist).item() > 0:
            saved = (
                f"the last good checkpoint (epoch {self.saved_epoch}) is in {self.run_dir}"
                if self.saved_epoch
                else "no epoch completed, so no checkpoint was saved"
            )
            raise TrainingDiverged(
                f"the loss became NaN/inf at epoch {epoch + 1}, step {step}; training stopped "
                f"(lr {self.schedule.current_lr():.3g}: try a lower --lr, --warmup-epochs or "
                f"--clip-grad); {saved}"
            )

    def train_one_epoch(self, epoch: int, max_steps: int | None = None) -> dict[str, float]:
        """Train one epoch (or its first ``max_steps`` batches, for benchmarks); its stats."""
        cfg = self.config
        loader = self.train_loader
        loader.set_epoch(epoch)
        self._apply_freeze(epoch)
        self.train_module.train()
        if self.frozen:
            self._freeze_norms()
        # Mixing draws from its own (seed, epoch, rank) streams, so resuming reproduces it.
        mix_rng = np.random.default_rng([cfg.seed, epoch, self.dist.rank])
        mix_gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch * 1_009 + self.dist.rank)
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device)
        seen = 0
        total = len(loader) if max_steps is None else min(max_steps, len(loader))
        start = time.perf_counter()
        lr = self.schedule.current_lr()
        self.bar.start(f"epoch {epoch + 1}/{cfg.epochs}", total)
        try:
            for step, (x, y) in enumerate(loader, start=1):
                lr = self.schedule.apply()
                x, y2, lam = self._mix(x, y, mix_rng, mix_gen)
                loss, logits = self._forward_loss(x, y, y2, lam)
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(loss).backward()
                if cfg.clip_grad:
                    self.scaler.unscale_(self.optimizer)
                    nn.utils.clip_grad_norm_(self.train_module.parameters(), cfg.clip_grad)
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.schedule.advance()
                if self.ema is not None:
                    self.ema.update(self.model)  # type: ignore[arg-type]
                batch = y.shape[0]
                with torch.no_grad():
                    loss_sum += loss.detach().float() * batch
                    hits = logits.argmax(1) == y
                    if y2 is None:
                        correct += hits.sum()
                    else:
                        correct += lam * hits.sum() + (1 - lam) * (logits.argmax(1) == y2).sum()
                seen += batch
                if step % cfg.progress_every == 0 or step == total:
                    self._check_finite(loss_sum, epoch, step)
                    if self.bar.enabled:
                        elapsed = time.perf_counter() - start
                        self.bar.update(
                            step,
                            f"loss {loss_sum.item() / seen:.4f}  acc {correct.item() / seen:6.2%}"
                            f"  lr {lr:.2e}  {seen * self.dist.world_size / elapsed:,.0f} img/s",
                        )
                if step == total:
                    break
        finally:
            self.bar.stop()
        seconds = time.perf_counter() - start
        totals = all_reduce_sum(
            torch.stack(
                [
                    loss_sum.double(),
                    correct.double(),
                    torch.tensor(seen, device=self.device, dtype=torch.float64),
                ]
            ),
            self.dist,
        ).tolist()
        self._check_finite(torch.tensor(totals[0]), epoch, total)
        return {
            "train_loss": totals[0] / totals[2],
            "train_acc": totals[1] / totals[2],
            "lr": lr,
            "seconds": seconds,
            "images_per_s": totals[2] / seconds,
        }

    @torch.no_grad()
    def validate(self) -> tuple[float | None, float | None]:
        if self.val_loader is None:
            return None, None
        model = self._eval_model()
        model.eval()
        sums = torch.zeros(3, dtype=torch.float64, device=self.device)
        with self._autocast():
            for x, y in self.val_loader:
                logits = model(x)
                if isinstance(logits, (tuple, list)):
                    logits = logits[0]
                logits = logits.float()
                sums[0] += F.cross_entropy(logits, y, reduction="sum")
                sums[1] += (logits.argmax(1) == y).sum()
                sums[2] += y.shape[0]
        loss_sum, correct, n = all_reduce_sum(sums, self.dist).tolist()
        return loss_sum / n, correct / n

    # ------------------------------------------------------------------ the run
    def fit(self, stop_after: int | None = None) -> dict[str, Any]:
        """Train to ``config.epochs`` (or for ``stop_after`` more epochs, leaving a resumable
        run); return the final metrics (after evaluating on the test split)."""
        self.setup()
        cfg = self.config
        writer = None
        try:
            if self.dist.is_main:
                self.log.attach(self.run_dir / "train.log")
                self._log_start()
                if cfg.tensorboard:
                    from torch.utils.tensorboard import SummaryWriter

                    # purge_step drops events a killed run wrote past its last checkpoint.
                    writer = SummaryWriter(str(self.run_dir), purge_step=self.start_epoch + 1)
            epoch = self.start_epoch
            ran = 0
            while epoch < cfg.epochs and not self.stopped_early:
                if stop_after is not None and ran >= stop_after:
                    return {"epochs_run": epoch, "finished": False, "run_dir": str(self.run_dir)}
                self._run_epoch(epoch, writer)
                epoch += 1
                ran += 1
            return self._finish(writer)
        except KeyboardInterrupt:
            if self.dist.is_main:
                done = self.saved_epoch
                if done:
                    self.log.warn(
                        f"interrupted; epoch {done}/{cfg.epochs} is saved in {self.run_dir}. "
                        f"Continue with: cnnzoo train --resume {self.run_dir}"
                    )
                else:
                    self.log.warn("interrupted before the first epoch finished; nothing to resume")
            raise
        finally:
            if writer is not None:
                writer.close()
            self.log.close()
            self.dist.shutdown()

    def _log_start(self) -> None:
        cfg = self.config
        bundle = self.bundle
        val = len(bundle.val) if bundle.val is not None else 0
        self.log(
            f"{cfg.model} ({self.num_params:,} params) on {bundle.name}: "
            f"{len(bundle.train):,} train / {val:,} val / {len(bundle.test):,} test, "
            f"{bundle.num_classes} classes; "
            f"device {self.device}"
            + (f" x {self.dist.world_size} processes" if self.dist.enabled else "")
            + (f", amp {str(self.amp_dtype).removeprefix('torch.')}" if self.amp_dtype else "")
        )
        self.log(f"input: {self.input_note}")
        self.log(
            f"optimizer {cfg.optimizer} lr {cfg.lr:g} wd {cfg.weight_decay:g}, schedule "
            f"{cfg.schedule}, batch {cfg.batch_size}, {cfg.epochs} epochs -> {self.run_dir}"
        )
        if self.start_epoch:
            self.log(f"resuming after epoch {self.start_epoch}")
        elif cfg.resume:
            self.log("no completed epoch was saved; starting from epoch 1")

    def _run_epoch(self, epoch: int, writer: Any) -> None:
        cfg = self.config
        stats = self.train_one_epoch(epoch)
        val_loss, val_acc = self.validate()
        row = {"epoch": epoch + 1, **stats, "val_loss": val_loss, "val_acc": val_acc}
        self.history.append(row)
        value = {"val_loss": val_loss, "val_acc": val_acc, "train_loss": stats["train_loss"]}[
            self.monitor
        ]
        sign = 1.0 if self.higher_is_better else -1.0
        improved = self.best_value is None or sign * (value - self.best_value) > cfg.min_delta
        if improved:
            self.best_value, self.best_epoch, self.bad_epochs = value, epoch + 1, 0
        else:
            self.bad_epochs += 1
            if cfg.patience and self.bad_epochs >= cfg.patience:
                self.stopped_early = True
        lr_cut = cfg.reduce_on_plateau and self.schedule.plateau_update(
            value, self.higher_is_better, cfg.min_delta
        )
        self._save(epoch + 1, improved)
        if writer is not None:
            for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "images_per_s"):
                if row[key] is not None:
                    writer.add_scalar(key.replace("_", "/", 1), row[key], epoch + 1)
            writer.flush()
        val_text = (
            f"  val loss {val_loss:.4f} acc {_format_acc(val_acc)}" if val_loss is not None else ""
        )
        self.log(
            f"epoch {epoch + 1:>3}/{cfg.epochs}  train loss {stats['train_loss']:.4f} acc "
            f"{_format_acc(stats['train_acc'])}{val_text}  lr {stats['lr']:.2e}  "
            f"{stats['seconds']:.1f}s {stats['images_per_s']:,.0f} img/s"
            + ("  *" if improved else "")
        )
        if lr_cut:
            self.log(f"{self.monitor} stalled: lr scale now {self.schedule.plateau_scale:g}")
        if self.stopped_early:
            self.log(
                f"early stop: {self.monitor} has not improved for {cfg.patience} epochs "
                f"(best {self.best_value:.4f} at epoch {self.best_epoch})"
            )

    def _finish(self, writer: Any) -> dict[str, Any]:
        """Restore the best weights (early stopping), evaluate on test, write metrics and plots."""
        cfg = self.config
        model = self._eval_model()
        final = "last"
        if cfg.patience and self.best_epoch is not None and checkpoint_exists(self.run_dir, "best"):
            self.dist.barrier()  # rank 0 wrote best; every rank restores the same weights
            model.load_state_dict(load_checkpoint(self.run_dir, "best").weights)
            final = "best"
            self.log(f"restored the best weights (epoch {self.best_epoch})")
        metrics: dict[str, Any] = {}
        if self.dist.is_main:
            metrics = self._evaluate_and_report(model, final, writer)
        self.dist.barrier()
        return metrics

    def _evaluate_and_report(self, model: nn.Module, final: str, writer: Any) -> dict[str, Any]:
        from cnnzoo.analysis.metrics import evaluate_model
        from cnnzoo.data import make_loader

        cfg = self.config
        bundle = self.bundle
        test_loader = make_loader(bundle, "test", batch_size=cfg.batch_size, **self.loader_options)
        with self._autocast():
            result = evaluate_model(
                model,
                test_loader,
                bundle.num_classes,
                progress=self.bar.enabled,
                class_names=bundle.class_names,
            )
        metrics: dict[str, Any] = {
            "model": cfg.model,
            "dataset": bundle.name,
            "params": self.num_params,
            "test_top1": result.top1,
            "test_top5": result.top5,
            "test_loss": result.loss,
            "test_macro_f1": result.macro_f1,
            "epochs_run": len(self.history),
            "train_seconds": sum(row["seconds"] for row in self.history),
            "best_epoch": self.best_epoch,
            "monitor": self.monitor,
            "best_value": self.best_value,
            "final_weights": final,
            "stopped_early": self.stopped_early,
            "image_size": self.image_size or max(bundle.image_size),
            "input": self.input_note,
            "device": str(self.device),
            "world_size": self.dist.world_size,
            "test": result.to_dict(),
        }
        atomic_write_bytes(
            self.run_dir / "metrics.json", (json.dumps(metrics, indent=2) + "\n").encode()
        )
        if writer is not None:
            writer.add_scalar("test/top1", result.top1, len(self.history))
            writer.add_scalar("test/loss", result.loss, len(self.history))
        if cfg.plots:
            self._plots(result)
        self.log(
            f"test: loss {result.loss:.4f}  top-1 {100 * result.top1:.2f}%  "
            f"top-{result.topk} {100 * result.top5:.2f}%  ({final} weights, "
            f"{metrics['train_seconds']:.1f}s training) -> {self.run_dir}"
        )
        written = ["metrics.json", "history.csv", "config.json", "train.log"]
        written += ["history.png", "confusion_matrix.png"] if cfg.plots else []
        written += ["best.safetensors", "last.safetensors"]
        self.log(f"wrote {', '.join(written)} in {self.run_dir}/")
        if cfg.tensorboard:
            self.log(f"curves: tensorboard --logdir {self.run_dir}")
        return metrics

    def _plots(self, result: Any) -> None:
        from cnnzoo.analysis.plots import plot_confusion_matrix, plot_history

        plot_history(self.history, self.run_dir / "history.png")
        plot_confusion_matrix(
            result.confusion, list(self.bundle.class_names), self.run_dir / "confusion_matrix.png"
        )


def fit(
    model: str = "lenet5", dataset: str = "fashion_mnist", epochs: int = 10, **kwargs: Any
) -> dict[str, Any]:
    """Train ``model`` on ``dataset`` (any :class:`TrainConfig` field as a keyword); the metrics.

    >>> metrics = cnnzoo.fit("lenet5", "digits", epochs=5, lr=3e-3, batch_size=32, augment="none")
    """
    return Trainer(TrainConfig(model=model, dataset=dataset, epochs=epochs, **kwargs)).fit()
