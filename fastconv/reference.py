"""The NumPy reference: the specification every kernel is judged against.

Same names and signatures as `fastconv` (forward) and `fastconv.grad` (gradients),
written for clarity rather than speed, and never calling the kernels. Convolution
is im2col + matmul; pooling gathers the same im2col windows. Results have the
input's dtype.

The one helper pair everything rests on:
- `_im2col` gathers, for each kernel offset (i, j), the input cells it meets at every
  output position: cols[n, c, i, j, y, x] = padded[n, c, y*sh + i*dh, x*sw + j*dw].
- `_col2im` is its adjoint: it adds cols back onto the cells they came from.
"""

from __future__ import annotations

import numpy as np

from fastconv import params as P

# ------------------------------------------------------------- im2col / col2im


def _window_extent(out: int, kernel: int, stride: int, dilation: int) -> int:
    """Rows (or columns) of padded input that `out` windows span."""
    return (out - 1) * stride + (kernel - 1) * dilation + 1


def _pad(x, top, bottom, left, right, oh, ow, kh, kw, sh, sw, dh, dw, fill=0.0):
    """Pad x, then extend bottom/right so that every window lies inside (ceil_mode
    overhang), or crop where the windows do not reach the end of the padding."""
    n, c, h, w = x.shape
    full_h = max(h + top + bottom, _window_extent(oh, kh, sh, dh))
    full_w = max(w + left + right, _window_extent(ow, kw, sw, dw))
    xp = np.full((n, c, full_h, full_w), fill, dtype=x.dtype)
    xp[:, :, top : top + h, left : left + w] = x
    return xp


def _im2col(xp, kh, kw, sh, sw, dh, dw, oh, ow):
    """(N, C, Hp, Wp) padded input -> (N, C, kh, kw, oh, ow) windows."""
    n, c = xp.shape[:2]
    cols = np.empty((n, c, kh, kw, oh, ow), dtype=xp.dtype)
    for i in range(kh):
        for j in range(kw):
            cols[:, :, i, j] = xp[:, :, i * dh : i * dh + sh * (oh - 1) + 1 : sh, j * dw : j * dw + sw * (ow - 1) + 1 : sw]
    return cols


def _col2im(cols, padded_shape, sh, sw, dh, dw):
    """Adjoint of _im2col: (N, C, kh, kw, oh, ow) -> (N, C, Hp, Wp), summing overlaps."""
    n, c, kh, kw, oh, ow = cols.shape
    xp = np.zeros(padded_shape, dtype=cols.dtype)
    for i in range(kh):
        for j in range(kw):
            xp[:, :, i * dh : i * dh + sh * (oh - 1) + 1 : sh, j * dw : j * dw + sw * (ow - 1) + 1 : sw] += cols[:, :, i, j]
    return xp


# ----------------------------------------------------------------- convolution


