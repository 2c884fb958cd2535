"""Inference speed: torchvision eager vs cnnzoo eager, optimized (float32) and int8, and
OpenVINO float32 and int8 (NNCF post-training quantization), images per second.

For each model and batch size the variants share weights (torchvision's random init, loaded into
the cnnzoo model) and are timed in turns (A, B, C, B, C, A, ...) in one process after a
warm-up, a turn repeating a call until it lasts --min-turn seconds, so drifting machine load hits
all alike; medians are reported, with the ratio of each to
torchvision eager, int8 to optimized float32, cnnzoo's fastest to OpenVINO's fastest, the
geometric means, and the achieved GFLOP/s (2 x multiply-adds x images/s) next to the machine's
measured float32 matmul GFLOP/s.

int8 is ``cnnzoo.quantize`` calibrated on random images (the weights are random too: the
agreement check is off, accuracy is measured by the tests on real data, not here); with OpenVINO
and NNCF installed it weighs ONNX Runtime's graph on both runtimes against NNCF's graph on
OpenVINO, and the table says which won. OpenVINO is
what a CPU user would pick instead: its columns need ``openvino`` and ``nncf``, installed into
this benchmark's own environment, never into the project's (the project's own venv is reused
for torch and cnnzoo through a .pth file):

    python -m venv /tmp/cnnzoo-bench
    python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])" \\
        > /tmp/cnnzoo-bench/lib/python3.11/site-packages/_project.pth   # your python3.X
    /tmp/cnnzoo-bench/bin/pip install openvino nncf
    /tmp/cnnzoo-bench/bin/python benchmarks/infer.py --out infer.json   # the full table

OpenVINO float32 is compiled with INFERENCE_PRECISION_HINT=f32 (on CPUs with bf16 or AMX units
its default computes float graphs in bf16); its int8 model (NNCF) runs with OpenVINO's defaults.

    python benchmarks/infer.py --models resnet18,mobilenet_v2 --batches 1 --repeats 5 \\
        --no-compile --no-openvino --out quick.json                  # a few minutes on 2 cores
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import header, machine_info  # noqa: E402

import cnnzoo  # noqa: E402
from cnnzoo.analysis.flops import count_macs  # noqa: E402
from cnnzoo.optimize import BACKENDS, interleaved_medians, optimize  # noqa: E402
from cnnzoo.quantize import quantize  # noqa: E402

DEFAULT_MODELS = (
    "resnet18",
    "resnet50",
    "efficientnet_b0",
    "vgg16",
    "googlenet",
    "mobilenet_v2",
)
CNNZOO = ("optimized", "int8")  # cnnzoo's fast paths
OPENVINO = ("openvino_fp32", "openvino_int8")
# torchvision builders need these to match cnnzoo's defaults (no auxiliary heads at inference).
TV_KWARGS: dict[str, dict[str, Any]] = {"googlenet": {"aux_logits": False, "init_weights": True}}
ZOO_KWARGS: dict[str, dict[str, Any]] = {"googlenet": {"aux_logits": False}}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Quick run (a few minutes on 2 cores): --models resnet18,mobilenet_v2 --batches 1 "
        "--repeats 5 --no-compile --no-openvino",
    )
    parser.add_argument(
        "--models", default=",".join(DEFAULT_MODELS), help="comma-separated model names"
    )
    parser.add_argument("--batches", default="1,8", help="comma-separated batch sizes")
    parser.add_argument(
        "--size", type=int, help="square input side (default: each model's own, 224 here)"
    )
    parser.add_argument("--repeats", type=int, default=10, help="timed turns per variant")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls per variant")
    parser.add_argument(
        "--budget", type=float, default=30.0, help="stop timing a row after this many seconds"
    )
    parser.add_argument(
        "--min-turn",
        type=float,
        default=0.1,
        help="a turn repeats a call until it lasts this many seconds (default 0.1)",
    )
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument(
        "--no-compile",
        dest="compile",
        action="store_false",
        help="optimized = BN folding + layout only (no torch.compile / ONNX Runtime / OpenVINO)",
    )
    parser.add_argument("--backend", default="auto", choices=BACKENDS, help="for optimize()")
    parser.add_argument(
        "--calibration",
        type=int,
        default=64,
        help="random images int8 and NNCF calibrate on (default 64)",
    )
    parser.add_argument("--no-int8", dest="int8", action="store_false", help="skip int8")
    parser.add_argument(
        "--no-openvino", dest="openvino", action="store_false", help="skip the OpenVINO columns"
    )
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    args.batches = [int(b) for b in args.batches.split(",") if b.strip()]
    if not args.models or not args.batches or min(args.batches) < 1 or args.repeats < 1:
        parser.error("give at least one model, positive batch sizes and --repeats >= 1")
    if args.calibration < 32:
        parser.error("--calibration needs at least 32 images")
    return args


def openvino_missing() -> list[str]:
    return [name for name in ("openvino", "nncf") if importlib.util.find_spec(name) is None]


def build_models(name: str) -> tuple[nn.Module, nn.Module, float]:
    """torchvision's model (random init) and cnnzoo's with the same weights; their max diff."""
    torch.manual_seed(0)
    reference = torchvision.models.get_model(name, weights=None, **TV_KWARGS.get(name, {}))
    zoo = cnnzoo.create_model(name, **ZOO_KWARGS.get(name, {}))
    zoo.load_state_dict(reference.state_dict(), strict=True)
    reference.eval()
    zoo.eval()
    side = zoo.default_cfg["input_size"][-1]
    x = torch.randn(1, 3, side, side)
    with torch.inference_mode():
        diff = (reference(x) - zoo(x)).abs().max().item()
    return reference, zoo, diff


def openvino_variants(
    zoo: nn.Module, x: torch.Tensor, calibration: torch.Tensor
) -> tuple[dict[str, Any], dict[str, Any]]:
    """OpenVINO's own path from a PyTorch model: ov.convert_model, then NNCF's post-training
    quantization for int8. (callables on x, facts)"""
    import nncf
    import openvino as ov

    core = ov.Core()
    threads = torch.get_num_threads()
    started = time.perf_counter()
    with torch.no_grad():
        model = ov.convert_model(zoo, example_input=x, input=[tuple(x.shape)])
    fp32 = core.compile_model(
        model,
        "CPU",
        {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads,
         "PERFORMANCE_HINT": "LATENCY"},
    )  # fmt: skip
    fp32_s = time.perf_counter() - started
    batches = [
        calibration[i : i + x.shape[0]].numpy() for i in range(0, len(calibration), x.shape[0])
    ]
    batches = [b for b in batches if len(b) == x.shape[0]]
    started = time.perf_counter()
    quantized = nncf.quantize(model, nncf.Dataset(batches), subset_size=len(calibration))
    int8 = core.compile_model(
        quantized, "CPU", {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
    )
    int8_s = time.perf_counter() - started
    array = x.numpy()
    requests = {
        "openvino_fp32": fp32.create_infer_request(),
        "openvino_int8": int8.create_infer_request(),
    }
    fns = {key: partial(request.infer, {0: array}) for key, request in requests.items()}
    reference = zoo(x).detach()
    facts = {
        "version": ov.__version__,
        "nncf": nncf.__version__,
        "fp32_build_s": fp32_s,
        "int8_build_s": int8_s,
        "fp32_precision": str(fp32.get_property("INFERENCE_PRECISION_HINT")),
        "int8_precision": str(int8.get_property("INFERENCE_PRECISION_HINT")),
        "max_abs_diff": {
            key: float((torch.from_numpy(request.infer({0: array})[0]) - reference).abs().max())
            for key, request in requests.items()
        },
    }
    return fns, facts


def bench_row(
    name: str, reference: nn.Module, zoo: nn.Module, batch: int, args: argparse.Namespace
) -> dict[str, Any]:
    side = args.size or zoo.default_cfg["input_size"][-1]
    generator = torch.Generator().manual_seed(batch)
    x = torch.randn(batch, 3, side, side, generator=generator)
    calibration = torch.randn(args.calibration, 3, side, side, generator=generator)
    macs = count_macs(zoo, (3, side, side))
    t0 = time.perf_counter()
    fast = optimize(zoo, x, compile=args.compile, backend=args.backend)
    build_s = time.perf_counter() - t0
    fns: dict[str, Any] = {
        "torchvision": partial(reference, x),
        "cnnzoo": partial(zoo, x),
        "optimized": partial(fast, x),
    }
    row: dict[str, Any] = {"model": name, "batch": batch, "size": side}
    if args.int8:
        t0 = time.perf_counter()
        # Random weights answer random images almost at random: the agreement check cannot
        # mean anything here (the tests check the accuracy of int8 on real data).
        int8 = quantize(zoo, calibration, example=x, min_agreement=0.0)
        fns["int8"] = partial(int8, x)
        report = int8.report
        row["int8"] = {
            "backend": report.backend,
            "quantizer": report.quantizer,
            "reduce_range": report.reduce_range,
            "cpu": report.cpu,
            "quantized_nodes": report.quantized_nodes,
            "max_abs_diff": report.max_abs_diff,
            "output_scale": report.output_scale,
            "build_s": time.perf_counter() - t0,
            "notes": report.notes,
        }
    if args.openvino and not openvino_missing():
        ov_fns, row["openvino"] = openvino_variants(zoo, x, calibration)
        fns |= ov_fns
    with torch.inference_mode():
        medians = interleaved_medians(
            fns,
            warmup=args.warmup,
            rounds=args.repeats,
            budget_s=args.budget,
            min_turn_s=args.min_turn,
        )
    rates = {key: batch / seconds for key, seconds in medians.items()}
    report = fast.report
    fastest_zoo = max(rates[k] for k in CNNZOO if k in rates)
    openvino = [rates[k] for k in OPENVINO if k in rates]
    row |= {
        "gmacs_per_image": macs / 1e9,
        "images_per_s": rates,
        "ms_per_batch": {key: seconds * 1e3 for key, seconds in medians.items()},
        "ratio_to_torchvision": {key: rate / rates["torchvision"] for key, rate in rates.items()},
        "int8_over_optimized": rates["int8"] / rates["optimized"] if "int8" in rates else None,
        "cnnzoo_fastest_over_openvino_fastest": fastest_zoo / max(openvino) if openvino else None,
        "gflops": {key: 2 * macs * rate / 1e9 for key, rate in rates.items()},
        # Other jobs on the machine slow every variant of a row alike (they are interleaved),
        # but say how loaded it was when the row was timed.
        "load_average": list(os.getloadavg()),
        "optimized": {
            "backend": report.backend,
            "channels_last": report.channels_last,
            "folded_batchnorms": report.folded_batchnorms,
            "max_abs_diff": report.max_abs_diff,
            "build_s": build_s,
            "notes": report.notes,
        },
    }
    return row


def geometric_mean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else math.nan


def _cell(value: float | None, width: int, digits: int = 2) -> str:
    return f"{value:>{width}.{digits}f}" if value is not None else f"{'-':>{width}}"


def format_table(rows: list[dict[str, Any]], peak: float | None) -> str:
    columns = (
        f"{'model':<16}{'batch':>6}{'px':>5}{'GMACs':>7}"
        f"{'tv':>9}{'zoo':>9}{'opt':>9}{'int8':>9}{'ov fp32':>9}{'ov int8':>9}"
        f"{'opt/tv':>8}{'int8/opt':>9}{'zoo/ov':>8}{'opt %mm':>8}  optimized as; int8 on"
    )
    lines = ["images/s; zoo/ov = cnnzoo's fastest / OpenVINO's fastest", columns]
    lines.append("-" * len(columns))
    for row in rows:
        rate, ratio, gflops = row["images_per_s"], row["ratio_to_torchvision"], row["gflops"]
        opt = row["optimized"]
        how = opt["backend"]
        if how not in ("onnxruntime", "openvino"):  # ONNX graphs are always fed NCHW
            how += ", NHWC" if opt["channels_last"] else ", NCHW"
        if "int8" in row:
            how += f"; {row['int8']['backend']}"
            if row["int8"]["quantizer"] != "onnxruntime":
                how += f" ({row['int8']['quantizer']} graph)"
        share = f"{100 * gflops['optimized'] / peak:.0f}%" if peak else "-"
        lines.append(
            f"{row['model']:<16}{row['batch']:>6}{row['size']:>5}{row['gmacs_per_image']:>7.3f}"
            + "".join(
                _cell(rate.get(key), 9, 1)
                for key in ("torchvision", "cnnzoo", "optimized", "int8", *OPENVINO)
            )
            + _cell(ratio["optimized"], 8)
            + _cell(row["int8_over_optimized"], 9)
            + _cell(row["cnnzoo_fastest_over_openvino_fastest"], 8)
            + f"{share:>8}  {how}"
        )
    for key in ("cnnzoo", "optimized", "int8"):
        values = [row["ratio_to_torchvision"][key] for row in rows if key in row["images_per_s"]]
        if values:
            lines.append(f"geometric mean of {key}/torchvision: {geometric_mean(values):.3f}")
    for key in ("int8_over_optimized", "cnnzoo_fastest_over_openvino_fastest"):
        values = [row[key] for row in rows if row[key] is not None]
        if values:
            lines.append(f"geometric mean of {key}: {geometric_mean(values):.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine_info()
    print(header(info), flush=True)
    missing = openvino_missing() if args.openvino else []
    if missing:
        print(
            f"OpenVINO columns skipped: {' and '.join(missing)} not installed in this "
            "environment (the docstring of this script says how to make one)",
            flush=True,
        )
    peak = info.get("matmul_gflops_fp32_cpu")
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    for name in args.models:
        reference, zoo, diff = build_models(name)
        print(f"{name}: cnnzoo vs torchvision max |diff| {diff:.2e}", flush=True)
        for batch in args.batches:
            row = bench_row(name, reference, zoo, batch, args)
            row["cnnzoo_vs_torchvision_max_abs_diff"] = diff
            rows.append(row)
            rate = row["images_per_s"]
            print(
                f"  batch {batch}: "
                + ", ".join(f"{k} {v:.2f} img/s" for k, v in rate.items())
                + f" (optimize took {row['optimized']['build_s']:.1f} s; "
                f"load average {row['load_average'][0]:.1f})",
                flush=True,
            )
        del reference, zoo
    print()
    print(format_table(rows, peak))
    total = time.perf_counter() - started
    loads = [row["load_average"][0] for row in rows]
    print(
        f"total {total:.0f} s; {args.repeats} turns per variant (median; a turn repeats a call "
        f"for at least {args.min_turn:g} s), warm-up {args.warmup}; "
        f"load average {min(loads):.1f}-{max(loads):.1f} while rows were timed"
    )
    if args.out:
        summary = {
            key: geometric_mean(
                [row["ratio_to_torchvision"][key] for row in rows if key in row["images_per_s"]]
            )
            for key in ("cnnzoo", "optimized", "int8")
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "machine": info,
            "settings": {
                "models": args.models,
                "batches": args.batches,
                "repeats": args.repeats,
                "warmup": args.warmup,
                "min_turn_s": args.min_turn,
                "compile": args.compile,
                "backend": args.backend,
                "int8": args.int8,
                "openvino": args.openvino and not missing,
                "calibration_images": args.calibration,
            },
            "rows": rows,
            "geomean_ratio_to_torchvision": summary,
            "seconds": total,
            "load_average_end": list(os.getloadavg()),
        }
        args.out.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
