"""Timing helpers shared by the backends (standard library only).

Method (docs/METHOD.md of the device notes, and the usual microbenchmark practice):
warm-up calls first (module load, handle creation, allocator growth stay out of the numbers),
then repeated calls on inputs rotated among several sets so that caches do not flatter the
result, and the median of the repeats. The number of repeats adapts to a time budget per case.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Callable


@dataclass
class Case:
    """One benchmark case: ``run()`` returns the records it measured (usually one)."""

    name: str
    op: str
    run: Callable[[], list[dict]]
    weight: float = 1.0  # rough relative cost, for the progress bar


@dataclass
class Timing:
    median_s: float
    repeats: int
    stream_s: float | None = None
    all_s: list[float] = field(default_factory=list)


def median(xs) -> float:
    return float(statistics.median(xs))


def n_repeats(estimate_s: float, budget_s: float, min_reps: int, max_reps: int) -> int:
    if estimate_s <= 0:
        return max_reps
    return int(max(min_reps, min(max_reps, budget_s / estimate_s)))


def n_sets(bytes_per_set: float, cache_bytes: float, max_total_bytes: float, cap: int = 256) -> int:
    """How many input sets to rotate among: enough that they overflow the last-level cache three
    times over, at least 2, at most ``cap`` and within ``max_total_bytes``."""
    want = int(-(-3 * cache_bytes // max(bytes_per_set, 1)))  # ceil
    fit = int(max_total_bytes // max(bytes_per_set, 1))
    return max(2, min(cap, want, max(fit, 2)))


def time_host(fn: Callable[[int], object], nsets: int, *, warmup: int = 2, budget_s: float = 0.3,
              min_reps: int = 5, max_reps: int = 50, sync: Callable[[], None] | None = None,
              clock: Callable[[], float] = time.perf_counter) -> Timing:
    """Median of host-clock timings of ``fn(i)`` (i = the input set), synchronising after each call
    when ``sync`` is given (a CPU backend needs none). ``clock``: wall time (perf_counter), or
    time.thread_time for single-threaded CPU work on a shared host: the time the thread ran,
    without the time other processes held the core."""
    sync = sync or (lambda: None)
    for i in range(warmup):
        fn(i % nsets)
    sync()
    t0 = clock()
    fn(warmup % nsets)
    sync()
    est = clock() - t0
    reps = n_repeats(est, budget_s, min_reps, max_reps)
    times = []
    for r in range(reps):
        t0 = clock()
        fn((r + warmup + 1) % nsets)
        sync()
        times.append(clock() - t0)
    return Timing(median(times), reps, None, times)
