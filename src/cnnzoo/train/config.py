"""Every knob of a training run, as one dataclass that is saved as ``config.json`` in the run.

Each field carries its command-line help in its ``metadata`` (``help``, and where needed
``flags``, ``choices``, ``metavar``, ``group``), so ``cnnzoo train --help``, recipe files and the
Python API share one set of names, defaults and explanations. ``None`` means "the default recipe
decides" (see :mod:`cnnzoo.train.defaults`); :meth:`TrainConfig.resolved` fills those in.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import math
import numbers
import os
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cnnzoo.errors import UsageError

__all__ = [
    "FREEZE",
    "MONITORS",
    "RESUME_OVERRIDES",
    "RUN_FACT_KEYS",
    "TrainConfig",
    "canonical_monitor",
]

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("cosine", "step", "onecycle", "none")
# Keras' names; the short forms of earlier cnnzoo versions are accepted and translated.
MONITORS = ("val_loss", "val_accuracy", "loss", "accuracy")
MONITOR_ALIASES = {"val_acc": "val_accuracy", "train_loss": "loss", "acc": "accuracy",
                   "train_acc": "accuracy"}  # fmt: skip
DEVICES = ("auto", "cpu", "cuda", "mps")
AMP_DTYPES = ("auto", "bf16", "fp16")
AUGMENTS = ("auto", "none", "flip", "crop", "crop_flip", "rrc")
FREEZE = ("none", "backbone")

# Sections config.json carries besides the fields: what the run learnt about its data, so that
# evaluate / predict can rebuild the model without loading the dataset.
RUN_FACT_KEYS = ("data",)
# Keys earlier versions wrote, read as the field that replaced them.
LEGACY_KEYS = {"pretrained": "weights"}

# What `--resume RUN` may change; everything else comes from the run's own config.json, so a
# resumed run is the same experiment.
MAX_EPOCHS = 100_000

RESUME_OVERRIDES = ("epochs", "patience", "quiet", "device", "num_threads", "progress_every")


def canonical_monitor(name: str) -> str:
    """Keras' name for a monitored quantity (``val_acc`` -> ``val_accuracy``)."""
    return MONITOR_ALIASES.get(name, name)


def _opt(default: Any, help: str, **meta: Any) -> Any:
    """A field with its command-line help (and flags, choices, group) in its metadata."""
    factory = {"default_factory": default} if callable(default) else {"default": default}
    return dataclasses.field(**factory, metadata={"help": help, **meta})


RUN, MODEL, TRANSFER, DATA, OPT, VAL, HW, OUT = (
    "run", "model and input", "transfer learning", "data", "optimisation", "validation",
    "hardware and reproducibility", "output",
)  # fmt: skip


