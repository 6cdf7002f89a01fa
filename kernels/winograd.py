"""Winograd convolution F(2x2, 3x3): stride-1 3x3 convolutions (any dilation and
padding) with 16 multiplications per 2x2 outputs and input channel, against 36.

For a 4x4 input tile d and a 3x3 kernel w, the tile's 2x2 outputs are
At [(G w Gt) * (Bt d B)] A (elementwise product; the matrices below). Summed over the
input channels, the elementwise products become 16 matrix products, one per tile
cell p: U[p] (K, C) @ V[p] (C, tiles). The forward (and so the input gradient, its
adjoint's forward) runs the transforms as Numba loops, each thread on its own run
of units of work; the weight gradient runs the products the other way, Gt [sum over
tiles of (At^T dy At) * (Bt d B)] G (`weight_units`). On up to gemm.MOST_THREADS threads
the forward runs on fastconv's GEMM threads (fastconv.kernels.gemm), its products by
single-threaded BLAS (`forward`); on more, in Numba's parallel loops with
the products as Numba loops (`forward_units`), which kept scaling where the GEMM
threads stopped.

Layout. With dilation d, the outputs y = ry (mod d) form an undilated convolution
of their own (dilation phase ry), whose 2x2 tiles step 2d rows. The padded input is
split once into 2d x 2d phases (fastconv.kernels.phases), in which each cell of
every tile of a tile row is one contiguous run: tile (a, t) of a phase sits at
column a*wq + t, rows of wq tiles of which the last (at least EXTRA) are computed and
dropped. A unit of work is a few successive tile rows (of any samples and phases,
`_Plan.units`), their columns side by side, P per channel.

The transforms are passes: dst_row = the sum of 1-3 terms coef * src_row[offset:],
each pass one unit-stride loop (a loop writing sixteen rows at once has too many
pointers for LLVM's vectoriser to check for overlap). Loop lengths are whole
numbers of LLVM's unrolled vector loops (VECTOR_BYTES), the tail scalar otherwise.

The transforms mix a tile's inputs, so an infinite input gives NaN where a direct sum
is infinite: the drivers return None when an output is not finite, and the caller
(fastconv.dispatch) runs the direct kernels instead.
"""

import functools

import numpy as np
from numba import prange

from . import gemm
from ._jit import parallel, serial
from .direct import _unaliased, dots_three, split_planes, split_samples
from .gemm import in_parallel, matmul

M, R = 2, 3  # outputs per tile side, kernel side
ALPHA = M + R - 1  # input tile side
BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], dtype=np.float64)
G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], dtype=np.float64)
AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], dtype=np.float64)
EXTRA = (ALPHA - 1) // M  # tile rows (and columns) a tile row reads beyond its own
TILE_BYTES = 3 << 19  # a unit's transformed inputs and products, at most
VECTOR_BYTES = 256  # LLVM's vector loop: four AVX-512 vectors
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


