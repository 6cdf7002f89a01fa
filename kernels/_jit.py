"""JIT options, defined once for every kernel.

`FASTMATH` lets LLVM reassociate sums (so reductions vectorise) and contract to FMA.
It leaves out `nnan` and `ninf`: max pooling pads with -inf and must propagate NaN,
so those stay exact. Reassociation changes float results only at the rounding level,
which the tolerances of fastconv's contract allow.
"""

import numba

FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}


def serial(fn=None, *, fastmath=False, inline=False):
    """A compiled, cached single-threaded kernel or helper; `inline` helpers are
    inlined into their callers by Numba (no call, so loops fuse and vectorise there)."""
    decorate = numba.njit(cache=True, nogil=True, fastmath=FASTMATH if fastmath else False, inline="always" if inline else "never")
    return decorate(fn) if fn is not None else decorate


def parallel(fn=None, *, fastmath=False):
    """A compiled, cached kernel whose prange iterations own disjoint outputs."""
    decorate = numba.njit(cache=True, nogil=True, parallel=True, fastmath=FASTMATH if fastmath else False)
    return decorate(fn) if fn is not None else decorate
