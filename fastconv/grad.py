"""Gradients with torch.nn.grad's names: `<op>_input` and `<op>_weight` (and bias).

Each takes what the backward pass has (the forward's input or its size, the weight
or its size, and grad_output) and the forward's arguments, and returns the gradient
with the shape of the corresponding forward argument.
"""

from __future__ import annotations

import numpy as np

from fastconv import dispatch
from fastconv import params as P
from fastconv.functional import adaptive_windows, lp_power_sum
from fastconv.kernels import pool as K


def conv2d_input(input_size, weight, grad_output, stride=1, padding=0, dilation=1, groups=1):
    """Gradient of conv2d with respect to its input: (N, C_in, H, W) = input_size."""
    w, gy, g = P.conv2d_input_arguments(input_size, weight, grad_output, stride, padding, dilation, groups)
    return dispatch.input_grad(w, gy, g)


def conv2d_weight(input, weight_size, grad_output, stride=1, padding=0, dilation=1, groups=1):
    """Gradient of conv2d with respect to its weight: (C_out, C_in / groups, kH, kW) = weight_size."""
    x, gy, g = P.conv2d_weight_arguments(input, weight_size, grad_output, stride, padding, dilation, groups)
    return dispatch.weight_grad(x, gy, g)


def conv2d_bias(grad_output):
    """Gradient of conv2d (or conv_transpose2d) with respect to its bias: (C_out,)."""
    gy = P.as_float_array(grad_output, "grad_output")
    P.check_ndim(gy, "grad_output")
    return dispatch.bias_grad(gy)


def conv_transpose2d_input(input_size, weight, grad_output, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    """Gradient of conv_transpose2d with respect to its input: a conv2d of grad_output."""
    w, gy, g = P.conv_transpose2d_input_arguments(input_size, weight, grad_output, stride, padding, output_padding, groups, dilation)
    return dispatch.forward(gy, w, g)


def conv_transpose2d_weight(input, weight_size, grad_output, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    """Gradient of conv_transpose2d with respect to its weight: (C_in, C_out / groups, kH, kW)."""
    x, gy, g = P.conv_transpose2d_weight_arguments(input, weight_size, grad_output, stride, padding, output_padding, groups, dilation)
    return dispatch.weight_grad(gy, x, g)


def _contiguous(x):
    return np.ascontiguousarray(x)


def max_pool2d_input(input, grad_output, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, indices=None):
    """Gradient of max_pool2d: each output's gradient goes to its window's argmax
    (the saved indices, or found again), summed where windows overlap."""
    x, gy, g = P.pool_grad_arguments(input, grad_output, kernel_size, stride, padding, dilation, ceil_mode)
    gx = np.empty(x.shape, dtype=x.dtype)
    if indices is None:
        K.max_pool_backward(_contiguous(x), _contiguous(gy), gx, g.kh, g.kw, g.sh, g.sw, g.ph, g.pw, g.dh, g.dw)
    else:
        K.scatter_to_indices(_contiguous(gy), _contiguous(P.checked_indices(indices, g.output_shape)), gx)
    return gx


def max_unpool2d_input(grad_output, indices):
    """Gradient of max_unpool2d with respect to its input: grad_output at the indices."""
    gy, idx = P.unpool_grad_arguments(grad_output, indices)
    gx = np.empty(idx.shape, dtype=gy.dtype)
    K.gather_indices(_contiguous(gy), _contiguous(idx), gx)
    return gx


def _average_input(gy, g, count_include_pad, divisor):
    gx = np.empty((g.n, g.c, g.h, g.w), dtype=gy.dtype)
    K.avg_pool_backward(_contiguous(gy), gx, g.kh, g.kw, g.sh, g.sw, g.ph, g.pw, count_include_pad, divisor)
    return gx


def avg_pool2d_input(input_size, grad_output, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True, divisor_override=None):
    """Gradient of avg_pool2d: each output's gradient / divisor to every real cell."""
    gy, g = P.pool_size_grad_arguments(input_size, grad_output, kernel_size, stride, padding, ceil_mode)
    include_pad = P.check_bool(count_include_pad, "count_include_pad")
    return _average_input(gy, g, include_pad, P.divisor(divisor_override) or 0)


def sum_pool2d_input(input_size, grad_output, kernel_size, stride=None, padding=0, ceil_mode=False):
    """Gradient of sum_pool2d: each output's gradient to every real cell of its window."""
    gy, g = P.pool_size_grad_arguments(input_size, grad_output, kernel_size, stride, padding, ceil_mode)
    return _average_input(gy, g, True, 1)


def lp_pool2d_input(input, grad_output, norm_type, kernel_size, stride=None, ceil_mode=False):
    """Gradient of lp_pool2d; a window whose power sum is zero passes no gradient
    (as PyTorch's autograd of its formula)."""
    x, gy = P.lp_grad_arguments(input, grad_output)
    g = P.lp_geometry(x.shape, norm_type, kernel_size, stride, ceil_mode)
    P.check_grad_output(gy, g.output_shape)
    p = norm_type
    s = lp_power_sum(x, g, p)
    with np.errstate(invalid="ignore", divide="ignore"):
        ds = np.where(s == 0, 0.0, gy * np.power(s, 1.0 / p - 1.0) / p) * (g.kh * g.kw)
        gx = _average_input(ds.astype(x.dtype, copy=False), g, True, 0)
        gx *= 2 * x if p == 2 else p * np.power(x, p - 1)
    return gx


def adaptive_avg_pool2d_input(input_size, grad_output):
    """Gradient of adaptive_avg_pool2d; the output size is grad_output's."""
    (n, c, h, w), gy = P.adaptive_avg_grad_arguments(input_size, grad_output)
    gx = np.empty((n, c, h, w), dtype=gy.dtype)
    K.adaptive_avg_pool_backward(_contiguous(gy), gx, *adaptive_windows((n, c, h, w), gy.shape[2:]))
    return gx


def adaptive_max_pool2d_input(input, grad_output, indices=None):
    """Gradient of adaptive_max_pool2d; the output size is grad_output's."""
    x, gy = P.adaptive_max_grad_arguments(input, grad_output)
    if indices is None:
        out = np.empty(gy.shape, dtype=x.dtype)
        idx = np.empty(gy.shape, dtype=np.int64)
        K.adaptive_max_pool(_contiguous(x), out, idx, *adaptive_windows(x.shape, gy.shape[2:]))
    else:
        idx = P.checked_indices(indices, gy.shape)
    gx = np.empty(x.shape, dtype=x.dtype)
    K.scatter_to_indices(_contiguous(gy), _contiguous(idx), gx)
    return gx
