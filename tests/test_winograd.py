"""The Winograd path (stride-1 3x3 convolutions of one group) against fastconv.reference
over a grid and random shapes: forward, input gradient (its adjoint forward) and
weight gradient, both dtypes, 1 and 2 threads; its transforms in registers against
NumPy's matrix products; its fallback to the direct kernels where an output is not
finite."""

import numpy as np
import pytest
from fastconv.kernels import winograd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numba import njit

import fastconv
from fastconv import dispatch, grad, reference
from fastconv.params import conv2d_geometry
from tests.conftest import assert_close

DTYPES = [np.float32, np.float64]

GRID = [
    # (N, C, K, H, W, padding, dilation)
    (2, 3, 4, 7, 9, 1, 1),  # odd sizes: a half tile at the bottom and right
    (1, 5, 6, 8, 8, 0, 1),  # valid: the adjoint pads by 2
    (3, 4, 5, 11, 6, 2, 2),  # dilated: four dilation phases of their own tiles
    (2, 3, 3, 10, 13, ((1, 2), (0, 3)), (2, 3)),  # asymmetric padding, dilations
    (2, 6, 4, 5, 5, 4, 1),  # padding past the kernel: the adjoint crops
    (2, 3, 2, 6, 7, ((4, 0), (0, 5)), 1),
    (1, 2, 2, 3, 3, 0, 1),  # one output
    (2, 3, 3, 1, 1, 1, 1),  # 1x1 images
    (1, 4, 4, 9, 9, "same", 3),
    (2, 3, 5, 4, 4, 3, 3),  # dilation past the plane: phases with no tile
    (3, 40, 36, 13, 11, 1, 1),  # units of several samples
    (1, 33, 35, 35, 3, 1, 2),
]


def _check(case, dtype, threads, rng, scale=1.0):
    n, c, k, h, w, padding, dilation = case
    x = (scale * rng.standard_normal((n, c, h, w))).astype(dtype)
    wt = rng.standard_normal((k, c, 3, 3)).astype(dtype)
    kw = dict(padding=padding, dilation=dilation)
    y = reference.conv2d(x, wt, **kw)
    gy = rng.standard_normal(y.shape).astype(dtype)
    assert dispatch.conv_path(conv2d_geometry(x.shape, wt.shape, **kw)) in dispatch.PATHS
    with fastconv.num_threads(threads), dispatch.force_path("winograd"):
        assert_close(fastconv.conv2d(x, wt, **kw), y, dtype)
        assert_close(grad.conv2d_input(x.shape, wt, gy, **kw), reference.conv2d_input(x.shape, wt, gy, **kw), dtype)
        assert_close(grad.conv2d_weight(x, wt.shape, gy, **kw), reference.conv2d_weight(x, wt.shape, gy, **kw), dtype)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", GRID, ids=lambda c: "-".join(map(str, c)).replace(" ", ""))
def test_winograd_grid(case, dtype, threads, rng):
    _check(case, dtype, threads, rng)


@st.composite
def random_case(draw):
    pad = st.integers(0, 5)
    return (
        (
            draw(st.integers(1, 4)), draw(st.integers(1, 9)), draw(st.integers(1, 9)),
            draw(st.integers(1, 14)), draw(st.integers(1, 14)),
            ((draw(pad), draw(pad)), (draw(pad), draw(pad))),
            (draw(st.integers(1, 4)), draw(st.integers(1, 4))),
        ),
        draw(st.sampled_from(DTYPES)), draw(st.integers(1, 2)), draw(st.integers(0, 2**16)),
        draw(st.sampled_from([1e-3, 1.0, 1e3])),
    )


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_case())
def test_winograd_random_against_reference(drawn):
    case, dtype, threads, seed, scale = drawn
    n, c, k, h, w, padding, dilation = case
    try:
        reference.conv2d(np.zeros((n, c, h, w)), np.zeros((k, c, 3, 3)), padding=padding, dilation=dilation)
    except ValueError:
        return  # no output: refused on every path (tests/test_validation.py)
    _check(case, dtype, threads, np.random.default_rng(seed), scale)


