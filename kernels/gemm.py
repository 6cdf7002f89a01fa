"""Matrix products on fastconv's own threads: each of `threads` workers runs
single-threaded BLAS on a disjoint block of the output's rows.

OpenBLAS's own thread pool is never woken. Its workers spin for about 0.1 s after
every multi-threaded call (its default thread timeout; OPENBLAS_THREAD_TIMEOUT
shortens it only if set before NumPy loads, and PyTorch loads NumPy), and on a
machine with few cores they take a core from whatever runs next, Numba's kernels or
PyTorch's: measured on 2 cores, a 3x3 convolution took 32 ms right after a 1x1 one
(a GEMM) against 17 ms on its own. The workers here wait on a lock instead.

While a product runs, NumPy's BLAS is set to one thread (and restored after), so a
NumPy GEMM the user runs in another thread at that moment runs single-threaded too.
"""

import concurrent.futures
import functools
import importlib.util
import os
import threading

import numpy as np
from threadpoolctl import ThreadpoolController

MIN_ROWS = 16  # rows per block at least: a thinner GEMM runs far below BLAS's peak
# Threads worth dealing work to here, at most. On 16 cores (bench/scaling.py, two
# runs) the GEMM path stopped scaling past 4-8 threads, where Numba's parallel loops
# kept going: dcgan_up forward + backward took 16.5 ms on 16 threads by GEMM against
# 4.8 ms direct, res3x3_s2 19.4 against 8.1; on 4 threads GEMM still won (res3x3_s2
# 19.7 against 26.6 ms, decoder_up 19.2 against 25.3). Each product call spends
# 15-20 us in Python, under the GIL; what stops the scaling was not measured.
MOST_THREADS = 4
# Work per thread at least, in flops: handing a product to a worker costs about 80 us
# here (submitting it, waking the thread, waiting for it), the time of 10-15 MFLOP;
# a LeNet layer's 64x84x10 product took 17 us on the caller, 97 us split in two.
MIN_FLOPS = 1 << 24

_state = threading.Lock()
_users = 0
_restore: list = []
_executor: concurrent.futures.ThreadPoolExecutor | None = None
_workers = 0


def _inside(path, folder):
    return folder is not None and os.path.realpath(path).startswith(os.path.join(folder, ""))


def _package_folder(name):
    """The folder of an installed package, found without importing it (None if absent)."""
    spec = importlib.util.find_spec(name)
    return os.path.realpath(spec.submodule_search_locations[0]) if spec and spec.submodule_search_locations else None


@functools.cache
def numpy_blas():
    """NumPy's BLAS libraries: the BLAS libraries loaded (NumPy's, and SciPy's if
    loaded by then), but those inside PyTorch's package folder (its own BLAS; a path
    that merely contains 'torch', such as an environment in /opt/torch, is NumPy's)."""
    libs = ThreadpoolController().select(user_api="blas").lib_controllers
    torch = _package_folder("torch")
    return [lib for lib in libs if not _inside(lib.filepath, torch)]


def _set_threads(lib, count):
    """lib.set_num_threads(count), from whichever Python thread calls it (under
    _state). threadpoolctl (3.6 and later) lets only one Python thread set a
    pthreads OpenBLAS's process-wide count and silently ignores the others: a
    product started from any thread but the first ran on OpenBLAS's own pool, with
    other results. So the caller takes that control for the moment and gives it
    up after, as threadpoolctl's own limits do."""
    release = getattr(type(lib), "clear_controlling_thread", None)
    if release is not None:
        release(force=True)
    lib.set_num_threads(count)
    if release is not None:
        release(force=True)


def _enter():
    global _users, _restore
    with _state:
        if _users == 0:
            _restore = [(lib, lib.num_threads) for lib in numpy_blas()]
            for lib, _ in _restore:
                _set_threads(lib, 1)
        _users += 1


