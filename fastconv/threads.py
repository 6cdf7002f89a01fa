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
