"""Layers for training small CNNs on CPU with NumPy arrays, named as torch.nn's.

A Module has forward(x) and backward(grad_output): backward returns the gradient
with respect to forward's input and adds parameter gradients into `param.grad`.
Each layer keeps only what its backward needs from the last forward (the input, the
max-pool indices, the ReLU mask), so a module object runs once per forward pass:
Sequential refuses one listed twice; layers that share weights share Parameter objects,
whose gradients then add up. Constructors, parameter shapes, initialisation
and state_dict keys follow PyTorch, so weights move between the two unchanged.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections import OrderedDict

import numpy as np

import fastconv
from fastconv import grad
from fastconv import params as P
from fastconv.kernels import activation, gemm


class Parameter:
    """A trainable array and its accumulated gradient (None until a backward)."""

    def __init__(self, data: np.ndarray):
        self.data = data
        self.grad: np.ndarray | None = None

    @property
    def shape(self):
        return self.data.shape

    def accumulate(self, g: np.ndarray) -> None:
        self.grad = g if self.grad is None else self.grad + g

    def __repr__(self):
        return f"Parameter(shape={self.data.shape}, dtype={self.data.dtype})"


def _forward_first(cls):
    """cls with its own forward noting that it ran, and its own backward refusing to run
    before that: a backward reads what the last forward kept."""
    forward, backward = cls.__dict__.get("forward"), cls.__dict__.get("backward")
    if forward is not None:

        @functools.wraps(forward)
        def noted(self, *args, **kwargs):
            out = forward(self, *args, **kwargs)
            object.__setattr__(self, "_forwarded", True)
            return out

        cls.forward = noted
    if backward is not None:

        @functools.wraps(backward)
        def checked(self, *args, **kwargs):
            if not getattr(self, "_forwarded", False):
                raise RuntimeError(f"{type(self).__name__}.backward called before any forward: it has nothing to differentiate")
            return backward(self, *args, **kwargs)

        cls.backward = checked
    return cls


class Module:
    """Base class: registers Parameters, sub-Modules and buffers set as attributes."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        _forward_first(cls)

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "training", True)

    def __setattr__(self, name, value):
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        object.__setattr__(self, name, value)

    def register_buffer(self, name: str, value: np.ndarray) -> None:
        self._buffers[name] = value
        object.__setattr__(self, name, value)

    def _set_buffer(self, name: str, value: np.ndarray) -> None:
        self._buffers[name] = value
        object.__setattr__(self, name, value)

    def named_parameters(self, prefix: str = ""):
        """(dotted name, Parameter) pairs, each Parameter once: one shared by two
        layers (tied weights) under its first name, as torch's, so that an optimiser
        steps it once."""
        seen = set()
        for name, p in self._every_parameter(prefix):
            if id(p) not in seen:
                seen.add(id(p))
                yield name, p

    def _every_parameter(self, prefix: str):
        for name, p in self._parameters.items():
            if p is not None:
                yield prefix + name, p
        for name, m in self._modules.items():
            yield from m._every_parameter(f"{prefix}{name}.")

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def modules(self):
        yield self
        for m in self._modules.values():
            yield from m.modules()

    def train(self, mode: bool = True):
        for m in self.modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self):
        return self.train(False)

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = None

    def state_dict(self, prefix: str = "") -> OrderedDict:
        """Parameters and buffers by dotted name, as torch.nn.Module.state_dict (copies)."""
        out = OrderedDict()
        for name, p in self._parameters.items():
            if p is not None:
                out[prefix + name] = p.data.copy()
        for name, b in self._buffers.items():
            out[prefix + name] = np.array(b, copy=True)
        for name, m in self._modules.items():
            out.update(m.state_dict(f"{prefix}{name}."))
        return out

    def load_state_dict(self, state: dict, strict: bool = True) -> None:
        """Copy arrays into parameters and buffers; any missing, unexpected or
        mis-shaped key is an error naming it (nothing is loaded then)."""
        own = self.state_dict()
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        if strict and (missing or unexpected):
            raise KeyError(f"state_dict does not match the model: missing keys {missing}, unexpected keys {unexpected}")
        for key, value in state.items():
            if key in own and np.shape(value) != own[key].shape:
                raise ValueError(f"state_dict key {key!r} has shape {np.shape(value)}, the model expects {own[key].shape}")
        for key, value in state.items():
            if key in own:
                self._assign(key.split("."), np.asarray(value))

    def _assign(self, path, value):
        head, *rest = path
        if rest:
            self._modules[head]._assign(rest, value)
        elif head in self._parameters:
            p = self._parameters[head]
            p.data = value.astype(p.data.dtype, copy=True)
        else:
            old = self._buffers[head]
            self._set_buffer(head, np.array(value, dtype=np.asarray(old).dtype, copy=True))

    def __call__(self, x):
        return self.forward(x)

    def forward(self, x):
        raise NotImplementedError

    def backward(self, grad_output):
        raise NotImplementedError

    def extra_repr(self) -> str:
        return ""

    def __repr__(self):
        children = "".join(f"\n  ({n}): " + repr(m).replace("\n", "\n  ") for n, m in self._modules.items())
        return f"{type(self).__name__}({self.extra_repr()}{children}{chr(10) if children else ''})"


