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
def padded_band(plane, first, last, ph, pw, wp, fill):
    """Rows [first, last) of the plane padded by (ph, pw) on top/left and with `fill`
    everywhere outside it, as a (last - first, wp) array: a block of output rows
    needs only its own band."""
    h, w = plane.shape
    band = np.full((last - first, wp), fill, dtype=plane.dtype)
    lo, hi = max(first, ph), min(last, ph + h)
    if hi > lo:
        band[lo - first : hi - first, pw : pw + w] = plane[lo - ph : hi - ph]
    return band


@serial
def row_max(padded, top, kh, kw, sw, dh, dw, best, tap):
    """Window max of one output row, all columns at once, from a -inf padded plane
    whose row `top` is the windows' first: best[x], and in tap[x] the winning kernel
    cell i*kw + j (-1 if none: padding or -inf only). Cells are visited in each
    window's row-major order and the update is "greater, or NaN", so the first maximum
    wins and NaN beats everything. Stride 1 and 2 have their own loops so that LLVM
    vectorises them."""
    ow = best.shape[0]
    best[:] = -np.inf
    tap[:] = -1
    for i in range(kh):
        r = padded[top + i * dh]
        for j in range(kw):
            cells = r[j * dw :]
            cell = i * kw + j
            if sw == 1:
                for q in range(ow):
                    v = cells[q]
                    old = best[q]
                    take = (v > old) | (v != v)
                    best[q] = v if take else old
                    tap[q] = cell if take else tap[q]
            elif sw == 2:
                for q in range(ow):
                    v = cells[2 * q]
                    old = best[q]
                    take = (v > old) | (v != v)
                    best[q] = v if take else old
                    tap[q] = cell if take else tap[q]
            else:
                for q in range(ow):
                    v = cells[q * sw]
                    old = best[q]
                    take = (v > old) | (v != v)
                    best[q] = v if take else old
                    tap[q] = cell if take else tap[q]


@serial
def tap_offsets(kh, kw, dh, dw, w):
    """Flat offset of each kernel cell i*kw + j from its window's top-left corner."""
    offsets = np.empty(kh * kw, dtype=np.int64)
    for i in range(kh):
        for j in range(kw):
            offsets[i * kw + j] = i * dh * w + j * dw
    return offsets


@serial
def tap_to_index(tap, offsets, y0, sw, pw, dh, dw, w, index):
    """Flat input index of each winning cell; a window without one keeps its first
    inside cell, as PyTorch does. (A table, not t // kw: integer division per output
    cost more than the whole window scan.)"""
    corner = y0 * w - pw
    for xo in range(tap.shape[0]):
        t = tap[xo]
        if t < 0:
            index[xo] = first_inside(y0, dh) * w + first_inside(xo * sw - pw, dw)
        else:
            index[xo] = corner + xo * sw + offsets[t]


