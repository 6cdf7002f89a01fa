"""fastconv's thread count: Numba's parallel kernels, and the worker threads that run
fastconv's GEMMs (fastconv.kernels.gemm, single-threaded BLAS in each).

PyTorch's threads are never changed, so PyTorch can be timed with the same count.
Nor is NumPy's BLAS thread count, but for the duration of each of fastconv's
products, when it is one (restored after).
"""

from __future__ import annotations

import contextlib
import functools
import os

import numba
from numba.np.ufunc import parallel

from fastconv.params import is_int

# Numba's OpenMP workers (GNU libgomp) spin for milliseconds after each parallel kernel
# by default (GOMP_SPINCOUNT 300000), holding a core that fastconv's GEMM threads
# (1x1 convolutions) need next: on 2 cores a Winograd forward whose products ran on
# those threads took 19 ms right after a direct kernel, against 12 ms with a short
# spin. libgomp reads GOMP_SPINCOUNT when it loads, which
# is when Numba starts its threads (on the first parallel kernel, or a thread-count
# query); so Numba's starter is wrapped to start them with a short spin (about
# 0.2 ms: back-to-back kernels still find the workers awake) and to restore the
# environment after, so that a libgomp loaded later (PyTorch's own copy) keeps its
# default. A GOMP_SPINCOUNT or OMP_WAIT_POLICY set by the user is left alone. The
# threads are not started at import: PyTorch imported after Numba's threads have
# started runs its float64 (MKL) convolutions 15-25x slower.
SPIN_COUNT = "10000"


def _start_with_short_spin(start):
    @functools.wraps(start)
    def wrapper():
        if parallel._is_initialized or "GOMP_SPINCOUNT" in os.environ or "OMP_WAIT_POLICY" in os.environ:
            return start()
        os.environ["GOMP_SPINCOUNT"] = SPIN_COUNT
        try:
            return start()
        finally:
            os.environ.pop("GOMP_SPINCOUNT", None)

    wrapper.wrapped_by_fastconv = True
    return wrapper


if not getattr(parallel._launch_threads, "wrapped_by_fastconv", False):
    parallel._launch_threads = _start_with_short_spin(parallel._launch_threads)


def get_num_threads() -> int:
    """Threads fastconv's kernels run on, when called from this Python thread."""
    return numba.get_num_threads()


def set_num_threads(n: int) -> None:
    """Run fastconv's kernels (Numba's and the GEMMs') on n threads when called from
    this Python thread (Numba keeps the count per thread; other threads keep theirs,
    all cores unless they set it)."""
    if not is_int(n) or not 1 <= n <= numba.config.NUMBA_NUM_THREADS:
        raise ValueError(f"n must be an int in [1, {numba.config.NUMBA_NUM_THREADS}], got {n!r}")
    numba.set_num_threads(int(n))


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
