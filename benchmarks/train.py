"""Training speed on Fashion-MNIST: cnnzoo's training loop against the tutorial pipeline.

The tutorial pipeline is what the course notes do: torchvision's ``FashionMNIST`` dataset with
``ToTensor`` + ``Normalize`` through a ``DataLoader`` (batch 128, shuffled, no workers), the same
model and the same optimizer (Adam, lr 1e-3), one ``optimizer.step()`` per batch. cnnzoo's side is
its ``Trainer`` on the same data, model and optimizer, with its defaults (channels-last).

Two measurements, each run interleaved in this process (cnnzoo, tutorial, cnnzoo, ...):

* steady state (default): images/s of the training loop over ``--steps`` batches per turn,
  data loading included; medians over ``--turns`` and the ratio cnnzoo / tutorial. ``--nchw``
  adds cnnzoo with the contiguous (NCHW) layout as a third variant.
* end to end (``--epochs N``): wall time of a whole N-epoch run from the IDX files to the test
  accuracy, as a user would time it; cnnzoo's side is ``cnnzoo.fit`` (checkpoints on, plots and
  TensorBoard off, as the tutorial has neither).

    python benchmarks/train.py                       # lenet5 and resnet20, 3 turns of 60 batches
    python benchmarks/train.py --models lenet5 --steps 200 --turns 5 --nchw --out train.json
    python benchmarks/train.py --models lenet5 --epochs 3   # the issue's "3 epochs" figure
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import header, machine_info  # noqa: E402

import cnnzoo  # noqa: E402
from cnnzoo.train import TrainConfig, Trainer  # noqa: E402

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = tuple(
    f"{split}-{kind}-ubyte"
    for split in ("train", "t10k")
    for kind in ("images-idx3", "labels-idx1")
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="lenet5,resnet20", help="comma-separated zoo names")
    parser.add_argument("--steps", type=int, default=60, help="batches per turn (default 60)")
    parser.add_argument("--turns", type=int, default=3, help="interleaved turns (default 3)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default all)")
    parser.add_argument(
        "--nchw",
        action="store_true",
        help="also time cnnzoo with --no-channels-last (a third interleaved variant)",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        help="time whole N-epoch runs end to end (files to test accuracy) instead of steps",
    )
    parser.add_argument("--data-dir", type=Path, default=DEBIAN_DIR, help="Fashion-MNIST .gz")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)
    for name in ("steps", "turns", "batch_size", "threads", "epochs"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    return args


def tutorial_root(source: Path, workdir: Path) -> Path:
    """torchvision's FashionMNIST wants root/FashionMNIST/raw/<uncompressed IDX files>."""
    raw = workdir / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for name in FILES:
        with gzip.open(source / f"{name}.gz") as src, open(raw / name, "wb") as dst:
            shutil.copyfileobj(src, dst)
    return workdir


class TutorialPipeline:
    """The notes' loop: DataLoader over a torchvision dataset, per-sample ToTensor/Normalize."""

    def __init__(self, model_name: str, root: Path, batch_size: int) -> None:
        from torchvision import datasets, transforms

        self.transform = transforms.Compose(
            [transforms.ToTensor(), transforms.Normalize((0.2860,), (0.3530,))]
        )
        self.root = root
        dataset = datasets.FashionMNIST(str(root), train=True, transform=self.transform)
        self.loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True)
        torch.manual_seed(0)
        self.model = cnnzoo.create_model(model_name, num_classes=10, in_chans=1)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.criterion = nn.CrossEntropyLoss()
        self.batches = iter(self.loader)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.optimizer.zero_grad()
        loss = self.criterion(self.model(x), y)
        loss.backward()
        self.optimizer.step()

    def run(self, steps: int) -> float:
        """Images/s over ``steps`` batches, data loading included."""
        self.model.train()
        seen = 0
        start = time.perf_counter()
        for _ in range(steps):
            try:
                x, y = next(self.batches)
            except StopIteration:
                self.batches = iter(self.loader)
                x, y = next(self.batches)
            self.step(x, y)
            seen += y.shape[0]
        return seen / (time.perf_counter() - start)

    def test_accuracy(self) -> float:
        from torchvision import datasets

        test = datasets.FashionMNIST(str(self.root), train=False, transform=self.transform)
        self.model.eval()
        correct = 0
        with torch.no_grad():
            for x, y in torch.utils.data.DataLoader(test, batch_size=1000):
                correct += (self.model(x).argmax(1) == y).sum().item()
        return correct / len(test)


def tutorial_end_to_end(model_name: str, root: Path, batch_size: int, epochs: int) -> dict:
    """The notes' whole script: build the dataset, train ``epochs`` epochs, score the test set."""
    start = time.perf_counter()
    tutorial = TutorialPipeline(model_name, root, batch_size)
    tutorial.model.train()
    for _ in range(epochs):
        for x, y in tutorial.loader:
            tutorial.step(x, y)
    accuracy = tutorial.test_accuracy()
    return {"seconds": time.perf_counter() - start, "test_acc": accuracy}


def zoo_config(model_name: str, data_dir: Path, batch_size: int, **fields: Any) -> TrainConfig:
    """cnnzoo's run with the tutorial's model, optimizer and (unaugmented) data."""
    return TrainConfig(
        model=model_name,
        dataset="fashion_mnist",
        data_dir=str(data_dir),
        batch_size=batch_size,
        optimizer="adam",
        lr=1e-3,
        weight_decay=0.0,
        schedule="none",
        augment="none",
        val_split=0.0,
        quiet=True,
        tensorboard=False,
        plots=False,
        num_threads=torch.get_num_threads(),
        **fields,
    )


