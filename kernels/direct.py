"""Direct convolution kernels: forward, input gradient and weight gradient as loops,
with no packed matrix: every convolution but 1x1 ones over several channels (see
fastconv.dispatch).

All three work in the polyphase wide layout of fastconv.kernels.phases: each kernel
tap is one contiguous loop over a whole plane, at any stride and dilation. Taps are
taken up to five at a time, in the fewest passes (_tap_passes: a 3x3 kernel in a
pass of four and one of five), and output (or input) channels four at a time, the
channels of one group, so that one load of a plane feeds up to twenty
multiply-adds and the four accumulators stay in registers (one channel at a time
where four would leave threads idle, or in depthwise convolutions; then the
forward and the weight gradient take nine taps per pass). The forward multiplies
only the real taps; the weight gradient pads one or two taps to three and drops
the padding taps' sums; the input gradient takes each phase's (channel, tap)
pairs of up to five channels in passes of up to five. Loop lengths are rounded up
to whole vector loops (_rounded).

A plane that several iterations read (blocks of output channels, of input channels)
is split into phases, or widened, once before the loop (split_planes,
widen_planes): splitting it per iteration measured 2x slower on a dense stride-2
convolution. Those planes come in runs of samples, their rows interleaved in each
phase (row y of every sample of the run, then row y + 1), so that small planes
still make loops of about a thousand cells (_blocking), and the loops run over the
output rows only: laid one plane after the other, they also ran over the padding
rows between the planes (lenet_c2's 12x12 planes for 8x8 outputs: 960 cells for 448
outputs, against 672 interleaved).

Every prange iteration owns its outputs: the forward blocks of output planes of a
run of samples, the input gradient blocks of input planes of a run, the weight
gradient blocks of output channels over a chunk of the batch (the caller sums the
chunks in a fixed order, so reruns are bitwise identical). An iteration takes a
contiguous range of blocks, a few per thread (_parts), its buffers allocated once.
"""

import copy
import functools

import numpy as np
from numba import prange

from ._jit import parallel, serial
from .phases import from_phases, from_wide, phase_shape, place_phases, tap_starts, to_phases, to_wide

BLOCK = 4  # channels per iteration, at most
LOOP_CELLS = 1024  # cells a loop should cover, at least (_blocking)
PARTS = 4  # iterations of a parallel loop per thread (_parts)
SPLIT_PARTS = 64  # split_planes' iterations: PARTS a thread on 16 threads
PARTIAL_BYTES = 1 << 21  # the weight gradient's per-chunk sums, at most


@serial(inline=True)
def _unaliased(cells, itemsize):
    """A row pitch of at least `cells` cells for buffers whose rows are stored to in
    one loop: one vector loop (16 cells) more where the rows would lie a multiple of
    4 KiB apart. A load from an address 4 KiB (or a multiple) after a pending
    store's waits on it (4K aliasing): a 4x4 stride-4 input gradient, its
    accumulator rows 64 KiB apart, ran 4x slower."""
    return cells + 16 if cells * itemsize % 4096 == 0 else cells


@serial(inline=True)
def channel_block(t, groups, per_group, channels, block):
    """Iteration t's run of samples (or batch chunk), group, first channel and
    channel count, for blocks of `block` channels within groups of `channels`."""
    n = t // (groups * per_group)
    group = t // per_group % groups
    first = group * channels + t % per_group * block
    return n, group, first, min(block, (group + 1) * channels - first)


# The add_* passes below add to four rows of acc (a block of four channels), the
# cells at..at+length-1 of each, and are inlined into the kernels' loops. Fewer
# rows (a group's last channels, blocks of one) go to add_rows, compiled once
# apart, rather than a row-by-row loop inlined beside each of them.


@serial(inline=True)
def rows_of(acc, at, length):
    """The four rows' cells at..at+length-1 of acc, as contiguous arrays (a 2D view
    of them would not be: its loops ran 3-25% slower)."""
    return acc[0, at : at + length], acc[1, at : at + length], acc[2, at : at + length], acc[3, at : at + length]


@serial(fastmath=True, inline=True)
def add_two(acc, at, s0, s1, w, length):
    """add_taps for two taps, or one (s1 unused when w has one column)."""
    a0, a1, a2, a3 = rows_of(acc, at, length)
    if w.shape[1] == 1:
        w0, w1, w2, w3 = w[0, 0], w[1, 0], w[2, 0], w[3, 0]
        for q in range(length):
            v0 = s0[q]
            a0[q] += w0 * v0
            a1[q] += w1 * v0
            a2[q] += w2 * v0
            a3[q] += w3 * v0
        return
    w00, w01, w10, w11 = w[0, 0], w[0, 1], w[1, 0], w[1, 1]
    w20, w21, w30, w31 = w[2, 0], w[2, 1], w[3, 0], w[3, 1]
    for q in range(length):
        v0 = s0[q]
        v1 = s1[q]
        a0[q] += w00 * v0 + w01 * v1
        a1[q] += w10 * v0 + w11 * v1
        a2[q] += w20 * v0 + w21 * v1
        a3[q] += w30 * v0 + w31 * v1


@serial(fastmath=True, inline=True)
def add_taps(acc, at, s0, s1, s2, w, length):
    """acc[m, at:at + length] += w[m, 0] * s0 + w[m, 1] * s1 + w[m, 2] * s2 for the
    four rows m, all four in one pass (unrolled by hand: each load feeds twelve
    multiply-adds). A w of fewer columns means fewer taps (see add_two)."""
    if w.shape[1] < 3:
        add_two(acc, at, s0, s1, w, length)
        return
    a0, a1, a2, a3 = rows_of(acc, at, length)
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


@serial(fastmath=True, inline=True)
def add_four(acc, at, s0, s1, s2, s3, w, length):
    """add_taps for four taps: one load of each tap feeds sixteen multiply-adds."""
    a0, a1, a2, a3 = rows_of(acc, at, length)
    w00, w01, w02, w03 = w[0, 0], w[0, 1], w[0, 2], w[0, 3]
    w10, w11, w12, w13 = w[1, 0], w[1, 1], w[1, 2], w[1, 3]
    w20, w21, w22, w23 = w[2, 0], w[2, 1], w[2, 2], w[2, 3]
    w30, w31, w32, w33 = w[3, 0], w[3, 1], w[3, 2], w[3, 3]
    for q in range(length):
        v0 = s0[q]
        v1 = s1[q]
        v2 = s2[q]
        v3 = s3[q]
        a0[q] += w00 * v0 + w01 * v1 + w02 * v2 + w03 * v3
        a1[q] += w10 * v0 + w11 * v1 + w12 * v2 + w13 * v3
        a2[q] += w20 * v0 + w21 * v1 + w22 * v2 + w23 * v3
        a3[q] += w30 * v0 + w31 * v1 + w32 * v2 + w33 * v3


