"""CPU threads under a competing load: how fast LeNet-5 trains with 1 thread, with every core,
and with cnnzoo's default (the cores other processes leave free, sampled over 0.1 s), with the
machine as it is and with ``--spinners`` extra busy processes competing for the cores.

Each measurement is a fresh process (OpenMP reads its settings when torch loads) that times
``--steps`` training steps of LeNet-5 on Fashion-MNIST after a short warm-up; the variants are
interleaved, turn by turn, and the medians are reported.

    python benchmarks/threads.py                       # 2 spinners, 3 turns, 100 steps
    python benchmarks/threads.py --spinners 1 --turns 5 --out threads.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import header, load_average, machine_info  # noqa: E402

# One measurement: build the trainer (threads as asked), warm up, time the steps.
PROBE = """
import json, sys, time
from cnnzoo.train import TrainConfig, Trainer
threads = None if sys.argv[1] == "auto" else int(sys.argv[1])
steps = int(sys.argv[2])
trainer = Trainer(TrainConfig(model="lenet5", dataset=sys.argv[4], batch_size=128, val_split=0.0,
                              num_threads=threads, quiet=True, tensorboard=False, plots=False,
                              output_dir=sys.argv[3], overwrite=True))
trainer.setup()
trainer.train_one_epoch(0, max_steps=5)
start = time.perf_counter()
stats = trainer.train_one_epoch(1, max_steps=steps)
print(json.dumps({"images_per_s": stats["images_per_s"], "threads": trainer.threads,
                  "wall": time.perf_counter() - start}))
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=100, help="timed steps (batch 128)")
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--spinners", type=int, default=2, help="busy processes added")
    parser.add_argument("--dataset", default="fashion_mnist", help="default fashion_mnist")
    parser.add_argument(
        "--settle", type=float, default=60.0, help="seconds for the load average to follow"
    )
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if min(args.steps, args.turns) < 1 or args.spinners < 0:
        parser.error("--steps and --turns must be >= 1, --spinners >= 0")
    return args


def measure(threads: str, args: argparse.Namespace, workdir: Path) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, threads, str(args.steps), str(workdir / f"run-{threads}"),
         args.dataset],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"probe failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_turns(args: argparse.Namespace, workdir: Path, label: str) -> dict[str, dict]:
    cores = str(os.cpu_count() or 1)
    variants = {"1 thread": "1", f"{cores} threads": cores, "default": "auto"}
    samples: dict[str, list[dict]] = {name: [] for name in variants}
    for turn in range(args.turns):
        for name, threads in variants.items():
            samples[name].append(measure(threads, args, workdir))
        print(f"  {label}, turn {turn + 1}: "
              + ", ".join(f"{n} {s[-1]['images_per_s']:,.0f} img/s" for n, s in samples.items()),
              flush=True)  # fmt: skip
    return {
        name: {
            "images_per_s": statistics.median(s["images_per_s"] for s in runs),
            "threads_chosen": [s["threads"] for s in runs],
            "all": [s["images_per_s"] for s in runs],
        }
        for name, runs in samples.items()
    }


def main(argv: list[str] | None = None) -> int:
    import tempfile

    args = parse_args(argv)
    info = machine_info(measure=False)
    print(header(info))
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        print(f"as the machine is (load average {load_average()}):", flush=True)
        results["as is"] = run_turns(args, workdir, "as is")
        spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
                    for _ in range(args.spinners)]  # fmt: skip
        try:
            time.sleep(args.settle)
            print(f"with {args.spinners} busy processes (load average {load_average()}):",
                  flush=True)  # fmt: skip
            results["loaded"] = run_turns(args, workdir, "loaded")
        finally:
            for spinner in spinners:
                spinner.kill()
                spinner.wait()
    print(f"{'variant':<12} {'as is':>12} {'loaded':>12}  threads chosen (loaded)")
    for name in results["as is"]:
        print(f"{name:<12} {results['as is'][name]['images_per_s']:>8,.0f} i/s "
              f"{results['loaded'][name]['images_per_s']:>8,.0f} i/s  "
              f"{results['loaded'][name]['threads_chosen']}")  # fmt: skip
    if args.out:
        payload = {"machine": info, "steps": args.steps, "spinners": args.spinners,
                   "results": results}  # fmt: skip
        args.out.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
