"""Shared by the benchmarks: the median time of a piece of work, and the machine it ran on."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable

import torch


def median_time(work: Callable[[], object], repeats: int) -> float:
    """Median seconds of `work()` over `repeats` calls, after one warm-up call (allocator,
    lazy initialisation, first-use imports)."""
    work()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def machine() -> str:
    """The CPU model, cores and torch's threads: speed depends on them (an Intel Xeon pays
    for subnormal floats where an AMD EPYC did not), so every table names them."""
    return (f"{cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__} with "
            f"{torch.get_num_threads()} threads")


def cpu_model() -> str:
    """The CPU's name as /proc/cpuinfo gives it, with its family and model numbers (a
    virtual machine may name only the brand: "AMD EPYC")."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            first = info.read().split("\n\n")[0]
    except OSError:
        return platform.processor() or platform.machine()
    fields = dict((key.strip(), value.strip()) for key, _, value in
                  (line.partition(":") for line in first.splitlines()))
    return (f"{fields.get('model name', platform.machine())} (family "
            f"{fields.get('cpu family', '?')}, model {fields.get('model', '?')})")
