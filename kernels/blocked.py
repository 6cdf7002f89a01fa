"""Convolution by register-blocked sums: the forward, input gradient and weight
gradient of any stride, padding, dilation and group count, each with a block of
results held in vector registers while its whole sum runs.

LLVM keeps a loop's accumulators in memory when they live in an array (it cannot
prove the array apart from the inputs): the direct kernels' loops, which load and
store their accumulators for every three or four products, ran at 65-75 GFLOP/s a
core where the machine's sgemm runs at 178. The inner loops here are written
in LLVM's IR instead (Numba intrinsics), their accumulators in registers:

- `block_sums`, for the forward and the input gradient: ROWS output channels by
  VECTORS vectors of output cells, each step one vector load per vector of cells and
  one broadcast weight per channel for ROWS * VECTORS multiply-adds (on one core of
  an AVX-512 Xeon, over cached data: 194 GFLOP/s in float32, 101 in float64),
  and `narrow_block_sums` and `thin_block_sums` for 4 channels and for up to 3,
  in blocks of 4 channels by 6 vectors and of 3 by 7;
- `channel_sums`, for the weight gradient where the output channels fill vectors:
  rows of the sum by vectors of output channels (6 x 4 with AVX-512), each step one
  vector load per vector of a cell's channels (grad_output transposed by
  `transpose_square`, a square of cells at a time in registers) and one broadcast
  input cell per row;
- `block_dots`, for the other weight gradients: 4 x 6 dot products of rows of
  grad_output with rows of input cells, 10 vector loads a step for 24
  multiply-adds, and each sum's lanes added at the end;
- `transpose_square` and `spread_store`, the moves plain loops would do a cell at
  a time: a square of cells transposed in registers, and a row of the stride-2
  input gradient spread to every other cell of its input row.

Layout (fastconv.kernels.phases): the input is split into the phases of its padded
planes (direct.place_run), each worker (one per thread) splitting the samples it
computes into scratch of its own, so that they stay in its cache for the sums (a
split of the whole batch first was written out to memory and read back: 10-20%
of a pass). In the wide layout, output q = y*wq + x of tap u reads its plane's
phases at starts[u] + q, so row r = c*taps + u of the sum is one contiguous run
from offsets[r] = c*span + starts[u], at any stride and dilation. A block's cells
past the last output read zeros (each plane's span runs past the phases) and are
dropped with the wq - ow extra cells of every row. Small planes are laid out a run of samples at a time, their rows
interleaved (row y of the run's sample j at y*runs_of + j), so that the runs of
cells span the samples. The input gradient sums the same way over grad_output, one
phase of the input at a time (`_InputPlan`).

The intrinsics' loads and stores are not bounds-checked, even under
NUMBA_BOUNDSCHECK: the plans (`_Plan`, `_InputPlan`) lay the arrays out so that
every one lies inside them, and check it before any kernel runs.
"""

import collections
import functools
import threading

import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from ._jit import parallel, serial
from .direct import place_run, widen_run
from .emitter import VECTOR_BYTES, Emitter
from .phases import phase_shape, tap_starts

# block_sums' (ROWS output channels, VECTORS vectors of cells): ROWS * VECTORS
# accumulators, plus VECTORS loaded cells and a broadcast weight, within the vector
# registers. With AVX-512 8x3: over cached data 194 GFLOP/s on one core of a Xeon
# in float32 and 101 in float64, where 4x3 to 6x4, 8x2 and 12x1 ran at 137-190 and
# 61-98; on whole layers 5-15% faster than 6x3 (and output channels come in eights
# more often than in sixes). With AVX2 the usual 6x2 of a 16-register GEMM kernel.
BLOCK = (8, 3) if VECTOR_BYTES == 64 else (6, 2)
# For fewer channels, blocks of fewer rows by more vectors, about as many sums:
# NARROW_BLOCK for NARROW_ROWS channels, THIN_BLOCK for THIN_ROWS or fewer (the
# input gradient of a first layer of 3 channels, an output layer of 3), which 3
# channels fill where they filled 3/4 of NARROW_BLOCK (with AVX-512, 3x7: the input
# gradient of a 3-channel 3x3 layer 5-7% faster than in 4x6 blocks, of a 7x7
# stride-2 one 15-18%; 3x6 ran as 3x7, 3x8 spills).
NARROW_ROWS = 4
NARROW_BLOCK = (NARROW_ROWS, 6) if VECTOR_BYTES == 64 else (NARROW_ROWS, 3)
THIN_ROWS = 3
THIN_BLOCK = (THIN_ROWS, 7) if VECTOR_BYTES == 64 else (THIN_ROWS, 3)
# For forwards (and strided input gradients) of few cells a run (a batch-1 7x7
# plane: 49 outputs in 61 cells of the wide layout, 2 blocks of BLOCK's 48 in
# float32, half of them empty), blocks
# of TALL_BLOCK, more channels by fewer vectors (12 x 2: 49 in 64 cells), where
# their outputs and channels fill them TALL_GAIN times better than BLOCK's. On 2
# cores of an AMD EPYC, float32, batch-1 layers of 256-512 channels of 7x7 and 4x4
# planes (and their stride-1 input gradients) 10-28% faster; in float64, where 49
# outputs fill 3 blocks of 24 cells to 68% and 4 of 16 to 77%, as fast or up to
# 12% slower, and the 8% gain of 2 samples of 7x7 in float32 was within noise.
TALL_ROWS = 12
TALL_BLOCK = (TALL_ROWS, 2) if VECTOR_BYTES == 64 else None
TALL_GAIN = 1.2
# block_dots' (rows of grad_output, rows of the sum): their products in registers,
# with the grad_output rows' vectors and one row's of the sum. With AVX-512 4x6: over
# cached data 8-10% faster than 4x4 and 6x4 in both dtypes, 8x3 spills. With AVX2
# 3x4, where 4x4 spills (70% faster).
DOTS = (4, 6) if VECTOR_BYTES == 64 else (3, 4)
# weight_blocks' steps: at most STEP_CELLS cells of a run of samples (a 32x32
# plane's in one step, res3x3's weight gradient 11% faster than at 1024 in
# float32), or runs of up to SAMPLE_BYTES together (more, and the input rows of
# stride-2 layers fall out of L1)
STEP_CELLS = 2048
SAMPLE_BYTES = 4096
# the weight gradient's runs of samples summed apart (then added) in parts of at
# least PART_CELLS cells, as many as the threads can share evenly
PART_CELLS = 4096
# channel_sums' blocks: (rows of the sum, vectors of output channels), at most
# CHANNEL_ACCUMULATORS sums in registers, plus the vectors loaded and a broadcast.
# Its chunks of output rows read at most CHUNK_BYTES of the transposed grad_output
# (every channel), which stays in L2 while every row block runs over it, each
# block's input rows in L1 across its channel blocks. A chunk is one run of each
# block's sums, loaded and stored once: chunks of 32 KiB held 16 cells of a
# 256-channel layer of 4x4 planes in float64, and its weight gradient ran 35%
# slower than in chunks of 1 MiB (7x7 planes 37%, float32 11-14%; res3x3 and the
# transposed layers within 3% from 32 KiB to 4 MiB).
CHANNEL_ACCUMULATORS = 24 if VECTOR_BYTES == 64 else 12
CHANNEL_VECTORS = 4 if VECTOR_BYTES == 64 else 3
CHUNK_BYTES = 1 << 20
# forward_blocks and input_blocks run the channel blocks in sweeps of at most
# SWEEP_BYTES of weights, every block of cells in turn inside a sweep: its weights
# stay in L2 over the blocks, where all of a 256-channel 3x3 layer's (2.4 MB in
# float32) streamed from memory for each block (forward of 256 channels of 4x4 and
# 7x7 planes 3-5% faster in float32, 8-17% in float64; 64 KiB to 2 MiB within 3%).
SWEEP_BYTES = 1 << 19
# The weight gradient by channel_sums where a group's output channels fill two
# vectors or more (at least CHANNEL_FILL of the lanes of its blocks) and its sum
# has CHANNEL_ROWS rows or more; by block_dots elsewhere. By channels in float32,
# res3x3's weight gradient 9.4 -> 6.9 ms, dcgan_up's 2.7 -> 2.0, x_conv5_s2's 2.35 ->
# 1.85 (float64 8-23% faster); but with fewer rows the transposition of
# grad_output costs more than it saves (cifar_stem's 27 rows 0.84 -> 0.93 ms), and
# one vector's blocks load a broadcast for every multiply-add (lenet_c2's 16
# channels 0.18 -> 0.22).
CHANNEL_FILL = 7 / 8
CHANNEL_ROWS = 128
# Small planes are computed with the planes of a run of samples together, their
# rows interleaved (the output rows of sample j of a run at y * runs_of + j), so
# that a run of cells spans the samples: for the forward (and the stride-1 input
# gradient) the fewest samples a run whose blocks leave at most FOLD_WASTE of their
# cells empty; for the weight gradient, runs of FOLD_CELLS output cells or more.
# 256 channels of 7x7 planes by 3x3, each pass 20-30% faster; of 4x4 planes,
# 35-45%. (A block's input cells then reach further, past taps' rows of every
# sample of the run: with more samples than it needs the forward ran up to 10%
# slower.)
FOLD_WASTE = 1 / 8
FOLD_CELLS = 512


def block_shape(dtype, channels):
    """(ROWS, cells) of one block of block_sums (BLOCK), or of narrow_block_sums
    (NARROW_BLOCK) for NARROW_ROWS channels, or of thin_block_sums (THIN_BLOCK) for
    THIN_ROWS channels or fewer, in dtype."""
    rows, vectors = THIN_BLOCK if channels <= THIN_ROWS else NARROW_BLOCK if channels <= NARROW_ROWS else BLOCK
    return rows, vectors * VECTOR_BYTES // np.dtype(dtype).itemsize


