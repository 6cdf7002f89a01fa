"""Convolution kernels: forward, input gradient and weight gradient.

Two families, chosen per shape by the caller:

- GEMM: `im2col` packs each sample's windows into a (C*kh*kw, oh*ow) matrix with
  parallel Numba code, then BLAS multiplies it with the weight (called from Python,
  never inside a prange). `col2im` adds a gradient matrix back onto the input.
- Direct: loops with the output row innermost (unit stride), for shapes whose
  reduction is too small for GEMM to pay off: depthwise and narrow groups, first
  layers with 1 or 3 input channels.

Every kernel writes disjoint outputs per prange iteration: forward over (n, k)
planes, input gradient over (n, c) planes (a scatter inside an owned plane), weight
gradient over (batch chunk, k) with a fixed-order sum over chunks afterwards.

Geometry: input (N, C, H, W), OIHW weight (K, C/groups, kh, kw), output (N, K, oh, ow);
an output cell (y, x) meets input row y*sh - pt + i*dh and column x*sw - pl + j*dw.
"""

import numpy as np
from numba import prange

from ._jit import parallel, serial


@serial
def valid_range(out, stride, offset, size):
    """Outputs o in [lo, hi) whose input cell o*stride + offset lies in [0, size)."""
    lo = 0 if offset >= 0 else (-offset + stride - 1) // stride
    hi = 0 if size - 1 - offset < 0 else (size - 1 - offset) // stride + 1
    lo = min(lo, out)
    hi = min(max(hi, lo), out)
    return lo, hi


# ------------------------------------------------------------------ im2col family


@parallel
def im2col(x, cols, kh, kw, sh, sw, pt, pl, dh, dw, oh, ow):
    """cols[n, (c*kh + i)*kw + j, y*ow + x] = x[n, c, y*sh - pt + i*dh, x*sw - pl + j*dw] or 0."""
    n_, c_, h, w = x.shape
    for t in prange(n_ * c_):
        n = t // c_
        c = t % c_
        for i in range(kh):
            for j in range(kw):
                row = cols[n, (c * kh + i) * kw + j]
                off = j * dw - pl
                lo, hi = valid_range(ow, sw, off, w)
                for y in range(oh):
                    iy = y * sh - pt + i * dh
                    base = y * ow
                    if iy < 0 or iy >= h:
                        for xo in range(ow):
                            row[base + xo] = 0.0
                        continue
                    src = x[n, c, iy]
                    for xo in range(lo):
                        row[base + xo] = 0.0
                    if sw == 1:
                        for xo in range(lo, hi):
                            row[base + xo] = src[xo + off]
                    else:
                        for xo in range(lo, hi):
                            row[base + xo] = src[xo * sw + off]
                    for xo in range(hi, ow):
                        row[base + xo] = 0.0


@parallel
def col2im(cols, gx, kh, kw, sh, sw, pt, pl, dh, dw, oh, ow):
    """Adjoint of im2col: gx[n, c] = sum of the cols entries that came from each cell."""
    n_, c_, h, w = gx.shape
    for t in prange(n_ * c_):
        n = t // c_
        c = t % c_
        plane = gx[n, c]
        plane[:, :] = 0.0
        for i in range(kh):
            for j in range(kw):
                row = cols[n, (c * kh + i) * kw + j]
                off = j * dw - pl
                lo, hi = valid_range(ow, sw, off, w)
                for y in range(oh):
                    iy = y * sh - pt + i * dh
                    if iy < 0 or iy >= h:
                        continue
                    dst = plane[iy]
                    base = y * ow
                    if sw == 1:
                        for xo in range(lo, hi):
                            dst[xo + off] += row[base + xo]
                    else:
                        for xo in range(lo, hi):
                            dst[xo * sw + off] += row[base + xo]


# ------------------------------------------------------------------ direct family