def _leave():
    global _users
    with _state:
        _users -= 1
        if _users == 0:
            for lib, count in _restore:
                _set_threads(lib, count)


def _forget_pool():
    """In a forked child: the parent's workers do not exist there (nor does whoever
    held the lock), so start afresh, NumPy's BLAS threads as they were if a product
    was running."""
    global _state, _users, _executor, _workers
    if _users:
        for lib, count in _restore:
            _set_threads(lib, count)
    _state, _users, _executor, _workers = threading.Lock(), 0, None, 0


os.register_at_fork(after_in_child=_forget_pool)


def _submit(threads, run, parts):
    """Futures of run(part) for each part, on an executor of at least threads - 1
    workers (the caller is the last one). The executor only grows, and is replaced
    under the lock that submissions hold, so none is shut down under a caller."""
    global _executor, _workers
    with _state:
        if _workers < threads - 1:
            if _executor is not None:
                _executor.shutdown(wait=False)  # its queued work still runs
            _executor = concurrent.futures.ThreadPoolExecutor(max_workers=threads - 1, thread_name_prefix="fastconv-gemm")
            _workers = threads - 1
        return [_executor.submit(run, part) for part in parts]


def threads_for(flops, threads):
    """Threads worth handing `flops` of products to: at most `threads`, MIN_FLOPS each
    (small ones on the caller alone)."""
    return max(1, min(threads, flops // MIN_FLOPS))


def blocks(batch, rows, threads):
    """(batch index, first row, end row) blocks of a stack of `batch` products with
    `rows` output rows each: every product whole, or split into rows so that there
    are at least `threads` blocks where the rows allow (none thinner than MIN_ROWS)."""
    splits = max(1, min(-(-threads // batch), rows // MIN_ROWS))
    edges = [rows * s // splits for s in range(splits + 1)]
    return [(b, edges[s], edges[s + 1]) for b in range(batch) for s in range(splits)]


def in_parallel(work, threads, run):
    """[run(part) for part in the contiguous parts of the list `work`], at most
    `threads` of them, each on its own thread (the caller's is the first), with
    NumPy's BLAS single-threaded throughout. Every item goes to one part, fixed by
    len(work) and threads alone, so reruns are bitwise identical."""
    parts = [work[len(work) * t // threads : len(work) * (t + 1) // threads] for t in range(threads)]
    parts = [part for part in parts if part]
    if not parts:
        return []
    futures = []
    _enter()
    try:
        futures = _submit(threads, run, parts[1:]) if len(parts) > 1 else []
        first = run(parts[0])
        return [first] + [future.result() for future in futures]
    finally:
        concurrent.futures.wait(futures)  # no worker still in BLAS when its threads are restored
        _leave()


def matmul(a, b, out, threads, accumulate=False):
    """out = a @ b (or out += a @ b when `accumulate`), with np.matmul's rules for
    stacks: a (..., M, K), b (..., K, N), out (..., M, N) C-contiguous with the
    broadcast stack shape; the blocks of `blocks` run in_parallel (on fewer
    threads for a small product, MIN_FLOPS each), so every output element is
    written by one BLAS call."""
    stack = out.shape[:-2]
    a = np.broadcast_to(a, stack + a.shape[-2:])
    b = np.broadcast_to(b, stack + b.shape[-2:])
    index = list(np.ndindex(stack))
    threads = threads_for(2 * out.size * a.shape[-1], threads)

    def run(part):
        # IEEE arithmetic on infinities and NaN, silently, as in PyTorch (NumPy's
        # warnings are per thread)
        with np.errstate(invalid="ignore", over="ignore"):
            for i, m0, m1 in part:
                at = index[i]
                if accumulate:
                    out[at][m0:m1] += a[at][m0:m1] @ b[at]
                else:
                    np.matmul(a[at][m0:m1], b[at], out=out[at][m0:m1])

    in_parallel(blocks(len(index), out.shape[-2], threads), threads, run)
    return out