@serial(fastmath=True, inline=True)
def add_five(acc, at, s0, s1, s2, s3, s4, w, length):
    """add_taps for five taps: one load of each tap feeds twenty multiply-adds, the
    accumulators loaded and stored once per twenty (twenty weights, four sums and
    five inputs: 29 of AVX-512's 32 registers). A 3x3 kernel's taps in a pass of
    five and one of four ran 12-16% faster than in three passes of three, a 5x5
    kernel's in fives 12-40% faster than in threes (the loops alone)."""
    a0, a1, a2, a3 = rows_of(acc, at, length)
    w00, w01, w02, w03, w04 = w[0, 0], w[0, 1], w[0, 2], w[0, 3], w[0, 4]
    w10, w11, w12, w13, w14 = w[1, 0], w[1, 1], w[1, 2], w[1, 3], w[1, 4]
    w20, w21, w22, w23, w24 = w[2, 0], w[2, 1], w[2, 2], w[2, 3], w[2, 4]
    w30, w31, w32, w33, w34 = w[3, 0], w[3, 1], w[3, 2], w[3, 3], w[3, 4]
    for q in range(length):
        v0 = s0[q]
        v1 = s1[q]
        v2 = s2[q]
        v3 = s3[q]
        v4 = s4[q]
        a0[q] += w00 * v0 + w01 * v1 + w02 * v2 + w03 * v3 + w04 * v4
        a1[q] += w10 * v0 + w11 * v1 + w12 * v2 + w13 * v3 + w14 * v4
        a2[q] += w20 * v0 + w21 * v1 + w22 * v2 + w23 * v3 + w24 * v4
        a3[q] += w30 * v0 + w31 * v1 + w32 * v2 + w33 * v3 + w34 * v4


@serial(fastmath=True)
def add_rows(acc, rows, at, s0, s1, s2, s3, s4, w, length):
    """acc[m, at:at + length] += the sum over the w.shape[1] (1 to 5) taps t of
    w[m, t] * s_t, for m < rows, row by row (s_t for t past the taps unused)."""
    n = w.shape[1]
    for m in range(rows):
        a = acc[m, at : at + length]
        if n == 5:
            w0, w1, w2, w3, w4 = w[m, 0], w[m, 1], w[m, 2], w[m, 3], w[m, 4]
            for q in range(length):
                a[q] += w0 * s0[q] + w1 * s1[q] + w2 * s2[q] + w3 * s3[q] + w4 * s4[q]
        elif n == 4:
            w0, w1, w2, w3 = w[m, 0], w[m, 1], w[m, 2], w[m, 3]
            for q in range(length):
                a[q] += w0 * s0[q] + w1 * s1[q] + w2 * s2[q] + w3 * s3[q]
        elif n == 3:
            w0, w1, w2 = w[m, 0], w[m, 1], w[m, 2]
            for q in range(length):
                a[q] += w0 * s0[q] + w1 * s1[q] + w2 * s2[q]
        elif n == 2:
            w0, w1 = w[m, 0], w[m, 1]
            for q in range(length):
                a[q] += w0 * s0[q] + w1 * s1[q]
        else:
            w0 = w[m, 0]
            for q in range(length):
                a[q] += w0 * s0[q]


@serial(fastmath=True, inline=True)
def add_up_to_five(acc, rows, at, s0, s1, s2, s3, s4, w, length):
    """acc[m, at:at + length] += the sum over the w.shape[1] (1 to 5) taps t of
    w[m, t] * s_t, for m < rows (s_t for t past the taps unused): one pass."""
    if rows < BLOCK:
        add_rows(acc, rows, at, s0, s1, s2, s3, s4, w, length)
        return
    if w.shape[1] == 5:
        add_five(acc, at, s0, s1, s2, s3, s4, w, length)
    elif w.shape[1] == 4:
        add_four(acc, at, s0, s1, s2, s3, w, length)
    else:
        add_taps(acc, at, s0, s1, s2, w, length)


@serial(inline=True)
def tap(src, starts, u, end, length):
    """The cells of a phase buffer that tap u adds (src[starts[u]:][:length]); tap
    end - 1's for u >= end (a pass's unused inputs)."""
    at = starts[min(u, end - 1)]
    return src[at : at + length]


@serial(fastmath=True, inline=True)
def add_nine(a, src, starts, u, w, length, first):
    """a[:length] += sum over the nine taps u..u+8 of w[i] * src[starts[u + i]:]: one
    channel's accumulator read and written once per nine multiply-adds; `first`
    (the first channel's first nine taps) sets it instead, where zeroing it first
    took 5-10% of a depthwise forward."""
    s0, s1, s2 = src[starts[u] :], src[starts[u + 1] :], src[starts[u + 2] :]
    s3, s4, s5 = src[starts[u + 3] :], src[starts[u + 4] :], src[starts[u + 5] :]
    s6, s7, s8 = src[starts[u + 6] :], src[starts[u + 7] :], src[starts[u + 8] :]
    w0, w1, w2, w3, w4, w5, w6, w7, w8 = w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7], w[8]
    # two loops: one that adds to (0.0 if first else a[q]) ran 1.7x slower
    if first:
        for q in range(length):
            a[q] = w0 * s0[q] + w1 * s1[q] + w2 * s2[q] + w3 * s3[q] + w4 * s4[q] + w5 * s5[q] + w6 * s6[q] + w7 * s7[q] + w8 * s8[q]
        return
    for q in range(length):
        a[q] += w0 * s0[q] + w1 * s1[q] + w2 * s2[q] + w3 * s3[q] + w4 * s4[q] + w5 * s5[q] + w6 * s6[q] + w7 * s7[q] + w8 * s8[q]


@serial(fastmath=True, inline=True)
def dot_nine(out, g, src, starts, u, length, zero):
    """out[i] += the dot product of g[:length] with src[starts[u + i]:] for the nine
    taps i < 9: one channel's gradient read once per nine multiply-adds (the
    weight gradient's add_nine)."""
    s0, s1, s2 = src[starts[u] :], src[starts[u + 1] :], src[starts[u + 2] :]
    s3, s4, s5 = src[starts[u + 3] :], src[starts[u + 4] :], src[starts[u + 5] :]
    s6, s7, s8 = src[starts[u + 6] :], src[starts[u + 7] :], src[starts[u + 8] :]
    d0 = d1 = d2 = d3 = d4 = d5 = d6 = d7 = d8 = zero
    for q in range(length):
        v = g[q]
        d0 += v * s0[q]
        d1 += v * s1[q]
        d2 += v * s2[q]
        d3 += v * s3[q]
        d4 += v * s4[q]
        d5 += v * s5[q]
        d6 += v * s6[q]
        d7 += v * s7[q]
        d8 += v * s8[q]
    out[0] += d0
    out[1] += d1
    out[2] += d2
    out[3] += d3
    out[4] += d4
    out[5] += d5
    out[6] += d6
    out[7] += d7
    out[8] += d8


