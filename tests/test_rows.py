"""Convolution by rows (fastconv.kernels.rows): its intrinsics against NumPy over
random arguments, its kernels against fastconv.reference over random geometries
(negative padding too: the input gradient's adjoint geometry), and its masked
loads and stores kept inside their arrays, which NUMBA_BOUNDSCHECK does not check:
arrays laid against pages that may not be touched. Its results as a dispatch path
are in test_conv_kernels."""

import os
import subprocess
import sys

import numba
import numpy as np
import pytest
from fastconv.kernels import rows
from hypothesis import given, settings
from hypothesis import strategies as st

import fastconv
from fastconv import reference
from fastconv.params import conv2d_geometry
from fastconv.threads import cpu_count
from tests.conftest import assert_close

DTYPES = [np.float32, np.float64]
SENTINEL = 7.5  # cells the intrinsics must not write


# (tap rows, outputs, stride along the row, and down the height for shared rows):
# the intrinsics
ROW_SUMS = {(0, 1, 1): rows.row_sums, (0, 1, 2): rows.strided_row_sums, (3, 1, 1): rows.row_sums3, (5, 1, 1): rows.row_sums5,
            (7, 1, 1): rows.row_sums7, (3, 3, 1): rows.block_row_sums3, (5, 3, 1): rows.block_row_sums5, (7, 3, 1): rows.block_row_sums7,
            (3, 1, 2): rows.strided_row_sums3, (5, 1, 2): rows.strided_row_sums5, (7, 1, 2): rows.strided_row_sums7}


def _row_sums_of(variant):
    intrinsic = ROW_SUMS[variant]

    @numba.njit
    def call(*args):
        intrinsic(*args)

    return call


_ROW_SUMS_CALLS = {}


@numba.njit
def _row_dots(stride, out, out_at, count, g, g_at, g_row, x, x_at, x_row, rows_, cells, dw, left, width):
    if stride == 2:
        rows.strided_row_dots(out, out_at, count, g, g_at, g_row, x, x_at, x_row, rows_, cells, dw, left, width)
    else:
        rows.row_dots(out, out_at, count, g, g_at, g_row, x, x_at, x_row, rows_, cells, dw, left, width)


@numba.njit
def _shared_row_dots(variant, out, out_at, out_row, count, g, g_at, g_row, g_rows, x, x_at, top, height, cells, dw, left, width, samples, g_sample, x_sample):
    args = (out, out_at, out_row, count, g, g_at, g_row, g_rows, x, x_at, top, height, cells, dw, left, width, samples, g_sample, x_sample)
    if variant == 3:
        rows.row_dots3(*args)
    elif variant == 5:
        rows.row_dots5(*args)
    else:
        rows.row_dots7(*args)


