"""Polyphase layout of zero-padded planes, shared by the direct convolution and the
pooling kernels.

Output cell (y, x) and kernel tap (i, j) read padded cell (y*sh + i*dh, x*sw + j*dw).
Split the padded plane by row phase a and column phase b,
phases[a, b, Y, X] = padded[Y*sh + a, X*sw + b], each (hq, wq); that cell is then
phase ((i*dh) % sh, (j*dw) % sw) at (y + (i*dh)//sh, x + (j*dw)//sw). Laying the
output out in rows of wq ("wide"), output q = y*wq + x reads the flat phase array at
q + tap_start(i, j): every tap is one contiguous run over a whole plane, whatever the
stride. The wq - ow extra columns per row are computed and dropped. At stride 1 the
one phase is the padded plane itself.
"""

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from ._jit import serial
from .emitter import Emitter


@serial
def padded_extent(h, w, pt, pl, oh, ow, kh, kw, sh, sw, dh, dw):
    """(Hp, Wp) of a zero-padded plane holding the input at (pt, pl) and every window."""
    return max(h + pt, (oh - 1) * sh + (kh - 1) * dh + 1), max(w + pl, (ow - 1) * sw + (kw - 1) * dw + 1)


@serial
def tap_start(i, j, sh, sw, dh, dw, hq, wq):
    """Flat index, in the phases of one plane (sh*sw*hq*wq), of the cell tap (i, j)
    reads for the first output."""
    return (((i * dh % sh) * sw + j * dw % sw) * hq + i * dh // sh) * wq + j * dw // sw


@serial(inline=True)
def fill_phases(plane, first, ph, pw, sh, sw, hq, wq, fill, band, padded):
    """band (flat, sh*sw*hq*wq) = the phases of padded rows first, first + 1, ...
    (`first` a multiple of sh) of the plane, padded by (ph, pw) and `fill` outside
    it. `padded` is scratch for the rows before the column split (sh*hq*sw*wq cells;
    unused at sw 1).

    Every loop here is long: LLVM's vector loops are unrolled, and a loop shorter
    than a few vectors (a row of a small plane) would run scalar."""
    h, w = plane.shape
    wp = sw * wq
    rows = band if sw == 1 else padded
    rows[: sh * hq * wp] = fill
    for a in range(sh):
        for y in range(hq):
            r = first + y * sh + a - ph
            if 0 <= r < h:
                dst = rows[(a * hq + y) * wp + pw :]
                src = plane[r]
                for q in range(w):
                    dst[q] = src[q]
    size = hq * wq
    for a in range(sh):
        s = padded[a * hq * wp : (a + 1) * hq * wp]
        if sw == 2:
            even = band[2 * a * size : (2 * a + 1) * size]
            odd = band[(2 * a + 1) * size : (2 * a + 2) * size]
            for k in range(size):
                even[k] = s[2 * k]
                odd[k] = s[2 * k + 1]
        elif sw > 2:
            for b in range(sw):
                dst = band[(a * sw + b) * size : (a * sw + b + 1) * size]
                for k in range(size):
                    dst[k] = s[k * sw + b]


@serial(inline=True)
def place_phases(plane, dst, at, top, left, sh, sw, pitch, stride):
    """dst[at + p*stride + Y*pitch + X] = phase p's cell (Y, X) of plane zero-padded
    at (top, left), for the plane's cells only: the padding's cells keep their values
    (fill_phases' placement, with rows `pitch` and phases `stride` cells apart).
    Strides of 1 and 2 are passed on as constants, so that LLVM vectorises the
    column split and drops the divisions (a stride-2 split of 16x16 planes ran
    twice as fast)."""
    if sh == 1 and sw == 1:
        place_phases_at(plane, dst, at, top, left, 1, 1, pitch, stride)
    elif sh == 2 and sw == 2:
        place_phases_at(plane, dst, at, top, left, 2, 2, pitch, stride)
    else:
        place_phases_at(plane, dst, at, top, left, sh, sw, pitch, stride)


@intrinsic
def split_pairs(typingctx, src, src_at, count, dst, even_at, odd_at):
    """dst[even_at + k] = src[src_at + 2k] for 2k < count and dst[odd_at + k] =
    src[src_at + 2k + 1] for 2k + 1 < count: two vectors of src at a time
    deinterleaved by two shuffles, each half stored by a masked store, nothing past
    count read or written (a loop a phase ran scalar on rows of up to a vector's
    lanes: a stride-2 split of 28x28 planes took five times a copy's time). The
    arrays contiguous, of one dtype."""
    if src.layout != "C" or dst.layout != "C":
        return None  # a typing error: the cells are addressed from the data pointer
    sig = types.void(src, src_at, count, dst, even_at, odd_at)

    def codegen(context, builder, signature, args):
        e = Emitter(context, builder, signature, args)
        src_, src_at_, count_, dst_, even_at_, odd_at_ = args
        src_data, dst_data = e.data(signature.args[0], src_), e.data(signature.args[3], dst_)
        lanes, b = e.lanes, builder
        mask = ir.VectorType(ir.IntType(32), lanes)
        evens = b.sdiv(b.add(count_, e.constant(1)), e.constant(2))
        odds = b.sdiv(count_, e.constant(2))
        with cgutils.for_range(b, b.sdiv(b.add(evens, e.constant(lanes - 1)), e.constant(lanes))) as loop:
            k0 = b.mul(loop.index, e.constant(lanes))
            first = b.mul(k0, e.constant(2))
            low = e.masked_load(src_data, b.add(src_at_, first), e.lanes_between(first, count_))
            second = b.add(first, e.constant(lanes))
            high = e.masked_load(src_data, b.add(src_at_, second), e.lanes_between(second, count_))
            for parity, at_, total in ((0, even_at_, evens), (1, odd_at_, odds)):
                half = b.shuffle_vector(low, high, ir.Constant(mask, [2 * i + parity for i in range(lanes)]))
                e.masked_store(half, dst_data, b.add(at_, k0), e.lanes_between(k0, total))
        return context.get_dummy_value()

    return sig, codegen


@serial(inline=True)
def place_phases_at(plane, dst, at, top, left, sh, sw, pitch, stride):
    """place_phases at strides sh, sw."""
    h, w = plane.shape
    for r in range(h):
        a, y = (r + top) % sh, (r + top) // sh
        src = plane[r]
        if sw == 1:
            # a unit-stride loop of its own, so that LLVM vectorises it
            cells = dst[at + a * stride + y * pitch + left :]
            for q in range(w):
                cells[q] = src[q]
            continue
        if sw == 2:
            # input column q is phase (q + left) % 2's column (q + left) // 2
            row = at + a * 2 * stride + y * pitch
            split_pairs(src, 0, w, dst, row + left % 2 * stride + left // 2, row + (left + 1) % 2 * stride + (left + 1) // 2)
            continue
        for b in range(sw):
            # input columns q0, q0 + sw, ... are phase b's, from its column (q0 + left) // sw
            q0 = (b - left) % sw
            cells = dst[at + (a * sw + b) * stride + y * pitch + (q0 + left) // sw :]
            for k in range((w - q0 + sw - 1) // sw):
                cells[k] = src[q0 + k * sw]


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
    if sh == 2 and sw == 2:
        # place_phases: 1.6x as fast as fill_phases' on 16x16 planes
        dst[:] = 0.0
        place_phases(plane, dst, 0, top, left, sh, sw, wq, hq * wq)
        return
    fill_phases(plane, 0, top, left, sh, sw, hq, wq, 0.0, dst, scratch)


@serial(inline=True)
def from_phases(flat, plane, top, left, sh, sw, hq, wq, size):
    """plane (h, w) = its cells in the flat phases of the plane zero-padded at (top,
    left), phase p's (hq, wq) cells from flat[p * size] (size >= hq*wq), the adjoint
    of fill_phases' placement; the padding is dropped."""
    h, w = plane.shape
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
    """dst[offset + y*wq + x] = plane[y, x]: a plane in the wide layout, rows wq cells
    apart; the other cells of dst keep their values."""
    oh, ow = plane.shape
    for y in range(oh):
        d = dst[offset + y * wq :]
        s = plane[y]
        for xo in range(ow):
            d[xo] = s[xo]


@serial(inline=True)
def from_wide(flat, plane, offset, wq):
    """plane[y, x] = flat[offset + y*wq + x]: the adjoint of to_wide's placement."""
    oh, ow = plane.shape
    for y in range(oh):
        s = flat[offset + y * wq :]
        d = plane[y]
        for xo in range(ow):
            d[xo] = s[xo]


def phase_shape(g):
    """(hq, wq) of each phase of a zero-padded input plane of geometry g."""
    hp, wp = padded_extent(g.h, g.w, g.pt, g.pl, g.oh, g.ow, g.kh, g.kw, g.sh, g.sw, g.dh, g.dw)
    return -(-hp // g.sh), -(-wp // g.sw)


def tap_starts(g, taps, hq, wq, stride=None):
    """int64 array of each tap's start, as tap_start with phases `stride` cells
    apart (default hq * wq); 0 for None (a padding tap)."""
    stride = hq * wq if stride is None else stride
    phase = [0 if tap is None else (tap[0] * g.dh % g.sh) * g.sw + tap[1] * g.dw % g.sw for tap in taps]
    shift = [0 if tap is None else tap[0] * g.dh // g.sh * wq + tap[1] * g.dw // g.sw for tap in taps]
    return np.array([p * stride + s for p, s in zip(phase, shift)], dtype=np.int64)
