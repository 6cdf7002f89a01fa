"""Direct convolution kernels: forward, input gradient and weight gradient as loops,
for shapes whose GEMM would be thin or whose packing would cost more than the
arithmetic: depthwise and grouped convolutions, few channels, stride 1.

All three work in the polyphase wide layout of fastconv.kernels.phases: each kernel
tap is one contiguous loop over a whole plane, at any stride and dilation. Taps are
taken three at a time and output (or input) channels four at a time, the channels of
one group, so that one load of a plane feeds twelve multiply-adds and the four
accumulators stay in registers (one channel at a time where four would leave
threads idle). The forward and weight gradient pad their tap lists to a multiple of
three with taps of weight zero; the input gradient takes each phase's taps in
chunks of three, two or one.

Every prange iteration owns its outputs: the forward a block of output planes of
one sample, the input gradient a block of input planes of one sample, the weight
gradient a block of output channels over a chunk of the batch (the caller sums the
chunks in a fixed order, so reruns are bitwise identical).
"""

import numpy as np
from numba import prange

from ._jit import parallel, serial
from .phases import fill_phases, padded_extent, tap_start

BLOCK = 4  # channels per iteration, at most


@serial(inline=True)
def to_phases(plane, dst, scratch, top, left, sh, sw, hq, wq):
    """dst (flat, sh*sw*hq*wq) = plane zero-padded at (top, left), split by phase
    (fill_phases; `scratch` as its `padded`)."""
    if sh == 1 and sw == 1:
        # the common case as plain row copies: measured 20-35% faster on a stride-1
        # depthwise forward than fill_phases' general loops
        dst[:] = 0.0
        for r in range(plane.shape[0]):
            cells = dst[(r + top) * wq + left :]
            row = plane[r]
            for q in range(plane.shape[1]):
                cells[q] = row[q]
        return
    fill_phases(plane, 0, top, left, sh, sw, hq, wq, 0.0, dst, scratch)


