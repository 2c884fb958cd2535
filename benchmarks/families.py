"""Does every model family learn with its default recipe? Train one model per family briefly.

Each model trains with no recipe options at all (the defaults table decides: optimizer, lr,
schedule, augmentation), as a new user's first run would, on ``digits`` (all 1,437 training
images) or on a class-balanced subset of Fashion-MNIST, for ``--epochs`` epochs. It prints
training and validation accuracy per family; a family whose validation accuracy stays near chance
(below ``--floor``) fails the run (exit 1). Validation accuracy far below training accuracy means
that the network in eval mode disagrees with itself in training mode.

    python benchmarks/families.py                                   # digits, 2 epochs
    python benchmarks/families.py --dataset fashion_mnist --train 5000 --epochs 1
    python benchmarks/families.py --models googlenet,vgg16 --out families.json
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import header, machine_info  # noqa: E402

from cnnzoo.data import load_dataset  # noqa: E402
from cnnzoo.data.arrays import bundle_from_arrays  # noqa: E402
from cnnzoo.data.datasets import DataBundle  # noqa: E402
from cnnzoo.train import TrainConfig, Trainer  # noqa: E402

# The smallest model of each family (and VGG-16 without batch norm, which needs its own recipe).
FAMILIES = {
    "lenet": "lenet5",
    "alexnet": "alexnet",
    "vgg": "vgg11",
    "vgg (16, no BN)": "vgg16",
    "vgg (BN)": "vgg11_bn",
    "inception": "googlenet",
    "inception (v3)": "inception_v3",
    "resnet": "resnet18",
    "resnet_cifar": "resnet20",
    "plain (cifar)": "plain20",
    "preact_resnet": "preact_resnet18",
    "se_resnet": "se_resnet18",
    "resnext": "resnext50_32x4d",
    "wide_resnet": "wide_resnet50_2",
    "efficientnet": "efficientnet_b0",
    "mobilenet": "mobilenet_v2",
    "mobilenet (v3)": "mobilenet_v3_small",
    "shufflenet": "shufflenet_v2_x0_5",
    "vit": "vit_cifar_4",
    "convnext": "convnext_cifar",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=("digits", "fashion_mnist"), default="digits")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument(
        "--train", type=int, default=5000, help="fashion_mnist: training images (default 5000)"
    )
    parser.add_argument("--models", help="comma-separated zoo names (default: one per family)")
    parser.add_argument(
        "--floor", type=float, default=0.3, help="validation accuracy a family must reach"
    )
    parser.add_argument("--threads", type=int, help="torch threads (default: cnnzoo's choice)")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.train < 100:
        parser.error("--epochs must be >= 1 and --train >= 100")
    return args


def fashion_subset(size: int) -> DataBundle:
    """The first ``size`` Fashion-MNIST training images (classes are balanced there), a
    stratified 10 % of them held out for validation, no test split; named fashion_mnist, so
    that the defaults for Fashion-MNIST apply."""
    full = load_dataset("fashion_mnist", val_split=0)
    train = full.train
    return bundle_from_arrays(train.images[:size], train.labels[:size],  # type: ignore[union-attr]
                              validation_split=0.1, name="fashion_mnist",
                              class_names=full.class_names)  # fmt: skip


def train_one(model: str, dataset: str, data: DataBundle | None, args: argparse.Namespace,
              workdir: Path) -> dict[str, Any]:  # fmt: skip
    config = TrainConfig(
        model=model, dataset=dataset, epochs=args.epochs, output_dir=str(workdir / model),
        quiet=True, tensorboard=False, plots=False, num_threads=args.threads,
    )  # fmt: skip
    start = time.perf_counter()
    trainer = Trainer(config, data=data)
    with contextlib.redirect_stdout(io.StringIO()):  # the runs' own lines; the table is enough
        history = trainer.fit()
    last = trainer.history[-1]
    return {
        "model": model,
        "recipe": {k: getattr(trainer.config, k) for k in sorted(trainer.defaults)},
        "input": trainer.input_note,
        "train_acc": last["train_acc"],
        "val_acc": last["val_acc"],
        "test_top1": history.metrics.get("test_top1"),
        "seconds": time.perf_counter() - start,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    info = machine_info(measure=False)
    print(header(info))
    models = args.models.split(",") if args.models else list(FAMILIES.values())
    data = fashion_subset(args.train) if args.dataset == "fashion_mnist" else None
    rows, failed = [], []
    print(f"{args.dataset}, {args.epochs} epochs, default recipes; failing below "
          f"{100 * args.floor:.0f} % validation accuracy", flush=True)  # fmt: skip
    print(f"{'model':<20} {'train %':>8} {'val %':>7} {'test %':>7} {'s':>6}  recipe", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for model in models:
            row = train_one(model, args.dataset, data, args, Path(tmp))
            rows.append(row)
            ok = row["val_acc"] >= args.floor
            failed += [] if ok else [model]
            recipe = f"{row['recipe'].get('optimizer')} lr {row['recipe'].get('lr'):g}"
            test = f"{100 * row['test_top1']:7.2f}" if row["test_top1"] is not None else "      -"
            print(
                f"{model:<20} {100 * row['train_acc']:8.2f} {100 * row['val_acc']:7.2f} "
                f"{test} {row['seconds']:6.1f}  {recipe}"
                + ("" if ok else "  <- near chance"),
                flush=True,
            )
    print("every family learns" if not failed else f"near chance: {', '.join(failed)}")
    if args.out:
        payload = {"machine": info, "dataset": args.dataset, "epochs": args.epochs, "rows": rows}
        args.out.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
