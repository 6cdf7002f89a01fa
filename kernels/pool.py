"""Pooling kernels: max (with indices), unpool, average/sum, adaptive; forward and
gradient.

Every kernel is parallel over the N*C planes; each iteration owns one output plane
(forward) or one input plane (gradient), so overlapping windows scatter race-free.
Window (y, x) covers rows y*sh - ph + i*dh (i < kh) and columns x*sw - pw + j*dw;
cells outside the input are padding (-inf for max, 0 for sums).
"""

import numpy as np
from numba import prange

from ._jit import parallel, serial


@serial
def first_inside(start, step):
    """The first of start, start + step, ... that is >= 0."""
    return start if start >= 0 else start + (-start + step - 1) // step * step


@serial
def window_max(plane, y0, x0, kh, kw, dh, dw):
    """PyTorch's window argmax: the first maximum in row-major order wins, a NaN
    beats everything; a window of padding or -inf keeps its first inside cell.
    Returns (value, flat index)."""
    h, w = plane.shape
    ys = first_inside(y0, dh)
    xs = first_inside(x0, dw)
    best = -np.inf
    index = ys * w + xs
    for iy in range(ys, min(y0 + (kh - 1) * dh + 1, h), dh):
        row = plane[iy]
        for ix in range(xs, min(x0 + (kw - 1) * dw + 1, w), dw):
            v = row[ix]
            if v > best or v != v:
                best = v
                index = iy * w + ix
    return best, index


