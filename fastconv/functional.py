"""Forward operators with torch.nn.functional's signatures (NCHW arrays)."""

from __future__ import annotations

from fastconv import dispatch
from fastconv import params as P
from fastconv.reference import (  # noqa: F401  (pooling runs on the reference until its kernels land)
    adaptive_avg_pool2d,
    adaptive_max_pool2d,
    avg_pool2d,
    lp_pool2d,
    max_pool2d,
    max_unpool2d,
    sum_pool2d,
)


def _unbatch(out, unbatched):
    return out[0] if unbatched else out


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """2-D cross-correlation, as torch.nn.functional.conv2d.

    Args:
        input: (N, C_in, H, W) or unbatched (C_in, H, W), float32 or float64.
        weight: (C_out, C_in / groups, kH, kW).
        bias: (C_out,) or None.
        stride, dilation: int or (sH, sW).
        padding: int, (pH, pW), ((top, bottom), (left, right)), 'valid' or 'same'.
        groups: input and output channels are split into this many groups.

    Shape:
        output (N, C_out, H_out, W_out) with
        H_out = floor((H + top + bottom - dilation * (kH - 1) - 1) / stride) + 1.
    """
    x, w, b, g, unbatched = P.conv2d_arguments(input, weight, bias, stride, padding, dilation, groups)
    return _unbatch(dispatch.add_bias(dispatch.forward(x, w, g), b), unbatched)


def conv_transpose2d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    """Transposed 2-D convolution, as torch.nn.functional.conv_transpose2d.

    Args:
        input: (N, C_in, H, W) or unbatched (C_in, H, W).
        weight: (C_in, C_out / groups, kH, kW) (IOHW).
        bias: (C_out,) or None.
        output_padding: extra rows/columns at the bottom/right, smaller than stride or dilation.

    Shape:
        H_out = (H - 1) * stride - 2 * padding + dilation * (kH - 1) + output_padding + 1.
    """
    x, w, b, g, unbatched = P.conv_transpose2d_arguments(input, weight, bias, stride, padding, output_padding, groups, dilation)
    return _unbatch(dispatch.add_bias(dispatch.input_grad(w, x, g), b), unbatched)
