"""Bad arguments are refused with a clear error naming the argument and values,
before anything is computed; fastconv and the reference refuse alike."""

import numpy as np
import pytest

import fastconv
from fastconv import grad, reference

IMPLS = {"fastconv": (fastconv, grad), "reference": (reference, reference)}
impl_param = pytest.mark.parametrize("impl", list(IMPLS))

X = np.zeros((2, 4, 8, 8))
W = np.zeros((6, 4, 3, 3))

CONV_ERRORS = [
    (dict(input=np.zeros((4, 8))), ValueError, "input must be 4-D"),
    (dict(input=np.zeros((2, 4, 8, 8), dtype=np.int64)), TypeError, "float32 or float64"),
    (dict(input=np.zeros((2, 4, 8, 8), dtype=np.complex128)), TypeError, "float32 or float64"),
    (dict(input=np.zeros((2, 4, 8, 8), dtype=np.float32)), TypeError, "same dtype"),
    (dict(input=np.zeros((2, 4, 0, 8))), ValueError, "must not be empty"),  # an empty batch is allowed
    (dict(weight=np.zeros((6, 3, 3, 3))), ValueError, "expects 3 input channels"),
    (dict(weight=np.zeros((6, 4, 3))), ValueError, "weight must be 4-D"),
    (dict(groups=3, weight=np.zeros((6, 1, 3, 3))), ValueError, "divisible by groups (3)"),
    (dict(groups=4, weight=np.zeros((6, 1, 3, 3))), ValueError, "output channels (6) must be divisible"),
    (dict(groups=0), ValueError, "groups must be a positive int"),
    (dict(weight=np.zeros((6, 4, 9, 3))), ValueError, "larger than the padded input"),
    (dict(stride=0), ValueError, "stride must be positive"),
    (dict(stride=(1, -1)), ValueError, "stride must be positive"),
    (dict(dilation=0), ValueError, "dilation must be positive"),
    (dict(padding=-1), ValueError, "padding must be non-negative"),
    (dict(padding=((1, -1), (0, 0))), ValueError, "padding must be non-negative"),
    (dict(padding="same", stride=2), ValueError, "'same' is not supported for strided"),
    (dict(padding="full"), ValueError, "padding must be 'valid', 'same'"),
    (dict(stride=1.5), TypeError, "stride must be an int"),
    (dict(stride=(1, 2, 3)), ValueError, "stride must be an int or a pair"),
    (dict(bias=np.zeros(5)), ValueError, "bias must have shape (6,)"),
    (dict(bias=np.zeros(6, dtype=np.float32)), TypeError, "bias (float32)"),
    (dict(padding=2**40, stride=2**40), ValueError, "fastconv lays it out in memory"),
]


@impl_param
@pytest.mark.parametrize("change, error, message", CONV_ERRORS, ids=lambda v: str(v)[:40])
def test_conv2d_errors(impl, change, error, message):
    f, g = IMPLS[impl]
    args = dict(input=X, weight=W, bias=None, stride=1, padding=0, dilation=1, groups=1) | change
    with pytest.raises(error, match=_escape(message)):
        f.conv2d(**args)


def _escape(message):
    import re

    return re.escape(message)


