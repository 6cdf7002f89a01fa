"""Argument normalisation, validation and output-size math for every operator.

This is the one place that turns user arguments (ints, pairs, 'same', None) into
plain integers and checks them. The public functions, the NumPy reference and the
layers all go through it, so an argument is accepted or refused the same way
everywhere, and every error names the argument and its values before any
computation runs.

Conventions: arrays are NCHW; conv weights are OIHW, transposed-conv weights IOHW.
"""

from __future__ import annotations

import numbers
from typing import NamedTuple

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


# --------------------------------------------------------------------------- arrays


def as_float_array(x, name: str) -> np.ndarray:
    """Return `x` as an ndarray, refusing anything but float32 and float64."""
    arr = np.asarray(x)
    if arr.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name} must have dtype float32 or float64, got {arr.dtype}"
            + (" (convert it with .astype(np.float32))" if arr.dtype.kind in "biuf" else "")
        )
    return arr


def same_dtype(name_a: str, a: np.ndarray, name_b: str, b: np.ndarray) -> None:
    if a.dtype != b.dtype:
        raise TypeError(f"{name_a} ({a.dtype}) and {name_b} ({b.dtype}) must have the same dtype")


def check_ndim(x: np.ndarray, name: str, ndim: int = 4, layout: str = "(N, C, H, W)") -> None:
    if x.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D {layout}, got shape {tuple(x.shape)}")
    if 0 in x.shape[1:]:  # an empty batch is allowed, as in PyTorch
        raise ValueError(f"{name} must not be empty, got shape {tuple(x.shape)}")


def batched(x: np.ndarray, name: str) -> tuple[np.ndarray, bool]:
    """Accept (N, C, H, W) or unbatched (C, H, W) input, as torch.nn.functional does.

    Returns the 4-D array and whether a batch axis was added.
    """
    if x.ndim == 3:
        x = x[None]
        check_ndim(x, name)
        return x, True
    check_ndim(x, name, layout="(N, C, H, W) or 3-D (C, H, W)")
    return x, False


def is_int(value) -> bool:
    """An integer of any integer type (NumPy's too), and not a bool."""
    # a plain int first: the abstract class's check costs a microsecond a call
    return type(value) is int or (isinstance(value, numbers.Integral) and not isinstance(value, bool))


def four_ints(size, name: str, layout: str = "(N, C, H, W)") -> tuple[int, int, int, int]:
    """A 4-D shape given as a sequence of 4 ints (torch.nn.grad's input_size, weight_size)."""
    try:
        size = tuple(size)
    except TypeError:
        raise TypeError(f"{name} must be a sequence of 4 ints {layout}, got {size!r}") from None
    if not all(is_int(s) for s in size):
        raise TypeError(f"{name} must be a sequence of 4 ints {layout}, got {size!r}")
    if len(size) != 4:
        raise ValueError(f"{name} must be 4 ints {layout}, got {size!r}")
    return tuple(int(s) for s in size)  # type: ignore[return-value]


def check_size(size, name: str) -> tuple[int, int, int, int]:
    """An input shape: 4 ints, a batch of N >= 0 and the others positive."""
    size = four_ints(size, name)
    if size[0] < 0 or min(size[1:]) <= 0:
        raise ValueError(f"{name} must be 4 ints (N, C, H, W), N >= 0 and the others positive, got {size}")
    return size  # type: ignore[return-value]


# ----------------------------------------------------------------------- scalars


def _int(value, name: str) -> int:
    if not is_int(value):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    return int(value)