def _conv_cols(x, g: P.ConvGeometry):
    """Windows of x grouped for matmul: (N, groups, C_in/groups * kh * kw, oh * ow)."""
    xp = _pad(x, g.pt, g.pb, g.pl, g.pr, g.oh, g.ow, g.kh, g.kw, g.sh, g.sw, g.dh, g.dw)
    cols = _im2col(xp, g.kh, g.kw, g.sh, g.sw, g.dh, g.dw, g.oh, g.ow)
    return cols.reshape(g.n, g.groups, g.c_in // g.groups * g.kh * g.kw, g.oh * g.ow)


def _conv_forward(x, weight, g: P.ConvGeometry):
    w = weight.reshape(g.groups, g.c_out // g.groups, -1)
    return np.matmul(w, _conv_cols(x, g)).reshape(g.output_shape)


def _conv_input_grad(weight, grad_output, g: P.ConvGeometry):
    w = weight.reshape(g.groups, g.c_out // g.groups, -1)
    gy = grad_output.reshape(g.n, g.groups, g.c_out // g.groups, g.oh * g.ow)
    cols = np.matmul(w.swapaxes(1, 2), gy).reshape(g.n, g.c_in, g.kh, g.kw, g.oh, g.ow)
    padded = _pad(np.zeros(g.input_shape, grad_output.dtype), g.pt, g.pb, g.pl, g.pr, g.oh, g.ow, g.kh, g.kw, g.sh, g.sw, g.dh, g.dw)
    xp = _col2im(cols, padded.shape, g.sh, g.sw, g.dh, g.dw)
    return xp[:, :, g.pt : g.pt + g.h, g.pl : g.pl + g.w]


def _conv_weight_grad(x, grad_output, g: P.ConvGeometry):
    gy = grad_output.reshape(g.n, g.groups, g.c_out // g.groups, g.oh * g.ow)
    gw = np.einsum("ngkp,ngrp->gkr", gy, _conv_cols(x, g))
    return gw.reshape(g.weight_shape).astype(x.dtype, copy=False)


def _finish(out, bias, unbatched):
    if bias is not None:
        out = out + bias.reshape(1, -1, 1, 1)
    return out[0] if unbatched else out


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """2-D cross-correlation, as torch.nn.functional.conv2d. (N, C, H, W) -> (N, K, oh, ow)."""
    x, w, b, g, unbatched = P.conv2d_arguments(input, weight, bias, stride, padding, dilation, groups)
    return _finish(_conv_forward(x, w, g), b, unbatched)


def conv2d_input(input_size, weight, grad_output, stride=1, padding=0, dilation=1, groups=1):
    """Gradient of conv2d with respect to its input, shape input_size."""
    w, gy, g = P.conv2d_input_arguments(input_size, weight, grad_output, stride, padding, dilation, groups)
    return _conv_input_grad(w, gy, g)


def conv2d_weight(input, weight_size, grad_output, stride=1, padding=0, dilation=1, groups=1):
    """Gradient of conv2d with respect to its weight, shape weight_size."""
    x, gy, g = P.conv2d_weight_arguments(input, weight_size, grad_output, stride, padding, dilation, groups)
    return _conv_weight_grad(x, gy, g)


def conv2d_bias(grad_output):
    """Gradient of conv2d (or conv_transpose2d) with respect to its bias: (K,)."""
    gy = P.as_float_array(grad_output, "grad_output")
    P.check_ndim(gy, "grad_output")
    return gy.sum(axis=(0, 2, 3))


def conv_transpose2d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    """Transposed convolution, as torch.nn.functional.conv_transpose2d (IOHW weight).

    It is the input gradient of the convolution whose OIHW weight is this IOHW weight.
    """
    x, w, b, g, unbatched = P.conv_transpose2d_arguments(input, weight, bias, stride, padding, output_padding, groups, dilation)
    return _finish(_conv_input_grad(w, x, g), b, unbatched)


def conv_transpose2d_input(input_size, weight, grad_output, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    """Gradient of conv_transpose2d with respect to its input: a conv2d of grad_output."""
    w, gy, g = P.conv_transpose2d_input_arguments(input_size, weight, grad_output, stride, padding, output_padding, groups, dilation)
    return _conv_forward(gy, w, g)


def conv_transpose2d_weight(input, weight_size, grad_output, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    """Gradient of conv_transpose2d with respect to its IOHW weight."""
    x, gy, g = P.conv_transpose2d_weight_arguments(input, weight_size, grad_output, stride, padding, output_padding, groups, dilation)
    return _conv_weight_grad(gy, x, g)


# --------------------------------------------------------------------- pooling


def _pool_cols(x, g: P.PoolGeometry, fill):
    xp = _pad(x, g.ph, g.ph, g.pw, g.pw, g.oh, g.ow, g.kh, g.kw, g.sh, g.sw, g.dh, g.dw, fill)
    return _im2col(xp, g.kh, g.kw, g.sh, g.sw, g.dh, g.dw, g.oh, g.ow), xp.shape


def _pool_scatter(cols, g: P.PoolGeometry, padded_shape):
    """Add window contributions (N, C, kh, kw, oh, ow) back onto the unpadded input."""
    xp = _col2im(cols, padded_shape, g.sh, g.sw, g.dh, g.dw)
    return xp[:, :, g.ph : g.ph + g.h, g.pw : g.pw + g.w]


def _window_starts(out, stride, pad, dilation, size):
    """First real (non-padding) cell of each window, as PyTorch's kernels choose it."""
    start = np.arange(out) * stride - pad
    return start + (-(start.clip(max=0)) + dilation - 1) // dilation * dilation


def _first_max(values, flat_index, initial_index):
    """PyTorch's window argmax over the last axis (cells in row-major window order):
    the first maximum wins, a NaN beats everything (the last NaN), and a window of
    only -inf keeps `initial_index`. Returns (values, indices)."""
    nan = np.isnan(values)
    has_nan = nan.any(axis=-1)
    last_nan = values.shape[-1] - 1 - np.argmax(nan[..., ::-1], axis=-1)
    best = np.where(has_nan, last_nan, np.argmax(np.where(nan, -np.inf, values), axis=-1))
    best_value = np.take_along_axis(values, best[..., None], axis=-1)[..., 0]
    index = np.take_along_axis(np.broadcast_to(flat_index, values.shape), best[..., None], axis=-1)[..., 0]
    index = np.where(has_nan | (best_value > -np.inf), index, initial_index)
    return best_value, index


def _max_pool(x, g: P.PoolGeometry):
    cols, _ = _pool_cols(x, g, -np.inf)
    values = cols.reshape(g.n, g.c, g.kh * g.kw, g.oh, g.ow).transpose(0, 1, 3, 4, 2)
    rows = (np.arange(g.oh) * g.sh - g.ph)[:, None] + np.arange(g.kh) * g.dh
    cols_ = (np.arange(g.ow) * g.sw - g.pw)[:, None] + np.arange(g.kw) * g.dw
    flat = (rows[:, None, :, None] * g.w + cols_[None, :, None, :]).reshape(g.oh, g.ow, -1)
    initial = _window_starts(g.oh, g.sh, g.ph, g.dh, g.h)[:, None] * g.w + _window_starts(g.ow, g.sw, g.pw, g.dw, g.w)
    return _first_max(values, flat, initial)


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    """Max pooling, as torch.nn.functional.max_pool2d; indices are flat (h * W + w)."""
    x, unbatched = P.pool_input(input)
    g = P.pool2d_geometry(x.shape, kernel_size, stride, padding, dilation, ceil_mode)
    out, idx = _max_pool(x, g)
    out = out.astype(x.dtype)
    if unbatched:
        out, idx = out[0], idx[0]
    return (out, idx.astype(np.int64)) if return_indices else out


def _scatter_to_indices(grad_output, indices, input_shape):
    n, c, h, w = input_shape
    gx = np.zeros((n * c, h * w), dtype=grad_output.dtype)
    cells = indices.shape[2] * indices.shape[3]  # spelled out: -1 is ambiguous in an empty batch
    idx = indices.reshape(n * c, cells)
    gy = grad_output.reshape(n * c, cells)
    inside = (idx >= 0) & (idx < h * w)
    rows = np.broadcast_to(np.arange(n * c)[:, None], idx.shape)
    np.add.at(gx, (rows[inside], idx[inside]), gy[inside])
    return gx.reshape(input_shape)


def max_pool2d_input(input, grad_output, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, indices=None):
    """Gradient of max_pool2d: each output's gradient goes to its argmax, summed."""
    x, gy, g = P.pool_grad_arguments(input, grad_output, kernel_size, stride, padding, dilation, ceil_mode)
    idx = _max_pool(x, g)[1] if indices is None else P.checked_indices(indices, g.output_shape)
    return _scatter_to_indices(gy, idx, x.shape)


def max_unpool2d(input, indices, kernel_size, stride=None, padding=0, output_size=None):
    """Inverse of max_pool2d: put each value at its flat index in a zero plane."""
    x, idx, (oh, ow), unbatched = P.unpool_arguments(input, indices, kernel_size, stride, padding, output_size)
    n, c = x.shape[:2]
    out = np.zeros((n * c, oh * ow), dtype=x.dtype)
    cells = x.shape[2] * x.shape[3]
    rows = np.broadcast_to(np.arange(n * c)[:, None], (n * c, cells))
    out[rows, idx.reshape(n * c, cells)] = x.reshape(n * c, cells)
    out = out.reshape(n, c, oh, ow)
    return out[0] if unbatched else out


def max_unpool2d_input(grad_output, indices):
    """Gradient of max_unpool2d with respect to its input: grad_output at the indices."""
    gy, idx = P.unpool_grad_arguments(grad_output, indices)
    n, c = gy.shape[:2]
    planes = gy.reshape(n, c, gy.shape[2] * gy.shape[3])
    return np.take_along_axis(planes, idx.reshape(n, c, idx.shape[2] * idx.shape[3]), axis=2).reshape(idx.shape)


def _avg_divisor(g: P.PoolGeometry, count_include_pad, divisor_override):
    """Divisor of each (oh, ow) window as PyTorch's avg_pool2d computes it."""
    if divisor_override is not None:
        return np.full((g.oh, g.ow), divisor_override, dtype=np.float64)

    def counts(out, stride, pad, kernel, size):
        start = np.arange(out) * stride - pad
        end = np.minimum(start + kernel, size + pad)
        with_pad = end - start
        real = np.minimum(end, size) - np.maximum(start, 0)
        return with_pad if count_include_pad else real

    return counts(g.oh, g.sh, g.ph, g.kh, g.h)[:, None] * counts(g.ow, g.sw, g.pw, g.kw, g.w)[None, :]


def _sum_pool(x, g):
    cols, _ = _pool_cols(x, g, 0.0)
    return cols.sum(axis=(2, 3))


def _sum_pool_grad(gy, g):
    cols = np.broadcast_to(gy[:, :, None, None], (g.n, g.c, g.kh, g.kw, g.oh, g.ow))
    _, padded_shape = _pool_cols(np.zeros((g.n, g.c, g.h, g.w), gy.dtype), g, 0.0)
    return _pool_scatter(cols, g, padded_shape)


def avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True, divisor_override=None):
    """Average pooling, as torch.nn.functional.avg_pool2d."""
    x, unbatched = P.pool_input(input)
    g = P.pool2d_geometry(x.shape, kernel_size, stride, padding, 1, ceil_mode)
    P.check_bool(count_include_pad, "count_include_pad")
    div = _avg_divisor(g, count_include_pad, P.divisor(divisor_override))
    out = (_sum_pool(x, g) / div).astype(x.dtype)
    return out[0] if unbatched else out


def avg_pool2d_input(input_size, grad_output, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True, divisor_override=None):
    """Gradient of avg_pool2d: each output's gradient / divisor to every real cell."""
    gy, g = P.pool_size_grad_arguments(input_size, grad_output, kernel_size, stride, padding, ceil_mode)
    P.check_bool(count_include_pad, "count_include_pad")
    div = _avg_divisor(g, count_include_pad, P.divisor(divisor_override))
    return _sum_pool_grad((gy / div).astype(gy.dtype), g)


def sum_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False):
    """Sum pooling: the sum of the real cells of each window (padding adds zero)."""
    x, unbatched = P.pool_input(input)
    g = P.pool2d_geometry(x.shape, kernel_size, stride, padding, 1, ceil_mode)
    out = _sum_pool(x, g)
    return out[0] if unbatched else out


def sum_pool2d_input(input_size, grad_output, kernel_size, stride=None, padding=0, ceil_mode=False):
    """Gradient of sum_pool2d: each output's gradient to every real cell of its window."""
    gy, g = P.pool_size_grad_arguments(input_size, grad_output, kernel_size, stride, padding, ceil_mode)
    return _sum_pool_grad(gy, g)


def _lp_scaled_sum(x, g, p):
    """PyTorch's avg_pool2d(x**p) * kh * kw: the power sum, rescaled in ceil_mode overhang."""
    div = _avg_divisor(g, True, None)
    return _sum_pool(x**p, g) / div * (g.kh * g.kw), div


def lp_pool2d(input, norm_type, kernel_size, stride=None, ceil_mode=False):
    """Power-average pooling, as torch.nn.functional.lp_pool2d: (sum x^p)^(1/p)."""
    x, unbatched = P.pool_input(input)
    g = P.lp_geometry(x.shape, norm_type, kernel_size, stride, ceil_mode)
    s, _ = _lp_scaled_sum(x, g, norm_type)
    with np.errstate(invalid="ignore"):
        out = np.power(s, 1.0 / norm_type).astype(x.dtype)
    return out[0] if unbatched else out


def lp_pool2d_input(input, grad_output, norm_type, kernel_size, stride=None, ceil_mode=False):
    """Gradient of lp_pool2d; a window whose power sum is zero passes no gradient."""
    x, gy = P.lp_grad_arguments(input, grad_output)
    g = P.lp_geometry(x.shape, norm_type, kernel_size, stride, ceil_mode)
    P.check_grad_output(gy, g.output_shape)
    p = norm_type
    s, div = _lp_scaled_sum(x, g, p)
    with np.errstate(invalid="ignore", divide="ignore"):
        ds = np.where(s == 0, 0.0, gy * np.power(s, 1.0 / p - 1.0) / p)
        gx = _sum_pool_grad(ds * (g.kh * g.kw) / div, g) * (p * np.power(x, p - 1))
    return gx.astype(x.dtype)


def adaptive_avg_pool2d(input, output_size):
    """Adaptive average pooling: window o covers [floor(o*I/O), ceil((o+1)*I/O))."""
    x, unbatched = P.pool_input(input)
    oh, ow = P.adaptive_output_size(x.shape, output_size)
    hs, he = P.adaptive_windows(x.shape[2], oh)
    ws, we = P.adaptive_windows(x.shape[3], ow)
    out = np.empty(x.shape[:2] + (oh, ow), dtype=x.dtype)
    for i in range(oh):
        for j in range(ow):
            out[:, :, i, j] = x[:, :, hs[i] : he[i], ws[j] : we[j]].mean(axis=(2, 3))
    return out[0] if unbatched else out


def adaptive_avg_pool2d_input(input_size, grad_output):
    """Gradient of adaptive_avg_pool2d; the output size is grad_output's."""
    (n, c, h, w), gy = P.adaptive_avg_grad_arguments(input_size, grad_output)
    oh, ow = gy.shape[2:]
    hs, he = P.adaptive_windows(h, oh)
    ws, we = P.adaptive_windows(w, ow)
    gx = np.zeros((n, c, h, w), dtype=gy.dtype)
    for i in range(oh):
        for j in range(ow):
            area = (he[i] - hs[i]) * (we[j] - ws[j])
            gx[:, :, hs[i] : he[i], ws[j] : we[j]] += (gy[:, :, i, j] / area)[:, :, None, None]
    return gx


def _adaptive_max(x, oh, ow):
    n, c, h, w = x.shape
    hs, he = P.adaptive_windows(h, oh)
    ws, we = P.adaptive_windows(w, ow)
    out = np.empty((n, c, oh, ow), dtype=x.dtype)
    idx = np.empty((n, c, oh, ow), dtype=np.int64)
    for i in range(oh):
        for j in range(ow):
            window = x[:, :, hs[i] : he[i], ws[j] : we[j]].reshape(n, c, (he[i] - hs[i]) * (we[j] - ws[j]))
            flat = (np.arange(hs[i], he[i])[:, None] * w + np.arange(ws[j], we[j])).ravel()
            out[:, :, i, j], idx[:, :, i, j] = _first_max(window, flat, hs[i] * w + ws[j])
    return out, idx


def adaptive_max_pool2d(input, output_size, return_indices=False):
    """Adaptive max pooling, windows as adaptive_avg_pool2d, ties as max_pool2d."""
    x, unbatched = P.pool_input(input)
    out, idx = _adaptive_max(x, *P.adaptive_output_size(x.shape, output_size))
    if unbatched:
        out, idx = out[0], idx[0]
    return (out, idx) if return_indices else out


def adaptive_max_pool2d_input(input, grad_output, indices=None):
    """Gradient of adaptive_max_pool2d; the output size is grad_output's."""
    x, gy = P.adaptive_max_grad_arguments(input, grad_output)
    idx = _adaptive_max(x, *gy.shape[2:])[1] if indices is None else P.checked_indices(indices, gy.shape)
    return _scatter_to_indices(gy, idx, x.shape)