@parallel
def max_pool(x, out, indices, kh, kw, sh, sw, ph, pw, dh, dw, with_indices, blocks):
    """out[n, c, y, x] = window max; indices (flat h*W + w) written when with_indices.

    Each plane's output rows are split into `blocks` parts, each its own iteration,
    so a batch of few planes still uses every thread."""
    n_, c_, h, w = x.shape
    oh, ow = out.shape[2], out.shape[3]
    two_by_two = kh == 2 and kw == 2 and sh == 2 and sw == 2 and ph == 0 and pw == 0 and dh == 1 and dw == 1
    wp = max(w + pw, (ow - 1) * sw + (kw - 1) * dw + 1)
    offsets = tap_offsets(kh, kw, dh, dw, w)
    for t in prange(n_ * c_ * blocks):
        n = t // blocks // c_
        c = t // blocks % c_
        y_start = t % blocks * oh // blocks
        y_end = (t % blocks + 1) * oh // blocks
        plane = x[n, c]
        dst = out[n, c]
        if not with_indices and not two_by_two:
            # Values only: the max (NaN winning) does not depend on the visiting order,
            # so take it separably, over kh rows then kw columns, in a -inf padded plane.
            first = y_start * sh
            padded = padded_band(plane, first, (y_end - 1) * sh + (kh - 1) * dh + 1, ph, pw, wp, -np.inf)
            column_max = np.empty(wp, dtype=x.dtype)
            for y in range(y_start, y_end):
                column_max[:] = padded[y * sh - first]
                for i in range(1, kh):
                    r = padded[y * sh - first + i * dh]
                    for q in range(wp):
                        v = r[q]
                        old = column_max[q]
                        column_max[q] = v if (v > old) | (v != v) else old
                d = dst[y]
                d[:] = -np.inf
                for j in range(kw):
                    cells = column_max[j * dw :]
                    if sw == 1:
                        for xo in range(ow):
                            v = cells[xo]
                            old = d[xo]
                            d[xo] = v if (v > old) | (v != v) else old
                    elif sw == 2:
                        for xo in range(ow):
                            v = cells[2 * xo]
                            old = d[xo]
                            d[xo] = v if (v > old) | (v != v) else old
                    else:
                        for xo in range(ow):
                            v = cells[xo * sw]
                            old = d[xo]
                            d[xo] = v if (v > old) | (v != v) else old
            continue
        if two_by_two and not with_indices:
            # The common 2x2/2 window without indices: a max of four, NaN winning.
            for y in range(y_start, y_end):
                r0 = plane[2 * y]
                r1 = plane[2 * y + 1]
                d = dst[y]
                for xo in range(ow):
                    a = r0[2 * xo]
                    b = r0[2 * xo + 1]
                    e = r1[2 * xo]
                    f = r1[2 * xo + 1]
                    m = max(max(a, b), max(e, f))
                    d[xo] = m if a == a and b == b and e == e and f == f else np.nan
            continue
        if two_by_two:
            # With indices: the same four cells in window order, "greater, or NaN".
            idx = indices[n, c]
            for y in range(y_start, y_end):
                r0 = plane[2 * y]
                r1 = plane[2 * y + 1]
                d = dst[y]
                ir = idx[y]
                for xo in range(ow):
                    best = r0[2 * xo]
                    k = 0
                    v = r0[2 * xo + 1]
                    take = (v > best) | (v != v)
                    best = v if take else best
                    k = 1 if take else k
                    v = r1[2 * xo]
                    take = (v > best) | (v != v)
                    best = v if take else best
                    k = w if take else k
                    v = r1[2 * xo + 1]
                    take = (v > best) | (v != v)
                    best = v if take else best
                    k = w + 1 if take else k
                    d[xo] = best
                    ir[xo] = 2 * y * w + 2 * xo + k
            continue
        first = y_start * sh
        padded = padded_band(plane, first, (y_end - 1) * sh + (kh - 1) * dh + 1, ph, pw, wp, -np.inf)
        tap = np.empty(ow, dtype=np.int32)
        for y in range(y_start, y_end):
            row_max(padded, y * sh - first, kh, kw, sw, dh, dw, dst[y], tap)
            tap_to_index(tap, offsets, y * sh - ph, sw, pw, dh, dw, w, indices[n, c, y])


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
    offsets = tap_offsets(kh, kw, dh, dw, w)
    hp = max(h + ph, (oh - 1) * sh + (kh - 1) * dh + 1)
    wp = max(w + pw, (ow - 1) * sw + (kw - 1) * dw + 1)
    for t in prange(n_ * c_):
        n = t // c_
        c = t % c_
        plane = x[n, c]
        flat = gx[n, c].reshape(size)
        flat[:] = 0.0
        g = grad_output[n, c]
        padded = np.full((hp, wp), -np.inf, dtype=x.dtype)
        padded[ph : ph + h, pw : pw + w] = plane
        best = np.empty(ow, dtype=x.dtype)
        tap = np.empty(ow, dtype=np.int32)
        index = np.empty(ow, dtype=np.int64)
        for y in range(oh):
            row_max(padded, y * sh, kh, kw, sw, dh, dw, best, tap)
            tap_to_index(tap, offsets, y * sh - ph, sw, pw, dh, dw, w, index)
            for xo in range(ow):
                i = index[xo]
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


@serial
def inverse_divisors(oh, ow, sh, sw, ph, pw, kh, kw, h, w, include_pad, divisor, dtype_zero):
    """1 / divisor of every window, (oh, ow), in the arrays' dtype."""
    rows = np.empty(oh, dtype=np.int64)
    cols = np.empty(ow, dtype=np.int64)
    window_counts(oh, sh, ph, kh, h, include_pad, rows)
    window_counts(ow, sw, pw, kw, w, include_pad, cols)
    inv = np.empty((oh, ow), dtype=np.asarray(dtype_zero).dtype)
    for y in range(oh):
        for xo in range(ow):
            inv[y, xo] = 1.0 / (divisor if divisor != 0 else rows[y] * cols[xo])
    return inv


@serial
def average_plan(oh, ow, sh, sw, ph, pw, kh, kw, h, w, include_pad, divisor, dtype_zero):
    """What avg_pool and its gradient share: 1/divisor per window, the padded plane's
    size (covering every window, ceil_mode overhang included), and whether the 2x2/2
    fast path applies."""
    inv = inverse_divisors(oh, ow, sh, sw, ph, pw, kh, kw, h, w, include_pad, divisor, dtype_zero)
    hp = max(h + ph, (oh - 1) * sh + kh)
    wp = max(w + pw, (ow - 1) * sw + kw)
    two_by_two = kh == 2 and kw == 2 and sh == 2 and sw == 2 and ph == 0 and pw == 0 and 2 * oh <= h and 2 * ow <= w
    return inv, hp, wp, two_by_two


