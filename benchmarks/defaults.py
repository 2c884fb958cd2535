"""The default recipes, timed as a new user runs them: `cnnzoo train` with no recipe flags.

Each target is one `cnnzoo train` process, timed from its start to its exit (loading the data,
training, scoring the test split, writing the run: everything a user waits for), then its
metrics.json is read. Targets (issue "Training the Keras way"):

* ``lenet5 --dataset fashion_mnist``: >= 91.0 % test accuracy within 60 s wall;
* ``lenet5 --dataset digits --epochs 5``: >= 95 %;
* ``resnet20 --dataset fashion_mnist`` (``--long``): >= 93.5 % with the epochs it picks (long
  on a CPU: about 100 s per epoch on 2 free cores).

    python benchmarks/defaults.py                 # the two LeNet-5 targets
    python benchmarks/defaults.py --long --out defaults.json
    python benchmarks/defaults.py --only "resnet20 fashion_mnist" --keep runs/defaults
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import header, load_average, machine_info  # noqa: E402

# (name, cnnzoo train arguments, test accuracy target, wall-time target in seconds or None)
TARGETS: list[tuple[str, list[str], float, float | None]] = [
    ("lenet5 fashion_mnist", ["--model", "lenet5", "--dataset", "fashion_mnist"], 0.910, 60.0),
    ("lenet5 digits 5 epochs", ["--model", "lenet5", "--dataset", "digits", "--epochs", "5"],
     0.95, None),
]  # fmt: skip
LONG = [("resnet20 fashion_mnist", ["--model", "resnet20", "--dataset", "fashion_mnist"],
         0.935, None)]  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--long", action="store_true", help="also resnet20 on Fashion-MNIST")
    parser.add_argument("--only", metavar="NAME", help="run only this target (a name above)")
    parser.add_argument("--keep", type=Path, help="keep the run directories here")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    return parser.parse_args(argv)


def run_target(name: str, arguments: list[str], workdir: Path) -> dict[str, Any]:
    run = workdir / name.replace(" ", "-")
    command = [sys.executable, "-m", "cnnzoo", "train", *arguments, "-o", str(run)]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{name} failed: {done.stderr[-2000:]}")
    metrics = json.loads((run / "metrics.json").read_text())
    recipe = next(line for line in done.stdout.splitlines() if line.startswith("recipe"))
    return {
        "name": name,
        "command": "cnnzoo train " + " ".join(arguments),
        "test_top1": metrics["test_top1"],
        "epochs": metrics["epochs_run"],
        "wall_seconds": wall,
        "train_seconds": metrics["train_seconds"],
        "recipe": recipe,
        "load_average_after": load_average(),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    info = machine_info(measure=False)
    print(header(info), flush=True)
    targets = TARGETS + LONG if args.long or args.only else TARGETS
    if args.only:
        targets = [target for target in targets if target[0] == args.only]
        if not targets:
            names = ", ".join(target[0] for target in TARGETS + LONG)
            raise SystemExit(f"--only: no target {args.only!r} (targets: {names})")
    rows, missed = [], []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.keep or Path(tmp)
        for name, arguments, accuracy, seconds in targets:
            row = run_target(name, arguments, workdir)
            row["target_accuracy"], row["target_seconds"] = accuracy, seconds
            in_time = seconds is None or row["wall_seconds"] <= seconds
            ok = row["test_top1"] >= accuracy and in_time
            missed += [] if ok else [name]
            rows.append(row)
            limit = f" within {seconds:.0f} s" if seconds else ""
            print(f"{row['command']}: {100 * row['test_top1']:.2f} % test after {row['epochs']} "
                  f"epochs, {row['wall_seconds']:.1f} s wall ({row['train_seconds']:.1f} s "
                  f"training); target {100 * accuracy:.1f} %{limit}: {'met' if ok else 'MISSED'}",
                  flush=True)  # fmt: skip
            print(f"  {row['recipe']}", flush=True)
    if args.out:
        args.out.write_text(json.dumps({"machine": info, "rows": rows}, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
