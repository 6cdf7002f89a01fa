"""The register-blocked sums (fastconv.kernels.blocked): its two LLVM intrinsics
against NumPy, and its plans' reach over random geometries (the intrinsics' loads
and stores are not bounds-checked, so the plans must keep them inside their arrays).
Its results against fastconv.reference are in test_conv_kernels, as a path."""

import os
import subprocess
import sys

import numba
import numpy as np
import pytest
from fastconv.kernels import blocked, direct
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import fastconv
from fastconv import dispatch, grad, reference
from fastconv.params import conv2d_geometry
from tests.conftest import assert_close

DTYPES = [np.float32, np.float64]


# the channels that pick each block shape: BLOCK, NARROW_BLOCK, THIN_BLOCK
BLOCK_CHANNELS = [blocked.NARROW_ROWS + 1, blocked.NARROW_ROWS, blocked.THIN_ROWS]


@numba.njit
def _sums(out, pitch, w, x, offsets, rows, x_at, w_step, block_rows):
    blocked.sums_of_block(block_rows, out, 3, pitch, w, 2, 1, w_step, x, x_at, offsets, rows)


@numba.njit
def _dots(out, a, x, offsets, cells, samples, a_step, x_step):
    blocked.block_dots(out, 1, blocked.DOTS[1] + 2, a, 5, cells + 3, a_step, x, 4, x_step, offsets, cells, samples)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels", BLOCK_CHANNELS + ["tall"])
