"""Optimizers, per-iteration learning-rate schedules (with warmup) and an EMA of the weights."""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn

from cnnzoo.train.config import TrainConfig

__all__ = ["LRSchedule", "ModelEma", "build_optimizer", "param_groups"]


def param_groups(model: nn.Module, weight_decay: float, decay_all: bool = False) -> list[dict]:
    """Two groups: weights that decay, and biases / norm scales (every 1-D tensor) that do not.

    Decaying BN/LN scales and biases only fights the normalisation (Goyal et al. 2017, §5.1).
    """
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if not decay_all and (param.ndim <= 1 or name.endswith(".bias")):
            no_decay.append(param)
        else:
            decay.append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    assert cfg.lr is not None and cfg.weight_decay is not None, "call TrainConfig.resolved()"
    groups = param_groups(model, cfg.weight_decay, cfg.decay_norm_and_bias)
    # The fused kernels update every parameter in one call instead of a dozen small ops per
    # tensor: +15 % images/s for LeNet-5 on CPU, where the per-tensor loop rivals the model.
    devices = {p.device.type for p in model.parameters()}
    fused = {"fused": True} if len(devices) == 1 and devices <= {"cpu", "cuda"} else {}
    if cfg.freeze != "none":
        # Fused SGD fails on parameters that join later (--unfreeze-at) without a momentum
        # buffer; the per-tensor loop creates it.
        fused = {}
    if cfg.optimizer == "sgd":
        nesterov = cfg.nesterov and cfg.momentum > 0
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=nesterov, **fused)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, betas=cfg.betas, **fused)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, **fused)


class LRSchedule:
    """Sets every group's lr before each optimizer step: peak lr x warmup x schedule x plateau.

    One object for every schedule (instead of chaining torch schedulers) so that warmup,
    per-iteration stepping and reduce-on-plateau (``plateau_scale``) compose, and so that its
    whole state is a few numbers that checkpoint as plain Python values.

    The curve is planned over the run's epochs when it starts. A resumed run given more epochs
    keeps that plan and adds a second segment over the added epochs, in which the cosine and
    one-cycle curves restart (SGDR, Loshchilov & Hutter 2017) and the step schedule holds its
    last value, instead of stretching the curve under the epochs already trained.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int):
        self.optimizer = optimizer
        self.peak_lr = float(cfg.lr)  # type: ignore[arg-type]
        self.kind = cfg.schedule
        self.steps_per_epoch = steps_per_epoch
        self.total_steps = max(1, int(cfg.epochs) * steps_per_epoch)  # type: ignore[arg-type]
        self.planned_steps = self.total_steps
        self.warmup_steps = int(round(float(cfg.warmup_epochs or 0) * steps_per_epoch))
        self.min_ratio = cfg.min_lr_ratio
        self.gamma = cfg.gamma
        self.milestones = sorted(cfg.milestones) if cfg.milestones else None
        self.step_size = cfg.step_size
        # state
        self.step_count = 0
        self.plateau_scale = 1.0

    @property
    def extended(self) -> bool:
        """Whether the run was given epochs beyond those the curve was planned for."""
        return self.total_steps > self.planned_steps

    def factor(self, step: int) -> float:
        if step >= self.planned_steps and self.kind in ("cosine", "onecycle"):
            return self._curve(step - self.planned_steps, self.total_steps - self.planned_steps, 0)
        return self._curve(step, self.planned_steps, self.warmup_steps)

    def _curve(self, step: int, total: int, warmup: int) -> float:
        total = max(1, total)
        if self.kind == "onecycle":
            # Smith & Topin 2017: cosine up from peak/25 over 30 % of the run, then down to
            # peak/1e4; it has its own warmup, so --warmup-epochs does not apply.
            up = max(1, int(0.3 * total))
            if step < up:
                return _cos_between(1 / 25, 1.0, step / up)
            return _cos_between(1.0, 1 / 1e4, min(1.0, (step - up) / max(1, total - up)))
        if step < warmup:
            return (step + 1) / warmup
        if self.kind == "cosine":
            t = (step - warmup) / max(1, total - warmup)
            return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * min(t, 1)))
        if self.kind == "step":
            return self.gamma ** self._decays(step // self.steps_per_epoch)
        return 1.0

    def _decays(self, epoch: int) -> int:
        """How many step-schedule milestones lie at or before ``epoch`` (0-based)."""
        if self.milestones:
            return sum(epoch >= m for m in self.milestones)
        epochs = max(1, self.planned_steps // self.steps_per_epoch)
        size = self.step_size or max(1, epochs // 3)
        # The milestones are size, 2 size, ... below the planned epochs.
        return min(epoch // size, (epochs - 1) // size)

    def current_lr(self) -> float:
        return self.peak_lr * self.factor(self.step_count) * self.plateau_scale

    def apply(self) -> float:
        """Set the lr for the coming optimizer step; call :meth:`advance` after it."""
        lr = self.current_lr()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def advance(self) -> None:
        self.step_count += 1

    def state_dict(self) -> dict[str, Any]:
        return {
            "step_count": self.step_count,
            "plateau_scale": self.plateau_scale,
            "planned_steps": self.planned_steps,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step_count = int(state["step_count"])
        self.plateau_scale = float(state["plateau_scale"])
        # Checkpoints of earlier versions did not record the plan: their epochs are the plan.
        self.planned_steps = int(state.get("planned_steps", self.total_steps))


def _cos_between(start: float, end: float, t: float) -> float:
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * t))


class ModelEma:
    """Exponential moving average of a model's parameters (buffers are copied as they are).

    The decay ramps up as ``min(decay, (1 + n) / (10 + n))`` so that the average is not dominated
    by the random initialisation in short runs (as in TensorFlow's ExponentialMovingAverage).
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.module = copy.deepcopy(model).eval()
        for param in self.module.parameters():
            param.requires_grad_(False)
        self.decay = decay
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        ema_params = list(self.module.parameters())
        params = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ema_params, params, 1 - decay)
        for ema_buf, buf in zip(self.module.buffers(), model.buffers(), strict=True):
            ema_buf.copy_(buf)
