"""Convolution by rows, read in place: each output row the sum of its kernel's
shifted input rows, loaded straight from the NCHW planes by masked vector loads
that leave out the cells past the planes' edges (the padding), and stored straight
into the output. No padded copy of the input and no wide layout to copy out of:
for layers of one input channel a group (depthwise, and first layers of one
channel), whose passes do few multiply-adds per byte, the direct kernels' split of
each plane into a padded buffer and copy out of the wide accumulator rows took
about half of each pass. On 2 cores of an AVX-512 Xeon, float32, the catalogue's
depthwise layer (128 channels of 32x32, 3x3) ran its forward in 0.72 ms where the
direct kernels took 1.31, its input gradient in 0.70 (1.39), its weight gradient
in 0.82-0.92 (1.42); 5x5 and 7x7 depthwise layers' passes 2-2.5x faster.

- `row_sums`, for the forward (and the input gradient at stride 1, the forward
  of the adjoint geometry): ROWS output rows by ROW_VECTORS vectors of cells in
  registers, every (tap column, channel, tap row) product a fused multiply-add
  into them, the edge masks of a tap column computed once for all its rows and
  channels. `row_sums3`, `row_sums5` and `row_sums7`, for 3, 5 and 7 tap rows at
  stride 1: SHARED_ROWS output rows (with dilation d down the height, rows d
  apart, which read input rows d apart), each input row's vectors loaded once
  for every output row that reads it, the tap rows' weights in registers (one
  load per multiply-add took the forward of the depthwise layer 1.22 ms, shared
  0.72); `block_row_sums3`, 5 and 7 the same for OUTPUTS output channels at
  once, each loaded input vector feeding the tap rows of all of them: about a
  third of a load per multiply-add, where the blocked sums' blocks take a half
  (a first layer's input gradient, 3 channels out of 32, 1.3-1.5x faster than in
  the blocked sums' 3 x 7 blocks, its forward 1-1.25x);
- `row_dots`, for the weight gradient: the dot products of the rows of
  grad_output with the input rows that DOT_TAPS tap columns of one tap row read,
  in registers over all the rows of a plane, their lanes added at the end;
  `row_dots3`, `row_dots5` and `row_dots7` for all 3, 5 or 7 tap rows at once,
  each input row's vectors loaded once for the rows of grad_output that read it;
- `strided_row_sums` and `strided_row_dots`, the same at stride 2 along the width:
  each vector of cells the even lanes of two loaded vectors; `strided_row_sums3`,
  5 and 7 at stride 2 both ways, each input row loaded once for the one or two
  output rows of each tap row parity that read it and for two tap columns (their
  cells the even and the odd lanes of the same loads), a vector of cells a row
  (the output rows are half as long);
- `phase_row_sums`, for the input gradient at stride 2 along the width: each input
  row's even and odd cells summed apart, each from unit-stride rows of
  grad_output, and interleaved by shuffles into the row (`input_planes`).

Stride 1 or 2 along the width, any stride along the height, any dilation and
padding (negative included). The intrinsics' masked loads and stores are not
bounds-checked, even under NUMBA_BOUNDSCHECK: their masks keep them inside the
planes (tested against pages that may not be touched).
"""

import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from ._jit import parallel, serial
from .direct import _adjoint, _flipped
from .emitter import VECTOR_BYTES, Emitter

# row_sums' vectors of an output row at a time (a 32-cell row of float32), by ROWS
# output rows, or SHARED_ROWS for row_sums3, 5 and 7 (their input rows shared
# between more output rows): 8 and 16 accumulators. A row at a time, its
# multiply-adds waited on each other (the depthwise forward 1.8 ms). For OUTPUTS
# output channels, BLOCK_ROWS rows: 18 accumulators, 9 to 21 weights (a first
# layer's input gradient 0.90 ms in float64 by 3 rows, 1.13 by 2, 1.08 by 4).
# With AVX2's 16 registers, half the rows and one row of a block.
ROW_VECTORS = 2
ROWS = 4
SHARED_ROWS = 8 if VECTOR_BYTES == 64 else 4
OUTPUTS = 3
BLOCK_ROWS = 3 if VECTOR_BYTES == 64 else 1
# phase_row_sums1 to 4 (rows of grad_output shared): PHASE_ROWS rows of even and
# odd cells, 16 accumulators (AVX2: 8)
PHASE_ROWS = 8 if VECTOR_BYTES == 64 else 4
# strided_row_sums3, 5 and 7 (stride 2 both ways): a vector of cells of a row at a
# time, the half of a plane's width that its output rows have (16 output cells
# from 32 input cells of float32 in one vector, where two left one empty)
STRIDED_VECTORS = 1
# row_dots' tap columns at a time (a 3x3 kernel's row in one pass; more spill), and
# the sums row_dots3, 5 and 7 keep in registers: a 3x3 kernel's 9 for 2 vectors of
# cells at a time with AVX-512 (its weight gradient 10-20% faster than a vector at a
# time), the others' 15 and 21 for one
DOT_TAPS = 3
DOT_ACCUMULATORS = 18 if VECTOR_BYTES == 64 else 9
# units of work a thread, at least (planes; the weight gradient's output channels),
# below which the kernels split planes into parts of their rows, or the weight
# gradient's batch into chunks
PARTS = 4