def _uniform(rng, shape, bound, dtype):
    return rng.uniform(-bound, bound, size=shape).astype(dtype)


def _rng(seed):
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


class _ConvNd(Module):
    """Shared construction of Conv2d and ConvTranspose2d (PyTorch's initialisation:
    weight and bias uniform in +-1/sqrt(fan_in))."""

    def __init__(self, weight_shape, fan_in, out_channels, bias, dtype, rng, padding_mode, padding_modes):
        super().__init__()
        if padding_mode not in padding_modes:
            raise ValueError(f"padding_mode must be one of {padding_modes}, got {padding_mode!r}")
        self.padding_mode = padding_mode
        bound = 1 / math.sqrt(fan_in)
        self.weight = Parameter(_uniform(rng, weight_shape, bound, dtype))
        self.bias = Parameter(_uniform(rng, (out_channels,), bound, dtype)) if bias else None
        self._input = None

    def _bias_grad(self, grad_output):
        if self.bias is not None:
            self.bias.accumulate(grad.conv2d_bias(grad_output))


def _batch_forward(forward):
    """A layer's forward on (N, C, H, W) arrays, made to take an unbatched (C, H, W)
    one too, as torch.nn's layers do: it runs on a batch of one, and the batch axis
    comes off its output again (and off the input gradient: _batch_backward)."""

    @functools.wraps(forward)
    def forward_unbatched(self, x):
        x = np.asarray(x)
        self._unbatched = x.ndim == 3
        if not self._unbatched:
            return forward(self, x)
        out = forward(self, x[None])
        return tuple(o[0] for o in out) if isinstance(out, tuple) else out[0]

    return forward_unbatched


def _batch_backward(backward):
    """The backward that goes with _batch_forward."""

    @functools.wraps(backward)
    def backward_unbatched(self, grad_output):
        if not getattr(self, "_unbatched", False):
            return backward(self, grad_output)
        return backward(self, np.asarray(grad_output)[None])[0]

    return backward_unbatched


# torch.nn.Conv2d's padding modes other than zeros, as NumPy's np.pad modes
_PAD_MODES = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def _pad(x, pads, mode):
    """x padded on its last two axes by pads (top, bottom, left, right) in padding mode
    `mode`, as torch.nn.functional.pad, which refuses a reflection as wide as the plane
    and a circular padding wider than it."""
    h, w = x.shape[-2:]
    limit = {"reflect": (h - 1, w - 1), "circular": (h, w)}.get(mode)
    if limit is not None and (max(pads[:2]) > limit[0] or max(pads[2:]) > limit[1]):
        raise ValueError(f"padding_mode {mode!r} pads at most {limit} cells on a {h}x{w} plane, got padding {pads}")
    width = [(0, 0)] * (x.ndim - 2) + [pads[:2], pads[2:]]
    return np.pad(x, width, mode=_PAD_MODES[mode])


