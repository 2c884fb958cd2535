"""What a measurement ran on: CPU, cores, threads, GPU, library versions, measured matmul speed.

Shared by the scripts in benchmarks/ and by the experiments (cnnzoo.experiments), so every result
file starts with the same description of the machine. The matmul figure is measured, not looked
up: it is the ceiling a convolution (itself a matrix product in oneDNN or cuDNN) can approach on
this machine, so "achieved GFLOP/s" in a benchmark can be read as a fraction of it.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from typing import Any

import torch

__all__ = ["cpu_model", "header", "load_average", "machine_info", "matmul_gflops", "usable_cores"]


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def load_average() -> tuple[float, float, float] | None:
    try:
        return os.getloadavg()
    except (AttributeError, OSError):
        return None


def matmul_gflops(
    n: int = 1024,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    seconds: float = 1.0,
) -> float:
    """Median GFLOP/s of an ``n x n`` by ``n x n`` matrix product (2 n^3 FLOPs) over ~seconds."""
    device = torch.device(device)
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(2):
        a @ b
    sync()
    rates: list[float] = []
    start = time.perf_counter()
    while len(rates) < 3 or time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        a @ b
        sync()
        rates.append(2 * n**3 / (time.perf_counter() - t0) / 1e9)
    return statistics.median(rates)


def machine_info(*, measure: bool = True) -> dict[str, Any]:
    """A JSON-able description of this machine and its software, with measured matmul speed."""
    import torchvision

    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": usable_cores(),
        "torch_threads": torch.get_num_threads(),
        "load_average": load_average(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
    }
    if measure:
        info["matmul_gflops_fp32_cpu"] = round(matmul_gflops(), 1)
        if info["gpu"]:
            info["matmul_gflops_fp32_gpu"] = round(matmul_gflops(4096, device="cuda"), 1)
    return info


def header(info: dict[str, Any]) -> str:
    """The machine as two or three human lines, for the top of a result's output."""
    load = info.get("load_average")
    lines = [
        f"machine: {info['cpu']}, {info['cores']} cores, {info['torch_threads']} torch "
        f"thread{'' if info['torch_threads'] == 1 else 's'}"
        + (f", load average {load[0]:.1f}" if load else "")
        + (f", GPU {info['gpu']}" if info.get("gpu") else ", no GPU"),
        f"software: Python {info['python']}, torch {info['torch']}, "
        f"torchvision {info['torchvision']}",
    ]
    if "matmul_gflops_fp32_cpu" in info:
        peak = f"measured fp32 matmul (1024^3): {info['matmul_gflops_fp32_cpu']} GFLOP/s on CPU"
        if "matmul_gflops_fp32_gpu" in info:
            peak += f", {info['matmul_gflops_fp32_gpu']} GFLOP/s on GPU (4096^3)"
        lines.append(peak)
    return "\n".join(lines)


if __name__ == "__main__":
    print(header(machine_info()))
