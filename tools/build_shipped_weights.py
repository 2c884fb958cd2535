"""Train, score and package the weights cnnzoo ships for models torchvision does not have.

    python tools/build_shipped_weights.py resnet20 fashion_mnist        # train, then package
    python tools/build_shipped_weights.py resnet20 fashion_mnist --threads 1
    python tools/build_shipped_weights.py resnet20 fashion_mnist --from-run runs/x  # package only
    python tools/build_shipped_weights.py resnet20 fashion_mnist --run-dir runs/x --resume

Each recipe below is a set of :class:`cnnzoo.TrainConfig` fields, trained by cnnzoo's own
trainer on the whole training split (no validation hold-out; the test split is never seen during
training). The final weights are scored on the official test split with
:func:`cnnzoo.pretrained.score_weights` (the very code tests/test_shipped_weights.py runs), written
as ``src/cnnzoo/weights_data/MODEL-DATASET.safetensors``, and recorded in ``manifest.json`` beside
them: recipe, command, test accuracy, sha256, class names, normalisation, input size and the
trainer's training time. The last epoch's weights are shipped (the EMA's where the recipe has one).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from cnnzoo.train import TrainConfig, Trainer

# He et al.'s CIFAR nets: SGD 0.1 as in the paper, one-cycle to reach it in fewer epochs.
CIFAR_NETS: dict[str, Any] = dict(
    epochs=30,
    batch_size=128,
    optimizer="sgd",
    lr=0.1,
    nesterov=True,
    weight_decay=5e-4,
    schedule="onecycle",
    augment="crop_flip",
    label_smoothing=0.1,
)

# (model, dataset) -> TrainConfig fields. Changing a recipe means rebuilding its file (the test
# re-scores the file, not the recipe) and updating the weights table in docs/guide/models.md.
RECIPES: dict[tuple[str, str], dict[str, Any]] = {
    ("lenet5", "fashion_mnist"): dict(
        epochs=30,
        batch_size=128,
        optimizer="adamw",
        lr=3e-3,
        weight_decay=0.05,
        schedule="onecycle",
        augment="flip",
        label_smoothing=0.1,
        ema_decay=0.998,
    ),
    ("lenet_caffe", "fashion_mnist"): dict(
        epochs=30,
        batch_size=128,
        optimizer="adamw",
        lr=2e-3,
        weight_decay=0.05,
        schedule="onecycle",
        augment="crop_flip",
        label_smoothing=0.1,
        ema_decay=0.998,
    ),
    ("resnet20", "fashion_mnist"): CIFAR_NETS,
    # The plain net gets its ResNet twin's recipe, as in the degradation experiment.
    ("plain20", "fashion_mnist"): CIFAR_NETS,
    ("lenet5", "digits"): dict(
        epochs=40,
        batch_size=32,
        optimizer="adamw",
        lr=3e-3,
        weight_decay=0.05,
        schedule="onecycle",
        augment="crop",
    ),
}


DATASET_TITLES = {"fashion_mnist": "Fashion-MNIST", "digits": "digits"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("dataset")
    parser.add_argument("--threads", type=int, help="torch threads for training (default: all)")
    parser.add_argument("--run-dir", type=Path, help="keep the training run here (default: temp)")
    parser.add_argument(
        "--from-run", type=Path, help="package the last weights of this finished run instead"
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue the interrupted run in --run-dir"
    )
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def train(model: str, dataset: str, recipe: dict[str, Any], args: argparse.Namespace) -> Path:
    if args.resume:
        if args.run_dir is None:
            raise SystemExit("--resume needs --run-dir")
        Trainer(TrainConfig(resume=str(args.run_dir), num_threads=args.threads)).fit()
        return args.run_dir
    run_dir = args.run_dir or Path(tempfile.mkdtemp(prefix=f"cnnzoo-{model}-")) / "run"
    config = TrainConfig(
        model=model,
        dataset=dataset,
        output_dir=str(run_dir),
        val_split=0.0,
        seed=args.seed,
        num_threads=args.threads,
        plots=False,
        **recipe,
    )
    Trainer(config).fit()
    return run_dir


def package(model: str, dataset: str, run_dir: Path) -> dict:
    from safetensors.torch import save_file

    from cnnzoo import pretrained
    from cnnzoo.checkpoint import load_checkpoint
    from cnnzoo.pretrained import SHIPPED_DIR, SHIPPED_MANIFEST, read_manifest, shipped_file_name
    from cnnzoo.registry import create_model

    config = json.loads((run_dir / "config.json").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    data = config["data"]
    checkpoint = load_checkpoint(run_dir, "last")
    net = create_model(
        model,
        num_classes=data["num_classes"],
        in_chans=data["in_chans"],
        **config.get("model_kwargs", {}),
    )
    net.load_state_dict(checkpoint.weights)
    target = SHIPPED_DIR / shipped_file_name(model, dataset)
    tensors = {k: v.detach().float().contiguous() for k, v in net.state_dict().items()}
    # One metadata key: safetensors writes several in a random order, and the same weights
    # should give the same bytes (and sha256) on every rebuild.
    save_file(tensors, str(target), metadata={"model": model})
    target.chmod(0o644)  # package data: readable by everyone once installed
    digest = hashlib.sha256(target.read_bytes()).hexdigest()
    entry = {
        "model": model,
        "name": dataset,
        "dataset": DATASET_TITLES[dataset],
        "file_name": target.name,
        "sha256": digest,
        "file_size": target.stat().st_size,
        "categories": data["class_names"],
        "num_classes": data["num_classes"],
        "in_chans": data["in_chans"],
        "input_size": data["image_size"],
        "mean": [round(v, 6) for v in data["mean"]],
        "std": [round(v, 6) for v in data["std"]],
        "model_kwargs": config.get("model_kwargs", {}),
        "recipe": {k: config[k] for k in RECIPES[(model, dataset)]} | {"val_split": 0.0},
        "seed": config["seed"],
        "command": f"python tools/build_shipped_weights.py {model} {dataset}",
        "trainer_test_acc": round(100 * metrics["test_top1"], 2),
        # The trainer's own clock: the sum of its epochs (data, forward, backward, step).
        "train_seconds": round(metrics["train_seconds"], 1),
        "torch": torch.__version__,
        "threads": config.get("num_threads"),
    }
    manifest = read_manifest()
    manifest[f"{model}.{dataset}"] = entry
    write_manifest(SHIPPED_MANIFEST, manifest)
    # Scored as users will use it: through the manifest's (rounded) normalisation and transform.
    pretrained._builtin_specs.cache_clear()
    entry["metrics"] = {
        "test_acc": pretrained.score_weights(pretrained.get_weight_spec(model, dataset))
    }
    write_manifest(SHIPPED_MANIFEST, manifest)
    return entry


def write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    path.write_text(json.dumps(dict(sorted(manifest.items())), indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    key = (args.model, args.dataset)
    if key not in RECIPES:
        known = ", ".join(f"{m} {d}" for m, d in RECIPES)
        print(f"no recipe for {args.model} {args.dataset}; recipes: {known}", file=sys.stderr)
        return 2
    run_dir = args.from_run or train(args.model, args.dataset, RECIPES[key], args)
    entry = package(args.model, args.dataset, run_dir)
    print(
        f"{entry['file_name']}: test accuracy {entry['metrics']['test_acc']:.2f} % "
        f"(trainer {entry['trainer_test_acc']:.2f} %), {entry['file_size']:,} bytes, "
        f"sha256 {entry['sha256'][:16]}..."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