def _cell_masks(e, start, width, stride, within=None):
    """The lane masks of the loads of `stride` vectors of a row from `start` (the
    cells start + l for l below stride * lanes) that lie inside 0 <= cell < width,
    and, given `within`, whose cells l // stride < within."""
    b = e.builder
    masks = [e.lanes_between(b.add(start, e.constant(s * e.lanes)), width) for s in range(stride)]
    if within is not None and stride == 1:
        masks = [b.and_(masks[0], e.lanes_between(e.constant(0), within))]
    elif within is not None:
        twice = b.mul(within, e.constant(stride))
        masks = [b.and_(m, e.lanes_between(e.constant(s * e.lanes), twice)) for s, m in enumerate(masks)]
    return masks


def _loaded(e, data, at, masks):
    """The vectors data[at + s*lanes + l] loaded by _cell_masks' masks (one a mask)."""
    return [e.masked_load(data, e.builder.add(at, e.constant(s * e.lanes)), m) for s, m in enumerate(masks)]


def _parity_lanes(e, loaded, parity):
    """The even (parity 0) or odd (1) lanes of the two vectors `loaded`, in order."""
    order = ir.Constant(ir.VectorType(ir.IntType(32), e.lanes), list(range(parity, 2 * e.lanes, 2)))
    return e.builder.shuffle_vector(loaded[0], loaded[1], order)


def _cells(e, data, at, masks):
    """The vector of data[at + stride*l] for its lanes l (stride = len(masks), 1 or
    2), loaded by _cell_masks' masks: for stride 2, two vectors and their even
    lanes."""
    loaded = _loaded(e, data, at, masks)
    return loaded[0] if len(loaded) == 1 else _parity_lanes(e, loaded, 0)


