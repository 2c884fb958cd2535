"""Training images/s on Fashion-MNIST: cnnzoo's training loop against the tutorial pipeline.

The tutorial pipeline is what the course notes do: torchvision's ``FashionMNIST`` dataset with
``ToTensor`` + ``Normalize`` through a ``DataLoader`` (batch 128, shuffled, no workers), the same
model and the same optimizer (Adam, lr 1e-3), one ``optimizer.step()`` per batch. cnnzoo's side is
``Trainer.train_one_epoch`` on the same data, model and optimizer. Both run in this process,
interleaved (cnnzoo, tutorial, cnnzoo, …) over the same number of batches per turn; the table
shows medians and the ratio cnnzoo / tutorial.

    python benchmarks/train.py                       # lenet5 and resnet20, 3 turns of 60 batches
    python benchmarks/train.py --models lenet5 --steps 200 --turns 5 --out train.json
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
        "--channels-last",
        action="store_true",
        help="also time cnnzoo with --channels-last (a third interleaved variant)",
    )
    parser.add_argument("--data-dir", type=Path, default=DEBIAN_DIR, help="Fashion-MNIST .gz")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    return parser.parse_args(argv)


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

        transform = transforms.Compose(
            [transforms.ToTensor(), transforms.Normalize((0.2860,), (0.3530,))]
        )
        dataset = datasets.FashionMNIST(str(root), train=True, download=False, transform=transform)
        self.loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True)
        torch.manual_seed(0)
        self.model = cnnzoo.create_model(model_name, num_classes=10, in_chans=1)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.criterion = nn.CrossEntropyLoss()
        self.batches = iter(self.loader)

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
            self.optimizer.zero_grad()
            loss = self.criterion(self.model(x), y)
            loss.backward()
            self.optimizer.step()
            seen += y.shape[0]
        return seen / (time.perf_counter() - start)


class ZooPipeline:
    """cnnzoo's Trainer on the same model, optimizer and (unaugmented) data."""

    def __init__(
        self,
        model_name: str,
        data_dir: Path,
        batch_size: int,
        workdir: Path,
        channels_last: bool = False,
    ) -> None:
        config = TrainConfig(
            model=model_name,
            channels_last=channels_last,
            dataset="fashion_mnist",
            data_dir=str(data_dir),
            output_dir=str(workdir / f"run-{model_name}-{int(channels_last)}"),
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
        )
        self.trainer = Trainer(config)
        self.trainer.log = lambda *args, **kwargs: None  # type: ignore[method-assign]
        self.trainer.setup()
        self.epoch = 0

    def run(self, steps: int) -> float:
        stats = self.trainer.train_one_epoch(self.epoch, max_steps=steps)
        self.epoch += 1
        return stats["images_per_s"]


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
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        root = tutorial_root(args.data_dir, workdir / "tutorial")
        for name in args.models.split(","):
            zoo = ZooPipeline(name, args.data_dir, args.batch_size, workdir)
            tutorial = TutorialPipeline(name, root, args.batch_size)
            nhwc = (
                ZooPipeline(name, args.data_dir, args.batch_size, workdir, channels_last=True)
                if args.channels_last
                else None
            )
            for pipeline in (zoo, tutorial, nhwc):  # warm-up: allocator, kernels, first batches
                if pipeline is not None:
                    pipeline.run(5)
            zoo_speeds, tutorial_speeds, nhwc_speeds = [], [], []
            for _ in range(args.turns):
                zoo_speeds.append(zoo.run(args.steps))
                tutorial_speeds.append(tutorial.run(args.steps))
                if nhwc is not None:
                    nhwc_speeds.append(nhwc.run(args.steps))
            row = {
                "model": name,
                "batch_size": args.batch_size,
                "steps_per_turn": args.steps,
                "turns": args.turns,
                "cnnzoo_img_s": statistics.median(zoo_speeds),
                "tutorial_img_s": statistics.median(tutorial_speeds),
                "cnnzoo_all": zoo_speeds,
                "tutorial_all": tutorial_speeds,
            }
            row["ratio"] = row["cnnzoo_img_s"] / row["tutorial_img_s"]
            line = (
                f"{name:<10} tutorial {row['tutorial_img_s']:>7,.0f} img/s   cnnzoo "
                f"{row['cnnzoo_img_s']:>7,.0f} img/s ({row['ratio']:4.1f}x)"
            )
            if nhwc_speeds:
                row["cnnzoo_channels_last_img_s"] = statistics.median(nhwc_speeds)
                row["channels_last_all"] = nhwc_speeds
                row["ratio_channels_last"] = (
                    row["cnnzoo_channels_last_img_s"] / row["tutorial_img_s"]
                )
                line += (
                    f"   cnnzoo --channels-last {row['cnnzoo_channels_last_img_s']:>7,.0f} img/s "
                    f"({row['ratio_channels_last']:4.1f}x)"
                )
            results.append(row)
            print(line, flush=True)
    if args.out:
        args.out.write_text(json.dumps({"machine": info, "results": results}, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
