"""Compile every kernel ahead of time, for float32 and float64.

Kernels are compiled on first use and cached on disk (Numba's cache=True), so this
costs the full compile once per machine and a cache load in later processes.
"""

from __future__ import annotations

import time

import numpy as np


def warmup(dtypes=(np.float32, np.float64)) -> float:
    """Run every operator and gradient once on tiny inputs, on each kernel path, for
    `dtypes`: one dtype (np.float32, "float64", ...) or several. Returns the
    seconds it took."""
    import fastconv
    from fastconv import dispatch, grad
    from fastconv.kernels import activation, blocked
    from fastconv.params import FLOAT_DTYPES, conv2d_geometry

    if isinstance(dtypes, (str, type, np.dtype)):
        dtypes = (dtypes,)
    dtypes = [np.dtype(d) for d in dtypes]
    if any(d not in FLOAT_DTYPES for d in dtypes):
        raise TypeError(f"dtypes must be float32 or float64, got {[str(d) for d in dtypes]}")
    start = time.perf_counter()
    for dtype in dtypes:
        x = np.ones((2, 2, 6, 6), dtype=dtype)
        w = np.ones((2, 2, 3, 3), dtype=dtype)
        gy = np.ones((2, 2, 6, 6), dtype=dtype)
        gs = np.ones((2, 2, 3, 3), dtype=dtype)
        for path in dispatch.PATHS:
            with dispatch.force_path(path):
                for stride, padding in ((1, 1), (2, 1)):
                    y = fastconv.conv2d(x, w, np.ones(2, dtype), stride=stride, padding=padding)
                    grad.conv2d_input(x.shape, w, y, stride=stride, padding=padding)
                    grad.conv2d_weight(x, w.shape, y, stride=stride, padding=padding)
                fastconv.conv2d(x, w[:, :1], groups=2, padding=1)
                fastconv.conv2d(x, w[:, :, :1, :1])
                grad.conv2d_input(x.shape, w[:, :, :1, :1], gy)
                grad.conv2d_weight(x, (2, 2, 1, 1), gy)
        # the blocked weight gradient summed along the channels, which the shapes
        # above are too small for
        geometry = conv2d_geometry(x.shape, w.shape, padding=1)
        blocked.weight_grad(x, gy, geometry, fastconv.get_num_threads(), channels=True)
        grad.conv2d_bias(gy)
        y, idx = fastconv.max_pool2d(x, 2, return_indices=True)
        fastconv.max_pool2d(x, 2)
        grad.max_pool2d_input(x, gs, 2, indices=idx)
        grad.max_pool2d_input(x, gs, 2)
        fastconv.max_unpool2d(y, idx, 2)
        grad.max_unpool2d_input(gy, idx)
        fastconv.avg_pool2d(x, 2)
        grad.avg_pool2d_input(x.shape, gs, 2)
        fastconv.lp_pool2d(x, 2, 2)
        grad.lp_pool2d_input(x, gs, 2, 2)
        fastconv.adaptive_avg_pool2d(x, 3)
        grad.adaptive_avg_pool2d_input(x.shape, gs)
        fastconv.adaptive_max_pool2d(x, 3)
        grad.adaptive_max_pool2d_input(x, gs)
        flat, passes = x.reshape(-1), np.empty(x.size, dtype=bool)  # fastconv.nn.ReLU's kernels
        zero = np.dtype(dtype).type(0)
        activation.relu(flat, np.empty_like(flat), passes, zero)
        activation.relu_backward(passes, flat, np.empty_like(flat), zero)
    return time.perf_counter() - start
