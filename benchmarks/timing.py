"""Shared by the benchmarks: the median time of a piece of work."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


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