def test_block_sums_against_numpy(dtype, channels, rng):
    if channels == "tall":
        if blocked.TALL_BLOCK is None:
            pytest.skip("no tall blocks with AVX2")
        block_rows, cells = blocked.TALL_ROWS, blocked.TALL_BLOCK[1] * blocked.VECTOR_BYTES // np.dtype(dtype).itemsize
    else:
        block_rows, cells = blocked.block_shape(dtype, channels)
        assert block_rows == {blocked.THIN_ROWS: blocked.THIN_ROWS, blocked.NARROW_ROWS: blocked.NARROW_ROWS}.get(channels, blocked.BLOCK[0])
    rows, w_step = 37, block_rows + 1  # each row's weights side by side, a gap after
    x = rng.standard_normal(500).astype(dtype)
    offsets = rng.integers(0, 500 - cells - 11, rows).astype(np.int64)  # unaligned runs
    w = rng.standard_normal(2 + w_step * rows).astype(dtype)
    pitch = cells + 5  # the block's rows of the output apart, a gap between
    out = rng.standard_normal(3 + block_rows * pitch + 4).astype(dtype)
    expected = out.copy()
    for i in range(block_rows):
        for r in range(rows):
            expected[3 + i * pitch : 3 + i * pitch + cells] += w[2 + i + r * w_step] * x[11 + offsets[r] : 11 + offsets[r] + cells]
    _sums(out, pitch, w, x, offsets, rows, 11, w_step, block_rows)
    assert_close(out, expected, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_block_dots_against_numpy(dtype, rng):
    lanes = blocked.VECTOR_BYTES // np.dtype(dtype).itemsize
    (da, dx), cells, samples = blocked.DOTS, 3 * lanes, 3
    a_step, x_step = da * (cells + 3) + 7, 300
    a = rng.standard_normal(5 + samples * a_step).astype(dtype)
    x = rng.standard_normal(4 + samples * x_step).astype(dtype)
    offsets = rng.integers(0, x_step - cells, dx).astype(np.int64)
    out = rng.standard_normal(1 + da * (dx + 2)).astype(dtype)
    expected = out.copy()
    for i in range(da):
        for j in range(dx):
            for s in range(samples):
                left = a[5 + s * a_step + i * (cells + 3) :][:cells]
                right = x[4 + s * x_step + offsets[j] :][:cells]
                expected[1 + i * (dx + 2) + j] += left @ right
    _dots(out, a, x, offsets, cells, samples, a_step, x_step)
    assert_close(out, expected, dtype)


@numba.njit
def _channel_sums(vectors, out, x, offsets, gt, cells, segments, x_segment, gt_pitch):
    blocked.channel_sums_of_block(vectors, out, 3, 7 + vectors * blocked.VECTOR_BYTES // x.itemsize, x, 5, offsets, gt, 2, gt_pitch, cells, segments, x_segment)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("vectors", [1, 2, 3, 4])
def test_channel_sums_against_numpy(vectors, dtype, rng):
    lanes = blocked.VECTOR_BYTES // np.dtype(dtype).itemsize
    rows, width, cells, segments, x_segment = blocked.CHANNEL_ACCUMULATORS // vectors, vectors * lanes, 7, 4, 9
    pitch, gt_pitch = 7 + width, width + 5  # rows with gaps, unaligned
    x = rng.standard_normal(400).astype(dtype)
    offsets = rng.integers(0, 400 - 5 - segments * x_segment, rows).astype(np.int64)
    gt = rng.standard_normal(2 + segments * cells * gt_pitch).astype(dtype)
    out = rng.standard_normal(3 + rows * pitch).astype(dtype)
    expected = out.copy()
    channels = gt[2:].reshape(segments * cells, gt_pitch)[:, :width]
    read = (np.arange(segments)[:, None] * x_segment + np.arange(cells)[None, :]).reshape(-1)  # the cells each segment reads
    for i in range(rows):
        expected[3 + i * pitch : 3 + i * pitch + width] += x[5 + offsets[i] + read] @ channels
    _channel_sums(vectors, out, x, offsets, gt, cells, segments, x_segment, gt_pitch)
    assert_close(out, expected, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=30, deadline=None)
@given(st.data())
def test_channel_sums_over_random_segments(dtype, data):
    lanes = blocked.VECTOR_BYTES // np.dtype(dtype).itemsize
    vectors = data.draw(st.integers(1, blocked.CHANNEL_VECTORS))
    cells, segments = data.draw(st.integers(1, 20)), data.draw(st.integers(0, 6))
    x_segment = cells + data.draw(st.integers(0, 5))
    rows, width = blocked.CHANNEL_ACCUMULATORS // vectors, vectors * lanes
    gt_pitch = width + data.draw(st.integers(0, 2 * lanes))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    x = rng.standard_normal(5 + segments * x_segment + 40).astype(dtype)
    offsets = rng.integers(0, 40, rows).astype(np.int64)
    gt = rng.standard_normal(2 + max(segments * cells, 1) * gt_pitch).astype(dtype)
    pitch = 7 + width
    out = rng.standard_normal(3 + rows * pitch).astype(dtype)
    expected = out.copy()
    channels = gt[2 : 2 + segments * cells * gt_pitch].reshape(segments * cells, gt_pitch)[:, :width]
    read = (np.arange(segments)[:, None] * x_segment + np.arange(cells)[None, :]).reshape(-1)
    for i in range(rows):
        expected[3 + i * pitch : 3 + i * pitch + width] += x[5 + offsets[i] + read] @ channels
    _channel_sums(vectors, out, x, offsets, gt, cells, segments, x_segment, gt_pitch)
    assert_close(out, expected, dtype)


@numba.njit
def _transpose(src, src_at, pitch, rows, cells, dst, dst_at, shift):
    blocked.transpose_square(src, src_at, pitch, rows, cells, dst, dst_at, shift)


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=30, deadline=None)
@given(st.data())
def test_transpose_square_against_numpy(dtype, data):
    lanes = blocked.VECTOR_BYTES // np.dtype(dtype).itemsize
    rows, cells = data.draw(st.integers(1, lanes)), data.draw(st.integers(1, lanes))
    pitch, src_at = data.draw(st.integers(lanes, 3 * lanes)), data.draw(st.integers(0, 9))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    # only the rows and cells asked for lie in src: any read past them faults or
    # reads NaN into the transposed cells
    src = np.full(src_at + (rows - 1) * pitch + cells, np.nan, dtype=dtype)
    square = rng.standard_normal((rows, cells)).astype(dtype)
    for i in range(rows):
        src[src_at + i * pitch : src_at + i * pitch + cells] = square[i]
    shift = data.draw(st.integers(0, 5))
    dst_at = rng.permutation(lanes).astype(np.int64) * (lanes + 3)
    dst = np.full(lanes * (lanes + 3) + 5 + lanes, -7.0, dtype=dtype)
    _transpose(src, src_at, pitch, rows, cells, dst, dst_at, shift)
    expected = np.full_like(dst, -7.0)
    for c in range(cells):
        expected[dst_at[c] + shift : dst_at[c] + shift + rows] = square[:, c]
    assert np.array_equal(dst, expected)


@numba.njit
def _spread(src, src_at, count, dst, dst_at):
    blocked.spread_store(src, src_at, count, dst, dst_at)


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=30, deadline=None)
@given(st.data())
def test_spread_store_against_numpy(dtype, data):
    count, src_at, dst_at = data.draw(st.integers(0, 70)), data.draw(st.integers(0, 9)), data.draw(st.integers(0, 9))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    # src holds exactly the cells to spread (a read past them would fault or
    # spread NaN); dst ends at the last cell written
    src = np.concatenate([np.full(src_at, np.nan), rng.standard_normal(count)]).astype(dtype)
    dst = np.full(dst_at + max(2 * count - 1, 0), -7.0, dtype=dtype)
    expected = dst.copy()
    expected[dst_at : dst_at + 2 * count : 2] = src[src_at:]
    _spread(src, src_at, count, dst, dst_at)
    assert np.array_equal(dst, expected)