@parallel(fastmath=True)
def direct_forward(x, weight, out, groups, sh, sw, pt, pl, dh, dw):
    """out[n, k] = sum over the group's channels and kernel of weight * shifted input."""
    n_, c_, h, w = x.shape
    k_, cg, kh, kw = weight.shape
    oh, ow = out.shape[2], out.shape[3]
    kg = k_ // groups
    for t in prange(n_ * k_):
        n = t // k_
        k = t % k_
        plane = out[n, k]
        plane[:, :] = 0.0
        for cl in range(cg):
            c = (k // kg) * cg + cl
            for i in range(kh):
                for j in range(kw):
                    wv = weight[k, cl, i, j]
                    off = j * dw - pl
                    lo, hi = valid_range(ow, sw, off, w)
                    for y in range(oh):
                        iy = y * sh - pt + i * dh
                        if iy < 0 or iy >= h:
                            continue
                        src = x[n, c, iy]
                        dst = plane[y]
                        if sw == 1:
                            for xo in range(lo, hi):
                                dst[xo] += wv * src[xo + off]
                        else:
                            for xo in range(lo, hi):
                                dst[xo] += wv * src[xo * sw + off]


@parallel(fastmath=True)
def direct_input(weight, grad_output, gx, groups, sh, sw, pt, pl, dh, dw):
    """gx[n, c] = sum over the group's output channels of weight * grad_output, scattered
    back through each kernel offset (the plane is owned by one iteration)."""
    n_, c_, h, w = gx.shape
    k_, cg, kh, kw = weight.shape
    oh, ow = grad_output.shape[2], grad_output.shape[3]
    kg = k_ // groups
    for t in prange(n_ * c_):
        n = t // c_
        c = t % c_
        cl = c % cg
        plane = gx[n, c]
        plane[:, :] = 0.0
        for kl in range(kg):
            k = (c // cg) * kg + kl
            for i in range(kh):
                for j in range(kw):
                    wv = weight[k, cl, i, j]
                    off = j * dw - pl
                    lo, hi = valid_range(ow, sw, off, w)
                    for y in range(oh):
                        iy = y * sh - pt + i * dh
                        if iy < 0 or iy >= h:
                            continue
                        src = grad_output[n, k, y]
                        dst = plane[iy]
                        if sw == 1:
                            for xo in range(lo, hi):
                                dst[xo + off] += wv * src[xo]
                        else:
                            for xo in range(lo, hi):
                                dst[xo * sw + off] += wv * src[xo]


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
    for t in prange(chunks * k_):
        b = t // k_
        k = t % k_
        acc = partial[b, k]
        acc[:, :, :] = 0.0
        for n in range(b * n_ // chunks, (b + 1) * n_ // chunks):
            for cl in range(cg):
                c = (k // kg) * cg + cl
                for i in range(kh):
                    for j in range(kw):
                        off = j * dw - pl
                        lo, hi = valid_range(ow, sw, off, w)
                        s = zero
                        for y in range(oh):
                            iy = y * sh - pt + i * dh
                            if iy < 0 or iy >= h:
                                continue
                            src = x[n, c, iy]
                            g = grad_output[n, k, y]
                            if sw == 1:
                                for xo in range(lo, hi):
                                    s += g[xo] * src[xo + off]
                            else:
                                for xo in range(lo, hi):
                                    s += g[xo] * src[xo * sw + off]
                        acc[cl, i, j] += s


@parallel
def sum_batch_spatial(grad_output, out):
    """out[k] = sum of grad_output[:, k] (the bias gradient), one channel per iteration."""
    n_, k_, oh, ow = grad_output.shape
    for k in prange(k_):
        s = out[k] - out[k]
        for n in range(n_):
            for y in range(oh):
                for xo in range(ow):
                    s += grad_output[n, k, y, xo]
        out[k] = s


@parallel
def add_channel_bias(out, bias):
    n_, k_, oh, ow = out.shape
    for t in prange(n_ * k_):
        b = bias[t % k_]
        plane = out[t // k_, t % k_]
        for y in range(oh):
            for xo in range(ow):
                plane[y, xo] += b


# ------------------------------------------------------------------ drivers


def _is_pointwise(g):
    return g.kh == 1 and g.kw == 1 and g.sh == 1 and g.sw == 1 and g.pt == g.pb == g.pl == g.pr == 0


def _geometry_args(g):
    return g.kh, g.kw, g.sh, g.sw, g.pt, g.pl, g.dh, g.dw, g.oh, g.ow


def _cols(x, g):
    """Per-sample im2col matrices, grouped: (N, groups, C/groups*kh*kw, oh*ow)."""
    if _is_pointwise(g) and g.oh == g.h and g.ow == g.w:
        return x.reshape(g.n, g.groups, g.c_in // g.groups, g.oh * g.ow)
    cols = np.empty((g.n, g.c_in * g.kh * g.kw, g.oh * g.ow), dtype=x.dtype)
    im2col(x, cols, *_geometry_args(g))
    return cols.reshape(g.n, g.groups, -1, g.oh * g.ow)


def gemm_forward(x, weight, g):
    out = np.empty(g.output_shape, dtype=x.dtype)
    w = weight.reshape(g.groups, g.c_out // g.groups, -1)
    np.matmul(w, _cols(x, g), out=out.reshape(g.n, g.groups, g.c_out // g.groups, g.oh * g.ow))
    return out


def gemm_input(weight, grad_output, g):
    w = weight.reshape(g.groups, g.c_out // g.groups, -1)
    gy = grad_output.reshape(g.n, g.groups, g.c_out // g.groups, g.oh * g.ow)
    wt = np.ascontiguousarray(w.transpose(0, 2, 1))
    if _is_pointwise(g) and g.oh == g.h and g.ow == g.w:
        gx = np.empty((g.n, g.c_in, g.h, g.w), dtype=grad_output.dtype)
        np.matmul(wt, gy, out=gx.reshape(g.n, g.groups, g.c_in // g.groups, g.oh * g.ow))
        return gx
    cols = np.matmul(wt, gy).reshape(g.n, -1, g.oh * g.ow)
    gx = np.empty((g.n, g.c_in, g.h, g.w), dtype=grad_output.dtype)
    col2im(cols, gx, *_geometry_args(g))
    return gx


def gemm_weight(x, grad_output, g):
    gy = grad_output.reshape(g.n, g.groups, g.c_out // g.groups, g.oh * g.ow)
    per_sample = np.matmul(gy, _cols(x, g).transpose(0, 1, 3, 2))
    return per_sample.sum(axis=0).reshape(g.weight_shape)


def _args(g):
    return g.groups, g.sh, g.sw, g.pt, g.pl, g.dh, g.dw


def direct_forward_driver(x, weight, g):
    out = np.empty(g.output_shape, dtype=x.dtype)
    direct_forward(x, weight, out, *_args(g))
    return out


def direct_input_driver(weight, grad_output, g):
    gx = np.empty(g.input_shape, dtype=grad_output.dtype)
    direct_input(weight, grad_output, gx, *_args(g))
    return gx


def direct_weight_driver(x, grad_output, g, threads):
    # Enough (chunk, k) iterations to keep every thread busy; the chunk count depends
    # only on the shape and thread count, so reruns are bitwise identical.
    chunks = max(1, min(g.n, -(-2 * threads // g.c_out)))
    partial = np.empty((chunks,) + g.weight_shape, dtype=x.dtype)
    direct_weight(x, grad_output, partial, *_args(g), x.dtype.type(0))
    return partial.sum(axis=0) if chunks > 1 else partial[0]


def bias_grad(grad_output):
    out = np.zeros(grad_output.shape[1], dtype=grad_output.dtype)
    sum_batch_spatial(grad_output, out)
    return out
