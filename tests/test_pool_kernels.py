"""Every pooling kernel against fastconv.reference in both dtypes: a hypothesis
property test over random shapes and arguments with ties, NaN and -inf; the 2x2/2
fast path; non-contiguous input; indices round trips. Independent of PyTorch."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastconv
from fastconv import grad, reference
from tests.conftest import POOL_RTOL, RTOL, assert_close, input_scale

DTYPES = [np.float32, np.float64]


@st.composite
def pool_cases(draw):
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 11)), draw(st.integers(1, 11)))
    kwargs = dict(
        kernel_size=(kh, kw), stride=(draw(st.integers(1, 4)), draw(st.integers(1, 4))),
        padding=(draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2))), ceil_mode=draw(st.booleans()),
    )
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    dtype = draw(st.sampled_from(DTYPES))
    x = (rng.integers(-2, 3, shape) if draw(st.booleans()) else rng.standard_normal(shape)).astype(dtype)
    return x, kwargs, (draw(st.integers(1, 3)), draw(st.integers(1, 3))), draw(st.booleans()), rng


SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _accepted(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except ValueError:
        return None


@SETTINGS
@given(pool_cases())
def test_max_pool_random(case):
    x, kw, dilation, specials, rng = case
    if specials:
        flat = x.reshape(-1)
        flat[rng.integers(0, flat.size, 3)] = [np.nan, -np.inf, np.inf]
    expected = _accepted(reference.max_pool2d, x, dilation=dilation, return_indices=True, **kw)
    if expected is None:
        with pytest.raises(ValueError):
            fastconv.max_pool2d(x, dilation=dilation, **kw)
        return
    y, idx = fastconv.max_pool2d(x, dilation=dilation, return_indices=True, **kw)
    assert_close(y, expected[0], x.dtype, POOL_RTOL)
    assert np.array_equal(idx, expected[1])
    assert_close(fastconv.max_pool2d(x, dilation=dilation, **kw), expected[0], x.dtype, POOL_RTOL)
    gy = rng.standard_normal(y.shape).astype(x.dtype)
    want = reference.max_pool2d_input(x, gy, dilation=dilation, **kw)
    assert_close(grad.max_pool2d_input(x, gy, dilation=dilation, **kw), want, x.dtype, POOL_RTOL)
    assert_close(grad.max_pool2d_input(x, gy, dilation=dilation, indices=idx, **kw), want, x.dtype, POOL_RTOL)


@SETTINGS
@given(pool_cases(), st.booleans(), st.sampled_from([None, 1, 3, -2]))
def test_avg_sum_lp_random(case, count_include_pad, divisor_override):
    x, kw, _, _, rng = case
    expected = _accepted(reference.avg_pool2d, x, count_include_pad=count_include_pad, divisor_override=divisor_override, **kw)
    if expected is None:
        with pytest.raises(ValueError):
            fastconv.avg_pool2d(x, **kw)
        return
    avg = dict(count_include_pad=count_include_pad, divisor_override=divisor_override, **kw)
    assert_close(fastconv.avg_pool2d(x, **avg), expected, x.dtype, POOL_RTOL, input_scale(x))
    gy = rng.standard_normal(expected.shape).astype(x.dtype)
    assert_close(grad.avg_pool2d_input(x.shape, gy, **avg), reference.avg_pool2d_input(x.shape, gy, **avg), x.dtype, POOL_RTOL)
    assert_close(fastconv.sum_pool2d(x, **kw), reference.sum_pool2d(x, **kw), x.dtype, POOL_RTOL)
    assert_close(grad.sum_pool2d_input(x.shape, gy, **kw), reference.sum_pool2d_input(x.shape, gy, **kw), x.dtype, POOL_RTOL)
    lp = {k: v for k, v in kw.items() if k != "padding"}
    ax = np.abs(x)
    for p in (1, 2, 2.5):
        want = _accepted(reference.lp_pool2d, ax, p, **lp)
        if want is None:
            continue
        gl = rng.standard_normal(want.shape).astype(x.dtype)
        assert_close(fastconv.lp_pool2d(ax, p, **lp), want, x.dtype, RTOL)
        assert_close(grad.lp_pool2d_input(ax, gl, p, **lp), reference.lp_pool2d_input(ax, gl, p, **lp), x.dtype, RTOL)


@SETTINGS
@given(pool_cases(), st.integers(1, 7), st.integers(1, 7))
def test_adaptive_random(case, oh, ow):
    x, _, _, specials, rng = case
    if specials:
        x.reshape(-1)[rng.integers(0, x.size)] = np.nan
    gy = rng.standard_normal(x.shape[:2] + (oh, ow)).astype(x.dtype)
    assert_close(fastconv.adaptive_avg_pool2d(x, (oh, ow)), reference.adaptive_avg_pool2d(x, (oh, ow)), x.dtype, POOL_RTOL, input_scale(x))
    assert_close(grad.adaptive_avg_pool2d_input(x.shape, gy), reference.adaptive_avg_pool2d_input(x.shape, gy), x.dtype, POOL_RTOL)
    y, idx = fastconv.adaptive_max_pool2d(x, (oh, ow), return_indices=True)
    ry, ridx = reference.adaptive_max_pool2d(x, (oh, ow), return_indices=True)
    assert_close(y, ry, x.dtype, POOL_RTOL)
    assert np.array_equal(idx, ridx)
    want = reference.adaptive_max_pool2d_input(x, gy)
    assert_close(grad.adaptive_max_pool2d_input(x, gy), want, x.dtype, POOL_RTOL)
    assert_close(grad.adaptive_max_pool2d_input(x, gy, indices=idx), want, x.dtype, POOL_RTOL)


@pytest.mark.parametrize("dtype", DTYPES)
def test_two_by_two_fast_path_ties_and_nan(dtype):
    x = np.array([[[[1, 1, np.nan, 2], [1, 0, 3, np.nan], [-np.inf, -np.inf, 5, 5], [-np.inf, -np.inf, 5, 6]]]], dtype=dtype)
    y, idx = fastconv.max_pool2d(x, 2, return_indices=True)
    ry, ridx = reference.max_pool2d(x, 2, return_indices=True)
    assert_close(y, ry, dtype, POOL_RTOL)
    assert np.array_equal(idx, ridx)
    assert idx.tolist() == [[[[0, 7], [8, 15]]]]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 2, 3, 7), (2, 1, 4, 5), (1, 1, 5, 4), (1, 1, 1, 1)])
def test_two_by_two_with_ceil_mode_overhang(shape, dtype, rng):
    # ceil_mode adds a last window that overhangs the plane: not the 2x2/2 fast path
    x = rng.integers(-2, 3, shape).astype(dtype)
    x.reshape(-1)[0] = np.nan
    gy = rng.standard_normal(reference.max_pool2d(x, 2, ceil_mode=True).shape).astype(dtype)
    y, idx = fastconv.max_pool2d(x, 2, ceil_mode=True, return_indices=True)
    ry, ridx = reference.max_pool2d(x, 2, ceil_mode=True, return_indices=True)
    assert_close(y, ry, dtype, POOL_RTOL)
    assert np.array_equal(idx, ridx)
    assert_close(fastconv.max_pool2d(x, 2, ceil_mode=True), ry, dtype, POOL_RTOL)
    assert_close(grad.max_pool2d_input(x, gy, 2, ceil_mode=True, indices=idx), reference.max_pool2d_input(x, gy, 2, ceil_mode=True), dtype, POOL_RTOL)
    assert_close(fastconv.avg_pool2d(x, 2, ceil_mode=True), reference.avg_pool2d(x, 2, ceil_mode=True), dtype, POOL_RTOL, input_scale(x))


def test_non_contiguous_and_unpool_round_trip(rng):
    x = rng.standard_normal((3, 8, 9, 10))[::2, ::3, :, ::-1]
    y, idx = fastconv.max_pool2d(x, 2, return_indices=True)
    assert_close(y, reference.max_pool2d(np.ascontiguousarray(x), 2), np.float64, POOL_RTOL)
    u = fastconv.max_unpool2d(y, idx, 2, output_size=x.shape[2:])
    assert_close(u, reference.max_unpool2d(y, idx, 2, output_size=x.shape[2:]), np.float64, POOL_RTOL)
    gu = rng.standard_normal(u.shape)
    assert_close(grad.max_unpool2d_input(gu, idx), reference.max_unpool2d_input(gu, idx), np.float64, POOL_RTOL)
    # unpooling keeps exactly the maxima
    assert_close(fastconv.max_pool2d(u, 2), y, np.float64, POOL_RTOL) if (x > -np.inf).all() and (y > 0).all() else None


def test_overlapping_windows_are_deterministic(rng):
    x = rng.standard_normal((4, 16, 20, 20)).astype(np.float32)
    gy = rng.standard_normal((4, 16, 20, 20)).astype(np.float32)
    runs = [grad.max_pool2d_input(x, gy, 3, 1, 1) for _ in range(3)] + [grad.avg_pool2d_input(x.shape, gy, 3, 1, 1) for _ in range(2)]
    assert np.array_equal(runs[0], runs[1]) and np.array_equal(runs[0], runs[2]) and np.array_equal(runs[3], runs[4])


@pytest.mark.parametrize("kernel, stride, padding, ceil_mode", [(2, 2, 0, False), (3, 2, 1, True), (3, 1, 1, False), ((2, 3), (3, 1), (1, 0), True)])
def test_one_plane_split_across_threads(kernel, stride, padding, ceil_mode, rng):
    # N*C = 1: the forward kernels split the output rows across threads.
    x = rng.integers(-3, 4, (1, 1, 37, 41)).astype(np.float64)
    x[0, 0, 5, 7] = np.nan
    kw = dict(kernel_size=kernel, stride=stride, padding=padding, ceil_mode=ceil_mode)
    for threads in sorted({1, fastconv.get_num_threads(), 2}):
        with fastconv.num_threads(min(threads, __import__("numba").config.NUMBA_NUM_THREADS)):
            y, idx = fastconv.max_pool2d(x, return_indices=True, **kw)
            ry, ridx = reference.max_pool2d(x, return_indices=True, **kw)
            assert_close(y, ry, np.float64, POOL_RTOL)
            assert np.array_equal(idx, ridx)
            assert_close(fastconv.max_pool2d(x, **kw), ry, np.float64, POOL_RTOL)
            assert_close(fastconv.avg_pool2d(np.nan_to_num(x), **kw), reference.avg_pool2d(np.nan_to_num(x), **kw), np.float64, POOL_RTOL)


@pytest.mark.parametrize("kernel, stride, padding, dilation", [(3, 2, 1, 1), (3, 1, 1, 1), (2, 3, 1, 2), ((3, 2), (1, 3), (1, 0), (2, 1))])
def test_many_planes_in_uneven_runs(kernel, stride, padding, dilation, rng):
    # 3 * 101 planes: each prange iteration takes a run of planes, of unequal lengths.
    x = rng.integers(-3, 4, (3, 101, 9, 10)).astype(np.float32)
    x[1, 7, 2, 3] = np.nan
    x[2, 50] = -np.inf
    kw = dict(kernel_size=kernel, stride=stride, padding=padding, dilation=dilation)
    y, idx = fastconv.max_pool2d(x, return_indices=True, **kw)
    ry, ridx = reference.max_pool2d(x, return_indices=True, **kw)
    assert_close(y, ry, np.float32, POOL_RTOL)
    assert np.array_equal(idx, ridx)
    gy = rng.standard_normal(y.shape).astype(np.float32)
    assert_close(grad.max_pool2d_input(x, gy, **kw), reference.max_pool2d_input(x, gy, **kw), np.float32, POOL_RTOL)
