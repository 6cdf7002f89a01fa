"""Convolution by GEMM: forward, input gradient and weight gradient, and the bias
gradient. (The other family, loops, is fastconv.kernels.direct.)

A chunk of samples is packed (im2col, serial Numba code) into a (C*kh*kw, samples *
positions) matrix and multiplied with the weight by BLAS, called from Python, never
inside a prange; `col2im` adds a gradient matrix back onto the input. The chunks are
dealt to fastconv's GEMM threads (fastconv.kernels.gemm), each packing and
multiplying its own, single-threaded. See `_Packing` for the layouts. 1x1
convolutions multiply the planes as they are.

Geometry: input (N, C, H, W), OIHW weight (K, C/groups, kh, kw), output (N, K, oh, ow);
an output cell (y, x) meets input row y*sh - pt + i*dh and column x*sw - pl + j*dw.
"""

import numpy as np
from numba import prange

from ._jit import parallel, serial
from .gemm import in_parallel, matmul, threads_for
from .phases import from_phases, from_wide, phase_shape, tap_starts, to_phases, to_wide

# ------------------------------------------------------------------ im2col family
#
# Packing uses the polyphase wide layout of fastconv.kernels.phases: sample b's
# columns are [b * length, (b + 1) * length), output cell (y, x) at column
# y * wq + x, and each kernel tap's row is one contiguous copy of a plane's phases
# from the tap's start, at any stride and dilation. (A row per output row would be
# a loop of ow elements, too short for LLVM's vector loops.) The wq - ow extra
# columns per row are computed by the GEMM and dropped by `unwide`.


def im2col(x, cols, starts, top, left, sh, sw, hq, wq, length):
    """cols[c*T + u, b*length + q] = phases(x[b, c])[starts[u] + q], T = len(starts):
    the windows of a chunk of samples, x[b, c] zero-padded at (top, left)."""
    nb, c_ = x.shape[0], x.shape[1]
    taps = starts.shape[0]
    band = np.empty(sh * sw * hq * wq, dtype=x.dtype)
    scratch = np.empty(0 if sw == 1 else sh * sw * hq * wq, dtype=x.dtype)
    for b in range(nb):
        for c in range(c_):
            to_phases(x[b, c], band, scratch, top, left, sh, sw, hq, wq)
            for u in range(taps):
                dst = cols[c * taps + u, b * length : (b + 1) * length]
                src = band[starts[u] : starts[u] + length]
                for q in range(length):
                    dst[q] = src[q]


def col2im(cols, gx, starts, top, left, sh, sw, hq, wq, length):
    """Adjoint of im2col: gx[b, c] = the sum of the cols entries that came from each
    of its cells, added up in the phases of the padded plane and cropped."""
    nb, c_ = gx.shape[0], gx.shape[1]
    taps = starts.shape[0]
    band = np.empty(sh * sw * hq * wq, dtype=gx.dtype)
    for b in range(nb):
        for c in range(c_):
            band[:] = 0.0
            for u in range(taps):
                dst = band[starts[u] : starts[u] + length]
                src = cols[c * taps + u, b * length : (b + 1) * length]
                for q in range(length):
                    dst[q] += src[q]
            from_phases(band, gx[b, c], top, left, sh, sw, hq, wq, hq * wq)


# Packing runs in the GEMM threads beside the products (no OpenMP region between
# BLAS calls, whose threads would spin while the other's work), hence serial.
im2col = serial(im2col)
col2im = serial(col2im)


def unwide(wide, out, row, length):
    """out[b, k, y, x] = wide[k, b*length + y*row + x] (rows of `row` columns, the
    first ow of each kept)."""
    nb, k_, oh, ow = out.shape
    for b in range(nb):
        for k in range(k_):
            src = wide[k, b * length : (b + 1) * length]
            if row == ow:
                # one long copy
                dst = out[b, k].reshape(oh * ow)
                for q in range(oh * ow):
                    dst[q] = src[q]
            else:
                from_wide(src, out[b, k], 0, row)


def widen(planes, wide, row, length):
    """wide[k, b*length + y*row + x] = planes[b, k, y, x] for x < ow, zero for ow <= x < row."""
    nb, k_, oh, ow = planes.shape
    for b in range(nb):
        for k in range(k_):
            dst = wide[k, b * length : (b + 1) * length]
            if row == ow:
                src = planes[b, k].reshape(oh * ow)
                for q in range(oh * ow):
                    dst[q] = src[q]
            else:
                dst[:] = 0.0
                to_wide(planes[b, k], dst, 0, row)


