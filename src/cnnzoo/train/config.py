"""Every knob of a training run, as one dataclass that is saved as ``config.json`` in the run."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cnnzoo.errors import UsageError

__all__ = ["FREEZE", "RESUME_OVERRIDES", "RUN_FACT_KEYS", "TrainConfig"]

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("cosine", "step", "onecycle", "none")
MONITORS = ("val_loss", "val_acc")
DEVICES = ("auto", "cpu", "cuda", "mps")
AMP_DTYPES = ("auto", "bf16", "fp16")
AUGMENTS = ("auto", "none", "flip", "crop", "crop_flip", "rrc")
FREEZE = ("none", "backbone")

# Defaults that depend on the optimizer: (learning rate, weight decay).
OPTIMIZER_DEFAULTS = {"sgd": (0.1, 5e-4), "adam": (1e-3, 0.0), "adamw": (1e-3, 0.05)}

# What `--resume RUN` may change; everything else comes from the run's own config.json, so a
# resumed run is the same experiment.
# Sections config.json carries besides the fields: what the run learnt about its data, so that
# evaluate / predict can rebuild the model without loading the dataset.
RUN_FACT_KEYS = ("data",)

RESUME_OVERRIDES = ("epochs", "patience", "quiet", "device", "num_threads", "progress_every")


@dataclass
class TrainConfig:
    """A training run. ``None`` means "pick a sensible default" (resolved by :meth:`resolved`)."""

    model: str | None = None
    dataset: str | None = None
    output_dir: str | None = None
    epochs: int = 10
    batch_size: int = 128
    # model
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    image_size: int | None = None  # resize batches to this side; None = fit model and data
    # transfer learning
    pretrained: str | None = None  # a torchvision .pth or cnnzoo .safetensors file to start from
    freeze: str = "none"  # "backbone": train only the classifier (norm layers kept in eval mode)
    unfreeze_at: int | None = None  # epoch (1-based) from which the whole network trains
    # data
    data_dir: str | None = None
    download: bool = False
    val_split: float = 0.1
    augment: str = "auto"
    random_erasing: float = 0.0  # probability per training image (Zhong et al. 2017)
    num_workers: int | None = None
    # optimisation
    optimizer: str = "adamw"
    lr: float | None = None
    momentum: float = 0.9
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float | None = None
    decay_norm_and_bias: bool = False
    schedule: str = "cosine"
    warmup_epochs: float = 0.0
    min_lr_ratio: float = 0.0  # cosine floor as a fraction of the peak lr
    step_size: int | None = None  # "step" schedule: epochs between decays (default epochs // 3)
    milestones: list[int] | None = None  # "step" schedule: explicit epochs at which to decay
    gamma: float = 0.1
    label_smoothing: float = 0.0
    mixup: float = 0.0  # Beta(alpha, alpha); 0 = off
    cutmix: float = 0.0
    clip_grad: float | None = None  # max global L2 norm
    ema_decay: float = 0.0  # 0 = no EMA; e.g. 0.999
    aux_weight: float = 0.3  # GoogLeNet's weight for auxiliary classifier losses
    # validation, early stopping
    patience: int = 0  # epochs without improvement before stopping; 0 = never stop early
    monitor: str = "val_loss"
    min_delta: float = 0.0
    reduce_on_plateau: bool = False
    plateau_factor: float = 0.1
    plateau_patience: int = 2
    # hardware
    device: str = "auto"
    amp: bool = False
    amp_dtype: str = "auto"
    # NHWC: faster for most zoo models on CPU (benchmarks/train.py; README Performance)
    channels_last: bool = True
    compile: bool = False
    num_threads: int | None = None
    seed: int = 0
    deterministic: bool = False
    # run directory and output
    resume: str | None = None
    overwrite: bool = False
    quiet: bool = False
    progress_every: int = 10  # steps between host syncs for the progress bar and NaN check
    tensorboard: bool = True
    plots: bool = True

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)  # type: ignore[assignment]  (JSON gives a list)

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raise a UsageError naming the first impossible value."""

        def positive(name: str, value: float | None, allow_none: bool = False) -> None:
            if value is None and allow_none:
                return
            if value is None or isinstance(value, bool) or not value > 0:
                raise UsageError(f"{name.replace('_', '-')} must be > 0, got {value}")

        def non_negative(name: str, value: float) -> None:
            if isinstance(value, bool) or not value >= 0:
                raise UsageError(f"{name.replace('_', '-')} must be >= 0, got {value}")

        def choice(name: str, value: str, options: tuple[str, ...]) -> None:
            if value not in options:
                raise UsageError(f"{name} must be one of {', '.join(options)}; got {value!r}")

        if self.resume is None and not self.model:
            raise UsageError("--model is required (or --resume RUN)")
        if self.resume is None and not self.dataset:
            raise UsageError("--dataset is required (or --resume RUN)")
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UsageError(f"{name.replace('_', '-')} must be an integer > 0, got {value}")
        positive("lr", self.lr, allow_none=True)
        positive("image_size", self.image_size, allow_none=True)
        positive("clip_grad", self.clip_grad, allow_none=True)
        positive("num_threads", self.num_threads, allow_none=True)
        positive("progress_every", self.progress_every)
        for name in ("warmup_epochs", "label_smoothing", "mixup", "cutmix", "min_delta"):
            non_negative(name, getattr(self, name))
        non_negative("patience", self.patience)
        if self.weight_decay is not None:
            non_negative("weight_decay", self.weight_decay)
        if not 0 <= self.val_split < 1:
            raise UsageError(f"val-split must be in [0, 1), got {self.val_split}")
        if not 0 <= self.random_erasing <= 1:
            raise UsageError(f"random-erasing must be in [0, 1], got {self.random_erasing}")
        if not 0 <= self.label_smoothing < 1:
            raise UsageError(f"label-smoothing must be in [0, 1), got {self.label_smoothing}")
        if not 0 <= self.ema_decay < 1:
            raise UsageError(f"ema-decay must be in [0, 1), got {self.ema_decay}")
        if not 0 < self.plateau_factor < 1:
            raise UsageError(f"plateau-factor must be in (0, 1), got {self.plateau_factor}")
        if not 0 < self.gamma <= 1:
            raise UsageError(f"gamma must be in (0, 1], got {self.gamma}")
        if not 0 <= self.momentum < 1:
            raise UsageError(f"momentum must be in [0, 1), got {self.momentum}")
        choice("optimizer", self.optimizer, OPTIMIZERS)
        choice("schedule", self.schedule, SCHEDULES)
        choice("monitor", self.monitor, MONITORS)
        choice("device", self.device, DEVICES)
        choice("amp-dtype", self.amp_dtype, AMP_DTYPES)
        choice("augment", self.augment, AUGMENTS)
        choice("freeze", self.freeze, FREEZE)
        if self.unfreeze_at is not None:
            if self.freeze == "none":
                raise UsageError("--unfreeze-at needs --freeze backbone")
            if isinstance(self.unfreeze_at, bool) or self.unfreeze_at < 1:
                raise UsageError(f"unfreeze-at must be an epoch >= 1, got {self.unfreeze_at}")
        if self.pretrained is not None and not Path(self.pretrained).is_file():
            raise UsageError(f"--pretrained {self.pretrained}: no such file")
        if self.nesterov and self.optimizer != "sgd":
            raise UsageError("--nesterov only applies to --optimizer sgd")
        if self.step_size is not None and self.step_size < 1:
            raise UsageError(f"step-size must be an integer > 0, got {self.step_size}")
        if self.patience and self.val_split == 0:
            raise UsageError("early stopping (--patience) needs a validation split (--val-split)")
        if self.reduce_on_plateau and self.val_split == 0:
            raise UsageError("--reduce-on-plateau needs a validation split (--val-split)")
        if self.resume is not None and self.overwrite:
            raise UsageError("--resume and --overwrite contradict each other; pick one")

    def resolved(self) -> TrainConfig:
        """A copy with the optimizer-dependent defaults filled in (what config.json records)."""
        lr, wd = OPTIMIZER_DEFAULTS[self.optimizer]
        return dataclasses.replace(
            self,
            lr=self.lr if self.lr is not None else lr,
            weight_decay=self.weight_decay if self.weight_decay is not None else wd,
        )

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["betas"] = list(self.betas)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        data = {k: v for k, v in data.items() if k not in RUN_FACT_KEYS}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UsageError(f"unknown training option(s): {', '.join(unknown)}")
        return cls(**data)

    def save(self, path: str | Path, **facts: Any) -> None:
        """Write config.json; ``facts`` (keys in RUN_FACT_KEYS) describe the data for readers."""
        from cnnzoo.train.checkpoint import atomic_write_bytes

        text = json.dumps({**self.to_dict(), **facts}, indent=2, sort_keys=True) + "\n"
        atomic_write_bytes(Path(path), text.encode())

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))
