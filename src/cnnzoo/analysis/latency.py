"""How fast each zoo model runs on this machine (`cnnzoo models --measure`), kept in a cache.

Each model is timed as it would serve: eval mode, ``torch.inference_mode``, a batch of random
inputs of its own size (or the size asked for), eager and through :func:`cnnzoo.optimize`
(BatchNorm folding, layout, the fastest backend, checked against eager), the two timed in turns
so that a change in the machine's load touches both alike. Timing the whole zoo takes a while
(optimizing a model compiles or exports it), so the figures are stored next to the
multiply-add table (``$CNNZOO_CACHE/tables/latency.json``) under a key made of the model's code,
torch, the measuring code, the machine (CPU, threads, ONNX Runtime) and the settings; a figure
measured under another key is measured again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console

import cnnzoo
from cnnzoo.analysis.zoo_table import cache_file, figures_key, read_cache, write_cache
from cnnzoo.machine import cpu_model, usable_cores
from cnnzoo.progress import each_with_bar
from cnnzoo.registry import get_entry

__all__ = [
    "GuidePick",
    "Latency",
    "guide_picks",
    "latency_key",
    "measure_latency",
    "model_latencies",
]

# The families the notes teach with ("교육/이해 목적": VGG, ResNet-18; LeNet and AlexNet first).
TEACHING_FAMILIES = ("lenet", "alexnet", "vgg", "resnet", "resnet_cifar")


@dataclass(frozen=True)
class Latency:
    """Median milliseconds per batch; ``error`` says why a model could not run at this size."""

    batch: int
    input_size: tuple[int, ...]  # (C, H, W)
    threads: int = 0
    eager_ms: float = 0.0
    optimized_ms: float = 0.0
    backend: str = ""  # what cnnzoo.optimize chose
    macs: int = 0  # per image, at input_size
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def latency_file() -> Path:
    return cache_file().with_name("latency.json")


def latency_key(
    name: str, batch: int, size: tuple[int, ...], backend: str, threads: int
) -> str:
    """Changes with the model's code and torch (as its multiply-add figures do), the code that
    measures, the machine and the settings."""
    try:
        import onnxruntime

        ort = onnxruntime.__version__
    except ImportError:
        ort = "none"
    package = Path(cnnzoo.__file__).parent
    digest = hashlib.sha256(figures_key(name).encode())
    for part in (cpu_model(), usable_cores(), threads, ort, batch, size, backend):
        digest.update(str(part).encode())
    for source in ("optimize.py", "analysis/latency.py"):
        with contextlib.suppress(OSError):
            digest.update((package / source).read_bytes())
    return digest.hexdigest()[:20]


def measure_latency(
    name: str, batch: int = 1, input_size: tuple[int, ...] | None = None, backend: str = "auto"
) -> Latency:
    """Time ``name`` on this machine, eager and optimized (see the module docstring)."""
    from cnnzoo.analysis.flops import count_macs
    from cnnzoo.optimize import interleaved_medians, optimize

    entry = get_entry(name)
    channels = input_size[0] if input_size else entry.in_chans
    model = entry.builder(in_chans=channels).eval()
    size = tuple(input_size or model.default_cfg["input_size"])
    try:
        model.check_input(torch.empty(batch, *size, device="meta"))
    except ValueError as exc:
        return Latency(batch, size, error=str(exc).split(";")[0])
    example = torch.randn(batch, *size)
    fast = optimize(model, example, backend=backend)
    threads = torch.get_num_threads()
    with torch.inference_mode():
        medians = interleaved_medians({"eager": lambda: model(example),
                                       "optimized": lambda: fast(example)},
                                      warmup=2, rounds=7, budget_s=3.0,
                                      min_turn_s=0.02)  # fmt: skip
    with torch.device("meta"):
        macs = count_macs(entry.builder(in_chans=channels), size)
    return Latency(batch, size, threads, eager_ms=medians["eager"] * 1e3,
                   optimized_ms=medians["optimized"] * 1e3, backend=fast.report.backend,
                   macs=macs)  # fmt: skip


def model_latencies(
    names: list[str],
    *,
    batch: int = 1,
    input_size: tuple[int, ...] | None = None,
    backend: str = "auto",
    progress: bool = True,
    console: Console | None = None,
    threads: int | None = None,
    measure: Callable[..., Latency] | None = None,
) -> dict[str, Latency]:
    """Latency of each of ``names`` (at its own input size unless ``input_size``), from the
    cache where its key matches, measured otherwise (with a progress bar) on ``threads`` torch
    threads (default: the cores other processes leave free, as training takes them: on a busy
    machine, threads that wait for a core slow every step)."""
    from cnnzoo.train.hardware import default_threads

    threads = threads or default_threads()
    measure = measure or measure_latency
    path = latency_file()
    stored = read_cache(path)
    keys = {}
    for name in names:
        size = input_size or (get_entry(name).in_chans, *_default_side(name))
        keys[name] = latency_key(name, batch, tuple(size), backend, threads)
    found: dict[str, Latency] = {}
    for name in names:
        entries = stored.get(name)
        record = entries.get(keys[name]) if isinstance(entries, dict) else None
        if isinstance(record, dict):
            with contextlib.suppress(TypeError, KeyError):
                found[name] = Latency(**{**record, "input_size": tuple(record["input_size"])})
    missing = [name for name in names if name not in found]
    if not missing:
        return found
    console = console or Console(stderr=True)
    shown = progress and console.is_terminal
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for name in each_with_bar(missing, "timing", enabled=shown, console=console):
            found[name] = measure(name, batch, input_size, backend)
            entries = stored.get(name) if isinstance(stored.get(name), dict) else {}
            stored[name] = {**entries, keys[name]: dataclasses.asdict(found[name])}
            write_cache(path, stored)  # after each model: an interrupted run keeps what it timed
    finally:
        torch.set_num_threads(before)
    return found


def _default_side(name: str) -> tuple[int, int]:
    with torch.device("meta"):
        model = get_entry(name).builder()
    _, height, width = model.default_cfg["input_size"]
    return int(height), int(width)


@dataclass(frozen=True)
class GuidePick:
    need: str  # the notes' situation
    model: str
    why: str


def guide_picks(
    latencies: dict[str, Latency], params: dict[str, int]
) -> list[GuidePick]:
    """The notes' model-selection guide (fast inference, memory limits, high accuracy,
    learning) answered from the measured models: the fastest optimized, the fewest parameters,
    the best published ImageNet top-1, and the quickest (eager, as it trains) of the families
    the notes teach with."""
    measured = {name: lat for name, lat in latencies.items() if lat.ok}
    if not measured:
        return []
    picks = []
    fastest = min(measured, key=lambda n: measured[n].optimized_ms)
    lat = measured[fastest]
    picks.append(GuidePick("fast inference", fastest,
                           f"{lat.optimized_ms:.2f} ms optimized ({lat.backend}), "
                           f"{lat.eager_ms:.2f} ms eager"))  # fmt: skip
    smallest = min(measured, key=lambda n: (params[n], measured[n].optimized_ms))
    picks.append(GuidePick("memory limited", smallest,
                           f"{params[smallest] / 1e6:.2f} M params "
                           f"({params[smallest] * 4 / 1e6:.1f} MB of fp32 weights), "
                           f"{measured[smallest].optimized_ms:.2f} ms"))  # fmt: skip
    ranked = [n for n in measured if get_entry(n).imagenet_top1 is not None]
    if ranked:
        best = max(ranked, key=lambda n: get_entry(n).imagenet_top1)  # type: ignore[arg-type]
        picks.append(GuidePick("high accuracy", best,
                               f"{get_entry(best).imagenet_top1:.2f} % ImageNet top-1, "
                               f"{measured[best].optimized_ms:.2f} ms"))  # fmt: skip
    classic = [n for n in measured if get_entry(n).family in TEACHING_FAMILIES]
    if classic:
        simple = min(classic, key=lambda n: measured[n].eager_ms)
        picks.append(GuidePick("learning", simple,
                               f"a classic {get_entry(simple).family} network, "
                               f"{measured[simple].eager_ms:.2f} ms eager"))  # fmt: skip
    return picks