@serial(inline=True)
def from_phases(flat, plane, top, left, sh, sw, hq, wq):
    """plane (h, w) = its cells in the flat phases (sh*sw*hq*wq) of the plane
    zero-padded at (top, left), the adjoint of fill_phases' placement; the padding
    is dropped."""
    h, w = plane.shape
    size = hq * wq
    for r in range(h):
        a = (r + top) % sh
        y = (r + top) // sh
        row = plane[r]
        for b in range(sw):
            # input columns q0, q0 + sw, ... are phase b's, from its column (q0 + left) // sw
            q0 = (b - left) % sw
            cells = flat[(a * sw + b) * size + y * wq + (q0 + left) // sw :]
            if sw == 1:
                # a unit-stride loop of its own, so that LLVM vectorises it
                for q in range(w):
                    row[q] = cells[q]
            else:
                for k in range((w - q0 + sw - 1) // sw):
                    row[q0 + k * sw] = cells[k]


@serial(inline=True)
def to_wide(plane, dst, offset, wq):
    """dst[offset + y*wq + x] = plane[y, x]; the other cells of dst keep their values."""
    oh, ow = plane.shape
    for y in range(oh):
        d = dst[offset + y * wq :]
        s = plane[y]
        for xo in range(ow):
            d[xo] = s[xo]


@serial(inline=True)
def channel_block(t, groups, per_group, channels, block):
    """Iteration t's sample, group, first channel and channel count, for blocks of
    `block` channels within groups of `channels`."""
    n = t // (groups * per_group)
    group = t // per_group % groups
    first = group * channels + t % per_group * block
    return n, group, first, min(block, (group + 1) * channels - first)


@serial(fastmath=True, inline=True)
def add_two(acc, rows, s0, s1, w, length):
    """add_taps for two taps, or one (s1 is s0 and w[:, 1] unused when w has one
    column)."""
    if w.shape[1] == 1:
        for m in range(rows):
            a = acc[m]
            w0 = w[m, 0]
            for q in range(length):
                a[q] += w0 * s0[q]
        return
    if rows == BLOCK:
        a0, a1, a2, a3 = acc[0], acc[1], acc[2], acc[3]
        w00, w01, w10, w11 = w[0, 0], w[0, 1], w[1, 0], w[1, 1]
        w20, w21, w30, w31 = w[2, 0], w[2, 1], w[3, 0], w[3, 1]
        for q in range(length):
            v0 = s0[q]
            v1 = s1[q]
            a0[q] += w00 * v0 + w01 * v1
            a1[q] += w10 * v0 + w11 * v1
            a2[q] += w20 * v0 + w21 * v1
            a3[q] += w30 * v0 + w31 * v1
        return
    for m in range(rows):
        a = acc[m]
        w0, w1 = w[m, 0], w[m, 1]
        for q in range(length):
            a[q] += w0 * s0[q] + w1 * s1[q]


@serial(fastmath=True, inline=True)
def add_taps(acc, rows, s0, s1, s2, w, length):
    """acc[m, :length] += w[m, 0] * s0 + w[m, 1] * s1 + w[m, 2] * s2 for m < rows; with
    four rows, all four in one pass (unrolled by hand: each load feeds twelve
    multiply-adds). A w of fewer columns means fewer taps (see add_two)."""
    if w.shape[1] < 3:
        add_two(acc, rows, s0, s1, w, length)
        return
    if rows == BLOCK:
        a0, a1, a2, a3 = acc[0], acc[1], acc[2], acc[3]
        w00, w01, w02 = w[0, 0], w[0, 1], w[0, 2]
        w10, w11, w12 = w[1, 0], w[1, 1], w[1, 2]
        w20, w21, w22 = w[2, 0], w[2, 1], w[2, 2]
        w30, w31, w32 = w[3, 0], w[3, 1], w[3, 2]
        for q in range(length):
            v0 = s0[q]
            v1 = s1[q]
            v2 = s2[q]
            a0[q] += w00 * v0 + w01 * v1 + w02 * v2
            a1[q] += w10 * v0 + w11 * v1 + w12 * v2
            a2[q] += w20 * v0 + w21 * v1 + w22 * v2
            a3[q] += w30 * v0 + w31 * v1 + w32 * v2
        return
    for m in range(rows):
        a = acc[m]
        w0, w1, w2 = w[m, 0], w[m, 1], w[m, 2]
        for q in range(length):
            a[q] += w0 * s0[q] + w1 * s1[q] + w2 * s2[q]


@parallel(fastmath=True)
def forward(x, wtap, starts, out, groups, top, left, sh, sw, hq, wq, block):
    """out[n, k] = sum over the group's input channels c and taps u of
    wtap[k, c, u] * phases(x[n, c])[starts[u] + q], q in the wide layout. Each
    iteration splits its input planes into phases itself (a plane in cache)."""
    n_ = x.shape[0]
    k_, cg, taps = wtap.shape
    oh, ow = out.shape[2], out.shape[3]
    kg = k_ // groups
    length = (oh - 1) * wq + ow
    per_group = -(-kg // block)
    for t in prange(n_ * groups * per_group):
        n, group, k0, size = channel_block(t, groups, per_group, kg, block)
        acc = np.zeros((min(block, kg), length), dtype=out.dtype)
        src = np.empty(sh * sw * hq * wq, dtype=x.dtype)
        scratch = np.empty(0 if sw == 1 else sh * sw * hq * wq, dtype=x.dtype)
        for cl in range(cg):
            to_phases(x[n, group * cg + cl], src, scratch, top, left, sh, sw, hq, wq)
            for u in range(0, taps, 3):
                s0 = src[starts[u] : starts[u] + length]
                s1 = src[starts[u + 1] : starts[u + 1] + length]
                s2 = src[starts[u + 2] : starts[u + 2] + length]
                add_taps(acc, size, s0, s1, s2, wtap[k0 : k0 + size, cl, u : u + 3], length)
        for m in range(size):
            plane = out[n, k0 + m]
            for y in range(oh):
                a = acc[m, y * wq :]
                d = plane[y]
                for xo in range(ow):
                    d[xo] = a[xo]


@parallel(fastmath=True)
def input_grad(wtap, offsets, chunks, grad_output, gx, groups, top, left, sh, sw, hq, wq, extension, block):
    """gx[n, c] = sum over the group's output channels k and taps u of
    wtap[k, c, u] * grad_output[n, k] shifted by the tap: a gather into each phase of
    the padded gradient plane. Taps come in chunks of one phase, chunks[i] = (first
    tap, number of taps (3 at most), phase); offsets[u] is tap u's shift in the wide
    layout, at most `extension`."""
    n_, c_, h, w = gx.shape
    k_, cg = wtap.shape[0], wtap.shape[1]
    kg = k_ // groups
    size = hq * wq
    per_group = -(-cg // block)
    for t in prange(n_ * groups * per_group):
        n, group, c0, count = channel_block(t, groups, per_group, cg, block)
        cl0 = c0 - group * cg
        acc = np.zeros((min(block, cg), sh * sw * size), dtype=gx.dtype)
        # grad_output in the wide layout after `extension` zeros, so that every shift
        # reads inside; the cells never written stay zero
        g = np.zeros(extension + size, dtype=gx.dtype)
        for kl in range(kg):
            k = group * kg + kl
            to_wide(grad_output[n, k], g, extension, wq)
            for i in range(chunks.shape[0]):
                u, width, base = chunks[i, 0], chunks[i, 1], chunks[i, 2] * size
                o0 = extension - offsets[u]
                o1 = extension - offsets[u + min(1, width - 1)]
                o2 = extension - offsets[u + width - 1]
                e0, e1, e2 = g[o0 : o0 + size], g[o1 : o1 + size], g[o2 : o2 + size]
                add_taps(acc[:, base : base + size], count, e0, e1, e2, wtap[k, cl0 : cl0 + count, u : u + width], size)
        for m in range(count):
            from_phases(acc[m], gx[n, c0 + m], top, left, sh, sw, hq, wq)


@parallel(fastmath=True)
def weight_grad(x, grad_output, starts, partial, groups, top, left, sh, sw, hq, wq, zero, block):
    """partial[b, k, c, u] = sum over the samples of batch chunk b of the dot product
    of grad_output[n, k] (wide layout) with phases(x[n, c]) from starts[u]. `zero` has
    the arrays' dtype, so float32 sums stay float32."""
    n_ = x.shape[0]
    chunks, k_, cg, taps = partial.shape
    oh, ow = grad_output.shape[2], grad_output.shape[3]
    kg = k_ // groups
    length = (oh - 1) * wq + ow
    per_group = -(-kg // block)
    for t in prange(chunks * groups * per_group):
        b, group, k0, size = channel_block(t, groups, per_group, kg, block)
        acc = partial[b, k0 : k0 + size]
        acc[:, :, :] = 0.0
        g = np.zeros((min(block, kg), length), dtype=x.dtype)
        src = np.empty(sh * sw * hq * wq, dtype=x.dtype)
        scratch = np.empty(0 if sw == 1 else sh * sw * hq * wq, dtype=x.dtype)
        for n in range(b * n_ // chunks, (b + 1) * n_ // chunks):
            for m in range(size):
                to_wide(grad_output[n, k0 + m], g[m], 0, wq)
            for cl in range(cg):
                to_phases(x[n, group * cg + cl], src, scratch, top, left, sh, sw, hq, wq)
                for u in range(0, taps, 3):
                    s0 = src[starts[u] : starts[u] + length]
                    s1 = src[starts[u + 1] : starts[u + 1] + length]
                    s2 = src[starts[u + 2] : starts[u + 2] + length]
                    if size == BLOCK:
                        # Unrolled by hand: twelve sums held in registers, each load
                        # of the input feeding four channels' three taps.
                        g0, g1, g2, g3 = g[0], g[1], g[2], g[3]
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
                        acc[0, cl, u] += d00
                        acc[0, cl, u + 1] += d01
                        acc[0, cl, u + 2] += d02
                        acc[1, cl, u] += d10
                        acc[1, cl, u + 1] += d11
                        acc[1, cl, u + 2] += d12
                        acc[2, cl, u] += d20
                        acc[2, cl, u + 1] += d21
                        acc[2, cl, u + 2] += d22
                        acc[3, cl, u] += d30
                        acc[3, cl, u + 1] += d31
                        acc[3, cl, u + 2] += d32
                    else:
                        for m in range(size):
                            gm = g[m]
                            d0 = d1 = d2 = zero
                            for q in range(length):
                                d0 += gm[q] * s0[q]
                                d1 += gm[q] * s1[q]
                                d2 += gm[q] * s2[q]
                            acc[m, cl, u] += d0
                            acc[m, cl, u + 1] += d1
                            acc[m, cl, u + 2] += d2


# ------------------------------------------------------------------ drivers


def _phase_shape(g):
    hp, wp = padded_extent(g.h, g.w, g.pt, g.pl, g.oh, g.ow, g.kh, g.kw, g.sh, g.sw, g.dh, g.dw)
    return -(-hp // g.sh), -(-wp // g.sw)


def _in_threes(taps):
    """taps padded with None to a multiple of three."""
    return taps + [None] * (-len(taps) % 3)


def _tap_weights(weight, taps):
    """(K, Cg, len(taps)) array of weight[:, :, i, j] for each tap, zero for None."""
    k_, cg, kh, kw = weight.shape
    flat = np.concatenate([weight.reshape(k_, cg, kh * kw), np.zeros((k_, cg, 1), dtype=weight.dtype)], axis=2)
    return np.ascontiguousarray(flat[:, :, [kh * kw if tap is None else tap[0] * kw + tap[1] for tap in taps]])


def _forward_taps(g, hq, wq):
    taps = _in_threes([(i, j) for i in range(g.kh) for j in range(g.kw)])
    starts = np.array([0 if tap is None else tap_start(tap[0], tap[1], g.sh, g.sw, g.dh, g.dw, hq, wq) for tap in taps], dtype=np.int64)
    return taps, starts


def _block(samples, groups, channels, threads):
    """Channels per iteration: BLOCK, unless that leaves fewer than two iterations
    per thread (batch 1, few channels), then one."""
    return BLOCK if samples * groups * -(-channels // BLOCK) >= 2 * threads else 1


def forward_driver(x, weight, g, threads):
    hq, wq = _phase_shape(g)
    taps, starts = _forward_taps(g, hq, wq)
    out = np.empty(g.output_shape, dtype=x.dtype)
    block = _block(g.n, g.groups, g.c_out // g.groups, threads)
    forward(x, _tap_weights(weight, taps), starts, out, g.groups, g.pt, g.pl, g.sh, g.sw, hq, wq, block)
    return out


def input_driver(weight, grad_output, g, threads):
    hq, wq = _phase_shape(g)
    taps, chunks = [], []
    for a in range(g.sh):
        for b in range(g.sw):
            mine = [(i, j) for i in range(g.kh) for j in range(g.kw) if i * g.dh % g.sh == a and j * g.dw % g.sw == b]
            chunks += [(len(taps) + u, min(3, len(mine) - u), a * g.sw + b) for u in range(0, len(mine), 3)]
            taps += mine
    offsets = np.array([i * g.dh // g.sh * wq + j * g.dw // g.sw for i, j in taps], dtype=np.int64)
    gx = np.empty(g.input_shape, dtype=grad_output.dtype)
    chunks = np.array(chunks, dtype=np.int64).reshape(-1, 3)
    block = _block(g.n, g.groups, g.c_in // g.groups, threads)
    weights = _tap_weights(weight, taps)
    input_grad(weights, offsets, chunks, grad_output, gx, g.groups, g.pt, g.pl, g.sh, g.sw, hq, wq, int(offsets.max()), block)
    return gx


def _weight_chunks(g, threads, block):
    # Enough (chunk, channel block) iterations to keep every thread busy; the chunk
    # count depends only on the shape and thread count, so reruns are bitwise identical.
    blocks = g.groups * -(-(g.c_out // g.groups) // block)
    return max(1, min(g.n, -(-2 * threads // blocks)))


def weight_driver(x, grad_output, g, threads):
    hq, wq = _phase_shape(g)
    taps, starts = _forward_taps(g, hq, wq)
    block = _block(g.n, g.groups, g.c_out // g.groups, threads)
    partial = np.empty((_weight_chunks(g, threads, block), g.c_out, g.c_in // g.groups, len(taps)), dtype=x.dtype)
    weight_grad(x, grad_output, starts, partial, g.groups, g.pt, g.pl, g.sh, g.sw, hq, wq, x.dtype.type(0), block)
    total = partial.sum(axis=0) if partial.shape[0] > 1 else partial[0]
    return np.ascontiguousarray(total[:, :, : g.kh * g.kw]).reshape(g.weight_shape)
