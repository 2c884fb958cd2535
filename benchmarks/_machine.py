"""The benchmarks' machine description now lives in the package (cnnzoo.machine)."""

from cnnzoo.machine import (
    cpu_model,
    header,
    load_average,
    machine_info,
    matmul_gflops,
    usable_cores,
)

__all__ = ["cpu_model", "header", "load_average", "machine_info", "matmul_gflops", "usable_cores"]
