"""What every experiment shares: its sub-runs, its data subsets, its test curves, its records.

A sub-run is an ordinary run directory written by :class:`cnnzoo.train.Trainer`. An experiment
trains each of its sub-runs to the end, reuses one that is already finished with the same recipe,
refuses to touch one trained with another recipe, and continues an unfinished one (the trainer's
own resume) only when asked to (``resume=True``), so an interrupted experiment loses at most the
epoch that was running.
"""

from __future__ import annotations

import csv
import json
import os
import pickle
import shlex
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from cnnzoo.errors import UsageError
from cnnzoo.rundir import RunDir
from cnnzoo.train import TrainConfig, Trainer
from cnnzoo.train.callbacks import Callback

__all__ = [
    "CALIBRATION",
    "DEFAULT_SUBSET",
    "MEASURED_ON",
    "SUBSET_DATASETS",
    "Rates",
    "SubRun",
    "TestCurve",
    "check_dataset",
    "check_positive",
    "estimated_seconds",
    "markdown_table",
    "minutes_or_hours",
    "provenance",
    "read_history",
    "subset_data_dir",
    "train_subrun",
    "write_results",
]

# Fields of a run's config.json that do not change what the run computes: a finished sub-run
# whose other fields match the experiment's recipe is reused whatever these say.
NOT_RECIPE = frozenset(
    {
        "output_dir",
        "resume",
        "overwrite",
        "quiet",
        "progress_every",
        "num_threads",
        "num_workers",
        "device",
        "tensorboard",
        "histogram_freq",
        "plots",
        "model_kwargs",  # the trainer records its input plan here (e.g. small_input=True)
    }
)

# Named sets that --subset can cut (written back in their own file format, see subset_data_dir).
SUBSET_DATASETS = ("fashion_mnist", "mnist", "cifar10")
# Training images the experiments use unless told otherwise (None: all). A full-size run of
# either experiment takes days on a busy 2-core CPU (see `cnnzoo experiment list`).
DEFAULT_SUBSET: int | None = 10_000

# Where the Rates in the experiments' modules come from: the runs committed under docs/results.
MEASURED_ON = (
    "measured 2026-11-30 in the runs of docs/results (a 2-core AMD EPYC, torch 2.14.1, "
    "1 thread, another 1-thread training on the other core)"
)
# How far to trust those estimates: the whole runs, timed.
CALIBRATION = (
    "the defaults with --num-threads 1 took 47.7 min (degradation) and 30.6 min (zoo-table) of "
    "wall time there, against the 42 min and 26 min estimated (not timed with 2 threads on an "
    "idle machine)"
)


@dataclass(frozen=True)
class Rates:
    """Images per second of one model, measured here: training steps and test scoring."""

    train: float
    infer: float


def estimated_seconds(
    rates: dict[str, Rates], models: Sequence[str], *, trained: int, scored: int, epochs: int
) -> float:
    """Seconds for ``epochs`` epochs of every model: ``trained`` images through a training step
    and ``scored`` through the network in eval mode per epoch, at the measured rates."""
    return epochs * sum(trained / rates[m].train + scored / rates[m].infer for m in models)


