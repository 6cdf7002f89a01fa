"""Every forward and gradient of fastconv (and of the reference) against PyTorch in
float64, over a grid of strides, paddings, dilations, groups and pooling options."""

import itertools

import numpy as np
import pytest

import fastconv
from fastconv import grad, reference
from tests.conftest import POOL_RTOL, RTOL, assert_close

to = pytest.importorskip("tests.torch_oracle")
F = to.F

IMPLS = {"fastconv": (fastconv, grad), "reference": (reference, reference)}
impl_param = pytest.mark.parametrize("impl", list(IMPLS))
F64 = np.float64

CONV_GRID = [
    # (C, K, kernel, stride, padding, dilation, groups, H, W)
    (3, 4, (3, 3), 1, 0, 1, 1, 7, 8),
    (3, 4, (3, 3), 1, 1, 1, 1, 7, 8),
    (4, 6, (3, 2), (2, 1), (1, 0), 1, 2, 9, 7),
    (4, 4, (3, 3), 2, 1, 2, 1, 9, 9),
    (4, 8, (3, 3), 1, "same", (2, 1), 4, 6, 7),
    (4, 8, (2, 4), 1, "same", 1, 2, 5, 6),
    (2, 3, (3, 3), 3, "valid", 1, 1, 10, 8),
    (6, 6, (3, 3), 1, 1, 1, 6, 8, 8),  # depthwise
    (3, 6, (5, 5), 2, 2, 1, 3, 9, 11),  # depthwise with multiplier 2
    (1, 5, (5, 5), 1, 0, 1, 1, 12, 12),  # one input channel
    (3, 2, (3, 3), 1, ((1, 0), (2, 1)), 1, 1, 6, 6),  # asymmetric padding
    (8, 4, (1, 1), 1, 0, 1, 1, 5, 5),  # pointwise
    (8, 4, (1, 1), 2, 0, 1, 2, 5, 6),
    (2, 2, (4, 4), 1, 0, 1, 1, 4, 4),  # kernel as large as the input
    (2, 3, (3, 3), 2, 1, 3, 1, 5, 5),  # dilated kernel as large as the padded input
    (4, 4, (3, 3), 1, 1, 1, 1, 1, 1),  # 1x1 image
]