@parallel
def max_pool(x, out, indices, kh, kw, sh, sw, ph, pw, dh, dw, with_indices):
    """out[n, c, y, x] = window max; indices (flat h*W + w) written when with_indices."""
    n_, c_, h, w = x.shape
    oh, ow = out.shape[2], out.shape[3]
    for t in prange(n_ * c_):
        n = t // c_
        c = t % c_
        plane = x[n, c]
        dst = out[n, c]
        if kh == 2 and kw == 2 and sh == 2 and sw == 2 and ph == 0 and pw == 0 and dh == 1 and dw == 1:
            # The common 2x2/2 window: four cells, compared in row-major order.
            for y in range(oh):
                r0 = plane[2 * y]
                r1 = plane[2 * y + 1]
                for xo in range(ow):
                    best = r0[2 * xo]
                    k = 0
                    v = r0[2 * xo + 1]
                    if v > best or v != v:
                        best = v
                        k = 1
                    v = r1[2 * xo]
                    if v > best or v != v:
                        best = v
                        k = 2
                    v = r1[2 * xo + 1]
                    if v > best or v != v:
                        best = v
                        k = 3
                    dst[y, xo] = best
                    if with_indices:
                        indices[n, c, y, xo] = (2 * y + k // 2) * w + 2 * xo + k % 2
            continue
        for y in range(oh):
            for xo in range(ow):
                best, index = window_max(plane, y * sh - ph, xo * sw - pw, kh, kw, dh, dw)
                dst[y, xo] = best
                if with_indices:
                    indices[n, c, y, xo] = index


@parallel
def scatter_to_indices(grad_output, indices, gx):
    """gx[n, c].flat[indices[n, c, y, x]] += grad_output[n, c, y, x]; indices outside
    the plane (a window of padding only) pass nothing."""
    n_, c_, h, w = gx.shape
    oh, ow = grad_output.shape[2], grad_output.shape[3]
    size = h * w
    for t in prange(n_ * c_):
        n = t // c_
        c = t % c_
        flat = gx[n, c].reshape(size)
        flat[:] = 0.0
        g = grad_output[n, c]
        idx = indices[n, c]
        for y in range(oh):
            for xo in range(ow):
                i = idx[y, xo]
                if i >= 0 and i < size:
                    flat[i] += g[y, xo]


@parallel
def max_pool_backward(x, grad_output, gx, kh, kw, sh, sw, ph, pw, dh, dw):
    """Max-pool gradient without saved indices: each window's argmax is found again."""
    n_, c_, h, w = x.shape
    oh, ow = grad_output.shape[2], grad_output.shape[3]
    size = h * w
    for t in prange(n_ * c_):
        n = t // c_
        c = t % c_
        plane = x[n, c]
        flat = gx[n, c].reshape(size)
        flat[:] = 0.0
        g = grad_output[n, c]
        for y in range(oh):
            for xo in range(ow):
                best, i = window_max(plane, y * sh - ph, xo * sw - pw, kh, kw, dh, dw)
                if i >= 0 and i < size:
                    flat[i] += g[y, xo]


@serial
def window_counts(out, stride, pad, kernel, size, include_pad, counts):
    """Per-dimension cell count of each window, as PyTorch's avg_pool2d counts: with
    include_pad, up to the end of the padding (never the ceil_mode overhang); without,
    real cells only."""
    for o in range(out):
        start = o * stride - pad
        end = min(start + kernel, size + pad)
        if include_pad:
            counts[o] = end - start
        else:
            counts[o] = min(end, size) - max(start, 0)


@parallel(fastmath=True)
def avg_pool(x, out, kh, kw, sh, sw, ph, pw, include_pad, divisor):
    """out = window sum / divisor; divisor 0 means PyTorch's count (see window_counts)."""
    n_, c_, h, w = x.shape
    oh, ow = out.shape[2], out.shape[3]
    rows = np.empty(oh, dtype=np.int64)
    cols = np.empty(ow, dtype=np.int64)
    window_counts(oh, sh, ph, kh, h, include_pad, rows)
    window_counts(ow, sw, pw, kw, w, include_pad, cols)
    for t in prange(n_ * c_):
        n = t // c_
        c = t % c_
        plane = x[n, c]
        dst = out[n, c]
        acc = np.empty(ow, dtype=out.dtype)
        for y in range(oh):
            acc[:] = 0.0
            y0 = y * sh - ph
            for iy in range(max(y0, 0), min(y0 + kh, h)):
                src = plane[iy]
                for j in range(kw):
                    off = j - pw
                    lo = 0 if off >= 0 else (-off + sw - 1) // sw
                    hi = min(ow, (w - 1 - off) // sw + 1) if w - 1 - off >= 0 else 0
                    if sw == 2:
                        for xo in range(lo, hi):
                            acc[xo] += src[2 * xo + off]
                    else:
                        for xo in range(lo, hi):
                            acc[xo] += src[xo * sw + off]
            d = dst[y]
            for xo in range(ow):
                d[xo] = acc[xo] / (divisor if divisor != 0 else rows[y] * cols[xo])


@parallel(fastmath=True)
def avg_pool_backward(grad_output, gx, kh, kw, sh, sw, ph, pw, include_pad, divisor):
    """gx = every window's grad_output / divisor, added onto its real cells."""
    n_, c_, h, w = gx.shape
    oh, ow = grad_output.shape[2], grad_output.shape[3]
    rows = np.empty(oh, dtype=np.int64)
    cols = np.empty(ow, dtype=np.int64)
    window_counts(oh, sh, ph, kh, h, include_pad, rows)
    window_counts(ow, sw, pw, kw, w, include_pad, cols)
    for t in prange(n_ * c_):
        n = t // c_
        c = t % c_
        plane = gx[n, c]
        plane[:, :] = 0.0
        g = grad_output[n, c]
        scaled = np.empty(ow, dtype=gx.dtype)
        for y in range(oh):
            for xo in range(ow):
                scaled[xo] = g[y, xo] / (divisor if divisor != 0 else rows[y] * cols[xo])
            y0 = y * sh - ph
            for iy in range(max(y0, 0), min(y0 + kh, h)):
                dst = plane[iy]
                for j in range(kw):
                    off = j - pw
                    lo = 0 if off >= 0 else (-off + sw - 1) // sw
                    hi = min(ow, (w - 1 - off) // sw + 1) if w - 1 - off >= 0 else 0
                    for xo in range(lo, hi):
                        dst[xo * sw + off] += scaled[xo]


@parallel
def adaptive_avg_pool(x, out, row_start, row_end, col_start, col_end):
    n_, c_, h, w = x.shape
    oh, ow = out.shape[2], out.shape[3]
    for t in prange(n_ * c_):
        n = t // c_
        c = t % c_
        plane = x[n, c]
        for y in range(oh):
            for xo in range(ow):
                s = 0.0
                for iy in range(row_start[y], row_end[y]):
                    for ix in range(col_start[xo], col_end[xo]):
                        s += plane[iy, ix]
                out[n, c, y, xo] = s / ((row_end[y] - row_start[y]) * (col_end[xo] - col_start[xo]))


@parallel
def adaptive_avg_pool_backward(grad_output, gx, row_start, row_end, col_start, col_end):
    n_, c_, h, w = gx.shape
    oh, ow = grad_output.shape[2], grad_output.shape[3]
    for t in prange(n_ * c_):
        n = t // c_
        c = t % c_
        plane = gx[n, c]
        plane[:, :] = 0.0
        for y in range(oh):
            for xo in range(ow):
                v = grad_output[n, c, y, xo] / ((row_end[y] - row_start[y]) * (col_end[xo] - col_start[xo]))
                for iy in range(row_start[y], row_end[y]):
                    for ix in range(col_start[xo], col_end[xo]):
                        plane[iy, ix] += v


@parallel
def adaptive_max_pool(x, out, indices, row_start, row_end, col_start, col_end):
    n_, c_, h, w = x.shape
    oh, ow = out.shape[2], out.shape[3]
    for t in prange(n_ * c_):
        n = t // c_
        c = t % c_
        plane = x[n, c]
        for y in range(oh):
            for xo in range(ow):
                best = -np.inf
                index = row_start[y] * w + col_start[xo]
                for iy in range(row_start[y], row_end[y]):
                    for ix in range(col_start[xo], col_end[xo]):
                        v = plane[iy, ix]
                        if v > best or v != v:
                            best = v
                            index = iy * w + ix
                out[n, c, y, xo] = best
                indices[n, c, y, xo] = index


@parallel
def max_unpool(x, indices, out):
    """out[n, c].flat[indices[n, c, y, x]] = x[n, c, y, x]; a repeated index keeps the last."""
    n_, c_, oh, ow = out.shape
    size = oh * ow
    for t in prange(n_ * c_):
        n = t // c_
        c = t % c_
        flat = out[n, c].reshape(size)
        flat[:] = 0.0
        src = x[n, c]
        idx = indices[n, c]
        for y in range(x.shape[2]):
            for xo in range(x.shape[3]):
                flat[idx[y, xo]] = src[y, xo]


@parallel
def gather_indices(grad_output, indices, gx):
    """gx[n, c, y, x] = grad_output[n, c].flat[indices[n, c, y, x]] (max_unpool's gradient)."""
    n_, c_, h, w = gx.shape
    size = grad_output.shape[2] * grad_output.shape[3]
    for t in prange(n_ * c_):
        n = t // c_
        c = t % c_
        flat = grad_output[n, c].reshape(size)
        idx = indices[n, c]
        dst = gx[n, c]
        for y in range(h):
            for xo in range(w):
                dst[y, xo] = flat[idx[y, xo]]
