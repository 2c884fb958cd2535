"""`cnnzoo quantize`: any source to an int8 ONNX file, calibrated on the source's own training
data and scored beside float32; and the int8 half of `cnnzoo evaluate --int8`."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cnnzoo.cli.options import add_source_arguments, positive_int
from cnnzoo.errors import CnnzooError, UsageError
from cnnzoo.inference import InferenceModel, load_model

# How many layers of a sensitivity analysis the terminal shows (the file's metadata has all).
SHOWN_LAYERS = 12


def _points(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected accuracy points, got {text!r}") from None
    if not 0 <= value < 100 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected points in [0, 100), got {value}")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction, got {text!r}") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1], got {value}")
    return value


def add_int8_arguments(parser: argparse.ArgumentParser) -> None:
    """The quantization options `quantize` and `evaluate --int8` share."""
    from cnnzoo.quantize import BACKENDS, DEFAULT_MAX_DROP, DEFAULT_SAMPLES, METHODS, QUANTIZERS

    group = parser.add_argument_group("int8 quantization")
    group.add_argument(
        "--calibration",
        metavar="DATA",
        help="images to calibrate on: a dataset name, imagefolder:DIR or a folder of images "
        "(default: the source's own training data)",
    )
    group.add_argument(
        "--samples",
        type=positive_int,
        default=DEFAULT_SAMPLES,
        help=f"calibration images, class-balanced (default {DEFAULT_SAMPLES})",
    )
    group.add_argument(
        "--method",
        choices=METHODS,
        default="minmax",
        help="how activation ranges are set (ONNX Runtime's calibrators; default minmax)",
    )
    group.add_argument(
        "--sensitivity",
        action="store_true",
        help="quantize one layer at a time, report each one's accuracy cost and keep the "
        "costliest in float32 until the loss is within --max-drop",
    )
    group.add_argument(
        "--max-drop",
        type=_points,
        default=DEFAULT_MAX_DROP,
        help=f"with --sensitivity: accuracy points int8 may lose (default {DEFAULT_MAX_DROP})",
    )
    group.add_argument(
        "--val-samples",
        type=positive_int,
        default=2000,
        help="labelled validation images the int8 accuracy is measured on before the test "
        "split (and each layer's cost; default 2000)",
    )
    group.add_argument(
        "--backend",
        choices=BACKENDS,
        default="auto",
        help="runtime for the int8 graph (default: the fastest installed one that agrees "
        "with float32)",
    )
    group.add_argument(
        "--quantizer",
        choices=("auto", *QUANTIZERS),
        default="auto",
        help="what writes the int8 graph: ONNX Runtime's tools, NNCF (for OpenVINO, with the "
        "openvino extra), or auto: both where OpenVINO is installed, the faster kept",
    )
    group.add_argument(
        "--min-agreement",
        type=_fraction,
        default=0.9,
        help="fraction of images whose int8 top-1 answer must be float32's (default 0.9)",
    )


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "quantize",
        help="int8 ONNX file of a model or run, calibrated on its training data",
        description=(
            "Static post-training int8 quantization of a run, a checkpoint, MODEL --weights or "
            "a float32 .onnx that cnnzoo wrote: BatchNorms folded, per-channel int8 weights, "
            "activation ranges calibrated on the source's own training data through its own "
            "preprocessing (ONNX Runtime's tools), checked against float32 and scored beside it "
            "on the test split. The file carries what predict, evaluate and serve need."
        ),
    )
    add_source_arguments(parser)
    parser.add_argument("-o", "--output", required=True, metavar="OUT.onnx", help="file to write")
    add_int8_arguments(parser)
    parser.add_argument("--data-dir", help="where the calibration dataset lives")
    parser.add_argument(
        "--no-test",
        dest="test",
        action="store_false",
        help="do not score float32 and int8 on the test split",
    )
    parser.add_argument(
        "--force", action="store_true", help="replace OUT if it exists (never the source)"
    )
    parser.set_defaults(run=run_quantize)


def _check_output(out: Path, loaded: InferenceModel, force: bool) -> None:
    """Everything that would stop the file being written, before the work starts."""
    from cnnzoo.export import check_output_path

    if out.suffix.lower() != ".onnx":
        raise UsageError(f"-o {out}: the file name must end in .onnx (it is an ONNX model)")
    check_output_path(out, overwrite=force, protect=loaded.files)
    ancestor = out.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UsageError(f"-o {out}: {ancestor} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise CnnzooError(f"-o {out}: cannot write into {ancestor} (permission denied)")


def quantize_source(
    loaded: InferenceModel, args: argparse.Namespace, *, progress: bool
) -> tuple[Any, Any]:
    """(QuantizedModel, CalibrationData) for ``loaded`` with the int8 options in ``args``."""
    from cnnzoo.calibration import calibration_data
    from cnnzoo.quantize import quantize

    if loaded.config.get("precision") == "int8":
        raise UsageError(f"{loaded.description} is int8 already; quantize its float32 source")
    calibration = calibration_data(
        loaded,
        args.calibration,
        samples=args.samples,
        validation_samples=args.val_samples,
        data_dir=getattr(args, "data_dir", None),
    )
    if args.sensitivity and calibration.validation is None:
        raise UsageError(
            "--sensitivity measures accuracy on labelled images of the source's own dataset; "
            f"{calibration.spec} gives none (calibrate on the source's dataset)"
        )
    print(f"calibrating on {calibration.description} ({args.method})", file=sys.stderr)
    data = calibration.images
    quantized = quantize(
        loaded.files[0] if loaded.is_graph else loaded.model,
        data if calibration.labels is None else (data, calibration.labels),
        samples=args.samples,
        method=args.method,
        backend=args.backend,
        quantizer=args.quantizer,
        validation=calibration.validation,
        sensitivity=args.sensitivity,
        max_drop=args.max_drop,
        min_agreement=args.min_agreement,
        progress=progress,
    )
    return quantized, calibration


def compare_on_split(
    loaded: InferenceModel,
    int8: torch.nn.Module,
    *,
    dataset: str | None = None,
    data_dir: str | None = None,
    split: str = "test",
    batch_size: int = 256,
    progress: bool = False,
) -> tuple[Any, dict[str, Any]]:
    """float32 (``loaded.model``) and int8 on the same batches of ``split``: a Comparison and
    the plain-number record an ONNX file and eval_SPLIT_int8.json keep."""
    from cnnzoo.analysis.metrics import compare_models
    from cnnzoo.cli.eval_cmd import split_loader

    loader, spec, class_names = split_loader(
        loaded, dataset=dataset, data_dir=data_dir, split=split, batch_size=batch_size,
        device="cpu",
    )  # fmt: skip
    comparison = compare_models(
        {"fp32": loaded.model, "int8": int8},
        loader,
        loaded.num_classes,
        progress=progress,
        class_names=class_names,
    )
    fp32, int8_result = comparison.results["fp32"], comparison.results["int8"]
    record = {
        "dataset": spec,
        "split": split,
        "n": fp32.n,
        "fp32_top1": round(100 * fp32.top1, 2),
        "int8_top1": round(100 * int8_result.top1, 2),
        "fp32_top5": round(100 * fp32.top5, 2),
        "int8_top5": round(100 * int8_result.top5, 2),
        "agreement": round(100 * comparison.agreement["int8"], 2),
        "max_logit_diff": comparison.max_abs_diff["int8"],
        "fp32_images_per_s": comparison.images_per_second("fp32"),
        "int8_images_per_s": comparison.images_per_second("int8"),
    }
    return comparison, record


def side_by_side_table(record: dict[str, Any], fp32_name: str = "float32") -> Table:
    table = Table(title=f"{record['dataset']} {record['split']} split, {record['n']} images")
    table.add_column("")
    table.add_column(fp32_name, justify="right")
    table.add_column("int8", justify="right")
    table.add_row("top-1", f"{record['fp32_top1']:.2f}%", f"{record['int8_top1']:.2f}%")
    table.add_row("top-5", f"{record['fp32_top5']:.2f}%", f"{record['int8_top5']:.2f}%")
    table.add_row("top-1 change", "", f"{record['int8_top1'] - record['fp32_top1']:+.2f} points")
    table.add_row("top-1 agreement with float32", "", f"{record['agreement']:.2f}%")
    table.add_row("largest logit difference", "", f"{record['max_logit_diff']:.3g}")
    table.add_row(
        "images/s",
        f"{record['fp32_images_per_s']:.0f}",
        f"{record['int8_images_per_s']:.0f}",
    )
    return table


def sensitivity_table(report: Any) -> Table:
    kept = set(report.fp32_layers)
    shown = report.sensitivity[:SHOWN_LAYERS]
    more = len(report.sensitivity) - len(shown)
    table = Table(
        title=f"each layer quantized alone (float32 top-1 {report.fp32_top1:.2f}%)",
        caption=f"{more} more layers cost less; all are in the file's metadata" if more else None,
    )
    table.add_column("layer")
    table.add_column("ops")
    table.add_column("top-1", justify="right")
    table.add_column("cost (points)", justify="right")
    table.add_column("")
    for cost in shown:
        table.add_row(
            escape(cost.layer),
            ", ".join(sorted(set(cost.ops))),
            f"{cost.top1:.2f}%",
            f"{cost.cost:+.2f}",
            "kept in float32" if cost.layer in kept else "",
        )
    return table


def run_quantize(args: argparse.Namespace) -> int:
    from cnnzoo.cli.eval_cmd import load_source
    from cnnzoo.inference import onnx_metadata

    out = Path(args.output).expanduser()
    loaded = load_source(args, need_weights=True)
    _check_output(out, loaded, args.force)
    progress = sys.stderr.isatty()
    quantized, calibration = quantize_source(loaded, args, progress=progress)
    console = Console()
    console.print(str(quantized.report), markup=False)
    if quantized.report.sensitivity:
        console.print(sensitivity_table(quantized.report))
    metadata = onnx_metadata(loaded, precision="int8", source=args.source, weights=args.weights)
    metadata["calibration"] = {
        "data": calibration.spec,
        "samples": len(calibration.images),
        "method": args.method,
    }
    if args.test and loaded.dataset:
        _, record = compare_on_split(loaded, quantized, data_dir=args.data_dir, progress=progress)
        metadata["accuracy"] = record
        console.print(side_by_side_table(record))
    out.parent.mkdir(parents=True, exist_ok=True)
    quantized.save(out, metadata)
    size = out.stat().st_size / 2**20
    console.print(f"wrote {out} ({size:.2f} MiB, int8 on {quantized.report.label})", markup=False)
    return 0


def evaluate_int8(args: argparse.Namespace, loaded: InferenceModel) -> int:
    """`cnnzoo evaluate --int8` (or on an int8 .onnx): float32 and int8 side by side."""
    from cnnzoo.cli.eval_cmd import output_dir

    progress = sys.stderr.isatty()
    console = Console()
    if loaded.config.get("precision") == "int8":
        int8_model, fp32 = loaded.model, _float_source(loaded)
        if fp32 is None:
            return _int8_alone(args, loaded, console)
    else:
        quantized, _ = quantize_source(loaded, args, progress=progress)
        print(f"--int8: {quantized.report}", file=sys.stderr)
        int8_model, fp32 = quantized, loaded
    _, record = compare_on_split(
        fp32,
        int8_model,
        dataset=args.dataset,
        data_dir=args.data_dir,
        split=args.split,
        batch_size=args.batch_size,
        progress=progress,
    )
    out_dir = output_dir(args, loaded)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / f"eval_{args.split}_int8.json"
    record = {"fp32_source": fp32.description, "int8_source": loaded.description, **record}
    json_path.write_text(json.dumps(record, indent=2) + "\n")
    console.print(f"{fp32.description} against int8", markup=False)
    console.print(side_by_side_table(record))
    console.print(f"wrote {json_path}", markup=False)
    return 0


def _float_source(loaded: InferenceModel) -> InferenceModel | None:
    """The float32 model an int8 file was made from, when it can still be loaded here."""
    origin = loaded.config.get("origin") or {}
    if not origin.get("source"):
        return None
    try:
        return load_model(origin["source"], origin.get("weights"))
    except CnnzooError as exc:
        print(f"cnnzoo evaluate: the float32 source is not available ({exc})", file=sys.stderr)
        return None


def _int8_alone(args: argparse.Namespace, loaded: InferenceModel, console: Console) -> int:
    """Score the int8 file alone and show the float32 figures recorded when it was made."""
    from cnnzoo.cli.eval_cmd import evaluate_source

    result, info = evaluate_source(
        loaded,
        dataset=args.dataset,
        data_dir=args.data_dir,
        split=args.split,
        batch_size=args.batch_size,
        progress=sys.stderr.isatty(),
    )
    console.print(f"{info['source']} on {info['dataset']} ({args.split} split)", markup=False)
    console.print(result.summary_line(), markup=False)
    recorded = (loaded.config.get("onnx") or {}).get("accuracy")
    if recorded:
        console.print(
            f"recorded when quantized: float32 {recorded['fp32_top1']:.2f}%, int8 "
            f"{recorded['int8_top1']:.2f}% top-1 on {recorded['dataset']} {recorded['split']}",
            markup=False,
        )
    return 0
