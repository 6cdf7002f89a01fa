"""Convolution kernels: forward, input gradient and weight gradient.

Two families, chosen per shape by the caller:

- GEMM: a chunk of samples is packed (im2col, serial Numba code beside BLAS's own
  threads) into a (C*kh*kw, samples * positions) matrix and multiplied with the
  weight by BLAS, called from Python, never inside a prange; `col2im` adds a
  gradient matrix back onto the input. See `_Packing` for the layouts.
- Direct: parallel loops with the output row (or, at stride 1, the whole plane)
  innermost and unit stride, for shapes whose GEMM would be too thin to pay off:
  depthwise, channel multipliers, narrow groups, first layers.

Every kernel writes disjoint outputs per prange iteration: forward over (n, k)
planes, input gradient over (n, c) planes (a scatter inside an owned plane), weight
gradient over (batch chunk, k) with a fixed-order sum over chunks afterwards.

Geometry: input (N, C, H, W), OIHW weight (K, C/groups, kh, kw), output (N, K, oh, ow);
an output cell (y, x) meets input row y*sh - pt + i*dh and column x*sw - pl + j*dw.
"""

import numpy as np
from numba import prange

from ._jit import parallel, serial

# ------------------------------------------------------------------ im2col family


@serial
def padded_extent(h, w, pt, pl, oh, ow, kh, kw, sh, sw, dh, dw):
    """(Hp, Wp) of a zero-padded plane holding the input at (pt, pl) and every window."""
    return max(h + pt, (oh - 1) * sh + (kh - 1) * dh + 1), max(w + pl, (ow - 1) * sw + (kw - 1) * dw + 1)


def im2col(x, cols, kh, kw, sh, sw, pt, pl, dh, dw, oh, ow):
    """cols[(c*kh + i)*kw + j, n*oh*ow + y*ow + x] = x[n, c, y*sh - pt + i*dh, x*sw - pl + j*dw] or 0.

    Each (n, c) plane is first copied into a zero-padded buffer that also covers
    every window, so the copies need no bounds tests. The buffer is shared across
    planes: this kernel runs serially (see below)."""
    n_, c_, h, w = x.shape
    hp, wp = padded_extent(h, w, pt, pl, oh, ow, kh, kw, sh, sw, dh, dw)
    padded = np.zeros((hp, wp), dtype=x.dtype)
    flat = padded.reshape(hp * wp)
    p_ = oh * ow
    for t in prange(n_ * c_):
        n = t // c_
        c = t % c_
        padded[pt : pt + h, pl : pl + w] = x[n, c]
        for i in range(kh):
            for j in range(kw):
                row = cols[(c * kh + i) * kw + j, n * p_ : (n + 1) * p_]
                # flat indices, no per-row views: rows can be a handful of elements
                for y in range(oh):
                    src = (y * sh + i * dh) * wp + j * dw
                    dst = y * ow
                    if sw == 1:
                        for q in range(ow):
                            row[dst + q] = flat[src + q]
                    elif sw == 2:
                        for q in range(ow):
                            row[dst + q] = flat[src + 2 * q]
                    else:
                        for q in range(ow):
                            row[dst + q] = flat[src + q * sw]


def col2im(cols, gx, kh, kw, sh, sw, pt, pl, dh, dw, oh, ow):
    """Adjoint of im2col: gx[n, c] = sum of the cols entries that came from each cell,
    added up in a padded buffer and cropped."""
    n_, c_, h, w = gx.shape
    hp, wp = padded_extent(h, w, pt, pl, oh, ow, kh, kw, sh, sw, dh, dw)
    padded = np.empty((hp, wp), dtype=gx.dtype)
    flat = padded.reshape(hp * wp)
    p_ = oh * ow
    for t in prange(n_ * c_):
        n = t // c_
        c = t % c_
        padded[:, :] = 0.0
        for i in range(kh):
            for j in range(kw):
                row = cols[(c * kh + i) * kw + j, n * p_ : (n + 1) * p_]
                for y in range(oh):
                    dst = (y * sh + i * dh) * wp + j * dw
                    src = y * ow
                    if sw == 1:
                        for q in range(ow):
                            flat[dst + q] += row[src + q]
                    elif sw == 2:
                        for q in range(ow):
                            flat[dst + 2 * q] += row[src + q]
                    else:
                        for q in range(ow):
                            flat[dst + q * sw] += row[src + q]
        gx[n, c] = padded[pt : pt + h, pl : pl + w]