def _pad_grad(grad_padded, pads, mode):
    """The gradient of _pad: each padded cell's gradient added to the cell it copies
    (np.pad of the cells' indices says which), the columns first, then the rows."""
    pt, pb, pl, pr = pads
    h, w = grad_padded.shape[-2] - pt - pb, grad_padded.shape[-1] - pl - pr
    cols = np.pad(np.arange(w), (pl, pr), mode=_PAD_MODES[mode])
    g = grad_padded[..., pl : pl + w].copy()
    for j in [*range(pl), *range(pl + w, pl + w + pr)]:
        g[..., cols[j]] += grad_padded[..., j]
    rows = np.pad(np.arange(h), (pt, pb), mode=_PAD_MODES[mode])
    out = g[..., pt : pt + h, :].copy()
    for i in [*range(pt), *range(pt + h, pt + h + pb)]:
        out[..., rows[i], :] += g[..., i, :]
    return out


def _check_channels(in_channels, out_channels, groups):
    if in_channels % groups or out_channels % groups:
        raise ValueError(f"in_channels ({in_channels}) and out_channels ({out_channels}) must be divisible by groups ({groups})")


class Conv2d(_ConvNd):
    """2-D convolution, as torch.nn.Conv2d. Weight (out, in/groups, kH, kW).
    padding_mode 'reflect', 'replicate' or 'circular' pads the input so (as
    torch.nn.functional.pad) and convolves it unpadded, as torch.nn.Conv2d does."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1, bias=True,
                 padding_mode="zeros", dtype=np.float32, seed=None):
        _check_channels(in_channels, out_channels, groups)
        kh, kw = P.positive_pair(kernel_size, "kernel_size")
        pads = None
        if isinstance(padding, str) or padding_mode != "zeros":
            pads = P.conv_padding(padding, (kh, kw), P.positive_pair(stride, "stride"), P.positive_pair(dilation, "dilation"))
        super().__init__((out_channels, in_channels // groups, kh, kw), in_channels // groups * kh * kw, out_channels,
                         bias, dtype, _rng(seed), padding_mode, ("zeros", *_PAD_MODES))
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, (kh, kw)
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        self._pads = None if padding_mode == "zeros" else pads  # padded in forward (_pad)

    def _args(self):
        return self.stride, 0 if self._pads else self.padding, self.dilation, self.groups

    @_batch_forward
    def forward(self, x):
        if self._pads:
            x = _pad(np.asarray(x), self._pads, self.padding_mode)
        self._input = x
        return fastconv.conv2d(x, self.weight.data, None if self.bias is None else self.bias.data, *self._args())

    @_batch_backward
    def backward(self, grad_output):
        x = self._input
        self.weight.accumulate(grad.conv2d_weight(x, self.weight.shape, grad_output, *self._args()))
        self._bias_grad(grad_output)
        grad_input = grad.conv2d_input(x.shape, self.weight.data, grad_output, *self._args())
        return _pad_grad(grad_input, self._pads, self.padding_mode) if self._pads else grad_input

    def extra_repr(self):
        mode = "" if self.padding_mode == "zeros" else f", padding_mode={self.padding_mode}"
        return f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}{mode}"


class ConvTranspose2d(_ConvNd):
    """Transposed 2-D convolution, as torch.nn.ConvTranspose2d. Weight (in, out/groups, kH, kW)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, output_padding=0, groups=1, bias=True,
                 dilation=1, padding_mode="zeros", dtype=np.float32, seed=None):
        _check_channels(in_channels, out_channels, groups)
        kh, kw = P.positive_pair(kernel_size, "kernel_size")
        super().__init__((in_channels, out_channels // groups, kh, kw), out_channels // groups * kh * kw, out_channels,
                         bias, dtype, _rng(seed), padding_mode, ("zeros",))
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, (kh, kw)
        self.stride, self.padding, self.output_padding, self.groups, self.dilation = stride, padding, output_padding, groups, dilation

    def _args(self):
        return self.stride, self.padding, self.output_padding, self.groups, self.dilation

    @_batch_forward
    def forward(self, x):
        self._input = x
        return fastconv.conv_transpose2d(x, self.weight.data, None if self.bias is None else self.bias.data, *self._args())

    @_batch_backward
    def backward(self, grad_output):
        x = self._input
        self.weight.accumulate(grad.conv_transpose2d_weight(x, self.weight.shape, grad_output, *self._args()))
        self._bias_grad(grad_output)
        return grad.conv_transpose2d_input(x.shape, self.weight.data, grad_output, *self._args())


class MaxPool2d(Module):
    """Max pooling, as torch.nn.MaxPool2d. Forward keeps the argmax indices, so
    backward needs no second pass over the input."""

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, return_indices=False, ceil_mode=False):
        super().__init__()
        self.kernel_size, self.stride, self.padding, self.dilation = kernel_size, stride, padding, dilation
        self.return_indices, self.ceil_mode = return_indices, ceil_mode
        self._input = self._indices = None

    def _args(self):
        return self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode

    @_batch_forward
    def forward(self, x):
        out, self._indices = fastconv.max_pool2d(x, *self._args(), return_indices=True)
        self._input = x
        return (out, self._indices) if self.return_indices else out

    @_batch_backward
    def backward(self, grad_output):
        return grad.max_pool2d_input(self._input, grad_output, *self._args(), indices=self._indices)