@dataclass
class TrainConfig:
    """A training run. ``None`` means "pick a sensible default" (resolved by :meth:`resolved`)."""

    model: str | None = _opt(
        None, "model name (`cnnzoo models` lists them)", flags=("--model", "-m"), group=RUN
    )
    dataset: str = _opt(
        "fashion_mnist",
        "fashion_mnist, mnist, cifar10, cifar100, digits, or imagefolder:PATH",
        flags=("--dataset", "-d"),
        group=RUN,
    )
    output_dir: str | None = _opt(
        None,
        "run directory (default runs/MODEL-DATASET-TIME)",
        flags=("--output-dir", "-o"),
        metavar="RUN",
        group=RUN,
    )
    epochs: int | None = _opt(None, "epochs to train", group=RUN)
    batch_size: int | None = _opt(
        None, "batch size per process", flags=("--batch-size", "-b"), group=RUN
    )
    # model
    model_kwargs: dict[str, Any] = _opt(
        dict,
        "builder option, e.g. small_input=true (repeatable)",
        flags=("--model-arg",),
        metavar="KEY=VALUE",
        group=MODEL,
    )
    image_size: int | None = _opt(
        None, "resize batches to this side (default: fit the model to the data)", group=MODEL
    )
    # transfer learning
    weights: str | None = _opt(
        None,
        "start from these weights: a weight name (IMAGENET1K_V2, DEFAULT, imagenet, fashion_mnist; "
        "`cnnzoo weights` lists them) or a torchvision .pth / cnnzoo .safetensors file; the "
        "classifier is replaced for the dataset's classes and the weights' statistics (ImageNet's "
        "for a file) normalise inputs",
        flags=("--weights", "--pretrained"),
        metavar="NAME_OR_FILE",
        group=TRANSFER,
    )
    freeze: str = _opt(
        "none", "backbone: train only the classifier", choices=FREEZE, group=TRANSFER
    )
    unfreeze_at: int | None = _opt(
        None, "train the whole network from EPOCH on", metavar="EPOCH", group=TRANSFER
    )
    # data
    data_dir: str | None = _opt(None, "where datasets live", group=DATA)
    download: bool = _opt(False, "download a missing dataset", group=DATA)
    val_split: float = _opt(0.1, "fraction of train held out for validation", group=DATA)
    split: list[float] | None = _opt(
        None,
        "image folders: train/val/test as fractions or counts, e.g. 400/92/10 or 0.8/0.1/0.1",
        metavar="TRAIN/VAL/TEST",
        group=DATA,
    )
    augment: str | None = _opt(
        None, "train augmentation (auto: the dataset's own)", choices=AUGMENTS, group=DATA
    )
    random_erasing: float | None = _opt(
        None, "erase a random box of each training image with probability P", metavar="P",
        group=DATA,
    )  # fmt: skip
    num_workers: int | None = _opt(None, "decoding workers for image folders", group=DATA)
    # optimisation
    optimizer: str | None = _opt(None, "optimizer", choices=OPTIMIZERS, group=OPT)
    lr: float | None = _opt(None, "peak learning rate", group=OPT)
    momentum: float = _opt(0.9, "sgd momentum", group=OPT)
    nesterov: bool | None = _opt(None, "Nesterov momentum (sgd)", group=OPT)
    betas: tuple[float, float] = _opt((0.9, 0.999), "adam(w) betas", metavar="B1,B2", group=OPT)
    weight_decay: float | None = _opt(None, "weight decay", flags=("--weight-decay", "--wd"),
                                      group=OPT)  # fmt: skip
    decay_norm_and_bias: bool = _opt(False, "also decay biases and norm scales", group=OPT)
    schedule: str | None = _opt(
        None, "learning-rate schedule, stepped per iteration", choices=SCHEDULES, group=OPT
    )
    warmup_epochs: float | None = _opt(None, "linear warmup length in epochs", group=OPT)
    min_lr_ratio: float = _opt(0.0, "cosine floor as a fraction of the peak lr", group=OPT)
    step_size: int | None = _opt(None, "step schedule: epochs per decay (default epochs/3)",
                                 group=OPT)  # fmt: skip
    milestones: list[int] | None = _opt(
        None, "step schedule: epochs at which to decay, e.g. 30,60,80", group=OPT
    )
    gamma: float = _opt(0.1, "step schedule decay factor", group=OPT)
    label_smoothing: float | None = _opt(None, "label smoothing", group=OPT)
    mixup: float = _opt(0.0, "mixup Beta(alpha, alpha); 0 = off", metavar="ALPHA", group=OPT)
    cutmix: float = _opt(0.0, "cutmix Beta(alpha, alpha); 0 = off", metavar="ALPHA", group=OPT)
    clip_grad: float | None = _opt(None, "clip the global gradient norm", metavar="NORM",
                                   group=OPT)  # fmt: skip
    ema_decay: float | None = _opt(
        None, "keep an EMA of the weights (e.g. 0.999; 0 = off); it is evaluated and saved",
        flags=("--ema",), metavar="DECAY", group=OPT,
    )  # fmt: skip
    aux_weight: float = _opt(0.3, "auxiliary-head loss weight (GoogLeNet, Inception)", group=OPT)
    precise_bn: int = _opt(
        20, "recompute batch-norm statistics from N training batches before each validation "
        "(0 = keep the running averages)", metavar="N", group=OPT,
    )  # fmt: skip
    # validation, early stopping
    patience: int = _opt(
        0, "early stopping after N epochs without improvement; the best weights are restored "
        "(0 = off)", group=VAL,
    )  # fmt: skip
    monitor: str = _opt("val_loss", "quantity that early stopping and `best` watch",
                        choices=MONITORS, convert=canonical_monitor, group=VAL)  # fmt: skip
    min_delta: float = _opt(0.0, "smallest change that counts as improvement", group=VAL)
    reduce_on_plateau: bool = _opt(False, "cut the lr when the monitor stalls", group=VAL)
    plateau_factor: float = _opt(0.1, "reduce-on-plateau: lr factor", group=VAL)
    plateau_patience: int = _opt(2, "reduce-on-plateau: epochs without improvement", group=VAL)
    # hardware
    device: str = _opt("auto", "device", choices=DEVICES, group=HW)
    amp: bool = _opt(False, "mixed precision (CUDA: bf16 if supported, else fp16; CPU: bf16)",
                     group=HW)  # fmt: skip
    amp_dtype: str = _opt("auto", "force the autocast dtype", choices=AMP_DTYPES, group=HW)
    channels_last: bool = _opt(True, "NHWC memory format (faster for most models on CPU)",
                               group=HW)  # fmt: skip
    compile: bool = _opt(False, "torch.compile the model", group=HW)
    num_threads: int | None = _opt(
        None, "CPU threads (default: the cores other processes leave free)", group=HW
    )
    seed: int = _opt(0, "random seed", group=HW)
    deterministic: bool = _opt(False, "deterministic algorithms only", group=HW)
    # run directory and output
    resume: str | None = _opt(None, "continue RUN from its last finished epoch", metavar="RUN",
                              group=RUN)  # fmt: skip
    overwrite: bool = _opt(False, "replace a run already in RUN", group=RUN)
    quiet: bool = _opt(False, "plain log lines, no progress bar", flags=("--quiet", "-q"),
                       group=RUN)  # fmt: skip
    progress_every: int = _opt(10, "steps between progress updates (and NaN checks)", group=OUT)
    tensorboard: bool = _opt(True, "write TensorBoard event files into the run", group=OUT)
    histogram_freq: int = _opt(
        0, "TensorBoard: weight histograms every N epochs (0 = none)", group=OUT
    )
    plots: bool = _opt(True, "draw history.png and confusion_matrix.png at the end", group=OUT)

    def __post_init__(self) -> None:
        # Every field has its declared type from here on (an int lr becomes a float, a JSON
        # list of betas a tuple); a value of the wrong type is a one-line UsageError.
        for name, hint in _field_types().items():
            setattr(self, name, _check_value("TrainConfig", name, getattr(self, name), hint))
        self.monitor = canonical_monitor(self.monitor)

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raise a UsageError naming the first impossible value."""

        def check(ok: bool, name: str, rule: str) -> None:
            if not ok:
                raise UsageError(f"{name.replace('_', '-')} {rule}, got {getattr(self, name)}")

        def number(name: str) -> float | None:
            value = getattr(self, name)
            return None if value is None or isinstance(value, bool) else value

        def positive(name: str) -> None:
            value = number(name)
            check(value is None or (math.isfinite(value) and value > 0), name, "must be > 0")

        def non_negative(name: str) -> None:
            value = number(name)
            check(value is None or (math.isfinite(value) and value >= 0), name, "must be >= 0")

        def within(name: str, low: float, high: float, closed_high: bool = False) -> None:
            value = number(name)
            ok = value is None or (low <= value <= high if closed_high else low <= value < high)
            check(ok, name, f"must be in [{low:g}, {high:g}{']' if closed_high else ')'}")

        def choice(name: str, options: tuple[str, ...]) -> None:
            value = getattr(self, name)
            if value is not None and value not in options:
                raise UsageError(
                    f"{name.replace('_', '-')} must be one of {', '.join(options)}; got {value!r}"
                )

        if self.resume is None and not self.model:
            raise UsageError("--model is required (or --resume RUN)")
        if self.resume is None and not self.dataset:
            raise UsageError("--dataset is required (or --resume RUN)")
        for name in ("epochs", "batch_size", "progress_every"):
            value = getattr(self, name)
            ok = value is None or (isinstance(value, int) and not isinstance(value, bool))
            check(ok and (value is None or value >= 1), name, "must be an integer > 0")
        # A longer run is surely a typo, and the schedules' tables grow with it.
        check(self.epochs is None or self.epochs <= MAX_EPOCHS, "epochs",
              f"must be at most {MAX_EPOCHS:,}")  # fmt: skip
        for name in ("lr", "image_size", "clip_grad", "num_threads"):
            positive(name)
        most = 4 * (os.cpu_count() or 1)
        check(self.num_threads is None or self.num_threads <= most, "num_threads",
              f"must be at most {most} (4 per core here)")  # fmt: skip
        for name in ("warmup_epochs", "mixup", "cutmix", "min_delta", "patience",
                     "weight_decay", "histogram_freq", "num_workers", "aux_weight",
                     "precise_bn"):  # fmt: skip
            non_negative(name)
        within("val_split", 0, 1)
        within("random_erasing", 0, 1, closed_high=True)
        within("label_smoothing", 0, 1)
        within("ema_decay", 0, 1)
        within("momentum", 0, 1)
        within("min_lr_ratio", 0, 1, closed_high=True)
        check(0 < self.plateau_factor < 1, "plateau_factor", "must be in (0, 1)")
        check(0 < self.gamma <= 1, "gamma", "must be in (0, 1]")
        check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "betas",
              "must be two numbers in [0, 1)")  # fmt: skip
        choice("optimizer", OPTIMIZERS)
        choice("schedule", SCHEDULES)
        choice("monitor", MONITORS)
        choice("device", DEVICES)
        choice("amp_dtype", AMP_DTYPES)
        choice("augment", AUGMENTS)
        choice("freeze", FREEZE)
        if self.unfreeze_at is not None:
            if self.freeze == "none":
                raise UsageError("--unfreeze-at needs --freeze backbone")
            check(self.unfreeze_at >= 1, "unfreeze_at", "must be an epoch >= 1")
        if self.weights is not None and not Path(self.weights).is_file():
            from cnnzoo.pretrained import looks_like_path, resolve_weights

            if looks_like_path(self.weights) or not self.model:
                raise UsageError(f"--weights {self.weights}: no such file")
            resolve_weights(self.model, self.weights)  # an unknown name lists the valid ones
        data_dir = Path(self.data_dir).expanduser() if self.data_dir is not None else None
        if data_dir is not None and data_dir.exists() and not data_dir.is_dir():
            raise UsageError(f"--data-dir {self.data_dir} is not a directory")
        if self.resume is not None and self.output_dir is not None:
            same = Path(self.output_dir).expanduser().resolve() == Path(self.resume).resolve()
            if not same:
                raise UsageError(
                    f"--resume {self.resume} continues that run in its own folder; drop "
                    f"--output-dir {self.output_dir} (copy the run there first to branch it)"
                )
        if self.nesterov and self.optimizer not in (None, "sgd"):
            raise UsageError("--nesterov only applies to --optimizer sgd")
        check(self.step_size is None or self.step_size >= 1, "step_size", "must be an integer > 0")
        if self.split is not None:
            check(len(self.split) == 3 and all(v >= 0 for v in self.split) and sum(self.split) > 0,
                  "split", "must be three non-negative numbers TRAIN/VAL/TEST")  # fmt: skip
        if self.patience and self.val_split == 0 and self.monitor.startswith("val_"):
            raise UsageError("early stopping (--patience) needs a validation split (--val-split)")
        if self.reduce_on_plateau and self.val_split == 0 and self.monitor.startswith("val_"):
            raise UsageError("--reduce-on-plateau needs a validation split (--val-split)")
        if self.resume is not None and self.overwrite:
            raise UsageError("--resume and --overwrite contradict each other; pick one")
        self._validate_dataset()

    def _validate_dataset(self) -> None:
        dataset = self.dataset or ""
        if self.split is not None and not dataset.startswith("imagefolder:"):
            raise UsageError(f"--split applies to image folders (imagefolder:PATH), not {dataset}")
        if ":" not in dataset and Path(dataset).expanduser().is_dir():
            from cnnzoo.data.datasets import dataset_names

            if dataset not in dataset_names():
                raise UsageError(
                    f"unknown dataset {dataset!r}; it is a folder: did you mean "
                    f"--dataset imagefolder:{dataset}?"
                )

    def split_parts(self) -> tuple[float, ...] | tuple[int, ...] | None:
        """``split`` for the loader (see :func:`cnnzoo.data.splits.split_parts`)."""
        from cnnzoo.data.splits import split_parts

        return split_parts(self.split)

    def callbacks(self, validation: bool = True) -> list[Any]:
        """The callbacks these fields ask for, in the order they run at each epoch's end: the
        run's best checkpoint, early stopping (restoring the best weights), history.csv,
        TensorBoard, the progress bar and epoch line, reduce-on-plateau, the final plots.
        Without a validation split the monitor watches the training quantity instead."""
        from cnnzoo.train import callbacks as cb

        monitor = self.monitor if validation else self.monitor.removeprefix("val_")
        found: list[Any] = [cb.ModelCheckpoint(monitor=monitor, min_delta=self.min_delta)]
        if self.patience:
            found.append(cb.EarlyStopping(monitor, self.min_delta, self.patience,
                                          restore_best_weights=True))  # fmt: skip
        found.append(cb.CSVLogger())
        if self.tensorboard:
            found.append(cb.TensorBoard(histogram_freq=self.histogram_freq))
        found.append(cb.ProgressBar(bar=not self.quiet))
        if self.reduce_on_plateau:
            found.append(cb.ReduceLROnPlateau(monitor, self.plateau_factor, self.plateau_patience,
                                              min_delta=self.min_delta))  # fmt: skip
        if self.plots:
            found.append(cb.Plots())
        return found

    def resolved(self, data: Any = None) -> TrainConfig:
        """A copy with every ``None`` the default recipe decides filled in (what config.json
        records). ``data`` (a DataBundle) stands in for ``dataset`` when given."""
        from cnnzoo.train.defaults import default_recipe

        recipe = default_recipe(self.model or "", self.dataset, data, self.optimizer)
        filled = {name: value for name, value in recipe.items() if getattr(self, name) is None}
        return dataclasses.replace(self, **filled)

    def chosen_by_default(self, data: Any = None) -> dict[str, Any]:
        """The fields :meth:`resolved` would fill in, with their values."""
        from cnnzoo.train.defaults import default_recipe

        recipe = default_recipe(self.model or "", self.dataset, data, self.optimizer)
        return {name: value for name, value in recipe.items() if getattr(self, name) is None}

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["betas"] = list(self.betas)
        return data

    @classmethod
    def from_dict(cls, data: Any, source: str = "the training options") -> TrainConfig:
        """Build from plain data (a recipe file, a run's config.json), checking every field's
        type; a UsageError names ``source`` and the field."""
        return cls(**cls.check_fields(data, source))

    @classmethod
    def check_fields(cls, data: Any, source: str) -> dict[str, Any]:
        """``data`` as field values: unknown keys and values of the wrong type are refused."""
        if not isinstance(data, dict):
            kind = "a list" if isinstance(data, list) else type(data).__name__
            raise UsageError(f"{source}: expected a mapping of training options, got {kind}")
        hints = _field_types()
        values: dict[str, Any] = {}
        unknown = []
        for key, value in data.items():
            name = LEGACY_KEYS.get(key, key)
            if key in RUN_FACT_KEYS:
                continue
            if name not in hints:
                unknown.append(str(key))
                continue
            values[name] = _check_value(source, name, value, hints[name])
        if unknown:
            close = difflib.get_close_matches(unknown[0], list(hints), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UsageError(
                f"{source}: unknown training option(s) {', '.join(map(repr, unknown))}{hint}"
            )
        return values

    def save(self, path: str | Path, **facts: Any) -> None:
        """Write config.json; ``facts`` (keys in RUN_FACT_KEYS) describe the data for readers."""
        from cnnzoo.checkpoint import atomic_write_bytes

        text = json.dumps({**self.to_dict(), **facts}, indent=2, sort_keys=True) + "\n"
        atomic_write_bytes(Path(path), text.encode())

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        """Read a run's config.json or a recipe file (YAML or JSON), field by field."""
        return cls.from_dict(read_mapping(path), source=str(path))


def read_mapping(path: str | Path) -> Any:
    """The data in a JSON or YAML file (a UsageError naming the file when it cannot be read)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot read it ({exc.__class__.__name__}: {exc})") from None
    if path.suffix.lower() == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise UsageError(f"{path}: not valid JSON ({exc})") from None
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UsageError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from None


# --- field types ------------------------------------------------------------------------------


@functools.cache
def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(TrainConfig)


def _describe(hint: Any) -> str:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args) + " or null"
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    if hint in names:
        return names[hint]
    if origin is dict:
        return "a mapping"
    if origin is tuple:
        return f"a list of {len(args)} numbers"
    if origin is list:
        return f"a list of {'integers' if args == [int] else 'numbers'}"
    return str(hint)


def _check_value(source: str, name: str, value: Any, hint: Any) -> Any:
    """``value`` converted to the field's type (int -> float, list -> tuple), or a UsageError.
    ``split`` is also taken as the command line writes it: ``"400/92/10"``."""
    if name == "split" and isinstance(value, str):
        from cnnzoo.data.splits import parse_split

        try:
            value = parse_split(value)
        except UsageError as exc:
            raise UsageError(f"{source}: {exc}") from None
    converted = _convert(value, hint)
    if converted is _BAD:
        try:
            shown = json.dumps(value)
        except (TypeError, ValueError):
            shown = repr(value)
        raise UsageError(f"{source}: {json.dumps(name)}: expected {_describe(hint)}, got {shown}")
    return converted


_BAD = object()


def _convert(value: Any, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(hint):
            return None
        for arg in typing.get_args(hint):
            if arg is not type(None) and (result := _convert(value, arg)) is not _BAD:
                return result
        return _BAD
    if hint is Any:
        return value
    if hint is bool:
        return value if isinstance(value, bool) else _BAD
    if hint is int:  # NumPy integers too
        ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
        return int(value) if ok else _BAD
    if hint is float:
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
        return float(value) if ok else _BAD
    if hint is str:
        if isinstance(value, os.PathLike):  # a pathlib.Path for output_dir, weights, ...
            value = os.fspath(value)
        return value if isinstance(value, str) else _BAD
    if origin is dict:
        ok = isinstance(value, dict) and all(isinstance(key, str) for key in value)
        return dict(value) if ok else _BAD
    if origin in (list, tuple) and isinstance(value, (list, tuple)):
        args = typing.get_args(hint)
        if origin is list:
            items = [_convert(item, args[0]) for item in value]
        elif len(value) == len(args):
            items = [_convert(item, arg) for item, arg in zip(value, args, strict=True)]
        else:
            return _BAD
        if any(item is _BAD for item in items):
            return _BAD
        return tuple(items) if origin is tuple else items
    return _BAD