def zoo_end_to_end(
    model_name: str, data_dir: Path, batch_size: int, epochs: int, run_dir: Path
) -> dict:
    start = time.perf_counter()
    config = zoo_config(
        model_name, data_dir, batch_size, epochs=epochs, output_dir=str(run_dir), overwrite=True
    )
    metrics = Trainer(config).fit().metrics
    return {"seconds": time.perf_counter() - start, "test_acc": metrics["test_top1"]}


class ZooPipeline:
    """cnnzoo's Trainer, one training epoch of ``steps`` batches per turn."""

    def __init__(
        self,
        model_name: str,
        data_dir: Path,
        batch_size: int,
        workdir: Path,
        channels_last: bool = True,
    ) -> None:
        config = zoo_config(
            model_name,
            data_dir,
            batch_size,
            channels_last=channels_last,
            output_dir=str(workdir / f"run-{model_name}-{int(channels_last)}"),
        )
        self.trainer = Trainer(config)
        self.trainer.setup()
        self.epoch = 0

    def run(self, steps: int) -> float:
        stats = self.trainer.train_one_epoch(self.epoch, max_steps=steps)
        self.epoch += 1
        return stats["images_per_s"]


def steady_state(args: argparse.Namespace, name: str, workdir: Path, root: Path) -> dict:
    variants: dict[str, Any] = {
        "cnnzoo": ZooPipeline(name, args.data_dir, args.batch_size, workdir),
        "tutorial": TutorialPipeline(name, root, args.batch_size),
    }
    if args.nchw:
        variants["cnnzoo_nchw"] = ZooPipeline(
            name, args.data_dir, args.batch_size, workdir, channels_last=False
        )
    for pipeline in variants.values():  # warm-up: allocator, kernels, first batches
        pipeline.run(5)
    speeds: dict[str, list[float]] = {key: [] for key in variants}
    for _ in range(args.turns):
        for key, pipeline in variants.items():
            speeds[key].append(pipeline.run(args.steps))
    row: dict[str, Any] = {
        "model": name,
        "batch_size": args.batch_size,
        "steps_per_turn": args.steps,
        "turns": args.turns,
    }
    for key, values in speeds.items():
        row[f"{key}_img_s"] = statistics.median(values)
        row[f"{key}_all"] = values
    tutorial = row["tutorial_img_s"]
    row["ratio"] = row["cnnzoo_img_s"] / tutorial
    line = (
        f"{name:<10} tutorial {tutorial:>7,.0f} img/s   cnnzoo "
        f"{row['cnnzoo_img_s']:>7,.0f} img/s ({row['ratio']:4.1f}x)"
    )
    if args.nchw:
        row["ratio_nchw"] = row["cnnzoo_nchw_img_s"] / tutorial
        nchw = row["cnnzoo_nchw_img_s"]
        line += f"   cnnzoo NCHW {nchw:>7,.0f} img/s ({row['ratio_nchw']:4.1f}x)"
    print(line, flush=True)
    return row


def end_to_end(args: argparse.Namespace, name: str, workdir: Path, root: Path) -> dict:
    runs: dict[str, list[dict]] = {"cnnzoo": [], "tutorial": []}
    for turn in range(args.turns):
        run_dir = workdir / f"e2e-{name}"
        runs["cnnzoo"].append(
            zoo_end_to_end(name, args.data_dir, args.batch_size, args.epochs, run_dir)
        )
        runs["tutorial"].append(tutorial_end_to_end(name, root, args.batch_size, args.epochs))
        print(
            f"  turn {turn + 1}: cnnzoo {runs['cnnzoo'][-1]['seconds']:.1f} s, "
            f"tutorial {runs['tutorial'][-1]['seconds']:.1f} s",
            flush=True,
        )
    row: dict[str, Any] = {"model": name, "batch_size": args.batch_size, "epochs": args.epochs}
    for key, values in runs.items():
        row[f"{key}_seconds"] = statistics.median(run["seconds"] for run in values)
        row[f"{key}_test_acc"] = statistics.median(run["test_acc"] for run in values)
        row[f"{key}_all"] = values
    row["speedup"] = row["tutorial_seconds"] / row["cnnzoo_seconds"]
    print(
        f"{name:<10} {args.epochs} epochs, files to test accuracy: "
        f"tutorial {row['tutorial_seconds']:.1f} s ({row['tutorial_test_acc']:.2%})   "
        f"cnnzoo {row['cnnzoo_seconds']:.1f} s ({row['cnnzoo_test_acc']:.2%})   "
        f"{row['speedup']:.1f}x faster",
        flush=True,
    )
    return row


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not (args.data_dir / f"{FILES[0]}.gz").is_file():
        print(
            f"Fashion-MNIST not found in {args.data_dir}: "
            "sudo apt-get install dataset-fashion-mnist",
            file=sys.stderr,
        )
        return 1
    info = machine_info()
    print(header(info))
    measure = end_to_end if args.epochs else steady_state
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        root = tutorial_root(args.data_dir, workdir / "tutorial")
        results = [measure(args, name, workdir, root) for name in args.models.split(",")]
    if args.out:
        args.out.write_text(json.dumps({"machine": info, "results": results}, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
