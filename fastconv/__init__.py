"""fastconv: Numba-JIT CPU kernels for CNN operators, with PyTorch's semantics.

Forward operators live here (as in torch.nn.functional), gradients in
`fastconv.grad` (as in torch.nn.grad), the NumPy specification in
`fastconv.reference`. Arrays are NCHW, conv weights OIHW, transposed-conv weights IOHW.
"""

import os

# NumPy's OpenBLAS keeps each worker thread spinning for about 0.1 s after a
# multi-threaded GEMM (its default thread timeout, 2**28 cycles), taking cores from
# whatever runs next. fastconv's own GEMMs never wake those workers (they run
# single-threaded on fastconv's threads: fastconv.kernels.gemm), but NumPy code around
# it does, the NumPy reference among it. A timeout of 2**4 cycles puts them to sleep at
# once. OpenBLAS reads it when it loads, so this works when fastconv is imported before
# NumPy (as in `python -m fastconv`); a value already set is kept.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

from fastconv import grad, reference  # noqa: E402
from fastconv.functional import (  # noqa: E402
    adaptive_avg_pool2d,
    adaptive_max_pool2d,
    avg_pool2d,
    conv2d,
    conv_transpose2d,
    lp_pool2d,
    max_pool2d,
    max_unpool2d,
    sum_pool2d,
)
from fastconv.threads import get_num_threads, num_threads, set_num_threads  # noqa: E402
from fastconv.warmup import warmup  # noqa: E402

__all__ = [
    "adaptive_avg_pool2d",
    "adaptive_max_pool2d",
    "avg_pool2d",
    "conv2d",
    "conv_transpose2d",
    "grad",
    "lp_pool2d",
    "max_pool2d",
    "max_unpool2d",
    "reference",
    "sum_pool2d",
    "get_num_threads",
    "num_threads",
    "set_num_threads",
    "warmup",
]
__version__ = "0.1.0"