class AvgPool2d(Module):
    """Average pooling, as torch.nn.AvgPool2d."""

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True, divisor_override=None):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.ceil_mode, self.count_include_pad, self.divisor_override = ceil_mode, count_include_pad, divisor_override
        self._shape = None

    def _args(self):
        return self.kernel_size, self.stride, self.padding, self.ceil_mode, self.count_include_pad, self.divisor_override

    @_batch_forward
    def forward(self, x):
        self._shape = x.shape
        return fastconv.avg_pool2d(x, *self._args())

    @_batch_backward
    def backward(self, grad_output):
        return grad.avg_pool2d_input(self._shape, grad_output, *self._args())


class LPPool2d(Module):
    """Power-average pooling, as torch.nn.LPPool2d."""

    def __init__(self, norm_type, kernel_size, stride=None, ceil_mode=False):
        super().__init__()
        self.norm_type, self.kernel_size, self.stride, self.ceil_mode = norm_type, kernel_size, stride, ceil_mode
        self._input = None

    @_batch_forward
    def forward(self, x):
        self._input = x
        return fastconv.lp_pool2d(x, self.norm_type, self.kernel_size, self.stride, self.ceil_mode)

    @_batch_backward
    def backward(self, grad_output):
        return grad.lp_pool2d_input(self._input, grad_output, self.norm_type, self.kernel_size, self.stride, self.ceil_mode)


class AdaptiveAvgPool2d(Module):
    """Adaptive average pooling, as torch.nn.AdaptiveAvgPool2d."""

    def __init__(self, output_size):
        super().__init__()
        self.output_size = output_size
        self._shape = None

    @_batch_forward
    def forward(self, x):
        self._shape = x.shape
        return fastconv.adaptive_avg_pool2d(x, self.output_size)

    @_batch_backward
    def backward(self, grad_output):
        return grad.adaptive_avg_pool2d_input(self._shape, grad_output)


class AdaptiveMaxPool2d(Module):
    """Adaptive max pooling, as torch.nn.AdaptiveMaxPool2d. Forward keeps the argmax
    indices for backward, as MaxPool2d."""

    def __init__(self, output_size, return_indices=False):
        super().__init__()
        self.output_size, self.return_indices = output_size, return_indices
        self._input = self._indices = None

    @_batch_forward
    def forward(self, x):
        out, self._indices = fastconv.adaptive_max_pool2d(x, self.output_size, return_indices=True)
        self._input = x
        return (out, self._indices) if self.return_indices else out

    @_batch_backward
    def backward(self, grad_output):
        return grad.adaptive_max_pool2d_input(self._input, grad_output, indices=self._indices)


def _product(a, b):
    """a @ b for 2-D arrays, on fastconv's threads."""
    return gemm.matmul(a, b, np.empty((a.shape[0], b.shape[1]), dtype=np.result_type(a, b)), fastconv.get_num_threads())