@impl_param
def test_conv2d_gradient_errors(impl):
    f, g = IMPLS[impl]
    gy = np.zeros((2, 6, 6, 6))
    with pytest.raises(ValueError, match=_escape("grad_output must have shape (2, 6, 6, 6), got (2, 6, 5, 6)")):
        g.conv2d_input(X.shape, W, gy[:, :, :5])
    with pytest.raises(ValueError, match="input_size must be 4 ints"):
        g.conv2d_input((2, 4, 8), W, gy)
    for size in [(-1, 4, 8, 8), (2, 0, 8, 8)]:  # a batch may be empty, nothing else
        with pytest.raises(ValueError, match=_escape(f"N >= 0 and the others positive, got {size}")):
            g.conv2d_input(size, W, gy)
    with pytest.raises(TypeError, match="same dtype"):
        g.conv2d_weight(X.astype(np.float32), W.shape, gy)
    with pytest.raises(ValueError, match=_escape("grad_output must have shape")):
        g.conv2d_weight(X, (6, 4, 2, 2), gy)
    with pytest.raises(ValueError, match="grad_output must be 4-D"):
        g.conv2d_bias(np.zeros(3))
    for size, error in [(5, TypeError), ("abcd", TypeError), ((6, 4, 1.5, 3), TypeError), ((6, 4, True, 3), TypeError), ((6, 4, 3), ValueError)]:
        with pytest.raises(error, match=r"weight_size must be (a sequence of )?4 ints \(C_out, C_in/groups, kH, kW\)"):
            g.conv2d_weight(X, size, gy)
        with pytest.raises(error, match=r"weight_size must be (a sequence of )?4 ints \(C_in, C_out/groups, kH, kW\)"):
            g.conv_transpose2d_weight(gy, size, X)


@impl_param
def test_conv_transpose2d_errors(impl):
    f, g = IMPLS[impl]
    w = np.zeros((4, 3, 3, 3))
    with pytest.raises(ValueError, match=_escape("output_padding (2, 2) must be smaller than either stride (2, 2) or dilation (1, 1)")):
        f.conv_transpose2d(X, w, stride=2, output_padding=2)
    with pytest.raises(ValueError, match="expects 4 input channels"):
        f.conv_transpose2d(X[:, :3], w)
    with pytest.raises(ValueError, match="padding must be an int or a pair"):
        f.conv_transpose2d(X, w, padding="same")
    with pytest.raises(ValueError, match="output would be empty"):
        f.conv_transpose2d(X[:, :, :1, :1], np.zeros((4, 3, 1, 1)), padding=1)
    with pytest.raises(ValueError, match="divisible by groups"):
        f.conv_transpose2d(X, w, groups=3)
    with pytest.raises(ValueError, match=_escape("grad_output must have shape (2, 3, 10, 10)")):
        g.conv_transpose2d_input(X.shape, w, np.zeros((2, 3, 9, 10)))


POOL_ERRORS = [
    (lambda f: f.max_pool2d(X, 3, padding=2), ValueError, "padding (2, 2) must be at most half of kernel_size (3, 3)"),
    (lambda f: f.max_pool2d(X, 0), ValueError, "kernel_size must be positive"),
    (lambda f: f.max_pool2d(X, 2, stride=0), ValueError, "stride must be positive"),
    (lambda f: f.max_pool2d(X, 2, dilation=0), ValueError, "dilation must be positive"),
    (lambda f: f.max_pool2d(X, 9), ValueError, "pooling output would be empty"),
    (lambda f: f.max_pool2d(X, 2, ceil_mode=1), TypeError, "ceil_mode must be a bool"),
    (lambda f: f.max_pool2d(X.astype(np.int32), 2), TypeError, "float32 or float64"),
    (lambda f: f.avg_pool2d(X, 2, divisor_override=0), ValueError, "divisor_override must be a non-zero int"),
    (lambda f: f.avg_pool2d(X, 2, padding=-1), ValueError, "padding must be non-negative"),
    (lambda f: f.lp_pool2d(X, 0, 2), ValueError, "norm_type must be a positive finite number"),
    (lambda f: f.lp_pool2d(X, float("inf"), 2), ValueError, "norm_type must be a positive finite number"),
    (lambda f: f.sum_pool2d(X[0, 0], 2), ValueError, "input must be 4-D"),
    (lambda f: f.adaptive_avg_pool2d(X, 0), ValueError, "output_size must be positive"),
    (lambda f: f.adaptive_max_pool2d(X, (1, 2, 3)), ValueError, "output_size must be an int or a pair"),
    (lambda f: f.max_unpool2d(X, np.zeros(X.shape, np.int64), 2, output_size=(20, 16)), ValueError, "output_size (20, 16) must be strictly between"),
    (lambda f: f.max_unpool2d(X, np.full(X.shape, 400), 2), ValueError, "indices must lie in [0, 256)"),
    (lambda f: f.max_unpool2d(X, np.zeros(X.shape), 2), TypeError, "indices must be an integer array"),
    (lambda f: f.max_unpool2d(X, np.zeros((2, 4, 8, 7), np.int64), 2), ValueError, "indices must have shape (2, 4, 8, 8)"),
]