# The GEMM path packs serially: a parallel packing region between two BLAS calls
# leaves one runtime's threads spinning while the other's work (measured: 2-5x
# slower end to end); one packing thread beside BLAS's costs little.
im2col = serial(im2col)
col2im = serial(col2im)


def im2col_wide(xp, cols, kh, kw, dh, dw, length):
    """Stride-1 packing of a chunk of padded samples xp (nb, C, Hp, Wp):
    cols[(c*kh + i)*kw + j, b*length + q] = xp[b, c].flat[i*dh*Wp + j*dw + q].
    Each row is one contiguous copy (see the "wide" layout below)."""
    nb, c_, hp, wp = xp.shape
    for b in range(nb):
        for c in range(c_):
            src = xp[b, c].reshape(hp * wp)
            for i in range(kh):
                for j in range(kw):
                    shifted = src[i * dh * wp + j * dw :]
                    dst = cols[(c * kh + i) * kw + j, b * length : (b + 1) * length]
                    for q in range(length):
                        dst[q] = shifted[q]


def col2im_wide(cols, gxp, kh, kw, dh, dw, length):
    """Adjoint of im2col_wide into zeroed padded planes gxp (nb, C, Hp, Wp)."""
    nb, c_, hp, wp = gxp.shape
    for b in range(nb):
        for c in range(c_):
            dst = gxp[b, c].reshape(hp * wp)
            for i in range(kh):
                for j in range(kw):
                    shifted = dst[i * dh * wp + j * dw :]
                    src = cols[(c * kh + i) * kw + j, b * length : (b + 1) * length]
                    for q in range(length):
                        shifted[q] += src[q]


def unwide(wide, out, row, length):
    """out[b, k, y, x] = wide[k, b*length + y*row + x] (rows of `row` columns, the
    first ow of each kept)."""
    nb, k_, oh, ow = out.shape
    for b in range(nb):
        for k in range(k_):
            src = wide[k, b * length : (b + 1) * length]
            dst = out[b, k].reshape(oh * ow)
            if row == ow:
                for q in range(oh * ow):
                    dst[q] = src[q]
            else:
                for y in range(oh):
                    for x in range(ow):
                        dst[y * ow + x] = src[y * row + x]


def widen(planes, wide, row, length):
    """wide[k, b*length + y*row + x] = planes[b, k, y, x] for x < ow, zero for ow <= x < row."""
    nb, k_, oh, ow = planes.shape
    for b in range(nb):
        for k in range(k_):
            dst = wide[k, b * length : (b + 1) * length]
            src = planes[b, k].reshape(oh * ow)
            if row == ow:
                for q in range(oh * ow):
                    dst[q] = src[q]
            else:
                dst[:] = 0.0
                for y in range(oh):
                    for x in range(min(ow, length - y * row)):
                        dst[y * row + x] = src[y * ow + x]


im2col_wide = serial(im2col_wide)
col2im_wide = serial(col2im_wide)
unwide = serial(unwide)
widen = serial(widen)


# ------------------------------------------------------------------ direct family