def test_winograd_pays_for_wide_layers_only():
    # (conv_path checks the blocked sums first: Winograd runs the wide stride-1 3x3
    # layers they leave, see tests/test_conv_kernels.py)
    assert dispatch._winograd_pays(conv2d_geometry((8, 64, 32, 32), (64, 64, 3, 3), padding=1))
    assert dispatch._winograd_pays(conv2d_geometry((8, 64, 32, 32), (64, 64, 3, 3), padding=2, dilation=2))
    for narrow in [
        conv2d_geometry((8, 32, 32, 32), (64, 32, 3, 3), padding=1),  # few channels
        conv2d_geometry((8, 64, 8, 8), (64, 64, 3, 3), padding=1),  # small planes
        conv2d_geometry((8, 64, 30, 30), (64, 64, 3, 3), padding=3, dilation=3),  # 10x10 per phase
        conv2d_geometry((1, 64, 32, 32), (64, 64, 3, 3), padding=1),  # little work
    ]:
        assert not dispatch._winograd_pays(narrow), narrow
    assert not winograd.applicable(conv2d_geometry((8, 64, 32, 32), (64, 32, 3, 3), padding=1, groups=2))


@pytest.mark.parametrize("dtype", DTYPES)
def test_non_finite_outputs_come_from_the_direct_kernels(dtype, rng):
    # The transforms would mix an infinity into NaN (inf - inf); PyTorch's sums give
    # infinities, and so do the direct kernels that recompute such results.
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((2, 32, 9, 8)).astype(dtype)
    x[0, 1, 4, 3], x[1, 2, 0, 7] = np.inf, -np.inf
    w = rng.standard_normal((32, 32, 3, 3)).astype(dtype)
    gy = rng.standard_normal((2, 32, 9, 8)).astype(dtype)
    gy[1, 5, 2, 2] = np.inf
    tx, tw, tg = map(torch.from_numpy, (x, w, gy))
    with dispatch.force_path("winograd"):
        assert_close(fastconv.conv2d(x, w, padding=1), torch.nn.functional.conv2d(tx, tw, padding=1).numpy(), dtype)
        assert_close(grad.conv2d_input(x.shape, w, gy, padding=1), torch.nn.grad.conv2d_input(x.shape, tw, tg, padding=1).numpy(), dtype)
        assert_close(grad.conv2d_weight(x, w.shape, gy, padding=1), torch.nn.grad.conv2d_weight(tx, w.shape, tg, padding=1).numpy(), dtype)
    big = np.full((1, 32, 4, 4), np.finfo(dtype).max / 4, dtype=dtype)  # finite, but the transforms overflow
    with dispatch.force_path("winograd"):
        assert_close(fastconv.conv2d(big, np.ones_like(w) / 512, padding=1), reference.conv2d(big, np.ones_like(w) / 512, padding=1), dtype)


def test_bitwise_identical_reruns(rng):
    x = rng.standard_normal((8, 32, 12, 12)).astype(np.float32)
    w = rng.standard_normal((32, 32, 3, 3)).astype(np.float32)
    gy = rng.standard_normal((8, 32, 12, 12)).astype(np.float32)
    with dispatch.force_path("winograd"):
        runs = [(fastconv.conv2d(x, w, padding=1), grad.conv2d_input(x.shape, w, gy, padding=1), grad.conv2d_weight(x, w.shape, gy, padding=1)) for _ in range(3)]
    for run in runs[1:]:
        for a, b in zip(run, runs[0]):
            assert np.array_equal(a, b)


