"""fastconv's thread count: Numba's parallel kernels and the BLAS they hand GEMMs to.

PyTorch's own threads are left alone, so both can be timed with the same count.
"""

from __future__ import annotations

import contextlib
import os

import numba
from threadpoolctl import ThreadpoolController


def _blas_pools():
    """NumPy's and SciPy's BLAS thread pools (never another library's, e.g. torch's)."""
    pools = ThreadpoolController().select(user_api="blas").lib_controllers
    return [pool for pool in pools if "torch" not in pool.filepath]


def get_num_threads() -> int:
    """Threads fastconv's kernels run on."""
    return numba.get_num_threads()


def set_num_threads(n: int) -> None:
    """Run fastconv's kernels (Numba and the BLAS they call) on n threads."""
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= numba.config.NUMBA_NUM_THREADS:
        raise ValueError(f"n must be an int in [1, {numba.config.NUMBA_NUM_THREADS}], got {n!r}")
    numba.set_num_threads(n)
    for pool in _blas_pools():
        pool.set_num_threads(n)


@contextlib.contextmanager
def num_threads(n: int):
    """Context manager: run fastconv on n threads inside, restore the count after."""
    before = get_num_threads()
    blas_before = [(pool, pool.num_threads) for pool in _blas_pools()]
    set_num_threads(n)
    try:
        yield
    finally:
        numba.set_num_threads(before)
        for pool, count in blas_before:
            pool.set_num_threads(count)


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
