"""Random-parameter cross-checks against PyTorch (float64): hypothesis draws shapes
and arguments; any combination torch accepts must agree, and any it refuses we refuse."""

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import fastconv
from fastconv import grad
from fastconv.params import pool_output_size
from tests.conftest import POOL_RTOL, RTOL, assert_close, input_scale

to = pytest.importorskip("tests.torch_oracle")
F = to.F
F64 = np.float64
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
small = st.integers(1, 3)


@st.composite
def conv_cases(draw):
    groups = draw(small)
    return dict(
        n=draw(small), c=groups * draw(small), k=groups * draw(small), groups=groups,
        h=draw(st.integers(1, 9)), w=draw(st.integers(1, 9)),
        kh=draw(small), kw=draw(small),
        stride=(draw(small), draw(small)), padding=(draw(st.integers(0, 2)), draw(st.integers(0, 2))),
        dilation=(draw(small), draw(small)), seed=draw(st.integers(0, 2**16)),
    )


@SETTINGS
@given(conv_cases())
def test_conv2d_random(case):
    rng = np.random.default_rng(case["seed"])
    x = rng.standard_normal((case["n"], case["c"], case["h"], case["w"]))
    w = rng.standard_normal((case["k"], case["c"] // case["groups"], case["kh"], case["kw"]))
    args = (case["stride"], case["padding"], case["dilation"], case["groups"])
    fwd = to.conv2d(x, w, None, *args)
    try:
        out, grads, gy = to.with_grads(fwd, {"x": x, "w": w}, rng)
    except RuntimeError:
        with pytest.raises(ValueError):
            fastconv.conv2d(x, w, None, *args)
        return
    assert_close(fastconv.conv2d(x, w, None, *args), out, F64)
    assert_close(grad.conv2d_input(x.shape, w, gy, *args), grads["x"], F64)
    assert_close(grad.conv2d_weight(x, w.shape, gy, *args), grads["w"], F64)


@SETTINGS
@given(conv_cases(), st.integers(0, 2), st.integers(0, 2))
def test_conv_transpose2d_random(case, oph, opw):
    rng = np.random.default_rng(case["seed"])
    x = rng.standard_normal((case["n"], case["c"], case["h"], case["w"]))
    w = rng.standard_normal((case["c"], case["k"] // case["groups"], case["kh"], case["kw"]))
    args = (case["stride"], case["padding"], (oph, opw), case["groups"], case["dilation"])
    try:
        out, grads, gy = to.with_grads(lambda x, w: F.conv_transpose2d(x, w, None, *args), {"x": x, "w": w}, rng)
    except RuntimeError:
        with pytest.raises(ValueError):
            fastconv.conv_transpose2d(x, w, None, *args)
        return
    assert_close(fastconv.conv_transpose2d(x, w, None, *args), out, F64)
    assert_close(grad.conv_transpose2d_input(x.shape, w, gy, *args), grads["x"], F64)
    assert_close(grad.conv_transpose2d_weight(x, w.shape, gy, *args), grads["w"], F64)


@st.composite
def pool_cases(draw):
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    return dict(
        shape=(draw(small), draw(small), draw(st.integers(1, 10)), draw(st.integers(1, 10))),
        kernel=(kh, kw), stride=(draw(st.integers(1, 4)), draw(st.integers(1, 4))),
        padding=(draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2))),
        dilation=(draw(small), draw(small)), ceil_mode=draw(st.booleans()),
        ties=draw(st.booleans()), specials=draw(st.booleans()), seed=draw(st.integers(0, 2**16)),
    )


def _values(case):
    rng = np.random.default_rng(case["seed"])
    shape = case["shape"]
    x = rng.integers(-2, 3, shape).astype(F64) if case["ties"] else rng.standard_normal(shape)
    if case["specials"]:
        flat = x.reshape(-1)
        flat[rng.integers(0, flat.size, 2)] = [np.nan, -np.inf]
    return rng, x


def _torch_or_refusal(fn, arrays, rng, ours):
    try:
        return to.with_grads(fn, arrays, rng)
    except RuntimeError:
        with pytest.raises(ValueError):
            ours()
        return None


def _padding_only_window(case):
    for d in range(2):
        size = case["shape"][2 + d]
        k, s, p, dil = (case[name][d] for name in ("kernel", "stride", "padding", "dilation"))
        for o in range(max(0, pool_output_size(size, k, s, p, dil, case["ceil_mode"]))):
            cells = o * case["stride"][d] - case["padding"][d] + np.arange(case["kernel"][d]) * case["dilation"][d]
            if not ((cells >= 0) & (cells < size)).any():
                return True
    return False


@SETTINGS
@given(pool_cases())
def test_max_pool2d_random(case):
    rng, x = _values(case)
    args = (case["kernel"], case["stride"], case["padding"], case["dilation"], case["ceil_mode"])
    # A dilated window can cover padding only; PyTorch's backward then writes that
    # window's gradient outside the input plane (and can crash); fastconv drops it.
    assume(not _padding_only_window(case))
    res = _torch_or_refusal(lambda x: F.max_pool2d(x, *args, return_indices=True), {"x": x}, rng, lambda: fastconv.max_pool2d(x, *args))
    if res is None:
        return
    (out, idx), grads, gy = res
    y, i = fastconv.max_pool2d(x, *args, return_indices=True)
    assert_close(y, out, F64, POOL_RTOL)
    assert np.array_equal(i, idx)
    assert_close(grad.max_pool2d_input(x, gy, *args), grads["x"], F64, POOL_RTOL)


@SETTINGS
@given(pool_cases(), st.booleans(), st.sampled_from([None, 1, 2, -3]))
def test_avg_pool2d_random(case, count_include_pad, divisor_override):
    rng, x = _values(case | {"specials": False})
    args = (case["kernel"], case["stride"], case["padding"], case["ceil_mode"], count_include_pad, divisor_override)
    res = _torch_or_refusal(lambda x: F.avg_pool2d(x, *args), {"x": x}, rng, lambda: fastconv.avg_pool2d(x, *args))
    if res is None:
        return
    out, grads, gy = res
    assert_close(fastconv.avg_pool2d(x, *args), out, F64, POOL_RTOL, input_scale(x))
    assert_close(grad.avg_pool2d_input(x.shape, gy, *args), grads["x"], F64, POOL_RTOL)


@SETTINGS
@given(pool_cases(), st.sampled_from([1, 2, 3, 1.5]))
def test_lp_pool2d_random(case, norm_type):
    rng, x = _values(case | {"specials": False})
    x = np.abs(x)
    args = (norm_type, case["kernel"], case["stride"], case["ceil_mode"])
    res = _torch_or_refusal(lambda x: F.lp_pool2d(x, *args), {"x": x}, rng, lambda: fastconv.lp_pool2d(x, *args))
    if res is None:
        return
    out, grads, gy = res
    assert_close(fastconv.lp_pool2d(x, *args), out, F64, RTOL)
    assert_close(grad.lp_pool2d_input(x, gy, *args), grads["x"], F64, RTOL)


@SETTINGS
@given(pool_cases(), st.integers(1, 6), st.integers(1, 6))
def test_adaptive_random(case, oh, ow):
    rng, x = _values(case)
    out, grads, gy = to.with_grads(lambda x: F.adaptive_max_pool2d(x, (oh, ow), True), {"x": x}, rng)
    y, i = fastconv.adaptive_max_pool2d(x, (oh, ow), True)
    assert_close(y, out[0], F64, POOL_RTOL)
    assert np.array_equal(i, out[1])
    assert_close(grad.adaptive_max_pool2d_input(x, gy), grads["x"], F64, POOL_RTOL)
    rng, x = _values(case | {"specials": False})
    out, grads, gy = to.with_grads(lambda x: F.adaptive_avg_pool2d(x, (oh, ow)), {"x": x}, rng)
    assert_close(fastconv.adaptive_avg_pool2d(x, (oh, ow)), out, F64, POOL_RTOL, input_scale(x))
    assert_close(grad.adaptive_avg_pool2d_input(x.shape, gy), grads["x"], F64, POOL_RTOL)
