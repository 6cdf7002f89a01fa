"""Pooling kernels: max (with indices), unpool, average/sum, adaptive; forward and
gradient.

Every kernel is parallel over the N*C planes; each iteration owns whole output planes
(forward; or blocks of their rows) or whole input planes (gradient), so overlapping
windows scatter race-free.
Window (y, x) covers rows y*sh - ph + i*dh (i < kh) and columns x*sw - pw + j*dw;
cells outside the input are padding (-inf for max, 0 for sums).
"""

import numpy as np
from numba import prange

from ._jit import parallel, serial
from .phases import fill_phases, padded_extent, tap_start


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


# ------------------------------------------------------------ polyphase bands
#
# Max pooling with indices works on a band of padded rows in the polyphase wide
# layout of fastconv.kernels.phases (there, "the plane" is the band of rows a block
# of output rows reads): each kernel tap is one contiguous loop over the block.
# Bands are flat buffers, reused across the planes of a prange iteration.


@serial
def band_shape(h, w, ph, pw, oh, ow, kh, kw, sh, sw, dh, dw, rows):
    """(hq, wq) of the band for a block of `rows` output rows."""
    last = (rows - 1) * sh + (kh - 1) * dh + 1
    wp = padded_extent(h, w, ph, pw, oh, ow, kh, kw, sh, sw, dh, dw)[1]
    return (last + sh - 1) // sh, (wp + sw - 1) // sw


@serial
def tap_offsets(kh, kw, dh, dw, w):
    """Flat offset of each kernel cell i*kw + j from its window's top-left corner."""
    offsets = np.empty(kh * kw, dtype=np.int32)
    for i in range(kh):
        for j in range(kw):
            offsets[i * kw + j] = i * dh * w + j * dw
    return offsets


@serial
def window_max(band, kh, kw, sh, sw, dh, dw, hq, wq, offsets, best, tap, length, with_tap):
    """Window maxima of a block of output rows in the wide layout, from a -inf band:
    best[q], and if with_tap, in tap[q] the winning cell's offset from its window's
    corner (-1 if none: padding or -inf only). Cells are visited in each window's
    row-major order and the update is "greater, or NaN", so the first maximum wins
    and NaN beats everything. A kernel row of three taps is one pass, so best and
    tap stay in registers across it."""
    best[:length] = -np.inf
    tap[:length] = -1
    for i in range(kh):
        if kw == 3:
            c0 = band[tap_start(i, 0, sh, sw, dh, dw, hq, wq) :]
            c1 = band[tap_start(i, 1, sh, sw, dh, dw, hq, wq) :]
            c2 = band[tap_start(i, 2, sh, sw, dh, dw, hq, wq) :]
            o0, o1, o2 = offsets[3 * i], offsets[3 * i + 1], offsets[3 * i + 2]
            for q in range(length):
                m = best[q]
                t = tap[q]
                v = c0[q]
                take = (v > m) | (v != v)
                m = v if take else m
                t = o0 if take else t
                v = c1[q]
                take = (v > m) | (v != v)
                m = v if take else m
                t = o1 if take else t
                v = c2[q]
                take = (v > m) | (v != v)
                best[q] = v if take else m
                tap[q] = o2 if take else t
            continue
        for j in range(kw):
            cells = band[tap_start(i, j, sh, sw, dh, dw, hq, wq) :]
            offset = offsets[i * kw + j]
            if with_tap:
                for q in range(length):
                    v = cells[q]
                    old = best[q]
                    take = (v > old) | (v != v)
                    best[q] = v if take else old
                    tap[q] = offset if take else tap[q]
            else:
                for q in range(length):
                    v = cells[q]
                    old = best[q]
                    best[q] = v if (v > old) | (v != v) else old


