"""Which kernel runs a convolution: one small decision, made per shape.

conv2d, conv_transpose2d and their gradients all reduce to three computations on
a convolution geometry (forward, input gradient, weight gradient); conv_transpose2d
is the input gradient of the convolution it is the adjoint of. Each is run by the
GEMM family (im2col + BLAS, fastconv.kernels.conv) or the direct family (loops,
fastconv.kernels.direct).
"""

from __future__ import annotations

import contextlib

import numpy as np

from fastconv import reference
from fastconv.kernels import conv as K
from fastconv.kernels import direct as D
from fastconv.params import ConvGeometry
from fastconv.threads import get_num_threads

PATHS = ("gemm", "direct")
_forced: str | None = None


def conv_path(g: ConvGeometry) -> str:
    """'gemm' for 1x1 convolutions over several channels (a plain matrix product;
    the direct kernels would pad the one tap to three); 'direct' for the rest, every
    stride, dilation and group count. Measured on the catalogue (python -m
    fastconv bench)."""
    if _forced is not None:
        return _forced
    if g.kh == g.kw == 1 and g.c_in // g.groups > 1:
        return "gemm"
    return "direct"


@contextlib.contextmanager
def force_path(path: str | None):
    """Run every convolution inside on one path ('gemm' or 'direct'), for benchmarks."""
    global _forced
    if path is not None and path not in PATHS:
        raise ValueError(f"path must be one of {PATHS} or None, got {path!r}")
    before, _forced = _forced, path
    try:
        yield
    finally:
        _forced = before


def _contiguous(*arrays):
    return [np.ascontiguousarray(a) for a in arrays]


def forward(x, weight, g: ConvGeometry):
    x, weight = _contiguous(x, weight)
    if conv_path(g) == "gemm":
        return K.gemm_forward(x, weight, g, get_num_threads())
    return D.forward_driver(x, weight, g, get_num_threads())


def input_grad(weight, grad_output, g: ConvGeometry):
    weight, grad_output = _contiguous(weight, grad_output)
    if conv_path(g) == "gemm":
        return K.gemm_input(weight, grad_output, g, get_num_threads())
    return D.input_driver(weight, grad_output, g, get_num_threads())


def weight_grad(x, grad_output, g: ConvGeometry):
    x, grad_output = _contiguous(x, grad_output)
    if conv_path(g) == "gemm":
        gw = K.gemm_weight(x, grad_output, g, get_num_threads())
    else:
        gw = D.weight_driver(x, grad_output, g, get_num_threads())
    if np.isnan(gw).any() and not np.isfinite(x).all():
        # Both paths compute whole rows of the wide layout, whose extra cells meet
        # input cells with a zero gradient: an infinite input there gives 0 * inf, NaN
        # where PyTorch's sum is infinite. The reference's exact columns (rare: a
        # diverged input) match it.
        with np.errstate(invalid="ignore", over="ignore"):
            return reference._conv_weight_grad(x, grad_output, g)
    return gw


def bias_grad(grad_output):
    (grad_output,) = _contiguous(grad_output)
    return K.bias_grad(grad_output)


def add_bias(out, bias):
    if bias is not None:
        out += bias.reshape(1, -1, 1, 1)
    return out