def minutes_or_hours(seconds: float) -> str:
    """``42 min`` below two hours, ``2.9 h`` above."""
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def check_positive(name: str, value: int | None) -> None:
    """A UsageError unless ``value`` is None or an integer >= 1."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UsageError(f"{name} must be an integer >= 1, got {value}")


def check_dataset(spec: str) -> str:
    """The registered name of ``spec``, which must be one of the sets experiments run on."""
    from cnnzoo.data.datasets import canonical_name

    name = canonical_name(spec)
    if name not in SUBSET_DATASETS:
        raise UsageError(f"experiments run on {', '.join(SUBSET_DATASETS)}; got {spec!r}")
    return name


# --------------------------------------------------------------------------- data subsets


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    path.write_bytes(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def _write_mnist_like(directory: Path, train: Any, test: Any, class_names: list[str]) -> None:
    for prefix, split in (("train", train), ("t10k", test)):
        _write_idx(directory / f"{prefix}-images-idx3-ubyte", split.images[:, 0].numpy())
        _write_idx(directory / f"{prefix}-labels-idx1-ubyte", split.labels.numpy())


def _write_cifar10(directory: Path, train: Any, test: Any, class_names: list[str]) -> None:
    """CIFAR-10's python batches (protocol 2: numpy arrays and lists only, as the reader allows)."""

    def dump(path: Path, obj: dict[str, Any]) -> None:
        with open(path, "wb") as handle:
            pickle.dump(obj, handle, protocol=2)

    def batch(images: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
        return {"data": images.reshape(len(images), -1), "labels": labels.tolist()}

    images, labels = train.images.numpy(), train.labels.numpy()
    parts = np.array_split(np.arange(len(labels)), 5)
    for number, part in enumerate(parts, start=1):
        dump(directory / f"data_batch_{number}", batch(images[part], labels[part]))
    dump(directory / "test_batch", batch(test.images.numpy(), test.labels.numpy()))
    dump(directory / "batches.meta", {"label_names": list(class_names)})


_WRITERS: dict[str, Callable[[Path, Any, Any, list[str]], None]] = {
    "fashion_mnist": _write_mnist_like,
    "mnist": _write_mnist_like,
    "cifar10": _write_cifar10,
}


def subset_data_dir(
    dataset: str,
    size: int,
    root: str | Path,
    *,
    data_dir: str | Path | None = None,
    full_test: bool = False,
) -> Path:
    """A directory holding ``size`` training and ``min(size, test size)`` test images of
    ``dataset`` (with ``full_test``, the whole test split) in its own file format, so that
    ``--data-dir`` of any run (and its resume, and ``cnnzoo evaluate``) finds exactly that subset.

    Each class keeps its share to within one image (a seeded stratified cut, seed 0). The
    directory, ``root/DATASET-subsetSIZE`` (``…-fulltest`` with the whole test split), is written
    once (atomically) and reused.
    """
    from cnnzoo.data import TensorSplit, load_dataset
    from cnnzoo.data.splits import stratified_order

    target = Path(root) / f"{dataset}-subset{size}{'-fulltest' if full_test else ''}"
    if target.is_dir():
        return target.resolve()
    bundle = load_dataset(dataset, data_dir=data_dir, val_split=0.0)
    if size > len(bundle.train):
        raise UsageError(
            f"--subset {size}: {dataset} has only {len(bundle.train):,} training images"
        )

    def cut(split: Any, count: int) -> Any:
        keep = np.sort(stratified_order(split.labels.numpy(), seed=0)[:count])
        return TensorSplit(split.images[keep], split.labels[keep])

    tested = len(bundle.test) if full_test else min(size, len(bundle.test))
    train, test = cut(bundle.train, size), cut(bundle.test, tested)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        _WRITERS[dataset](staging, train, test, list(bundle.class_names))
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target.resolve()


# --------------------------------------------------------------------------- test curve


class TestCurve(Callback):
    """Scores the test split after every epoch (Keras' ``on_epoch_end``): the test error curve of
    He et al.'s figures. The scores go into ``RUN/test_curve.json`` and into the callback's state,
    which the ``last`` checkpoint keeps, so a resumed run continues the curve where it stopped.

    The network scored is the one the epoch saves (the EMA when there is one), through the same
    loader settings as the run's final test, so the last epoch's score is its metrics.json's.
    """

    __test__ = False  # not a pytest test class, whatever its name
    main_process_only = True
    FILE = "test_curve.json"

    def __init__(self, log: bool = True) -> None:
        super().__init__()
        self.log = log
        self.scores: dict[int, dict[str, float]] = {}
        self._loader: Any = None

    @classmethod
    def read(cls, run_dir: str | Path) -> dict[int, dict[str, float]]:
        """Epoch (1-based) -> {"test_loss", "test_accuracy"} for every scored epoch of a run."""
        path = Path(run_dir) / cls.FILE
        if not path.is_file():
            return {}
        return {int(epoch): row for epoch, row in json.loads(path.read_text()).items()}

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        from cnnzoo.analysis.metrics import evaluate_model
        from cnnzoo.checkpoint import atomic_write_bytes
        from cnnzoo.data import make_loader

        trainer = self.trainer
        assert trainer is not None
        bundle = trainer.bundle
        if self._loader is None:
            self._loader = make_loader(
                bundle, "test", batch_size=trainer.config.batch_size, **trainer.loader_options
            )
        with trainer.autocast():
            result = evaluate_model(
                trainer.eval_model, self._loader, bundle.num_classes,
                progress=not trainer.config.quiet and sys.stderr.isatty(),
            )  # fmt: skip
        self.scores[epoch + 1] = {"test_loss": result.loss, "test_accuracy": result.top1}
        text = json.dumps({str(k): v for k, v in sorted(self.scores.items())}, indent=2)
        atomic_write_bytes(trainer.run.path / self.FILE, (text + "\n").encode())
        if self.log:
            trainer.log(
                f"epoch {epoch + 1:>3}/{trainer.epochs}  test loss {result.loss:.4f} error "
                f"{100 * (1 - result.top1):.2f}%"
            )

    def state_dict(self) -> dict[str, Any]:
        return {"scores": {str(k): v for k, v in self.scores.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scores = {int(k): dict(v) for k, v in state.get("scores", {}).items()}


# --------------------------------------------------------------------------- sub-runs


@dataclass
class SubRun:
    """A finished sub-run as the experiment reads it back."""

    name: str
    run_dir: Path
    metrics: dict[str, Any]  # metrics.json
    history: list[dict[str, float]]  # history.csv, one row per epoch
    test_curve: dict[int, dict[str, float]]  # test_curve.json (empty when not scored)


def read_history(run_dir: Path) -> list[dict[str, float]]:
    """history.csv as numbers (empty cells, like val_loss without a validation split: NaN)."""
    with open(run_dir / "history.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [{k: float(v) if v != "" else float("nan") for k, v in row.items()} for row in rows]


def _check_recipe(run: RunDir, wanted: TrainConfig) -> None:
    saved = json.loads(run.config_path.read_text())
    asked = wanted.resolved().to_dict()
    for key in sorted(set(asked) - NOT_RECIPE):
        if saved.get(key) != asked[key]:
            raise UsageError(
                f"{run} was trained with another recipe ({key}: {saved.get(key)!r} there, "
                f"{asked[key]!r} now); give the same options or another output directory"
            )


def train_subrun(
    config: TrainConfig,
    *,
    resume: bool,
    callbacks: Sequence[Callback] = (),
    log: Callable[[str], None] = print,
) -> SubRun:
    """Train ``config`` into ``config.output_dir`` to the end (with ``callbacks``, which must be
    the same ones whenever the run is continued), or reuse it there when it is finished.

    A run there with another recipe is a UsageError; an unfinished one is continued (the
    trainer's resume) only with ``resume``.
    """
    run = RunDir(str(config.output_dir))
    name = run.path.name
    if run.holds_run():
        _check_recipe(run, config)
        if run.read_metrics() is None:
            epoch = run.load_checkpoint("last").epoch if run.has_checkpoint("last") else 0
            if not resume:
                raise UsageError(
                    f"{run} holds an unfinished run (epoch {epoch} of {config.epochs}); "
                    "continue it with --resume"
                )
            log(f"{name}: resuming after epoch {epoch} of {config.epochs} ({run})")
            Trainer(_resume_config(config), callbacks=list(callbacks)).fit()
        else:
            log(f"{name}: finished run reused ({run})")
    else:
        log(f"{name}: training {config.epochs} epochs -> {run}")
        Trainer(config, callbacks=list(callbacks)).fit()
    return SubRun(
        name=name,
        run_dir=run.path,
        metrics=run.read_metrics() or {},
        history=read_history(run.path),
        test_curve=TestCurve.read(run.path),
    )


def _resume_config(config: TrainConfig) -> TrainConfig:
    """Continue ``config``'s run with its own saved recipe; only the machine settings carry."""
    return TrainConfig(
        resume=config.output_dir,
        quiet=config.quiet,
        num_threads=config.num_threads,
        device=config.device,
    )


# --------------------------------------------------------------------------- records


def provenance(
    command: Sequence[str], *, threads: int | None, measure: bool = False
) -> dict[str, Any]:
    """What a result file records so that it can be traced: the command that regenerates it,
    the machine (cnnzoo.machine), the training threads (None: the trainer's default, the cores
    other processes leave free, which each run's train.log states), cnnzoo's version and the
    date."""
    import cnnzoo
    from cnnzoo.machine import machine_info

    machine = machine_info(measure=measure)
    machine["torch_threads"] = threads if threads is not None else "default"
    return {
        "command": shlex.join(command),
        "date": datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds"),
        "cnnzoo": cnnzoo.__version__,
        "machine": machine,
    }


def provenance_lines(record: dict[str, Any]) -> list[str]:
    """The provenance as markdown lines, for the top of a result table."""
    from cnnzoo.machine import header

    return [
        f"Regenerate with: `{record['command']}`",
        "",
        f"Written {record['date']} by cnnzoo {record['cnnzoo']} on:",
        "",
        *(f"- {line}" for line in header(record["machine"]).splitlines()),
    ]


def write_results(
    output_dir: Path, stem: str, record: dict[str, Any], markdown: str, log: Callable[[str], None]
) -> None:
    """``STEM.md`` and ``STEM.json`` (the record) beside the figure ``STEM.png``, and a line
    saying so."""
    (output_dir / f"{stem}.md").write_text(markdown)
    (output_dir / f"{stem}.json").write_text(json.dumps(record, indent=2) + "\n")
    log(f"wrote {stem}.md, {stem}.png and {stem}.json in {output_dir}/")


def markdown_table(
    headers: Sequence[str], rows: Sequence[Sequence[Any]], *, left: Sequence[int] = (0,)
) -> str:
    """A GitHub markdown table: the columns numbered in ``left`` left-aligned (words), the others
    right-aligned (numbers)."""
    align = ["---" if i in left else "---:" for i in range(len(headers))]
    lines = [
        "| " + " | ".join(headers) + " |",
        "| " + " | ".join(align) + " |",
        *("| " + " | ".join(str(cell) for cell in row) + " |" for row in rows),
    ]
    return "\n".join(lines) + "\n"