def _row_sums(tap_rows=None, outputs=1, stride=1, vectors=ROW_VECTORS):
    """The intrinsic row_sums(out, out_at, out_row, out_channel, present, count,
    cells, x, x_at, x_channel, top, sh, height, channels, w, w_at, w_out, w_channel,
    kh, kw, dh, dw, left, width, x_row): for the output channels o < present (at most
    `outputs`) and output rows m < count (at most ROWS):
    out[out_at + o*out_channel + m*out_row + q] = the sum over c < channels, i < kh
    and j < kw of w[w_at + o*w_out + c*w_channel + i*kw + j] *
    x[x_at + c*x_channel + y*x_row + q*stride - left + j*dw], y = top + m*sh + i*dh,
    for q < cells, the terms whose x cell lies outside the plane (0 <= y < height,
    0 <= q*stride - left + j*dw < width) left out. The arrays flat and contiguous,
    of one dtype, the integers int64. Each term a fused multiply-add, in order of
    j, c, then i. `stride` 1 or 2 along the row (2: the general sums, or shared rows
    at stride 2 down the height too).

    `tap_rows`: for kh == tap_rows, sh == stride and dh == 1 only (the arguments kh,
    sh and dh unused; x_row a multiple of the rows' pitch where the input rows are
    every d-th row of a kernel dilated by d), SHARED_ROWS output rows (BLOCK_ROWS
    for several outputs), each input row's vectors loaded once for the tap rows of
    every output row and channel that reads it (the terms in order of j, c, then i
    from the last), with the tap rows' weights in registers; at stride 2 also
    dw == 1, and the input row's vectors loaded once for the tap columns j and
    j + 1 (the terms in order of j // 2, c, i from the last, then j). `vectors`:
    the vectors of cells of a row computed at a time (row_chunk)."""
    rows = ROWS if tap_rows is None else SHARED_ROWS if outputs == 1 else BLOCK_ROWS
    assert tap_rows is not None or outputs == 1
    # at stride 2 the input rows of output row m are 2m + i: row r serves the
    # output rows (r - i) / 2 of the tap rows i of its parity
    row_step = 1 if tap_rows is None else stride
    # and two tap columns j, j + 1 (dw == 1) from one load of each row's cells: the
    # even lanes of two vectors from column j's first cell, then their odd lanes
    pairs = tap_rows is not None and stride == 2

    def row_sums(typingctx, out, out_at, out_row, out_channel, present, count, cells, x, x_at, x_channel, top, sh, height, channels, w, w_at, w_out, w_channel, kh, kw, dh, dw, left, width, x_row):
        sig = types.void(out, out_at, out_row, out_channel, present, count, cells, x, x_at, x_channel, top, sh, height, channels, w, w_at, w_out, w_channel, kh, kw, dh, dw, left, width, x_row)

        def codegen(context, builder, signature, args):
            e = Emitter(context, builder, signature, args)
            (out_, out_at_, out_row_, out_channel_, present_, count_, cells_, x_, x_at_, x_channel_, top_, sh_, height_, channels_,
             w_, w_at_, w_out_, w_channel_, kh_, kw_, dh_, dw_, left_, width_, x_row_) = args
            kinds = signature.args
            out_data, x_data, w_data = e.data(kinds[0], out_), e.data(kinds[7], x_), e.data(kinds[14], w_)
            b, lanes = builder, e.lanes
            step = e.constant(vectors * lanes)
            acc = [[[cgutils.alloca_once(b, e.vector) for _ in range(vectors)] for _ in range(rows)] for _ in range(outputs)]
            # output channel o's weights; past `present`, the last present one's
            # (computed, never stored: its weights would lie past the array)
            w_ats = [b.add(w_at_, b.mul(b.select(b.icmp_signed("<", e.constant(o), present_), e.constant(o), b.sub(present_, e.constant(1))), w_out_)) for o in range(outputs)]
            with cgutils.for_range(b, b.udiv(b.add(cells_, e.constant(vectors * lanes - 1)), step)) as chunk:
                q0 = b.mul(chunk.index, step)
                for slot in (slot for output in acc for row in output for slot in row):
                    b.store(ir.Constant(e.vector, [0.0] * lanes), slot)
                with cgutils.for_range(b, b.udiv(b.add(kw_, e.constant(1)), e.constant(2)) if pairs else kw_) as column:
                    j = b.mul(column.index, e.constant(2)) if pairs else column.index
                    start = b.add(b.sub(b.mul(q0, e.constant(stride)), left_), b.mul(j, dw_))
                    masks = [_cell_masks(e, b.add(start, e.constant(v * lanes * stride)), width_, stride) for v in range(vectors)]
                    with cgutils.for_range(b, channels_) as channel:
                        c = channel.index
                        plane = b.add(b.add(x_at_, b.mul(c, x_channel_)), start)
                        weights = [b.add(b.add(at, b.mul(c, w_channel_)), j) for at in w_ats]
                        if pairs:
                            odd = b.icmp_signed("<", b.add(j, e.constant(1)), kw_)
                            # past the last column, this one's weights (read, never used)
                            odd_weights = [b.add(at, b.zext(odd, e.index)) for at in weights]

                        def add_products(cells, products):
                            for weight, o, m in products:
                                for v in range(vectors):
                                    e.fma(weight, cells[v], acc[o][m][v])

                        def add_row(y, products, odd_products=()):
                            # the products of input row y with the (weight, output, row)
                            # triples (and those of the odd column)
                            with cgutils.if_likely(b, b.icmp_unsigned("<", y, height_)):
                                base = b.add(plane, b.mul(y, x_row_))
                                if not pairs:
                                    add_products([_cells(e, x_data, b.add(base, e.constant(v * lanes * stride)), masks[v]) for v in range(vectors)], products)
                                    return
                                loaded = [_loaded(e, x_data, b.add(base, e.constant(v * lanes * stride)), masks[v]) for v in range(vectors)]
                                add_products([_parity_lanes(e, pair, 0) for pair in loaded], products)
                                with cgutils.if_likely(b, odd):
                                    add_products([_parity_lanes(e, pair, 1) for pair in loaded], odd_products)

                        if tap_rows is None:
                            with cgutils.for_range(b, kh_) as tap_row:
                                i = tap_row.index
                                weight = e.broadcast(w_data, b.add(weights[0], b.mul(i, kw_)))
                                first = b.add(top_, b.mul(i, dh_))
                                for m in range(rows):
                                    add_row(b.add(first, b.mul(e.constant(m), sh_)), [(weight, 0, m)])
                        else:
                            def tap_weights(ats):
                                return [[e.broadcast(w_data, b.add(at, b.mul(e.constant(i), kw_))) for i in range(tap_rows)] for at in ats]

                            taps = tap_weights(weights)
                            odd_taps = tap_weights(odd_weights) if pairs else None
                            for r in range((rows - 1) * row_step + tap_rows):
                                reads = [(i, o, (r - i) // row_step) for i in reversed(range(tap_rows)) if (r - i) % row_step == 0 and 0 <= (r - i) // row_step < rows for o in range(outputs)]
                                products = [(taps[o][i], o, m) for i, o, m in reads]
                                odd_products = [(odd_taps[o][i], o, m) for i, o, m in reads] if pairs else ()
                                add_row(b.add(top_, e.constant(r)), products, odd_products)
                for o in range(outputs):
                    with cgutils.if_likely(b, b.icmp_signed("<", e.constant(o), present_)):
                        for m in range(rows):
                            with cgutils.if_likely(b, b.icmp_signed("<", e.constant(m), count_)):
                                row = b.add(b.add(out_at_, b.mul(e.constant(o), out_channel_)), b.mul(e.constant(m), out_row_))
                                for v in range(vectors):
                                    at = b.add(q0, e.constant(v * lanes))
                                    e.masked_store(b.load(acc[o][m][v]), out_data, b.add(row, at), e.lanes_between(at, cells_))
            return context.get_dummy_value()

        return sig, codegen

    return intrinsic(row_sums)


row_sums = _row_sums()
strided_row_sums = _row_sums(stride=2)
row_sums3, row_sums5, row_sums7 = _row_sums(3), _row_sums(5), _row_sums(7)
strided_row_sums3, strided_row_sums5, strided_row_sums7 = (_row_sums(rows, stride=2, vectors=STRIDED_VECTORS) for rows in (3, 5, 7))
block_row_sums3, block_row_sums5, block_row_sums7 = (_row_sums(rows, OUTPUTS) for rows in (3, 5, 7))


def _row_dots(stride):
    """The intrinsic row_dots(out, out_at, count, g, g_at, g_row, x, x_at, x_row, rows,
    cells, dw, left, width): out[out_at + j] += the sum over r < rows and q < cells
    of g[g_at + r*g_row + q] * x[x_at + r*x_row + q*stride - left + j*dw] for
    j < count (at most DOT_TAPS), the terms whose x cell lies outside
    0 <= q*stride - left + j*dw < width left out. The arrays flat and contiguous, of
    one dtype, the integers int64. Each sum lane by lane in order of q's vectors,
    then r, then its lanes added pairwise (a fixed order)."""

    def row_dots(typingctx, out, out_at, count, g, g_at, g_row, x, x_at, x_row, rows, cells, dw, left, width):
        sig = types.void(out, out_at, count, g, g_at, g_row, x, x_at, x_row, rows, cells, dw, left, width)

        def codegen(context, builder, signature, args):
            e = Emitter(context, builder, signature, args)
            out_, out_at_, count_, g_, g_at_, g_row_, x_, x_at_, x_row_, rows_, cells_, dw_, left_, width_ = args
            kinds = signature.args
            out_data, g_data, x_data = e.data(kinds[0], out_), e.data(kinds[3], g_), e.data(kinds[6], x_)
            b, lanes = builder, e.lanes
            acc = [cgutils.alloca_once_value(b, ir.Constant(e.vector, [0.0] * lanes)) for _ in range(DOT_TAPS)]
            none = ir.Constant(ir.VectorType(ir.IntType(1), lanes), [0] * lanes)
            with cgutils.for_range(b, b.udiv(b.add(cells_, e.constant(lanes - 1)), e.constant(lanes))) as vector:
                q0 = b.mul(vector.index, e.constant(lanes))
                g_mask = e.lanes_between(q0, cells_)
                starts = [b.add(b.sub(b.mul(q0, e.constant(stride)), left_), b.mul(e.constant(j), dw_)) for j in range(DOT_TAPS)]
                # the x cells of g's cells only: an infinite x cell met by the zeros
                # past g's would make a NaN that PyTorch's sum does not have
                masks = [
                    [b.select(b.icmp_signed("<", e.constant(j), count_), m, none) for m in _cell_masks(e, start, width_, stride, b.sub(cells_, q0))]
                    for j, start in enumerate(starts)
                ]
                with cgutils.for_range(b, rows_) as row:
                    r = row.index
                    cells = e.masked_load(g_data, b.add(b.add(g_at_, b.mul(r, g_row_)), q0), g_mask)
                    x_start = b.add(x_at_, b.mul(r, x_row_))
                    for j in range(DOT_TAPS):
                        e.fma(cells, _cells(e, x_data, b.add(x_start, starts[j]), masks[j]), acc[j])
            (sums,) = e.lane_sums([b.load(slot) for slot in acc])
            first = e.lanes_between(e.constant(0), count_)
            e.masked_store(b.fadd(e.masked_load(out_data, out_at_, first), sums), out_data, out_at_, first)
            return context.get_dummy_value()

        return sig, codegen

    return intrinsic(row_dots)


row_dots, strided_row_dots = _row_dots(1), _row_dots(2)


def _shared_row_dots(tap_rows):
    """The intrinsic shared_row_dots(out, out_at, out_row, count, g, g_at, g_row,
    g_rows, x, x_at, top, height, cells, dw, left, width, samples, g_sample,
    x_sample): row_dots for all the `tap_rows` tap rows i of a kernel at
    sh == dh == 1, over `samples` pairs of planes (g_sample and x_sample apart):
    out[out_at + i*out_row + j] += the sum over s < samples, y < g_rows and q <
    cells of g[g_at + s*g_sample + y*g_row + q] *
    x[x_at + s*x_sample + (top + y + i)*width + q - left + j*dw] for j < count (at
    most DOT_TAPS), the terms whose x cell lies outside the plane (0 <= top + y + i
    < height, 0 <= q - left + j*dw < width) left out. Each input row's vectors are
    loaded once for the rows of g that read them: tap_rows * DOT_TAPS sums in
    registers, their lanes added once after all the samples (a depthwise layer of
    7x7 planes spent most of its weight gradient adding lanes when a call took one
    sample). Each sum lane by lane in order of q's vectors, the samples, then the
    input rows, then its lanes added pairwise (a fixed order)."""

    vectors = max(1, min(ROW_VECTORS, DOT_ACCUMULATORS // (tap_rows * DOT_TAPS)))

    def shared_row_dots(typingctx, out, out_at, out_row, count, g, g_at, g_row, g_rows, x, x_at, top, height, cells, dw, left, width, samples, g_sample, x_sample):
        sig = types.void(out, out_at, out_row, count, g, g_at, g_row, g_rows, x, x_at, top, height, cells, dw, left, width, samples, g_sample, x_sample)

        def codegen(context, builder, signature, args):
            e = Emitter(context, builder, signature, args)
            out_, out_at_, out_row_, count_, g_, g_at_, g_row_, g_rows_, x_, x_at_, top_, height_, cells_, dw_, left_, width_, samples_, g_sample_, x_sample_ = args
            kinds = signature.args
            out_data, g_data, x_data = e.data(kinds[0], out_), e.data(kinds[4], g_), e.data(kinds[8], x_)
            b, lanes = builder, e.lanes
            acc = [[[cgutils.alloca_once_value(b, ir.Constant(e.vector, [0.0] * lanes)) for _ in range(vectors)] for _ in range(DOT_TAPS)] for _ in range(tap_rows)]
            none = ir.Constant(ir.VectorType(ir.IntType(1), lanes), [0] * lanes)

            def clamp(value, low, high):
                value = b.select(b.icmp_signed("<", value, low), low, value)
                return b.select(b.icmp_signed(">", value, high), high, value)

            # the input rows top + y + i that lie inside the plane, for y < g_rows
            first = clamp(top_, e.constant(0), height_)
            end = clamp(b.add(b.add(top_, g_rows_), e.constant(tap_rows - 1)), first, height_)
            step = e.constant(vectors * lanes)
            with cgutils.for_range(b, b.udiv(b.add(cells_, e.constant(vectors * lanes - 1)), step)) as chunk:
                q0 = b.mul(chunk.index, step)
                g_masks = [e.lanes_between(b.add(q0, e.constant(v * lanes)), cells_) for v in range(vectors)]
                starts = [b.add(b.sub(q0, left_), b.mul(e.constant(j), dw_)) for j in range(DOT_TAPS)]
                # the x cells of g's cells only: an infinite x cell met by the zeros
                # past g's would make a NaN that PyTorch's sum does not have
                masks = [
                    [b.select(b.icmp_signed("<", e.constant(j), count_), b.and_(e.lanes_between(b.add(start, e.constant(v * lanes)), width_), g_masks[v]), none) for v in range(vectors)]
                    for j, start in enumerate(starts)
                ]
                with cgutils.for_range(b, samples_) as sample:
                    g_first = b.add(g_at_, b.mul(sample.index, g_sample_))
                    x_first = b.add(x_at_, b.mul(sample.index, x_sample_))
                    with cgutils.for_range(b, b.sub(end, first)) as row:
                        yy = b.add(first, row.index)
                        x_start = b.add(x_first, b.mul(yy, width_))
                        cells = [[e.masked_load(x_data, b.add(b.add(x_start, start), e.constant(v * lanes)), masks[j][v]) for v in range(vectors)] for j, start in enumerate(starts)]
                        for i in reversed(range(tap_rows)):
                            y = b.sub(b.sub(yy, top_), e.constant(i))
                            with cgutils.if_likely(b, b.icmp_unsigned("<", y, g_rows_)):
                                g_row = b.add(b.add(g_first, b.mul(y, g_row_)), q0)
                                for v in range(vectors):
                                    gv = e.masked_load(g_data, b.add(g_row, e.constant(v * lanes)), g_masks[v])
                                    for j in range(DOT_TAPS):
                                        e.fma(gv, cells[j][v], acc[i][j][v])
            first_lanes = e.lanes_between(e.constant(0), count_)
            for i in range(tap_rows):
                # each sum's vectors added in order, then its lanes
                totals = []
                for j in range(DOT_TAPS):
                    total = b.load(acc[i][j][0])
                    for v in range(1, vectors):
                        total = b.fadd(total, b.load(acc[i][j][v]))
                    totals.append(total)
                (sums,) = e.lane_sums(totals)
                at = b.add(out_at_, b.mul(e.constant(i), out_row_))
                e.masked_store(b.fadd(e.masked_load(out_data, at, first_lanes), sums), out_data, at, first_lanes)
            return context.get_dummy_value()

        return sig, codegen

    return intrinsic(shared_row_dots)


row_dots3, row_dots5, row_dots7 = _shared_row_dots(3), _shared_row_dots(5), _shared_row_dots(7)


def _phase_row_sums(tap_rows=None):
    """The intrinsic phase_row_sums(out, out_at, out_row, count, cells, g, g_at,
    g_channel, g_top, g_height, channels, rows, g_step, w, w_at, w_channel, w_step,
    kw, dw, left, g_width): the input gradient's rows at stride 2 along the width:
    for the rows m < count (at most ROWS) and the cells p < cells of each,
    out[out_at + m*out_row + p] = the sum over c < channels, r < rows and the j < kw
    with p + left - j*dw even of w[w_at + c*w_channel + r*w_step + j] *
    g[g_at + c*g_channel + y*g_width + (p + left - j*dw) / 2], y = g_top + m +
    r*g_step (rows of the same tap rows, one row of g apart), the terms whose g cell
    lies outside the plane (0 <= y < g_height, 0 <= column < g_width) left out.
    Cells of even and odd p are summed apart, each along unit-stride rows of g, and
    interleaved into the row by shuffles. The arrays flat and contiguous, of one
    dtype, the integers int64. Each term a fused multiply-add, in order of j, c,
    then r.

    `tap_rows`: for rows == tap_rows and g_step == -1 only (the arguments rows and
    g_step unused), PHASE_ROWS rows, each row of g loaded once for the tap rows of
    every row that reads it (the terms in order of j, c, then r from the last),
    with the tap rows' weights in registers."""
    count_most = ROWS if tap_rows is None else PHASE_ROWS

    def phase_row_sums(typingctx, out, out_at, out_row, count, cells, g, g_at, g_channel, g_top, g_height, channels, rows, g_step, w, w_at, w_channel, w_step, kw, dw, left, g_width):
        sig = types.void(out, out_at, out_row, count, cells, g, g_at, g_channel, g_top, g_height, channels, rows, g_step, w, w_at, w_channel, w_step, kw, dw, left, g_width)

        def codegen(context, builder, signature, args):
            e = Emitter(context, builder, signature, args)
            (out_, out_at_, out_row_, count_, cells_, g_, g_at_, g_channel_, g_top_, g_height_, channels_, rows_, g_step_,
             w_, w_at_, w_channel_, w_step_, kw_, dw_, left_, g_width_) = args
            kinds = signature.args
            out_data, g_data, w_data = e.data(kinds[0], out_), e.data(kinds[5], g_), e.data(kinds[13], w_)
            b, lanes = builder, e.lanes
            acc = [[cgutils.alloca_once(b, e.vector) for _ in range(2)] for _ in range(count_most)]
            step = e.constant(2 * lanes)
            with cgutils.for_range(b, b.udiv(b.add(cells_, e.constant(2 * lanes - 1)), step)) as chunk:
                p0 = b.mul(chunk.index, step)
                for slot in (slot for row in acc for slot in row):
                    b.store(ir.Constant(e.vector, [0.0] * lanes), slot)
                for phase in range(2):
                    with cgutils.for_range(b, kw_) as column:
                        j = column.index
                        shift = b.sub(b.add(b.add(p0, e.constant(phase)), left_), b.mul(j, dw_))
                        with cgutils.if_likely(b, b.icmp_signed("==", b.and_(shift, e.constant(1)), e.constant(0))):
                            start = b.ashr(shift, e.constant(1))
                            mask = e.lanes_between(start, g_width_)
                            with cgutils.for_range(b, channels_) as channel:
                                c = channel.index
                                plane = b.add(b.add(g_at_, b.mul(c, g_channel_)), start)
                                weights = b.add(b.add(w_at_, b.mul(c, w_channel_)), j)

                                def add_row(y, products, plane=plane, mask=mask, phase=phase):
                                    # the products of g's row y with the (weight, row) pairs
                                    with cgutils.if_likely(b, b.icmp_unsigned("<", y, g_height_)):
                                        cells = e.masked_load(g_data, b.add(plane, b.mul(y, g_width_)), mask)
                                        for weight, m in products:
                                            e.fma(weight, cells, acc[m][phase])

                                if tap_rows is None:
                                    with cgutils.for_range(b, rows_) as tap_row:
                                        r = tap_row.index
                                        weight = e.broadcast(w_data, b.add(weights, b.mul(r, w_step_)))
                                        first = b.add(g_top_, b.mul(r, g_step_))
                                        for m in range(ROWS):
                                            add_row(b.add(first, e.constant(m)), [(weight, m)])
                                else:
                                    # row m, tap row r reads g's row g_top + m - r
                                    taps = [e.broadcast(w_data, b.add(weights, b.mul(e.constant(r), w_step_))) for r in range(tap_rows)]
                                    for u in range(1 - tap_rows, count_most):
                                        products = [(taps[r], u + r) for r in reversed(range(tap_rows)) if 0 <= u + r < count_most]
                                        add_row(b.add(g_top_, e.constant(u)), products)
                mask_kind = ir.VectorType(ir.IntType(32), lanes)
                half = lanes // 2
                low = ir.Constant(mask_kind, [k // 2 + (lanes if k % 2 else 0) for k in range(lanes)])
                high = ir.Constant(mask_kind, [half + k // 2 + (lanes if k % 2 else 0) for k in range(lanes)])
                for m in range(count_most):
                    with cgutils.if_likely(b, b.icmp_signed("<", e.constant(m), count_)):
                        even, odd = b.load(acc[m][0]), b.load(acc[m][1])
                        row = b.add(out_at_, b.mul(e.constant(m), out_row_))
                        for v, order in enumerate((low, high)):
                            at = b.add(p0, e.constant(v * lanes))
                            e.masked_store(b.shuffle_vector(even, odd, order), out_data, b.add(row, at), e.lanes_between(at, cells_))
            return context.get_dummy_value()

        return sig, codegen

    return intrinsic(phase_row_sums)


phase_row_sums = _phase_row_sums()
phase_row_sums1, phase_row_sums2, phase_row_sums3, phase_row_sums4 = (_phase_row_sums(rows) for rows in range(1, 5))


@serial(inline=True)
def rows_shared(kh, sh, sw):
    """Whether the forward's input rows for a kernel of kh rows at stride (sh, sw)
    are loaded once for all the output rows that read them (row_sums3, 5 and 7;
    with dilation d down the height, in d classes of output rows d apart)."""
    return sh == 1 and sw == 1 and (kh == 3 or kh == 5 or kh == 7)


@serial(inline=True)
def dot_rows_shared(kh, sh, sw, dh):
    """Whether the weight gradient's input rows are loaded once for all the rows of
    grad_output that read them (row_dots3, 5 and 7): at stride and dilation 1."""
    return rows_shared(kh, sh, sw) and dh == 1


@serial(inline=True)
def strided_rows_shared(kh, sh, sw, dh, dw):
    """Whether the forward's input rows at stride 2 both ways, dilation 1, are
    loaded once for all the output rows that read them, and once for two tap
    columns (strided_row_sums3, 5 and 7)."""
    return sh == 2 and sw == 2 and dh == 1 and dw == 1 and (kh == 3 or kh == 5 or kh == 7)


@parallel
def forward_planes(x, w, out, groups, pt, pl, sh, sw, dh, dw, parts):
    """out (N, K, oh, ow) = the convolution of x (N, C, H, W) with w (K, C/groups,
    kh, kw): stride sh along the height and sw (1 or 2) along the width, dilation
    (dh, dw), padding pt on top and pl on the left (any sign). An iteration a part
    of the rows (`parts` a block) of a block of a group's output planes: OUTPUTS
    where rows are shared at stride 1 and the group has as many, else one; a
    row_sums call ROWS (SHARED_ROWS, BLOCK_ROWS) rows; where rows are shared with
    dilation d down the height, rows of one class of output rows d apart (each
    class the convolution, undilated down the height, of the input rows of its
    own: every d-th row from its first)."""
    n_, c_, h, wd = x.shape
    k_, cg, kh, kw = w.shape
    oh, ow = out.shape[2], out.shape[3]
    kg = k_ // groups
    shared = rows_shared(kh, sh, sw)
    strided = strided_rows_shared(kh, sh, sw, dh, dw)
    block = OUTPUTS if shared and kg >= OUTPUTS else 1
    step = SHARED_ROWS if strided or shared and block == 1 else BLOCK_ROWS if shared else ROWS
    classes = dh if shared else 1
    class_rows = -(-oh // classes)  # the most output rows a class holds
    per_group, steps = -(-kg // block), -(-class_rows // step)
    flat_x, flat_w, flat_out = x.reshape(x.size), w.reshape(w.size), out.reshape(out.size)
    for t in prange(n_ * groups * per_group * parts):
        b, part = t // parts, t % parts
        n, group = b // (groups * per_group), b // per_group % groups
        k0 = group * kg + b % per_group * block
        present = min(block, (group + 1) * kg - k0)
        for s in range(classes * steps * part // parts, classes * steps * (part + 1) // parts):
            y = s // steps + s % steps * step * classes
            if y >= oh:
                continue
            # the class's input rows: every classes-th row from row `first`
            top = y * sh - pt
            first = top % classes
            args = (
                flat_out, ((n * k_ + k0) * oh + y) * ow, ow * classes, oh * ow, present, min(step, (oh - 1 - y) // classes + 1), ow,
                flat_x, ((n * c_ + group * cg) * h + first) * wd, h * wd, (top - first) // classes, sh, max(0, -(-(h - first) // classes)), cg,
                flat_w, k0 * cg * kh * kw, cg * kh * kw, kh * kw, kh, kw, dh, dw, pl, wd, wd * classes,
            )
            if strided and kh == 3:
                strided_row_sums3(*args)
            elif strided and kh == 5:
                strided_row_sums5(*args)
            elif strided:
                strided_row_sums7(*args)
            elif not shared and sw == 2:
                strided_row_sums(*args)
            elif not shared:
                row_sums(*args)
            elif block == 1 and kh == 3:
                row_sums3(*args)
            elif block == 1 and kh == 5:
                row_sums5(*args)
            elif block == 1:
                row_sums7(*args)
            elif kh == 3:
                block_row_sums3(*args)
            elif kh == 5:
                block_row_sums5(*args)
            else:
                block_row_sums7(*args)


@parallel
def input_planes(weight, grad_output, gx, groups, pt, pl, sh, dh, dw, parts):
    """gx (N, C, H, W) = the input gradient of the convolution of stride (sh, 2) with
    weight (K, C/groups, kh, kw), from grad_output (N, K, oh, ow): an iteration a
    part of an input plane's rows (`parts` a plane); its rows in classes of rows
    that take the same tap rows (every sh-th row), a phase_row_sums call ROWS rows
    of a class (PHASE_ROWS where the class's 1-4 tap rows read rows of
    grad_output one apart: phase_row_sums1 to 4)."""
    n_, c_, h, wd = gx.shape
    k_, oh, ow = grad_output.shape[1], grad_output.shape[2], grad_output.shape[3]
    cg, kh, kw = weight.shape[1], weight.shape[2], weight.shape[3]
    kg, taps = k_ // groups, kh * kw
    flat_w, flat_g, flat_gx = weight.reshape(weight.size), grad_output.reshape(grad_output.size), gx.reshape(gx.size)
    for t in prange(n_ * c_ * parts):
        plane, part = t // parts, t % parts
        n, c = plane // c_, plane % c_
        group, cl = c // cg, c % cg
        for a in range(min(sh, h)):
            # the tap rows i of input row a: a + pt - i*dh a multiple of sh
            i0 = 0
            while i0 < kh and (a + pt - i0 * dh) % sh != 0:
                i0 += 1
            i_step = 1
            while (i_step * dh) % sh != 0:
                i_step += 1
            tap_rows = 0 if i0 >= kh else (kh - 1 - i0) // i_step + 1
            g_step = -(i_step * dh) // sh
            shared = g_step == -1 and 1 <= tap_rows <= 4
            rows_a_call = PHASE_ROWS if shared else ROWS
            steps = -(-(h - a) // (sh * rows_a_call))
            for s in range(steps * part // parts, steps * (part + 1) // parts):
                y = a + s * sh * rows_a_call
                args = (
                    flat_gx, (plane * h + y) * wd, sh * wd, min(rows_a_call, (h - 1 - y) // sh + 1), wd, flat_g, (n * k_ + group * kg) * oh * ow, oh * ow,
                    (y + pt - i0 * dh) // sh, oh, kg, tap_rows, g_step, flat_w, ((group * kg) * cg + cl) * taps + i0 * kw, cg * taps, i_step * kw, kw, dw, pl, ow,
                )
                if not shared:
                    phase_row_sums(*args)
                elif tap_rows == 1:
                    phase_row_sums1(*args)
                elif tap_rows == 2:
                    phase_row_sums2(*args)
                elif tap_rows == 3:
                    phase_row_sums3(*args)
                else:
                    phase_row_sums4(*args)


@parallel
def weight_planes(x, grad_output, partial, groups, pt, pl, sh, sw, dh, dw, parts):
    """partial[b] (K, C/groups, kh, kw) = the weight gradient over chunk b of the
    (sample, part of its output rows) pairs, `parts` a sample, of the convolution
    forward_planes computes: an iteration an output channel of a chunk, a row_dots
    call up to DOT_TAPS tap columns of one tap row over the part's output rows
    whose input row lies inside the plane (row_dots3, 5 and 7: of every tap row,
    over all the chunk's samples where the items are whole samples)."""
    n_, c_, h, wd = x.shape
    k_, oh, ow = grad_output.shape[1], grad_output.shape[2], grad_output.shape[3]
    chunks, _, cg, kh, kw = partial.shape
    kg = k_ // groups
    items = n_ * parts
    flat_x, flat_g, flat_p = x.reshape(x.size), grad_output.reshape(grad_output.size), partial.reshape(partial.size)
    for t in prange(chunks * k_):
        b, k = t // k_, t % k_
        at = t * cg * kh * kw
        flat_p[at : at + cg * kh * kw] = 0.0
        c0 = k // kg * cg
        i0, i1 = items * b // chunks, items * (b + 1) // chunks
        shared = dot_rows_shared(kh, sh, sw, dh)
        # items of whole samples: one shared row_dots call for all of the chunk's
        whole = shared and parts == 1
        samples = i1 - i0 if whole else 1
        for item in range(i0, i0 + 1 if whole else i1):
            n, part = item // parts, item % parts
            r0, r1 = oh * part // parts, oh * (part + 1) // parts
            for cl in range(cg):
                if shared:
                    for j0 in range(0, kw, DOT_TAPS):
                        args = (
                            flat_p, at + cl * kh * kw + j0, kw, min(DOT_TAPS, kw - j0), flat_g, ((n * k_ + k) * oh + r0) * ow, ow, r1 - r0,
                            flat_x, (n * c_ + c0 + cl) * h * wd, r0 - pt, h, ow, dw, pl - j0 * dw, wd, samples, k_ * oh * ow, c_ * h * wd,
                        )
                        if kh == 3:
                            row_dots3(*args)
                        elif kh == 5:
                            row_dots5(*args)
                        else:
                            row_dots7(*args)
                    continue
                for i in range(kh):
                    # the part's output rows y with 0 <= y*sh - pt + i*dh < h
                    y0 = max(r0, -((i * dh - pt) // sh))
                    y1 = min(r1, -((i * dh - pt - h) // sh))
                    if y1 <= y0:
                        continue
                    for j0 in range(0, kw, DOT_TAPS):
                        args = (flat_p, at + (cl * kh + i) * kw + j0, min(DOT_TAPS, kw - j0), flat_g, ((n * k_ + k) * oh + y0) * ow, ow, flat_x, ((n * c_ + c0 + cl) * h + y0 * sh - pt + i * dh) * wd, sh * wd, y1 - y0, ow, dw, pl - j0 * dw, wd)
                        if sw == 2:
                            strided_row_dots(*args)
                        else:
                            row_dots(*args)


def row_chunk(dtype):
    """The cells of a row that row_sums computes at a time in dtype."""
    return ROW_VECTORS * VECTOR_BYTES // np.dtype(dtype).itemsize


def shares_rows(g):
    """Whether the forward of geometry g loads its input rows once for all the output
    rows that read them (rows_shared)."""
    return rows_shared(g.kh, g.sh, g.sw)


def applicable(g, computation):
    """Whether the rows compute `computation` ('forward', 'input' or 'weight') of
    geometry g: at stride 1 or 2 along the width; the input gradient at stride 1
    both ways (the forward of the adjoint geometry) or 2 along the width."""
    return g.sw == 1 and (computation != "input" or g.sh == 1) or g.sw == 2


def _parts(units, steps, threads):
    """Parts to split each of `units` units of work (planes) into, along its
    `steps` steps of rows, so that there are PARTS units a thread where there are
    fewer (a batch of one still on every core)."""
    return max(1, min(steps, -(-PARTS * threads // max(1, units))))


def forward(x, weight, g, threads):
    """conv2d of x (N, C, H, W) with weight (K, C/groups, kh, kw), geometry g (sw <= 2):
    the output (N, K, oh, ow)."""
    out = np.empty(g.output_shape, dtype=x.dtype)
    parts = _parts(g.n * g.c_out, -(-g.oh // ROWS), threads)
    forward_planes(x, weight, out, g.groups, g.pt, g.pl, g.sh, g.sw, g.dh, g.dw, parts)
    return out


def input_grad(weight, grad_output, g, threads):
    """The input gradient (N, C, H, W) of geometry g: at stride 1 the forward of the
    adjoint geometry, grad_output by the flipped kernel; at stride 2 along the
    width (input_planes), each row's even and odd cells summed apart."""
    if g.sw == 1:
        return forward(grad_output, _flipped(weight, g), _adjoint(g), threads)
    gx = np.empty(g.input_shape, dtype=grad_output.dtype)
    parts = _parts(g.n * g.c_in, -(-g.h // (g.sh * ROWS)), threads)
    input_planes(weight, grad_output, gx, g.groups, g.pt, g.pl, g.sh, g.dh, g.dw, parts)
    return gx


def weight_grad(x, grad_output, g, threads):
    """The weight gradient (K, C/groups, kh, kw) of geometry g (sw <= 2): an output
    channel's over the whole batch on one thread where there are PARTS channels a
    thread or more, else over chunks of the samples (and of their rows, where
    there are fewer samples than chunks), summed after in a fixed order."""
    want = -(-PARTS * threads // g.c_out)
    parts = 1 if want <= g.n else min(g.oh, -(-want // g.n))
    chunks = min(want, g.n * parts)
    partial = np.empty((chunks, *g.weight_shape), dtype=x.dtype)
    weight_planes(x, grad_output, partial, g.groups, g.pt, g.pl, g.sh, g.sw, g.dh, g.dw, parts)
    return partial[0] if chunks == 1 else partial.sum(axis=0)
