"""The run directory: the one place that knows what `cnnzoo train` writes and where.

A run directory holds

* ``config.json``: every :class:`~cnnzoo.train.TrainConfig` field, plus a ``data`` section with
  what the run learnt about its data (classes, channels, input size, normalisation) so that a
  reader can rebuild the model without loading the dataset;
* ``best`` and ``last`` checkpoints, each a pair ``TAG.safetensors`` (weights, with the model and
  data facts in the file's metadata) + ``TAG.state.pt`` (optimizer, schedule, RNG, callbacks, ...;
  see :mod:`cnnzoo.checkpoint`), and ``final.safetensors`` when the weights the run ended with
  (restored by early stopping) are neither (metrics.json's ``weights_file`` names the file);
* ``history.csv`` (one row per epoch), ``metrics.json`` (the final test metrics), ``train.log``,
  TensorBoard event files and the plots ``history.png`` / ``confusion_matrix.png``;
* ``splits.json`` for an image folder: the files of its train, val and test splits, so that
  every later reader (evaluate, predict --split, resume) sees exactly the split the run trained
  with, even after the folder gained or lost files;
* ``.cnnzoo.lock`` while a process trains in it.

A folder counts as a run only when its ``config.json`` is a cnnzoo run config; ``--overwrite``
removes only the files listed here.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from cnnzoo.checkpoint import (
    Checkpoint,
    atomic_write_bytes,
    checkpoint_exists,
    load_checkpoint,
    remove_stale_temps,
    save_checkpoint,
)
from cnnzoo.data.transforms import FOLDER_CROP_FRACTION, EvalTransform
from cnnzoo.errors import CnnzooError, UsageError, WeightsError
from cnnzoo.registry import fit_channel_stats

if TYPE_CHECKING:
    from cnnzoo.models.base import ZooModel
    from cnnzoo.train.config import TrainConfig

__all__ = [
    "FINAL_WEIGHTS",
    "HISTORY_FIELDS",
    "RUN_FILES",
    "RunDir",
    "class_names_of",
    "data_facts",
    "default_run_dir",
    "input_size_of",
    "is_run_config",
    "load_run",
    "normalization_of",
    "resolve_run",
    "RecordedSplits",
    "resumed_config",
    "run_data",
    "run_transform",
    "weights_metadata",
]

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
CHECKPOINT_TAGS = ("best", "last")
# Every file cnnzoo writes into a run (TensorBoard's event files besides: EVENTS).
RUN_FILES = (
    "config.json",
    "history.csv",
    "metrics.json",
    "train.log",
    *(f"{tag}{suffix}" for tag in CHECKPOINT_TAGS
      for suffix in (".safetensors", ".state.pt", ".safetensors.prev")),
    "history.png",
    "confusion_matrix.png",
    "splits.json",
    "final.safetensors",
)  # fmt: skip
EVENTS = "events.out.tfevents.*"
LOCK_FILE = ".cnnzoo.lock"
# The weights a run ended with when they are neither its last nor its best checkpoint.
FINAL_WEIGHTS = "final.safetensors"
SPLITS_FILE = "splits.json"


def resumed_config(config: TrainConfig, overrides: Any = None) -> TrainConfig:
    """The config of the run ``config.resume`` names, with the fields of ``RESUME_OVERRIDES``
    that are in ``overrides`` (by default: those set away from their defaults) taken from
    ``config``."""
    from cnnzoo.train.config import RESUME_OVERRIDES, TrainConfig

    run = RunDir(config.resume)  # type: ignore[arg-type]
    if overrides is None:
        defaults = TrainConfig()
        overrides = [n for n in RESUME_OVERRIDES if getattr(config, n) != getattr(defaults, n)]
    chosen = {name: getattr(config, name) for name in RESUME_OVERRIDES if name in overrides}
    return dataclasses.replace(run.read_config(), **chosen, resume=str(run.path),
                               output_dir=str(run.path), overwrite=False)  # fmt: skip


def is_run_config(path: Path) -> bool:
    """Whether ``path`` is a config.json that `cnnzoo train` wrote (or could have)."""
    from cnnzoo.train.config import TrainConfig

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    if not isinstance(data, dict) or not isinstance(data.get("model"), str):
        return False
    try:
        TrainConfig.check_fields(data, str(path))
    except UsageError:
        return False
    return True


class RunDir:
    """One run directory: preparing it, locking it, and reading and writing its files."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.config_path = self.path / "config.json"
        self.history_path = self.path / "history.csv"
        self.metrics_path = self.path / "metrics.json"
        self.log_path = self.path / "train.log"
        self.history_plot = self.path / "history.png"
        self.confusion_plot = self.path / "confusion_matrix.png"
        self._lock_fd: int | None = None
        self._created = False  # this process made the folder (abandon() may remove it)
        self._written: set[str] = set()  # files this process wrote

    def __str__(self) -> str:
        return str(self.path)

    # ------------------------------------------------------------------ the folder
    def holds_run(self) -> bool:
        return self.config_path.is_file() and is_run_config(self.config_path)

    def prepare(self, *, resume: bool, overwrite: bool, epochs: int) -> None:
        """Make the folder ready for a new run (or for resuming one), holding its lock.

        A folder with another run needs ``resume`` or ``overwrite``; ``overwrite`` removes only
        the files cnnzoo writes. A folder that is not a run but has files of a run's names is
        never written into. Resuming a finished run needs more ``epochs`` than it ran.
        """
        if self.path.exists() and not self.path.is_dir():
            raise UsageError(f"--output-dir {self.path} exists and is not a directory")
        self._created = not self.path.exists()
        self.path.mkdir(parents=True, exist_ok=True)
        self.lock()
        try:
            self._check_contents(resume=resume, overwrite=overwrite, epochs=epochs)
        except BaseException:
            self.abandon()
            raise
        remove_stale_temps(self.path)

    def _check_contents(self, *, resume: bool, overwrite: bool, epochs: int) -> None:
        theirs = [name for name in RUN_FILES if (self.path / name).exists()]
        if theirs and not self.holds_run():
            raise UsageError(
                f"{self.path} is not a cnnzoo run but holds {', '.join(theirs[:4])}; cnnzoo will "
                "not write over them: pick another --output-dir"
            )
        if resume:
            self._check_resumable(epochs)
        elif theirs:
            if not overwrite:
                raise UsageError(
                    f"{self.path} already holds a training run; continue it with --resume "
                    f"{self.path}, replace it with --overwrite, or pick another --output-dir"
                )
            for name in RUN_FILES:
                (self.path / name).unlink(missing_ok=True)
            for events in self.path.glob(EVENTS):
                events.unlink()

    def _check_resumable(self, epochs: int) -> None:
        if (self.path / "last.safetensors").exists() and not checkpoint_exists(self.path, "last"):
            raise CnnzooError(
                f"cannot resume {self.path}: last.safetensors is there but last.state.pt (the "
                "optimizer, schedule and epoch) is missing; restore it, or start again with "
                "--overwrite"
            )
        done = self.read_metrics()
        if done is not None:
            if int(done.get("epochs_run", 0)) >= epochs or done.get("stopped_early"):
                raise UsageError(
                    f"{self.path} is already complete ({done.get('epochs_run')} epochs); pass a "
                    "larger --epochs to train it further"
                )
            self.metrics_path.unlink()

    def lock(self) -> None:
        """Hold ``.cnnzoo.lock`` (flock) until :meth:`unlock` or exit; another process that
        holds it makes this a CnnzooError naming its pid."""
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks; runs are not guarded there
            return
        if self._lock_fd is not None:
            return
        path = self.path / LOCK_FILE
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise CnnzooError(f"{self.path} is in use by pid {holder}; wait for it or pick "
                                  "another --output-dir") from None  # fmt: skip
            # The holder before us may have removed the file as we opened it: lock the file
            # that is there now.
            if path.exists() and os.fstat(fd).st_ino == path.stat().st_ino:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            (self.path / LOCK_FILE).unlink(missing_ok=True)
            os.close(self._lock_fd)
            self._lock_fd = None

    def abandon(self) -> None:
        """Undo a start that failed before training: remove what this process wrote, and the
        folder when this process made it and nothing else is in it."""
        for name in self._written:
            (self.path / name).unlink(missing_ok=True)
        self._written.clear()
        self.unlock()
        if self._created:
            with contextlib.suppress(OSError):  # something else is in it: leave it
                self.path.rmdir()

    # ------------------------------------------------------------------ files
    def _write(self, name: str, data: bytes) -> None:
        atomic_write_bytes(self.path / name, data)
        self._written.add(name)

    def write_config(self, config: TrainConfig, data: Mapping[str, Any]) -> None:
        """config.json: the run's fields and the ``data`` facts section."""
        text = json.dumps({**config.to_dict(), "data": dict(data)}, indent=2, sort_keys=True)
        self._write("config.json", (text + "\n").encode())

    def read_config(self) -> TrainConfig:
        """The run's TrainConfig, checked field by field (a UsageError names the field)."""
        from cnnzoo.train.config import TrainConfig

        if not self.config_path.is_file():
            raise UsageError(f"{self.path} holds no training run (no config.json)")
        return TrainConfig.load(self.config_path)

    def write_history(
        self, rows: Sequence[Mapping[str, Any]], path: str | Path | None = None
    ) -> None:
        """history.csv (or ``path``, relative to the run): one row per epoch, written whole."""
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=HISTORY_FIELDS, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row.get(k) is None else row[k] for k in HISTORY_FIELDS})
        if path is None:
            self._write("history.csv", buffer.getvalue().encode())
        else:
            atomic_write_bytes(self._inside(path), buffer.getvalue().encode())

    def write_metrics(self, metrics: Mapping[str, Any]) -> None:
        self._write("metrics.json", (json.dumps(dict(metrics), indent=2) + "\n").encode())

    def read_metrics(self) -> dict[str, Any] | None:
        if not self.metrics_path.is_file():
            return None
        try:
            return json.loads(self.metrics_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise CnnzooError(f"{self.metrics_path}: unreadable ({exc})") from None

    # ------------------------------------------------------------------ the data split
    def write_splits(self, bundle: Any) -> None:
        """splits.json: an image folder's split file by file (nothing for in-memory sets,
        whose splits their config reproduces)."""
        from cnnzoo.data import FileSplit

        if not isinstance(bundle.train, FileSplit):
            return
        root = Path(bundle.source)  # the split's paths are under it, as the folder was named

        def entries(split: Any) -> list[list[Any]]:
            if split is None:
                return []
            return [[Path(path).relative_to(root).as_posix(), int(label)]
                    for path, label in zip(split.paths, split.labels, strict=True)]  # fmt: skip

        record = {
            "dataset": bundle.name, "root": str(root.resolve()),
            "class_names": list(bundle.class_names),
            "channels": bundle.channels,
            "splits": {name: entries(getattr(bundle, name)) for name in ("train", "val", "test")},
        }  # fmt: skip
        # ensure_ascii keeps undecodable file names (surrogates) as escapes that read back.
        self._write(SPLITS_FILE, (json.dumps(record, indent=0) + "\n").encode())

    def read_splits(self, root: str | Path | None = None) -> RecordedSplits | None:
        """The split splits.json records (None when the run has none), its files under ``root``
        (default: the folder it was recorded from)."""
        from cnnzoo.data import FileSplit

        path = self.path / SPLITS_FILE
        if not path.is_file():
            return None
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            base = Path(root if root is not None else record["root"]).expanduser()
            splits = {}
            for name, rows in record["splits"].items():
                splits[name] = FileSplit([base / rel for rel, _ in rows],
                                         [int(label) for _, label in rows])  # fmt: skip
            return RecordedSplits(base, [str(c) for c in record["class_names"]],
                                  int(record["channels"]), splits)  # fmt: skip
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CnnzooError(f"{path}: unreadable split record ({_one_line(exc)})") from None

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(
        self,
        tag: str,
        weights: Mapping[str, torch.Tensor],
        state: Mapping[str, Any],
        metadata: Mapping[str, str],
    ) -> None:
        save_checkpoint(self.path, tag, weights, state, metadata)
        self._written.update({f"{tag}.safetensors", f"{tag}.state.pt"})

    def load_checkpoint(self, tag: str) -> Checkpoint:
        return load_checkpoint(self.path, tag)

    def has_checkpoint(self, tag: str) -> bool:
        return checkpoint_exists(self.path, tag)

    def save_weights(
        self, path: str | Path, weights: Mapping[str, torch.Tensor], metadata: Mapping[str, str]
    ) -> Path:
        """Weights alone (a ModelCheckpoint's own file), relative paths inside the run."""
        from cnnzoo.checkpoint import weights_bytes

        target = self._inside(path)
        atomic_write_bytes(target, weights_bytes(weights, metadata))
        return target

    def _inside(self, path: str | Path) -> Path:
        """``path`` resolved against the run directory, its folder created."""
        target = Path(path)
        target = target if target.is_absolute() else self.path / target
        target.parent.mkdir(parents=True, exist_ok=True)
        return target


@dataclasses.dataclass
class RecordedSplits:
    """An image folder's split as a run recorded it (``splits.json``)."""

    root: Path
    class_names: list[str]
    channels: int
    splits: dict[str, Any]  # "train" / "val" / "test" -> FileSplit

    def bundle(self, image_size: int | None = None, seed: int = 0) -> Any:
        """The DataBundle of these files, after saying (a DataWarning) how the folder changed
        since they were recorded; recorded files that are gone are left out."""
        from cnnzoo.data.folder import DataWarning, folder_bundle, folder_changes, printable_name

        known = {path for split in self.splits.values() for path in split.paths}
        added, missing = folder_changes(self.root, known)
        splits = self.splits
        if added or missing:
            gone = set(missing)
            counts = {name: sum(p in gone for p in split.paths) for name, split in splits.items()}
            lost = ", ".join(f"{n} {name}" for name, n in counts.items() if n)
            warnings.warn(
                f"{printable_name(str(self.root))} changed since the run trained "
                f"({len(added)} image(s) added, {len(missing)} file(s) missing"
                + (f": {lost}" if lost else "") + "); using the split the run recorded "
                f"(test: {len(splits['test']) - counts.get('test', 0)} images)",
                DataWarning,
                stacklevel=3,
            )
            splits = {name: _without(split, gone) for name, split in splits.items()}
        return folder_bundle(self.root, self.class_names, splits, channels=self.channels,
                             image_size=image_size, seed=seed)  # fmt: skip


def folder_of(dataset: str) -> Path:
    """The folder of ``imagefolder:PATH``, as the run's files are found under it now."""
    return Path(dataset.split(":", 1)[1]).expanduser().resolve()


def _same_folder(spec: str, own: str) -> bool:
    """Whether ``spec`` names the image folder ``own`` does, however it is written."""
    both = spec.startswith("imagefolder:") and own.startswith("imagefolder:")
    return both and folder_of(spec) == folder_of(own)


def _without(split: Any, gone: set[Path]) -> Any:
    from cnnzoo.data import FileSplit

    kept = [(path, label) for path, label in zip(split.paths, split.labels, strict=True)
            if path not in gone]  # fmt: skip
    return FileSplit([path for path, _ in kept], [label for _, label in kept])


def run_data(
    config: Mapping[str, Any],
    run_dir: str | Path | None = None,
    *,
    dataset: str | None = None,
    data_dir: str | None = None,
) -> Any:
    """The data a run trained on, split exactly as it was (a DataBundle).

    An image folder's split comes from the run's ``splits.json`` (its folder as the config names
    it now); other datasets are split again with the run's own settings (``val_split``,
    ``split``, ``seed``), which reproduce it. ``dataset`` other than the run's own is loaded and
    split with those settings too.
    """
    from cnnzoo.data import load_dataset
    from cnnzoo.data.splits import split_parts

    own = str(config.get("dataset") or "")
    spec = dataset or own
    if spec == "arrays" or (not dataset and own == "arrays"):
        raise UsageError(
            "this run trained on arrays given to cnnzoo.fit, which it does not keep: score it in "
            "Python with cnnzoo.evaluate(RUN, x_test, y_test), or name the data with --dataset "
            "(a dataset name or imagefolder:PATH)"
        )
    if not spec:
        raise UsageError("name the data with --dataset (a dataset name or imagefolder:PATH)")
    if run_dir is not None and _same_folder(spec, own):
        recorded = RunDir(run_dir).read_splits(folder_of(own))
        if recorded is not None:
            return recorded.bundle(seed=int(config.get("seed") or 0))
    return load_dataset(
        spec,
        data_dir=data_dir or config.get("data_dir"),
        val_split=float(config.get("val_split", 0.1)),
        split=split_parts(config.get("split")) if spec.startswith("imagefolder:") else None,
        seed=int(config.get("seed") or 0),
    )


def default_run_dir(model: str, dataset: str) -> Path:
    """``runs/MODEL-DATASET-TIME``, where a run goes without ``--output-dir``."""
    from datetime import datetime

    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", dataset.split(":", 1)[0])
    return Path("runs") / f"{model}-{slug}-{stamp}"


def data_facts(
    bundle: Any,
    mean: Sequence[float],
    std: Sequence[float],
    image_size: int | None,
    input_note: str,
) -> dict[str, Any]:
    """config.json's ``data`` section: what evaluate / predict need to rebuild the input."""
    return {
        "name": bundle.name,
        "num_classes": bundle.num_classes,
        "in_chans": bundle.channels,
        "class_names": list(bundle.class_names),
        "mean": list(mean),
        "std": list(std),
        "image_size": image_size or max(bundle.image_size),
        "stored_image_size": list(bundle.image_size),
        "input": input_note,
    }


def weights_metadata(model: str, model_kwargs: Mapping[str, Any], facts: Mapping[str, Any]
                     ) -> dict[str, str]:  # fmt: skip
    """The strings a checkpoint's safetensors header carries (a file alone rebuilds its model)."""
    return {
        "model": str(model),
        "model_kwargs": json.dumps(dict(model_kwargs)),
        "num_classes": str(facts["num_classes"]),
        "in_chans": str(facts["in_chans"]),
        "image_size": str(facts["image_size"]),
        "dataset": str(facts["name"]),
        "class_names": json.dumps(list(facts["class_names"])),
        "mean": json.dumps(list(facts["mean"])),
        "std": json.dumps(list(facts["std"])),
    }


# --------------------------------------------------------------------------------------------
# reading a run back for inference: the model, its class names, its evaluation transform

CHECKPOINT_NAMES = ("best.safetensors", "last.safetensors")




def _one_line(exc: BaseException, limit: int = 300) -> str:
    """Exception text on one line: state-dict errors list every key over many lines."""
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def resolve_run(run_or_checkpoint: str | Path) -> tuple[Path, Path]:
    """(run directory, checkpoint file) for a run directory or a checkpoint inside one.

    A finished run gives the weights it ended with, the ones its metrics.json scored and
    ``fit``'s ``history.model`` holds: the last epoch's, or the best when early stopping
    restored them (metrics.json's ``weights_file``). A run without that record (unfinished, or
    written before runs kept it) gives its ``best.safetensors``, else its ``last.safetensors``.
    """
    path = Path(run_or_checkpoint)
    if not path.exists():
        raise CnnzooError(f"{path}: no such run directory or checkpoint file")
    if path.is_dir():
        recorded = _ended_with(path)
        if recorded is not None:
            return path, recorded
        for name in CHECKPOINT_NAMES:
            if (path / name).is_file():
                return path, path / name
        raise WeightsError(f"{path}: no {' or '.join(CHECKPOINT_NAMES)} in this run directory")
    return path.parent, path


def _ended_with(run_dir: Path) -> Path | None:
    """The weights file a finished run's metrics.json names, when it is there."""
    try:
        name = json.loads((run_dir / "metrics.json").read_text()).get("weights_file")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(name, str) or Path(name).name != name:
        return None
    return run_dir / name if (run_dir / name).is_file() else None


def _read_config(run_dir: Path) -> dict[str, Any]:
    config_path = run_dir / "config.json"
    if not config_path.is_file():
        raise CnnzooError(
            f"{run_dir}: no config.json, so this is not a run directory written by `cnnzoo train`"
        )
    from cnnzoo.train.config import TrainConfig

    try:
        config = json.loads(config_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CnnzooError(f"{config_path}: unreadable run config ({_one_line(exc)})") from exc
    try:  # a hand-edited config: name the field that is wrong, not a TypeError deep inside
        fields = config
        if isinstance(config, dict):  # data facts may also sit at the top level (older runs)
            fields = {k: v for k, v in config.items() if k not in _RUN_FACTS}
        TrainConfig.check_fields(fields, str(config_path))
    except UsageError as exc:
        raise CnnzooError(str(exc)) from None
    if not isinstance(config.get("model"), str):
        raise CnnzooError(f"{config_path}: the run config names no model")
    facts = config.get("data")
    if facts is not None and not isinstance(facts, dict):
        raise CnnzooError(f"{config_path}: \"data\" must be a mapping of facts about the data")
    return config


def _model_kwargs(config: dict[str, Any]) -> dict[str, Any]:
    kwargs = dict(config.get("model_kwargs") or {})
    # Builder options the trainer may record at the top level instead of under model_kwargs.
    for key in ("small_input",):
        if config.get(key) is not None:
            kwargs.setdefault(key, config[key])
    return kwargs


# What predict/evaluate need to know about a run besides the TrainConfig fields; the trainer may
# keep them at the top level of config.json or in a nested "data" section.
_RUN_FACTS = ("num_classes", "in_chans", "class_names", "mean", "std", "image_size")


def _checkpoint_shapes(checkpoint: Path) -> dict[str, list[int]]:
    from safetensors import safe_open

    try:
        with safe_open(str(checkpoint), framework="pt") as handle:
            return {key: list(handle.get_slice(key).get_shape()) for key in handle.keys()}
    except Exception as exc:
        raise WeightsError(
            f"{checkpoint}: not a readable safetensors file (truncated or another format?): "
            f"{_one_line(exc)}"
        ) from exc


def _fill_run_facts(config: dict[str, Any], checkpoint: Path) -> dict[str, Any]:
    """The config with num_classes and in_chans always set (read off the checkpoint if needed)."""
    config = dict(config)
    nested = config.get("data") if isinstance(config.get("data"), dict) else {}
    for key in _RUN_FACTS:
        if config.get(key) is None and nested.get(key) is not None:
            config[key] = nested[key]
    if not config.get("num_classes") and config.get("class_names"):
        config["num_classes"] = len(config["class_names"])
    if config.get("num_classes") and config.get("in_chans"):
        return config
    from cnnzoo.registry import create_model

    shapes = _checkpoint_shapes(checkpoint)
    with torch.device("meta"):
        probe = create_model(config["model"], **_model_kwargs(config))
    for fact, key, axis in (
        ("in_chans", f"{probe.first_conv}.weight", 1),
        ("num_classes", f"{probe.classifier_name}.weight", 0),
    ):
        if not config.get(fact):
            if key not in shapes:
                raise WeightsError(
                    f"{checkpoint}: no {key} tensor, so these are not {config['model']} weights"
                )
            config[fact] = int(shapes[key][axis])
    return config


def load_run(run_or_checkpoint: str | Path) -> tuple[ZooModel, dict[str, Any]]:
    """Rebuild a trained model from its run directory (or a checkpoint file inside one).

    Returns the model in eval mode on the CPU and the run's config dict, completed with
    ``num_classes`` and ``in_chans`` (read off the checkpoint's tensor shapes when config.json
    lacks them), ``run_dir`` and ``checkpoint`` (the file loaded). Every failure is a one-line
    :class:`CnnzooError`: a missing run or config, a truncated or foreign checkpoint, a
    checkpoint of another architecture.
    """
    from cnnzoo.registry import create_model
    from cnnzoo.weights import load_weights

    run_dir, checkpoint = resolve_run(run_or_checkpoint)
    config = _read_config(run_dir)
    name = config["model"]
    try:
        config = _fill_run_facts(config, checkpoint)
        # A num_classes among the model options (1: a sigmoid head on two classes) wins.
        model = create_model(name, **{"num_classes": int(config["num_classes"]),
                                      "in_chans": int(config["in_chans"]),
                                      **_model_kwargs(config)})  # fmt: skip
    except CnnzooError:
        raise
    except (ValueError, TypeError) as exc:
        raise CnnzooError(f"{run_dir}: cannot build the run's model: {_one_line(exc)}") from exc
    try:
        with warnings.catch_warnings():
            # load_weights keeps a fresh classifier (with a warning) when the file's does not
            # fit; for a trained run that is an error, raised below.
            warnings.simplefilter("ignore")
            report = load_weights(model, checkpoint)
    except Exception as exc:
        reason = _one_line(exc)
        where = "" if str(checkpoint) in reason else f"{checkpoint}: "
        raise WeightsError(f"{where}cannot load these weights into {name}: {reason}") from exc
    unfit = [*report.fresh_classifier, *report.adapted]
    if unfit:
        raise WeightsError(
            f"{checkpoint} does not match the run's config ({config['num_classes']} classes, "
            f"{config['in_chans']} input channels): {', '.join(unfit[:4])} have other shapes"
        )
    model.eval()
    return model, {**config, "run_dir": str(run_dir), "checkpoint": str(checkpoint)}


def input_size_of(model: ZooModel, config: dict[str, Any]) -> tuple[int, int]:
    """(H, W) the model was trained at: the run's ``image_size``, else the model's own size."""
    for key in ("image_size", "input_size"):
        value = config.get(key)
        if isinstance(value, int) and value > 0:
            return value, value
        if isinstance(value, (list, tuple)) and len(value) >= 2:
            return int(value[-2]), int(value[-1])
    if model.fixed_input_size:
        return model.fixed_input_size, model.fixed_input_size
    _, height, width = model.default_cfg["input_size"]
    return int(height), int(width)


def normalization_of(
    model: ZooModel, config: dict[str, Any], channels: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std, shaped (1, C, 1, 1), from the run (else the model's defaults)."""
    mean = config.get("mean") or model.default_cfg["mean"]
    std = config.get("std") or model.default_cfg["std"]
    mean, std = fit_channel_stats([float(v) for v in mean], [float(v) for v in std], channels)
    return torch.tensor(mean).view(1, channels, 1, 1), torch.tensor(std).view(1, channels, 1, 1)


def class_names_of(config: dict[str, Any], num_classes: int) -> list[str]:
    """The run's class names, or "0".."C-1" when the config has none that fit."""
    names = config.get("class_names")
    if names and len(names) == num_classes:
        return [str(n) for n in names]
    return [str(i) for i in range(num_classes)]


def run_transform(config: dict[str, Any], model: ZooModel) -> EvalTransform:
    """The evaluation transform of a run: its input side, normalisation and crop rule."""
    height, width = input_size_of(model, config)
    channels = int(config.get("in_chans") or 3)
    mean, std = normalization_of(model, config, channels)
    dataset = str(config.get("dataset") or "")
    crop = FOLDER_CROP_FRACTION if dataset.startswith("imagefolder:") else 1.0
    return EvalTransform(
        size=height if height == width else min(height, width),
        mean=tuple(mean.flatten().tolist()),
        std=tuple(std.flatten().tolist()),
        crop_fraction=crop,
    )