def filled(count, block):
    """The share of the blocks of `block` items that `count` items fill."""
    return count / (-(-count // block) * block)


def run_block_shape(dtype, channels, length):
    """(ROWS, cells) of the blocks of the forward, or of the strided input
    gradient's phases, for `channels` output channels a group and runs of
    `length` cells: block_shape, or TALL_BLOCK where its blocks of channels and
    cells are TALL_GAIN times fuller."""
    rows, cells = block_shape(dtype, channels)
    if TALL_BLOCK is None or rows != BLOCK[0]:
        return rows, cells
    tall = TALL_BLOCK[0], TALL_BLOCK[1] * VECTOR_BYTES // np.dtype(dtype).itemsize

    def fill(shape):
        return filled(channels, shape[0]) * filled(length, shape[1])

    return tall if fill(tall) > TALL_GAIN * fill((rows, cells)) else (rows, cells)


def _block_sums(shape, packed=False):
    """The intrinsic block_sums(out, out_at, out_pitch, w, w_at, w_pitch, w_step, x,
    x_at, offsets, rows) for blocks of shape (ROWS, VECTORS):
    out[out_at + i*out_pitch + l] += the sum over r < rows of
    w[w_at + i*w_pitch + r*w_step] * x[x_at + offsets[r] + l], for i < ROWS and l
    below VECTORS * lanes; the arrays flat and contiguous, of one dtype, the integers
    int64. The terms in order of r, each a fused multiply-add.

    `packed`: packed_block_sums(out, out_at, out_pitch, out_rows, packing, stores, w,
    w_at, w_pitch, w_step, x, x_at, offsets, rows) stores each sum instead, for the
    rows i < out_rows only, with `stores` masked stores of each vector v: for
    s < stores, lane l to out[out_at + i*out_pitch + packing[2(v*stores + s)] + l]
    where bit l of packing[2(v*stores + s) + 1] is set (pack_cells: the cells of
    the wide layout that are outputs, straight into their rows)."""
    block_rows, vectors = shape

    def sums(e, acc, w_data, w_at_, w_pitch_, w_step_, x_data, x_at_, offsets_data, rows_):
        builder = e.builder
        weight_rows = e.at(w_at_, w_pitch_, block_rows)
        with cgutils.for_range(builder, rows_) as loop:
            r = loop.index
            start = builder.add(x_at_, builder.load(builder.gep(offsets_data, [r])))
            cells = [e.load(x_data, at) for at in e.at(start, e.constant(e.lanes), vectors)]
            w_r = builder.mul(r, w_step_)
            for i in range(block_rows):
                weight = e.broadcast(w_data, builder.add(weight_rows[i], w_r))
                for v in range(vectors):
                    e.fma(weight, cells[v], acc[i * vectors + v])

    def block_sums(typingctx, out, out_at, out_pitch, w, w_at, w_pitch, w_step, x, x_at, offsets, rows):
        sig = types.void(out, out_at, out_pitch, w, w_at, w_pitch, w_step, x, x_at, offsets, rows)

        def codegen(context, builder, signature, args):
            e = Emitter(context, builder, signature, args)
            out_, out_at_, out_pitch_, w_, w_at_, w_pitch_, w_step_, x_, x_at_, offsets_, rows_ = args
            kinds = signature.args
            out_data, w_data, x_data, offsets_data = e.data(kinds[0], out_), e.data(kinds[3], w_), e.data(kinds[7], x_), e.data(kinds[9], offsets_)
            starts = [at for row in e.at(out_at_, out_pitch_, block_rows) for at in e.at(row, e.constant(e.lanes), vectors)]
            acc = e.accumulators(out_data, starts)
            sums(e, acc, w_data, w_at_, w_pitch_, w_step_, x_data, x_at_, offsets_data, rows_)
            e.store_all(acc, out_data, starts)
            return context.get_dummy_value()

        return sig, codegen

    def packed_block_sums(typingctx, out, out_at, out_pitch, out_rows, packing, stores, w, w_at, w_pitch, w_step, x, x_at, offsets, rows):
        sig = types.void(out, out_at, out_pitch, out_rows, packing, stores, w, w_at, w_pitch, w_step, x, x_at, offsets, rows)

        def codegen(context, builder, signature, args):
            e = Emitter(context, builder, signature, args)
            out_, out_at_, out_pitch_, out_rows_, packing_, stores_, w_, w_at_, w_pitch_, w_step_, x_, x_at_, offsets_, rows_ = args
            kinds = signature.args
            out_data, packing_data = e.data(kinds[0], out_), e.data(kinds[4], packing_)
            w_data, x_data, offsets_data = e.data(kinds[6], w_), e.data(kinds[10], x_), e.data(kinds[12], offsets_)
            acc = [cgutils.alloca_once_value(builder, ir.Constant(e.vector, [0.0] * e.lanes)) for _ in range(block_rows * vectors)]
            sums(e, acc, w_data, w_at_, w_pitch_, w_step_, x_data, x_at_, offsets_data, rows_)
            for i, row in enumerate(e.at(out_at_, out_pitch_, block_rows)):
                with cgutils.if_likely(builder, builder.icmp_signed("<", e.constant(i), out_rows_)):
                    for v in range(vectors):
                        value = builder.load(acc[i * vectors + v])
                        with cgutils.for_range(builder, stores_) as loop:
                            at = builder.mul(builder.add(builder.mul(e.constant(v), stores_), loop.index), e.constant(2))
                            start = builder.load(builder.gep(packing_data, [at]))
                            mask = builder.load(builder.gep(packing_data, [builder.add(at, e.constant(1))]))
                            e.masked_store(value, out_data, builder.add(row, start), mask)
            return context.get_dummy_value()

        return sig, codegen

    return intrinsic(packed_block_sums if packed else block_sums)


block_sums = _block_sums(BLOCK)
narrow_block_sums = _block_sums(NARROW_BLOCK)
thin_block_sums = _block_sums(THIN_BLOCK)
tall_block_sums = _block_sums(TALL_BLOCK) if TALL_BLOCK else block_sums
packed_block_sums = _block_sums(BLOCK, packed=True)
narrow_packed_block_sums = _block_sums(NARROW_BLOCK, packed=True)
thin_packed_block_sums = _block_sums(THIN_BLOCK, packed=True)
tall_packed_block_sums = _block_sums(TALL_BLOCK, packed=True) if TALL_BLOCK else packed_block_sums


@serial(inline=True)
def sums_of_block(block_rows, out, out_at, out_pitch, w, w_at, w_pitch, w_step, x, x_at, offsets, rows):
    """block_sums, or narrow_block_sums, thin_block_sums or tall_block_sums for
    blocks of their rows."""
    if block_rows == TALL_ROWS:
        tall_block_sums(out, out_at, out_pitch, w, w_at, w_pitch, w_step, x, x_at, offsets, rows)
    elif block_rows == THIN_ROWS:
        thin_block_sums(out, out_at, out_pitch, w, w_at, w_pitch, w_step, x, x_at, offsets, rows)
    elif block_rows == NARROW_ROWS:
        narrow_block_sums(out, out_at, out_pitch, w, w_at, w_pitch, w_step, x, x_at, offsets, rows)
    else:
        block_sums(out, out_at, out_pitch, w, w_at, w_pitch, w_step, x, x_at, offsets, rows)


@serial(inline=True)
def packed_sums_of_block(block_rows, out, out_at, out_pitch, out_rows, packing, stores, w, w_at, w_pitch, w_step, x, x_at, offsets, rows):
    """packed_block_sums, or narrow_packed_block_sums, thin_packed_block_sums or
    tall_packed_block_sums for blocks of their rows."""
    if block_rows == TALL_ROWS:
        tall_packed_block_sums(out, out_at, out_pitch, out_rows, packing, stores, w, w_at, w_pitch, w_step, x, x_at, offsets, rows)
    elif block_rows == THIN_ROWS:
        thin_packed_block_sums(out, out_at, out_pitch, out_rows, packing, stores, w, w_at, w_pitch, w_step, x, x_at, offsets, rows)
    elif block_rows == NARROW_ROWS:
        narrow_packed_block_sums(out, out_at, out_pitch, out_rows, packing, stores, w, w_at, w_pitch, w_step, x, x_at, offsets, rows)
    else:
        packed_block_sums(out, out_at, out_pitch, out_rows, packing, stores, w, w_at, w_pitch, w_step, x, x_at, offsets, rows)


@intrinsic
def block_dots(typingctx, out, out_at, out_pitch, a, a_at, a_pitch, a_step, x, x_at, x_step, offsets, cells, samples):
    """out[out_at + i*out_pitch + j] += the sum over s < samples and l < cells of
    a[a_at + s*a_step + i*a_pitch + l] * x[x_at + s*x_step + offsets[j] + l], for
    (i, j) < DOTS: DOTS[0] x DOTS[1] dot products, `cells` a multiple of a vector's lanes.
    Each sum lane by lane in order, then its lanes added pairwise (a fixed order)."""
    sig = types.void(out, out_at, out_pitch, a, a_at, a_pitch, a_step, x, x_at, x_step, offsets, cells, samples)

    def codegen(context, builder, signature, args):
        e = Emitter(context, builder, signature, args)
        out_, out_at_, out_pitch_, a_, a_at_, a_pitch_, a_step_, x_, x_at_, x_step_, offsets_, cells_, samples_ = args
        kinds = signature.args
        out_data, a_data, x_data, offsets_data = e.data(kinds[0], out_), e.data(kinds[3], a_), e.data(kinds[7], x_), e.data(kinds[10], offsets_)
        a_rows_, x_rows_ = DOTS
        acc = [cgutils.alloca_once_value(builder, ir.Constant(e.vector, [0.0] * e.lanes)) for _ in range(a_rows_ * x_rows_)]
        steps = builder.udiv(cells_, e.constant(e.lanes))
        with cgutils.for_range(builder, samples_) as sample:
            a_rows = e.at(builder.add(a_at_, builder.mul(sample.index, a_step_)), a_pitch_, a_rows_)
            x_sample = builder.add(x_at_, builder.mul(sample.index, x_step_))
            x_rows = [builder.add(x_sample, builder.load(builder.gep(offsets_data, [e.constant(j)]))) for j in range(x_rows_)]
            with cgutils.for_range(builder, steps) as loop:
                q = builder.mul(loop.index, e.constant(e.lanes))
                left = [e.load(a_data, builder.add(row, q)) for row in a_rows]
                for j, row in enumerate(x_rows):
                    right = e.load(x_data, builder.add(row, q))
                    for i in range(a_rows_):
                        e.fma(left[i], right, acc[i * x_rows_ + j])
        sums = e.lane_sums([builder.load(slot) for slot in acc])
        for i, row in enumerate(e.at(out_at_, out_pitch_, a_rows_)):
            # row i's sums, in the lanes of one vector or two
            j = 0
            while j < x_rows_:
                vector, lane = divmod(i * x_rows_ + j, e.lanes)
                count = min(x_rows_ - j, e.lanes - lane)
                e.add_lanes(out_data, builder.add(row, e.constant(j)), sums[vector], lane, count)
                j += count
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def transpose_square(typingctx, src, src_at, src_pitch, rows, cells, dst, dst_at, dst_shift):
    """dst[dst_at[c] + dst_shift + i] = src[src_at + i*src_pitch + c] for c < cells and
    i < rows (rows and cells at most a vector's lanes): a square of lanes x lanes
    cells transposed in registers (transposed), its rows past `rows` and columns
    past `cells` neither read nor written. The arrays flat and contiguous, of one
    dtype; dst_at int64, lanes of them."""
    sig = types.void(src, src_at, src_pitch, rows, cells, dst, dst_at, dst_shift)

    def codegen(context, builder, signature, args):
        e = Emitter(context, builder, signature, args)
        src_, src_at_, src_pitch_, rows_, cells_, dst_, dst_at_, dst_shift_ = args
        kinds = signature.args
        src_data, dst_data, dst_at_data = e.data(kinds[0], src_), e.data(kinds[5], dst_), e.data(kinds[6], dst_at_)
        columns = builder.sub(builder.shl(e.constant(1), cells_), e.constant(1))
        rows = builder.sub(builder.shl(e.constant(1), rows_), e.constant(1))
        loaded = []
        for i, at in enumerate(e.at(src_at_, src_pitch_, e.lanes)):
            mask = builder.select(builder.icmp_signed("<", e.constant(i), rows_), columns, e.constant(0))
            loaded.append(e.masked_load(src_data, at, mask))
        for c, column in enumerate(e.transposed(loaded)):
            with cgutils.if_likely(builder, builder.icmp_signed("<", e.constant(c), cells_)):
                e.masked_store(column, dst_data, builder.add(builder.load(builder.gep(dst_at_data, [e.constant(c)])), dst_shift_), rows)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def spread_store(typingctx, src, src_at, count, dst, dst_at):
    """dst[dst_at + 2k] = src[src_at + k] for k < count, the cells between not
    written: a vector of src spread over two by shuffles, each stored to every
    other cell by a masked store (where a store a cell took 15-35% of a stride-2
    input gradient). The arrays flat and contiguous, of one dtype."""
    sig = types.void(src, src_at, count, dst, dst_at)

    def codegen(context, builder, signature, args):
        e = Emitter(context, builder, signature, args)
        src_, src_at_, count_, dst_, dst_at_ = args
        src_data, dst_data = e.data(signature.args[0], src_), e.data(signature.args[3], dst_)
        lanes, b = e.lanes, builder
        mask = ir.VectorType(ir.IntType(32), lanes)
        even = e.constant(sum(1 << (2 * i) for i in range(lanes // 2)))

        def first(n, width):
            # bits of the first n lanes of `width` (n clamped to 0..width)
            n = b.select(b.icmp_signed("<", n, e.constant(0)), e.constant(0), b.select(b.icmp_signed(">", n, e.constant(width)), e.constant(width), n))
            return b.sub(b.shl(e.constant(1), n), e.constant(1))

        with cgutils.for_range(b, b.udiv(b.add(count_, e.constant(lanes - 1)), e.constant(lanes))) as loop:
            k0 = b.mul(loop.index, e.constant(lanes))
            left = b.sub(count_, k0)
            value = e.masked_load(src_data, b.add(src_at_, k0), first(left, lanes))
            for half in range(2):
                spread = b.shuffle_vector(value, value, ir.Constant(mask, [half * lanes // 2 + i // 2 for i in range(lanes)]))
                # lane 2i holds value's lane half * lanes/2 + i, stored for the
                # cells left: the even lanes below twice their count
                bits = b.and_(even, first(b.mul(b.sub(left, e.constant(half * lanes // 2)), e.constant(2)), lanes))
                e.masked_store(spread, dst_data, b.add(dst_at_, b.mul(b.add(k0, e.constant(half * lanes // 2)), e.constant(2))), bits)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def copy_lanes(typingctx, src, src_at, count, dst, dst_at):
    """dst[dst_at + l] = src[src_at + l] for l < count, count at most a vector's
    lanes: one masked load and one masked store, nothing past count read or
    written. The arrays flat and contiguous, of one dtype."""
    sig = types.void(src, src_at, count, dst, dst_at)

    def codegen(context, builder, signature, args):
        e = Emitter(context, builder, signature, args)
        src_, src_at_, count_, dst_, dst_at_ = args
        src_data, dst_data = e.data(signature.args[0], src_), e.data(signature.args[3], dst_)
        lanes = e.lanes_between(e.constant(0), count_)
        e.masked_store(e.masked_load(src_data, src_at_, lanes), dst_data, dst_at_, lanes)
        return context.get_dummy_value()

    return sig, codegen


def _channel_sums(vectors):
    """The intrinsic channel_sums(out, out_at, out_pitch, x, x_at, offsets, gt,
    gt_at, gt_pitch, cells, segments, x_segment) for blocks of ROWS =
    CHANNEL_ACCUMULATORS // vectors rows by `vectors` vectors:
    out[out_at + i*out_pitch + l] += the sum over s < segments and q < cells of
    x[x_at + offsets[i] + s*x_segment + q] * gt[gt_at + (s*cells + q)*gt_pitch + l],
    for i < ROWS and l below vectors * lanes (the arrays flat and contiguous, of
    one dtype, the integers int64): segments of `cells` cells, x_segment apart in
    x (the output rows of the wide layout) and side by side in gt. Each step loads
    the vectors of one row of gt (a cell's output channels) and broadcasts one cell
    of each row of x: the weight gradient with its sums along the output channels,
    no lanes to add at the end. The terms in order of s, q, each a fused
    multiply-add."""
    rows = CHANNEL_ACCUMULATORS // vectors

    def channel_sums(typingctx, out, out_at, out_pitch, x, x_at, offsets, gt, gt_at, gt_pitch, cells, segments, x_segment):
        sig = types.void(out, out_at, out_pitch, x, x_at, offsets, gt, gt_at, gt_pitch, cells, segments, x_segment)

        def codegen(context, builder, signature, args):
            e = Emitter(context, builder, signature, args)
            out_, out_at_, out_pitch_, x_, x_at_, offsets_, gt_, gt_at_, gt_pitch_, cells_, segments_, x_segment_ = args
            kinds = signature.args
            out_data, x_data, offsets_data, gt_data = e.data(kinds[0], out_), e.data(kinds[3], x_), e.data(kinds[5], offsets_), e.data(kinds[6], gt_)
            starts = [at for row in e.at(out_at_, out_pitch_, rows) for at in e.at(row, e.constant(e.lanes), vectors)]
            acc = e.accumulators(out_data, starts)
            with cgutils.for_range(builder, segments_) as segment:
                x_start = builder.add(x_at_, builder.mul(segment.index, x_segment_))
                x_rows = [builder.add(x_start, builder.load(builder.gep(offsets_data, [e.constant(i)]))) for i in range(rows)]
                gt_start = builder.add(gt_at_, builder.mul(builder.mul(segment.index, cells_), gt_pitch_))
                with cgutils.for_range(builder, cells_) as loop:
                    q = loop.index
                    channels = [e.load(gt_data, at) for at in e.at(builder.add(gt_start, builder.mul(q, gt_pitch_)), e.constant(e.lanes), vectors)]
                    for i in range(rows):
                        cell = e.broadcast(x_data, builder.add(x_rows[i], q))
                        for v in range(vectors):
                            e.fma(cell, channels[v], acc[i * vectors + v])
            e.store_all(acc, out_data, starts)
            return context.get_dummy_value()

        return sig, codegen

    return intrinsic(channel_sums)


channel_sums1, channel_sums2, channel_sums3, channel_sums4 = (_channel_sums(v) for v in range(1, 5))


@serial(inline=True)
def channel_sums_of_block(vectors, out, out_at, out_pitch, x, x_at, offsets, gt, gt_at, gt_pitch, cells, segments, x_segment):
    """channel_sums of a block of `vectors` vectors of channels (1 to 4)."""
    if vectors == 1:
        channel_sums1(out, out_at, out_pitch, x, x_at, offsets, gt, gt_at, gt_pitch, cells, segments, x_segment)
    elif vectors == 2:
        channel_sums2(out, out_at, out_pitch, x, x_at, offsets, gt, gt_at, gt_pitch, cells, segments, x_segment)
    elif vectors == 3:
        channel_sums3(out, out_at, out_pitch, x, x_at, offsets, gt, gt_at, gt_pitch, cells, segments, x_segment)
    else:
        channel_sums4(out, out_at, out_pitch, x, x_at, offsets, gt, gt_at, gt_pitch, cells, segments, x_segment)


@parallel
def forward_blocks(x, w, kp, offsets, out, phased, packings, stores, top, left, sh, sw, hq, wq, span, runs_of, block_rows, block_cells, blocks, block_parts, sweep):
    """out (N, K, oh, ow) = the convolution of x (N, C, H, W) with w
    (_block_weights: groups, Kp, R): group g's outputs (Kp rows, the channels past
    K/groups zero) from its C/groups input channels, row r of its sum from
    offsets[r] over the run's split planes (as in the module's docstring). The work
    is runs x block_parts units, each a range of one run's (group, sweep of
    `sweep` channel blocks, block of cells, channel block) in that order
    (block_of_task), and each worker (one per thread) splits its units'
    runs into its own scratch phased[worker] (C, span; zeros on entry), planes of
    the groups it computes only: the run's input stays in its cache for the sums,
    where a split of the whole batch first was written to memory and read back. A
    block's input cells stay in cache across its channel blocks, and its sums go
    straight into the output by the masked stores of packings[last run or not, b]
    (_packings), `stores` a vector."""
    n_, k_, oh, ow = out.shape
    c_ = x.shape[1]
    flat_out = out.reshape(out.size)
    rows = offsets.shape[0]
    groups = w.shape[0] // (kp * rows)
    kg, cg = k_ // groups, c_ // groups
    kbs = kp // block_rows
    per_run = groups * blocks * kbs
    workers, units = phased.shape[0], -(-n_ // runs_of) * block_parts
    for worker in prange(workers):
        own, last = phased[worker], (-1, 0, 0)
        flat_x = own.reshape(own.size)
        for unit in range(*share(worker, workers, units)):
            run_, t0, t1, last = placed_unit(x, own, unit, block_parts, per_run, blocks * kbs, cg, last, top, left, sh, sw, hq, wq, runs_of)
            for t in range(t0, t1):
                g = t // (blocks * kbs)
                b, kb = block_of_task(t % (blocks * kbs), blocks, kbs, sweep)
                first = b * block_cells
                k0 = kb * block_rows
                at = (run_ * runs_of * k_ + g * kg + k0) * oh * ow
                packing = packings[1 if (run_ + 1) * runs_of > n_ else 0, b]
                packed_sums_of_block(block_rows, flat_out, at, oh * ow, kg - k0, packing, stores, w, (g * kp + k0) * rows, 1, block_rows, flat_x, g * cg * span + first, offsets, rows)


@serial
def pack_cells(packing, stores, first, oh, ow, wq, runs_of, present, sample_cells, block_cells):
    """packing (packed_block_sums') for the block of block_cells wide-layout cells
    from `first` of a run of samples, its first `present` samples in the batch
    (sample_cells apart in the output): the runs of each vector's lanes that are
    outputs (column below ow, row below oh) side by side, each as the first's
    output less its lane and a mask of the run's lanes; `stores` a vector, the
    unused ones empty. A vector of lanes meets at most (lanes - 2) // wq + 2 rows
    of the layout, each one run."""
    vectors = packing.shape[0] // (2 * stores)
    lanes = block_cells // vectors
    packing[:] = 0
    for v in range(vectors):
        at, base = 2 * v * stores - 2, -1
        for lane in range(lanes):
            cell = first + v * lanes + lane
            y, xo = cell // wq, cell % wq
            if xo >= ow or y // runs_of >= oh or y % runs_of >= present:
                continue
            output = y % runs_of * sample_cells + y // runs_of * ow + xo
            if at < 2 * v * stores or output - lane != base:
                at, base = at + 2, output - lane
                packing[at] = base
            packing[at + 1] |= 1 << lane


@serial
def pack_blocks(packings, stores, oh, ow, wq, runs_of, present, sample_cells, block_cells):
    """packings[b] = pack_cells of block b, for every block of a run."""
    for b in range(packings.shape[0]):
        pack_cells(packings[b], stores, b * block_cells, oh, ow, wq, runs_of, present, sample_cells, block_cells)


@serial(inline=True)
def placed_unit(planes, own, unit, block_parts, per_run, per_group, channels, last, top, left, sh, sw, hq, wq, runs_of):
    """(run, t0, t1, placed) of a worker's unit of runs x block_parts: tasks t0..t1-1
    of the run's per_run (per_group a group, of `channels` planes each), own (C,
    span) holding the planes of the tasks' groups, placed by place_run unless
    `last` (run, first plane, end plane: what own holds) has them."""
    run_, part = unit // block_parts, unit % block_parts
    t0, t1 = per_run * part // block_parts, per_run * (part + 1) // block_parts
    c0, c1 = t0 // per_group * channels, -(-t1 // per_group) * channels
    if t0 < t1 and (run_ != last[0] or c0 < last[1] or c1 > last[2]):
        place_run(planes, own, run_, c0, c1, top, left, sh, sw, hq, wq, runs_of)
        last = (run_, c0, c1)
    return run_, t0, t1, last


@serial(inline=True)
def block_of_task(task, blocks, kbs, sweep):
    """(block of cells, channel block) of task < blocks * kbs, the channel blocks in
    sweeps of `sweep` (the last one the rest), each sweep every block in turn."""
    k0 = task // (blocks * sweep) * sweep
    size = min(sweep, kbs - k0)
    within = task - k0 * blocks
    return within // size, k0 + within % size


def _sweep(block_rows, rows, dtype):
    """Channel blocks a sweep (SWEEP_BYTES), for blocks of block_rows by `rows` weights."""
    return max(1, SWEEP_BYTES // (block_rows * rows * np.dtype(dtype).itemsize))


@serial(inline=True)
def share(worker, workers, units):
    """(first, end): worker's units of `units` shared evenly between `workers`."""
    return units * worker // workers, units * (worker + 1) // workers


@serial(inline=True)
def unit_blocks(unit, block_parts, blocks):
    """(part, b0, b1) of a weight gradient's unit of parts x block_parts: blocks
    b0..b1-1 of part `part`, one at least (_block_parts makes no more pieces than
    blocks)."""
    part, piece = unit // block_parts, unit % block_parts
    return part, blocks * piece // block_parts, blocks * (piece + 1) // block_parts


@parallel
def weight_blocks(x, grad_output, offsets, dots, phased, wide, taps, top, left, sh, sw, hq, wq, span, length, runs_of, cells, samples, block_parts):
    """dots (parts, groups, Kp, Rp), zeros on entry, += block_dots of each group's
    output channels, DOTS[0] at a time, against its rows of the sum (offsets, padded
    to whole blocks of DOTS[1]): dots[p] over the runs of samples of part p only,
    the parts' runs fixed by their count (whatever the thread count, each sum in
    the same order). Each worker (one per thread) splits the runs it sums over
    itself, `samples` runs a step, into its scratch: x's planes into phased[worker]
    (samples, C, span: split_planes' layout) and grad_output's into
    wide[worker] (samples*K + DOTS[0], length: widen_planes'), both zeros on entry
    (only the planes' cells are written, so the padding stays zero; the extra rows
    are read past the last channel block). A step's data stays in the worker's
    cache for its blocks, where a split of the whole batch first was written out
    to memory and read back (res3x3's weight gradient 20% faster). The work is
    parts x block_parts units, each a range of the blocks over one part's runs;
    the runs of a step are summed `cells` cells at a time, the input rows of a row
    block in L1 across its channel blocks."""
    n_, c_, k_ = x.shape[0], x.shape[1], grad_output.shape[1]
    sample_parts, groups, kp, rp = dots.shape
    cg, kg = c_ // groups, k_ // groups
    kd, rd = DOTS
    kbs, rbs = kp // kd, rp // rd
    blocks = groups * rbs * kbs
    runs = -(-n_ // runs_of)
    steps = -(-runs // samples)
    workers = phased.shape[0]
    units = sample_parts * block_parts
    for worker in prange(workers):
        own_x, own_wide = phased[worker], wide[worker]
        flat_x, flat_wide = own_x.reshape(own_x.size), own_wide.reshape(own_wide.size)
        for unit in range(*share(worker, workers, units)):
            part, b0, b1 = unit_blocks(unit, block_parts, blocks)
            flat_dots = dots[part].reshape(dots[part].size)
            for step in range(steps * part // sample_parts, steps * (part + 1) // sample_parts):
                in_step = min(samples, runs - step * samples)
                for s in range(in_step):
                    split_run(x, grad_output, own_x[s], own_wide[s * k_ : (s + 1) * k_], step * samples + s, b0, b1, cg, kg, taps, top, left, sh, sw, hq, wq, runs_of, rbs, kbs, rd)
                for q0 in range(0, length, cells):
                    for blk in range(b0, b1):
                        g, rb, kb = blk // (rbs * kbs), blk // kbs % rbs, blk % kbs
                        block_dots(
                            flat_dots, (g * kp + kb * kd) * rp + rb * rd, rp,
                            flat_wide, (g * kg + kb * kd) * length + q0, length, k_ * length,
                            flat_x, g * cg * span + q0, c_ * span,
                            offsets[rb * rd :], min(cells, length - q0), in_step,
                        )  # fmt: skip


@serial
def split_run(x, grad_output, phased, wide, r, b0, b1, cg, kg, taps, top, left, sh, sw, hq, wq, runs_of, rbs, kbs, rd):
    """weight_blocks' split of run r for its blocks b0..b1-1 (rbs row blocks of kbs
    channel blocks a group): phased (C, span) = the phases of the input planes the
    blocks' rows read (rows c*taps to (c+1)*taps - 1 of a group's sum read its
    plane c), wide (K, length) = every grad_output plane of their groups. Units
    sharing a run's blocks split their own input planes only: a cell's split costs
    more than its widening. The cells outside the planes keep their zeros; a run
    with fewer than runs_of samples is zeroed first (place_run, widen_run)."""
    per_group = rbs * kbs
    for g in range(b0 // per_group, -(-b1 // per_group)):
        first, last = max(b0 - g * per_group, 0) // kbs, (min(b1 - g * per_group, per_group) - 1) // kbs
        place_run(x, phased, r, g * cg + first * rd // taps, g * cg + min(cg, -(-(last + 1) * rd // taps)), top, left, sh, sw, hq, wq, runs_of)
        widen_run(grad_output, wide, r, g * kg, (g + 1) * kg, 0, wq, runs_of)


@parallel
def channel_blocks(x, grad_output, offsets, sums, phased, transposed, taps, top, left, sh, sw, hq, wq, span, runs_of, vectors, chunk, block_parts):
    """sums (parts, groups, Rp, Kp) = channel_sums of each group's rows of the sum
    (offsets, padded to whole blocks) against its output channels, each unit's rows
    zeroed by it first (no zeroing of the whole array before the call),
    `vectors` vectors at a time: sums[p] over the runs of samples of part p only, the
    parts' runs fixed by their count (whatever the thread count, each sum in the same
    order). Each worker (one per thread) splits each run it sums over itself into its
    scratch: x's planes into phased[worker] (C, span: split_planes' layout) and
    grad_output's transposed into transposed[worker] (groups, cells, Kp:
    transpose_run; its output cells only, where the wide layout's rows run on past
    them), both zeros on entry. The work is parts x block_parts units, each a range
    of the row blocks (of every group, in order) over one part's runs, every channel
    block of them; each run `chunk` output rows at a time, grad_output's chunk in
    L2 across the row blocks, a row block's input rows across its channel blocks."""
    n_, c_, oh, ow = x.shape[0], x.shape[1], grad_output.shape[2], grad_output.shape[3]
    cells = oh * runs_of * ow
    sample_parts, groups, rp, kp = sums.shape
    cg = c_ // groups
    width = vectors * (VECTOR_BYTES // x.itemsize)
    rows = CHANNEL_ACCUMULATORS // vectors
    kbs, rbs = kp // width, rp // rows
    runs = -(-n_ // runs_of)
    workers = phased.shape[0]
    units = sample_parts * block_parts
    for worker in prange(workers):
        own_x, own_t = phased[worker], transposed[worker]
        flat_x, flat_t = own_x.reshape(own_x.size), own_t.reshape(own_t.size)
        for unit in range(*share(worker, workers, units)):
            part, b0, b1 = unit_blocks(unit, block_parts, groups * rbs)
            for blk in range(b0, b1):
                sums[part, blk // rbs, blk % rbs * rows : (blk % rbs + 1) * rows] = 0.0
            flat_sums = sums[part].reshape(sums[part].size)
            for r in range(runs * part // sample_parts, runs * (part + 1) // sample_parts):
                transpose_split_run(x, grad_output, own_x, own_t, r, b0, b1, cg, taps, top, left, sh, sw, hq, wq, runs_of, rbs, rows)
                for y0 in range(0, oh * runs_of, chunk):
                    for blk in range(b0, b1):
                        for kb in range(kbs):
                            g, rb = blk // rbs, blk % rbs
                            channel_sums_of_block(
                                vectors, flat_sums, (g * rp + rb * rows) * kp + kb * width, kp,
                                flat_x, g * cg * span + y0 * wq, offsets[rb * rows :],
                                flat_t, (g * cells + y0 * ow) * kp + kb * width, kp, ow, min(chunk, oh * runs_of - y0), wq,
                            )  # fmt: skip


@parallel
def transpose_sums(sums, out):
    """out (K, R) = each group's sums (groups, Rp, Kp) transposed, its first R rows
    and K/groups channels, a square of lanes x lanes at a time (transpose_square)."""
    groups, rp, kp = sums.shape
    k_, rows = out.shape
    kg, lanes = k_ // groups, VECTOR_BYTES // sums.itemsize
    flat_sums, flat_out = sums.reshape(sums.size), out.reshape(out.size)
    row_blocks = -(-rows // lanes)
    for t in prange(groups * row_blocks):
        g, r0 = t // row_blocks, t % row_blocks * lanes
        channel_at = np.empty(lanes, dtype=np.int64)
        for k0 in range(0, kg, lanes):
            for c in range(min(lanes, kg - k0)):
                channel_at[c] = (g * kg + k0 + c) * rows + r0
            transpose_square(flat_sums, (g * rp + r0) * kp + k0, kp, min(lanes, rows - r0), min(lanes, kg - k0), flat_out, channel_at, 0)


@serial
def transpose_split_run(x, grad_output, phased, transposed, r, b0, b1, cg, taps, top, left, sh, sw, hq, wq, runs_of, rbs, rows):
    """channel_blocks' split of run r for its row blocks b0..b1-1 (rbs a group):
    phased (C, span) = the phases of the input planes their rows read, transposed
    (groups, cells, Kp) = the grad_output channels of their groups
    (transpose_run). The cells outside the planes keep their zeros; a run with
    fewer than runs_of samples is zeroed first."""
    kg = grad_output.shape[1] * cg // x.shape[1]
    for g in range(b0 // rbs, -(-b1 // rbs)):
        first, last = max(b0 - g * rbs, 0), min(b1 - g * rbs, rbs) - 1
        place_run(x, phased, r, g * cg + first * rows // taps, g * cg + min(cg, -(-(last + 1) * rows // taps)), top, left, sh, sw, hq, wq, runs_of)
        transpose_run(grad_output, transposed[g], r, g * kg, (g + 1) * kg, runs_of)


@serial(inline=True)
def transpose_run(grad_output, dst, r, k0, k1, runs_of):
    """dst[(y*runs_of + j)*ow + x, k - k0] = grad_output[n, k, y, x] of run r (its
    sample j is n = r*runs_of + j), for k0 <= k < k1: a run's planes of channels
    k0..k1-1, their rows interleaved as in the wide layout, with each cell's
    channels side by side. The other columns of dst keep their values; a run with
    fewer than runs_of samples is zeroed first."""
    n_, k_, oh, ow = grad_output.shape
    lanes = VECTOR_BYTES // grad_output.itemsize
    present = min(runs_of, n_ - r * runs_of)
    if present < runs_of:
        dst[:] = 0.0
    flat_src, flat_dst = grad_output.reshape(grad_output.size), dst.reshape(dst.size)
    kp = dst.shape[1]
    cell_at = np.empty(lanes, dtype=np.int64)
    # squares of lanes channels by lanes cells of a plane (its rows run on)
    for j in range(present):
        sample = (r * runs_of + j) * k_ * oh * ow
        y, xo = 0, 0
        for p0 in range(0, oh * ow, lanes):
            cells = min(lanes, oh * ow - p0)
            # cell p0 + c is (y, xo), counted on (with two divisions a cell,
            # x_convT3's weight gradient 4% slower)
            for c in range(cells):
                cell_at[c] = ((y * runs_of + j) * ow + xo) * kp
                xo += 1
                if xo == ow:
                    y, xo = y + 1, 0
            for k in range(k0, k1, lanes):
                transpose_square(flat_src, sample + k * oh * ow + p0, oh * ow, min(lanes, k1 - k), cells, flat_dst, cell_at, k - k0)


def _even_runs(n, want):
    """Samples a run for a batch of n, near `want` (from half to twice it): the
    fewest places left empty past the batch, then the closest to `want`. (Runs of
    3 for 16 samples computed two empty samples: a 28x28 stride-2 layer's weight
    gradient 20% slower than in runs of 4.)"""
    candidates = range(max(1, min(n, -(-want // 2))), min(n, 2 * want) + 1)
    return min(candidates, key=lambda r: (-(-n // r) * r - n, abs(r - want), -r))


def _region(g, a, b, hq, wq):
    """(Y0, X0, rows, columns) of the cells of phase (a, b) inside the input: input
    cell (a + sh*Y - pt, b + sw*X - pl)."""
    y0, x0 = max(0, -(-(g.pt - a) // g.sh)), max(0, -(-(g.pl - b) // g.sw))
    y1, x1 = min(hq, (g.h - 1 + g.pt - a) // g.sh + 1), min(wq, (g.w - 1 + g.pl - b) // g.sw + 1)
    return y0, x0, max(0, y1 - y0), max(0, x1 - x0)


def layout_shape(g):
    """(hq, wq) of the phases the blocked sums read: phase_shape's, with rows only as
    wide as they must be. A read past the end of a row lands in the next row's first
    columns, zeros wherever every phase's rows begin in the left padding, so the
    rows need hold only the input's columns, the outputs, and each output's reach
    less those zeros (res3x3's rows 33 cells where 34 were, x_dilated3's 33 where
    36, x_conv5_s2's 21 where 22)."""
    hq, wq = phase_shape(g)
    reach = (g.kw - 1) * g.dw // g.sw
    columns = [_region(g, 0, b, hq, wq)[1::2] for b in range(g.sw)]
    zeros = min(x0 for x0, width in columns)
    last = max(x0 + width for x0, width in columns)
    return hq, max(g.ow, last, g.ow + reach - zeros)


@functools.lru_cache(maxsize=256)
def forward_runs_of(g, dtype):
    """Samples a run for the forward of geometry g (FOLD_WASTE)."""
    hq, wq = layout_shape(g)
    return _fewest_runs(g.n, block_shape(dtype, g.c_out // g.groups)[1], wq, np.array([g.oh]), np.array([g.ow]))


def _fewest_runs(n, cells, pitch, heights, widths):
    """The fewest samples a run (_even_runs) whose blocks of `cells` leave at most
    FOLD_WASTE of their cells empty, over planes of heights x widths cells in rows of
    `pitch` (the longest plane's blocks)."""
    for want in range(1, n + 1):
        runs_of = _even_runs(n, want)
        length = int(((heights * runs_of - 1) * pitch + widths).max())
        if -length % cells <= FOLD_WASTE * (length + -length % cells):
            return runs_of
    return n


@functools.lru_cache(maxsize=256)
def weight_runs_of(g):
    """Samples a run for the weight gradient of geometry g (FOLD_CELLS)."""
    hq, wq = layout_shape(g)
    return _even_runs(g.n, min(g.n, -(-FOLD_CELLS // (g.oh * wq))))


class _Plan:
    """Phase shape, samples a run (runs_of) and runs, the sum's row offsets, the
    block count per run and each run's span of geometry g in dtype: phase p's row y
    of a run's sample j from p*runs_of*hq*wq + (y*runs_of + j)*wq (split_planes)."""

    def __init__(self, g, dtype, runs_of):
        self.hq, self.wq = layout_shape(g)
        self.runs_of, self.runs = runs_of, -(-g.n // runs_of)
        cg = g.c_in // g.groups
        taps = [(i, j) for i in range(g.kh) for j in range(g.kw)]
        starts = tap_starts(g, taps, self.hq, self.runs_of * self.wq, self.runs_of * self.hq * self.wq)
        length = (g.oh * self.runs_of - 1) * self.wq + g.ow
        self.block_rows, self.block_cells = run_block_shape(dtype, g.c_out // g.groups, length)
        self.blocks = -(-length // self.block_cells)
        self.span = max(g.sh * g.sw * self.runs_of * self.hq * self.wq, int(starts.max()) + self.blocks * self.block_cells)
        self.offsets = (np.arange(cg, dtype=np.int64)[:, None] * self.span + starts[None, :]).reshape(-1)
        lanes = VECTOR_BYTES // np.dtype(dtype).itemsize
        self.wide_length = -(-length // lanes) * lanes
        # weight_blocks' rows of the sum in whole blocks, the extra ones reading row 0
        self.dot_offsets = np.concatenate([self.offsets, np.zeros(-len(self.offsets) % DOTS[1], dtype=np.int64)])
        # the last block of a group reads at most its last channel's whole span
        if int(self.offsets.max()) + self.blocks * self.block_cells > cg * self.span:
            raise AssertionError("blocked convolution plan reads past its group's input")


@functools.lru_cache(maxsize=256)
def _plan(g, dtype, runs_of):
    return _Plan(g, dtype, runs_of)


def forward_cell_fill(g, dtype):
    """The share of the forward's blocks of cells (in dtype) that hold outputs."""
    plan = _plan(g, dtype, forward_runs_of(g, dtype))
    return g.oh * g.ow * plan.runs_of / (plan.blocks * plan.block_cells)


# Scratch kept between calls, per Python thread: the split and transposed planes
# of a geometry's last calls, and its interleaved weights. The kernels write only
# the cells of the planes, and the same cells at every call of a geometry, so its
# padding keeps the zeros it was made with (the weights are written whole); fresh
# memory instead faulted its pages in at each call (2-10% of a weight gradient:
# x_convT3's 0.70 -> 0.63 ms, decoder_up's 3.28 -> 3.08; a 512-channel layer's
# weights interleaved 20% faster). At most SCRATCH_BYTES a thread, the least
# recently used dropped first.
SCRATCH_BYTES = 64 << 20
_scratch = threading.local()


def _kept(key, make):
    """make()'s array for key (a geometry's and the use's), made at the first call
    from this Python thread and kept for the next ones."""
    kept = getattr(_scratch, "arrays", None)
    if kept is None:
        kept = _scratch.arrays = collections.OrderedDict()
    if key in kept:
        kept.move_to_end(key)
        return kept[key]
    kept[key] = array = make()
    while len(kept) > 1 and sum(a.nbytes for a in kept.values()) > SCRATCH_BYTES:
        kept.popitem(last=False)
    return array


def _kept_empty(key, shape, dtype):
    """_kept memory of shape on a VECTOR_BYTES boundary (_aligned_empty), holding
    what the last call left: for arrays a kernel writes whole."""
    return _kept((key, tuple(shape), np.dtype(dtype)), lambda: _aligned_empty(shape, dtype))


def _kept_zeros(key, shape, dtype):
    """_kept zeros of shape on a VECTOR_BYTES boundary (_aligned_empty)."""

    def make():
        array = _aligned_empty(shape, dtype)
        array[...] = 0.0
        return array

    return _kept((key, tuple(shape), np.dtype(dtype)), make)


def _aligned_empty(shape, dtype):
    """np.empty(shape, dtype) starting on a VECTOR_BYTES boundary: rows of whole
    vectors are then loaded without a load split across two cache lines (NumPy
    aligns to 16 bytes)."""
    itemsize = np.dtype(dtype).itemsize
    flat = np.empty(int(np.prod(shape)) + VECTOR_BYTES // itemsize, dtype=dtype)
    skip = (-flat.ctypes.data % VECTOR_BYTES) // itemsize
    return flat[skip : skip + int(np.prod(shape))].reshape(shape)


def _block_parts(runs, tasks, threads):
    """Parts to split each run's `tasks` into, so that runs x parts units share the
    threads within 10% of evenly: as few as that takes (a run's parts on different
    threads each split its input planes)."""
    for parts in range(1, max(1, min(tasks, threads)) + 1):
        units = runs * parts
        if -(-units // threads) * threads <= 1.1 * units:
            break
    return parts


@parallel
def interleave_weights(weight, groups, taps, across, block_rows, out):
    """out (groups, blocks, R, block_rows), flat = the weights of each block of
    block_rows rows of the sums interleaved: row r's weights of the block side by
    side (one cache line for block_sums' broadcasts, where rows R apart made as
    many streams as the block has rows: forward 8% faster in float32), zero past
    the last row. weight (K, C/groups, kernel taps), C-contiguous; the sums' row o
    of group g and term r = a*T + t (T = len(taps)) take weight[g*K/groups + o, a,
    taps[t]], or with `across` (the input gradient's sums, over the output
    channels) weight[g*K/groups + a, o, taps[t]].

    Where the taps are one run of the kernel's in order (the forward's, the
    stride-1 input gradient's), a block is its rows transposed, lanes x lanes
    weights at a time in registers (transpose_square): a 512-channel 3x3 layer's
    9.4 MB of float32 weights in 0.3 ms on 2 cores (0.35 across), where a weight
    at a time took 0.85 (1.1). A phase's taps (the strided input gradient's), and
    runs of fewer than half a vector's lanes of taps, a weight at a time."""
    k_, cg, kernel_taps = weight.shape
    kg, count = k_ // groups, taps.shape[0]
    outs, inner = (cg, kg) if across else (kg, cg)
    blocks = -(-outs // block_rows)
    rows = inner * count
    lanes = VECTOR_BYTES // weight.itemsize
    flat = weight.reshape(weight.size)
    # taps[0] read only where there is one, here: inside the prange loop Numba
    # hoisted the read out of its branch (an empty phase's read past its taps)
    in_order, tap = True, 0
    for t in range(count):
        tap = taps[0]
        in_order = in_order and taps[t] == tap + t
    # term a's tap u of the block's row i at flat[first + i*pitch + a*step + u];
    # not `across`, a row's terms are one run of the weight
    pitch, step = (kernel_taps, cg * kernel_taps) if across else (cg * kernel_taps, kernel_taps)
    runs = in_order and not across and count == kernel_taps
    # squares of term a's taps only where they fill half a square's columns or more
    # (the single tap of a stride-2 phase: 11% slower a 512-channel input gradient)
    squares = runs or (in_order and 2 * count >= lanes)
    for unit in prange(groups * blocks):
        g, b = unit // blocks, unit % blocks
        present = min(block_rows, outs - b * block_rows)
        block = out[unit * rows * block_rows : (unit + 1) * rows * block_rows]
        if not squares:
            # a row of the block at a time: float32 20-35% faster than each term's
            # rows together (written in order), float64 10-40% slower; the rows at a
            # time over 8-16 KiB of the block ran between the two in both dtypes
            for i in range(block_rows):
                o = b * block_rows + i
                for a in range(inner):
                    for t in range(count):
                        at = (a * count + t) * block_rows + i
                        if o >= outs:
                            block[at] = 0.0
                        elif across:
                            block[at] = weight[g * kg + a, o, taps[t]]
                        else:
                            block[at] = weight[g * kg + o, a, taps[t]]
            continue
        if present < block_rows:
            block[:] = 0.0
        first = (g * kg * cg + b * block_rows) * kernel_taps if across else (g * kg + b * block_rows) * cg * kernel_taps
        first += tap
        column_at = np.arange(lanes) * block_rows
        # squares of the rows' runs: the whole row's terms, or term a's taps
        length, runs_of = (rows, 1) if runs else (count, inner)
        for a in range(runs_of):
            for r0 in range(0, length, lanes):
                for i0 in range(0, present, lanes):
                    at = first + a * step + i0 * pitch + r0
                    transpose_square(flat, at, pitch, min(lanes, present - i0), min(lanes, length - r0), block, column_at, (a * count + r0) * block_rows + i0)


def _interleaved_size(weight, groups, taps, across, block_rows):
    """The size of interleave_weights' out."""
    k_, cg = weight.shape[0], weight.shape[1]
    outs, inner = (cg, k_ // groups) if across else (k_ // groups, cg)
    return groups * -(-outs // block_rows) * block_rows * inner * len(taps)


def _block_weights(weight, g, block_rows, flipped=False):
    """Each group's kernels as rows of taps, (groups, Kp, C/groups * kh * kw) with
    each block interleaved (interleave_weights), flat; and Kp, the group's output
    channels rounded up to whole blocks (the extra rows zero). `flipped`: g is the
    adjoint of weight's geometry (direct._adjoint), whose kernels are weight's
    with their channel axes swapped and turned by 180 degrees (direct._flipped),
    read so from weight (K, C/groups, kh, kw) without a flipped copy, their taps
    in weight's order (the sums' offsets turned instead: _flipped_offsets)."""
    kg, taps = g.c_out // g.groups, g.kh * g.kw
    kp = -(-kg // block_rows) * block_rows
    order = np.arange(taps, dtype=np.int64)
    size = _interleaved_size(weight, g.groups, order, flipped, block_rows)
    out = _kept_empty(("weights", g, flipped), (size,), weight.dtype)
    interleave_weights(weight.reshape(weight.shape[0], weight.shape[1], -1), g.groups, order, flipped, block_rows, out)
    return out, kp


def _stores(wq, dtype):
    """Masked stores a vector of packed_block_sums, for rows of wq cells: the rows of
    the layout one vector meets (pack_cells)."""
    lanes = VECTOR_BYTES // np.dtype(dtype).itemsize
    return (lanes - 2) // wq + 2


@functools.lru_cache(maxsize=256)
def _packings(g, dtype, runs_of):
    """forward_blocks' packing of each block of a run of samples, for a whole run
    and for the batch's last run (fewer samples where runs_of does not divide the
    batch): (2, blocks, 2 * stores * vectors), and the stores a vector. Made once a
    plan (a block's packing, made as it ran, took as long as the sums of a 72-term
    block: grouped's forward 2.8 -> 1.3 ms)."""
    plan = _plan(g, dtype, runs_of)
    stores = _stores(plan.wq, dtype)
    vectors = plan.block_cells * np.dtype(dtype).itemsize // VECTOR_BYTES
    packings = np.empty((2, plan.blocks, 2 * stores * vectors), dtype=np.int64)
    for kind, present in enumerate((runs_of, g.n - (plan.runs - 1) * runs_of)):
        pack_blocks(packings[kind], stores, g.oh, g.ow, plan.wq, runs_of, present, g.c_out * g.oh * g.ow, plan.block_cells)
    return packings, stores


@functools.lru_cache(maxsize=256)
def _flipped_offsets(g, dtype, runs_of):
    """The forward's offsets of geometry g with each channel's taps in reverse
    order: tap t of a kernel turned by 180 degrees is tap T - 1 - t of the kernel
    as it lies, so that its weights are interleaved from runs of taps in the order
    they lie in (interleave_weights' squares)."""
    offsets = _plan(g, dtype, runs_of).offsets
    return np.ascontiguousarray(offsets.reshape(-1, g.kh * g.kw)[:, ::-1]).reshape(-1)


def forward(x, weight, g, threads, flipped=False):
    """conv2d of x (N, C, H, W) with weight (K, C/groups, kh, kw), geometry g: the
    output (N, K, oh, ow). `flipped`: g is the adjoint of weight's geometry, and
    its kernels weight's flipped (_block_weights): the input gradient at stride 1."""
    plan = _plan(g, x.dtype, forward_runs_of(g, x.dtype))
    offsets = _flipped_offsets(g, x.dtype, plan.runs_of) if flipped else plan.offsets
    out = np.empty(g.output_shape, dtype=x.dtype)
    w, kp = _block_weights(weight, g, plan.block_rows, flipped)
    block_parts = _block_parts(plan.runs, g.groups * plan.blocks * kp // plan.block_rows, threads)
    phased = _kept_zeros(("forward", g), (min(threads, plan.runs * block_parts), g.c_in, plan.span), x.dtype)
    packings, stores = _packings(g, x.dtype, plan.runs_of)
    sweep = _sweep(plan.block_rows, len(plan.offsets), x.dtype)
    forward_blocks(x, w, kp, offsets, out, phased, packings, stores, g.pt, g.pl, g.sh, g.sw, plan.hq, plan.wq, plan.span, plan.runs_of, plan.block_rows, plan.block_cells, plan.blocks, block_parts, sweep)
    return out


def channel_vectors(kg, dtype):
    """(vectors, channel blocks) of channel_sums for kg output channels a group in
    dtype: the fewest lanes over 1 to CHANNEL_VECTORS vectors a block (the most
    vectors of those)."""
    lanes = VECTOR_BYTES // np.dtype(dtype).itemsize
    return min(((-(-kg // (v * lanes)), v) for v in range(CHANNEL_VECTORS, 0, -1)), key=lambda b: b[0] * b[1])[::-1]


def by_channels(g, dtype):
    """Whether the weight gradient of geometry g in dtype sums along the output
    channels (channel_blocks: CHANNEL_FILL, CHANNEL_ROWS), else along the cells
    (weight_blocks)."""
    kg, lanes = g.c_out // g.groups, VECTOR_BYTES // np.dtype(dtype).itemsize
    vectors, kbs = channel_vectors(kg, dtype)
    return vectors * kbs >= 2 and kg >= CHANNEL_FILL * vectors * kbs * lanes and g.c_in // g.groups * g.kh * g.kw >= CHANNEL_ROWS


def _parts(steps, cells):
    """The parts whose sums the weight gradient adds at the end, for `steps` steps
    over `cells` cells in all: a power of two (the common thread counts share them
    evenly) of PART_CELLS cells or more, from the shape only."""
    most = max(1, min(steps, cells // PART_CELLS))
    return 1 << (most.bit_length() - 1)


def weight_grad(x, grad_output, g, threads, channels=None):
    """conv2d_weight: the gradient (K, C/groups, kh, kw) for input x (N, C, H, W) and
    grad_output (N, K, oh, ow), geometry g: summed along the output channels
    (channel_blocks) or along the cells (weight_blocks) as `channels` says (default:
    by_channels). Each sum in a fixed order whatever the thread count."""
    if by_channels(g, x.dtype) if channels is None else channels:
        return _weight_by_channels(x, grad_output, g, threads)
    plan = _plan(g, x.dtype, weight_runs_of(g))
    kg, rows = g.c_out // g.groups, len(plan.offsets)
    kp = -(-kg // DOTS[0]) * DOTS[0]
    # steps of equal parts of a run (a short last part would pay the sums' loads,
    # lane sums and stores for a few steps), or of runs
    lanes = VECTOR_BYTES // x.itemsize
    cells = -(-plan.wide_length // -(-plan.wide_length // STEP_CELLS) // lanes) * lanes
    samples = max(1, SAMPLE_BYTES // x.itemsize // cells)
    parts = _parts(-(-plan.runs // samples), plan.runs * plan.wide_length)
    blocks = g.groups * kp // DOTS[0] * len(plan.dot_offsets) // DOTS[1]
    block_parts = _block_parts(parts, blocks, threads)
    workers = min(threads, parts * block_parts)
    dots = np.zeros((parts, g.groups, kp, len(plan.dot_offsets)), dtype=x.dtype)
    phased = _kept_zeros(("weight", g), (workers, samples, g.c_in, plan.span), x.dtype)
    wide = _kept_zeros(("weight wide", g), (workers, samples * g.c_out + DOTS[0], plan.wide_length), x.dtype)
    weight_blocks(x, grad_output, plan.dot_offsets, dots, phased, wide, g.kh * g.kw, g.pt, g.pl, g.sh, g.sw, plan.hq, plan.wq, plan.span, plan.wide_length, plan.runs_of, cells, samples, block_parts)
    total = dots[0] if parts == 1 else dots.sum(axis=0)
    return np.ascontiguousarray(total[:, :kg, :rows]).reshape(g.weight_shape)


def _weight_by_channels(x, grad_output, g, threads):
    """weight_grad by channel_blocks."""
    plan = _plan(g, x.dtype, weight_runs_of(g))
    kg, rows = g.c_out // g.groups, len(plan.offsets)
    vectors, kbs = channel_vectors(kg, x.dtype)
    kp = kbs * vectors * VECTOR_BYTES // x.itemsize
    block_rows = CHANNEL_ACCUMULATORS // vectors
    # the extra rows of the last block read the group's row 0
    offsets = np.concatenate([plan.offsets, np.zeros(-rows % block_rows, dtype=np.int64)])
    parts = _parts(plan.runs, plan.runs * plan.wide_length)
    block_parts = _block_parts(parts, g.groups * len(offsets) // block_rows, threads)
    workers = min(threads, parts * block_parts)
    # kept (channel_blocks zeroes them): transpose_sums copies them out
    sums = _kept_empty(("weight sums", g), (parts, g.groups, len(offsets), kp), x.dtype)
    phased = _kept_zeros(("weight by channels", g), (workers, g.c_in, plan.span), x.dtype)
    transposed = _kept_zeros(("weight transposed", g), (workers, g.groups, plan.runs_of * g.oh * g.ow, kp), x.dtype)
    chunk = max(1, CHUNK_BYTES // (kp * x.itemsize * g.ow))
    channel_blocks(x, grad_output, offsets, sums, phased, transposed, g.kh * g.kw, g.pt, g.pl, g.sh, g.sw, plan.hq, plan.wq, plan.span, plan.runs_of, vectors, chunk, block_parts)
    total = sums[0] if parts == 1 else sums.sum(axis=0)
    # NumPy's copy of the transpose took 2.5 ms for 2304 x 256 sums (late layers)
    out = np.empty(g.weight_shape, dtype=x.dtype)
    transpose_sums(total, out.reshape(g.c_out, rows))
    return out


@parallel
def input_blocks(grad_output, w, w_first, offsets, first, regions, gx, padded, span, pitch, rows_, runs_of, top, left, pt, pl, sh, sw, cgp, block_rows, block_cells, blocks, block_parts, sweep):
    """gx (N, C, H, W) = the input gradient, phase by phase of the
    zero-padded input plane: phase (a, b)'s cell (Y, X), input cell
    (a + sh*Y - pt, b + sw*X - pl), is the sum of rows first[p]:first[p + 1] of
    offsets over the run's grad_output planes shifted down by `top` and right by
    `left` into planes of rows_ rows of `pitch` columns, the rows of runs_of samples
    interleaved (see `_InputPlan`), with the weights w[w_first[p]:] (groups, cgp,
    rows). Only the phase's cells inside the input are computed: regions[p] = (Y0,
    X0, rows, columns) of them, cell (Y0 + Y', X0 + X') of a run's sample j at
    (Y'*runs_of + j)*pitch + X'. The work is runs x block_parts units, each a range
    of one run's (group, phase, sweep, block of cells, channel block), its worker's
    grad_output planes shifted into its own scratch padded[worker] (K, span; zeros
    on entry), as forward_blocks."""
    n_, c_, h_, w_ = gx.shape
    flat_gx = gx.reshape(gx.size)
    k_ = grad_output.shape[1]
    groups, phases = w.shape[0] // (cgp * first[-1]), sh * sw
    kg, cg = k_ // groups, c_ // groups
    cbs = cgp // block_rows
    per_run = groups * phases * blocks * cbs
    workers, units = padded.shape[0], -(-n_ // runs_of) * block_parts
    for worker in prange(workers):
        own, tile, last = padded[worker], np.empty(block_rows * block_cells, dtype=gx.dtype), (-1, 0, 0)
        flat_pad = own.reshape(own.size)
        for unit in range(*share(worker, workers, units)):
            run_, t0, t1, last = placed_unit(grad_output, own, unit, block_parts, per_run, phases * blocks * cbs, kg, last, top, left, 1, 1, rows_, pitch, runs_of)
            for t in range(t0, t1):
                g, p, task = t // (phases * blocks * cbs), t // (blocks * cbs) % phases, t % (blocks * cbs)
                if block_parts > 1:
                    # a run split between workers: the phases innermost, so that each
                    # worker gets its share of every phase's taps (a 3x3 kernel's
                    # 4, 2, 2 and 1 at stride 2), not the first phases' many
                    p, task = t % phases, t // phases % (blocks * cbs)
                blk, cb = block_of_task(task, blocks, cbs, sweep)
                rows = first[p + 1] - first[p]
                y0, x0, height, width = regions[p, 0], regions[p, 1], regions[p, 2], regions[p, 3]
                start = blk * block_cells
                if rows == 0 or start >= height * runs_of * pitch:
                    continue
                a, b = p // sw, p % sw
                c0 = cb * block_rows
                tile[:] = 0.0
                sums_of_block(block_rows, tile, 0, block_cells, w, w_first[p] + (g * cgp + c0) * rows, 1, block_rows, flat_pad, g * kg * span + start, offsets[first[p] :], rows)
                q = start
                while q < start + block_cells:
                    y, xo = q // pitch, q % pitch
                    run = min(pitch - xo, start + block_cells - q)
                    if y // runs_of >= height:
                        break
                    n = run_ * runs_of + y % runs_of
                    if n < n_:
                        row = a + sh * (y0 + y // runs_of) - pt
                        for c in range(min(block_rows, cg - c0)):
                            if sw == 2:
                                at = ((n * c_ + g * cg + c0 + c) * h_ + row) * w_ + b + 2 * (x0 + xo) - pl
                                spread_store(tile, c * block_cells + q - start, min(xo + run, width) - xo, flat_gx, at)
                                continue
                            cells = tile[c * block_cells + q - start :]
                            plane_row = gx[n, g * cg + c0 + c, row]
                            for xx in range(xo, min(xo + run, width)):
                                plane_row[b + sw * (x0 + xx) - pl] = cells[xx - xo]
                    q += run


class _InputPlan:
    """How input_grad runs geometry g in dtype, runs_of samples a run. Phase (a, b)
    of the padded input takes the taps (i, j) with i*dh = a (mod sh) and j*dw = b
    (mod sw), tap (i, j) reading grad_output at (Y - i*dh//sh, X - j*dw//sw):
    grad_output shifted down by the largest such row shift (top) and right by the
    largest column shift (left), in planes of `pitch` columns, makes each tap's row
    one contiguous run from its start. Only the cells of each phase inside the input
    are computed (regions); a read past the end of a row lands in the next row's
    first `left` columns, zeros, so `pitch` need only hold grad_output's shifted rows
    and the phases' columns."""

    def __init__(self, g, dtype, runs_of):
        self.hq, self.wq = phase_shape(g)
        self.runs_of, self.runs = runs_of, -(-g.n // runs_of)
        taps = [[(i, j) for i in range(g.kh) for j in range(g.kw) if i * g.dh % g.sh == a and j * g.dw % g.sw == b] for a in range(g.sh) for b in range(g.sw)]
        self.taps = tuple(tuple(phase) for phase in taps)  # hashable: _phase_taps
        self.top = (g.kh - 1) * g.dh // g.sh
        self.left = (g.kw - 1) * g.dw // g.sw
        self.regions = np.array([_region(g, a, b, self.hq, self.wq) for a in range(g.sh) for b in range(g.sw)], dtype=np.int64).reshape(-1, 4)
        y0, x0, height, width = self.regions.T
        self.pitch = max(int((x0 + width).max()), g.ow + self.left)
        self.rows = max(self.hq, g.oh) + self.top
        length = int(((height * runs_of - 1) * self.pitch + width).max())
        self.block_rows, self.block_cells = run_block_shape(dtype, g.c_in // g.groups, length)
        self.blocks = max(1, -(-length // self.block_cells))
        starts = [[((int(y0[p]) + self.top - i * g.dh // g.sh) * runs_of) * self.pitch + int(x0[p]) + self.left - j * g.dw // g.sw for i, j in phase] for p, phase in enumerate(taps)]
        widest = max((max(s) for s in starts if s), default=0)
        self.span = max(self.rows * runs_of * self.pitch, widest + self.blocks * self.block_cells)
        kg = g.c_out // g.groups
        self.offsets = np.array([k * self.span + s for phase in starts for k in range(kg) for s in phase], dtype=np.int64)
        self.first = np.cumsum([0] + [kg * len(phase) for phase in taps]).astype(np.int64)
        self.most_rows = int(np.diff(self.first).max())  # the longest phase's sums
        if int(self.offsets.min(initial=0)) < 0 or int(self.offsets.max(initial=0)) + self.blocks * self.block_cells > kg * self.span:
            raise AssertionError("blocked input gradient plan reads outside its group's grad_output")


@functools.lru_cache(maxsize=256)
def input_runs_of(g, dtype):
    """Samples a run for the strided input gradient of geometry g: the fewest whose
    phases' blocks leave at most FOLD_WASTE of their cells empty."""
    plan = _input_plan(g, dtype, 1)
    return _fewest_runs(g.n, block_shape(dtype, g.c_in // g.groups)[1], plan.pitch, plan.regions[:, 2], plan.regions[:, 3])


@functools.lru_cache(maxsize=256)
def _input_plan(g, dtype, runs_of):
    return _InputPlan(g, dtype, runs_of)


@parallel
def select_taps(kernels, kernel_taps, taps, tap_first, first, units, block_rows, out):
    """out[first[p]:first[p + 1]] = phase p's interleaved weights (units, inner,
    T_p, block_rows), T_p = tap_first[p + 1] - tap_first[p]: term a's tap t the
    block_rows weights of term a's tap taps[tap_first[p] + t] in kernels (units,
    inner, kernel_taps, block_rows), the weights of every tap (interleave_weights
    of the kernels' taps in order), a vector at a time (copy_lanes: a loop of
    block_rows copies took 3.5 times as long)."""
    phases = tap_first.shape[0] - 1
    inner = kernels.shape[0] // (units * kernel_taps * block_rows)
    lanes = VECTOR_BYTES // kernels.itemsize
    for task in prange(units * phases):
        unit, p = task // phases, task % phases
        count = tap_first[p + 1] - tap_first[p]
        src = kernels[unit * inner * kernel_taps * block_rows :]
        dst = out[first[p] + unit * inner * count * block_rows :]
        for a in range(inner):
            for t in range(count):
                s0, d0 = (a * kernel_taps + taps[tap_first[p] + t]) * block_rows, (a * count + t) * block_rows
                for i in range(0, block_rows, lanes):
                    copy_lanes(src, s0 + i, min(lanes, block_rows - i), dst, d0 + i)


@functools.lru_cache(maxsize=256)
def _phase_taps(g, block_rows, taps):
    """The bookkeeping of _phase_weights for geometry g and a plan's phase taps
    ((row, column) of the kernel), computed once per geometry (NumPy's small
    array calls took 16 us a call, 10% of a batch-1 layer's pass): every phase's
    kernel taps in order, where each phase's start among them and among the
    selected weights, every kernel tap in order, the kernels' interleaved size,
    and the group's input channels rounded up to whole blocks."""
    weight = np.empty((g.c_out, g.c_in // g.groups, 0))  # shapes only
    cgp = -(-(g.c_in // g.groups) // block_rows) * block_rows
    phases = [np.array([i * g.kw + j for i, j in phase], dtype=np.int64) for phase in taps]
    first = np.cumsum([0] + [_interleaved_size(weight, g.groups, t, True, block_rows) for t in phases]).astype(np.int64)
    every = np.arange(g.kh * g.kw, dtype=np.int64)
    tap_first = np.cumsum([0] + [len(t) for t in phases]).astype(np.int64)
    kernel_size = _interleaved_size(weight, g.groups, every, True, block_rows)
    return np.concatenate(phases), tap_first, first, every, kernel_size, cgp


def _phase_weights(weight, g, plan):
    """Each phase's weights, flat, one after the other: (groups, cgp, kg * taps), row c
    the group's input channel c (cgp rounded up to whole blocks, the extra rows
    zero), column k * taps + t weight[k, c, tap t], blocks interleaved
    (interleave_weights); and where each phase's start. The kernels are
    interleaved whole first, then each phase's taps copied from them a block's
    rows at a time (select_taps): phase by phase from the weight, a 256 -> 512
    channel stride-2 layer's took 1.0-1.2 ms of its 3.1 ms batch-1 input gradient."""
    br = plan.block_rows
    taps, tap_first, first, every, kernel_size, cgp = _phase_taps(g, br, plan.taps)
    out = _kept_empty(("phase weights", g), (int(first[-1]),), weight.dtype)
    kernels = _kept_empty(("kernel weights", g), (kernel_size,), weight.dtype)
    interleave_weights(weight.reshape(weight.shape[0], weight.shape[1], -1), g.groups, every, True, br, kernels)
    select_taps(kernels, len(every), taps, tap_first, first, g.groups * cgp // br, br, out)
    return out, first, cgp


def input_grad(weight, grad_output, g, threads):
    """conv2d_input: the gradient (N, C, H, W) for weight (K, C/groups, kh, kw) and
    grad_output (N, K, oh, ow), geometry g."""
    plan = _input_plan(g, grad_output.dtype, input_runs_of(g, grad_output.dtype))
    w, w_first, cgp = _phase_weights(weight, g, plan)
    # every input cell is in one phase's region, written once: only the phases no tap
    # reaches are zeroed (np.zeros wrote or faulted in all of gx first: dcgan_up's
    # input gradient 20% slower)
    gx = np.empty(g.input_shape, dtype=grad_output.dtype)
    for p in range(g.sh * g.sw):
        if plan.first[p + 1] == plan.first[p]:
            a, b = divmod(p, g.sw)
            gx[:, :, (a - g.pt) % g.sh :: g.sh, (b - g.pl) % g.sw :: g.sw] = 0.0
    block_parts = _block_parts(plan.runs, g.groups * g.sh * g.sw * plan.blocks * cgp // plan.block_rows, threads)
    padded = _kept_zeros(("input", g), (min(threads, plan.runs * block_parts), g.c_out, plan.span), grad_output.dtype)
    sweep = _sweep(plan.block_rows, plan.most_rows, grad_output.dtype)
    input_blocks(grad_output, w, w_first, plan.offsets, plan.first, plan.regions, gx, padded, plan.span, plan.pitch, plan.rows, plan.runs_of, plan.top, plan.left, g.pt, g.pl, g.sh, g.sw, cgp, plan.block_rows, plan.block_cells, plan.blocks, block_parts, sweep)
    return gx
