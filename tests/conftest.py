"""Shared tolerances and helpers. Tolerances are relative to the largest magnitude
of the expected array (or of the inputs, for sums that can cancel: `scale`), per
dtype, and live only here."""

import numpy as np
import pytest

# float64 must match PyTorch and the reference to 1e-10; float32 to 1e-4.
RTOL = {np.float64: 1e-10, np.float32: 1e-4}
# Pooling is exact up to the order of a handful of additions.
POOL_RTOL = {np.float64: 1e-12, np.float32: 1e-5}


def input_scale(x) -> float:
    """The largest finite magnitude in x: the scale of a sum's rounding error, however
    much the sum cancels (an average of values of magnitude 1 that comes out 1e-3)."""
    x = np.abs(np.asarray(x, dtype=np.float64))
    finite = x[np.isfinite(x)]
    return float(finite.max()) if finite.size else 0.0


def rel_error(actual, expected, scale=0.0) -> float:
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    nan_a, nan_e = np.isnan(actual), np.isnan(expected)
    assert np.array_equal(nan_a, nan_e), "NaN positions differ"
    a, e = actual[~nan_a], expected[~nan_e]
    assert np.array_equal(np.isinf(a), np.isinf(e)) and np.array_equal(a[np.isinf(a)], e[np.isinf(e)]), "infs differ"
    finite = np.isfinite(e)
    if not finite.any():
        return 0.0
    scale = max(np.max(np.abs(e[finite])), scale, 1e-30)
    return float(np.max(np.abs(a[finite] - e[finite])) / scale)


def assert_close(actual, expected, dtype, rtol=RTOL, scale=0.0):
    assert np.asarray(actual).dtype == np.dtype(dtype), f"result dtype {np.asarray(actual).dtype}, expected {dtype}"
    tol = rtol[np.dtype(dtype).type]
    err = rel_error(actual, expected, scale)
    assert err <= tol, f"relative error {err:.3g} > {tol:.0e}"


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
