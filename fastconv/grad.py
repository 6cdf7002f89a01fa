"""Gradients with torch.nn.grad's names: `<op>_input` and `<op>_weight` (and bias).

Each takes what the backward pass has (the forward's input or its size, the weight
or its size, and grad_output) and the forward's arguments, and returns the gradient
with the shape of the corresponding forward argument.
"""

from __future__ import annotations

from fastconv import dispatch
from fastconv import params as P
from fastconv.reference import (  # noqa: F401  (pooling runs on the reference until its kernels land)
    adaptive_avg_pool2d_input,
    adaptive_max_pool2d_input,
    avg_pool2d_input,
    lp_pool2d_input,
    max_pool2d_input,
    max_unpool2d_input,
    sum_pool2d_input,
)


def conv2d_input(input_size, weight, grad_output, stride=1, padding=0, dilation=1, groups=1):
    """Gradient of conv2d with respect to its input: (N, C_in, H, W) = input_size."""
    w, gy, g = P.conv2d_input_arguments(input_size, weight, grad_output, stride, padding, dilation, groups)
    return dispatch.input_grad(w, gy, g)


def conv2d_weight(input, weight_size, grad_output, stride=1, padding=0, dilation=1, groups=1):
    """Gradient of conv2d with respect to its weight: (C_out, C_in / groups, kH, kW) = weight_size."""
    x, gy, g = P.conv2d_weight_arguments(input, weight_size, grad_output, stride, padding, dilation, groups)
    return dispatch.weight_grad(x, gy, g)


def conv2d_bias(grad_output):
    """Gradient of conv2d (or conv_transpose2d) with respect to its bias: (C_out,)."""
    gy = P.as_float_array(grad_output, "grad_output")
    P.check_ndim(gy, "grad_output")
    return dispatch.bias_grad(gy)


def conv_transpose2d_input(input_size, weight, grad_output, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    """Gradient of conv_transpose2d with respect to its input: a conv2d of grad_output."""
    w, gy, g = P.conv_transpose2d_input_arguments(input_size, weight, grad_output, stride, padding, output_padding, groups, dilation)
    return dispatch.forward(gy, w, g)


def conv_transpose2d_weight(input, weight_size, grad_output, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    """Gradient of conv_transpose2d with respect to its weight: (C_in, C_out / groups, kH, kW)."""
    x, gy, g = P.conv_transpose2d_weight_arguments(input, weight_size, grad_output, stride, padding, output_padding, groups, dilation)
    return dispatch.weight_grad(gy, x, g)