class Linear(Module):
    """y = x @ weight.T + bias, as torch.nn.Linear: x (*, in_features), y (*,
    out_features). Weight (out_features, in_features)."""

    def __init__(self, in_features, out_features, bias=True, dtype=np.float32, seed=None):
        super().__init__()
        rng = _rng(seed)
        bound = 1 / math.sqrt(in_features)
        self.in_features, self.out_features = in_features, out_features
        self.weight = Parameter(_uniform(rng, (out_features, in_features), bound, dtype))
        self.bias = Parameter(_uniform(rng, (out_features,), bound, dtype)) if bias else None
        self._input = None

    # The products run on fastconv's GEMM threads (fastconv.kernels.gemm), so that
    # NumPy's BLAS threads are not left spinning beside the next convolution.
    def forward(self, x):
        self._input = x
        y = _product(x.reshape(-1, self.in_features), self.weight.data.T).reshape(x.shape[:-1] + (self.out_features,))
        return y + self.bias.data if self.bias is not None else y

    def backward(self, grad_output):
        gy = grad_output.reshape(-1, self.out_features)
        self.weight.accumulate(_product(gy.T, self._input.reshape(-1, self.in_features)))
        if self.bias is not None:
            self.bias.accumulate(gy.sum(axis=0))
        return _product(gy, self.weight.data).reshape(self._input.shape)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}"


def _writable(x):
    """x, the input of a layer made with inplace=True, which writes its result there
    as torch's in-place layers do; checked before any work."""
    if not isinstance(x, np.ndarray) or not x.flags.writeable:
        raise ValueError("inplace=True needs a writable NumPy array as input")
    return x


class ReLU(Module):
    """max(x, 0) elementwise, as torch.nn.ReLU (NaN stays NaN); with inplace, the
    input array holds the result."""

    def __init__(self, inplace=False):
        super().__init__()
        self.inplace = P.check_bool(inplace, "inplace")
        self._passes = None

    def forward(self, x):
        if self.inplace:
            _writable(x)
        cells = np.array(x, copy=None, order="C")
        # a kernel iteration reads each cell before it writes it: the input can be the output
        out = cells if self.inplace and cells is x else np.empty_like(cells)
        self._passes = np.empty(cells.shape, dtype=bool)
        activation.relu(cells.reshape(-1), out.reshape(-1), self._passes.reshape(-1), cells.dtype.type(0))
        if self.inplace and out is not x:
            x[...] = out  # a non-contiguous input
            return x
        return out

    def backward(self, grad_output):
        grad_output = np.array(grad_output, copy=None, order="C")
        if grad_output.shape != self._passes.shape:
            raise ValueError(f"grad_output must have the shape of the last input, {self._passes.shape}, got {grad_output.shape}")
        out = np.empty_like(grad_output)
        activation.relu_backward(self._passes.reshape(-1), grad_output.reshape(-1), out.reshape(-1), out.dtype.type(0))
        return out

    def extra_repr(self):
        return "inplace=True" if self.inplace else ""


class Flatten(Module):
    """Flattens dimensions start_dim..end_dim, as torch.nn.Flatten."""

    def __init__(self, start_dim=1, end_dim=-1):
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim
        self._shape = None

    def forward(self, x):
        self._shape = x.shape
        start, end = self.start_dim % x.ndim, self.end_dim % x.ndim
        # the flattened size spelled out: -1 is ambiguous in an empty batch
        return x.reshape(x.shape[:start] + (math.prod(x.shape[start : end + 1]),) + x.shape[end + 1 :])

    def backward(self, grad_output):
        return grad_output.reshape(self._shape)