@st.composite
def row_sums_args(draw):
    variant = draw(st.sampled_from(sorted(ROW_SUMS)))
    tap_rows, outputs, stride = variant
    kh = tap_rows or draw(st.integers(1, 4))
    sh, dh = (stride, 1) if tap_rows else (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    most = rows.ROWS if not tap_rows else rows.SHARED_ROWS if outputs == 1 else rows.BLOCK_ROWS
    return dict(
        variant=variant, stride=stride, kh=kh, sh=sh, dh=dh, kw=draw(st.integers(1, 6)), dw=1 if tap_rows and stride == 2 else draw(st.integers(1, 3)),
        height=draw(st.integers(1, 12)), width=draw(st.integers(1, 40)), cells=draw(st.integers(1, 40)), rows_apart=draw(st.integers(1, 3)),
        left=draw(st.integers(-5, 8)), top=draw(st.integers(-6, 10)), channels=draw(st.integers(1, 3)),
        count=draw(st.integers(1, most)), present=draw(st.integers(1, outputs)),
        dtype=draw(st.sampled_from(DTYPES)), seed=draw(st.integers(0, 2**16)),
    )


@settings(max_examples=200, deadline=None)
@given(row_sums_args())
def test_row_sums_against_numpy(a):
    rng = np.random.default_rng(a["seed"])
    dtype, kh, kw, width, height = a["dtype"], a["kh"], a["kw"], a["width"], a["height"]
    # the input's rows rows_apart rows of the width apart (a dilated kernel's class
    # of rows)
    x_row = a["rows_apart"] * width
    x_at, x_channel = 5, height * x_row + 3
    w_at, w_channel = 2, kh * kw + 1
    w_out = a["channels"] * w_channel + 2
    out_at, out_row = 3, a["cells"] + 7
    out_channel = rows.SHARED_ROWS * out_row + 4
    x = rng.standard_normal(x_at + a["channels"] * x_channel).astype(dtype)
    # the weights of the present output channels only: the others' are never read
    w = rng.standard_normal(w_at + a["present"] * w_out).astype(dtype)
    out = np.full(out_at + rows.OUTPUTS * out_channel, SENTINEL, dtype=dtype)
    expected = out.copy()
    for o in range(a["present"]):
        for m in range(a["count"]):
            row = np.zeros(a["cells"])
            for c in range(a["channels"]):
                for i in range(kh):
                    y = a["top"] + m * a["sh"] + i * a["dh"]
                    if not 0 <= y < height:
                        continue
                    for j in range(kw):
                        for q in range(a["cells"]):
                            col = q * a["stride"] - a["left"] + j * a["dw"]
                            if 0 <= col < width:
                                row[q] += w[w_at + o * w_out + c * w_channel + i * kw + j] * x[x_at + c * x_channel + y * x_row + col]
            at = out_at + o * out_channel + m * out_row
            expected[at : at + a["cells"]] = row
    call = _ROW_SUMS_CALLS.setdefault(a["variant"], _row_sums_of(a["variant"]))
    call(out, out_at, out_row, out_channel, a["present"], a["count"], a["cells"], x, x_at, x_channel, a["top"], a["sh"], height, a["channels"],
         w, w_at, w_out, w_channel, kh, kw, a["dh"], a["dw"], a["left"], width, x_row)
    assert_close(out, expected, dtype)


@settings(max_examples=100, deadline=None)
@given(
    st.integers(1, 2), st.integers(1, rows.DOT_TAPS), st.integers(1, 6), st.integers(1, 40), st.integers(1, 40), st.integers(-5, 8),
    st.integers(1, 3), st.sampled_from(DTYPES), st.integers(0, 2**16),
)
def test_row_dots_against_numpy(stride, count, rows_, cells, width, left, dw, dtype, seed):
    rng = np.random.default_rng(seed)
    g_at, g_row, x_at, x_row, out_at = 4, cells + 2, 6, width + 5, 1
    g = rng.standard_normal(g_at + rows_ * g_row).astype(dtype)
    # infinities past the cells g reaches: never multiplied by the zeros past g
    x = np.full(x_at + rows_ * x_row, np.inf, dtype=dtype)
    for r in range(rows_):
        x[x_at + r * x_row : x_at + r * x_row + width] = rng.standard_normal(width)
        for col in range(width):
            if not any(0 <= col + left - j * dw < stride * cells and (col + left - j * dw) % stride == 0 for j in range(count)):
                x[x_at + r * x_row + col] = np.inf
    out = rng.standard_normal(out_at + rows.DOT_TAPS + 2).astype(dtype)
    expected = out.astype(np.float64)
    for j in range(count):
        for r in range(rows_):
            for q in range(cells):
                col = q * stride - left + j * dw
                if 0 <= col < width:
                    expected[out_at + j] += g[g_at + r * g_row + q] * x[x_at + r * x_row + col]
    _row_dots(stride, out, out_at, count, g, g_at, g_row, x, x_at, x_row, rows_, cells, dw, left, width)
    assert_close(out, expected, dtype, scale=np.abs(expected).max() + cells * rows_)


@settings(max_examples=100, deadline=None)
@given(
    st.sampled_from([3, 5, 7]), st.integers(1, rows.DOT_TAPS), st.integers(1, 10), st.integers(1, 12), st.integers(-6, 8),
    st.integers(1, 40), st.integers(1, 40), st.integers(-5, 8), st.integers(1, 3), st.integers(1, 3), st.sampled_from(DTYPES), st.integers(0, 2**16),
)
def test_shared_row_dots_against_numpy(variant, count, g_rows, height, top, cells, width, left, dw, samples, dtype, seed):
    rng = np.random.default_rng(seed)
    g_at, g_row, x_at, out_at, out_row = 4, cells + 2, 6, 1, rows.DOT_TAPS + 3
    # the samples' planes apart by more than a plane
    g_sample, x_sample = g_rows * g_row + 5, height * width + 3
    g = rng.standard_normal(g_at + samples * g_sample).astype(dtype)
    x = rng.standard_normal(x_at + samples * x_sample).astype(dtype)
    out = rng.standard_normal(out_at + variant * out_row).astype(dtype)
    expected = out.astype(np.float64)
    for s in range(samples):
        for i in range(variant):
            for j in range(count):
                for y in range(g_rows):
                    if not 0 <= top + y + i < height:
                        continue
                    for q in range(cells):
                        col = q - left + j * dw
                        if 0 <= col < width:
                            expected[out_at + i * out_row + j] += g[g_at + s * g_sample + y * g_row + q] * x[x_at + s * x_sample + (top + y + i) * width + col]
    _shared_row_dots(variant, out, out_at, out_row, count, g, g_at, g_row, g_rows, x, x_at, top, height, cells, dw, left, width, samples, g_sample, x_sample)
    assert_close(out, expected, dtype, scale=np.abs(expected).max() + samples * cells * g_rows)


@numba.njit
def _phase_row_sums(shared, out, out_at, out_row, count, cells, g, g_at, g_channel, g_top, g_height, channels, rows_, g_step, w, w_at, w_channel, w_step, kw, dw, left, g_width):
    args = (out, out_at, out_row, count, cells, g, g_at, g_channel, g_top, g_height, channels, rows_, g_step, w, w_at, w_channel, w_step, kw, dw, left, g_width)
    if not shared:
        rows.phase_row_sums(*args)
    elif rows_ == 1:
        rows.phase_row_sums1(*args)
    elif rows_ == 2:
        rows.phase_row_sums2(*args)
    elif rows_ == 3:
        rows.phase_row_sums3(*args)
    else:
        rows.phase_row_sums4(*args)


@settings(max_examples=150, deadline=None)
@given(
    st.booleans(), st.integers(1, rows.PHASE_ROWS), st.integers(1, 40), st.integers(-3, 6), st.integers(1, 10), st.integers(1, 3), st.integers(0, 4),
    st.integers(-2, 0), st.integers(1, 5), st.integers(1, 3), st.integers(-3, 5), st.integers(1, 20), st.sampled_from(DTYPES), st.integers(0, 2**16),
)
def test_phase_row_sums_against_numpy(shared, count, cells, g_top, g_height, channels, rows_, g_step, kw, dw, left, g_width, dtype, seed):
    # shared: phase_row_sums1 to 4, for 1-4 tap rows one row of g apart
    # (PHASE_ROWS rows); else the general sums (ROWS rows)
    if shared:
        rows_, g_step = max(1, rows_), -1
    else:
        count = min(count, rows.ROWS)
    rng = np.random.default_rng(seed)
    g_at, g_channel, w_at, w_step, out_at, out_row = 3, g_height * g_width + 2, 1, kw + 1, 2, cells + 5
    w_channel = max(1, rows_) * w_step + 1
    g = rng.standard_normal(g_at + channels * g_channel).astype(dtype)
    w = rng.standard_normal(w_at + channels * w_channel).astype(dtype)
    out = np.full(out_at + rows.PHASE_ROWS * out_row, SENTINEL, dtype=dtype)
    expected = out.copy()
    for m in range(count):
        row = np.zeros(cells)
        for c in range(channels):
            for r in range(rows_):
                y = g_top + m + r * g_step
                if not 0 <= y < g_height:
                    continue
                for j in range(kw):
                    for p in range(cells):
                        shift = p + left - j * dw
                        if shift % 2 == 0 and 0 <= shift // 2 < g_width:
                            row[p] += w[w_at + c * w_channel + r * w_step + j] * g[g_at + c * g_channel + y * g_width + shift // 2]
        expected[out_at + m * out_row : out_at + m * out_row + cells] = row
    _phase_row_sums(shared, out, out_at, out_row, count, cells, g, g_at, g_channel, g_top, g_height, channels, rows_, g_step, w, w_at, w_channel, w_step, kw, dw, left, g_width)
    assert_close(out, expected, dtype)


@st.composite
def geometries(draw):
    """Layers of one input channel a group or a few, of one output channel a group
    up to blocks of OUTPUTS and a part, any kernel, dilation and padding (bottom
    and right too), stride 1 or 2 along the width."""
    groups, cg, kg = draw(st.integers(1, 4)), draw(st.integers(1, 3)), draw(st.integers(1, 5))
    kh, kw = draw(st.sampled_from([1, 2, 3, 4, 5, 7])), draw(st.integers(1, 5))
    dh, dw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    padding = tuple(draw(st.integers(0, 4)) for _ in range(4))
    h = draw(st.integers(max(1, dh * (kh - 1) + 1 - padding[0] - padding[1]), 24))
    w = draw(st.integers(max(1, dw * (kw - 1) + 1 - padding[2] - padding[3]), 40))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 2))
    x_shape, w_shape = (draw(st.integers(1, 3)), groups * cg, h, w), (groups * kg, cg, kh, kw)
    kw_ = dict(stride=(sh, sw), padding=((padding[0], padding[1]), (padding[2], padding[3])), dilation=(dh, dw), groups=groups)
    return x_shape, w_shape, kw_


