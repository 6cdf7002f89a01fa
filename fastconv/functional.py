"""Forward operators with torch.nn.functional's signatures (NCHW arrays)."""

from __future__ import annotations

import numpy as np

from fastconv import dispatch
from fastconv import params as P
from fastconv.kernels import pool as K
from fastconv.threads import get_num_threads


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


def _contiguous(x):
    return np.ascontiguousarray(x)


def _row_blocks(planes, rows):
    """Parts each plane's output rows are split into, so that few planes still give
    every thread work (two iterations per thread at least)."""
    threads = get_num_threads()
    return 1 if planes >= 2 * threads or planes == 0 else min(rows, -(-2 * threads // planes))


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    """Max pooling, as torch.nn.functional.max_pool2d.

    Padding is -inf; the first maximum in row-major window order wins and NaN
    propagates. With return_indices, also returns int64 flat indices (h * W + w) into
    each input plane, for max_pool2d_input and max_unpool2d.

    Shape:
        H_out = floor((H + 2 * padding - dilation * (kH - 1) - 1 + (stride - 1 if ceil_mode)) / stride) + 1,
        less one where ceil_mode would start the last window in the bottom padding.
    """
    x, unbatched = P.pool_input(input)
    g = P.pool2d_geometry(x.shape, kernel_size, stride, padding, dilation, ceil_mode)
    out = np.empty(g.output_shape, dtype=x.dtype)
    indices = np.empty(g.output_shape if return_indices else (1, 1, 1, 1), dtype=np.int64)
    K.max_pool(_contiguous(x), out, indices, g.kh, g.kw, g.sh, g.sw, g.ph, g.pw, g.dh, g.dw, bool(return_indices), _row_blocks(g.n * g.c, g.oh))
    if return_indices:
        return (out[0], indices[0]) if unbatched else (out, indices)
    return _unbatch(out, unbatched)


def max_unpool2d(input, indices, kernel_size, stride=None, padding=0, output_size=None):
    """Inverse of max_pool2d: each value goes to its flat index in a zero plane.

    Shape: H_out = (H - 1) * stride - 2 * padding + kH, unless output_size (within one
    stride of that) says otherwise.
    """
    x, idx, (oh, ow), unbatched = P.unpool_arguments(input, indices, kernel_size, stride, padding, output_size)
    out = np.empty(x.shape[:2] + (oh, ow), dtype=x.dtype)
    K.max_unpool(_contiguous(x), _contiguous(idx), out)
    return _unbatch(out, unbatched)


def _average(x, g, count_include_pad, divisor):
    out = np.empty(g.output_shape, dtype=x.dtype)
    K.avg_pool(_contiguous(x), out, g.kh, g.kw, g.sh, g.sw, g.ph, g.pw, count_include_pad, divisor, _row_blocks(g.n * g.c, g.oh))
    return out


def avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True, divisor_override=None):
    """Average pooling, as torch.nn.functional.avg_pool2d.

    The divisor counts padding with count_include_pad (never the ceil_mode overhang),
    else only real cells; divisor_override replaces both. Output size as max_pool2d.
    """
    x, unbatched = P.pool_input(input)
    g = P.pool2d_geometry(x.shape, kernel_size, stride, padding, 1, ceil_mode)
    include_pad = P.check_bool(count_include_pad, "count_include_pad")  # in argument order, as the reference
    return _unbatch(_average(x, g, include_pad, P.divisor(divisor_override) or 0), unbatched)


def sum_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False):
    """Sum pooling: the sum of each window's real cells (padding adds zero)."""
    x, unbatched = P.pool_input(input)
    g = P.pool2d_geometry(x.shape, kernel_size, stride, padding, 1, ceil_mode)
    return _unbatch(_average(x, g, True, 1), unbatched)


def lp_power_sum(x, g, norm_type):
    """PyTorch's avg_pool2d(x ** p) * kH * kW (which rescales a ceil_mode overhang)."""
    powered = x * x if norm_type == 2 else np.power(x, norm_type)
    return _average(powered, g, True, 0) * (g.kh * g.kw)


def lp_pool2d(input, norm_type, kernel_size, stride=None, ceil_mode=False):
    """Power-average pooling, as torch.nn.functional.lp_pool2d: (sum of x^p)^(1/p)
    over each window; norm_type 2 is L2 pooling. No padding."""
    x, unbatched = P.pool_input(input)
    g = P.lp_geometry(x.shape, norm_type, kernel_size, stride, ceil_mode)
    s = lp_power_sum(x, g, norm_type)
    with np.errstate(invalid="ignore"):
        out = np.sqrt(s) if norm_type == 2 else np.power(s, 1.0 / norm_type)
    return _unbatch(out.astype(x.dtype, copy=False), unbatched)


def adaptive_windows(x_shape, output_size):
    oh, ow = P.adaptive_output_size(x_shape, output_size)
    return (*P.adaptive_windows(x_shape[2], oh), *P.adaptive_windows(x_shape[3], ow))


def adaptive_avg_pool2d(input, output_size):
    """Adaptive average pooling: output cell o averages input [floor(o*I/O), ceil((o+1)*I/O))."""
    x, unbatched = P.pool_input(input)
    windows = adaptive_windows(x.shape, output_size)
    out = np.empty(x.shape[:2] + (len(windows[0]), len(windows[2])), dtype=x.dtype)
    K.adaptive_avg_pool(_contiguous(x), out, *windows)
    return _unbatch(out, unbatched)


def adaptive_max_pool2d(input, output_size, return_indices=False):
    """Adaptive max pooling: adaptive_avg_pool2d's windows, max_pool2d's tie rule."""
    x, unbatched = P.pool_input(input)
    windows = adaptive_windows(x.shape, output_size)
    out = np.empty(x.shape[:2] + (len(windows[0]), len(windows[2])), dtype=x.dtype)
    indices = np.empty(out.shape, dtype=np.int64)
    K.adaptive_max_pool(_contiguous(x), out, indices, *windows)
    if unbatched:
        out, indices = out[0], indices[0]
    return (out, indices) if return_indices else out
