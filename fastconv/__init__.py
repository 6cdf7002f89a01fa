"""fastconv: Numba-JIT CPU kernels for CNN operators, with PyTorch's semantics.

Forward operators live here (as in torch.nn.functional), gradients in
`fastconv.grad` (as in torch.nn.grad), the NumPy specification in
`fastconv.reference`. Arrays are NCHW, conv weights OIHW, transposed-conv weights IOHW.
"""

from fastconv import grad, reference
from fastconv.functional import (
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
from fastconv.threads import get_num_threads, num_threads, set_num_threads
from fastconv.warmup import warmup

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
