"""Winograd convolution F(2x2, 3x3): stride-1 3x3 convolutions (any dilation and
padding) with 16 multiplications per 2x2 outputs and input channel, against 36.

For a 4x4 input tile d and a 3x3 kernel w, the tile's 2x2 outputs are
At [(G w Gt) * (Bt d B)] A (elementwise product; the matrices below). Summed over the
input channels, the elementwise products become 16 matrix products, one per tile
cell p: U[p] (K, C) @ V[p] (C, tiles). Everything runs in Numba's parallel loops,
each thread on its own run of units of work: the forward (and so the input
gradient, its adjoint's forward) transforms a unit's tiles, multiplies them by the
blocked sums' register blocks (`block_products`: as fast as single-threaded BLAS,
without handing off to threads of BLAS's own, which left Numba's OpenMP workers
spinning on the cores they needed) and transforms the products back
(`forward_units`); the weight gradient runs the products the other way, Gt [sum
over tiles of (At^T dy At) * (Bt d B)] G (`weight_units`).

Layout. With dilation d, the outputs y = ry (mod d) form an undilated convolution
of their own (dilation phase ry), whose 2x2 tiles step 2d rows. The padded input is
split once into 2d x 2d phases (fastconv.kernels.phases), in which each cell of
every tile of a tile row is one contiguous run: tile (a, t) of a phase sits at
column a*wq + t, rows of wq tiles of which the last (at least EXTRA) are computed and
dropped. A unit of work is a few successive tile rows (of any samples and phases,
`_Plan.units`), their columns side by side, P per channel.

The transforms of the input and of the products run in registers, a vector of
tiles at a time (`input_tiles`, `output_tiles`). grad_output's (the weight
gradient's) runs in passes: dst_row = the sum of 1-3 terms coef *
src_row[offset:], each pass one unit-stride loop (a loop writing sixteen rows at
once has too many pointers for LLVM's vectoriser to check for overlap).

The transforms mix a tile's inputs, so an infinite input gives NaN where a direct sum
is infinite: the drivers return None when an output is not finite, and the caller
(fastconv.dispatch) runs the direct kernels instead.
"""

import functools

import numpy as np
from numba import prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from . import blocked
from ._jit import parallel, serial
from .direct import split_planes
from .emitter import VECTOR_BYTES, Emitter
from .gemm import matmul

M, R = 2, 3  # outputs per tile side, kernel side
ALPHA = M + R - 1  # input tile side
BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], dtype=np.float64)
G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], dtype=np.float64)
AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], dtype=np.float64)
EXTRA = (ALPHA - 1) // M  # tile rows (and columns) a tile row reads beyond its own
TILE_BYTES = 3 << 19  # a unit's transformed inputs and products, at most
PAIRS = 8  # tiles per stretch of the copies to and from the planes
CHUNK = 256  # cells per stretch of a pass (24 rows of them stay in L1)


# ------------------------------------------------------------------ kernels


@serial(fastmath=True)
def apply_passes(src, srow, smid, dst, dmid, table, coefs, start, length, dstart):
    """For each pass (row, terms, (src_row, offset) x 3) of `table`, coefs (passes, 3):
    dst[row, dmid, dstart:][:length] = the sum over its 1-3 terms of
    coef * src[srow + src_row, smid, start + offset:][:length], CHUNK cells at a time
    so that the rows stay in L1 between passes. One store per cell and pass: Zen 4
    stores a 512-bit vector in two cycles, and a pass per term ran half as fast.
    fastmath contracts the multiply-adds into FMAs; the terms' order is fixed."""
    for q0 in range(0, length, CHUNK):
        n = min(CHUNK, length - q0)
        for p in range(table.shape[0]):
            d = dst[table[p, 0], dmid, dstart + q0 : dstart + q0 + n]
            at0 = start + table[p, 3] + q0
            s0 = src[srow + table[p, 2], smid, at0 : at0 + n]
            c0 = coefs[p, 0]
            if table[p, 1] == 1:
                for q in range(n):
                    d[q] = c0 * s0[q]
                continue
            at1 = start + table[p, 5] + q0
            s1 = src[srow + table[p, 4], smid, at1 : at1 + n]
            c1 = coefs[p, 1]
            if table[p, 1] == 2:
                for q in range(n):
                    d[q] = c0 * s0[q] + c1 * s1[q]
                continue
            at2 = start + table[p, 7] + q0
            s2 = src[srow + table[p, 6], smid, at2 : at2 + n]
            c2 = coefs[p, 2]
            for q in range(n):
                d[q] = c0 * s0[q] + c1 * s1[q] + c2 * s2[q]