@impl_param
@pytest.mark.parametrize("call, error, message", POOL_ERRORS, ids=lambda v: v if isinstance(v, str) else "")
def test_pool_errors(impl, call, error, message):
    f, g = IMPLS[impl]
    with pytest.raises(error, match=_escape(message)):
        call(f)


@impl_param
def test_pool_gradient_errors(impl):
    f, g = IMPLS[impl]
    with pytest.raises(ValueError, match=_escape("grad_output must have shape (2, 4, 4, 4)")):
        g.max_pool2d_input(X, np.zeros((2, 4, 4, 3)), 2)
    with pytest.raises(ValueError, match=_escape("indices must have shape (2, 4, 4, 4)")):
        g.max_pool2d_input(X, np.zeros((2, 4, 4, 4)), 2, indices=np.zeros((2, 4, 4, 3), np.int64))
    with pytest.raises(ValueError, match=_escape("grad_output must have shape (2, 4, 4, 4)")):
        g.avg_pool2d_input(X.shape, np.zeros((2, 4, 3, 4)), 2)
    with pytest.raises(ValueError, match=_escape("grad_output must have shape")):
        g.sum_pool2d_input(X.shape, np.zeros((2, 4, 3, 4)), 2)
    with pytest.raises(ValueError, match=_escape("grad_output must have shape")):
        g.lp_pool2d_input(X, np.zeros((2, 4, 3, 4)), 2, 2)
    with pytest.raises(ValueError, match=_escape("grad_output must have N, C")):
        g.adaptive_avg_pool2d_input(X.shape, np.zeros((2, 3, 3, 4)))
    with pytest.raises(ValueError, match=_escape("grad_output must have N, C")):
        g.adaptive_max_pool2d_input(X, np.zeros((1, 4, 3, 4)))
    with pytest.raises(ValueError, match=_escape("indices must lie in [0, 4)")):
        g.max_unpool2d_input(np.zeros((2, 4, 2, 2)), np.full((2, 4, 1, 1), 4))


def test_sizes_and_arguments_as_numpy_values():
    # NumPy integers and arrays are ints as well; a float size is refused, never truncated
    x, w = np.ones((1, 2, 5, 6)), np.ones((3, 2, 3, 3))
    assert fastconv.conv2d(x, w, stride=np.array(2), padding=np.int64(1)).shape == (1, 3, 3, 3)
    assert fastconv.adaptive_avg_pool2d(x, np.array([3, 2])).shape == (1, 2, 3, 2)
    with pytest.raises(TypeError, match=r"input_size must be a sequence of 4 ints"):
        grad.conv2d_input((1, 2, 5.7, 6), w, np.ones((1, 3, 3, 4)))
    y, idx = fastconv.max_pool2d(x, 2, return_indices=True)
    with pytest.raises(TypeError, match="output_size must be ints"):
        fastconv.max_unpool2d(y, idx, 2, output_size=(5.5, 6))


@pytest.mark.parametrize("impl", list(IMPLS))
def test_arguments_are_checked_in_order(impl):
    # with two bad arguments, fastconv and the reference name the same (the first)
    f, g = IMPLS[impl]
    bad = dict(count_include_pad=1, divisor_override=0)
    with pytest.raises(TypeError, match="count_include_pad must be a bool"):
        f.avg_pool2d(X, 2, **bad)
    with pytest.raises(TypeError, match="count_include_pad must be a bool"):
        g.avg_pool2d_input(X.shape, np.ones((2, 4, 4, 4)), 2, **bad)

