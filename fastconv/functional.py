"""Forward operators with torch.nn.functional's signatures (NCHW arrays)."""

from fastconv.reference import (  # noqa: F401  (the kernels replace these one family at a time)
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
