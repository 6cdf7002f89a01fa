"""fastconv.nn.ReLU's kernels against torch.relu's semantics: NaN and -0.0 kept, the
gradient stopped at inputs <= 0 only (a NaN input passes it); arrays over several
blocks, both dtypes, non-contiguous inputs, either thread count."""

import numpy as np
import pytest
from fastconv.kernels import activation
from hypothesis import given, settings
from hypothesis import strategies as st

import fastconv
from fastconv import nn

SPECIALS = [np.nan, -0.0, 0.0, -np.inf, np.inf, -1.5, 2.5, 1e-30, -1e-30]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("size", [1, 9, activation.CELLS, 3 * activation.CELLS + 5])
def test_relu_kernels(dtype, threads, size, rng):
    x = rng.standard_normal(size).astype(dtype)
    x[: min(size, len(SPECIALS))] = SPECIALS[: min(size, len(SPECIALS))]
    g = rng.standard_normal(size).astype(dtype)
    g[-1] = np.nan
    out, gx, passes = np.full_like(x, 7), np.full_like(x, 7), np.zeros(size, dtype=bool)
    with fastconv.num_threads(threads):
        activation.relu(x, out, passes, dtype(0))
        activation.relu_backward(passes, g, gx, dtype(0))
    expected = np.where(np.isnan(x) | (x >= 0), x, 0)
    np.testing.assert_array_equal(out, expected)
    assert np.array_equal(np.signbit(out), np.signbit(expected))  # -0.0 kept
    np.testing.assert_array_equal(gx, np.where(x <= 0, 0, g))


def test_relu_layer_matches_torch_on_special_values(rng):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((2, 3, 5, 4))
    x.reshape(-1)[: len(SPECIALS)] = SPECIALS
    view = x[:, :, ::-1]  # non-contiguous
    g = rng.standard_normal(x.shape)
    layer = nn.ReLU()
    y = layer.forward(view)
    tx = torch.from_numpy(np.ascontiguousarray(view)).requires_grad_()
    ty = torch.relu(tx)
    ty.backward(torch.from_numpy(g))
    np.testing.assert_array_equal(y, ty.detach().numpy())
    assert np.array_equal(np.signbit(y), np.signbit(ty.detach().numpy()))
    np.testing.assert_array_equal(layer.backward(g), tx.grad.numpy())


def test_relu_layer_shapes(rng):
    layer = nn.ReLU()
    assert layer.forward(np.float64(-2.0)).shape == ()  # a 0-d input stays 0-d
    x = rng.standard_normal((4, 3))
    y = layer.forward(x)
    x[:] = 5.0  # the input changed after forward: the gradient still follows y
    np.testing.assert_array_equal(layer.backward(np.ones((4, 3))), (y > 0).astype(float))
    for wrong in [(1, 3), (4, 3, 1), (12,)]:
        with pytest.raises(ValueError, match="grad_output must have the shape"):
            layer.backward(np.ones(wrong))


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.sampled_from(SPECIALS) | st.floats(-1e6, 1e6), min_size=1, max_size=3 * activation.CELLS // 1000),
    st.integers(1, 40), st.sampled_from([np.float32, np.float64]), st.integers(1, 2),
)
def test_relu_kernels_random(values, repeat, dtype, threads):
    x = np.array(values * repeat, dtype=dtype)
    g = np.arange(x.size, dtype=dtype) - 7
    out, gx, passes = np.empty_like(x), np.empty_like(x), np.empty(x.size, dtype=bool)
    with fastconv.num_threads(threads):
        activation.relu(x, out, passes, dtype(0))
        activation.relu_backward(passes, g, gx, dtype(0))
    np.testing.assert_array_equal(out, np.where(np.isnan(x) | (x >= 0), x, 0))
    np.testing.assert_array_equal(gx, np.where(x <= 0, 0, g))
