"""Gradients with torch.nn.grad's names: `<op>_input` and `<op>_weight`."""

from fastconv.reference import (  # noqa: F401  (the kernels replace these one family at a time)
    adaptive_avg_pool2d_input,
    adaptive_max_pool2d_input,
    avg_pool2d_input,
    conv2d_bias,
    conv2d_input,
    conv2d_weight,
    conv_transpose2d_input,
    conv_transpose2d_weight,
    lp_pool2d_input,
    max_pool2d_input,
    max_unpool2d_input,
    sum_pool2d_input,
)
