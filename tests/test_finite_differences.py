"""Every gradient of fastconv and of the reference against central finite differences
(float64) on small random cases; independent of PyTorch."""

import numpy as np
import pytest

import fastconv
from fastconv import grad, reference
from tests.gradcheck import check_directional

IMPLS = {"fastconv": (fastconv, grad), "reference": (reference, reference)}
impl_param = pytest.mark.parametrize("impl", list(IMPLS))

CONV_CASES = [
    dict(stride=1, padding=1, dilation=1, groups=1),
    dict(stride=(2, 1), padding=((0, 2), (1, 0)), dilation=(1, 2), groups=2),
    dict(stride=1, padding="same", dilation=2, groups=4),
    dict(stride=3, padding=2, dilation=1, groups=1),
]


@impl_param
@pytest.mark.parametrize("kw", CONV_CASES, ids=str)
def test_conv2d_gradients(impl, kw, rng):
    f, g = IMPLS[impl]
    x = rng.standard_normal((2, 4, 7, 6))
    w = rng.standard_normal((4, 4 // kw["groups"], 3, 2))
    b = rng.standard_normal(4)
    gy = rng.standard_normal(f.conv2d(x, w, b, **kw).shape)
    check_directional(lambda a: f.conv2d(a, w, b, **kw), lambda gy: g.conv2d_input(x.shape, w, gy, **kw), x, gy, rng)
    check_directional(lambda a: f.conv2d(x, a, b, **kw), lambda gy: g.conv2d_weight(x, w.shape, gy, **kw), w, gy, rng)
    check_directional(lambda a: f.conv2d(x, w, a, **kw), g.conv2d_bias, b, gy, rng)


CONVT_CASES = [
    dict(stride=2, padding=1, output_padding=1, groups=1, dilation=1),
    dict(stride=(1, 3), padding=(0, 1), output_padding=(1, 2), groups=2, dilation=2),
]


@impl_param
@pytest.mark.parametrize("kw", CONVT_CASES, ids=str)
def test_conv_transpose2d_gradients(impl, kw, rng):
    f, g = IMPLS[impl]
    x = rng.standard_normal((2, 4, 4, 5))
    w = rng.standard_normal((4, 6 // kw["groups"], 3, 3))
    gy = rng.standard_normal(f.conv_transpose2d(x, w, **kw).shape)
    check_directional(lambda a: f.conv_transpose2d(a, w, **kw), lambda gy: g.conv_transpose2d_input(x.shape, w, gy, **kw), x, gy, rng)
    check_directional(lambda a: f.conv_transpose2d(x, a, **kw), lambda gy: g.conv_transpose2d_weight(x, w.shape, gy, **kw), w, gy, rng)


POOL_CASES = [dict(kernel_size=3, stride=2, padding=1, ceil_mode=True), dict(kernel_size=(2, 3), stride=(1, 2), padding=0, ceil_mode=False)]


@impl_param
@pytest.mark.parametrize("kw", POOL_CASES, ids=str)
def test_pooling_gradients(impl, kw, rng):
    f, g = IMPLS[impl]
    # distinct values far apart: no argmax changes under a 1e-6 perturbation
    x = rng.permutation(2 * 3 * 7 * 8).reshape(2, 3, 7, 8).astype(np.float64) / 10
    gy = rng.standard_normal(f.max_pool2d(x, dilation=(1, 2) if kw["padding"] == 0 else 1, **kw).shape)
    d = (1, 2) if kw["padding"] == 0 else 1
    check_directional(lambda a: f.max_pool2d(a, dilation=d, **kw), lambda gy: g.max_pool2d_input(x, gy, dilation=d, **kw), x, gy, rng)
    for cip, div in [(True, None), (False, None), (False, 5)]:
        gy = rng.standard_normal(f.avg_pool2d(x, count_include_pad=cip, divisor_override=div, **kw).shape)
        check_directional(
            lambda a: f.avg_pool2d(a, count_include_pad=cip, divisor_override=div, **kw),
            lambda gy: g.avg_pool2d_input(x.shape, gy, count_include_pad=cip, divisor_override=div, **kw),
            x, gy, rng,
        )
    check_directional(lambda a: f.sum_pool2d(a, **kw), lambda gy: g.sum_pool2d_input(x.shape, gy, **kw), x, gy, rng)
    lp = {k: v for k, v in kw.items() if k != "padding"}
    for p in (1, 2, 3.0):
        gy = rng.standard_normal(f.lp_pool2d(x + 1, p, **lp).shape)
        check_directional(lambda a: f.lp_pool2d(a, p, **lp), lambda gy: g.lp_pool2d_input(x + 1, gy, p, **lp), x + 1, gy, rng)


@impl_param
def test_adaptive_and_unpool_gradients(impl, rng):
    f, g = IMPLS[impl]
    x = rng.permutation(2 * 3 * 7 * 9).reshape(2, 3, 7, 9).astype(np.float64) / 10
    gy = rng.standard_normal((2, 3, 3, 4))
    check_directional(lambda a: f.adaptive_avg_pool2d(a, (3, 4)), lambda gy: g.adaptive_avg_pool2d_input(x.shape, gy), x, gy, rng)
    check_directional(lambda a: f.adaptive_max_pool2d(a, (3, 4)), lambda gy: g.adaptive_max_pool2d_input(x, gy), x, gy, rng)
    y, idx = f.max_pool2d(x, 2, return_indices=True)
    gu = rng.standard_normal((2, 3, 7, 9))
    check_directional(lambda a: f.max_unpool2d(a, idx, 2, output_size=(7, 9)), lambda gu: g.max_unpool2d_input(gu, idx), y, gu, rng)
