"""Devices, CPU threads, determinism and autocast: the global settings a run changes, and how
they are put back when the run returns."""

from __future__ import annotations

import os
import time
from typing import Any

import torch

from cnnzoo.errors import UsageError

__all__ = ["TorchSettings", "amp_dtype", "default_threads", "resolve_device"]


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``--device`` (auto, cpu, cuda, cuda:N, mps) -> the device, or a UsageError saying why not.

    The one device resolver: training, evaluate, predict and explain all go through it."""
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            name = "mps"
        else:
            name = "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise UsageError("--device cuda was asked for, but CUDA is not available here")
        return torch.device("cuda", local_rank)
    if name == "mps" and not torch.backends.mps.is_available():
        raise UsageError("--device mps was asked for, but MPS is not available here")
    try:
        device = torch.device(name)  # also "cuda:1", "cpu"
    except RuntimeError:
        raise UsageError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name} was asked for, but CUDA is not available here")
    return device


def default_threads(processes_here: int = 1) -> int:
    """CPU threads for one of ``processes_here`` training processes on this machine.

    The cores that other processes leave free, at least one. OpenMP threads wait for each other
    at every parallel region; when another process holds a core, a thread scheduled out stalls
    the rest (measured: one LeNet-5 epoch took 144 s with 2 threads on 2 busy cores, 10 s with
    one; ``benchmarks/threads.py``). What the others use is measured now, over a tenth of a
    second of ``/proc/stat``: the 1-minute load average still counts a job that ended seconds
    ago (a training run started right after another one took 1 thread of 2 and ran 1.7x
    slower), so it is only the fallback where ``/proc/stat`` is missing.
    """
    cores = os.cpu_count() or 1
    share = max(1, cores // max(1, processes_here))
    others = _busy_others()
    if others is None:
        try:
            others = os.getloadavg()[0] - _own_load()
        except (AttributeError, OSError):  # no load average (Windows): use every core
            return share
    free = int(cores - max(0.0, others) + 0.5)
    return max(1, min(share, free // max(1, processes_here)))


_SAMPLE_SECONDS = 0.1


def _busy_others() -> float | None:
    """Cores kept busy by other processes during a short sample (None without /proc/stat)."""
    try:
        busy_before, own_before, start = _cpu_busy_seconds(), time.process_time(), time.monotonic()
        time.sleep(_SAMPLE_SECONDS)
        busy_after, own_after, end = _cpu_busy_seconds(), time.process_time(), time.monotonic()
    except (OSError, ValueError, IndexError):
        return None
    return ((busy_after - busy_before) - (own_after - own_before)) / (end - start)


def _cpu_busy_seconds() -> float:
    """CPU-seconds all cores have spent busy since boot (``/proc/stat``)."""
    with open("/proc/stat") as stat:
        fields = [int(value) for value in stat.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    busy = sum(fields[:8]) - idle  # user .. steal; guest time is already in user
    return busy / os.sysconf("SC_CLK_TCK")


def _own_load() -> float:
    """Cores this process has kept busy on average since it started (0 where unknown)."""
    try:
        with open("/proc/self/stat") as stat, open("/proc/uptime") as uptime:
            started = int(stat.read().rsplit(")", 1)[1].split()[19]) / os.sysconf("SC_CLK_TCK")
            age = float(uptime.read().split()[0]) - started
    except (OSError, ValueError, IndexError):
        return 0.0
    return time.process_time() / age if age > 1 else 0.0


class TorchSettings:
    """A run's threads and determinism: :meth:`apply` them, :meth:`restore` the caller's."""

    def __init__(self, threads: int | None, deterministic: bool, device: torch.device) -> None:
        self.threads, self.deterministic, self.device = threads, deterministic, device
        self.saved: tuple[Any, ...] | None = None

    def apply(self) -> None:
        self.saved = (
            torch.get_num_threads(),
            torch.are_deterministic_algorithms_enabled(),
            torch.is_deterministic_algorithms_warn_only_enabled(),
            torch.backends.cudnn.deterministic,
            torch.backends.cudnn.benchmark,
        )
        if self.threads:
            torch.set_num_threads(self.threads)
        if self.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.deterministic = True
            torch.backends.cudnn.benchmark = False
        elif self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True

    def restore(self) -> None:
        if self.saved is None:
            return
        threads, deterministic, warn_only, cudnn_deterministic, benchmark = self.saved
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        torch.backends.cudnn.deterministic = cudnn_deterministic
        torch.backends.cudnn.benchmark = benchmark
        self.saved = None


def amp_dtype(enabled: bool, requested: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``--amp`` / ``--amp-dtype`` on ``device`` (None: full precision)."""
    if not enabled:
        return None
    if requested == "fp16":
        return torch.float16
    if requested == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float16 if device.type == "mps" else torch.bfloat16