@numba.njit
def _packed(out, out_rows, packing, stores, w, x, offsets, rows, block_rows, first, oh, ow, wq, runs_of, present, sample_cells, block_cells):
    blocked.pack_cells(packing, stores, first, oh, ow, wq, runs_of, present, sample_cells, block_cells)
    blocked.packed_sums_of_block(block_rows, out, 5, oh * ow + 3, out_rows, packing, stores, w, 2, 1, block_rows, x, 11, offsets, rows)


@settings(max_examples=80, deadline=None)
@given(
    st.sampled_from(DTYPES), st.sampled_from(BLOCK_CHANNELS + ["tall"]), st.integers(1, 6), st.integers(1, 40), st.integers(0, 3), st.integers(1, 3),
    st.integers(1, 3), st.integers(0, 14), st.integers(0, 200),
)
def test_packed_block_sums_store_the_outputs_of_a_block(dtype, channels, oh, ow, gap, runs_of, present, out_rows, first_cell):
    # the block's sums in the wide layout (rows wq apart, runs_of samples' rows
    # interleaved, the first `present` in the batch), stored straight into the
    # outputs' rows (ow apart): every output cell of the block, and nothing else
    present = min(present, runs_of)
    if channels == "tall":
        assume(blocked.TALL_BLOCK is not None)
        block_rows, cells = blocked.TALL_ROWS, blocked.TALL_BLOCK[1] * blocked.VECTOR_BYTES // np.dtype(dtype).itemsize
    else:
        block_rows, cells = blocked.block_shape(dtype, channels)
    wq = ow + gap
    first = min(first_cell, oh * runs_of * wq - 1)
    rng = np.random.default_rng(first * 100 + ow)
    rows = 7
    x = rng.standard_normal(11 + 40 + cells).astype(dtype)
    offsets = rng.integers(0, 40, rows).astype(np.int64)
    w = rng.standard_normal(2 + block_rows * rows).astype(dtype)
    pitch = oh * ow + 3
    sample_cells = block_rows * pitch + 7
    out = np.full(5 + runs_of * sample_cells, np.inf, dtype=dtype)
    stores = blocked._stores(wq, dtype)
    packing = np.empty(2 * stores * cells // (blocked.VECTOR_BYTES // np.dtype(dtype).itemsize), dtype=np.int64)
    _packed(out, out_rows, packing, stores, w, x, offsets, rows, block_rows, first, oh, ow, wq, runs_of, present, sample_cells, cells)
    expected = np.full_like(out, np.inf)
    for i in range(min(out_rows, block_rows)):
        for q in range(first, min(first + cells, oh * runs_of * wq)):
            y, xo = q // wq, q % wq
            if xo < ow and y % runs_of < present:
                terms = [w[2 + i + r * block_rows] * x[11 + offsets[r] + q - first] for r in range(rows)]
                expected[5 + y % runs_of * sample_cells + i * pitch + y // runs_of * ow + xo] = sum(terms)
    finite = np.isfinite(expected)
    assert (np.isfinite(out) == finite).all()
    assert_close(out[finite], expected[finite], dtype)


@pytest.mark.skipif(blocked.TALL_BLOCK is None, reason="no tall blocks with AVX2")
@pytest.mark.parametrize("dtype", DTYPES)
def test_tall_blocks_for_runs_of_few_cells(dtype, rng):
    # a batch-1 7x7 plane: 49 outputs in 61 cells, 51% of 2 blocks of 8 x 3 vectors
    # in float32, 77% of 2 of 12 x 2; in float64 68% of 3 against 77% of 4
    late = conv2d_geometry((1, 24, 7, 7), (24, 24, 3, 3), padding=1)
    for g in (late, direct._adjoint(late)):
        plan = blocked._plan(g, np.dtype(dtype), blocked.forward_runs_of(g, np.dtype(dtype)))
        assert plan.block_rows == (blocked.TALL_ROWS if dtype == np.float32 else blocked.BLOCK[0])
    few = conv2d_geometry((1, 24, 4, 4), (24, 24, 1, 1))  # 16 cells: one block of 16 in float64
    assert blocked._plan(few, np.dtype(dtype), 1).block_rows == blocked.TALL_ROWS
    res = conv2d_geometry((8, 64, 32, 32), (64, 64, 3, 3), padding=1)
    assert blocked._plan(res, np.dtype(dtype), blocked.forward_runs_of(res, np.dtype(dtype))).block_rows == blocked.BLOCK[0]
    # a stride-2 input gradient's phases of 7x7 cells, 55 in rows of 8: 57% of 2
    # blocks of 48 in float32, 86% of 2 of 32; in float64 76% of 3 against 86% of 4
    down = conv2d_geometry((1, 24, 14, 14), (24, 24, 3, 3), stride=2, padding=1)
    plan = blocked._input_plan(down, np.dtype(dtype), blocked.input_runs_of(down, np.dtype(dtype)))
    assert plan.block_rows == (blocked.TALL_ROWS if dtype == np.float32 else blocked.BLOCK[0])
    x = rng.standard_normal(late.input_shape).astype(dtype)
    w = rng.standard_normal(late.weight_shape).astype(dtype)
    gy = rng.standard_normal(late.output_shape).astype(dtype)
    wf = rng.standard_normal(few.weight_shape).astype(dtype)
    with fastconv.dispatch.force_path("blocked"):
        assert_close(fastconv.conv2d(x, w, padding=1), reference.conv2d(x, w, padding=1), dtype)
        assert_close(grad.conv2d_input(x.shape, w, gy, padding=1), reference.conv2d_input(x.shape, w, gy, padding=1), dtype)
        assert_close(fastconv.conv2d(x[..., :4, :4], wf), reference.conv2d(x[..., :4, :4], wf), dtype)
        gd = rng.standard_normal(down.output_shape).astype(dtype)
        expected = reference.conv2d_input(down.input_shape, w, gd, stride=2, padding=1)
        assert_close(grad.conv2d_input(down.input_shape, w, gd, stride=2, padding=1), expected, dtype)


@st.composite
def geometries(draw):
    kh, kw, sh, sw, dh, dw = (draw(st.integers(1, 5)) for _ in range(6))
    groups = draw(st.sampled_from([1, 2, 3]))
    c, k = groups * draw(st.integers(1, 9)), groups * draw(st.integers(1, 9))
    h, w = draw(st.integers(1, 24)), draw(st.integers(1, 24))
    pads = [draw(st.integers(0, 4)) for _ in range(4)]
    if h + pads[0] + pads[1] < dh * (kh - 1) + 1 or w + pads[2] + pads[3] < dw * (kw - 1) + 1:
        pads = [dh * (kh - 1), dh * (kh - 1), dw * (kw - 1), dw * (kw - 1)]
    padding = ((pads[0], pads[1]), (pads[2], pads[3]))
    return conv2d_geometry((draw(st.integers(1, 3)), c, h, w), (k, c // groups, kh, kw), (sh, sw), padding, (dh, dw), groups)


@settings(max_examples=300, deadline=None)
@given(geometries(), st.sampled_from(DTYPES))
def test_plans_keep_every_load_inside_the_arrays(g, dtype):
    cg, kg = g.c_in // g.groups, g.c_out // g.groups
    for runs_of in {1, blocked.forward_runs_of(g, np.dtype(dtype)), blocked.weight_runs_of(g), g.n}:
        plan = blocked._plan(g, np.dtype(dtype), runs_of)
        runs = plan.blocks * plan.block_cells
        # forward_blocks and weight_blocks: a group's last block of its last row ends
        # in its input (the last run's ends the array)
        assert plan.offsets.max() + runs <= cg * plan.span
        assert plan.dot_offsets.max() + plan.wide_length <= cg * plan.span
        assert plan.wide_length <= runs and plan.wide_length % (blocked.VECTOR_BYTES // np.dtype(dtype).itemsize) == 0
        # the split planes hold the phases of a run's samples, every output cell is
        # in a block, and the runs hold the batch
        assert plan.span >= g.sh * g.sw * runs_of * plan.hq * plan.wq and runs >= (g.oh * runs_of - 1) * plan.wq + g.ow
        assert plan.runs * runs_of >= g.n > (plan.runs - 1) * runs_of
    for runs_of in {1, blocked.input_runs_of(g, np.dtype(dtype)), g.n}:
        inputs = blocked._input_plan(g, np.dtype(dtype), runs_of)
        runs = inputs.blocks * inputs.block_cells
        assert inputs.offsets.min(initial=0) >= 0 and inputs.offsets.max(initial=0) + runs <= kg * inputs.span
        # grad_output fits its shifted planes, which hold every row a phase cell reads
        assert inputs.rows * runs_of * inputs.pitch <= inputs.span
        assert inputs.top + g.oh <= inputs.rows and inputs.left + g.ow <= inputs.pitch
        assert inputs.first[-1] == len(inputs.offsets) == kg * g.kh * g.kw
        # each phase's region is the input cells of its phase, and every one is in a block
        y0, x0, height, width = inputs.regions.T
        assert sorted((a + g.sh * (y0[p] + i) - g.pt, b + g.sw * (x0[p] + j) - g.pl) for p, (a, b) in enumerate(np.ndindex(g.sh, g.sw)) for i in range(height[p]) for j in range(width[p])) == sorted(np.ndindex(g.h, g.w))
        assert (x0 + width).max() <= inputs.pitch and runs >= ((height * runs_of - 1) * inputs.pitch + width).max()


@pytest.mark.parametrize("dtype", DTYPES)
def test_weight_gradient_is_bitwise_the_same_on_any_thread_count(dtype, rng):
    x = rng.standard_normal((3, 16, 11, 13)).astype(dtype)
    gy = rng.standard_normal((3, 24, 6, 7)).astype(dtype)
    kw = dict(stride=2, padding=1)
    runs = []
    for threads in (1, 2, 1):
        with fastconv.num_threads(threads), fastconv.dispatch.force_path("blocked"):
            runs.append(grad.conv2d_weight(x, (24, 16, 3, 3), gy, **kw))
    assert all(np.array_equal(runs[0], r) for r in runs[1:])


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 9), st.integers(1, 3), st.integers(1, 12), st.integers(1, 20), st.integers(1, 4), st.integers(1, 4),
    st.integers(1, 3), st.integers(1, 2), st.integers(0, 2), st.integers(0, 10), st.integers(0, 10), st.sampled_from(DTYPES),
)
def test_workers_sharing_runs(n, groups, cg, kg, kh, kw, stride, dilation, padding, extra_h, extra_w, dtype):
    # forward and weight_grad split their units of work (the runs of samples, or the
    # weight gradient's parts of runs, then the blocks of a run) between workers,
    # each splitting the input planes its blocks read: every thread count sums
    # alike, whatever this machine's, and agrees with the reference
    rng = np.random.default_rng(n * 1000 + cg * 10 + kg)
    h, w = (kh - 1) * dilation + 1 + extra_h, (kw - 1) * dilation + 1 + extra_w
    x = rng.standard_normal((n, groups * cg, h, w)).astype(dtype)
    weight = rng.standard_normal((groups * kg, cg, kh, kw)).astype(dtype)
    g = conv2d_geometry(x.shape, weight.shape, stride, padding, dilation, groups)
    gy = rng.standard_normal(g.output_shape).astype(dtype)
    kw_ = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    for compute, expected in ((lambda t: blocked.forward(x, weight, g, t), reference.conv2d(x, weight, **kw_)),
                              (lambda t: blocked.weight_grad(x, gy, g, t, channels=False), reference.conv2d_weight(x, weight.shape, gy, **kw_)),
                              (lambda t: blocked.weight_grad(x, gy, g, t, channels=True), reference.conv2d_weight(x, weight.shape, gy, **kw_))):
        runs = [compute(threads) for threads in (1, 2, 3, 5, 16)]
        assert all(np.array_equal(runs[0], r) for r in runs[1:])
        assert_close(runs[0], expected, dtype)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 3), st.integers(1, 20), st.integers(1, 20), st.integers(1, 25), st.booleans(), st.sampled_from([3, 4, 6, 8, 12, 16]), st.sampled_from(DTYPES), st.data())
def test_interleave_weights_against_numpy(groups, kg, cg, kernel_taps, across, block_rows, dtype, data):
    # any taps of the kernel in any order (a stride-2 phase's, the flipped kernel's)
    # or a run of them in order (the forward's and the stride-1 input gradient's,
    # transposed by squares)
    if data.draw(st.booleans()):
        start = data.draw(st.integers(0, kernel_taps - 1))
        drawn = list(range(start, data.draw(st.integers(start, kernel_taps))))
    else:
        drawn = data.draw(st.lists(st.integers(0, kernel_taps - 1), max_size=kernel_taps, unique=True))
    taps = np.array(drawn, dtype=np.int64)
    weight = np.random.default_rng(groups * 100 + kg * 10 + cg).standard_normal((groups * kg, cg, kernel_taps)).astype(dtype)
    picked = weight[:, :, taps].reshape(groups, kg, cg, len(taps))
    rows = picked.transpose(0, 2, 1, 3) if across else picked  # (groups, outs, inner, T)
    outs = rows.shape[1]
    blocks, terms = -(-outs // block_rows), rows.shape[2] * len(taps)
    padded = np.zeros((groups, blocks * block_rows, terms), dtype=dtype)
    padded[:, :outs] = rows.reshape(groups, outs, terms)
    expected = padded.reshape(groups, blocks, block_rows, terms).transpose(0, 1, 3, 2).reshape(-1)
    out = np.full(expected.size, np.nan, dtype=dtype)
    blocked.interleave_weights(weight, groups, taps, across, block_rows, out)
    assert np.array_equal(out, expected)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 4), st.integers(1, 9), st.integers(1, 12), st.sampled_from([3, 8, 12]), st.sampled_from(DTYPES), st.data())