def test_each_kernel_compiles_once_per_dtype(rng):
    for dtype in DTYPES:
        for case in GRID[:3]:
            _check(case, dtype, 2, rng)
    # the kernels called from Python (a kernel called only from compiled code lists no
    # signature of its own once its caller comes from the cache)
    kernels = (winograd.forward_units, winograd.weight_units)
    for kernel in kernels:
        assert len(kernel.signatures) == 2, (kernel, kernel.signatures)


def test_plan_units_cover_every_tile_row_once():
    g = conv2d_geometry((5, 8, 13, 10), (6, 8, 3, 3), padding=2, dilation=2)
    plan = winograd._Plan(g, 8, 2)
    seen = [(n, p, a0 + i) for unit in plan.units for n, p, a0, nb, _ in unit.tolist() for i in range(nb)]
    def tile_rows(ry):  # 2x2 tiles over the outputs ry, ry + 2, ...
        return (len(range(ry, g.oh, 2)) + 1) // 2

    expected = [(n, p, a) for n in range(5) for p, (ry, _) in enumerate(plan.dilation_phases.tolist()) for a in range(tile_rows(ry))]
    assert sorted(seen) == expected and len(seen) == len(expected)
    for unit in plan.units:
        # the column phases of the same tile rows side by side, in order (exchange)
        for group in unit.reshape(-1, 2, 5):
            assert (group[:, [0, 2, 3]] == group[0, [0, 2, 3]]).all()
            assert plan.dilation_phases[group[:, 1]].tolist() == [[plan.dilation_phases[group[0, 1], 0], rx] for rx in range(2)]
        assert (unit[1:, 4] == unit[:-1, 4] + unit[:-1, 3] * plan.wq).all()
        assert unit[-1, 4] + unit[-1, 3] * plan.wq + winograd.EXTRA <= plan.pitch


@njit
def _input_tiles(src, src_at, offsets, count, dst, dst_at, row_stride):
    winograd.input_tiles(src, src_at, offsets, count, dst, dst_at, row_stride)


@njit
def _output_tiles(src, count, dst):
    winograd.output_tiles(src, count, dst)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 40), st.integers(0, 5), st.integers(0, 7), st.sampled_from(DTYPES), st.integers(0, 2**16))
def test_input_tiles_against_numpy(count, src_at, dst_at, dtype, seed):
    rng = np.random.default_rng(seed)
    offsets = rng.choice(np.arange(0, 200, 50), size=8) + rng.integers(0, 5, size=8)
    src = rng.standard_normal(300).astype(dtype)
    row_stride = dst_at + count + 3
    dst = np.full(16 * row_stride, 7.0, dtype=dtype)
    _input_tiles(src, src_at, offsets.astype(np.int64), count, dst, dst_at, row_stride)
    for t in range(count):
        d = np.array([[src[src_at + offsets[2 * r + c % 2] + c // 2 + t] for c in range(4)] for r in range(4)], dtype=np.float64)
        expected = (winograd.BT @ d @ winograd.BT.T).reshape(16)
        assert_close(dst[np.arange(16) * row_stride + dst_at + t], expected.astype(dtype), dtype)
    written = (np.arange(16)[:, None] * row_stride + dst_at + np.arange(count)).reshape(-1)
    untouched = np.setdiff1d(np.arange(dst.size), written)
    assert (dst[untouched] == 7.0).all()


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 40), st.sampled_from(DTYPES), st.integers(0, 2**16))
def test_output_tiles_against_numpy(count, dtype, seed):
    rng = np.random.default_rng(seed)
    src = rng.standard_normal(16 * count + 5).astype(dtype)
    dst = np.full(4 * count + 5, 7.0, dtype=dtype)
    _output_tiles(src, count, dst)
    for t in range(count):
        m = src[np.arange(16) * count + t].astype(np.float64).reshape(4, 4)
        expected = (winograd.AT @ m @ winograd.AT.T).reshape(4)
        assert_close(dst[np.arange(4) * count + t], expected.astype(dtype), dtype)
    assert (dst[4 * count :] == 7.0).all()