def _signed_sum(builder, terms):
    """The sum of (coef, value) terms, coefs +1 or -1: adds and subtracts, a
    positive term first where there is one."""
    terms = sorted(terms, key=lambda t: t[0] < 0)
    coef, total = terms[0]
    if coef < 0:
        total = builder.fneg(total)
    for coef, value in terms[1:]:
        total = builder.fadd(total, value) if coef > 0 else builder.fsub(total, value)
    return total


@intrinsic
def input_tiles(typingctx, src, src_at, offsets, count, dst, dst_at, row_stride):
    """dst[p * row_stride + dst_at + t] = (Bt d B)[p] of tile t < count, whose cell
    (r, c) is src[src_at + offsets[2r + c % 2] + c // 2 + t] (a tile row's cells of
    one row r and column phase c % 2 lie in one run, offsets[2r + c % 2] from
    src_at): a vector of tiles at a time, its 16 cells loaded, transformed in
    registers and stored, nothing past count read or written. (Passes of a row at
    a time stored 24 rows a tile for Bt d B's 16, each pass a loop of its own, and
    took 2.4 times as long over data in the cache.) src and dst contiguous, of one
    dtype."""
    if src.layout != "C" or dst.layout != "C" or offsets.layout != "C":
        return None  # a typing error: the cells are addressed from the data pointer
    sig = types.void(src, src_at, offsets, count, dst, dst_at, row_stride)

    def codegen(context, builder, signature, args):
        e = Emitter(context, builder, signature, args)
        src_, src_at_, offsets_, count_, dst_, dst_at_, row_stride_ = args
        src_data, dst_data = e.data(signature.args[0], src_), e.data(signature.args[4], dst_)
        offset_data = e.data(signature.args[2], offsets_)
        b, lanes = builder, e.lanes
        starts = [b.add(src_at_, b.load(b.gep(offset_data, [e.constant(i)]))) for i in range(ALPHA * M)]
        with cgutils.for_range(b, b.sdiv(b.add(count_, e.constant(lanes - 1)), e.constant(lanes))) as loop:
            t0 = b.mul(loop.index, e.constant(lanes))
            mask = e.lanes_between(t0, count_)
            d = [[e.masked_load(src_data, b.add(b.add(starts[2 * r + c % 2], e.constant(c // 2)), t0), mask) for c in range(ALPHA)] for r in range(ALPHA)]
            rows = [[_signed_sum(b, [(BT[i, r], d[r][c]) for r in range(ALPHA) if BT[i, r]]) for c in range(ALPHA)] for i in range(ALPHA)]
            for i in range(ALPHA):
                for j in range(ALPHA):
                    cell = _signed_sum(b, [(BT[j, c], rows[i][c]) for c in range(ALPHA) if BT[j, c]])
                    at = b.add(b.add(b.mul(e.constant(i * ALPHA + j), row_stride_), dst_at_), t0)
                    e.masked_store(cell, dst_data, at, mask)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def output_tiles(typingctx, src, count, dst):
    """dst[(i * M + j) * count + t] = (At m A)[i, j] for t < count, m[p] = src[p *
    count + t]: a vector of tiles' 16 products at a time, transformed in
    registers into their M x M outputs (input_tiles' way). src and dst contiguous,
    of one dtype."""
    if src.layout != "C" or dst.layout != "C":
        return None  # a typing error: the cells are addressed from the data pointer
    sig = types.void(src, count, dst)

    def codegen(context, builder, signature, args):
        e = Emitter(context, builder, signature, args)
        src_, count_, dst_ = args
        src_data, dst_data = e.data(signature.args[0], src_), e.data(signature.args[2], dst_)
        b, lanes = builder, e.lanes
        with cgutils.for_range(b, b.sdiv(b.add(count_, e.constant(lanes - 1)), e.constant(lanes))) as loop:
            t0 = b.mul(loop.index, e.constant(lanes))
            mask = e.lanes_between(t0, count_)
            m = [e.masked_load(src_data, b.add(b.mul(e.constant(p), count_), t0), mask) for p in range(ALPHA * ALPHA)]
            rows = [[_signed_sum(b, [(AT[i, u], m[u * ALPHA + v]) for u in range(ALPHA) if AT[i, u]]) for v in range(ALPHA)] for i in range(M)]
            for i in range(M):
                for j in range(M):
                    cell = _signed_sum(b, [(AT[j, v], rows[i][v]) for v in range(ALPHA) if AT[j, v]])
                    e.masked_store(cell, dst_data, b.add(b.mul(e.constant(i * M + j), count_), t0), mask)
        return context.get_dummy_value()

    return sig, codegen


@serial
def transform_input(phases, v, segments, wq, tile_offsets):
    """v[p, c, :P] = (Bt d B)[p] for the unit's tiles, P = v.shape[2]: segments rows
    (sample, dilation phase, first tile row, tile rows, first column), read from
    phases (N, C, cells) at each dilation phase's tile_offsets (input_tiles), C <=
    v.shape[1] (rows past C are left as they are); the columns after the tiles
    zero."""
    c_, cells, pitch = phases.shape[1], phases.shape[2], v.shape[2]
    src, dst = phases.reshape(phases.size), v.reshape(v.size)
    for c in range(c_):
        end = 0
        for s in range(segments.shape[0]):
            n, p, a0, nb, col = segments[s, 0], segments[s, 1], segments[s, 2], segments[s, 3], segments[s, 4]
            input_tiles(src, (n * c_ + c) * cells + a0 * wq, tile_offsets[p], nb * wq, dst, c * pitch + col, v.shape[1] * pitch)
            end = col + nb * wq
        v[:, c, end:] = 0.0  # the dropped columns: finite


@serial(fastmath=True)
def exchange(tiles, planes, segments, dilation_phases, dh, dw, wq, pitch, to_planes):
    """Copy the 2x2 outputs of the unit's tiles between tiles (M*M, 1, K*P), cell
    (i, j) of channel k's tile at column k*P + the tile's, and planes (N, K, oh, ow):
    into planes when to_planes, else out of them. With dilation dw along the width,
    the segments come in groups of the min(dw, ow) column phases of the same tile
    rows (_Plan), whose cells interleave along each plane row: the phases of a row
    are copied one after the other, while its cache lines stay in L1 (a segment at
    a time, a row's lines were stored to again a segment later: 15-20% slower).
    They still take 2.5 times as long as the undilated copies."""
    oh, ow = planes.shape[2], planes.shape[3]
    phases = min(dw, ow)
    for g0 in range(0, segments.shape[0], phases):
        n, p, a0, nb = segments[g0, 0], segments[g0, 1], segments[g0, 2], segments[g0, 3]
        ry = dilation_phases[p, 0]
        columns = segments[g0 : g0 + phases, 4]
        for k in range(planes.shape[1]):
            for a in range(nb):
                for i in range(M):
                    row = ry + dh * (M * (a0 + a) + i)
                    if row >= oh:
                        break
                    plane_row = planes[n, k, row]
                    if dw == 1:
                        _pairs_row(plane_row, tiles[i * M, 0, k * pitch + columns[0] + a * wq :], tiles[i * M + 1, 0, k * pitch + columns[0] + a * wq :], to_planes)
                        continue
                    for s in range(M * phases):
                        # phase rx's cells j of every tile: every (M dw)-th cell from rx + dw j
                        j, rx = s // phases, s % phases
                        cells = tiles[i * M + j, 0, k * pitch + columns[rx] + a * wq :]
                        q0 = rx + dw * j
                        for t in range(max(0, ow - q0 + M * dw - 1) // (M * dw)):
                            if to_planes:
                                plane_row[q0 + M * dw * t] = cells[t]
                            else:
                                cells[t] = plane_row[q0 + M * dw * t]


@serial(inline=True)
def _pairs_row(plane_row, first, second, to_planes):
    """exchange's copies of an undilated row: its cells alternate between first's
    and second's."""
    ow = plane_row.shape[0]
    pairs = ow // M
    # stretches of PAIRS: a loop of constant length vectorises, a variable one
    # shorter than LLVM's unrolled vector loop runs scalar
    for t0 in range(0, pairs - PAIRS + 1, PAIRS):
        if to_planes:
            for t in range(PAIRS):
                plane_row[2 * (t0 + t)] = first[t0 + t]
                plane_row[2 * (t0 + t) + 1] = second[t0 + t]
        else:
            for t in range(PAIRS):
                first[t0 + t] = plane_row[2 * (t0 + t)]
                second[t0 + t] = plane_row[2 * (t0 + t) + 1]
    for q in range(pairs // PAIRS * PAIRS * M, ow):
        cells = first if q % M == 0 else second
        if to_planes:
            plane_row[q] = cells[q // M]
        else:
            cells[q // M] = plane_row[q]


@serial
def non_finite(rows, length):
    """Whether a cell of rows[:, 0, :length] is not finite (v - v is NaN there). Not
    fastmath, whose reassociation folds v - v away; an or of comparisons vectorises
    all the same."""
    found = False
    for r in range(rows.shape[0]):
        cells = rows[r, 0, :length]
        for q in range(length):
            found |= cells[q] - cells[q] != 0.0
    return found


@serial
def transform_output(products, out, segments, dilation_phases, dh, dw, wq, tiles):
    """out at each segment's outputs = At products A; products (16, K, P), tiles
    (M*M, 1, K*P) scratch. Returns whether an output (or a dropped one) is not
    finite."""
    length = products.shape[1] * products.shape[2]
    output_tiles(products.reshape(products.size), length, tiles.reshape(tiles.size))
    exchange(tiles, out, segments, dilation_phases, dh, dw, wq, products.shape[2], True)
    return non_finite(tiles, length)


@serial(fastmath=True)
def transform_grad_output(grad_output, hat, segments, dilation_phases, dh, dw, wq, row_table, row_coefs, col_table, col_coefs, scratch):
    """hat[p, k, :P] = (At^T dy At)[p] for the unit's tiles of grad_output (N, K, oh,
    ow), zero at the dropped ones; scratch (M*M + ALPHA*M, 1, K*P)."""
    k_, pitch = hat.shape[1], hat.shape[2]
    length = k_ * pitch
    y = scratch[: M * M]
    s = scratch[M * M :]
    y[:, :, :length] = 0.0
    exchange(y, grad_output, segments, dilation_phases, dh, dw, wq, pitch, False)
    apply_passes(y, 0, 0, s, 0, row_table, row_coefs, 0, length, 0)
    apply_passes(s, 0, 0, hat.reshape(hat.shape[0], 1, length), 0, col_table, col_coefs, 0, length, 0)


@serial
def block_products(w, v, out, offsets, block_cells):
    """out[p] = U[p] @ v[p] for each tile cell p, by the blocked sums' register
    blocks (blocked.block_sums: BLOCK rows of out by block_cells columns): w holds
    U (16, Kp, C) a block of rows at a time, each block's rows interleaved, flat
    (16, Kp / rows, C, rows); v (16, C, P), out (16, Kp, P), P a multiple of
    block_cells, offsets[c] = c * P."""
    rows = blocked.BLOCK[0]
    taps, c_, pitch = v.shape
    kp = out.shape[1]
    out[:] = 0.0
    flat_out, flat_v = out.reshape(out.size), v.reshape(v.size)
    for p in range(taps):
        for k0 in range(0, kp, rows):
            for q0 in range(0, pitch, block_cells):
                blocked.block_sums(flat_out, (p * kp + k0) * pitch + q0, pitch, w, (p * kp + k0) * c_, 1, rows, flat_v, p * c_ * pitch + q0, offsets, c_)


@parallel
def forward_units(phases, w, kp, out, segments, first, threads, pitch, block_cells, wq, tile_offsets, dilation_phases, dh, dw):
    """The forward for every unit of work, unit i's segments segments[first[i]:first[i + 1]],
    the units in `threads` contiguous runs, one per iteration with its own buffers;
    w the transformed weights (16, kp, C) in block_products' blocks, padded with
    zeros to kp rows. Returns the count of units with an output that is not
    finite."""
    units, c_ = first.shape[0] - 1, phases.shape[1]
    offsets = np.arange(c_) * pitch
    bad = np.zeros(threads, dtype=np.int64)
    for t in prange(threads):
        v = np.empty((ALPHA * ALPHA, c_, pitch), dtype=out.dtype)
        product = np.empty((ALPHA * ALPHA, kp, pitch), dtype=out.dtype)
        tiles = np.empty((M * M, 1, kp * pitch), dtype=out.dtype)
        for i in range(units * t // threads, units * (t + 1) // threads):
            unit = segments[first[i] : first[i + 1]]
            transform_input(phases, v, unit, wq, tile_offsets)
            block_products(w, v, product, offsets, block_cells)
            if transform_output(product, out, unit, dilation_phases, dh, dw, wq, tiles):
                bad[t] += 1
    return bad.sum()


@serial
def sums_of_products(hat, v, acc, offsets):
    """acc[p] += hat[p] @ v[p]^T for each tile cell p: hat (16, Kd, P), v (16, Cd,
    P), acc (16, Kd, Cd), Kd and Cd multiples of blocked.DOTS' rows, P of a
    vector's lanes, offsets[j] = j * P: blocked.block_dots' dot products over the
    tiles, held in registers (their lanes added pairwise at the end, in a fixed
    order)."""
    rows, columns = blocked.DOTS
    taps, k_, pitch = hat.shape
    c_ = v.shape[1]
    flat_acc, flat_hat, flat_v = acc.reshape(acc.size), hat.reshape(hat.size), v.reshape(v.size)
    for p in range(taps):
        for k0 in range(0, k_, rows):
            for c0 in range(0, c_, columns):
                blocked.block_dots(flat_acc, (p * k_ + k0) * c_ + c0, c_, flat_hat, (p * k_ + k0) * pitch, pitch, 0, flat_v, (p * c_ + c0) * pitch, 0, offsets, pitch, 1)


@parallel
def weight_units(phases, grad_output, sums, segments, first, pitch, wq, tile_offsets, grad_tables, dilation_phases, dh, dw):
    """sums[t] (16, Kd, Cd) = the sum over thread t's run of units (as forward_units)
    of (At^T dy At) (Bt d B)^T, per tile cell (sums_of_products); rows and columns
    past K and C zero."""
    grad_rows, grad_row_coefs, grad_cols, grad_col_coefs = grad_tables
    threads, kd, cd = sums.shape[0], sums.shape[2], sums.shape[3]
    units = first.shape[0] - 1
    offsets = np.arange(blocked.DOTS[1]) * pitch
    for t in prange(threads):
        v = np.zeros((ALPHA * ALPHA, cd, pitch), dtype=sums.dtype)  # rows past C stay zero
        hat = np.empty((ALPHA * ALPHA, kd, pitch), dtype=sums.dtype)
        rows_grad = np.empty((M * M + ALPHA * M, 1, kd * pitch), dtype=sums.dtype)
        sums[t] = 0.0
        for i in range(units * t // threads, units * (t + 1) // threads):
            unit = segments[first[i] : first[i + 1]]
            transform_input(phases, v, unit, wq, tile_offsets)
            transform_grad_output(grad_output, hat, unit, dilation_phases, dh, dw, wq, grad_rows, grad_row_coefs, grad_cols, grad_col_coefs, rows_grad)
            sums_of_products(hat, v, sums[t], offsets)


# ------------------------------------------------------------------ plans


def _passes(terms):
    """(table, coefs) of apply_passes from (dst_row, src_row, offset, coef) terms: the
    nonzero terms of each dst_row, in order (at most three)."""
    rows = {}
    for row, src, offset, coef in terms:
        if coef != 0:
            rows.setdefault(row, []).append((src, offset, coef))
    table = np.zeros((len(rows), 8), dtype=np.int64)
    coefs = np.zeros((len(rows), 3), dtype=np.float64)
    for p, (row, mine) in enumerate(rows.items()):
        table[p, :2] = row, len(mine)
        for t, (src, offset, coef) in enumerate(mine):
            table[p, 2 + 2 * t : 4 + 2 * t] = src, offset
            coefs[p, t] = coef
    return table, coefs


def applicable(g):
    """Whether F(2x2, 3x3) computes convolutions of geometry g: stride 1, 3x3, one group."""
    return g.kh == g.kw == R and g.sh == g.sw == 1 and g.groups == 1


def ceil(a, b):
    return -(-a // b)


class _Plan:
    """Phases, units and pass tables for geometry g, items of itemsize bytes."""

    def __init__(self, g, itemsize, threads):
        self.g = g
        self.fh, self.fw = M * g.dh, M * g.dw
        # dilation phases (ry, rx): their tile rows and columns
        phases = [(ry, rx, ceil(ceil(g.oh - ry, g.dh), M), ceil(ceil(g.ow - rx, g.dw), M)) for ry in range(min(g.dh, g.oh)) for rx in range(min(g.dw, g.ow))]
        self.dilation_phases = np.array([p[:2] for p in phases], dtype=np.int64)
        # every tile, and the whole padded input (the split copies whole rows)
        self.hq = max(max(p[2] for p in phases) + EXTRA, ceil(g.h + g.pt, self.fh))
        self.wq = max(max(p[3] for p in phases) + EXTRA, ceil(g.w + g.pl, self.fw))
        # cells per plane: its phases, then zeros read by the last dropped tiles
        self.cells = self.fh * self.fw * self.hq * self.wq + EXTRA * (self.wq + 1)

        # tile rows of each row phase ry, all of its column phases together (exchange)
        self.column_phases = min(g.dw, g.ow)
        tile_rows = [(n, ry, a) for n in range(g.n) for ry in range(min(g.dh, g.oh)) for a in range(phases[ry * self.column_phases][2])]
        per_row = ALPHA * ALPHA * (g.c_in + g.c_out) * self.wq * itemsize * self.column_phases
        most = max(1, min(TILE_BYTES // per_row, -(-len(tile_rows) // (2 * threads))))
        # columns per channel: whole blocks of block_products' cells, the channels'
        # rows not a multiple of 4 KiB apart (as direct._unaliased); of the units
        # of up to `most` tile rows, those whose tiles fill their blocks best (6
        # tile rows of 8 of a 256-channel layer of 14x14 planes took 49 cells, two
        # blocks of 48 in float32: its forward ran 40% slower than the blocked sums)
        self.block_cells = blocked.BLOCK[1] * VECTOR_BYTES // itemsize

        def pitch(rows):
            return ceil(rows * self.column_phases * self.wq + EXTRA, self.block_cells) * self.block_cells

        rows = max(range(max(1, most // 2), most + 1), key=lambda r: (r * self.column_phases * self.wq / pitch(r), r))
        self.units = [self._segments(tile_rows[r : r + rows]) for r in range(0, len(tile_rows), rows)]
        self.segments = np.concatenate(self.units)
        self.first = np.cumsum([0] + [len(u) for u in self.units]).astype(np.int64)
        self.pitch = pitch(rows)
        if self.pitch * itemsize % 4096 == 0:
            self.pitch += self.block_cells

        self.tile_offsets = np.array([[self._offset(ry, rx, r, cp) for r in range(ALPHA) for cp in range(M)] for ry, rx, _, _ in phases], dtype=np.int64)
        # input_tiles' loads are not bounds-checked: every tile's last cell (one
        # column past its run's start) inside its plane's cells, every unit's tiles
        # inside the pitch
        s = self.segments
        last = (s[:, 2] + s[:, 3]) * self.wq + self.tile_offsets[s[:, 1]].max(axis=1)
        if int(last.max()) >= self.cells or int(self.tile_offsets.min()) < 0 or any(int(u[-1, 4] + u[-1, 3] * self.wq) > self.pitch for u in self.units):
            raise AssertionError("Winograd plan reads outside its planes")
        self.tables = {
            "grad_rows": _passes([(u * M + j, i * M + j, 0, AT[i, u]) for u in range(ALPHA) for j in range(M) for i in range(M)]),
            "grad_cols": _passes([(u * ALPHA + v, u * M + j, 0, AT[j, v]) for u in range(ALPHA) for v in range(ALPHA) for j in range(M)]),
        }

    def _segments(self, tile_rows):
        """(sample, dilation phase, first tile row, tile rows, first column) of each run
        of successive tile rows (sample, row phase ry, tile row) of one sample and row
        phase, for each of its column phases in turn."""
        runs = []
        for n, ry, a in tile_rows:
            if runs and runs[-1][:2] == [n, ry]:
                runs[-1][3] += 1
            else:
                runs.append([n, ry, a, 1])
        segments, column = [], 0
        for n, ry, a0, nb in runs:
            for rx in range(self.column_phases):
                segments.append([n, ry * self.column_phases + rx, a0, nb, column])
                column += nb * self.wq
        return np.array(segments, dtype=np.int64)

    def _offset(self, ry, rx, r, cp):
        """Where, from its tile row's start in a plane's split phases, the run of
        cells of row r and column phase cp of dilation phase (ry, rx)'s tiles."""
        g = self.g
        phase = (ry + g.dh * (r % M)) * self.fw + rx + g.dw * cp
        return phase * self.hq * self.wq + r // M * self.wq

    def table(self, name, dtype):
        table, coefs = self.tables[name]
        return table, coefs.astype(dtype)

    def split(self, x):
        """The (fh, fw) phases of every plane of x zero-padded at (pt, pl), the cells
        after them (read by dropped tiles) zero: (N, C, cells), in memory kept
        between calls (blocked._kept_empty: fresh memory faulted in page by page
        took longer than the split)."""
        g = self.g
        phases = blocked._kept_empty(("winograd phases", g), (g.n, x.shape[1], self.cells), x.dtype)
        split_planes(x, phases, g.pt, g.pl, self.fh, self.fw, self.hq, self.wq, 1)  # runs of one sample
        return phases


@functools.lru_cache(maxsize=64)
def _plan(g, itemsize, threads):
    return _Plan(g, itemsize, threads)


# (G w Gt)[a, b] = sum over (i, j) of G[a, i] G[b, j] w[i, j]: one matrix product
# (16, 9) @ (9, K*C) for every kernel at once, already in U's layout
G_BOTH = np.kron(G, G)


def _transformed_weight(weight):
    """U (16, K, C) = G w Gt of every kernel, computed in float64 (on this thread: a
    NumPy product would wake OpenBLAS's spinning workers, see fastconv.kernels.gemm)."""
    k_, c_ = weight.shape[:2]
    taps = weight.reshape(k_ * c_, R * R).T.astype(np.float64)
    u = matmul(G_BOTH, taps, np.empty((ALPHA * ALPHA, k_ * c_)), 1)
    return u.astype(weight.dtype).reshape(ALPHA * ALPHA, k_, c_)


def _weight_from_transformed(hat, k_, c_):
    """w (K, C, 3, 3) = Gt hat G of the summed products hat (16, K, C), in float64."""
    taps = matmul(G_BOTH.T, hat.reshape(ALPHA * ALPHA, k_ * c_).astype(np.float64), np.empty((R * R, k_ * c_)), 1)
    return np.ascontiguousarray(taps.T).reshape(k_, c_, R, R)


# ------------------------------------------------------------------ drivers


def forward(x, weight, g, threads):
    """conv2d of x (N, C, H, W) with weight (K, C, 3, 3), geometry g (applicable);
    None if an output is not finite."""
    plan = _plan(g, x.itemsize, threads)
    rows = blocked.BLOCK[0]
    kp = ceil(g.c_out, rows) * rows
    with np.errstate(invalid="ignore", over="ignore"):  # a non-finite weight: recomputed
        u = _transformed_weight(weight)
    # each block's rows interleaved, padded with zeros to kp rows: the blocked sums'
    # weights, each tile cell's U a group of one-tap kernels
    w = np.empty(ALPHA * ALPHA * kp * g.c_in, dtype=x.dtype)
    blocked.interleave_weights(u.reshape(ALPHA * ALPHA * g.c_out, g.c_in, 1), ALPHA * ALPHA, np.zeros(1, dtype=np.int64), False, rows, w)
    threads = min(threads, len(plan.units))
    out = np.empty(g.output_shape, dtype=x.dtype)
    bad = forward_units(plan.split(x), w, kp, out, plan.segments, plan.first, threads, plan.pitch, plan.block_cells, plan.wq, plan.tile_offsets, plan.dilation_phases, g.dh, g.dw)
    return out if bad == 0 else None


def weight_grad(x, grad_output, g, threads):
    """conv2d_weight: the gradient (K, C, 3, 3) for input x and grad_output, geometry
    g (applicable); None if a sum is not finite."""
    plan = _plan(g, x.itemsize, threads)
    dt = x.dtype
    threads = min(threads, len(plan.units))
    phases = plan.split(x)
    rows, columns = blocked.DOTS
    sums = np.empty((threads, ALPHA * ALPHA, ceil(g.c_out, rows) * rows, ceil(g.c_in, columns) * columns), dtype=dt)
    grad_tables = (*plan.table("grad_rows", dt), *plan.table("grad_cols", dt))
    with np.errstate(invalid="ignore", over="ignore"):  # a non-finite sum: recomputed
        weight_units(phases, grad_output, sums, plan.segments, plan.first, plan.pitch, plan.wq, plan.tile_offsets, grad_tables, plan.dilation_phases, g.dh, g.dw)
        # the threads' sums in a fixed order: reruns are bitwise identical
        gw = _weight_from_transformed(np.ascontiguousarray(sums.sum(axis=0)[:, : g.c_out, : g.c_in]), g.c_out, g.c_in)
    return gw.astype(dt) if np.isfinite(gw).all() else None
