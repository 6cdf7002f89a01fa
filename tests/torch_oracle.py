"""PyTorch's forward and gradients for every operator, for cross-checks.

Each function takes NumPy arrays and the fastconv-style arguments, and returns
(output, {name: gradient}) computed by torch autograd in the arrays' dtype.
Asymmetric conv padding, which torch's conv2d does not take, is applied with F.pad.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional


def _leaf(a):
    return torch.tensor(np.ascontiguousarray(a), requires_grad=True)


def _run(forward, arrays: dict, grad_output):
    leaves = {k: _leaf(v) for k, v in arrays.items() if v is not None}
    out = forward(**leaves)
    idx = None
    if isinstance(out, tuple):
        out, idx = out
    out.backward(torch.tensor(grad_output))
    grads = {k: t.grad.numpy() for k, t in leaves.items()}
    result = out.detach().numpy()
    return (result, grads) if idx is None else ((result, idx.numpy()), grads)


def output_shape(forward, arrays):
    with torch.no_grad():
        out = forward(**{k: torch.tensor(v) for k, v in arrays.items() if v is not None})
    return tuple((out[0] if isinstance(out, tuple) else out).shape)


def conv2d(x, w, b, stride, padding, dilation, groups):
    if isinstance(padding, tuple) and isinstance(padding[0], tuple):
        (t, bo), (l, r) = padding

        def fwd(x, w, b=None):
            return F.conv2d(F.pad(x, (l, r, t, bo)), w, b, stride, 0, dilation, groups)
    else:

        def fwd(x, w, b=None):
            return F.conv2d(x, w, b, stride, padding, dilation, groups)

    return fwd


def with_grads(forward, arrays, rng):
    """Run forward and backward with a random grad_output; returns (out, grads, gy)."""
    shape = output_shape(forward, arrays)
    dtype = next(iter(arrays.values())).dtype
    gy = rng.standard_normal(shape).astype(dtype)
    out, grads = _run(forward, arrays, gy)
    return out, grads, gy