def pair(value, name: str) -> tuple[int, int]:
    """An int or a sequence of two ints, as torch's _pair; a sequence of one int
    stands for both, as in PyTorch's operators."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    if isinstance(value, (tuple, list, np.ndarray)):
        if len(value) not in (1, 2):
            raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
        return _int(value[0], name), _int(value[-1], name)
    v = _int(value, name)
    return v, v


def positive_pair(value, name: str) -> tuple[int, int]:
    p = pair(value, name)
    if min(p) <= 0:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return p


def nonnegative_pair(value, name: str) -> tuple[int, int]:
    p = pair(value, name)
    if min(p) < 0:
        raise ValueError(f"{name} must be non-negative, got {value!r}")
    return p


def check_bool(value, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {value!r}")
    return bool(value)


# -------------------------------------------------------------------- convolution


class ConvGeometry(NamedTuple):
    """Every integer a conv2d kernel needs.

    The input is (n, c_in, h, w), the OIHW weight (c_out, c_in // groups, kh, kw),
    the output (n, c_out, oh, ow). Padding is (top, bottom, left, right). Along an axis
    with one output the stride is the smallest that gives it, which may be less than
    the one asked for (lone_output_stride).
    """

    n: int
    c_in: int
    h: int
    w: int
    c_out: int
    kh: int
    kw: int
    groups: int
    sh: int
    sw: int
    pt: int
    pb: int
    pl: int
    pr: int
    dh: int
    dw: int
    oh: int
    ow: int

    @property
    def input_shape(self):
        return (self.n, self.c_in, self.h, self.w)

    @property
    def weight_shape(self):
        return (self.c_out, self.c_in // self.groups, self.kh, self.kw)

    @property
    def output_shape(self):
        return (self.n, self.c_out, self.oh, self.ow)

    @property
    def flops(self) -> int:
        """Multiply-adds of the forward pass, counted as two flops each."""
        return 2 * self.n * self.c_out * self.oh * self.ow * (self.c_in // self.groups) * self.kh * self.kw


def check_groups(groups) -> int:
    if not is_int(groups) or groups <= 0:
        raise ValueError(f"groups must be a positive int, got {groups!r}")
    return int(groups)


def conv_padding(padding, kernel: tuple[int, int], stride, dilation) -> tuple[int, int, int, int]:
    """Normalise conv2d padding to (top, bottom, left, right).

    Accepts an int, (ph, pw), ((top, bottom), (left, right)), 'valid' or 'same'.
    'same' (stride 1 only, as PyTorch) puts the odd extra pixel at the bottom/right.
    """
    if isinstance(padding, str):
        if padding == "valid":
            return 0, 0, 0, 0
        if padding == "same":
            if stride != (1, 1):
                raise ValueError(f"padding='same' is not supported for strided convolutions, got stride={stride}")
            total_h = dilation[0] * (kernel[0] - 1)
            total_w = dilation[1] * (kernel[1] - 1)
            return total_h // 2, total_h - total_h // 2, total_w // 2, total_w - total_w // 2
        raise ValueError(f"padding must be 'valid', 'same', an int or pairs of ints, got {padding!r}")
    if isinstance(padding, (tuple, list)) and len(padding) == 2 and all(
        isinstance(p, (tuple, list)) for p in padding
    ):
        (pt, pb), (pl, pr) = (pair(p, "padding") for p in padding)
        pads = (pt, pb, pl, pr)
    else:
        ph, pw = pair(padding, "padding")
        pads = (ph, ph, pw, pw)
    if min(pads) < 0:
        raise ValueError(f"padding must be non-negative, got {padding!r}")
    return pads


def conv_output_size(size: int, pad_total: int, dilation: int, kernel: int, stride: int) -> int:
    """o = floor((i + pad_before + pad_after - d(k-1) - 1) / s) + 1."""
    return (size + pad_total - dilation * (kernel - 1) - 1) // stride + 1


MAX_PADDED_CELLS = 1 << 31  # a padded input plane, at most (conv2d_geometry)


def lone_output_stride(stride: int, padded: int, extent: int, out: int) -> int:
    """The stride the kernels use along an axis with `out` outputs: where there is one,
    the stride makes no difference to it, and the smallest that still gives one output
    (the padded size less the window's extent, plus one) keeps the polyphase layouts,
    whose size grows with the stride, as small as the input (a stride of 1000 over five
    rows took seconds and gigabytes)."""
    return min(stride, max(1, padded - extent + 1)) if out == 1 else stride


def conv2d_geometry(input_shape, weight_shape, stride=1, padding=0, dilation=1, groups=1) -> ConvGeometry:
    """Validate conv2d arguments for NCHW input and OIHW weight shapes."""
    n, c_in, h, w = input_shape
    if len(weight_shape) != 4:
        raise ValueError(f"weight must be 4-D (C_out, C_in/groups, kH, kW), got shape {tuple(weight_shape)}")
    c_out, c_per_group, kh, kw = weight_shape
    groups = check_groups(groups)
    if c_in % groups:
        raise ValueError(f"input channels ({c_in}) must be divisible by groups ({groups})")
    if c_out % groups:
        raise ValueError(f"weight's output channels ({c_out}) must be divisible by groups ({groups})")
    if c_per_group * groups != c_in:
        raise ValueError(
            f"weight of shape {tuple(weight_shape)} expects {c_per_group * groups} input channels "
            f"with groups={groups}, but input has {c_in} channels (shape {tuple(input_shape)})"
        )
    if min(c_out, kh, kw) <= 0:
        raise ValueError(f"weight must not be empty, got shape {tuple(weight_shape)}")
    sh, sw = positive_pair(stride, "stride")
    dh, dw = positive_pair(dilation, "dilation")
    pt, pb, pl, pr = conv_padding(padding, (kh, kw), (sh, sw), (dh, dw))
    oh = conv_output_size(h, pt + pb, dh, kh, sh)
    ow = conv_output_size(w, pl + pr, dw, kw, sw)
    if oh <= 0 or ow <= 0:
        raise ValueError(
            f"kernel size ({kh}, {kw}) with dilation ({dh}, {dw}) is larger than the padded input "
            f"({h + pt + pb}, {w + pl + pr}): the output would be empty"
        )
    if (h + pt + pb) * (w + pl + pr) > MAX_PADDED_CELLS:
        # the kernels lay the padded plane out in memory (fastconv.kernels.phases)
        raise ValueError(
            f"padding {(pt, pb, pl, pr)} makes a padded plane of {h + pt + pb} x {w + pl + pr} cells; "
            f"fastconv lays it out in memory, at most {MAX_PADDED_CELLS} cells"
        )
    sh = lone_output_stride(sh, h + pt + pb, dh * (kh - 1) + 1, oh)
    sw = lone_output_stride(sw, w + pl + pr, dw * (kw - 1) + 1, ow)
    return ConvGeometry(n, c_in, h, w, c_out, kh, kw, groups, sh, sw, pt, pb, pl, pr, dh, dw, oh, ow)


def conv_transpose2d_output_size(size: int, stride: int, padding: int, dilation: int, kernel: int, output_padding: int) -> int:
    """o' = s(i' - 1) - 2p + d(k - 1) + output_padding + 1."""
    return stride * (size - 1) - 2 * padding + dilation * (kernel - 1) + output_padding + 1


def conv_transpose2d_geometry(
    input_shape, weight_shape, stride=1, padding=0, output_padding=0, groups=1, dilation=1
) -> ConvGeometry:
    """Validate conv_transpose2d arguments (IOHW weight).

    A transposed convolution is the adjoint of a convolution. The geometry returned is
    that of the convolution it is the adjoint of: its input is the transposed conv's
    output (n, c_out, h', w'), its output the transposed conv's input (n, c_in, h, w),
    and its OIHW weight is the IOHW weight given here.
    """
    n, c_in, h, w = input_shape
    if len(weight_shape) != 4:
        raise ValueError(f"weight must be 4-D (C_in, C_out/groups, kH, kW), got shape {tuple(weight_shape)}")
    w_in, c_out_per_group, kh, kw = weight_shape
    groups = check_groups(groups)
    if c_in % groups:
        raise ValueError(f"input channels ({c_in}) must be divisible by groups ({groups})")
    if w_in != c_in:
        raise ValueError(
            f"weight of shape {tuple(weight_shape)} expects {w_in} input channels, "
            f"but input has {c_in} channels (shape {tuple(input_shape)})"
        )
    if min(c_out_per_group, kh, kw) <= 0:
        raise ValueError(f"weight must not be empty, got shape {tuple(weight_shape)}")
    if isinstance(padding, str):
        raise ValueError(f"conv_transpose2d padding must be an int or a pair of ints, got {padding!r}")
    sh, sw = positive_pair(stride, "stride")
    dh, dw = positive_pair(dilation, "dilation")
    ph, pw = nonnegative_pair(padding, "padding")
    oph, opw = nonnegative_pair(output_padding, "output_padding")
    if oph >= max(sh, dh) or opw >= max(sw, dw):
        raise ValueError(
            f"output_padding {(oph, opw)} must be smaller than either stride {(sh, sw)} "
            f"or dilation {(dh, dw)} in each dimension"
        )
    out_h = conv_transpose2d_output_size(h, sh, ph, dh, kh, oph)
    out_w = conv_transpose2d_output_size(w, sw, pw, dw, kw, opw)
    if out_h <= 0 or out_w <= 0:
        raise ValueError(
            f"conv_transpose2d output would be empty: ({out_h}, {out_w}) from input ({h}, {w}), "
            f"kernel ({kh}, {kw}), stride {(sh, sw)}, padding {(ph, pw)}, dilation {(dh, dw)}"
        )
    c_out = c_out_per_group * groups
    # The adjoint convolution maps (n, c_out, out_h, out_w) to (n, c_in, h, w).
    sh = lone_output_stride(sh, out_h + 2 * ph, dh * (kh - 1) + 1, h)
    sw = lone_output_stride(sw, out_w + 2 * pw, dw * (kw - 1) + 1, w)
    return ConvGeometry(n, c_out, out_h, out_w, c_in, kh, kw, groups, sh, sw, ph, ph, pw, pw, dh, dw, h, w)


# ------------------------------------------------------------------------ pooling


class PoolGeometry(NamedTuple):
    """Every integer a pooling kernel needs: input (n, c, h, w), output (n, c, oh, ow);
    the stride along an axis with one output as in ConvGeometry."""

    n: int
    c: int
    h: int
    w: int
    kh: int
    kw: int
    sh: int
    sw: int
    ph: int
    pw: int
    dh: int
    dw: int
    oh: int
    ow: int

    @property
    def output_shape(self):
        return (self.n, self.c, self.oh, self.ow)


def pool_output_size(size: int, kernel: int, stride: int, pad: int, dilation: int, ceil_mode: bool) -> int:
    """PyTorch's pooling output size; with ceil_mode a window that would start in the
    right/bottom padding is dropped."""
    numerator = size + 2 * pad - dilation * (kernel - 1) - 1 + (stride - 1 if ceil_mode else 0)
    out = numerator // stride + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def pool2d_geometry(input_shape, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False) -> PoolGeometry:
    """Validate pooling arguments; stride None means stride = kernel_size."""
    n, c, h, w = input_shape
    kh, kw = positive_pair(kernel_size, "kernel_size")
    sh, sw = (kh, kw) if stride is None or (isinstance(stride, (tuple, list)) and len(stride) == 0) else positive_pair(stride, "stride")
    ph, pw = nonnegative_pair(padding, "padding")
    dh, dw = positive_pair(dilation, "dilation")
    ceil_mode = check_bool(ceil_mode, "ceil_mode")
    if ph > kh // 2 or pw > kw // 2:
        raise ValueError(
            f"padding {(ph, pw)} must be at most half of kernel_size {(kh, kw)}"
        )
    oh = pool_output_size(h, kh, sh, ph, dh, ceil_mode)
    ow = pool_output_size(w, kw, sw, pw, dw, ceil_mode)
    if oh <= 0 or ow <= 0:
        raise ValueError(
            f"pooling output would be empty: ({oh}, {ow}) from input ({h}, {w}) with kernel_size "
            f"{(kh, kw)}, stride {(sh, sw)}, padding {(ph, pw)}, dilation {(dh, dw)}"
        )
    sh = _lone_output_pool_stride(sh, h, kh, ph, dh, ceil_mode, oh)
    sw = _lone_output_pool_stride(sw, w, kw, pw, dw, ceil_mode, ow)
    return PoolGeometry(n, c, h, w, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow)


def _lone_output_pool_stride(stride, size, kernel, pad, dilation, ceil_mode, out):
    """lone_output_stride for pooling: with ceil_mode, a stride of at least size + pad
    drops the second window, which would start in the padding."""
    for candidate in (lone_output_stride(stride, size + 2 * pad, dilation * (kernel - 1) + 1, out), min(stride, size + pad)):
        if pool_output_size(size, kernel, candidate, pad, dilation, ceil_mode) == out:
            return candidate
    return stride


def adaptive_output_size(input_shape, output_size) -> tuple[int, int]:
    """Normalise adaptive pooling's output_size (an int, a pair, None keeps a size)."""
    h, w = input_shape[-2:]
    if isinstance(output_size, np.ndarray):
        output_size = output_size.tolist()
    if output_size is None or is_int(output_size):
        output_size = (output_size, output_size)
    if not isinstance(output_size, (tuple, list)) or len(output_size) != 2:
        raise ValueError(f"output_size must be an int or a pair of ints (or None), got {output_size!r}")
    oh = h if output_size[0] is None else _int(output_size[0], "output_size")
    ow = w if output_size[1] is None else _int(output_size[1], "output_size")
    if oh <= 0 or ow <= 0:
        raise ValueError(f"output_size must be positive, got {output_size!r}")
    return oh, ow


def adaptive_windows(size: int, out: int) -> tuple[np.ndarray, np.ndarray]:
    """Window [start, end) of each adaptive-pooling output: floor(o*I/O), ceil((o+1)*I/O)."""
    o = np.arange(out, dtype=np.int64)
    return (o * size) // out, -((-(o + 1) * size) // out)


def unpool_output_size(input_shape, kernel, stride, padding, output_size) -> tuple[int, int]:
    """max_unpool2d's output size: (i - 1)s - 2p + k unless output_size says otherwise,
    which must lie strictly within one stride of that default."""
    default = [(input_shape[2 + d] - 1) * stride[d] + kernel[d] - 2 * padding[d] for d in range(2)]
    if output_size is None:
        size = default
    else:
        output_size = list(output_size)
        if not all(is_int(s) for s in output_size):
            raise TypeError(f"output_size must be ints, got {output_size}")
        output_size = [int(s) for s in output_size]
        if len(output_size) == 4:
            output_size = output_size[2:]
        if len(output_size) != 2:
            raise ValueError(f"output_size must have 2 or 4 elements, got {output_size}")
        for d in range(2):
            if not default[d] - stride[d] < output_size[d] < default[d] + stride[d]:
                raise ValueError(
                    f"output_size {tuple(output_size)} must be strictly between "
                    f"{tuple(s - t for s, t in zip(default, stride))} and {tuple(s + t for s, t in zip(default, stride))}"
                )
        size = output_size
    if min(size) <= 0:
        raise ValueError(f"max_unpool2d output would be empty: {tuple(size)}")
    return size[0], size[1]


def check_grad_output(grad_output: np.ndarray, expected_shape, name: str = "grad_output") -> None:
    if tuple(grad_output.shape) != tuple(expected_shape):
        raise ValueError(f"{name} must have shape {tuple(expected_shape)}, got {tuple(grad_output.shape)}")


# ------------------------------------------- whole argument lists, as the API takes them


def checked_bias(bias, dtype, channels):
    if bias is None:
        return None
    b = as_float_array(bias, "bias")
    if b.dtype != dtype:
        raise TypeError(f"bias ({b.dtype}) must have the input's dtype ({dtype})")
    if b.shape != (channels,):
        raise ValueError(f"bias must have shape ({channels},), got {tuple(b.shape)}")
    return b


def checked_indices(indices, shape, name="indices"):
    idx = np.asarray(indices)
    if idx.dtype.kind not in "iu":
        raise TypeError(f"{name} must be an integer array, got dtype {idx.dtype}")
    if tuple(idx.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(idx.shape)}")
    return idx.astype(np.int64, copy=False)


def _forward_operands(input, weight):
    x, unbatched = batched(as_float_array(input, "input"), "input")
    w = as_float_array(weight, "weight")
    same_dtype("input", x, "weight", w)
    return x, w, unbatched


def _grad_operands(first_name, first, grad_output):
    a = as_float_array(first, first_name)
    gy = as_float_array(grad_output, "grad_output")
    same_dtype(first_name, a, "grad_output", gy)
    return a, gy


def conv2d_arguments(input, weight, bias, stride, padding, dilation, groups):
    """-> (x, weight, bias or None, ConvGeometry, unbatched) for conv2d."""
    x, w, unbatched = _forward_operands(input, weight)
    g = conv2d_geometry(x.shape, w.shape, stride, padding, dilation, groups)
    return x, w, checked_bias(bias, x.dtype, g.c_out), g, unbatched


def conv2d_input_arguments(input_size, weight, grad_output, stride, padding, dilation, groups):
    """-> (weight, grad_output, ConvGeometry) for conv2d_input."""
    w, gy = _grad_operands("weight", weight, grad_output)
    g = conv2d_geometry(check_size(input_size, "input_size"), w.shape, stride, padding, dilation, groups)
    check_grad_output(gy, g.output_shape)
    return w, gy, g


def conv2d_weight_arguments(input, weight_size, grad_output, stride, padding, dilation, groups):
    """-> (input, grad_output, ConvGeometry) for conv2d_weight."""
    x, gy = _grad_operands("input", input, grad_output)
    check_ndim(x, "input")
    g = conv2d_geometry(x.shape, four_ints(weight_size, "weight_size", "(C_out, C_in/groups, kH, kW)"), stride, padding, dilation, groups)
    check_grad_output(gy, g.output_shape)
    return x, gy, g


def conv_transpose2d_arguments(input, weight, bias, stride, padding, output_padding, groups, dilation):
    """-> (x, weight, bias or None, adjoint ConvGeometry, unbatched) for conv_transpose2d."""
    x, w, unbatched = _forward_operands(input, weight)
    g = conv_transpose2d_geometry(x.shape, w.shape, stride, padding, output_padding, groups, dilation)
    return x, w, checked_bias(bias, x.dtype, g.c_in), g, unbatched


def conv_transpose2d_input_arguments(input_size, weight, grad_output, stride, padding, output_padding, groups, dilation):
    """-> (weight, grad_output, adjoint ConvGeometry) for conv_transpose2d_input."""
    w, gy = _grad_operands("weight", weight, grad_output)
    size = check_size(input_size, "input_size")
    g = conv_transpose2d_geometry(size, w.shape, stride, padding, output_padding, groups, dilation)
    check_grad_output(gy, g.input_shape)
    return w, gy, g


def conv_transpose2d_weight_arguments(input, weight_size, grad_output, stride, padding, output_padding, groups, dilation):
    """-> (input, grad_output, adjoint ConvGeometry) for conv_transpose2d_weight."""
    x, gy = _grad_operands("input", input, grad_output)
    check_ndim(x, "input")
    g = conv_transpose2d_geometry(x.shape, four_ints(weight_size, "weight_size", "(C_in, C_out/groups, kH, kW)"), stride, padding, output_padding, groups, dilation)
    check_grad_output(gy, g.input_shape)
    return x, gy, g


def pool_input(input):
    """-> (4-D float input, unbatched) for a pooling forward."""
    return batched(as_float_array(input, "input"), "input")


def pool_grad_arguments(input, grad_output, kernel_size, stride, padding, dilation, ceil_mode):
    """-> (input, grad_output, PoolGeometry) for a pooling gradient that reads the input."""
    x, gy = _grad_operands("input", input, grad_output)
    check_ndim(x, "input")
    g = pool2d_geometry(x.shape, kernel_size, stride, padding, dilation, ceil_mode)
    check_grad_output(gy, g.output_shape)
    return x, gy, g


def pool_size_grad_arguments(input_size, grad_output, kernel_size, stride, padding, ceil_mode):
    """-> (grad_output, PoolGeometry) for a pooling gradient that needs only the input's size."""
    gy = as_float_array(grad_output, "grad_output")
    g = pool2d_geometry(check_size(input_size, "input_size"), kernel_size, stride, padding, 1, ceil_mode)
    check_grad_output(gy, g.output_shape)
    return gy, g


def divisor(divisor_override):
    if divisor_override is None:
        return None
    if not is_int(divisor_override) or divisor_override == 0:
        raise ValueError(f"divisor_override must be a non-zero int or None, got {divisor_override!r}")
    return int(divisor_override)


def lp_geometry(shape, norm_type, kernel_size, stride, ceil_mode) -> PoolGeometry:
    """lp_pool2d has no padding; norm_type is a positive finite power."""
    if isinstance(norm_type, bool) or not isinstance(norm_type, numbers.Real) or not 0 < norm_type < np.inf:
        raise ValueError(f"norm_type must be a positive finite number, got {norm_type!r}")
    return pool2d_geometry(shape, kernel_size, stride, 0, 1, ceil_mode)


def unpool_arguments(input, indices, kernel_size, stride, padding, output_size):
    """-> (x, int64 indices, (oh, ow), unbatched) for max_unpool2d."""
    x, unbatched = pool_input(input)
    idx = checked_indices(np.asarray(indices)[None] if unbatched else indices, x.shape)
    kernel = positive_pair(kernel_size, "kernel_size")
    stride = kernel if stride is None else positive_pair(stride, "stride")
    pad = nonnegative_pair(padding, "padding")
    oh, ow = unpool_output_size(x.shape, kernel, stride, pad, output_size)
    check_index_range(idx, oh * ow)
    return x, idx, (oh, ow), unbatched


def check_index_range(idx, plane_size):
    if idx.size == 0:
        return
    lo, hi = int(idx.min()), int(idx.max())
    if lo < 0 or hi >= plane_size:
        raise ValueError(f"indices must lie in [0, {plane_size}) (the output plane), got values in [{lo}, {hi}]")


def _same_batch_and_channels(gy, n, c):
    check_ndim(gy, "grad_output")
    if gy.shape[:2] != (n, c):
        raise ValueError(f"grad_output must have N, C = {(n, c)}, got shape {gy.shape}")


def lp_grad_arguments(input, grad_output):
    """-> (input, grad_output) of one dtype, input 4-D, for lp_pool2d_input."""
    x, gy = _grad_operands("input", input, grad_output)
    check_ndim(x, "input")
    return x, gy


def adaptive_max_grad_arguments(input, grad_output):
    """-> (input, grad_output) for adaptive_max_pool2d_input; the output size is grad_output's."""
    x, gy = lp_grad_arguments(input, grad_output)
    _same_batch_and_channels(gy, *x.shape[:2])
    return x, gy


def adaptive_avg_grad_arguments(input_size, grad_output):
    """-> (input_size, grad_output) for adaptive_avg_pool2d_input."""
    size = check_size(input_size, "input_size")
    gy = as_float_array(grad_output, "grad_output")
    _same_batch_and_channels(gy, *size[:2])
    return size, gy


def unpool_grad_arguments(grad_output, indices):
    """-> (grad_output, int64 indices) for max_unpool2d_input: indices index grad_output's planes."""
    gy = as_float_array(grad_output, "grad_output")
    check_ndim(gy, "grad_output")
    idx = np.asarray(indices)
    if idx.ndim != 4 or idx.shape[:2] != gy.shape[:2]:
        raise ValueError(f"indices must be 4-D with N, C = {gy.shape[:2]}, got shape {idx.shape}")
    idx = checked_indices(idx, idx.shape)
    check_index_range(idx, gy.shape[2] * gy.shape[3])
    return gy, idx
