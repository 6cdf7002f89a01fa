"""Elementwise activations for fastconv.nn: ReLU and its gradient, over flat arrays
in blocks across threads. (NumPy's np.where(x > 0, x, 0) took 0.4-1 ms on LeNet's
first activation, 300k cells, about a fifth of a training step; these take 20-30 us.)

Each block is sliced out first and `zero` has the arrays' dtype: indexing the whole
array with a float64 literal in the select measured 8x slower (not vectorised)."""

from numba import prange

from ._jit import parallel

CELLS = 1 << 14  # per iteration


@parallel
def relu(x, out, zero):
    """out = x where x is not negative, else 0, for 1-D arrays: NaN stays NaN and -0.0
    stays -0.0, as in torch.relu."""
    n = x.shape[0]
    for b in prange(-(-n // CELLS)):
        lo, hi = b * CELLS, min(n, (b + 1) * CELLS)
        src, dst = x[lo:hi], out[lo:hi]
        for i in range(hi - lo):
            v = src[i]
            dst[i] = zero if v < zero else v


@parallel
def relu_backward(x, grad_output, out, zero):
    """out = 0 where x <= 0, else grad_output (NaN inputs pass it), for 1-D arrays:
    torch's threshold_backward."""
    n = x.shape[0]
    for b in prange(-(-n // CELLS)):
        lo, hi = b * CELLS, min(n, (b + 1) * CELLS)
        src, grad, dst = x[lo:hi], grad_output[lo:hi], out[lo:hi]
        for i in range(hi - lo):
            dst[i] = zero if src[i] <= zero else grad[i]