class Dropout(Module):
    """Zeroes each element with probability p in training, scaling the rest by 1/(1-p);
    with inplace, the input array holds the result."""

    def __init__(self, p=0.5, inplace=False, seed=None):
        super().__init__()
        if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0 <= p <= 1:
            raise ValueError(f"dropout probability p must be in [0, 1], got {p!r}")
        self.p = p
        self.inplace = P.check_bool(inplace, "inplace")
        self._rng = _rng(seed)
        self._scale = None

    def forward(self, x):
        if not self.training or self.p == 0:
            self._scale = None
            return x
        if self.inplace:
            _writable(x)
        if self.p == 1:  # every element dropped (and an infinite input NaN, as in PyTorch)
            self._scale = np.zeros(x.shape, dtype=x.dtype)
        else:
            self._scale = (self._rng.random(x.shape) >= self.p).astype(x.dtype) / (1 - self.p)
        if self.inplace:
            x *= self._scale
            return x
        return x * self._scale

    def backward(self, grad_output):
        return grad_output if self._scale is None else grad_output * self._scale


class BatchNorm2d(Module):
    """Spatial batch normalisation, as torch.nn.BatchNorm2d: per channel over (N, H, W)
    with batch statistics in training (running averages updated with the unbiased
    variance) and the running averages in eval."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True, dtype=np.float32):
        super().__init__()
        if momentum is not None and (isinstance(momentum, bool) or not isinstance(momentum, numbers.Real)):
            raise TypeError(f"momentum must be a number or None, got {momentum!r}")
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        self.weight = Parameter(np.ones(num_features, dtype)) if affine else None
        self.bias = Parameter(np.zeros(num_features, dtype)) if affine else None
        if track_running_stats:
            self.register_buffer("running_mean", np.zeros(num_features, dtype))
            self.register_buffer("running_var", np.ones(num_features, dtype))
            self.register_buffer("num_batches_tracked", np.array(0, dtype=np.int64))
        self._cache = None

    def forward(self, x):
        if x.ndim != 4 or x.shape[1] != self.num_features:
            raise ValueError(f"BatchNorm2d({self.num_features}) expects (N, {self.num_features}, H, W) input, got {x.shape}")
        use_batch = self.training or not self.track_running_stats
        if use_batch and x.size == 0:
            # an empty batch, as PyTorch: an empty output, the running averages kept,
            # the batch counted
            mean, var = np.zeros(x.shape[1], x.dtype), np.ones(x.shape[1], x.dtype)
            if self.training and self.track_running_stats:
                self._set_buffer("num_batches_tracked", self.num_batches_tracked + 1)
        elif use_batch:
            count = x.size // x.shape[1]
            if count == 1:
                # the unbiased variance of one value is undefined (PyTorch refuses too)
                raise ValueError(f"BatchNorm2d expects more than 1 value per channel when training, got input of shape {x.shape}")
            mean = x.mean(axis=(0, 2, 3))
            var = x.var(axis=(0, 2, 3))
            if self.training and self.track_running_stats:
                self._set_buffer("num_batches_tracked", self.num_batches_tracked + 1)
                # momentum None: the cumulative average over the batches seen, as in PyTorch
                m = 1 / int(self.num_batches_tracked) if self.momentum is None else self.momentum
                self._set_buffer("running_mean", ((1 - m) * self.running_mean + m * mean).astype(x.dtype))
                self._set_buffer("running_var", ((1 - m) * self.running_var + m * var * count / (count - 1)).astype(x.dtype))
        else:
            mean, var = self.running_mean, self.running_var
        inv_std = 1 / np.sqrt(var + self.eps)
        x_hat = (x - mean[:, None, None]) * inv_std[:, None, None]
        self._cache = (x_hat, inv_std, use_batch)
        if self.affine:
            return x_hat * self.weight.data[:, None, None] + self.bias.data[:, None, None]
        return x_hat.copy()  # the next layer may write into its input (ReLU(inplace=True))

    def backward(self, grad_output):
        x_hat, inv_std, use_batch = self._cache
        if self.affine:
            self.weight.accumulate((grad_output * x_hat).sum(axis=(0, 2, 3)))
            self.bias.accumulate(grad_output.sum(axis=(0, 2, 3)))
            grad_output = grad_output * self.weight.data[:, None, None]
        if not use_batch or grad_output.size == 0:
            return grad_output * inv_std[:, None, None]
        mean_g = grad_output.mean(axis=(0, 2, 3))[:, None, None]
        mean_gx = (grad_output * x_hat).mean(axis=(0, 2, 3))[:, None, None]
        return (grad_output - mean_g - x_hat * mean_gx) * inv_std[:, None, None]


class Sequential(Module):
    """Modules applied in order; state_dict keys are "<index>.<name>" as in PyTorch."""

    def __init__(self, *modules):
        super().__init__()
        seen = {}
        for i, m in enumerate(modules):
            for inner in m.modules():
                if id(inner) in seen:
                    # its backward would read what the later forward kept
                    raise ValueError(
                        f"Sequential: {type(inner).__name__} in module {i} is already in module {seen[id(inner)]}; a "
                        f"fastconv.nn module keeps its last forward's input for its backward, so it can appear once "
                        f"(tie two modules' Parameters instead: b.weight = a.weight)"
                    )
                seen[id(inner)] = i
            setattr(self, str(i), m)

    def __iter__(self):
        return iter(self._modules.values())

    def __getitem__(self, i):
        return list(self._modules.values())[i]

    def __len__(self):
        return len(self._modules)

    def forward(self, x):
        for m in self._modules.values():
            x = m(x)
        return x

    def backward(self, grad_output):
        for m in reversed(self._modules.values()):
            grad_output = m.backward(grad_output)
        return grad_output


class DepthwiseSeparableConv2d(Module):
    """MobileNet's block: a depthwise conv (one filter per channel), ReLU, then a
    pointwise (1x1) conv mixing channels. Keys: depthwise.*, pointwise.*."""

    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, padding=1, bias=True, dtype=np.float32, seed=None):
        super().__init__()
        rng = _rng(seed)
        self.depthwise = Conv2d(in_channels, in_channels, kernel_size, stride, padding, groups=in_channels, bias=bias, dtype=dtype, seed=rng)
        self.relu = ReLU()
        self.pointwise = Conv2d(in_channels, out_channels, 1, bias=bias, dtype=dtype, seed=rng)

    def forward(self, x):
        return self.pointwise(self.relu(self.depthwise(x)))

    def backward(self, grad_output):
        return self.depthwise.backward(self.relu.backward(self.pointwise.backward(grad_output)))


# ----------------------------------------------------------------------- losses


def _mean(losses):
    """The mean of the losses; NaN over an empty batch, as PyTorch (0 / 0, no warning)."""
    with np.errstate(invalid="ignore"):
        return float(losses.sum() / losses.size)


@_forward_first
class CrossEntropyLoss:
    """Mean cross-entropy of logits (N, classes) against integer targets (N,), with a
    stable log-softmax. forward returns the loss; backward its gradient w.r.t. logits."""

    def __init__(self):
        self._cache = None

    def __call__(self, logits, target):
        return self.forward(logits, target)

    def forward(self, logits, target):
        target = np.asarray(target)
        if logits.ndim != 2 or target.shape != (logits.shape[0],):
            raise ValueError(f"expected logits (N, C) and target (N,), got {logits.shape} and {target.shape}")
        if target.dtype.kind not in "iu" or (target.size and (target.min() < 0 or target.max() >= logits.shape[1])):
            raise ValueError(f"target must hold class indices in [0, {logits.shape[1]})")
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        self._cache = (log_probs, target)
        return _mean(-log_probs[np.arange(len(target)), target])

    def backward(self):
        log_probs, target = self._cache
        g = np.exp(log_probs)
        g[np.arange(len(target)), target] -= 1
        return (g / len(target)).astype(log_probs.dtype)


@_forward_first
class MSELoss:
    """Mean squared error; backward gives the gradient w.r.t. the prediction."""

    def __init__(self):
        self._diff = None

    def __call__(self, prediction, target):
        return self.forward(prediction, target)

    def forward(self, prediction, target):
        if prediction.shape != np.shape(target):
            raise ValueError(f"prediction {prediction.shape} and target {np.shape(target)} must have the same shape")
        self._diff = prediction - target
        return _mean(self._diff**2)

    def backward(self):
        return (2 * self._diff / self._diff.size).astype(self._diff.dtype)