@parallel(fastmath=True)
def avg_pool(x, out, kh, kw, sh, sw, ph, pw, include_pad, divisor, blocks):
    """out = window sum / divisor; divisor 0 means PyTorch's count (see window_counts).
    Output rows split into `blocks` iterations per plane, as in max_pool."""
    n_, c_, h, w = x.shape
    oh, ow = out.shape[2], out.shape[3]
    inv, _, wp, two_by_two = average_plan(oh, ow, sh, sw, ph, pw, kh, kw, h, w, include_pad, divisor, x[0, 0, 0, 0] * 0)
    for t in prange(n_ * c_ * blocks):
        n = t // blocks // c_
        c = t // blocks % c_
        y_start = t % blocks * oh // blocks
        y_end = (t % blocks + 1) * oh // blocks
        plane = x[n, c]
        dst = out[n, c]
        if two_by_two:
            for y in range(y_start, y_end):
                r0 = plane[2 * y]
                r1 = plane[2 * y + 1]
                d = dst[y]
                iv = inv[y]
                for xo in range(ow):
                    d[xo] = (r0[2 * xo] + r0[2 * xo + 1] + r1[2 * xo] + r1[2 * xo + 1]) * iv[xo]
            continue
        # Other windows: the plane in a zero-padded buffer that covers every window,
        # then per output row a vertical sum of kh rows and a horizontal one of kw.
        first = y_start * sh
        padded = padded_band(plane, first, (y_end - 1) * sh + kh, ph, pw, wp, 0.0)
        column_sums = np.empty(wp, dtype=x.dtype)
        acc = np.empty(ow, dtype=x.dtype)
        for y in range(y_start, y_end):
            column_sums[:] = padded[y * sh - first]
            for i in range(1, kh):
                r = padded[y * sh - first + i]
                for q in range(wp):
                    column_sums[q] += r[q]
            acc[:] = 0.0
            for j in range(kw):
                cells = column_sums[j:]
                if sw == 1:
                    for xo in range(ow):
                        acc[xo] += cells[xo]
                elif sw == 2:
                    for xo in range(ow):
                        acc[xo] += cells[2 * xo]
                else:
                    for xo in range(ow):
                        acc[xo] += cells[xo * sw]
            d = dst[y]
            iv = inv[y]
            for xo in range(ow):
                d[xo] = acc[xo] * iv[xo]


@parallel(fastmath=True)
def avg_pool_backward(grad_output, gx, kh, kw, sh, sw, ph, pw, include_pad, divisor):
    """gx = every window's grad_output / divisor, added onto its real cells."""
    n_, c_, h, w = gx.shape
    oh, ow = grad_output.shape[2], grad_output.shape[3]
    inv, hp, wp, two_by_two = average_plan(oh, ow, sh, sw, ph, pw, kh, kw, h, w, include_pad, divisor, grad_output[0, 0, 0, 0] * 0)
    for t in prange(n_ * c_):
        n = t // c_
        c = t % c_
        plane = gx[n, c]
        plane[:, :] = 0.0
        g = grad_output[n, c]
        if two_by_two:
            for y in range(oh):
                gr = g[y]
                iv = inv[y]
                r0 = plane[2 * y]
                r1 = plane[2 * y + 1]
                for xi in range(2 * ow):
                    v = gr[xi // 2] * iv[xi // 2]
                    r0[xi] = v
                    r1[xi] = v
            continue
        # The adjoint of avg_pool's padded, separable sums, cropped at the end.
        padded = np.zeros((hp, wp), dtype=gx.dtype)
        row_sums = np.empty(wp, dtype=gx.dtype)
        scaled = np.empty(ow, dtype=gx.dtype)
        for y in range(oh):
            gr = g[y]
            iv = inv[y]
            for xo in range(ow):
                scaled[xo] = gr[xo] * iv[xo]
            row_sums[:] = 0.0
            for j in range(kw):
                cells = row_sums[j:]
                if sw == 1:
                    for xo in range(ow):
                        cells[xo] += scaled[xo]
                elif sw == 2:
                    for xo in range(ow):
                        cells[2 * xo] += scaled[xo]
                else:
                    for xo in range(ow):
                        cells[xo * sw] += scaled[xo]
            for i in range(kh):
                r = padded[y * sh + i]
                for q in range(wp):
                    r[q] += row_sums[q]
        plane[:, :] = padded[ph : ph + h, pw : pw + w]


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
