"""Elementwise activations for fastconv.nn: ReLU and its gradient, over flat arrays
in blocks across threads. (NumPy's np.where(x > 0, x, 0) took 0.4-1 ms on LeNet's
first activation, 300k cells, about a fifth of a training step; these take 20-30 us.)

Each block is sliced out first and `zero` has the arrays' dtype: indexing the whole
array with a float64 literal in the select measured 8x slower (not vectorised)."""

from numba import prange

from ._jit import parallel

CELLS = 1 << 14  # per iteration


@parallel
def relu(x, out, passes, zero):
    """out = x where x is not negative, else 0, for 1-D arrays: NaN stays NaN and -0.0
    stays -0.0, as in torch.relu. passes = not (x <= 0): where the gradient goes
    through (a NaN input passes it, as in torch's threshold_backward)."""
    n = x.shape[0]
    for b in prange(-(-n // CELLS)):
        lo, hi = b * CELLS, min(n, (b + 1) * CELLS)
        src, dst, through = x[lo:hi], out[lo:hi], passes[lo:hi]
        for i in range(hi - lo):
            v = src[i]
            dst[i] = zero if v < zero else v
            through[i] = not v <= zero


@parallel
def relu_backward(passes, grad_output, out, zero):
    """out = grad_output where `passes` (from relu), else 0, for 1-D arrays."""
    n = passes.shape[0]
    for b in prange(-(-n // CELLS)):
        lo, hi = b * CELLS, min(n, (b + 1) * CELLS)
        through, grad, dst = passes[lo:hi], grad_output[lo:hi], out[lo:hi]
        for i in range(hi - lo):
            dst[i] = grad[i] if through[i] else zero
