"""`cnnzoo export`: a model (fresh by name, or a trained run) to ONNX, TorchScript or .pt2."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from cnnzoo.errors import UsageError
from cnnzoo.export import FORMATS, export_model, parse_input_size

EXAMPLE_BATCH = 2  # a batch of 1 would be specialised by torch.export: no dynamic batch
SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt", "exported-program": ".pt2"}


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a model or a trained run to ONNX, TorchScript or an ExportedProgram",
        description=(
            "Export a freshly initialised model (by name) or a trained run (its directory or a "
            "checkpoint inside it), then load the file back and compare its outputs with the "
            "eager model's on a random batch; a mismatch is an error (exit 1)."
        ),
    )
    parser.add_argument("source", metavar="NAME_OR_RUN", help="model name, or run dir/checkpoint")
    parser.add_argument("output", metavar="OUT", help=f"file to write ({_suffix_help()})")
    parser.add_argument("--format", required=True, choices=FORMATS, help="file format")
    parser.add_argument(
        "--input-size",
        metavar="CxHxW",
        help="example input size, e.g. 3x224x224 (default: the model's or the run's)",
    )
    parser.add_argument(
        "--num-classes", type=int, help="classifier width for a model given by name (default 1000)"
    )
    parser.add_argument(
        "--force", action="store_true", help="replace OUT if it exists (never the model's source)"
    )
    parser.set_defaults(run=run_export)


def _suffix_help() -> str:
    return ", ".join(f"{suffix} for {name}" for name, suffix in SUFFIXES.items())


def _is_run(source: str) -> bool:
    path = Path(source).expanduser()
    return path.exists() or any(sep in source for sep in ("/", "\\")) or path.suffix != ""


def run_export(args: argparse.Namespace) -> int:
    from cnnzoo.registry import create_model

    if args.format == "exported-program" and Path(args.output).suffix != ".pt2":
        raise UsageError(f"torch.export.save needs a .pt2 file name, got {args.output!r}")
    if args.num_classes is not None and args.num_classes < 1:
        raise UsageError(f"--num-classes must be a positive integer, got {args.num_classes}")
    protect: list[str | Path] = []
    if _is_run(args.source):
        from cnnzoo.analysis.predict import input_size_of, load_run

        if args.num_classes is not None:
            raise UsageError("--num-classes is for a model given by name; a run has its own")
        model, config = load_run(args.source)
        run_dir = Path(config["run_dir"])
        protect = [config["checkpoint"], *run_dir.glob("*.safetensors*"), *run_dir.glob("*.pt")]
        protect.append(run_dir / "config.json")
        channels = int(config["in_chans"])
        height, width = input_size_of(model, config)
        size = (channels, height, width)
        if args.input_size:
            size = parse_input_size(args.input_size, channels)
            if size[0] != channels:
                raise UsageError(
                    f"the run's model takes {channels}-channel images, --input-size says {size[0]}"
                )
    else:
        size = parse_input_size(args.input_size, 3) if args.input_size else None
        # Without --input-size the builder's own channel count holds (1 for LeNet-5).
        chans = {"in_chans": size[0]} if size else {}
        model = create_model(args.source, num_classes=args.num_classes or 1000, **chans)
        if size is None:
            size = tuple(int(v) for v in model.default_cfg["input_size"])
    model.eval()
    generator = torch.Generator().manual_seed(0)
    example = torch.randn(EXAMPLE_BATCH, *size, generator=generator)
    if hasattr(model, "check_input"):  # a size the network cannot take: one clear line
        model.check_input(example)
    result = export_model(
        model, args.output, args.format, example, overwrite=args.force, protect=protect
    )
    print(result.summary())
    return 0
