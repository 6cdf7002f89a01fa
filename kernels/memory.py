"""A parallel copy: the machine's memory bandwidth, measured the way the pooling
kernels use it (every thread streaming its own part)."""

from numba import prange

from ._jit import parallel


@parallel
def copy(src, dst):
    """dst[:] = src[:] for 1-D arrays, in 64 KiB-element blocks across threads."""
    n = src.shape[0]
    block = 1 << 16
    for b in prange((n + block - 1) // block):
        for i in range(b * block, min(n, (b + 1) * block)):
            dst[i] = src[i]
