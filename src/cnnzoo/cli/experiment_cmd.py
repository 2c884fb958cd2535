"""`cnnzoo experiment`: the course notes' claims, reproduced and measured by one command each."""

from __future__ import annotations

import argparse
import sys
from typing import Any

EPILOG = """examples:
  cnnzoo experiment list
  cnnzoo experiment degradation --epochs 20 --depths 20 56 -o runs/degradation
  cnnzoo experiment degradation --resume -o runs/degradation    # after an interruption
  cnnzoo experiment zoo-table --models lenet5 resnet20 mobilenet_v2 --epochs 5 -o runs/zoo
  cnnzoo experiment data-efficiency --sizes 1000 5000 20000 60000 --steps 3752 -o runs/data-eff
"""


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _subset(text: str) -> int | None:
    return None if text == "all" else _int(text)


def register(subparsers: Any) -> None:
    from cnnzoo.experiments import data_efficiency, degradation, zoo_table
    from cnnzoo.experiments.runs import DEFAULT_SUBSET

    p = subparsers.add_parser(
        "experiment",
        help="reproduce a claim of the notes (degradation, zoo-table, data-efficiency); "
        "`experiment list`",
        description=(
            "Run an experiment: its sub-runs are ordinary run directories under OUTPUT (finished "
            "ones are reused; --resume continues unfinished ones), and it writes a markdown "
            "table, a figure and a JSON record naming the command, the machine and the date."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    which = p.add_subparsers(dest="experiment", required=True, metavar="EXPERIMENT")
    which.add_parser("list", help="the experiments, what each reproduces, how long it takes")

    def common(q: argparse.ArgumentParser, default_dir: str, default_epochs: int | None) -> None:
        """The options every experiment takes (--epochs and --subset: those counting epochs
        on one subset; ``default_epochs`` None leaves them out)."""
        q.add_argument(
            "--dataset",
            "-d",
            default="fashion_mnist",
            help="fashion_mnist (default), mnist, cifar10",
        )
        q.add_argument("--data-dir", help="where the dataset lives (default: the usual places)")
        if default_epochs is not None:
            q.add_argument(
                "--epochs",
                type=_int,
                default=default_epochs,
                help=f"epochs per sub-run (default {default_epochs})",
            )
            q.add_argument(
                "--subset",
                type=_subset,
                default=DEFAULT_SUBSET,
                metavar="N|all",
                help="train on a class-balanced N training images, test on at most N "
                f"(default {DEFAULT_SUBSET}; all: the whole dataset)",
            )
        q.add_argument(
            "--resume", action="store_true", help="continue unfinished sub-runs in OUTPUT"
        )
        q.add_argument("--num-threads", type=_int, help="torch threads (default: one per core)")
        q.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
        q.add_argument(
            "--output-dir",
            "-o",
            metavar="OUTPUT",
            default=default_dir,
            help=f"default {default_dir}",
        )

    deg = which.add_parser(
        "degradation",
        help="plain nets against ResNets of the same depths (He et al. 2015, Fig. 1 and 6)",
        description=degradation.__doc__,
    )
    common(deg, "runs/degradation", degradation.DEFAULT_EPOCHS)
    deg.add_argument(
        "--depths",
        type=_int,
        nargs="+",
        default=list(degradation.DEFAULT_DEPTHS),
        metavar="N",
        help="6n+2 depths with both plainN and resnetN in the zoo (default "
        f"{' '.join(map(str, degradation.DEFAULT_DEPTHS))})",
    )
    deg.add_argument(
        "--schedule",
        choices=degradation.SCHEDULES,
        default="step",
        help="step: lr / 10 at 50 %% and 75 %% of the epochs, as the paper (default); cosine",
    )

    zoo = which.add_parser(
        "zoo-table",
        help="parameters, multiply-adds, images/s and test accuracy of zoo models, measured",
        description=zoo_table.__doc__,
    )
    common(zoo, "runs/zoo-table", zoo_table.DEFAULT_EPOCHS)
    zoo.add_argument(
        "--models",
        nargs="+",
        default=list(zoo_table.DEFAULT_MODELS),
        metavar="MODEL",
        help=f"default: {' '.join(zoo_table.DEFAULT_MODELS)}",
    )
    zoo.add_argument(
        "--infer-batch",
        type=_int,
        default=zoo_table.INFER_BATCH,
        help=f"batch for the inference speed (default {zoo_table.INFER_BATCH})",
    )
    eff = which.add_parser(
        "data-efficiency",
        help="test accuracy against training-set size: ResNet-20 vs a small ViT and ConvNeXt "
        "(Dosovitskiy et al. 2021, Fig. 3 and 4)",
        description=data_efficiency.__doc__,
    )
    common(eff, "runs/data-efficiency", None)
    eff.add_argument(
        "--models",
        nargs="+",
        default=list(data_efficiency.DEFAULT_MODELS),
        metavar="MODEL",
        help=f"default: {' '.join(data_efficiency.DEFAULT_MODELS)}",
    )
    eff.add_argument(
        "--sizes",
        type=_int,
        nargs="+",
        default=list(data_efficiency.DEFAULT_SIZES),
        metavar="N",
        help="training-set sizes, class-balanced (default "
        f"{' '.join(map(str, data_efficiency.DEFAULT_SIZES))})",
    )
    eff.add_argument(
        "--steps",
        type=_int,
        default=data_efficiency.DEFAULT_STEPS,
        help="optimizer steps per sub-run, the same for every size (default "
        f"{data_efficiency.DEFAULT_STEPS}: 8 epochs of 60,000 images at batch 128)",
    )
    p.set_defaults(run=run_experiment)


def run_experiment(args: argparse.Namespace) -> int:
    from cnnzoo.experiments import (
        list_experiments,
        run_data_efficiency,
        run_degradation,
        run_zoo_table,
    )
    from cnnzoo.experiments.runs import CALIBRATION

    if args.experiment == "list":
        for experiment in list_experiments():
            print(f"{experiment.name}: {experiment.title}")
            print(f"  reproduces: {experiment.reproduces}")
            print(f"  time here:  {experiment.duration()}")
        print(f"note: {CALIBRATION}")
        return 0
    options: dict[str, Any] = dict(
        dataset=args.dataset,
        data_dir=args.data_dir,
        resume=args.resume,
        num_threads=args.num_threads,
        quiet=args.quiet,
    )
    if args.experiment != "data-efficiency":
        options.update(epochs=args.epochs, subset=args.subset)
    try:
        if args.experiment == "data-efficiency":
            run_data_efficiency(
                args.output_dir, models=args.models, sizes=args.sizes, steps=args.steps, **options
            )
        elif args.experiment == "degradation":
            run_degradation(args.output_dir, depths=args.depths, schedule=args.schedule, **options)
        else:
            progress = not args.quiet and sys.stderr.isatty()
            run_zoo_table(
                args.output_dir,
                models=args.models,
                infer_batch=args.infer_batch,
                progress=progress,
                **options,
            )
    except KeyboardInterrupt:
        # Finished epochs are saved in their sub-runs; say how to continue the whole experiment.
        print(
            f"cnnzoo experiment: the finished epochs are kept in {args.output_dir}; to continue, "
            "run the same command with --resume",
            file=sys.stderr,
        )
        raise
    return 0