unwide = serial(unwide)
widen = serial(widen)


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
    """How the GEMM path lays out a chunk of samples: a (rows, nb * length) matrix in
    the wide layout (see im2col), rows of wq columns."""

    def __init__(self, g, itemsize, threads):
        self.g = g
        threads = threads_for(g.flops, threads)
        self.hq, self.row = phase_shape(g)
        self.length = (g.oh - 1) * self.row + g.ow
        self.starts = tap_starts(g, [(i, j) for i in range(g.kh) for j in range(g.kw)], self.hq, self.row)
        self.r = g.c_in * g.kh * g.kw
        per_sample = max(self.r, g.c_out) * self.length * itemsize
        # as many chunks for each thread (in_parallel deals them in contiguous runs),
        # of sizes within a sample of each other: res3x3_s2's 32 samples in chunks of
        # 13, 13 and 6 kept one thread busy a third longer than the other
        count = -(-g.n // max(1, CHUNK_BYTES // per_sample))
        count = min(g.n, -(-count // threads) * threads)
        self.chunks = [(g.n * i // count, g.n * (i + 1) // count) for i in range(count)]
        self.step = -(-g.n // count)
        # one chunk (a single sample, say): its GEMM split across the threads instead
        self.gemm_threads = threads if len(self.chunks) == 1 else 1

    def buffer(self, rows, dtype):
        return np.empty(rows * self.step * self.length, dtype=dtype)

    def view(self, buffer, rows, nb):
        """The chunk's (groups, rows / groups, nb * length) matrix in `buffer`."""
        return buffer[: rows * nb * self.length].reshape(self.g.groups, rows // self.g.groups, nb * self.length)

    def _layout(self):
        g = self.g
        return self.starts, g.pt, g.pl, g.sh, g.sw, self.hq, self.row, self.length

    def pack(self, x_chunk, cols):
        """cols (R, nb * length) = the windows of x_chunk."""
        im2col(x_chunk, cols, *self._layout())

    def unpack_input_grad(self, cols, gx_chunk):
        """gx_chunk = col2im of cols (R, nb * length)."""
        col2im(cols, gx_chunk, *self._layout())


def _weights(weight, g):
    return weight.reshape(g.groups, g.c_out // g.groups, -1)


def gemm_forward(x, weight, g, threads):
    out = np.empty(g.output_shape, dtype=x.dtype)
    w = _weights(weight, g)
    if _direct_pointwise(g):
        matmul(w, _grouped(x, g, g.c_in // g.groups), _grouped(out, g, g.c_out // g.groups), threads)
        return out
    pk = _Packing(g, x.itemsize, threads)

    def run(chunks):
        cols, result = pk.buffer(pk.r, x.dtype), pk.buffer(g.c_out, x.dtype)
        for n0, n1 in chunks:
            c, r = pk.view(cols, pk.r, n1 - n0), pk.view(result, g.c_out, n1 - n0)
            pk.pack(x[n0:n1], c.reshape(pk.r, -1))
            matmul(w, c, r, pk.gemm_threads)
            unwide(r.reshape(g.c_out, -1), out[n0:n1], pk.row, pk.length)

    in_parallel(pk.chunks, threads, run)
    return out


def gemm_input(weight, grad_output, g, threads):
    wt = np.ascontiguousarray(_weights(weight, g).transpose(0, 2, 1))
    gx = np.empty(g.input_shape, dtype=grad_output.dtype)
    if _direct_pointwise(g):
        matmul(wt, _grouped(grad_output, g, g.c_out // g.groups), _grouped(gx, g, g.c_in // g.groups), threads)
        return gx
    pk = _Packing(g, gx.itemsize, threads)

    def run(chunks):
        gyw, cols = pk.buffer(g.c_out, gx.dtype), pk.buffer(pk.r, gx.dtype)
        for n0, n1 in chunks:
            gy_, c = pk.view(gyw, g.c_out, n1 - n0), pk.view(cols, pk.r, n1 - n0)
            widen(grad_output[n0:n1], gy_.reshape(g.c_out, -1), pk.row, pk.length)
            matmul(wt, gy_, c, pk.gemm_threads)
            pk.unpack_input_grad(c.reshape(pk.r, -1), gx[n0:n1])

    in_parallel(pk.chunks, threads, run)
    return gx


def gemm_weight(x, grad_output, g, threads):
    kg, rg = g.c_out // g.groups, (g.c_in // g.groups) * g.kh * g.kw
    if _direct_pointwise(g):
        per_sample = np.empty((g.n, g.groups, kg, rg), dtype=x.dtype)
        matmul(_grouped(grad_output, g, kg), _grouped(x, g, rg).transpose(0, 1, 3, 2), per_sample, threads)
        return per_sample.sum(axis=0).reshape(g.weight_shape)
    pk = _Packing(g, x.itemsize, threads)

    def run(chunks):
        """The chunks' sum, each thread its own."""
        gw = np.zeros((g.groups, kg, rg), dtype=x.dtype)
        gyw, cols = pk.buffer(g.c_out, x.dtype), pk.buffer(pk.r, x.dtype)
        for n0, n1 in chunks:
            gy_, c = pk.view(gyw, g.c_out, n1 - n0), pk.view(cols, pk.r, n1 - n0)
            widen(grad_output[n0:n1], gy_.reshape(g.c_out, -1), pk.row, pk.length)
            pk.pack(x[n0:n1], c.reshape(pk.r, -1))
            matmul(gy_, c.transpose(0, 2, 1), gw, pk.gemm_threads, accumulate=True)
        return gw

    return sum(in_parallel(pk.chunks, threads, run)).reshape(g.weight_shape)


def bias_grad(grad_output):
    out = np.empty(grad_output.shape[1], dtype=grad_output.dtype)
    sum_batch_spatial(grad_output, out, grad_output.dtype.type(0))
    return out
