"""fastconv's thread count: Numba's parallel kernels, and the worker threads that run
fastconv's GEMMs (fastconv.kernels.gemm, single-threaded BLAS in each).

PyTorch's threads are never changed, so PyTorch can be timed with the same count.
Nor is NumPy's BLAS thread count, but for the duration of each of fastconv's
products, when it is one (restored after).
"""

from __future__ import annotations

import contextlib
import os

import numba

# Numba's OpenMP workers (GNU libgomp) spin for milliseconds after each parallel kernel
# by default (GOMP_SPINCOUNT 300000), holding a core that fastconv's GEMM threads
# need next: on 2 cores a Winograd forward right after a direct kernel took 19 ms,
# against 12 ms with a short spin. libgomp reads GOMP_SPINCOUNT when it loads, which
# is when Numba starts its threads; so they start here, with a short spin (about
# 0.2 ms: back-to-back Numba kernels still find the workers awake), and the
# environment is restored after, so that a libgomp loaded later (PyTorch's own copy)
# keeps its default. A GOMP_SPINCOUNT or OMP_WAIT_POLICY set by the user is left
# alone, as is a pool that Numba has already started.
SPIN_COUNT = "10000"


def _start_numba_threads() -> None:
    if "GOMP_SPINCOUNT" in os.environ or "OMP_WAIT_POLICY" in os.environ:
        return
    os.environ["GOMP_SPINCOUNT"] = SPIN_COUNT
    try:
        numba.get_num_threads()  # starts Numba's pool, loading its threading layer
    finally:
        del os.environ["GOMP_SPINCOUNT"]


_start_numba_threads()


def get_num_threads() -> int:
    """Threads fastconv's kernels run on."""
    return numba.get_num_threads()


def set_num_threads(n: int) -> None:
    """Run fastconv's kernels (Numba's and the GEMMs') on n threads."""
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= numba.config.NUMBA_NUM_THREADS:
        raise ValueError(f"n must be an int in [1, {numba.config.NUMBA_NUM_THREADS}], got {n!r}")
    numba.set_num_threads(n)


@contextlib.contextmanager
def num_threads(n: int):
    """Context manager: run fastconv on n threads inside, restore the count after."""
    before = get_num_threads()
    set_num_threads(n)
    try:
        yield
    finally:
        numba.set_num_threads(before)


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