@serial(inline=True)
def split_plane(x, phased, n, c, scratch, top, left, sh, sw, hq, wq):
    """phased[n, c] = the phases of x[n, c] (to_phases), zeros after the last phase."""
    dst = phased[n, c]
    to_phases(x[n, c], dst[: sh * sw * hq * wq], scratch, top, left, sh, sw, hq, wq)
    dst[sh * sw * hq * wq :] = 0.0


@parallel
def split_planes(x, phased, top, left, sh, sw, hq, wq, runs_of):
    """phased[r, c] = the phases of the planes x[n, c] of run r, samples
    n = r * runs_of + j (to_phases), their rows interleaved: phase p's row y of
    sample j from p * runs_of * hq * wq + (y * runs_of + j) * wq; zeros for samples
    past the batch and after the last phase."""
    c_ = x.shape[1]
    planes = phased.shape[0] * c_
    # parts of many planes each: a small plane splits in less time than a parallel
    # iteration's start costs
    parts = min(planes, SPLIT_PARTS)
    for part in prange(parts):
        unused = np.empty(0, dtype=x.dtype)
        for t in range(planes * part // parts, planes * (part + 1) // parts):
            r, c = t // c_, t % c_
            if runs_of == 1 and sh == 1 and sw == 1:
                # to_phases' row copies: 30-60% faster than place_phases' here
                split_plane(x, phased, r, c, unused, top, left, 1, 1, hq, wq)
                continue
            phased[r, c] = 0.0
            place_run(x, phased[r], r, c, c + 1, top, left, sh, sw, hq, wq, runs_of)


@serial
def place_run(x, dst, r, c0, c1, top, left, sh, sw, hq, wq, runs_of):
    """dst[c] = the phases of the planes x[n, c] of run r for c0 <= c < c1
    (split_planes' layout), zeroed first where the run has fewer than runs_of
    samples; the cells outside the planes keep their values."""
    present = min(runs_of, x.shape[0] - r * runs_of)
    for c in range(c0, c1):
        if present < runs_of:
            dst[c] = 0.0
        for j in range(present):
            place_phases(x[r * runs_of + j, c], dst[c], j * wq, top, left, sh, sw, runs_of * wq, runs_of * hq * wq)


@parallel
def widen_planes(planes, wide, extension, wq, runs_of):
    """wide[r, k] = zeros(extension), then the planes[n, k] of run r, samples
    n = r * runs_of + j, in the wide layout with their rows interleaved (row y of
    sample j from (y * runs_of + j) * wq, zeros beyond each row's ow cells); zeros
    elsewhere."""
    k_ = planes.shape[1]
    for t in prange(wide.shape[0] * k_):
        r, k = t // k_, t % k_
        wide[r, k] = 0.0
        widen_run(planes, wide[r], r, k, k + 1, extension, wq, runs_of)


@serial(inline=True)
def widen_run(planes, dst, r, k0, k1, extension, wq, runs_of):
    """dst[k] = the planes[n, k] of run r from `extension` for k0 <= k < k1
    (widen_planes' layout), zeroed first where the run has fewer than runs_of
    samples; the cells outside the planes keep their values."""
    present = min(runs_of, planes.shape[0] - r * runs_of)
    for k in range(k0, k1):
        if present < runs_of:
            dst[k] = 0.0
        for j in range(present):
            to_wide(planes[r * runs_of + j, k], dst[k], extension + j * wq, runs_of * wq)


@serial(inline=True)
def phases_of(x, phased, n, c, buffer, top, left, sh, sw, hq, wq):
    """phases(x[n, c]): the row of `phased` if it holds them (split_planes), else split
    into `buffer` now, zeros on its first use: only the plane's cells are written,
    the same ones for every plane, so its padding keeps its zeros (zeroing all of
    it for each plane took 5% of a depthwise forward)."""
    if phased.shape[0] > 0:
        return phased[n, c]
    place_phases(x[n, c], buffer, 0, top, left, sh, sw, wq, hq * wq)
    return buffer


@parallel(fastmath=True)
def forward(x, phased, wtap, starts, nines, passes, out, groups, top, left, sh, sw, hq, wq, length, span, runs_of, block, parts):
    """out[n, k] = sum over the group's input channels c and taps u of
    wtap[k, c, u] * phases(x[n, c])[starts[u] + q], q < length in the wide layout,
    for a run of `runs_of` samples at once (their rows interleaved in each phase,
    rows runs_of * wq cells apart, so that short planes still make long loops;
    length rounded up, span the phase buffers' size: see _Plan). The phases come from `phased`
    (split_planes) when it is not empty, else each iteration splits its input
    planes itself (a plane in cache; runs of one sample). The blocks come in
    `parts` contiguous ranges (forward_blocks), one per iteration."""
    n_ = x.shape[0]
    k_, cg, taps = wtap.shape
    kg = k_ // groups
    per_group = -(-kg // block)
    own = 0 if phased.shape[0] > 0 else span
    blocks = -(-n_ // runs_of) * groups * per_group
    for i in prange(parts):
        forward_blocks(x, phased, wtap, starts, nines, passes, out, blocks * i // parts, blocks * (i + 1) // parts, groups, per_group, block, own, top, left, sh, sw, hq, wq, length, runs_of)


@serial(fastmath=True)
def forward_blocks(x, phased, wtap, starts, nines, passes, out, first, last, groups, per_group, block, own, top, left, sh, sw, hq, wq, length, runs_of):
    """forward's blocks first..last-1 (one iteration), its buffers allocated once.
    Compiled apart from the parallel loop, not inlined into it: Numba's parallel
    lowering of the whole body took twice as long to compile (_parts). The buffers
    are allocated here, not passed in, so that LLVM knows they alias nothing."""
    kg = wtap.shape[0] // groups
    acc = np.empty((min(block, kg), _unaliased(length, out.itemsize)), dtype=out.dtype)
    buffer = np.zeros(own, dtype=x.dtype)
    for t in range(first, last):
        r, group, k0, size = channel_block(t, groups, per_group, kg, block)
        if nines == 0:
            # else the first add_nine sets the block's one row
            acc[:, :] = 0.0
        forward_block(x, phased, wtap, starts, nines, passes, out, acc, buffer, r, group, k0, size, top, left, sh, sw, hq, wq, length, runs_of)


@serial(fastmath=True, inline=True)
def forward_block(x, phased, wtap, starts, nines, passes, out, acc, buffer, r, group, k0, size, top, left, sh, sw, hq, wq, length, runs_of):
    """forward's work for output channels k0..k0+size-1 of run r (acc zero on entry,
    or its one row set by the first add_nine where there are nine-tap passes),
    the taps in `passes` (first, end) of the real taps only: padding taps' zero
    weights would meet real cells, and 0 * inf is NaN where PyTorch's sum is
    infinite."""
    n_ = x.shape[0]
    cg = wtap.shape[1]
    for cl in range(cg):
        src = phases_of(x, phased, r, group * cg + cl, buffer, top, left, sh, sw, hq, wq)
        u = 0
        while u < 9 * nines:
            add_nine(acc[0], src, starts, u, wtap[k0, cl, u : u + 9], length, cl == 0 and u == 0)
            u += 9
        for p in range(passes.shape[0]):
            first, end = passes[p, 0], passes[p, 1]
            s0, s1, s2 = tap(src, starts, first, end, length), tap(src, starts, first + 1, end, length), tap(src, starts, first + 2, end, length)
            s3, s4 = tap(src, starts, first + 3, end, length), tap(src, starts, first + 4, end, length)
            add_up_to_five(acc, size, 0, s0, s1, s2, s3, s4, wtap[k0 : k0 + size, cl, first:end], length)
    for j in range(min(runs_of, n_ - r * runs_of)):
        for m in range(size):
            from_wide(acc[m], out[r * runs_of + j, k0 + m], j * wq, runs_of * wq)


@serial(inline=True)
def gather_chunks(acc, count, planes, shift, chunks, first, last, wchunks, cl0, size, extension, spans):
    """acc[:count, phase] += the chunks first..last-1 of input_grad, channel k of the
    group read from planes[k + shift]; chunks of one to five pairs. Each phase's
    cells spans[phase, 0] to spans[phase, 1] - 1 only."""
    for i in range(first, last):
        phase, pairs = chunks[i, 0], chunks[i, 1]
        lo, hi = spans[phase, 0], spans[phase, 1]
        e0 = pair_cells(planes, shift, chunks[i], 0, extension, lo, hi)
        e1 = pair_cells(planes, shift, chunks[i], 1, extension, lo, hi)
        e2 = pair_cells(planes, shift, chunks[i], 2, extension, lo, hi)
        e3 = pair_cells(planes, shift, chunks[i], 3, extension, lo, hi)
        e4 = pair_cells(planes, shift, chunks[i], 4, extension, lo, hi)
        add_up_to_five(acc, count, phase * size + lo, e0, e1, e2, e3, e4, wchunks[i, cl0 : cl0 + count, :pairs], hi - lo)


@serial(inline=True)
def pair_cells(planes, shift, chunk, j, extension, lo, hi):
    """The cells lo..hi-1 of a phase that pair j of `chunk` adds: its channel's
    plane, shifted by its tap."""
    at = extension - chunk[4 + 2 * j] + lo
    return planes[chunk[3 + 2 * j] + shift, at : at + hi - lo]


@parallel(fastmath=True)
def input_grad(wchunks, chunks, bounds, per, grad_output, widened, gx, groups, top, left, sh, sw, hq, wq, size, extension, runs_of, block, parts, spans):
    """gx[n, c] = sum over the group's output channels k and taps of the weight times
    grad_output[n, k] shifted by the tap: a gather into each phase of the padded
    gradient plane, the adjoint of forward.

    Output channels are taken `per` at a time (1 to 5, a plane of each in cache),
    and their (channel, tap) pairs in each phase in chunks of up to five
    (_input_plan), so that with several channels even a phase with one tap makes
    fuller passes: chunks[i] = (phase, pairs, first channel of the `per`, k0,
    shift0, ..., k4, shift4), the pairs past `pairs` repeating the last, k a
    channel of the group and shift the tap's offset in the wide layout (at most
    `extension`); the chunks of the t-th `per` channels are
    bounds[t]..bounds[t + 1] - 1. wchunks[group, i, c, j] is pair j's weight for the
    group's input channel c. grad_output comes in the wide layout after `extension`
    zeros (so that every shift reads inside): from `widened` (widen_planes) when
    that is not empty, else each iteration widens the `per` planes itself.

    `widened` holds runs of `runs_of` samples (widen_planes, rows interleaved), an
    iteration a run: each phase of the accumulators then holds the run's planes
    with their rows interleaved too, rows runs_of * wq cells apart (the shifts of
    `chunks` count in such rows; a shift left of a row's first cell reads the zero
    cells beyond the previous sample's row), `size` >= runs_of*hq*wq cells (whole
    vector loops, see _rounded). Phase p's cells spans[p, 0] to spans[p, 1] - 1 are
    computed, the rows that hold input cells (_phase_spans); the others are never
    read. The blocks come in `parts` contiguous ranges (gather_blocks), one per
    iteration."""
    n_, c_ = gx.shape[0], gx.shape[1]
    cg = c_ // groups
    items = -(-n_ // runs_of) * groups * -(-cg // block)
    for i in prange(parts):
        gather_blocks(wchunks, chunks, bounds, per, grad_output, widened, gx, items * i // parts, items * (i + 1) // parts, groups, top, left, sh, sw, hq, wq, size, extension, runs_of, block, spans)


@serial(fastmath=True)
def gather_blocks(wchunks, chunks, bounds, per, grad_output, widened, gx, first, last, groups, top, left, sh, sw, hq, wq, size, extension, runs_of, block, spans):
    """input_grad's blocks first..last-1 (one iteration), its buffers allocated
    once; compiled apart from the parallel loop, as forward_blocks."""
    n_, c_ = gx.shape[0], gx.shape[1]
    kg, cg = grad_output.shape[1] // groups, c_ // groups
    per_group = -(-cg // block)
    local = widened.shape[0] == 0
    acc = np.empty((min(block, cg), _unaliased(sh * sw * size, gx.itemsize)), dtype=gx.dtype)
    # to_wide writes the same cells of `own` each time: the rest stays zero
    own = np.zeros((min(per, kg) if local else 0, extension + size), dtype=gx.dtype)
    for t in range(first, last):
        r, group, c0, count = channel_block(t, groups, per_group, cg, block)
        cl0 = c0 - group * cg
        acc[:, :] = 0.0
        if local:
            for b in range(bounds.shape[0] - 1):
                k_first = chunks[bounds[b], 2]
                for kl in range(k_first, min(k_first + per, kg)):
                    to_wide(grad_output[r, group * kg + kl], own[kl - k_first], extension, wq)
                gather_chunks(acc, count, own, -k_first, chunks, bounds[b], bounds[b + 1], wchunks[group], cl0, size, extension, spans)
        else:
            gather_chunks(acc, count, widened[r], group * kg, chunks, 0, chunks.shape[0], wchunks[group], cl0, size, extension, spans)
        for j in range(min(runs_of, n_ - r * runs_of)):
            for m in range(count):
                from_phases(acc[m, j * wq :], gx[r * runs_of + j, c0 + m], top, left, sh, sw, hq, runs_of * wq, size)


@parallel(fastmath=True)
def weight_grad(x, phased, grad_output, starts, passes, partial, groups, top, left, sh, sw, hq, wq, length, span, runs_of, zero, block, parts):
    """partial[b, k, c, u] = sum over the runs of samples of batch chunk b of the dot
    product of grad_output[n, k] (wide layout, the run's samples' rows
    interleaved) with phases(x[n, c]) from starts[u] (taken from `phased` as in
    forward; the zero cells of the wide gradient drop the cells beyond each row).
    An item is `block` output channels (a multiple of four, or fewer) of one batch
    chunk, four at a time for each input plane it loads, in `passes` of three to
    five taps (_tap_passes; one channel: nine taps per pass where they divide);
    the items in `parts` contiguous ranges (weight_blocks), one per iteration.
    `zero` has the arrays' dtype, so float32 sums stay float32."""
    chunks, k_, cg, taps = partial.shape
    kg = k_ // groups
    per_group = -(-kg // block)
    own = 0 if phased.shape[0] > 0 else span
    items = chunks * groups * per_group
    for i in prange(parts):
        weight_blocks(x, phased, grad_output, starts, passes, partial, items * i // parts, items * (i + 1) // parts, groups, per_group, block, own, top, left, sh, sw, hq, wq, length, runs_of, zero)


@serial(fastmath=True)
def weight_blocks(x, phased, grad_output, starts, passes, partial, first, last, groups, per_group, block, own, top, left, sh, sw, hq, wq, length, runs_of, zero):
    """weight_grad's items first..last-1 (one iteration), its buffers allocated
    once; compiled apart from the parallel loop, as forward_blocks."""
    chunks, k_ = partial.shape[0], partial.shape[1]
    kg = k_ // groups
    g = np.zeros((min(block, kg), length), dtype=x.dtype)
    buffer = np.zeros(own, dtype=x.dtype)
    for t in range(first, last):
        b, group, k0, size = channel_block(t, groups, per_group, kg, block)
        acc = partial[b, k0 : k0 + size]
        acc[:, :, :] = 0.0
        weight_block(x, phased, grad_output, starts, passes, acc, g, buffer, b, chunks, group, k0, size, top, left, sh, sw, hq, wq, length, runs_of, zero)


@serial(fastmath=True, inline=True)
def weight_block(x, phased, grad_output, starts, passes, acc, g, buffer, b, chunks, group, k0, size, top, left, sh, sw, hq, wq, length, runs_of, zero):
    """weight_grad's work for one item: acc (size, Cg, taps) += the dot products of
    output channels k0..k0+size-1 over batch chunk b (acc zero on entry)."""
    n_ = x.shape[0]
    runs = -(-n_ // runs_of)
    cg, taps = acc.shape[1], acc.shape[2]
    for r in range(b * runs // chunks, (b + 1) * runs // chunks):
        # a short last run leaves stale cells in g, against zero phases
        for j in range(min(runs_of, n_ - r * runs_of)):
            for m in range(size):
                to_wide(grad_output[r * runs_of + j, k0 + m], g[m], j * wq, runs_of * wq)
        for cl in range(cg):
            src = phases_of(x, phased, r, group * cg + cl, buffer, top, left, sh, sw, hq, wq)
            if size == 1 and taps % 9 == 0:
                # one channel (depthwise): nine taps per pass
                for u in range(0, taps, 9):
                    dot_nine(acc[0, cl, u : u + 9], g[0], src, starts, u, length, zero)
                continue
            for p in range(passes.shape[0]):
                first, end = passes[p, 0], passes[p, 1]
                s0, s1, s2 = tap(src, starts, first, end, length), tap(src, starts, first + 1, end, length), tap(src, starts, first + 2, end, length)
                s3, s4 = tap(src, starts, first + 3, end, length), tap(src, starts, first + 4, end, length)
                for m0 in range(0, size, BLOCK):
                    rows = g[m0 : min(size, m0 + BLOCK)]
                    sums = acc[m0 : m0 + BLOCK, cl, first:end]
                    if end - first == 5:
                        dots_five(sums, rows, s0, s1, s2, s3, s4, length, zero)
                    elif end - first == 4:
                        dots_four(sums, rows, s0, s1, s2, s3, length, zero)
                    else:
                        dots_three(sums, rows, s0, s1, s2, length, zero)


@serial(fastmath=True, inline=True)
def rows_three(acc, g, s0, s1, s2, length, zero):
    """acc[m, t] += the dot product of g[m, :length] with s_t for each row m of g
    and three taps t, row by row (the rows past a block's last four)."""
    for m in range(g.shape[0]):
        gm = g[m]
        d0 = d1 = d2 = zero
        for q in range(length):
            d0 += gm[q] * s0[q]
            d1 += gm[q] * s1[q]
            d2 += gm[q] * s2[q]
        acc[m, 0] += d0
        acc[m, 1] += d1
        acc[m, 2] += d2


@serial(fastmath=True, inline=True)
def rows_one(acc, g, s, length, zero):
    """acc[m] += the dot product of g[m, :length] with s, for each row m of g."""
    for m in range(g.shape[0]):
        gm = g[m]
        d = zero
        for q in range(length):
            d += gm[q] * s[q]
        acc[m] += d


@serial(fastmath=True, inline=True)
def dots_three(acc, g, s0, s1, s2, length, zero):
    """acc[m, t] += the dot product of g[m, :length] with s_t, for the rows m of g
    and three taps t. Four rows are unrolled by hand: twelve sums held in
    registers, each load of the input feeding four channels' three taps."""
    if g.shape[0] < BLOCK:
        rows_three(acc, g, s0, s1, s2, length, zero)
        return
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
    acc[0, 0] += d00
    acc[0, 1] += d01
    acc[0, 2] += d02
    acc[1, 0] += d10
    acc[1, 1] += d11
    acc[1, 2] += d12
    acc[2, 0] += d20
    acc[2, 1] += d21
    acc[2, 2] += d22
    acc[3, 0] += d30
    acc[3, 1] += d31
    acc[3, 2] += d32


@serial(fastmath=True, inline=True)
def dots_four(acc, g, s0, s1, s2, s3, length, zero):
    """dots_three for four taps: sixteen sums in registers for four rows. (Written
    out again rather than as dots_three plus a pass for the fourth tap, which
    measured 8-30% slower on 4x4 stride-2 kernels.)"""
    if g.shape[0] < BLOCK:
        rows_three(acc, g, s0, s1, s2, length, zero)
        rows_one(acc[:, 3], g, s3, length, zero)
        return
    g0, g1, g2, g3 = g[0], g[1], g[2], g[3]
    d00 = d01 = d02 = d03 = d10 = d11 = d12 = d13 = zero
    d20 = d21 = d22 = d23 = d30 = d31 = d32 = d33 = zero
    for q in range(length):
        v0 = s0[q]
        v1 = s1[q]
        v2 = s2[q]
        v3 = s3[q]
        d00 += g0[q] * v0
        d01 += g0[q] * v1
        d02 += g0[q] * v2
        d03 += g0[q] * v3
        d10 += g1[q] * v0
        d11 += g1[q] * v1
        d12 += g1[q] * v2
        d13 += g1[q] * v3
        d20 += g2[q] * v0
        d21 += g2[q] * v1
        d22 += g2[q] * v2
        d23 += g2[q] * v3
        d30 += g3[q] * v0
        d31 += g3[q] * v1
        d32 += g3[q] * v2
        d33 += g3[q] * v3
    acc[0, 0] += d00
    acc[0, 1] += d01
    acc[0, 2] += d02
    acc[0, 3] += d03
    acc[1, 0] += d10
    acc[1, 1] += d11
    acc[1, 2] += d12
    acc[1, 3] += d13
    acc[2, 0] += d20
    acc[2, 1] += d21
    acc[2, 2] += d22
    acc[2, 3] += d23
    acc[3, 0] += d30
    acc[3, 1] += d31
    acc[3, 2] += d32
    acc[3, 3] += d33


@serial(fastmath=True, inline=True)
def dots_five(acc, g, s0, s1, s2, s3, s4, length, zero):
    """dots_four for five taps: twenty sums in registers for four rows, each load of
    the input feeding four (add_five's count in the weight gradient)."""
    if g.shape[0] < BLOCK:
        rows_three(acc, g, s0, s1, s2, length, zero)
        rows_one(acc[:, 3], g, s3, length, zero)
        rows_one(acc[:, 4], g, s4, length, zero)
        return
    g0, g1, g2, g3 = g[0], g[1], g[2], g[3]
    d00 = d01 = d02 = d03 = d04 = d10 = d11 = d12 = d13 = d14 = zero
    d20 = d21 = d22 = d23 = d24 = d30 = d31 = d32 = d33 = d34 = zero
    for q in range(length):
        v0 = s0[q]
        v1 = s1[q]
        v2 = s2[q]
        v3 = s3[q]
        v4 = s4[q]
        d00 += g0[q] * v0
        d01 += g0[q] * v1
        d02 += g0[q] * v2
        d03 += g0[q] * v3
        d04 += g0[q] * v4
        d10 += g1[q] * v0
        d11 += g1[q] * v1
        d12 += g1[q] * v2
        d13 += g1[q] * v3
        d14 += g1[q] * v4
        d20 += g2[q] * v0
        d21 += g2[q] * v1
        d22 += g2[q] * v2
        d23 += g2[q] * v3
        d24 += g2[q] * v4
        d30 += g3[q] * v0
        d31 += g3[q] * v1
        d32 += g3[q] * v2
        d33 += g3[q] * v3
        d34 += g3[q] * v4
    acc[0, 0] += d00
    acc[0, 1] += d01
    acc[0, 2] += d02
    acc[0, 3] += d03
    acc[0, 4] += d04
    acc[1, 0] += d10
    acc[1, 1] += d11
    acc[1, 2] += d12
    acc[1, 3] += d13
    acc[1, 4] += d14
    acc[2, 0] += d20
    acc[2, 1] += d21
    acc[2, 2] += d22
    acc[2, 3] += d23
    acc[2, 4] += d24
    acc[3, 0] += d30
    acc[3, 1] += d31
    acc[3, 2] += d32
    acc[3, 3] += d33
    acc[3, 4] += d34


# ------------------------------------------------------------------ drivers


MOST_TAPS = 5  # taps per pass, at most (add_five)


def _tap_passes(count, first=0):
    """(passes, 2) int64 array of the first and end tap of each pass over taps
    first..count-1: the fewest passes of at most MOST_TAPS, as even as possible
    (a 3x3 kernel: four and five; 4x4: four fours; 7x7: a four and nine fives). A
    pass's loads and stores of the accumulators are shared by its taps, so fewer
    passes of more taps run faster, up to the registers' limit."""
    rest = count - first
    passes = -(-rest // MOST_TAPS)
    return np.array([(first + rest * p // passes, first + rest * (p + 1) // passes) for p in range(passes)], dtype=np.int64).reshape(-1, 2)


def _phase_taps(g):
    """The tap count of each phase (a, b) of the stride, in row-major order."""
    return [sum(1 for i in range(g.kh) for j in range(g.kw) if i * g.dh % g.sh == a and j * g.dw % g.sw == b) for a in range(g.sh) for b in range(g.sw)]


def _tap_weights(weight, index):
    """(K, Cg, len(index)) array of weight[:, :, i, j] for each tap's flat index
    i * kw + j (_Plan.index), zero for kh * kw (a padding tap)."""
    k_, cg, kh, kw = weight.shape
    flat = np.concatenate([weight.reshape(k_, cg, kh * kw), np.zeros((k_, cg, 1), dtype=weight.dtype)], axis=2)
    return np.ascontiguousarray(flat[:, :, index])


def _block(samples, groups, channels, threads):
    """Channels per iteration: BLOCK, unless that leaves fewer than two iterations
    per thread (batch 1, few channels), then one."""
    return BLOCK if samples * groups * -(-channels // BLOCK) >= 2 * threads else 1


def _rounded(length):
    """length rounded up to whole vector loops of LLVM's (16 cells): the loops then
    have no scalar remainder, which measured 10-20% of a dense stride-2 forward."""
    return -(-length // 16) * 16


def _blocking(samples, groups, channels, cells, threads):
    """(block, blocks, shared, runs_of) for iterations over blocks of `channels`
    channels per group and planes of `cells` cells: the channel block (_block), the
    block count, whether more than one block reads each plane (which is then split
    or widened once, before the loop; else each iteration does its own: for
    depthwise, a pre-pass measured 3x slower, its output fresh memory), and the
    samples per run when shared: loops of about LOOP_CELLS cells (a few 16-cell
    vector loops is mostly loop overhead) while every thread keeps two iterations."""
    block = _block(samples, groups, channels, threads)
    blocks = groups * -(-channels // block)
    shared = blocks > groups
    runs_of = max(1, min(samples, LOOP_CELLS // cells)) if shared else 1
    while runs_of > 1 and -(-samples // runs_of) * blocks < 2 * threads:
        runs_of -= 1
    return block, blocks, shared, runs_of


def _parts(items, threads):
    """The iterations of a kernel's parallel loop: contiguous ranges of its items
    (blocks of channels), PARTS per thread, each iteration's buffers allocated once
    and its loop over the items compiled apart from the parallel loop (an iteration
    per item cost as much again in allocations and calls on 16x16 depthwise planes)."""
    return max(1, min(items, PARTS * threads))


class _Plan:
    """How forward and weight_grad run geometry g: channel block, samples per run,
    taps and their starts, each one's passes (_tap_passes), loop length and
    phase buffer size, and whether the input is split into phases before the
    loop."""

    def __init__(self, g, threads):
        self.hq, self.wq = hq, wq = phase_shape(g)
        self.block, _, self.split, self.runs_of = _blocking(g.n, g.groups, g.c_out // g.groups, hq * wq, threads)
        real = g.kh * g.kw
        # the weight gradient's passes take three taps or more (dots_three): one or two
        # taps are padded to three, their sums dropped
        self.taps = [(i, j) for i in range(g.kh) for j in range(g.kw)] + [None] * max(0, 3 - real)
        # one channel per block (depthwise): the forward's first taps nine at a time
        self.nines = real // 9 if min(self.block, g.c_out // g.groups) == 1 else 0
        self.passes = _tap_passes(real, 9 * self.nines)
        self.weight_passes = _tap_passes(len(self.taps))
        self.index = np.array([g.kh * g.kw if tap is None else tap[0] * g.kw + tap[1] for tap in self.taps], dtype=np.int64)
        self.starts = tap_starts(g, self.taps, hq, self.runs_of * wq, self.runs_of * hq * wq)
        self.length = _rounded(((g.oh - 1) * self.runs_of + self.runs_of - 1) * wq + g.ow)
        self.span = max(g.sh * g.sw * self.runs_of * hq * wq, int(self.starts.max()) + self.length)
        self.runs = -(-g.n // self.runs_of)
        self.parts = _parts(self.runs * g.groups * -(-(g.c_out // g.groups) // self.block), threads)

    def phased(self, x, g):
        """x split into phases (split_planes), or an empty array (see above)."""
        if not self.split:
            return np.empty((0, 0, 0), dtype=x.dtype)
        phased = np.empty((self.runs, g.c_in, self.span), dtype=x.dtype)
        split_planes(x, phased, g.pt, g.pl, g.sh, g.sw, self.hq, self.wq, self.runs_of)
        return phased

    def layout(self):
        return self.hq, self.wq, self.length, self.span, self.runs_of


@functools.lru_cache(maxsize=256)
def _plan(g, threads):
    """The _Plan of geometry g, built once per shape and thread count (read only):
    building it took about as long as a batch-1 layer's kernel."""
    return _Plan(g, threads)


def forward_driver(x, weight, g, threads):
    plan = _plan(g, threads)
    out = np.empty(g.output_shape, dtype=x.dtype)
    weights = _tap_weights(weight, plan.index)
    forward(x, plan.phased(x, g), weights, plan.starts, plan.nines, plan.passes, out, g.groups, g.pt, g.pl, g.sh, g.sw, *plan.layout(), plan.block, plan.parts)
    return out


def _input_plan(g, pitch):
    """input_grad's plan for geometry g, rows `pitch` cells apart: its chunks, bounds
    and channels per pass, and for each chunk's pairs the weight's (row, i, j),
    row g.c_out // g.groups for a missing pair. Output channels are taken `per` at
    a time, and each phase's (channel, tap) pairs of them in the fewest chunks of
    at most MOST_TAPS, as even as possible (_tap_passes). `per` is one where one
    channel's chunks hold four or five pairs each (a 4x4 stride-2 kernel: four
    per phase, 5% faster than 16 pairs per phase of five channels, in fives),
    else the count (1 to 5) that makes the fewest passes per channel, the
    smallest of equals: a stride-2 3x3 kernel, phases of 4, 2, 2 and 1 taps, makes
    four passes per channel one at a time and nine per five channels five at a
    time (res3x3_s2's input gradient 3-5% faster than in threes of three
    channels)."""
    kg = g.c_out // g.groups
    counts = _phase_taps(g)

    def passes_per_channel(per):
        return sum(-(-per * t // MOST_TAPS) for t in counts) / per

    singly = [int(b - a) for t in counts for a, b in _tap_passes(t)]
    per = 1 if min(singly) >= 4 else min(range(1, min(MOST_TAPS, kg) + 1), key=lambda p: (passes_per_channel(p), p))
    chunks, pairs = [], []
    for first in range(0, kg, per):
        for a in range(g.sh):
            for b in range(g.sw):
                mine = [(kl, i, j) for kl in range(first, min(first + per, kg)) for i in range(g.kh) for j in range(g.kw) if i * g.dh % g.sh == a and j * g.dw % g.sw == b]
                for u, end in _tap_passes(len(mine)):
                    some = mine[u:end]
                    # a short chunk repeats its last pair, with no weight (never multiplied)
                    full = some + [some[-1]] * (MOST_TAPS - len(some))
                    shifts = [(kl, i * g.dh // g.sh * pitch + j * g.dw // g.sw) for kl, i, j in full]
                    chunks.append((a * g.sw + b, len(some), first, *(v for pair in shifts for v in pair)))
                    pairs.append(some + [(kg, 0, 0)] * (MOST_TAPS - len(some)))
    chunks = np.array(chunks, dtype=np.int64)
    bounds = np.flatnonzero(np.diff(chunks[:, 2], prepend=-1, append=-1))
    return chunks, bounds, per, np.array(pairs, dtype=np.int64)


def _chunk_weights(weight, g, pairs):
    """(groups, chunks, Cg, pairs per chunk) array: wchunks[group, i, c, j] = the
    weight of chunk i's pair j for the group's input channel c (zero for a missing
    pair)."""
    kg, cg = g.c_out // g.groups, weight.shape[1]
    grouped = weight.reshape(g.groups, kg, cg, g.kh, g.kw)
    grouped = np.concatenate([grouped, np.zeros((g.groups, 1, cg, g.kh, g.kw), dtype=weight.dtype)], axis=1)
    picked = grouped[:, pairs[:, :, 0], :, pairs[:, :, 1], pairs[:, :, 2]]  # (chunks, pairs, groups, Cg)
    return np.ascontiguousarray(picked.transpose(2, 0, 3, 1))


def _adjoint(g):
    """At stride 1, the input gradient of geometry g is the forward convolution of
    grad_output with the kernel flipped and its channel axes swapped (_flipped),
    padded by d*(k-1) - p: this geometry."""
    eh, ew = g.dh * (g.kh - 1), g.dw * (g.kw - 1)
    return g._replace(c_in=g.c_out, h=g.oh, w=g.ow, c_out=g.c_in, pt=eh - g.pt, pb=eh - g.pb, pl=ew - g.pl, pr=ew - g.pr, oh=g.h, ow=g.w)


def _as_forward(g):
    """Whether input_driver runs the forward's loops on _adjoint(g): at stride 1, where
    that padding is not negative and the forward's padded planes, (h + d(k-1)) by
    (w + d(k-1)) cells, are no larger than the gather's, (h + pt + pb) by
    (w + pl + pr): the forward's loops are the faster (res3x3 16.0 against 18.0 ms,
    depthwise 1.8 against 2.3 ms); a valid 5x5 convolution on small planes,
    whose adjoint pads by 4, ran 1.5x slower."""
    eh, ew = g.dh * (g.kh - 1), g.dw * (g.kw - 1)
    return (
        g.sh == g.sw == 1
        and min(eh - g.pt, eh - g.pb, ew - g.pl, ew - g.pr) >= 0
        and (g.h + eh) * (g.w + ew) <= (g.h + g.pt + g.pb) * (g.w + g.pl + g.pr)
    )


def _flipped(weight, g):
    """The weight of _adjoint(g): (C_in, C_out/groups, kh, kw), each group's block
    transposed, each kernel turned by 180 degrees."""
    kg, cg = g.c_out // g.groups, g.c_in // g.groups
    turned = weight.reshape(g.groups, kg, cg, g.kh, g.kw).transpose(0, 2, 1, 3, 4)[:, :, :, ::-1, ::-1]
    return np.ascontiguousarray(turned).reshape(g.c_in, kg, g.kh, g.kw)


def _phase_spans(g, hq, pitch, size):
    """(sh*sw, 2) int64 array: for each phase of the padded input plane, the first
    and end cell of its rows that hold input cells (rows `pitch` cells apart; the
    first cell rounded down and the end up to whole vector loops, the end at most
    `size`): input_grad computes only those. A stride-2 gradient of a plane padded
    by one has one padding row in each row phase: 1 of decoder_up's 9."""
    spans = []
    for a in range(g.sh):
        first = max(0, -(-(g.pt - a) // g.sh))
        end = min(hq, (g.pt + g.h - 1 - a) // g.sh + 1)
        lo = min(size, first * pitch // 16 * 16)  # accumulators aligned as the loops' vectors
        spans += [(lo, min(size, _rounded(max(lo, end * pitch))))] * g.sw
    return np.array(spans, dtype=np.int64)


class _GatherPlan:
    """How input_grad runs geometry g: phase shape, channel block, samples per run,
    whether grad_output is widened before the loop, the chunks of _input_plan, the
    accumulators' phase size and spans, and the iterations (_parts)."""

    def __init__(self, g, threads):
        self.hq, self.wq = hq, wq = phase_shape(g)
        self.block, _, self.shared, self.runs_of = _blocking(g.n, g.groups, g.c_in // g.groups, hq * wq, threads)
        self.chunks, self.bounds, self.per, self.pairs = _input_plan(g, self.runs_of * wq)
        self.extension = int(self.chunks[:, 4::2].max())
        self.size = _rounded(self.runs_of * hq * wq)
        self.runs = -(-g.n // self.runs_of)
        self.parts = _parts(self.runs * g.groups * -(-(g.c_in // g.groups) // self.block), threads)
        self.spans = _phase_spans(g, hq, self.runs_of * wq, self.size)


@functools.lru_cache(maxsize=256)
def _gather_plan(g, threads):
    """The _GatherPlan of geometry g, built once per shape and thread count, as _plan."""
    return _GatherPlan(g, threads)


def input_driver(weight, grad_output, g, threads):
    if _as_forward(g):
        return forward_driver(grad_output, _flipped(weight, g), _adjoint(g), threads)
    p = _gather_plan(g, threads)
    wchunks = _chunk_weights(weight, g, p.pairs)
    gx = np.empty(g.input_shape, dtype=grad_output.dtype)
    widened = np.empty((0, 0, 0), dtype=grad_output.dtype)
    if p.shared:
        widened = np.empty((p.runs, g.c_out, p.extension + p.size), dtype=grad_output.dtype)
        widen_planes(grad_output, widened, p.extension, p.wq, p.runs_of)
    input_grad(wchunks, p.chunks, p.bounds, p.per, grad_output, widened, gx, g.groups, g.pt, g.pl, g.sh, g.sw, p.hq, p.wq, p.size, p.extension, p.runs_of, p.block, p.parts, p.spans)
    return gx


@functools.lru_cache(maxsize=256)
def _weight_plan(g, threads):
    """weight_grad's plan (a _Plan) and channel block: up to four of the plan's
    blocks per iteration (each input plane loaded once for sixteen channels:
    float64 res3x3_s2 went from 38 to 23 ms), as long as batch chunks keep every
    thread busy. Where one block then holds a group's channels (in a convolution of
    one group too) and the planes are large enough to run one sample at a time
    (runs_of 1: an iteration's own split is of one sample's plane), one iteration
    reads each input plane of a batch chunk: it splits the plane itself, in cache,
    rather than all planes in a pass over memory before the loop (grouped, 8
    channels per group: 2.9 -> 2.7 ms float32, 5.3 -> 4.8 ms float64). Built once
    per shape and thread count, as _plan."""
    plan = copy.copy(_plan(g, threads))
    kg = g.c_out // g.groups
    block = plan.block
    while block < min(kg, 4 * plan.block) and plan.runs * g.groups * -(-kg // (2 * block)) >= 2 * threads:
        block *= 2
    if plan.split and plan.runs_of == 1 and block >= kg:
        plan.split = False
    return plan, block


def weight_driver(x, grad_output, g, threads):
    # The chunk count depends only on the shape and thread count, so reruns are
    # bitwise identical.
    plan, block = _weight_plan(g, threads)
    blocks = g.groups * -(-(g.c_out // g.groups) // block)
    chunks = max(1, min(plan.runs, -(-2 * threads // blocks)))
    sums = g.c_out * (g.c_in // g.groups) * len(plan.taps)
    if not plan.split:
        # Each iteration splits its own input planes (_weight_plan): a chunk per run, so
        # that successive iterations read successive planes, as the forward's do. A
        # channel's planes for all samples lie a sample apart: depthwise took 2.9 ms
        # so against the forward's 1.7 once its arrays outgrew the cache.
        chunks = max(chunks, min(plan.runs, PARTIAL_BYTES // (sums * x.itemsize)))
    parts = _parts(chunks * blocks, threads)
    partial = np.empty((chunks, g.c_out, g.c_in // g.groups, len(plan.taps)), dtype=x.dtype)
    phased = plan.phased(x, g)
    weight_grad(x, phased, grad_output, plan.starts, plan.weight_passes, partial, g.groups, g.pt, g.pl, g.sh, g.sw, *plan.layout(), x.dtype.type(0), block, parts)
    total = partial.sum(axis=0) if partial.shape[0] > 1 else partial[0]
    return np.ascontiguousarray(total[:, :, : g.kh * g.kw]).reshape(g.weight_shape)
