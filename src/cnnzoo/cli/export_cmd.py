"""`cnnzoo export`: any model (a run, a checkpoint, a name with or without --weights) to ONNX,
TorchScript or .pt2."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from cnnzoo.cli.options import add_source_arguments, parse_input_size
from cnnzoo.errors import UsageError
from cnnzoo.export import FORMATS, export_model
from cnnzoo.inference import load_model, onnx_metadata
from cnnzoo.registry import list_models

EXAMPLE_BATCH = 2  # a batch of 1 would be specialised by torch.export: no dynamic batch
SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt", "exported-program": ".pt2"}


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a model or a trained run to ONNX, TorchScript or an ExportedProgram",
        description=(
            "Export a trained run (its directory or a checkpoint inside it), a weights file, or a "
            "model by name (with --weights, or freshly initialised), then load the file back and "
            "compare its outputs with the eager model's on a random batch; a mismatch is an "
            "error (exit 1) and nothing is written."
        ),
    )
    add_source_arguments(parser)
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


def run_export(args: argparse.Namespace) -> int:
    if args.format == "exported-program" and Path(args.output).suffix != ".pt2":
        raise UsageError(f"torch.export.save needs a .pt2 file name, got {args.output!r}")
    if args.num_classes is not None and args.num_classes < 1:
        raise UsageError(f"--num-classes must be a positive integer, got {args.num_classes}")
    size = parse_input_size(args.input_size, 3) if args.input_size else None
    # A run or a weights file has its own classes and channels; a bare name takes the options.
    by_name = args.source in list_models()
    if not by_name and args.num_classes is not None:
        raise UsageError("--num-classes is for a model given by name; a run has its own")
    options: dict[str, Any] = {}
    if by_name and size is not None:
        # A Vision Transformer is built for the asked side (named weights are interpolated).
        from cnnzoo.train.planning import side_options

        options = side_options(args.source, size[0], size[1], size[2], options)
    loaded = load_model(
        args.source,
        args.weights,
        num_classes=args.num_classes if by_name else None,
        in_chans=size[0] if size and by_name and args.weights is None else None,
        need_module="export",
        model_kwargs=options,
    )
    if size is None:
        size = (loaded.channels, *loaded.input_size)
    elif size[0] != loaded.channels:
        raise UsageError(
            f"{loaded.description} takes {loaded.channels}-channel images, --input-size says "
            f"{size[0]}"
        )
    model = loaded.model.eval()
    generator = torch.Generator().manual_seed(0)
    example = torch.randn(EXAMPLE_BATCH, *size, generator=generator)
    if hasattr(model, "check_input"):  # a size the network cannot take: one clear line
        model.check_input(example)
    # An ONNX file keeps what inference needs, so that it is a source for predict and evaluate.
    metadata = (
        onnx_metadata(loaded, source=args.source, weights=args.weights)
        if args.format == "onnx"
        else None
    )
    result = export_model(
        model,
        args.output,
        args.format,
        example,
        overwrite=args.force,
        protect=loaded.files,
        metadata=metadata,
    )
    print(result.summary())
    return 0
