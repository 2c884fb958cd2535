"""Wall time until the Fashion-MNIST test accuracy crosses a threshold, for documented recipes.

The clock starts before the data is loaded and runs through every training epoch; after each
epoch the full 10,000-image test set is scored, and that scoring is timed separately (it is not
part of training, and is reported beside it). The run stops at the first epoch whose test
accuracy reaches the target, or after the recipe's epoch budget.

    python benchmarks/time_to_accuracy.py                      # the lenet5 recipe (91.0 %)
    python benchmarks/time_to_accuracy.py --recipe resnet18    # the 95.5 % recipe (long on CPU)
    python benchmarks/time_to_accuracy.py --recipe lenet5 --out tta.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import header, machine_info  # noqa: E402

from cnnzoo.analysis.metrics import evaluate_model  # noqa: E402
from cnnzoo.data import make_loader  # noqa: E402
from cnnzoo.train import TrainConfig, Trainer  # noqa: E402
from cnnzoo.train.callbacks import Callback  # noqa: E402
from cnnzoo.train.hardware import resolve_device  # noqa: E402
from cnnzoo.train.recipes import load_recipe  # noqa: E402

# Each entry: a shipped recipe (src/cnnzoo/recipes/NAME.yaml), the target, and ("cuda") fields
# that replace the recipe's on a GPU. Changing a recipe changes the published figure: keep
# docs/guide/performance.md in step.
RECIPES: dict[str, dict[str, Any]] = {
    "lenet5": {"recipe": "lenet5_fashion_mnist", "target": 0.910},
    # On a GPU: mixed precision (bf16 where supported). Not yet run on one.
    "resnet18": {"recipe": "resnet18_fashion_mnist", "target": 0.955, "cuda": dict(amp=True)},
}


class ScoreEachEpoch(Callback):
    """Scores the whole test split after every epoch, keeps that time off the clock, and stops
    training at the first epoch that reaches ``target``."""

    def __init__(self, target: float, start: float) -> None:
        super().__init__()
        self.target, self.start = target, start
        self.scoring = 0.0
        self.epochs: list[dict[str, float]] = []
        self.reached: float | None = None

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        trainer = self.trainer
        assert trainer is not None
        self.loader = make_loader(trainer.bundle, "test", batch_size=1024,
                                  **trainer.loader_options)  # fmt: skip

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        assert self.trainer is not None and logs is not None
        paused = time.perf_counter()
        result = evaluate_model(self.trainer.eval_model, self.loader,
                                self.trainer.bundle.num_classes, progress=False)  # fmt: skip
        self.scoring += time.perf_counter() - paused
        elapsed = time.perf_counter() - self.start - self.scoring
        self.epochs.append({"epoch": epoch + 1, "test_top1": result.top1,
                            "train_seconds_total": elapsed,
                            "images_per_s": logs["images_per_s"]})  # fmt: skip
        print(
            f"epoch {epoch + 1:>3}  test {100 * result.top1:6.2f} %  "
            f"{elapsed:7.1f} s (training + data)  {logs['images_per_s']:,.0f} img/s",
            flush=True,
        )
        if result.top1 >= self.target and self.reached is None:
            self.reached = elapsed
            self.trainer.stop_training = True


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="lenet5")
    parser.add_argument("--target", type=float, help="override the recipe's test accuracy target")
    parser.add_argument("--epochs", type=int, help="override the recipe's epoch budget")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=JSON",
        help="override a recipe field, e.g. --set lr=0.005 --set augment='\"none\"'",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda")
    parser.add_argument("--threads", type=int, help="torch threads (default: cnnzoo's choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    return parser.parse_args(argv)


def recipe_fields(name: str, device: str) -> dict[str, Any]:
    """The shipped recipe's fields, with its GPU overrides on CUDA."""
    entry = RECIPES[name]
    fields = load_recipe(entry["recipe"])
    if resolve_device(device).type == "cuda":
        fields.update(entry.get("cuda", {}))
    return fields


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    target = args.target if args.target is not None else RECIPES[args.recipe]["target"]
    fields = recipe_fields(args.recipe, args.device)
    if args.epochs:
        fields["epochs"] = args.epochs
    for item in args.set:
        key, _, value = item.partition("=")
        fields[key] = json.loads(value)
    info = machine_info(measure=False)
    print(header(info))
    print(f"recipe {args.recipe}: {json.dumps(fields)}; target {100 * target:.1f} %")
    with tempfile.TemporaryDirectory() as tmp:
        config = TrainConfig(**{
            **fields, "output_dir": str(Path(tmp) / "run"), "val_split": 0.0, "quiet": True,
            "tensorboard": False, "plots": False, "device": args.device,
            "num_threads": args.threads, "seed": args.seed,
        })  # fmt: skip
        start = time.perf_counter()  # the data is loaded inside the clock
        scorer = ScoreEachEpoch(target, start)
        trainer = Trainer(config, callbacks=[scorer])
        trainer.fit()
    epochs, reached_at = scorer.epochs, scorer.reached
    summary = (
        f"{args.recipe}: {100 * target:.1f} % reached after {len(epochs)} epochs in "
        f"{reached_at:.1f} s wall (data loading and training; test scoring "
        f"{scorer.scoring:.1f} s not counted)"
        if reached_at is not None
        else f"{args.recipe}: {100 * target:.1f} % NOT reached in {len(epochs)} epochs "
        f"(best {100 * max(e['test_top1'] for e in epochs):.2f} %)"
    )
    print(summary)
    if args.out:
        payload = {
            "machine": info,
            "recipe": args.recipe,
            "config": fields,
            "target": target,
            "reached_seconds": reached_at,
            "epochs": epochs,
            "device": str(trainer.device),
            "torch_threads": trainer.threads,
        }
        args.out.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0 if reached_at is not None else 1


if __name__ == "__main__":
    sys.exit(main())