@serial
def index_tables(oh, ow, wq, w, sh, sw, ph, pw, dh, dw):
    """For each output in the wide layout (rows of wq): the flat input index of its
    window's top-left corner, and of its first inside cell (PyTorch's index for a
    window without a maximum)."""
    corner = np.zeros(oh * wq, dtype=np.int64)
    fallback = np.zeros(oh * wq, dtype=np.int64)
    for y in range(oh):
        for x in range(ow):
            corner[y * wq + x] = (y * sh - ph) * w + x * sw - pw
            fallback[y * wq + x] = first_inside(y * sh - ph, dh) * w + first_inside(x * sw - pw, dw)
    return corner, fallback


@serial
def row_block(t, blocks, c_, oh):
    """Work item t of a forward kernel that splits each plane's output rows into
    `blocks` parts: its plane (n, c) and its rows [y_start, y_end)."""
    return t // blocks // c_, t // blocks % c_, t % blocks * oh // blocks, (t % blocks + 1) * oh // blocks


@serial
def iteration_groups(items):
    """Prange iterations for `items` independent pieces of work: enough for any
    thread count, few enough that per-iteration buffers are allocated rarely."""
    return min(items, 256)


@serial
def two_by_two_fits(kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, h, w):
    """Whether the 2x2/2 fast paths apply: 2x2 windows, stride 2, no padding or
    dilation, and every window inside the plane (ceil_mode can add one that
    overhangs the last row or column)."""
    return kh == 2 and kw == 2 and sh == 2 and sw == 2 and ph == 0 and pw == 0 and dh == 1 and dw == 1 and 2 * oh <= h and 2 * ow <= w


