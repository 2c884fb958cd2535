"""`cnnzoo train`: fit a zoo model to a dataset, into a resumable run directory."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Any

from cnnzoo.train.config import (
    AMP_DTYPES,
    AUGMENTS,
    DEVICES,
    FREEZE,
    MONITORS,
    OPTIMIZERS,
    RESUME_OVERRIDES,
    SCHEDULES,
    TrainConfig,
)

EPILOG = """examples:
  cnnzoo train --model lenet5 --dataset fashion_mnist --epochs 5 --output-dir runs/lenet
  cnnzoo train --model resnet20 --dataset cifar10 --epochs 160 --optimizer sgd --lr 0.1 \\
      --schedule step --milestones 80,120 --weight-decay 1e-4 --batch-size 128
  cnnzoo train --resume runs/lenet --epochs 10      # continue (and extend) a run
  torchrun --nproc_per_node 2 -m cnnzoo train --model lenet5 --dataset digits
"""


def _key_value(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw  # a bare word is a string
    return key.replace("-", "_"), value


def _int_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a model on a dataset (checkpoints, history, TensorBoard, plots, metrics)",
        description=(
            "Train a zoo model on a dataset. The run directory receives config.json, history.csv, "
            "TensorBoard events, best/last checkpoints (.safetensors weights + .state.pt), "
            "metrics.json and plots. Ctrl-C keeps the last finished epoch; --resume continues."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        # Only the options given on the command line reach TrainConfig, so that --resume can tell
        # an explicit `--epochs 10` from the default.
        argument_default=argparse.SUPPRESS,
    )
    run = p.add_argument_group("run")
    run.add_argument("--model", "-m", help="model name (`cnnzoo models` lists them)")
    run.add_argument(
        "--dataset",
        "-d",
        help="fashion_mnist, mnist, cifar10, cifar100, digits, or imagefolder:PATH",
    )
    run.add_argument("--epochs", type=int, help="epochs to train (default 10)")
    run.add_argument("--batch-size", "-b", type=int, help="per process (default 128)")
    run.add_argument(
        "--output-dir", "-o", metavar="RUN", help="run directory (default runs/MODEL-DATASET-TIME)"
    )
    run.add_argument("--resume", metavar="RUN", help="continue RUN from its last finished epoch")
    run.add_argument("--overwrite", action="store_true", help="replace a run already in RUN")
    run.add_argument("--quiet", "-q", action="store_true", help="plain log lines, no progress bar")

    add_recipe_arguments(p)
    p.set_defaults(run=run_train)


def add_recipe_arguments(p: argparse.ArgumentParser) -> None:
    """Everything about how to train (shared by `train` and `compare`), all defaulting to
    TrainConfig's values."""
    model = p.add_argument_group("model and input")
    model.add_argument(
        "--model-arg",
        dest="model_kwargs",
        metavar="KEY=VALUE",
        type=_key_value,
        action="append",
        help="builder option, e.g. small_input=true (repeatable)",
    )
    model.add_argument(
        "--image-size",
        type=int,
        help="resize batches to this side (default: fit the model to the data)",
    )

    transfer = p.add_argument_group("transfer learning")
    transfer.add_argument(
        "--pretrained",
        metavar="FILE",
        help="start from these weights (a torchvision .pth or cnnzoo .safetensors file); the "
        "classifier is replaced for the dataset's classes and ImageNet statistics normalise inputs",
    )
    transfer.add_argument(
        "--freeze", choices=FREEZE, help="backbone: train only the classifier (default none)"
    )
    transfer.add_argument(
        "--unfreeze-at", type=int, metavar="EPOCH", help="train the whole network from EPOCH on"
    )

    data = p.add_argument_group("data")
    data.add_argument("--data-dir", help="where datasets live")
    data.add_argument("--download", action="store_true", help="download a missing dataset")
    data.add_argument("--val-split", type=float, help="fraction of train held out (default 0.1)")
    data.add_argument("--augment", choices=AUGMENTS, help="train augmentation (default auto)")
    data.add_argument(
        "--random-erasing",
        type=float,
        metavar="P",
        help="erase a random box of each training image with probability P (default 0)",
    )
    data.add_argument("--num-workers", type=int, help="decoding workers for image folders")

    opt = p.add_argument_group("optimisation")
    opt.add_argument("--optimizer", choices=OPTIMIZERS, help="default adamw")
    opt.add_argument("--lr", type=float, help="peak learning rate (default: sgd 0.1, adam(w) 1e-3)")
    opt.add_argument("--momentum", type=float, help="sgd momentum (default 0.9)")
    opt.add_argument("--nesterov", action="store_true", help="Nesterov momentum (sgd)")
    opt.add_argument(
        "--weight-decay", "--wd", type=float, help="default: sgd 5e-4, adam 0, adamw 0.05"
    )
    opt.add_argument(
        "--decay-norm-and-bias",
        action="store_true",
        help="also decay biases and norm scales (off by default)",
    )
    opt.add_argument(
        "--schedule", choices=SCHEDULES, help="lr schedule, per iteration (default cosine)"
    )
    opt.add_argument("--warmup-epochs", type=float, help="linear warmup length (default 0)")
    opt.add_argument("--min-lr-ratio", type=float, help="cosine floor / peak lr (default 0)")
    opt.add_argument("--step-size", type=int, help="step schedule: epochs per decay")
    opt.add_argument("--milestones", type=_int_list, help="step schedule: e.g. 30,60,80")
    opt.add_argument("--gamma", type=float, help="step schedule decay factor (default 0.1)")
    opt.add_argument("--label-smoothing", type=float, help="default 0")
    opt.add_argument("--mixup", type=float, metavar="ALPHA", help="mixup Beta(alpha, alpha)")
    opt.add_argument("--cutmix", type=float, metavar="ALPHA", help="cutmix Beta(alpha, alpha)")
    opt.add_argument("--clip-grad", type=float, metavar="NORM", help="clip the gradient norm")
    opt.add_argument(
        "--ema",
        dest="ema_decay",
        type=float,
        metavar="DECAY",
        help="keep an EMA of the weights (e.g. 0.999); it is evaluated and saved",
    )
    opt.add_argument("--aux-weight", type=float, help="auxiliary-head loss weight (default 0.3)")

    val = p.add_argument_group("validation")
    val.add_argument(
        "--patience",
        type=int,
        help="early stopping after N epochs without "
        "improvement; the best weights are restored (default off)",
    )
    val.add_argument("--monitor", choices=MONITORS, help="default val_loss")
    val.add_argument("--min-delta", type=float, help="smallest change that counts as improvement")
    val.add_argument("--reduce-on-plateau", action="store_true", help="cut the lr on plateaus")
    val.add_argument("--plateau-factor", type=float, help="default 0.1")
    val.add_argument("--plateau-patience", type=int, help="default 2")

    hw = p.add_argument_group("hardware and reproducibility")
    hw.add_argument("--device", choices=DEVICES, help="default auto")
    hw.add_argument(
        "--amp",
        action="store_true",
        help="mixed precision (CUDA: bf16 if supported, else fp16; CPU: bf16)",
    )
    hw.add_argument("--amp-dtype", choices=AMP_DTYPES, help="force the autocast dtype")
    hw.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        help="NHWC memory format (default on: faster for most models on CPU)",
    )
    hw.add_argument("--compile", action="store_true", help="torch.compile the model")
    hw.add_argument("--num-threads", type=int, help="CPU threads (default: all cores)")
    hw.add_argument("--seed", type=int, help="default 0")
    hw.add_argument("--deterministic", action="store_true", help="deterministic algorithms only")

    out = p.add_argument_group("output")
    out.add_argument("--no-tensorboard", dest="tensorboard", action="store_false")
    out.add_argument("--no-plots", dest="plots", action="store_false")
    out.add_argument("--progress-every", type=int, help="steps between progress updates (10)")


def config_from_args(args: argparse.Namespace) -> tuple[TrainConfig, set[str]]:
    """The TrainConfig the command line describes, and the names of the fields it set."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    given = {k: v for k, v in vars(args).items() if k in fields}
    if "model_kwargs" in given:
        given["model_kwargs"] = dict(given["model_kwargs"])
    return TrainConfig(**given), set(given)


def run_train(args: argparse.Namespace) -> int:
    from cnnzoo.train.trainer import Trainer

    config, given = config_from_args(args)
    if config.resume:
        ignored = sorted(given - set(RESUME_OVERRIDES) - {"resume", "output_dir"})
        if ignored:
            flags = ", ".join("--" + name.replace("_", "-") for name in ignored)
            print(
                f"warning: a resumed run keeps its own settings; ignoring {flags}", file=sys.stderr
            )
    trainer = Trainer(config, overrides=given)
    try:
        trainer.fit()
    except KeyboardInterrupt:
        return 130  # the trainer has said what was saved and how to resume
    return 0