@impl_param
@pytest.mark.parametrize("case", CONV_GRID, ids=lambda c: "-".join(map(str, c)).replace(" ", ""))
@pytest.mark.parametrize("n", [1, 2])
def test_conv2d(impl, case, n, rng):
    f, g = IMPLS[impl]
    c, k, ks, s, p, d, groups, h, w = case
    x = rng.standard_normal((n, c, h, w))
    wt = rng.standard_normal((k, c // groups) + ks)
    b = rng.standard_normal(k)
    (out, grads, gy) = to.with_grads(to.conv2d(x, wt, b, s, p, d, groups), {"x": x, "w": wt, "b": b}, rng)
    assert_close(f.conv2d(x, wt, b, s, p, d, groups), out, F64)
    assert_close(g.conv2d_input(x.shape, wt, gy, s, p, d, groups), grads["x"], F64)
    assert_close(g.conv2d_weight(x, wt.shape, gy, s, p, d, groups), grads["w"], F64)
    assert_close(g.conv2d_bias(gy), grads["b"], F64)


CONVT_GRID = [
    # (C_in, C_out, kernel, stride, padding, output_padding, groups, dilation, H, W)
    (3, 4, (3, 3), 1, 0, 0, 1, 1, 5, 6),
    (4, 2, (4, 4), 2, 1, 0, 1, 1, 5, 5),
    (4, 2, (4, 4), 2, 1, 1, 1, 1, 5, 5),
    (4, 6, (3, 2), (3, 2), (1, 0), (2, 1), 2, 1, 4, 5),
    (2, 3, (3, 3), 1, 1, (1, 1), 1, 2, 4, 4),  # output_padding < dilation
    (2, 2, (3, 3), 2, 2, 2, 1, 3, 5, 5),  # output_padding >= stride, < dilation
    (6, 6, (3, 3), 2, 1, 1, 6, 1, 4, 4),  # depthwise
    (2, 4, (5, 5), 3, 2, 2, 2, 2, 3, 3),
    (3, 1, (1, 1), 1, 0, 0, 1, 1, 1, 1),
]


@impl_param
@pytest.mark.parametrize("case", CONVT_GRID, ids=lambda c: "-".join(map(str, c)).replace(" ", ""))
@pytest.mark.parametrize("n", [1, 2])
def test_conv_transpose2d(impl, case, n, rng):
    f, g = IMPLS[impl]
    c, k, ks, s, p, op, groups, d, h, w = case
    x = rng.standard_normal((n, c, h, w))
    wt = rng.standard_normal((c, k // groups) + ks)
    b = rng.standard_normal(k)

    def fwd(x, w, b):
        return F.conv_transpose2d(x, w, b, s, p, op, groups, d)

    out, grads, gy = to.with_grads(fwd, {"x": x, "w": wt, "b": b}, rng)
    assert_close(f.conv_transpose2d(x, wt, b, s, p, op, groups, d), out, F64)
    assert_close(g.conv_transpose2d_input(x.shape, wt, gy, s, p, op, groups, d), grads["x"], F64)
    assert_close(g.conv_transpose2d_weight(x, wt.shape, gy, s, p, op, groups, d), grads["w"], F64)
    assert_close(g.conv2d_bias(gy), grads["b"], F64)


POOL_GRID = [
    # (kernel, stride, padding, dilation, ceil_mode, H, W)
    (2, None, 0, 1, False, 8, 8),
    (3, 2, 1, 1, False, 9, 8),
    (3, 2, 1, 1, True, 8, 8),
    (3, 2, 0, 1, True, 8, 7),
    ((2, 3), (1, 2), (1, 1), 1, True, 5, 7),
    (3, 1, 1, 2, False, 6, 6),
    (2, 3, 1, 2, True, 7, 5),
    (4, 3, 2, 1, True, 6, 6),
    (5, 5, 2, 1, False, 4, 4),  # one window covering all
    (1, 1, 0, 1, False, 3, 3),
]
pool_param = pytest.mark.parametrize("case", POOL_GRID, ids=lambda c: "-".join(map(str, c)).replace(" ", ""))


def _pool_input(rng, shape, ties=False, nan=False):
    x = rng.integers(-2, 3, shape).astype(np.float64) if ties else rng.standard_normal(shape)
    if nan:
        x[0, 0, 1, 1] = np.nan
        x[-1, -1, 0, 0] = -np.inf
    return x


@impl_param
@pool_param
@pytest.mark.parametrize("values", ["random", "ties", "nan"])
def test_max_pool2d(impl, case, values, rng):
    f, g = IMPLS[impl]
    k, s, p, d, cm, h, w = case
    x = _pool_input(rng, (2, 3, h, w), ties=values != "random", nan=values == "nan")

    def fwd(x):
        return F.max_pool2d(x, k, s, p, d, cm, return_indices=True)

    (out, idx), grads, gy = to.with_grads(fwd, {"x": x}, rng)
    y, i = f.max_pool2d(x, k, s, p, d, cm, return_indices=True)
    assert_close(y, out, F64, POOL_RTOL)
    assert np.array_equal(i, idx)
    assert_close(f.max_pool2d(x, k, s, p, d, cm), out, F64, POOL_RTOL)
    assert_close(g.max_pool2d_input(x, gy, k, s, p, d, cm), grads["x"], F64, POOL_RTOL)
    assert_close(g.max_pool2d_input(x, gy, k, s, p, d, cm, indices=i), grads["x"], F64, POOL_RTOL)
    if p == 0 and cm is False and d == 1:
        size = (h, w)
        def unpool(y):
            return F.max_unpool2d(y, torch_tensor(idx), k, s, p, size)
        uout, ugrads, ugy = to.with_grads(unpool, {"y": out}, rng)
        assert_close(f.max_unpool2d(y, i, k, s, p, size), uout, F64, POOL_RTOL)
        assert_close(g.max_unpool2d_input(ugy, i), ugrads["y"], F64, POOL_RTOL)


def torch_tensor(a):
    return to.torch.tensor(a)


@impl_param
@pytest.mark.parametrize("case", [c for c in POOL_GRID if c[3] == 1], ids=str)
@pytest.mark.parametrize("count_include_pad, divisor_override", [(True, None), (False, None), (True, 3), (False, -2)])
def test_avg_pool2d(impl, case, count_include_pad, divisor_override, rng):
    f, g = IMPLS[impl]
    k, s, p, d, cm, h, w = case
    x = rng.standard_normal((2, 3, h, w))

    def fwd(x):
        return F.avg_pool2d(x, k, s, p, cm, count_include_pad, divisor_override)

    out, grads, gy = to.with_grads(fwd, {"x": x}, rng)
    assert_close(f.avg_pool2d(x, k, s, p, cm, count_include_pad, divisor_override), out, F64, POOL_RTOL)
    assert_close(g.avg_pool2d_input(x.shape, gy, k, s, p, cm, count_include_pad, divisor_override), grads["x"], F64, POOL_RTOL)
    # sum pooling is average pooling with divisor 1
    sums, sgrads, sgy = to.with_grads(lambda x: F.avg_pool2d(x, k, s, p, cm, True, 1), {"x": x}, rng)
    assert_close(f.sum_pool2d(x, k, s, p, cm), sums, F64, POOL_RTOL)
    assert_close(g.sum_pool2d_input(x.shape, sgy, k, s, p, cm), sgrads["x"], F64, POOL_RTOL)


@impl_param
@pytest.mark.parametrize("case", [c for c in POOL_GRID if c[2] == 0 and c[3] == 1], ids=str)
@pytest.mark.parametrize("norm_type", [1, 2, 3.5])
def test_lp_pool2d(impl, case, norm_type, rng):
    f, g = IMPLS[impl]
    k, s, p, d, cm, h, w = case
    x = np.abs(rng.standard_normal((2, 3, h, w))) + 0.1
    x[0, 0] = 0.0  # windows of zeros pass no gradient

    def fwd(x):
        return F.lp_pool2d(x, norm_type, k, s, cm)

    out, grads, gy = to.with_grads(fwd, {"x": x}, rng)
    assert_close(f.lp_pool2d(x, norm_type, k, s, cm), out, F64, RTOL)
    assert_close(g.lp_pool2d_input(x, gy, norm_type, k, s, cm), grads["x"], F64, RTOL)


@impl_param
@pytest.mark.parametrize("h, w, size", [(7, 9, (3, 4)), (8, 8, 1), (5, 5, (5, 2)), (4, 6, (6, None)), (3, 3, 7)])
def test_adaptive_pool2d(impl, h, w, size, rng):
    f, g = IMPLS[impl]
    x = rng.integers(-2, 3, (2, 3, h, w)).astype(np.float64)
    x[1, 1, 0, 0] = np.nan
    out, grads, gy = to.with_grads(lambda x: F.adaptive_avg_pool2d(x, size), {"x": x}, rng)
    assert_close(f.adaptive_avg_pool2d(x, size), out, F64, POOL_RTOL)
    assert_close(g.adaptive_avg_pool2d_input(x.shape, gy), grads["x"], F64, POOL_RTOL)
    (out, idx), grads, gy = to.with_grads(lambda x: F.adaptive_max_pool2d(x, size, True), {"x": x}, rng)
    y, i = f.adaptive_max_pool2d(x, size, return_indices=True)
    assert_close(y, out, F64, POOL_RTOL)
    assert np.array_equal(i, idx)
    assert_close(g.adaptive_max_pool2d_input(x, gy), grads["x"], F64, POOL_RTOL)
    assert_close(g.adaptive_max_pool2d_input(x, gy, indices=i), grads["x"], F64, POOL_RTOL)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_unbatched_input_and_dtypes(dtype, rng):
    x = rng.standard_normal((3, 6, 6)).astype(dtype)
    w = rng.standard_normal((4, 3, 3, 3)).astype(dtype)
    t = to.torch
    assert_close(fastconv.conv2d(x, w, padding=1), F.conv2d(t.tensor(x), t.tensor(w), padding=1).numpy(), dtype)
    wt = rng.standard_normal((3, 2, 3, 3)).astype(dtype)
    assert_close(fastconv.conv_transpose2d(x, wt, stride=2), F.conv_transpose2d(t.tensor(x), t.tensor(wt), stride=2).numpy(), dtype)
    for name, args in [("max_pool2d", (2,)), ("avg_pool2d", (3, 2, 1)), ("lp_pool2d", (2, 2)), ("adaptive_avg_pool2d", (2,)), ("adaptive_max_pool2d", (2,))]:
        xx = np.abs(x) if name == "lp_pool2d" else x
        assert_close(getattr(fastconv, name)(xx, *args), getattr(F, name)(t.tensor(xx), *args).numpy(), dtype, POOL_RTOL if name != "lp_pool2d" else RTOL)


@impl_param
def test_one_element_sequences_stand_for_both_sides(impl, rng):
    # PyTorch's operators take [s] or (s,) for (s, s)
    ops, _ = IMPLS[impl]
    t = to.torch
    x = rng.standard_normal((2, 3, 7, 8))
    w = rng.standard_normal((4, 3, 3, 3))
    tx, tw = t.tensor(x), t.tensor(w)
    kw = dict(stride=(2,), padding=[1], dilation=(2,))
    assert_close(ops.conv2d(x, w, **kw), F.conv2d(tx, tw, **kw).numpy(), F64)
    wt = rng.standard_normal((3, 2, 3, 3))
    kw = dict(stride=[2], padding=(1,), output_padding=(1,), dilation=[1])
    assert_close(ops.conv_transpose2d(x, wt, **kw), F.conv_transpose2d(tx, t.tensor(wt), **kw).numpy(), F64)
    kw = dict(kernel_size=(3,), stride=[2], padding=(1,))
    assert_close(ops.max_pool2d(x, dilation=[1], **kw), F.max_pool2d(tx, dilation=[1], **kw).numpy(), F64, POOL_RTOL)
    assert_close(ops.avg_pool2d(x, **kw), F.avg_pool2d(tx, **kw).numpy(), F64, POOL_RTOL)


@impl_param
def test_a_stride_past_the_input(impl, rng):
    # One output along an axis: the stride makes no difference to it, and must cost
    # nothing (the layouts grow with the stride: 1000 once took seconds and gigabytes).
    ops, g = IMPLS[impl]
    t = to.torch
    x, w = rng.standard_normal((1, 2, 5, 6)), rng.standard_normal((3, 2, 3, 3))
    tx, tw = t.tensor(x, requires_grad=True), t.tensor(w, requires_grad=True)
    for stride, padding in [(1000, 1), ((10**5, 2), 0), ((3, 10**6), (1, 2))]:
        ty = F.conv2d(tx, tw, stride=stride, padding=padding)
        gy = rng.standard_normal(tuple(ty.shape))
        gx, gw = t.autograd.grad(ty, (tx, tw), t.tensor(gy))
        assert_close(ops.conv2d(x, w, stride=stride, padding=padding), ty.detach().numpy(), F64)
        assert_close(g.conv2d_input(x.shape, w, gy, stride=stride, padding=padding), gx.numpy(), F64)
        assert_close(g.conv2d_weight(x, w.shape, gy, stride=stride, padding=padding), gw.numpy(), F64)
    one = rng.standard_normal((1, 3, 1, 2))
    wt = rng.standard_normal((3, 2, 3, 3))
    expected = F.conv_transpose2d(t.tensor(one), t.tensor(wt), stride=(1000, 2), padding=1, output_padding=(7, 1)).numpy()
    assert_close(ops.conv_transpose2d(one, wt, stride=(1000, 2), padding=1, output_padding=(7, 1)), expected, F64)
    for ceil_mode in (False, True):
        kw = dict(kernel_size=3, stride=10**5, padding=1, ceil_mode=ceil_mode)
        assert_close(ops.max_pool2d(x, **kw), F.max_pool2d(t.tensor(x), **kw).numpy(), F64, POOL_RTOL)
        assert_close(ops.avg_pool2d(x, **kw), F.avg_pool2d(t.tensor(x), **kw).numpy(), F64, POOL_RTOL)


def test_grid_is_not_trivial():
    # Every grid row above is accepted by torch, so no case silently tests nothing.
    assert len(list(itertools.chain(CONV_GRID, CONVT_GRID, POOL_GRID))) > 30
