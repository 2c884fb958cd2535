"""Inference speed: torchvision eager vs cnnzoo eager vs cnnzoo optimized, images per second.

For each model and batch size the three variants share weights (torchvision's random init,
loaded into the cnnzoo model) and are timed in turns (A, B, C, A, B, C, ...) in one process
after a warm-up, so drifting machine load hits all three alike; medians are reported, with the
ratio of each to torchvision eager, the geometric mean of those ratios, and the achieved
GFLOP/s (2 x multiply-adds x images/s) next to the machine's measured float32 matmul GFLOP/s.

    python benchmarks/infer.py --out infer.json                      # the full table
    python benchmarks/infer.py --models resnet18,mobilenet_v2 --batches 1 --repeats 5 \\
        --no-compile --out quick.json                                # about a minute on 2 cores
"""

from __future__ import annotations

import argparse
import json
import math
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

DEFAULT_MODELS = (
    "resnet18",
    "resnet50",
    "efficientnet_b0",
    "vgg16",
    "googlenet",
    "mobilenet_v2",
)
VARIANTS = ("torchvision", "cnnzoo", "optimized")
# torchvision builders need these to match cnnzoo's defaults (no auxiliary heads at inference).
TV_KWARGS: dict[str, dict[str, Any]] = {"googlenet": {"aux_logits": False, "init_weights": True}}
ZOO_KWARGS: dict[str, dict[str, Any]] = {"googlenet": {"aux_logits": False}}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Quick run (< 2 minutes on 2 cores): --models resnet18,mobilenet_v2 --batches 1 "
        "--repeats 5 --no-compile",
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
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument(
        "--no-compile",
        dest="compile",
        action="store_false",
        help="optimized = BN folding + layout only (no torch.compile / ONNX Runtime)",
    )
    parser.add_argument("--backend", default="auto", choices=BACKENDS, help="for optimize()")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    args.batches = [int(b) for b in args.batches.split(",") if b.strip()]
    if not args.models or not args.batches or min(args.batches) < 1 or args.repeats < 1:
        parser.error("give at least one model, positive batch sizes and --repeats >= 1")
    return args


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


def bench_row(
    name: str, reference: nn.Module, zoo: nn.Module, batch: int, args: argparse.Namespace
) -> dict[str, Any]:
    side = args.size or zoo.default_cfg["input_size"][-1]
    x = torch.randn(batch, 3, side, side)
    macs = count_macs(zoo, (3, side, side))
    t0 = time.perf_counter()
    fast = optimize(zoo, x, compile=args.compile, backend=args.backend)
    build_s = time.perf_counter() - t0
    with torch.inference_mode():
        medians = interleaved_medians(
            {
                "torchvision": partial(reference, x),
                "cnnzoo": partial(zoo, x),
                "optimized": partial(fast, x),
            },
            warmup=args.warmup,
            rounds=args.repeats,
            budget_s=args.budget,
        )
    rates = {key: batch / seconds for key, seconds in medians.items()}
    report = fast.report
    return {
        "model": name,
        "batch": batch,
        "size": side,
        "gmacs_per_image": macs / 1e9,
        "images_per_s": rates,
        "ms_per_batch": {key: seconds * 1e3 for key, seconds in medians.items()},
        "ratio_to_torchvision": {key: rates[key] / rates["torchvision"] for key in VARIANTS},
        "gflops": {key: 2 * macs * rate / 1e9 for key, rate in rates.items()},
        "optimized": {
            "backend": report.backend,
            "channels_last": report.channels_last,
            "folded_batchnorms": report.folded_batchnorms,
            "max_abs_diff": report.max_abs_diff,
            "build_s": build_s,
            "notes": report.notes,
        },
    }


def geometric_mean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else math.nan


def format_table(rows: list[dict[str, Any]], peak: float | None) -> str:
    columns = (
        f"{'model':<16}{'batch':>6}{'px':>5}{'GMACs':>7}"
        f"{'tv img/s':>10}{'zoo img/s':>10}{'opt img/s':>10}"
        f"{'zoo/tv':>8}{'opt/tv':>8}{'opt GFLOP/s':>12}{'% matmul':>9}  optimized as"
    )
    lines = [columns, "-" * len(columns)]
    for row in rows:
        rate, ratio, gflops = row["images_per_s"], row["ratio_to_torchvision"], row["gflops"]
        opt = row["optimized"]
        how = opt["backend"]
        if how != "onnxruntime":  # ONNX Runtime is always fed NCHW
            how += ", NHWC" if opt["channels_last"] else ", NCHW"
        share = f"{100 * gflops['optimized'] / peak:.0f}%" if peak else "-"
        lines.append(
            f"{row['model']:<16}{row['batch']:>6}{row['size']:>5}{row['gmacs_per_image']:>7.3f}"
            f"{rate['torchvision']:>10.2f}{rate['cnnzoo']:>10.2f}{rate['optimized']:>10.2f}"
            f"{ratio['cnnzoo']:>8.2f}{ratio['optimized']:>8.2f}{gflops['optimized']:>12.1f}"
            f"{share:>9}  {how}"
        )
    for key in ("cnnzoo", "optimized"):
        mean = geometric_mean([row["ratio_to_torchvision"][key] for row in rows])
        lines.append(f"geometric mean of {key}/torchvision: {mean:.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine_info()
    print(header(info), flush=True)
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
                + ", ".join(f"{k} {rate[k]:.2f} img/s" for k in VARIANTS)
                + f" (optimize took {row['optimized']['build_s']:.1f} s)",
                flush=True,
            )
        del reference, zoo
    print()
    print(format_table(rows, peak))
    total = time.perf_counter() - started
    print(f"total {total:.0f} s; {args.repeats} turns per variant (median), warm-up {args.warmup}")
    if args.out:
        summary = {
            key: geometric_mean([row["ratio_to_torchvision"][key] for row in rows])
            for key in ("cnnzoo", "optimized")
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "machine": info,
            "settings": {
                "models": args.models,
                "batches": args.batches,
                "repeats": args.repeats,
                "warmup": args.warmup,
                "compile": args.compile,
                "backend": args.backend,
            },
            "rows": rows,
            "geomean_ratio_to_torchvision": summary,
            "seconds": total,
        }
        args.out.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