@parallel
def max_pool(x, out, indices, kh, kw, sh, sw, ph, pw, dh, dw, with_indices, blocks):
    """out[n, c, y, x] = window max; indices (flat h*W + w) written when with_indices.

    Each plane's output rows are split into `blocks` parts, so a batch of few planes
    still uses every thread; each prange iteration takes a run of (plane, part)
    items and owns their outputs."""
    n_, c_, h, w = x.shape
    oh, ow = out.shape[2], out.shape[3]
    two_by_two = two_by_two_fits(kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, h, w)
    rows = -(-oh // blocks)
    hq, wq = band_shape(h, w, ph, pw, oh, ow, kh, kw, sh, sw, dh, dw, rows)
    wp = padded_extent(h, w, ph, pw, oh, ow, kh, kw, sh, sw, dh, dw)[1]
    offsets = tap_offsets(kh, kw, dh, dw, w)
    corner, fallback = index_tables(oh, ow, wq, w, sh, sw, ph, pw, dh, dw)
    items = n_ * c_ * blocks
    groups = iteration_groups(items)
    size = sh * sw * hq * wq if with_indices and not two_by_two else 0
    for group in prange(groups):
        band = np.empty(size, dtype=x.dtype)
        padded = np.empty(size, dtype=x.dtype)
        best = np.empty(rows * wq, dtype=x.dtype)
        tap = np.empty(rows * wq, dtype=np.int32)
        for t in range(group * items // groups, (group + 1) * items // groups):
            n, c, y_start, y_end = row_block(t, blocks, c_, oh)
            plane = x[n, c]
            dst = out[n, c]
            if not with_indices and not two_by_two:
                # Values only: the max (NaN winning) does not depend on the visiting order,
                # so take it separably, over kh rows then kw columns, in a -inf padded plane.
                first = y_start * sh
                rows_band = padded_band(plane, first, (y_end - 1) * sh + (kh - 1) * dh + 1, ph, pw, wp, -np.inf)
                column_max = np.empty(wp, dtype=x.dtype)
                for y in range(y_start, y_end):
                    column_max[:] = rows_band[y * sh - first]
                    for i in range(1, kh):
                        r = rows_band[y * sh - first + i * dh]
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
                        m = r0[2 * xo]
                        k = 0
                        v = r0[2 * xo + 1]
                        take = (v > m) | (v != v)
                        m = v if take else m
                        k = 1 if take else k
                        v = r1[2 * xo]
                        take = (v > m) | (v != v)
                        m = v if take else m
                        k = w if take else k
                        v = r1[2 * xo + 1]
                        take = (v > m) | (v != v)
                        m = v if take else m
                        k = w + 1 if take else k
                        d[xo] = m
                        ir[xo] = 2 * y * w + 2 * xo + k
                continue
            if y_end == y_start:
                continue
            fill_phases(plane, y_start * sh, ph, pw, sh, sw, hq, wq, -np.inf, band, padded)
            length = (y_end - y_start - 1) * wq + ow
            window_max(band, kh, kw, sh, sw, dh, dw, hq, wq, offsets, best, tap, length, with_indices)
            # Rows out of the wide layout, indexed whole: a helper call or a view per
            # row of a few elements costs more than the row.
            for y in range(y_start, y_end):
                q = (y - y_start) * wq
                for xo in range(ow):
                    out[n, c, y, xo] = best[q + xo]
                if with_indices:
                    for xo in range(ow):
                        k = tap[q + xo]
                        indices[n, c, y, xo] = corner[y * wq + xo] + k if k >= 0 else fallback[y * wq + xo]


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
    hq, wq = band_shape(h, w, ph, pw, oh, ow, kh, kw, sh, sw, dh, dw, oh)
    offsets = tap_offsets(kh, kw, dh, dw, w)
    corner, fallback = index_tables(oh, ow, wq, w, sh, sw, ph, pw, dh, dw)
    length = (oh - 1) * wq + ow
    items = n_ * c_
    groups = iteration_groups(items)
    for group in prange(groups):
        band = np.empty(sh * sw * hq * wq, dtype=x.dtype)
        padded = np.empty(sh * sw * hq * wq, dtype=x.dtype)
        best = np.empty(length, dtype=x.dtype)
        tap = np.empty(length, dtype=np.int32)
        for t in range(group * items // groups, (group + 1) * items // groups):
            n = t // c_
            c = t % c_
            flat = gx[n, c].reshape(size)
            flat[:] = 0.0
            fill_phases(x[n, c], 0, ph, pw, sh, sw, hq, wq, -np.inf, band, padded)
            window_max(band, kh, kw, sh, sw, dh, dw, hq, wq, offsets, best, tap, length, True)
            g = grad_output[n, c].reshape(oh * ow)
            for y in range(oh):
                for xo in range(ow):
                    k = tap[y * wq + xo]
                    i = corner[y * wq + xo] + k if k >= 0 else fallback[y * wq + xo]
                    if i >= 0 and i < size:
                        flat[i] += g[y * ow + xo]


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
    hp, wp = padded_extent(h, w, ph, pw, oh, ow, kh, kw, sh, sw, 1, 1)
    two_by_two = two_by_two_fits(kh, kw, sh, sw, ph, pw, 1, 1, oh, ow, h, w)
    return inv, hp, wp, two_by_two


@parallel(fastmath=True)
def avg_pool(x, out, kh, kw, sh, sw, ph, pw, include_pad, divisor, blocks):
    """out = window sum / divisor; divisor 0 means PyTorch's count (see window_counts).
    Work split as in max_pool.

    Sums are separable and taken over a whole block of output rows at a time: the
    vertical ones over padded rows split by row phase (each term one contiguous run),
    the horizontal ones with stride sw from rows of sw*wq cells, so that output
    (y, x) sits at y*wq + x and every loop is long."""
    n_, c_, h, w = x.shape
    oh, ow = out.shape[2], out.shape[3]
    inv, _, wp, two_by_two = average_plan(oh, ow, sh, sw, ph, pw, kh, kw, h, w, include_pad, divisor, x[0, 0, 0, 0] * 0)
    wq = (wp + sw - 1) // sw
    wide = sw * wq
    most = -(-oh // blocks)
    hq = ((most - 1) * sh + kh + sh - 1) // sh
    items = n_ * c_ * blocks
    groups = iteration_groups(items)
    for group in prange(groups):
        rows = np.empty(0 if two_by_two else sh * hq * wide, dtype=x.dtype)
        # room for the last row's windows past its end (they are dropped)
        column_sums = np.zeros(0 if two_by_two else most * wide + kw, dtype=x.dtype)
        sums = np.empty(most * wq, dtype=x.dtype)
        for t in range(group * items // groups, (group + 1) * items // groups):
            n, c, y_start, y_end = row_block(t, blocks, c_, oh)
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
            if y_end == y_start:
                continue
            # rows split by row phase only: one column phase as wide as the padded row
            fill_phases(plane, y_start * sh, ph, pw, sh, 1, hq, wide, 0.0, rows, rows[:0])
            length = (y_end - y_start) * wide
            column_sums[:length] = 0.0
            for i in range(kh):
                r = rows[((i % sh) * hq + i // sh) * wide :]
                for p in range(length):
                    column_sums[p] += r[p]
            count = (y_end - y_start) * wq
            sums[:count] = 0.0
            for j in range(kw):
                cells = column_sums[j:]
                if sw == 1:
                    for q in range(count):
                        sums[q] += cells[q]
                elif sw == 2:
                    for q in range(count):
                        sums[q] += cells[2 * q]
                else:
                    for q in range(count):
                        sums[q] += cells[q * sw]
            for y in range(y_start, y_end):
                s = sums[(y - y_start) * wq :]
                d = dst[y]
                iv = inv[y]
                for xo in range(ow):
                    d[xo] = s[xo] * iv[xo]


@parallel(fastmath=True)
def avg_pool_backward(grad_output, gx, kh, kw, sh, sw, ph, pw, include_pad, divisor):
    """gx = every window's grad_output / divisor, added onto its real cells: the
    adjoint of avg_pool's separable sums, in the same layouts."""
    n_, c_, h, w = gx.shape
    oh, ow = grad_output.shape[2], grad_output.shape[3]
    inv, _, wp, two_by_two = average_plan(oh, ow, sh, sw, ph, pw, kh, kw, h, w, include_pad, divisor, grad_output[0, 0, 0, 0] * 0)
    wq = (wp + sw - 1) // sw
    wide = sw * wq
    # every input row, covered by a window or not
    hq = max((oh - 1) * sh + kh, h + ph + 1) // sh + 1
    items = n_ * c_
    groups = iteration_groups(items)
    for group in prange(groups):
        rows = np.empty(0 if two_by_two else sh * hq * wide, dtype=gx.dtype)
        column_sums = np.empty(0 if two_by_two else oh * wide + kw, dtype=gx.dtype)
        scaled = np.zeros(oh * wq, dtype=gx.dtype)
        for t in range(group * items // groups, (group + 1) * items // groups):
            n = t // c_
            c = t % c_
            plane = gx[n, c]
            g = grad_output[n, c]
            if two_by_two:
                plane[:, :] = 0.0
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
            for y in range(oh):
                s = scaled[y * wq :]
                gr = g[y]
                iv = inv[y]
                for xo in range(ow):
                    s[xo] = gr[xo] * iv[xo]
            column_sums[:] = 0.0
            count = oh * wq
            for j in range(kw):
                cells = column_sums[j:]
                if sw == 1:
                    for q in range(count):
                        cells[q] += scaled[q]
                elif sw == 2:
                    for q in range(count):
                        cells[2 * q] += scaled[q]
                else:
                    for q in range(count):
                        cells[q * sw] += scaled[q]
            rows[:] = 0.0
            length = oh * wide
            for i in range(kh):
                r = rows[((i % sh) * hq + i // sh) * wide :]
                for p in range(length):
                    r[p] += column_sums[p]
            for y in range(h):
                src = rows[(((y + ph) % sh) * hq + (y + ph) // sh) * wide + pw :]
                d = plane[y]
                for xo in range(w):
                    d[xo] = src[xo]


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
