"""Timing helpers shared by the benchmarks."""

import time

import numpy as np


def median_ms(contenders, repeats, warmup=1):
    """{name: median milliseconds} of the zero-argument callables, each run
    `warmup` times first (tracing), then in turn `repeats` times, so a machine
    that slows part-way slows them all alike."""
    for fn in contenders.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, fn in contenders.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: 1000 * float(np.median(t)) for name, t in times.items()}