def test_select_taps_against_numpy(units, kernel_taps, inner, block_rows, dtype, data):
    # each phase's taps of the interleaved kernels (a stride-2 layer's: any subset
    # in any order, some phases without any)
    phases = [data.draw(st.lists(st.integers(0, kernel_taps - 1), max_size=kernel_taps, unique=True)) for _ in range(data.draw(st.integers(1, 4)))]
    kernels = np.random.default_rng(units * 100 + kernel_taps).standard_normal(units * inner * kernel_taps * block_rows).astype(dtype)
    expected = [kernels.reshape(units, inner, kernel_taps, block_rows)[:, :, phase].reshape(-1) for phase in phases]
    first = np.cumsum([0] + [e.size for e in expected]).astype(np.int64)
    tap_first = np.cumsum([0] + [len(phase) for phase in phases]).astype(np.int64)
    taps = np.array([t for phase in phases for t in phase], dtype=np.int64)
    out = np.full(int(first[-1]), np.nan, dtype=dtype)
    blocked.select_taps(kernels, kernel_taps, taps, tap_first, first, units, block_rows, out)
    assert np.array_equal(out, np.concatenate(expected))


@given(st.integers(1, 12), st.integers(1, 12), st.integers(1, 14))
def test_sweeps_take_every_block_once(blocks, kbs, sweep):
    tasks = [blocked.block_of_task(t, blocks, kbs, sweep) for t in range(blocks * kbs)]
    assert sorted(tasks) == [(b, kb) for b in range(blocks) for kb in range(kbs)]
    # sweep after sweep of channel blocks, each over every block of cells in turn
    sweeps = [kb // sweep for _, kb in tasks]
    assert sweeps == sorted(sweeps)
    assert all(tasks[t][0] <= tasks[t + 1][0] for t in range(len(tasks) - 1) if sweeps[t] == sweeps[t + 1])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("sweep", [1, 2, 3])
def test_sums_in_sweeps_of_channel_blocks(sweep, stride, dtype, monkeypatch, rng):
    # 4 blocks of 8 output channels (the forward) and of input channels (the
    # input gradient), in sweeps of 1, 2 (even) and 3 (the last one short): the
    # same sums as in one sweep, on 1 or 2 threads
    x = rng.standard_normal((3, 30, 11, 9)).astype(dtype)
    weight = rng.standard_normal((29, 30, 3, 3)).astype(dtype)
    g = conv2d_geometry(x.shape, weight.shape, stride, 1)
    gy = rng.standard_normal(g.output_shape).astype(dtype)
    whole = [blocked.forward(x, weight, g, 2), blocked.input_grad(weight, gy, g, 2)]
    monkeypatch.setattr(blocked, "SWEEP_BYTES", sweep * blocked.BLOCK[0] * 30 * 9 * np.dtype(dtype).itemsize)
    assert blocked._sweep(blocked.BLOCK[0], 30 * 9, dtype) == sweep
    for threads in (1, 2):
        assert np.array_equal(blocked.forward(x, weight, g, threads), whole[0])
        assert np.array_equal(blocked.input_grad(weight, gy, g, threads), whole[1])
    assert_close(whole[0], reference.conv2d(x, weight, stride=stride, padding=1), dtype)
    assert_close(whole[1], reference.conv2d_input(x.shape, weight, gy, stride=stride, padding=1), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_channel_blocks_hold_the_channels_in_the_fewest_lanes(dtype):
    lanes = blocked.VECTOR_BYTES // np.dtype(dtype).itemsize
    for kg in range(1, 300):
        vectors, kbs = blocked.channel_vectors(kg, dtype)
        fewest = min(-(-kg // (v * lanes)) * v for v in range(1, blocked.CHANNEL_VECTORS + 1))
        assert 1 <= vectors <= blocked.CHANNEL_VECTORS and vectors * kbs == fewest and vectors * kbs * lanes >= kg


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", [1, 2, 3, 5])
def test_weight_gradient_by_channels_in_chunks_of_rows(rows, dtype, monkeypatch, rng):
    # chunks of 1, 2, 3 and 5 output rows of a run's 44 (four samples of 11: the
    # last chunk short), every block's sums carried from chunk to chunk
    x = rng.standard_normal((4, 16, 11, 13)).astype(dtype)
    g = conv2d_geometry(x.shape, (40, 16, 3, 3), 1, 1)
    gy = rng.standard_normal(g.output_shape).astype(dtype)
    whole = blocked.weight_grad(x, gy, g, 2, channels=True)
    kp = np.prod(blocked.channel_vectors(40, dtype)) * blocked.VECTOR_BYTES
    monkeypatch.setattr(blocked, "CHUNK_BYTES", rows * kp * g.ow)
    for threads in (1, 2, 3):
        assert np.array_equal(blocked.weight_grad(x, gy, g, threads, channels=True), whole)
    assert_close(whole, reference.conv2d_weight(x, (40, 16, 3, 3), gy, padding=1), dtype)


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 5), st.integers(1, 2), st.integers(1, 9), st.sampled_from([33, 48, 70, 130]), st.integers(1, 3), st.integers(1, 2),
       st.integers(1, 9), st.sampled_from(DTYPES))
def test_weight_gradient_by_channel_blocks(n, groups, cg, kg, kernel, stride, side, dtype):
    # several blocks of output channels a group, row blocks a channel's taps end
    # inside, units of work splitting a run's blocks between workers (each
    # transposing its own channels), partial runs: every thread count sums alike
    rng = np.random.default_rng(n * 1000 + cg * 10 + kg)
    x = rng.standard_normal((n, groups * cg, kernel + side, kernel + side + 1)).astype(dtype)
    weight_shape = (groups * kg, cg, kernel, kernel)
    g = conv2d_geometry(x.shape, weight_shape, stride, 1, 1, groups)
    gy = rng.standard_normal(g.output_shape).astype(dtype)
    expected = reference.conv2d_weight(x, weight_shape, gy, stride=stride, padding=1, groups=groups)
    runs = [blocked.weight_grad(x, gy, g, threads, channels=True) for threads in (1, 2, 3, 7)]
    assert all(np.array_equal(runs[0], r) for r in runs[1:])
    assert_close(runs[0], expected, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("stride", [1, 2])
def test_scratch_kept_between_calls_holds_no_stale_cells(stride, dtype, rng):
    # each pass's split planes, interleaved weights and sums are kept between calls
    # of a geometry: a second call on other data (NaN-free, after one whose data
    # was all large) gets the same results as the reference, every path's scratch
    # reused (the input gradient by the flipped forward at stride 1, the weight
    # gradient both ways), with a partial run of samples at the end of the batch
    x_shape = (5, 40, 9, 11)
    g = conv2d_geometry(x_shape, (48, 40, 3, 3), stride, 1)
    kw = dict(stride=stride, padding=1)
    for scale in (1e6, 1.0):
        weight = (scale * rng.standard_normal((48, 40, 3, 3))).astype(dtype)
        x = (scale * rng.standard_normal(x_shape)).astype(dtype)
        gy = (scale * rng.standard_normal(g.output_shape)).astype(dtype)
        assert_close(blocked.forward(x, weight, g, 2), reference.conv2d(x, weight, **kw), dtype)
        assert_close(blocked.input_grad(weight, gy, g, 2), reference.conv2d_input(x_shape, weight, gy, **kw), dtype)
        with dispatch.force_path("blocked"):
            assert_close(dispatch.input_grad(weight, gy, g), reference.conv2d_input(x_shape, weight, gy, **kw), dtype)
        for channels in (False, True):
            assert_close(blocked.weight_grad(x, gy, g, 2, channels=channels), reference.conv2d_weight(x, weight.shape, gy, **kw), dtype)


def test_scratch_stays_within_its_bytes(monkeypatch):
    monkeypatch.setattr(blocked, "SCRATCH_BYTES", 1000)
    monkeypatch.setattr(blocked._scratch, "arrays", None, raising=False)
    first = blocked._kept_zeros("a", (100,), np.float64)
    assert blocked._kept_zeros("a", (100,), np.float64) is first
    blocked._kept_zeros("b", (100,), np.float64)  # 1600 bytes together: "a" dropped
    assert blocked._kept_zeros("a", (100,), np.float64) is not first


@pytest.mark.parametrize("dtype", DTYPES)
def test_input_gradient_zeroes_the_phases_no_tap_reaches(dtype, rng):
    # a 2x2 kernel dilated by 2 at stride 2 reaches one phase of four; the others
    # are zeros, whatever the memory gx was given held before
    x_shape, w = (3, 8, 13, 12), rng.standard_normal((16, 8, 2, 2)).astype(dtype)
    g = conv2d_geometry(x_shape, w.shape, 2, 1, 2)
    gy = rng.standard_normal(g.output_shape).astype(dtype)
    expected = reference.conv2d_input(x_shape, w, gy, stride=2, padding=1, dilation=2)
    for _ in range(3):
        junk = np.full(x_shape, np.nan, dtype=dtype)
        del junk
        assert_close(blocked.input_grad(w, gy, g, 2), expected, dtype)


def test_avx2_blocks(tmp_path):
    # Without AVX-512 the blocks are of 32-byte vectors (VECTOR_BYTES): the blocked
    # grid, property and intrinsic tests again, compiled for an AVX2 machine.
    if os.environ.get("NUMBA_CPU_NAME"):
        pytest.skip("already run for another CPU")
    env = dict(os.environ, NUMBA_CPU_NAME="haswell", NUMBA_CPU_FEATURES=",".join(HASWELL), NUMBA_CACHE_DIR=str(tmp_path))
    check = "from fastconv.kernels import blocked; assert blocked.VECTOR_BYTES == 32, blocked.VECTOR_BYTES"
    subprocess.run([sys.executable, "-c", check], env=env, check=True)
    tests = ["tests/test_blocked.py", "tests/test_conv_kernels.py", "-k", "blocked and (paths or random or blocked)"]
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


HASWELL = ["+avx", "+avx2", "+fma", "+f16c", "+bmi", "+bmi2", "+lzcnt", "+movbe", "+popcnt", "+sse4.2"]


@given(st.integers(1, 300), st.integers(1, 300))
def test_runs_of_samples_leave_the_fewest_places_empty(n, want):
    runs_of = blocked._even_runs(n, want)
    assert 1 <= runs_of <= n
    empty = -(-n // runs_of) * runs_of - n
    # no count from half to twice `want` leaves fewer places past the batch empty
    for other in range(max(1, min(n, -(-want // 2))), min(n, 2 * want) + 1):
        assert -(-n // other) * other - n >= empty
    if want <= n and n % want == 0:
        assert runs_of == want