@serial(fastmath=True)
def transform_input(phases, v, segments, wq, round_to, row_tables, row_coefs, col_table, col_coefs, scratch):
    """v[p, c, :P] = (Bt d B)[p] for the unit's tiles, P = v.shape[2]: segments rows
    (sample, dilation phase, first tile row, tile rows, first column), read from
    phases (N, C, cells), C <= v.shape[1] (rows past C are left as they are); the
    columns after the tiles zero. scratch (ALPHA*M, 1, C*P + slack) holds Bt d,
    channel by channel; the column passes then run over all channels at once."""
    c_, pitch = phases.shape[1], v.shape[2]
    for c in range(c_):
        end = 0
        for s in range(segments.shape[0]):
            n, p, a0, nb, col = segments[s, 0], segments[s, 1], segments[s, 2], segments[s, 3], segments[s, 4]
            # rounded up: the surplus is overwritten by the next segment or channel
            length = -(-nb * wq // round_to) * round_to
            apply_passes(phases, n, c, scratch, 0, row_tables[p], row_coefs[p], a0 * wq, length, c * pitch + col)
            end = col + nb * wq
        scratch[:, :, c * pitch + end : (c + 1) * pitch] = 0.0  # the dropped columns: finite
    scratch[:, :, c_ * pitch :] = 0.0
    apply_passes(scratch, 0, 0, v.reshape(v.shape[0], 1, v.shape[1] * pitch), 0, col_table, col_coefs, 0, c_ * pitch, 0)


@serial(fastmath=True)
def exchange(tiles, planes, segments, dilation_phases, dh, dw, wq, pitch, to_planes):
    """Copy the 2x2 outputs of the unit's tiles between tiles (M*M, 1, K*P), cell
    (i, j) of channel k's tile at column k*P + the tile's, and planes (N, K, oh, ow):
    into planes when to_planes, else out of them."""
    oh, ow = planes.shape[2], planes.shape[3]
    step = dw * M
    for g in range(segments.shape[0]):
        n, p, a0, nb, col = segments[g, 0], segments[g, 1], segments[g, 2], segments[g, 3], segments[g, 4]
        ry, rx = dilation_phases[p, 0], dilation_phases[p, 1]
        # undilated columns: both cells of a tile row in one loop (adjacent cells)
        pairs = (ow - rx) // step if dw == 1 else 0
        for k in range(planes.shape[1]):
            for a in range(nb):
                for i in range(M):
                    row = ry + dh * (M * (a0 + a) + i)
                    if row >= oh:
                        break
                    plane_row = planes[n, k, row, rx:]
                    first = tiles[i * M, 0, k * pitch + col + a * wq :]
                    second = tiles[i * M + 1, 0, k * pitch + col + a * wq :]
                    # stretches of PAIRS: a loop of constant length vectorises, a
                    # variable one shorter than LLVM's unrolled vector loop runs scalar
                    for t0 in range(0, pairs - PAIRS + 1, PAIRS):
                        if to_planes:
                            for t in range(PAIRS):
                                plane_row[2 * (t0 + t)] = first[t0 + t]
                                plane_row[2 * (t0 + t) + 1] = second[t0 + t]
                        else:
                            for t in range(PAIRS):
                                first[t0 + t] = plane_row[2 * (t0 + t)]
                                second[t0 + t] = plane_row[2 * (t0 + t) + 1]
                    for j in range(M):
                        cells = tiles[i * M + j, 0, k * pitch + col + a * wq :]
                        for t in range(pairs // PAIRS * PAIRS, (ow - rx - dw * j + step - 1) // step):
                            if to_planes:
                                plane_row[dw * j + step * t] = cells[t]
                            else:
                                cells[t] = plane_row[dw * j + step * t]


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


@serial(fastmath=True)
def transform_output(products, out, segments, dilation_phases, dh, dw, wq, row_table, row_coefs, col_table, col_coefs, scratch):
    """out at each segment's outputs = At products A; products (16, K, P), scratch
    (ALPHA*M + M*M, 1, K*P). Returns whether an output (or a dropped one) is not
    finite."""
    k_, pitch = products.shape[1], products.shape[2]
    length = k_ * pitch
    s = scratch[: ALPHA * M]
    y = scratch[ALPHA * M :]
    apply_passes(products.reshape(products.shape[0], 1, length), 0, 0, s, 0, row_table, row_coefs, 0, length, 0)
    apply_passes(s, 0, 0, y, 0, col_table, col_coefs, 0, length, 0)
    exchange(y, out, segments, dilation_phases, dh, dw, wq, pitch, True)
    return non_finite(y, length)


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


@serial(inline=True)
def product_inputs(itemsize):
    """Input rows per step of `products` (and the multiple its C is padded to): three
    in float32, four in float64."""
    return 4 if itemsize == 8 else 3


@serial(fastmath=True)
def products(u, v, out):
    """out[p] = u[p] @ v[p] for each tile cell p: u (16, K4, Cn), v (16, Cn, P), out
    (16, K4, P), K4 a multiple of 4 and Cn of the input rows per step
    (product_inputs). Output rows four at a time, input rows three at a time in
    float32 and four in float64: one load of those rows of v feeds twelve or
    sixteen multiply-adds, as in the direct kernels (written out here: their
    add_taps, on these views of out and u, made the forward 35-45% slower). On one
    core of an AVX-512 Xeon, a res3x3 unit's products took 0.35 ms here and 0.16 ms
    by single-threaded OpenBLAS (62 against 144 GFLOP/s), hence BLAS on up to
    gemm.MOST_THREADS threads (`forward`)."""
    length = v.shape[2]
    for p in range(u.shape[0]):
        for k0 in range(0, u.shape[1], 4):
            a0, a1, a2, a3 = out[p, k0], out[p, k0 + 1], out[p, k0 + 2], out[p, k0 + 3]
            a0[:] = 0.0
            a1[:] = 0.0
            a2[:] = 0.0
            a3[:] = 0.0
            if product_inputs(out.itemsize) == 4:
                for c in range(0, u.shape[2], 4):
                    s0, s1, s2, s3 = v[p, c], v[p, c + 1], v[p, c + 2], v[p, c + 3]
                    w00, w01, w02, w03 = u[p, k0, c], u[p, k0, c + 1], u[p, k0, c + 2], u[p, k0, c + 3]
                    w10, w11, w12, w13 = u[p, k0 + 1, c], u[p, k0 + 1, c + 1], u[p, k0 + 1, c + 2], u[p, k0 + 1, c + 3]
                    w20, w21, w22, w23 = u[p, k0 + 2, c], u[p, k0 + 2, c + 1], u[p, k0 + 2, c + 2], u[p, k0 + 2, c + 3]
                    w30, w31, w32, w33 = u[p, k0 + 3, c], u[p, k0 + 3, c + 1], u[p, k0 + 3, c + 2], u[p, k0 + 3, c + 3]
                    for q in range(length):
                        x0, x1, x2, x3 = s0[q], s1[q], s2[q], s3[q]
                        a0[q] += w00 * x0 + w01 * x1 + w02 * x2 + w03 * x3
                        a1[q] += w10 * x0 + w11 * x1 + w12 * x2 + w13 * x3
                        a2[q] += w20 * x0 + w21 * x1 + w22 * x2 + w23 * x3
                        a3[q] += w30 * x0 + w31 * x1 + w32 * x2 + w33 * x3
                continue
            for c in range(0, u.shape[2], 3):
                s0, s1, s2 = v[p, c], v[p, c + 1], v[p, c + 2]
                w00, w01, w02 = u[p, k0, c], u[p, k0, c + 1], u[p, k0, c + 2]
                w10, w11, w12 = u[p, k0 + 1, c], u[p, k0 + 1, c + 1], u[p, k0 + 1, c + 2]
                w20, w21, w22 = u[p, k0 + 2, c], u[p, k0 + 2, c + 1], u[p, k0 + 2, c + 2]
                w30, w31, w32 = u[p, k0 + 3, c], u[p, k0 + 3, c + 1], u[p, k0 + 3, c + 2]
                for q in range(length):
                    x0, x1, x2 = s0[q], s1[q], s2[q]
                    a0[q] += w00 * x0 + w01 * x1 + w02 * x2
                    a1[q] += w10 * x0 + w11 * x1 + w12 * x2
                    a2[q] += w20 * x0 + w21 * x1 + w22 * x2
                    a3[q] += w30 * x0 + w31 * x1 + w32 * x2


@parallel
def forward_units(phases, u, out, segments, first, threads, pitch, wq, round_to, input_tables, output_tables, dilation_phases, dh, dw):
    """The forward for every unit of work, unit i's segments segments[first[i]:first[i + 1]],
    the units in `threads` contiguous runs, one per iteration with its own buffers;
    u (16, K4, Cn) the transformed weights padded with zeros (products). Returns the count of
    units with an output that is not finite."""
    row_tables, row_coefs, col_table, col_coefs = input_tables
    out_rows, out_row_coefs, out_cols, out_col_coefs = output_tables
    units = first.shape[0] - 1
    bad = np.zeros(threads, dtype=np.int64)
    for t in prange(threads):
        v = np.zeros((u.shape[0], u.shape[2], pitch), dtype=u.dtype)  # rows past C stay zero
        product = np.empty((u.shape[0], u.shape[1], pitch), dtype=u.dtype)
        rows_in = np.empty((ALPHA * M, 1, phases.shape[1] * pitch + round_to), dtype=u.dtype)
        rows_out = np.empty((ALPHA * M + M * M, 1, u.shape[1] * pitch), dtype=u.dtype)
        for i in range(units * t // threads, units * (t + 1) // threads):
            unit = segments[first[i] : first[i + 1]]
            transform_input(phases, v, unit, wq, round_to, row_tables, row_coefs, col_table, col_coefs, rows_in)
            products(u, v, product)
            if transform_output(product, out, unit, dilation_phases, dh, dw, wq, out_rows, out_row_coefs, out_cols, out_col_coefs, rows_out):
                bad[t] += 1
    return bad.sum()


@serial(fastmath=True)
def sums_of_products(hat, v, acc):
    """acc[p] += hat[p] @ v[p]^T for each tile cell p: hat (16, K4, P), v (16, C3, P),
    acc (16, K4, C3), K4 a multiple of 4 and C3 of 3: twelve sums over the tiles at
    a time, four rows of hat by three of v (the direct weight gradient's dots_three;
    fastmath: the sums vectorise; in float64, dots_four's sixteen ran no faster)."""
    length = v.shape[2]
    zero = acc.dtype.type(0)
    for p in range(hat.shape[0]):
        for k0 in range(0, hat.shape[1], 4):
            for c0 in range(0, v.shape[1], 3):
                dots_three(acc[p, k0 : k0 + 4, c0 : c0 + 3], hat[p, k0 : k0 + 4], v[p, c0], v[p, c0 + 1], v[p, c0 + 2], length, zero)


@parallel
def weight_units(phases, grad_output, sums, segments, first, pitch, wq, round_to, input_tables, grad_tables, dilation_phases, dh, dw):
    """sums[t] (16, K4, C3) = the sum over thread t's run of units (as forward_units)
    of (At^T dy At) (Bt d B)^T, per tile cell; rows and columns past K and C zero."""
    row_tables, row_coefs, col_table, col_coefs = input_tables
    grad_rows, grad_row_coefs, grad_cols, grad_col_coefs = grad_tables
    threads, k4, c3 = sums.shape[0], sums.shape[2], sums.shape[3]
    units = first.shape[0] - 1
    for t in prange(threads):
        v = np.zeros((ALPHA * ALPHA, c3, pitch), dtype=sums.dtype)  # rows past C stay zero
        hat = np.empty((ALPHA * ALPHA, k4, pitch), dtype=sums.dtype)
        rows_in = np.empty((ALPHA * M, 1, phases.shape[1] * pitch + round_to), dtype=sums.dtype)
        rows_grad = np.empty((M * M + ALPHA * M, 1, k4 * pitch), dtype=sums.dtype)
        sums[t] = 0.0
        for i in range(units * t // threads, units * (t + 1) // threads):
            unit = segments[first[i] : first[i + 1]]
            transform_input(phases, v, unit, wq, round_to, row_tables, row_coefs, col_table, col_coefs, rows_in)
            transform_grad_output(grad_output, hat, unit, dilation_phases, dh, dw, wq, grad_rows, grad_row_coefs, grad_cols, grad_col_coefs, rows_grad)
            sums_of_products(hat, v, sums[t])


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
        # cells per plane: its phases, then zeros read by the last dropped tiles and
        # by the rounded-up passes
        self.cells = self.fh * self.fw * self.hq * self.wq + EXTRA * (self.wq + 1) + VECTOR_BYTES // itemsize

        tile_rows = [(n, p, a) for n in range(g.n) for p, phase in enumerate(phases) for a in range(phase[2])]
        per_row = ALPHA * ALPHA * (g.c_in + g.c_out) * self.wq * itemsize
        rows = max(1, min(TILE_BYTES // per_row, -(-len(tile_rows) // (2 * threads))))
        self.units = [self._segments(tile_rows[r : r + rows]) for r in range(0, len(tile_rows), rows)]
        self.segments = np.concatenate(self.units)
        self.first = np.cumsum([0] + [len(u) for u in self.units]).astype(np.int64)
        # columns per channel: whole vectors (the long passes' tails are short), the
        # channels' rows not a multiple of 4 KiB apart (_unaliased)
        self.pitch = _unaliased(-(-(rows * self.wq + EXTRA) * itemsize // 64) * 64 // itemsize, itemsize)

        row_passes = [self._input_rows(ry, rx) for ry, rx, _, _ in phases]
        self.tables = {
            "input_rows": (np.stack([t for t, _ in row_passes]), np.stack([c for _, c in row_passes])),
            "input_cols": _passes([(i * ALPHA + j, i * M + cc % M, cc // M, BT[j, cc]) for i in range(ALPHA) for j in range(ALPHA) for cc in range(ALPHA)]),
            "output_rows": _passes([(i * ALPHA + v, u * ALPHA + v, 0, AT[i, u]) for i in range(M) for v in range(ALPHA) for u in range(ALPHA)]),
            "output_cols": _passes([(i * M + j, i * ALPHA + v, 0, AT[j, v]) for i in range(M) for j in range(M) for v in range(ALPHA)]),
            "grad_rows": _passes([(u * M + j, i * M + j, 0, AT[i, u]) for u in range(ALPHA) for j in range(M) for i in range(M)]),
            "grad_cols": _passes([(u * ALPHA + v, u * M + j, 0, AT[j, v]) for u in range(ALPHA) for v in range(ALPHA) for j in range(M)]),
        }

    def _segments(self, tile_rows):
        """(sample, dilation phase, first tile row, tile rows, first column) of each run
        of successive tile rows of one sample and phase."""
        runs = []
        for n, p, a in tile_rows:
            if runs and runs[-1][:2] == [n, p]:
                runs[-1][3] += 1
            else:
                runs.append([n, p, a, 1, runs[-1][4] + runs[-1][3] * self.wq if runs else 0])
        return np.array(runs, dtype=np.int64)

    def _input_rows(self, ry, rx):
        """Passes of Bt d over the tiles' rows for dilation phase (ry, rx): scratch row
        i*M + cp (the tile columns of phase cp) from the rows of the split phases."""
        g, plane = self.g, self.hq * self.wq

        def offset(rr, cp):
            phase = (ry + g.dh * (rr % M)) * self.fw + rx + g.dw * cp
            return phase * plane + rr // M * self.wq

        return _passes([(i * M + cp, 0, offset(rr, cp), BT[i, rr]) for i in range(ALPHA) for cp in range(M) for rr in range(ALPHA)])

    def table(self, name, dtype):
        table, coefs = self.tables[name]
        return table, coefs.astype(dtype)

    def split(self, x, gemm_threads=0):
        """The (fh, fw) phases of every plane of x zero-padded at (pt, pl), the cells
        after them (read by dropped tiles) zero: (N, C, cells). On `gemm_threads` of
        fastconv's GEMM threads when the units run there, else in Numba's parallel
        loop: an OpenMP region just before the GEMM threads' work leaves its workers
        spinning on the cores they need (with PyTorch imported first, Numba's OpenMP
        is PyTorch's libgomp, whose default spin is long)."""
        g = self.g
        phases = np.empty((g.n, x.shape[1], self.cells), dtype=x.dtype)
        layout = (g.pt, g.pl, self.fh, self.fw, self.hq, self.wq)
        if gemm_threads:
            in_parallel(list(range(g.n)), gemm_threads, lambda samples: split_samples(x, phases, samples[0], samples[-1] + 1, *layout))
        else:
            split_planes(x, phases, *layout, 1)  # runs of one sample
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


def forward(x, weight, g, threads, blas=None):
    """conv2d of x (N, C, H, W) with weight (K, C, 3, 3), geometry g (applicable);
    None if an output is not finite. `blas`: whether the products run by BLAS on the
    GEMM threads (default: on up to gemm.MOST_THREADS threads), else in Numba's loops."""
    plan = _plan(g, x.itemsize, threads)
    dt = x.dtype
    inputs = product_inputs(x.itemsize)
    u = np.zeros((ALPHA * ALPHA, ceil(g.c_out, 4) * 4, ceil(g.c_in, inputs) * inputs), dtype=dt)  # products' blocks
    with np.errstate(invalid="ignore", over="ignore"):  # a non-finite weight: recomputed
        u[:, : g.c_out, : g.c_in] = _transformed_weight(weight)
    blas = threads <= gemm.MOST_THREADS if blas is None else blas
    threads = min(threads, len(plan.units))
    phases = plan.split(x, threads if blas else 0)
    out = np.empty(g.output_shape, dtype=dt)
    input_tables = (*plan.table("input_rows", dt), *plan.table("input_cols", dt))
    output_tables = (*plan.table("output_rows", dt), *plan.table("output_cols", dt))
    round_to = VECTOR_BYTES // x.itemsize
    if not blas:
        bad = forward_units(phases, u, out, plan.segments, plan.first, threads, plan.pitch, plan.wq, round_to, input_tables, output_tables, plan.dilation_phases, g.dh, g.dw)
        return out if bad == 0 else None

    def run(units):
        """forward_units' loop for a run of units on one GEMM thread, the products by
        BLAS (in_parallel keeps NumPy's BLAS single-threaded meanwhile)."""
        v = np.zeros((u.shape[0], u.shape[2], plan.pitch), dtype=dt)  # rows past C stay zero
        product = np.empty((u.shape[0], u.shape[1], plan.pitch), dtype=dt)
        rows_in = np.empty((ALPHA * M, 1, g.c_in * plan.pitch + round_to), dtype=dt)
        rows_out = np.empty((ALPHA * M + M * M, 1, u.shape[1] * plan.pitch), dtype=dt)
        bad = 0
        with np.errstate(invalid="ignore", over="ignore"):  # a non-finite output: recomputed
            for i in units:
                unit = plan.segments[plan.first[i] : plan.first[i + 1]]
                transform_input(phases, v, unit, plan.wq, round_to, *input_tables, rows_in)
                np.matmul(u, v, out=product)
                bad += transform_output(product, out, unit, plan.dilation_phases, g.dh, g.dw, plan.wq, *output_tables, rows_out)
        return bad

    return out if sum(in_parallel(list(range(len(plan.units))), threads, run)) == 0 else None


def weight_grad(x, grad_output, g, threads):
    """conv2d_weight: the gradient (K, C, 3, 3) for input x and grad_output, geometry
    g (applicable); None if a sum is not finite. Always in Numba's parallel loops: its
    sums by BLAS on the GEMM threads (hat @ v^T, the tiles the short inner dimension)
    took res3x3's pass from 12.2 to 14.5 ms."""
    plan = _plan(g, x.itemsize, threads)
    dt = x.dtype
    threads = min(threads, len(plan.units))
    phases = plan.split(x)
    sums = np.empty((threads, ALPHA * ALPHA, ceil(g.c_out, 4) * 4, ceil(g.c_in, 3) * 3), dtype=dt)
    input_tables = (*plan.table("input_rows", dt), *plan.table("input_cols", dt))
    grad_tables = (*plan.table("grad_rows", dt), *plan.table("grad_cols", dt))
    with np.errstate(invalid="ignore", over="ignore"):  # a non-finite sum: recomputed
        weight_units(phases, grad_output, sums, plan.segments, plan.first, plan.pitch, plan.wq, VECTOR_BYTES // x.itemsize, input_tables, grad_tables, plan.dilation_phases, g.dh, g.dw)
        # the threads' sums in a fixed order: reruns are bitwise identical
        gw = _weight_from_transformed(np.ascontiguousarray(sums.sum(axis=0)[:, : g.c_out, : g.c_in]), g.c_out, g.c_in)
    return gw.astype(dt) if np.isfinite(gw).all() else None