@parallel(fastmath=True)
def direct_forward(x, weight, out, groups, sh, sw, pt, pl, dh, dw):
    """out[n, k] = sum over the group's channels and kernel of weight * shifted input.

    Each iteration copies its input planes into a local zero-padded buffer, so the
    tap loops need no bounds tests; flat indices, not per-row views, because strided
    output rows are often only a few elements long."""
    n_, c_, h, w = x.shape
    k_, cg, kh, kw = weight.shape
    oh, ow = out.shape[2], out.shape[3]
    kg = k_ // groups
    hp, wp = padded_extent(h, w, pt, pl, oh, ow, kh, kw, sh, sw, dh, dw)
    for t in prange(n_ * k_):
        n = t // k_
        k = t % k_
        acc = np.zeros(oh * ow, dtype=out.dtype)
        padded = np.zeros((hp, wp), dtype=x.dtype)
        flat = padded.reshape(hp * wp)
        for cl in range(cg):
            padded[pt : pt + h, pl : pl + w] = x[n, (k // kg) * cg + cl]
            for i in range(kh):
                for j in range(kw):
                    wv = weight[k, cl, i, j]
                    for y in range(oh):
                        src = (y * sh + i * dh) * wp + j * dw
                        dst = y * ow
                        if sw == 2:
                            for q in range(ow):
                                acc[dst + q] += wv * flat[src + 2 * q]
                        else:
                            for q in range(ow):
                                acc[dst + q] += wv * flat[src + q * sw]
        out[n, k] = acc.reshape(oh, ow)


@parallel(fastmath=True)
def direct_input(weight, grad_output, gx, groups, sh, sw, pt, pl, dh, dw):
    """gx[n, c] = sum over the group's output channels of weight * grad_output, scattered
    back through each kernel offset into a local padded plane (owned by one
    iteration) and cropped."""
    n_, c_, h, w = gx.shape
    k_, cg, kh, kw = weight.shape
    oh, ow = grad_output.shape[2], grad_output.shape[3]
    kg = k_ // groups
    hp, wp = padded_extent(h, w, pt, pl, oh, ow, kh, kw, sh, sw, dh, dw)
    for t in prange(n_ * c_):
        n = t // c_
        c = t % c_
        cl = c % cg
        padded = np.zeros((hp, wp), dtype=gx.dtype)
        flat = padded.reshape(hp * wp)
        for kl in range(kg):
            k = (c // cg) * kg + kl
            g = grad_output[n, k].reshape(oh * ow)
            for i in range(kh):
                for j in range(kw):
                    wv = weight[k, cl, i, j]
                    for y in range(oh):
                        dst = (y * sh + i * dh) * wp + j * dw
                        src = y * ow
                        if sw == 2:
                            for q in range(ow):
                                flat[dst + 2 * q] += wv * g[src + q]
                        else:
                            for q in range(ow):
                                flat[dst + q * sw] += wv * g[src + q]
        gx[n, c] = padded[pt : pt + h, pl : pl + w]


@parallel(fastmath=True)
def direct_weight(x, grad_output, partial, groups, sh, sw, pt, pl, dh, dw, zero):
    """partial[b, k] = sum over the samples of batch chunk b of grad_output * shifted input.

    The caller sums `partial` over its first axis; chunks make enough parallel work
    when there are few output channels. `zero` has the arrays' dtype, so float32
    sums stay float32 (twice the vector width)."""
    n_, c_, h, w = x.shape
    chunks, k_, cg, kh, kw = partial.shape
    oh, ow = grad_output.shape[2], grad_output.shape[3]
    kg = k_ // groups
    hp, wp = padded_extent(h, w, pt, pl, oh, ow, kh, kw, sh, sw, dh, dw)
    for t in prange(chunks * k_):
        b = t // k_
        k = t % k_
        acc = partial[b, k]
        acc[:, :, :] = 0.0
        padded = np.zeros((hp, wp), dtype=x.dtype)
        flat = padded.reshape(hp * wp)
        for n in range(b * n_ // chunks, (b + 1) * n_ // chunks):
            g = grad_output[n, k].reshape(oh * ow)
            for cl in range(cg):
                padded[pt : pt + h, pl : pl + w] = x[n, (k // kg) * cg + cl]
                for i in range(kh):
                    for j in range(kw):
                        s = zero
                        for y in range(oh):
                            src = (y * sh + i * dh) * wp + j * dw
                            gr = y * ow
                            if sw == 2:
                                for q in range(ow):
                                    s += g[gr + q] * flat[src + 2 * q]
                            else:
                                for q in range(ow):
                                    s += g[gr + q] * flat[src + q * sw]
                        acc[cl, i, j] += s


@parallel
def sum_batch_spatial(grad_output, out, zero):
    """out[k] = sum of grad_output[:, k] (the bias gradient), one channel per iteration;
    `zero` has the arrays' dtype, so the sum does too."""
    n_, k_, oh, ow = grad_output.shape
    for k in prange(k_):
        s = zero
        for n in range(n_):
            for y in range(oh):
                for xo in range(ow):
                    s += grad_output[n, k, y, xo]
        out[k] = s


# ------------------------------------------------ direct family, stride 1 ("wide")
#
# With stride 1, output cell (y, x) and kernel tap (i, j) read padded input cell
# (y + i*dh, x + j*dw). Laying the output out with the padded row length Wp makes
# that one flat offset, (i*dh)*Wp + j*dw, for the whole plane: each tap becomes one
# long unit-stride loop over q = y*Wp + x. The Wp - ow extra columns per row are
# computed and dropped (forward), or read as zeros (gradients).


def pad_planes(x, xp, top, left):
    """xp[n, c] = x[n, c] placed at (top, left) in a zero plane."""
    n_, c_, h, w = x.shape
    for t in prange(n_ * c_):
        dst = xp[t // c_, t % c_]
        dst[:, :] = 0.0
        src = x[t // c_, t % c_]
        for y in range(h):
            d = dst[top + y, left:]
            s = src[y]
            for xo in range(w):
                d[xo] = s[xo]


# Serial, like the rest of the GEMM family's packing (see im2col).
pad_planes = serial(pad_planes)


@serial
def pad_into(plane, flat, top, left, wp):
    """flat (a zeroed Hp*Wp buffer) = plane placed at (top, left) in rows of length wp."""
    h, w = plane.shape
    flat[:] = 0.0
    for y in range(h):
        dst = flat[(top + y) * wp + left :]
        src = plane[y]
        for x in range(w):
            dst[x] = src[x]


@serial
def crop_wide(acc, plane, wp):
    """plane (oh, ow) = the first ow columns of each row of acc (rows of length wp)."""
    oh, ow = plane.shape
    for y in range(oh):
        a = acc[y * wp :]
        d = plane[y]
        for xo in range(ow):
            d[xo] = a[xo]


@parallel(fastmath=True)
def wide_forward(x, weight, out, groups, pt, pl, hp, wp, dh, dw, block):
    """Stride-1 forward; each iteration computes `block` (1 or 4) output channels of
    one group from each padded input plane, so that one load of the input feeds
    every channel's multiply-adds (4 accumulators stay in registers)."""
    n_, c_, h, w = x.shape
    k_, cg, kh, kw = weight.shape
    oh, ow = out.shape[2], out.shape[3]
    kg = k_ // groups
    length = (oh - 1) * wp + ow
    blocks = k_ // block
    for t in prange(n_ * blocks):
        n = t // blocks
        k = t % blocks * block
        acc = np.zeros((block, length), dtype=out.dtype)
        src = np.empty(hp * wp, dtype=x.dtype)
        for cl in range(cg):
            pad_into(x[n, (k // kg) * cg + cl], src, pt, pl, wp)
            for i in range(kh):
                row = i * dh * wp
                if block == 4 and kw == 3:
                    a0 = acc[0]
                    a1 = acc[1]
                    a2 = acc[2]
                    a3 = acc[3]
                    w00, w01, w02 = weight[k, cl, i, 0], weight[k, cl, i, 1], weight[k, cl, i, 2]
                    w10, w11, w12 = weight[k + 1, cl, i, 0], weight[k + 1, cl, i, 1], weight[k + 1, cl, i, 2]
                    w20, w21, w22 = weight[k + 2, cl, i, 0], weight[k + 2, cl, i, 1], weight[k + 2, cl, i, 2]
                    w30, w31, w32 = weight[k + 3, cl, i, 0], weight[k + 3, cl, i, 1], weight[k + 3, cl, i, 2]
                    s0 = src[row : row + length]
                    s1 = src[row + dw : row + dw + length]
                    s2 = src[row + 2 * dw : row + 2 * dw + length]
                    for q in range(length):
                        v0 = s0[q]
                        v1 = s1[q]
                        v2 = s2[q]
                        a0[q] += w00 * v0 + w01 * v1 + w02 * v2
                        a1[q] += w10 * v0 + w11 * v1 + w12 * v2
                        a2[q] += w20 * v0 + w21 * v1 + w22 * v2
                        a3[q] += w30 * v0 + w31 * v1 + w32 * v2
                elif block == 4:
                    a0 = acc[0]
                    a1 = acc[1]
                    a2 = acc[2]
                    a3 = acc[3]
                    for j in range(kw):
                        w0 = weight[k, cl, i, j]
                        w1 = weight[k + 1, cl, i, j]
                        w2 = weight[k + 2, cl, i, j]
                        w3 = weight[k + 3, cl, i, j]
                        sj = src[row + j * dw : row + j * dw + length]
                        for q in range(length):
                            v = sj[q]
                            a0[q] += w0 * v
                            a1[q] += w1 * v
                            a2[q] += w2 * v
                            a3[q] += w3 * v
                elif kw == 3:
                    a = acc[0]
                    w0 = weight[k, cl, i, 0]
                    w1 = weight[k, cl, i, 1]
                    w2 = weight[k, cl, i, 2]
                    s0 = src[row : row + length]
                    s1 = src[row + dw : row + dw + length]
                    s2 = src[row + 2 * dw : row + 2 * dw + length]
                    for q in range(length):
                        a[q] += w0 * s0[q] + w1 * s1[q] + w2 * s2[q]
                else:
                    a = acc[0]
                    for j in range(kw):
                        wv = weight[k, cl, i, j]
                        sj = src[row + j * dw : row + j * dw + length]
                        for q in range(length):
                            a[q] += wv * sj[q]
        for m in range(block):
            crop_wide(acc[m], out[n, k + m], wp)


@parallel(fastmath=True)
def wide_input(weight, grad_output, gx, groups, pt, pl, hp, wp, dh, dw):
    """Stride-1 input gradient. Each (n, c) iteration lays grad_output planes out in
    rows of the padded length Wp (zeros past ow), scatters them through the kernel
    into its own padded buffer, and crops that into gx."""
    n_, c_, h, w = gx.shape
    k_, cg, kh, kw = weight.shape
    oh = grad_output.shape[2]
    kg = k_ // groups
    length = (oh - 1) * wp + wp - (kw - 1) * dw
    for t in prange(n_ * c_):
        n = t // c_
        c = t % c_
        cl = c % cg
        acc = np.zeros(hp * wp, dtype=gx.dtype)
        src = np.empty(oh * wp, dtype=gx.dtype)
        for kl in range(kg):
            k = (c // cg) * kg + kl
            pad_into(grad_output[n, k], src, 0, 0, wp)
            for i in range(kh):
                for j in range(kw):
                    wv = weight[k, cl, i, j]
                    dst = acc[i * dh * wp + j * dw :]
                    for q in range(length):
                        dst[q] += wv * src[q]
        plane = gx[n, c]
        for y in range(h):
            a = acc[(y + pt) * wp + pl :]
            d = plane[y]
            for xo in range(w):
                d[xo] = a[xo]


@parallel(fastmath=True)
def wide_weight(x, grad_output, partial, groups, pt, pl, hp, wp, dh, dw, zero, block):
    """Stride-1 weight gradient: dot products of grad_output (rows of length Wp,
    zeros past ow) with the shifted padded input, per (batch chunk, block of `block`
    output channels of one group). With 4 channels and 3-wide kernel rows, one pass
    over the input makes 12 dot products from each load."""
    n_, c_, h, w = x.shape
    chunks, k_, cg, kh, kw = partial.shape
    oh = grad_output.shape[2]
    kg = k_ // groups
    length = (oh - 1) * wp + wp - (kw - 1) * dw
    blocks = k_ // block
    for t in prange(chunks * blocks):
        b = t // blocks
        k = t % blocks * block
        acc = partial[b, k : k + block]
        acc[:, :, :, :] = 0.0
        g = np.empty((block, oh * wp), dtype=x.dtype)
        src = np.empty(hp * wp, dtype=x.dtype)
        for n in range(b * n_ // chunks, (b + 1) * n_ // chunks):
            for m in range(block):
                pad_into(grad_output[n, k + m], g[m], 0, 0, wp)
            for cl in range(cg):
                pad_into(x[n, (k // kg) * cg + cl], src, pt, pl, wp)
                for i in range(kh):
                    if block == 4 and kw == 3:
                        g0 = g[0]
                        g1 = g[1]
                        g2 = g[2]
                        g3 = g[3]
                        s0 = src[i * dh * wp :]
                        s1 = src[i * dh * wp + dw :]
                        s2 = src[i * dh * wp + 2 * dw :]
                        # Unrolled by hand: twelve sums held in registers, each
                        # load of the input feeding four channels' three taps.
                        d00 = d01 = d02 = d10 = d11 = d12 = zero
                        d20 = d21 = d22 = d30 = d31 = d32 = zero
                        for q in range(length):
                            v0 = s0[q]
                            v1 = s1[q]
                            v2 = s2[q]
                            d00 += g0[q] * v0
                            d01 += g0[q] * v1
                            d02 += g0[q] * v2
                            d10 += g1[q] * v0
                            d11 += g1[q] * v1
                            d12 += g1[q] * v2
                            d20 += g2[q] * v0
                            d21 += g2[q] * v1
                            d22 += g2[q] * v2
                            d30 += g3[q] * v0
                            d31 += g3[q] * v1
                            d32 += g3[q] * v2
                        acc[0, cl, i, 0] += d00
                        acc[0, cl, i, 1] += d01
                        acc[0, cl, i, 2] += d02
                        acc[1, cl, i, 0] += d10
                        acc[1, cl, i, 1] += d11
                        acc[1, cl, i, 2] += d12
                        acc[2, cl, i, 0] += d20
                        acc[2, cl, i, 1] += d21
                        acc[2, cl, i, 2] += d22
                        acc[3, cl, i, 0] += d30
                        acc[3, cl, i, 1] += d31
                        acc[3, cl, i, 2] += d32
                        continue
                    for m in range(block):
                        gm = g[m]
                        for j in range(kw):
                            shifted = src[i * dh * wp + j * dw :]
                            s = zero
                            for q in range(length):
                                s += gm[q] * shifted[q]
                            acc[m, cl, i, j] += s


# ------------------------------------------------------------------ drivers


def _is_pointwise(g):
    return g.kh == 1 and g.kw == 1 and g.sh == 1 and g.sw == 1 and g.pt == g.pb == g.pl == g.pr == 0


def _geometry_args(g):
    return g.kh, g.kw, g.sh, g.sw, g.pt, g.pl, g.dh, g.dw, g.oh, g.ow


# Samples per packed chunk: the chunk's matrix stays in cache between being packed
# and being multiplied, the buffers are reused across chunks, and each chunk is one
# GEMM (K x R times R x chunk columns), wide enough for BLAS to run near its peak.
CHUNK_BYTES = 4 << 20


def _direct_pointwise(g):
    """A 1x1, stride-1, unpadded conv multiplies the input planes as they are."""
    return _is_pointwise(g) and g.oh == g.h and g.ow == g.w


def _grouped(a, g, rows):
    """View (n, groups * rows, P) as (n, groups, rows, P)."""
    return a.reshape(a.shape[0], g.groups, rows, g.oh * g.ow)


class _Packing:
    """How the GEMM path lays out a chunk of samples: a (rows, nb * length) matrix,
    sample b's columns at [b * length, (b + 1) * length).

    Stride 1 uses the "wide" layout (see the direct family below): output rows of the
    padded width, so packing is one contiguous copy per kernel tap. Other strides
    use im2col's (oh * ow) columns.
    """

    def __init__(self, g, itemsize):
        self.g = g
        self.wide = _is_wide(g)
        self.row = g.w + g.pl + g.pr if self.wide else g.ow
        self.length = (g.oh - 1) * self.row + g.ow if self.wide else g.oh * g.ow
        self.r = g.c_in * g.kh * g.kw
        per_sample = max(self.r, g.c_out) * self.length * itemsize
        self.step = min(g.n, max(1, CHUNK_BYTES // per_sample))
        self.chunks = [(n0, min(g.n, n0 + self.step)) for n0 in range(0, g.n, self.step)]

    def buffer(self, rows, dtype):
        return np.empty(rows * self.step * self.length, dtype=dtype)

    def view(self, buffer, rows, nb):
        """The chunk's (groups, rows / groups, nb * length) matrix in `buffer`."""
        return buffer[: rows * nb * self.length].reshape(self.g.groups, rows // self.g.groups, nb * self.length)

    def padded_input(self, x):
        return _padded(x, self.g) if self.wide else x

    def pack(self, x_chunk, cols):
        """cols (R, nb * length) = the windows of x_chunk (already padded if wide)."""
        g = self.g
        if self.wide:
            im2col_wide(x_chunk, cols, g.kh, g.kw, g.dh, g.dw, self.length)
        else:
            im2col(x_chunk, cols, *_geometry_args(g))

    def unpack_input_grad(self, cols, gx_chunk, scratch):
        """gx_chunk = col2im of cols (R, nb * length)."""
        g = self.g
        nb = gx_chunk.shape[0]
        if self.wide:
            gxp = scratch[:nb]
            gxp[:] = 0.0
            col2im_wide(cols, gxp, g.kh, g.kw, g.dh, g.dw, self.length)
            gx_chunk[:] = gxp[:, :, g.pt : g.pt + g.h, g.pl : g.pl + g.w]
        else:
            col2im(cols, gx_chunk, *_geometry_args(g))

    def scratch(self, dtype):
        g = self.g
        return np.empty((self.step, g.c_in, g.h + g.pt + g.pb, self.row), dtype=dtype) if self.wide else None


def _weights(weight, g):
    return weight.reshape(g.groups, g.c_out // g.groups, -1)


def gemm_forward(x, weight, g):
    out = np.empty(g.output_shape, dtype=x.dtype)
    w = _weights(weight, g)
    if _direct_pointwise(g):
        np.matmul(w, _grouped(x, g, g.c_in // g.groups), out=_grouped(out, g, g.c_out // g.groups))
        return out
    pk = _Packing(g, x.itemsize)
    xp = pk.padded_input(x)
    cols, result = pk.buffer(pk.r, x.dtype), pk.buffer(g.c_out, x.dtype)
    for n0, n1 in pk.chunks:
        c, r = pk.view(cols, pk.r, n1 - n0), pk.view(result, g.c_out, n1 - n0)
        pk.pack(xp[n0:n1], c.reshape(pk.r, -1))
        np.matmul(w, c, out=r)
        unwide(r.reshape(g.c_out, -1), out[n0:n1], pk.row, pk.length)
    return out


def gemm_input(weight, grad_output, g):
    wt = np.ascontiguousarray(_weights(weight, g).transpose(0, 2, 1))
    gx = np.empty(g.input_shape, dtype=grad_output.dtype)
    if _direct_pointwise(g):
        np.matmul(wt, _grouped(grad_output, g, g.c_out // g.groups), out=_grouped(gx, g, g.c_in // g.groups))
        return gx
    pk = _Packing(g, gx.itemsize)
    gyw, cols, scratch = pk.buffer(g.c_out, gx.dtype), pk.buffer(pk.r, gx.dtype), pk.scratch(gx.dtype)
    for n0, n1 in pk.chunks:
        gy_, c = pk.view(gyw, g.c_out, n1 - n0), pk.view(cols, pk.r, n1 - n0)
        widen(grad_output[n0:n1], gy_.reshape(g.c_out, -1), pk.row, pk.length)
        np.matmul(wt, gy_, out=c)
        pk.unpack_input_grad(c.reshape(pk.r, -1), gx[n0:n1], scratch)
    return gx


def gemm_weight(x, grad_output, g):
    kg, rg = g.c_out // g.groups, (g.c_in // g.groups) * g.kh * g.kw
    gw = np.zeros((g.groups, kg, rg), dtype=x.dtype)
    if _direct_pointwise(g):
        gw += np.matmul(_grouped(grad_output, g, kg), _grouped(x, g, rg).transpose(0, 1, 3, 2)).sum(axis=0)
        return gw.reshape(g.weight_shape)
    pk = _Packing(g, x.itemsize)
    xp = pk.padded_input(x)
    gyw, cols = pk.buffer(g.c_out, x.dtype), pk.buffer(pk.r, x.dtype)
    for n0, n1 in pk.chunks:
        gy_, c = pk.view(gyw, g.c_out, n1 - n0), pk.view(cols, pk.r, n1 - n0)
        widen(grad_output[n0:n1], gy_.reshape(g.c_out, -1), pk.row, pk.length)
        pk.pack(xp[n0:n1], c.reshape(pk.r, -1))
        gw += np.matmul(gy_, c.transpose(0, 2, 1))
    return gw.reshape(g.weight_shape)


def _args(g):
    return g.groups, g.sh, g.sw, g.pt, g.pl, g.dh, g.dw


def _weight_chunks(g, threads, block):
    # Enough (chunk, channel block) iterations to keep every thread busy; the chunk
    # count depends only on the shape and thread count, so reruns are bitwise identical.
    return max(1, min(g.n, -(-2 * threads // (g.c_out // block))))


def _is_wide(g):
    return g.sh == 1 and g.sw == 1


def _padded(x, g):
    xp = np.empty((x.shape[0], x.shape[1], g.h + g.pt + g.pb, g.w + g.pl + g.pr), dtype=x.dtype)
    pad_planes(x, xp, g.pt, g.pl)
    return xp


def _wide_args(g):
    return g.groups, g.pt, g.pl, g.h + g.pt + g.pb, g.w + g.pl + g.pr, g.dh, g.dw


def _channel_block(channels_per_group):
    """Output channels per wide_forward iteration."""
    return 4 if channels_per_group % 4 == 0 else 1


def _flipped_transpose(weight, g):
    """The weight of the stride-1 convolution that maps grad_output to the input
    gradient: channels swapped within each group, kernel rotated by 180 degrees."""
    kg, cg = g.c_out // g.groups, g.c_in // g.groups
    w = weight.reshape(g.groups, kg, cg, g.kh, g.kw).transpose(0, 2, 1, 3, 4)[:, :, :, ::-1, ::-1]
    return np.ascontiguousarray(w).reshape(g.c_in, kg, g.kh, g.kw)


def direct_forward_driver(x, weight, g):
    out = np.empty(g.output_shape, dtype=x.dtype)
    if _is_wide(g):
        wide_forward(x, weight, out, *_wide_args(g), _channel_block(g.c_out // g.groups))
    else:
        direct_forward(x, weight, out, *_args(g))
    return out


def direct_input_driver(weight, grad_output, g):
    gx = np.empty(g.input_shape, dtype=grad_output.dtype)
    # At stride 1 the input gradient is a forward convolution of grad_output with
    # the flipped, transposed weight, padded by the kernel's extent less the padding
    # (when no side of that is negative): the blocked forward kernel then runs it.
    top, left = (g.kh - 1) * g.dh - g.pt, (g.kw - 1) * g.dw - g.pl
    pads = [top, g.h - g.oh + (g.kh - 1) * g.dh - top, left, g.w - g.ow + (g.kw - 1) * g.dw - left]
    if _is_wide(g) and min(pads) >= 0:
        top, bottom, left, right = pads
        wt = _flipped_transpose(weight, g)
        wide_forward(grad_output, wt, gx, g.groups, top, left, g.oh + top + bottom, g.ow + left + right, g.dh, g.dw, _channel_block(g.c_in // g.groups))
    elif _is_wide(g):
        wide_input(weight, grad_output, gx, *_wide_args(g))
    else:
        direct_input(weight, grad_output, gx, *_args(g))
    return gx


def direct_weight_driver(x, grad_output, g, threads):
    block = _channel_block(g.c_out // g.groups) if _is_wide(g) else 1
    partial = np.empty((_weight_chunks(g, threads, block),) + g.weight_shape, dtype=x.dtype)
    if _is_wide(g):
        wide_weight(x, grad_output, partial, *_wide_args(g), x.dtype.type(0), block)
    else:
        direct_weight(x, grad_output, partial, *_args(g), x.dtype.type(0))
    return partial.sum(axis=0) if partial.shape[0] > 1 else partial[0]


def bias_grad(grad_output):
    out = np.empty(grad_output.shape[1], dtype=grad_output.dtype)
    sum_batch_spatial(grad_output, out, grad_output.dtype.type(0))
    return out