@settings(max_examples=80, deadline=None)
@given(geometries(), st.sampled_from(DTYPES), st.integers(1, 8), st.integers(0, 2**16))
def test_rows_against_reference(shapes, dtype, threads, seed):
    # `threads` as weight_grad counts them (chunks of the batch), on up to the
    # cores there are
    rng = np.random.default_rng(seed)
    x_shape, w_shape, kw = shapes
    x, w = rng.standard_normal(x_shape).astype(dtype), rng.standard_normal(w_shape).astype(dtype)
    y = reference.conv2d(x, w, **kw)
    gy = rng.standard_normal(y.shape).astype(dtype)
    g = conv2d_geometry(x.shape, w.shape, **kw)
    assert rows.applicable(g, "forward") and rows.applicable(g, "weight")
    with fastconv.num_threads(min(threads, cpu_count())):
        out = rows.forward(x, w, g, threads)
        gw = rows.weight_grad(x, gy, g, threads)
        assert np.array_equal(rows.weight_grad(x, gy, g, threads), gw)
        assert_close(out, y, dtype)
        assert_close(gw, reference.conv2d_weight(x, w.shape, gy, **kw), dtype)
        if rows.applicable(g, "input"):
            gx = rows.input_grad(w, gy, g, threads)
            assert_close(gx, reference.conv2d_input(x.shape, w, gy, **kw), dtype)
    # on one thread, the planes in one part each: the same cells, the same sums
    with fastconv.num_threads(1):
        assert np.array_equal(rows.forward(x, w, g, 1), out)
        if rows.applicable(g, "input"):
            assert np.array_equal(rows.input_grad(w, gy, g, 1), gx)


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_batch_of_one_in_parts_of_rows(dtype, rng):
    # one plane out (the forward of a 1-channel output layer, the weight gradient
    # of one sample): its rows split between threads, as many parts as asked for
    x = rng.standard_normal((1, 6, 19, 37)).astype(dtype)
    w = rng.standard_normal((1, 6, 3, 3)).astype(dtype)
    kw = dict(padding=1)
    g = conv2d_geometry(x.shape, w.shape, **kw)
    gy = rng.standard_normal(g.output_shape).astype(dtype)
    expected = reference.conv2d_weight(x, w.shape, gy, **kw)
    whole = rows.forward(x, w, g, 1)
    assert_close(whole, reference.conv2d(x, w, **kw), dtype)
    for threads in (2, 3, 8):
        assert rows._parts(1, 5, threads) > 1
        assert np.array_equal(rows.forward(x, w, g, threads), whole)
        assert_close(rows.weight_grad(x, gy, g, threads), expected, dtype)
    xs = rng.standard_normal((1, 2, 19, 37)).astype(dtype)
    ws = rng.standard_normal((2, 1, 3, 3)).astype(dtype)
    gs = conv2d_geometry(xs.shape, ws.shape, stride=2, padding=1, groups=2)
    gys = rng.standard_normal(gs.output_shape).astype(dtype)
    expected = reference.conv2d_input(xs.shape, ws, gys, stride=2, padding=1, groups=2)
    assert np.array_equal(rows.input_grad(ws, gys, gs, 5), rows.input_grad(ws, gys, gs, 1))
    assert_close(rows.input_grad(ws, gys, gs, 5), expected, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_weight_gradient_over_chunks_of_the_batch(dtype, rng):
    # fewer output channels than PARTS a thread: the batch is split into chunks,
    # summed after
    x = rng.standard_normal((7, 2, 9, 11)).astype(dtype)
    w = rng.standard_normal((2, 1, 3, 3)).astype(dtype)
    gy = rng.standard_normal((7, 2, 9, 11)).astype(dtype)
    g = conv2d_geometry(x.shape, w.shape, padding=1, groups=2)
    expected = reference.conv2d_weight(x, w.shape, gy, padding=1, groups=2)
    for threads in (1, 2, 3):
        with fastconv.num_threads(min(threads, cpu_count())):
            assert_close(rows.weight_grad(x, gy, g, threads), expected, dtype)


GUARDED = """
import ctypes, mmap, sys
import numpy as np
from fastconv.kernels import rows
from fastconv.params import conv2d_geometry

libc = ctypes.CDLL(None)
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
PAGE = mmap.PAGESIZE
kept = []


def guarded(shape, dtype, at_end):
    # an array laid right after a page that may not be touched (at_end: right
    # before one), filled with random values
    size = int(np.prod(shape)) * np.dtype(dtype).itemsize
    pages = -(-size // PAGE)
    memory = mmap.mmap(-1, (pages + 2) * PAGE)
    base = ctypes.addressof(ctypes.c_char.from_buffer(memory))
    for page in (0, pages + 1):
        assert libc.mprotect(base + page * PAGE, PAGE, 0) == 0
    offset = PAGE + (pages * PAGE - size if at_end else 0)
    a = np.frombuffer(memory, dtype=dtype, count=size // np.dtype(dtype).itemsize, offset=offset).reshape(shape)
    a[...] = np.random.default_rng(0).standard_normal(shape)
    kept.append(memory)
    return a


for dtype in (np.float32, np.float64):
    for x_shape, w_shape, kw in [
        ((2, 3, 5, 7), (3, 1, 3, 3), dict(padding=1, groups=3)),
        ((1, 2, 6, 17), (4, 1, 5, 5), dict(padding=((4, 1), (0, 4)), groups=2)),
        ((2, 2, 7, 33), (2, 1, 3, 2), dict(padding=((0, 2), (3, 1)), dilation=(2, 3), groups=2)),
        ((1, 3, 9, 5), (3, 1, 4, 3), dict(stride=(2, 1), padding=2, groups=3)),
        ((1, 1, 3, 3), (1, 1, 3, 3), dict(padding=4, dilation=2)),
        ((1, 4, 10, 19), (6, 2, 5, 5), dict(padding=((5, 2), (4, 4)), dilation=(3, 2), groups=2)),
        ((2, 2, 9, 9), (2, 1, 7, 7), dict(padding=5, dilation=2, groups=2)),
        ((2, 2, 6, 11), (5, 2, 3, 3), dict(padding=1)),
        ((1, 4, 9, 13), (8, 2, 5, 5), dict(padding=2, groups=2)),
        ((1, 2, 8, 8), (4, 1, 7, 7), dict(padding=(3, 0), groups=2)),
        ((2, 3, 9, 17), (3, 1, 3, 3), dict(stride=2, padding=1, groups=3)),
        ((1, 2, 12, 31), (2, 1, 5, 5), dict(stride=2, padding=((2, 4), (3, 2)), groups=2)),
        ((2, 1, 15, 16), (1, 1, 7, 7), dict(stride=2, padding=3)),
        ((1, 2, 11, 34), (4, 1, 5, 4), dict(stride=(3, 2), padding=((2, 0), (0, 3)), dilation=(1, 2), groups=2)),
        ((1, 1, 4, 5), (1, 1, 3, 3), dict(stride=2, padding=3, dilation=2)),
    ]:
        g = conv2d_geometry(x_shape, w_shape, **kw)
        for at_end in (False, True):
            x, w = guarded(x_shape, dtype, at_end), guarded(w_shape, dtype, at_end)
            out, gy = guarded(g.output_shape, dtype, at_end), guarded(g.output_shape, dtype, not at_end)
            rows.forward_planes(x, w, out, g.groups, g.pt, g.pl, g.sh, g.sw, g.dh, g.dw, 2)
            partial = guarded((1, *g.weight_shape), dtype, at_end)
            rows.weight_planes(x, gy, partial, g.groups, g.pt, g.pl, g.sh, g.sw, g.dh, g.dw, 2)
            # whole samples: a shared dots call over all of them
            rows.weight_planes(x, gy, partial, g.groups, g.pt, g.pl, g.sh, g.sw, g.dh, g.dw, 1)
            gx = guarded(g.input_shape, dtype, at_end)
            if g.sw == 2:
                rows.input_planes(w, gy, gx, g.groups, g.pt, g.pl, g.sh, g.dh, g.dw, 2)
            elif g.sh == 1:
                a = rows._adjoint(g)
                rows.forward_planes(gy, guarded((x_shape[1], w_shape[0] // g.groups) + w_shape[2:], dtype, at_end), gx, a.groups, a.pt, a.pl, a.sh, a.sw, a.dh, a.dw, 2)
print("inside")
"""


def test_rows_stay_inside_their_arrays(tmp_path):
    # every array laid against a page that may not be touched, before and after
    # it: a load or store past its edge (a mask that lets a lane through) stops
    # the process
    result = subprocess.run([sys.executable, "-c", GUARDED], capture_output=True, text=True, env=dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path)))
    assert result.returncode == 0 and "inside" in result.stdout, (result.returncode, result.stderr[-3000:])


def test_avx2_rows(tmp_path):
    # Without AVX-512 the vectors are of 32 bytes: the row tests and the path's
    # grid and property tests again, compiled for an AVX2 machine.
    if os.environ.get("NUMBA_CPU_NAME"):
        pytest.skip("already run for another CPU")
    from tests.test_blocked import HASWELL

    env = dict(os.environ, NUMBA_CPU_NAME="haswell", NUMBA_CPU_FEATURES=",".join(HASWELL), NUMBA_CACHE_DIR=str(tmp_path))
    tests = ["tests/test_rows.py", "tests/test_conv_kernels.py", "-k", "(rows and not avx2 and not inside) or (rows and (paths or random))"]
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
