"""int8 on a depthwise network (issue 18): a trained run quantized three ways, each scored on
the whole test split beside float32 on the same images.

- per-channel weights (cnnzoo's default; what `cnnzoo quantize RUN` does),
- per-tensor weights (one scale per weight tensor: what collapsed MobileNets in published
  reports, shown for comparison),
- per-channel with `--sensitivity --max-drop 0.5` (each layer quantized alone and costed on
  2,000 validation images; the costliest kept in float32 until within 0.5 points).

Writes int8_depthwise.json (every figure, the commands, the machine) and int8_depthwise.md.

    cnnzoo train --model mobilenet_v2 --dataset fashion_mnist --epochs 5 -o runs/mobilenet_v2_fm
    python tools/int8_depthwise.py runs/mobilenet_v2_fm -o docs/results
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch

import cnnzoo
from cnnzoo.calibration import calibration_data
from cnnzoo.cli.quantize_cmd import compare_on_split
from cnnzoo.inference import load_model
from cnnzoo.machine import header, machine_info
from cnnzoo.quantize import quantize

VARIANTS = {
    "per-channel": {},
    "per-tensor": {"per_channel": False},
    "per-channel + sensitivity": {"sensitivity": True, "max_drop": 0.5},
}
SHOWN_LAYERS = 10


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a run directory (cnnzoo train -o RUN)")
    parser.add_argument("-o", "--output", type=Path, default=Path("docs/results"))
    parser.add_argument("--samples", type=int, default=512, help="calibration images")
    args = parser.parse_args(argv)
    command = "python tools/int8_depthwise.py " + " ".join(map(shlex.quote, sys.argv[1:]))
    info = machine_info()
    print(header(info), flush=True)
    loaded = load_model(args.run)
    data = calibration_data(loaded, samples=args.samples, validation_samples=2000)
    print(f"{loaded.description}: calibrating on {data.description}", flush=True)
    results: dict[str, Any] = {}
    for name, options in VARIANTS.items():
        started = time.perf_counter()
        # Record what happens, collapse included, rather than stop at the agreement check.
        int8 = quantize(
            loaded.model,
            (data.images, data.labels),
            validation=data.validation,
            min_agreement=0.0,
            **options,
        )
        seconds = time.perf_counter() - started
        _, test = compare_on_split(loaded, int8)
        results[name] = {"quantize_s": seconds, "test": test, "report": int8.report.to_dict()}
        print(f"{name}: {int8.report}\ntest: {test}\n", flush=True)
    metrics = json.loads((args.run / "metrics.json").read_text())
    config = json.loads((args.run / "config.json").read_text())
    record = {
        "experiment": "int8-depthwise",
        "provenance": {
            "command": command,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "cnnzoo": cnnzoo.__version__,
            "machine": info,
            "torch_threads": torch.get_num_threads(),
        },
        "run": {
            "path": str(args.run),
            "model": config["model"],
            "dataset": config["dataset"],
            "epochs": config["epochs"],
            "recipe": {k: config[k] for k in ("optimizer", "lr", "weight_decay", "schedule")},
            "input_size": config["data"]["image_size"],
            "test_top1_at_training": metrics.get("test_top1"),
        },
        "calibration": data.description,
        "variants": results,
    }
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "int8_depthwise.json").write_text(json.dumps(record, indent=2) + "\n")
    (args.output / "int8_depthwise.md").write_text(markdown(record))
    print(f"wrote {args.output / 'int8_depthwise.json'} and .md")
    return 0


def markdown(record: dict[str, Any]) -> str:
    run, provenance = record["run"], record["provenance"]
    machine = provenance["machine"]
    load = machine.get("load_average") or [0.0]
    lines = [
        f"# int8 on a depthwise network: {run['model']} on {run['dataset']}",
        "",
        f"Regenerate with: `{provenance['command']}` (the run: `cnnzoo train --model "
        f"{run['model']} --dataset {run['dataset']} --epochs {run['epochs']} -o {run['path']}`, "
        "the default recipe otherwise)",
        "",
        f"Written {provenance['date']} by cnnzoo {provenance['cnnzoo']} on {machine['cpu']}, "
        f"{machine['cores']} cores, {provenance['torch_threads']} torch threads, load average "
        f"{load[0]:.1f} (a shared machine), torch {machine['torch']}.",
        "",
        f"The run: {run['model']}, {run['epochs']} epochs ({run['recipe']['optimizer']} lr "
        f"{run['recipe']['lr']}, {run['recipe']['schedule']}), {run['input_size']} px inputs. "
        f"Calibration: {record['calibration']}. Every variant is scored on the whole test split "
        "beside float32, on the same images.",
        "",
        "| weights | float32 top-1 | int8 top-1 | change | top-1 agreement | largest logit "
        "difference | layers kept in float32 | int8 / float32 ONNX Runtime speed (batch 8) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, result in record["variants"].items():
        test, report = result["test"], result["report"]
        speed = report.get("speedup")
        lines.append(
            f"| {name} | {test['fp32_top1']:.2f} % | {test['int8_top1']:.2f} % | "
            f"{test['int8_top1'] - test['fp32_top1']:+.2f} | {test['agreement']:.2f} % | "
            f"{test['max_logit_diff']:.3g} | {len(report['fp32_layers'])} | "
            f"{f'{speed:.2f}x' if speed else '-'} |"
        )
    sensitive = record["variants"]["per-channel + sensitivity"]["report"]
    lines += [
        "",
        f"Sensitivity (on {sensitive['validation_samples']} validation images; float32 "
        f"{sensitive['fp32_top1']:.2f} %, every layer int8 {sensitive['int8_top1_all']:.2f} %, "
        f"after keeping {len(sensitive['fp32_layers'])} in float32 "
        f"{sensitive['int8_top1']:.2f} %): the {SHOWN_LAYERS} costliest layers alone",
        "",
        "| layer | ops | top-1 with only this layer int8 | cost (points) |",
        "| --- | --- | ---: | ---: |",
    ]
    for cost in sensitive["sensitivity"][:SHOWN_LAYERS]:
        ops = ", ".join(sorted(set(cost["ops"])))
        lines.append(f"| {cost['layer']} | {ops} | {cost['top1']:.2f} % | {cost['cost']:+.2f} |")
    kept = ", ".join(sensitive["fp32_layers"]) or "none"
    lines += ["", f"Kept in float32 by the sensitivity analysis: {kept}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
