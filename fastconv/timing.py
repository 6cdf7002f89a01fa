"""Honest timing on a shared, noisy machine: implementations run interleaved (one
timed call of each per round, so a disturbance hits all alike) and the median is
kept.

Each timed call follows untimed calls of the same implementation, for at least
SETTLE_S. PyTorch and Numba each bring their own OpenMP runtime, and each keeps its
threads spinning for a few milliseconds after a parallel region, so a call made
right after the other library's shares the cores with those spinning threads
(measured: fastconv's depthwise forward + backward 12.4 ms right after PyTorch's,
7.6 ms after its own). One settling call was not enough for calls shorter than
the spin: a 0.2 ms forward timed after one call of its own took up to 1.5x its
time in a loop of its own calls, in either library. The settling calls let each
be timed as it runs in a loop of its own calls.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

SETTLE_S = 0.005  # longer than the OpenMP runtimes' spin after a parallel region


def interleaved_medians(calls: dict[str, Callable[[], object]], rounds: int = 7, budget_s: float = 3.0) -> dict[str, float]:
    """Median seconds per call of each callable. Each is called once first (warm-up,
    compilation), then in `rounds` interleaved rounds, fewer if the budget runs out
    (never fewer than 3); in a round each is called for at least SETTLE_S (once at
    least), then once more, timed."""
    for fn in calls.values():
        fn()
    samples: dict[str, list[float]] = {name: [] for name in calls}
    start = time.perf_counter()
    for r in range(rounds):
        for name, fn in calls.items():
            settle = time.perf_counter() + SETTLE_S
            fn()
            while time.perf_counter() < settle:
                fn()
            t0 = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - t0)
        if r >= 2 and time.perf_counter() - start > budget_s:
            break
    return {name: statistics.median(ts) for name, ts in samples.items()}
