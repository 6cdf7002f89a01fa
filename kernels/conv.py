"""Convolution by GEMM: forward, input gradient and weight gradient, and the bias
gradient. (The other family, loops, is fastconv.kernels.direct.)

A chunk of samples is packed (im2col, serial Numba code beside BLAS's own threads)
into a (C*kh*kw, samples * positions) matrix and multiplied with the weight by BLAS,
called from Python, never inside a prange; `col2im` adds a gradient matrix back onto
the input. See `_Packing` for the layouts. 1x1 convolutions multiply the planes as
they are.

Geometry: input (N, C, H, W), OIHW weight (K, C/groups, kh, kw), output (N, K, oh, ow);
an output cell (y, x) meets input row y*sh - pt + i*dh and column x*sw - pl + j*dw.
"""

import numpy as np
from numba import prange

from ._jit import parallel, serial
from .phases import padded_extent

# ------------------------------------------------------------------ im2col family


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


# ------------------------------------------------------------------ bias


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

    Stride 1 uses the "wide" layout (fastconv.kernels.phases, one phase): output rows
    of the padded width, so packing is one contiguous copy per kernel tap. Other
    strides use im2col's (oh * ow) columns.
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


def _is_wide(g):
    return g.sh == 1 and g.sw == 1


def _padded(x, g):
    xp = np.empty((x.shape[0], x.shape[1], g.h + g.pt + g.pb, g.w + g.pl + g.pr), dtype=x.dtype)
    pad_planes(x, xp, g.pt, g.pl)
    return xp


def bias_grad(grad_output):
    out = np.empty(grad_output.shape[1], dtype=grad_output.dtype)
    sum_batch_spatial(grad_output, out, grad_output.dtype.type(0))
    return out
