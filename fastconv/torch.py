"""Drop-in PyTorch layers that run on fastconv's CPU kernels.

A PyTorch user swaps the layers and keeps the rest: the model, its state_dict, the
optimiser and the training loop::

    import fastconv.torch

    report = fastconv.torch.patch(model)  # in place; the same Parameter objects
    print(report)                         # what was replaced, what was skipped and why
    ...                                   # train or evaluate exactly as before
    fastconv.torch.unpatch(model)         # back to the torch.nn classes

or build with the layers directly (`fastconv.torch.Conv2d(3, 16, 3, padding=1)`).

Three layers, each on the one above it:

1. torch.autograd.Function subclasses (`Conv2dFunction`, `ConvTranspose2dFunction`,
   `MaxPool2dFunction`, `AvgPool2dFunction`, `LPPool2dFunction`): their forward and
   backward hand the tensors' memory to `fastconv` and `fastconv.grad` as NumPy views
   (no copies; the kernels accept any strides) and wrap the results back with
   `torch.from_numpy` (no copies either). A gradient is computed only for the inputs
   that need one. They take CPU float32/float64 tensors of one dtype, batched
   (N, C, H, W) or unbatched (C, H, W). A backward under create_graph=True (for a
   second derivative: a gradient penalty, a Hessian-vector product) runs torch's own
   operators on the saved tensors instead, with a FallbackWarning, so that the second
   derivative is torch's.
2. Functional wrappers with torch.nn.functional's signatures (`conv2d`, `conv_transpose2d`,
   `max_pool2d`, `avg_pool2d`, `lp_pool2d`): they run the Function when fastconv can take
   the call, and otherwise torch.nn.functional's operator, with a `FallbackWarning` that
   says why. Never a wrong result: whatever fastconv does not take goes to torch.
3. nn.Module subclasses of the torch.nn classes (`Conv2d`, `ConvTranspose2d`, `MaxPool2d`,
   `AvgPool2d`, `LPPool2d`): constructor, parameters, state_dict keys, repr and
   isinstance are torch's; only the forward runs through the functional wrappers.

What runs on torch instead (with a FallbackWarning): tensors not on the CPU, dtypes other
than float32 and float64 (or mixed), tensor subclasses, non-strided layouts, inputs that
are not 3-D or 4-D or have empty planes or channels (an empty batch runs on fastconv),
LPPool2d with an infinite or non-positive norm_type, arguments fastconv refuses (torch
then gives its own answer or its own error), and calls made while torch.jit traces or
torch.compile compiles.

Importing this module imports torch; `import fastconv` alone never does. Import torch
(or this module) before fastconv's threads start (its first kernel, or
fastconv.set_num_threads): loaded after Numba's OpenMP runtime, PyTorch's MKL paths
ran 15-25x slower here (a float64 conv2d forward + backward: 4 against 90 ms). This
module warns when it finds that order.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import sys
import warnings

from numba.np.ufunc import parallel as _numba_parallel

try:
    _torch_after_numba = "torch" not in sys.modules and getattr(_numba_parallel, "_is_initialized", False)
    import torch
except ImportError as error:  # pragma: no cover - only without torch
    raise ImportError("fastconv.torch needs PyTorch: pip install 'fastconv[torch]' (a CPU build)") from error

import numpy as np
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

import fastconv
from fastconv import params as P

if _torch_after_numba:
    warnings.warn(
        "torch was imported after fastconv's threads started; PyTorch's MKL paths (float64 convolutions) "
        "then ran 15-25x slower here. Import torch (or fastconv.torch) before fastconv's first kernel.",
        RuntimeWarning,
        stacklevel=2,
    )

__all__ = [
    "AvgPool2d",
    "AvgPool2dFunction",
    "Conv2d",
    "Conv2dFunction",
    "ConvTranspose2d",
    "ConvTranspose2dFunction",
    "FallbackWarning",
    "LPPool2d",
    "LPPool2dFunction",
    "MaxPool2d",
    "MaxPool2dFunction",
    "PatchReport",
    "avg_pool2d",
    "conv2d",
    "conv_transpose2d",
    "lp_pool2d",
    "max_pool2d",
    "patch",
    "unpatch",
]


class FallbackWarning(UserWarning):
    """A fastconv.torch layer ran PyTorch's own operator; the message says why.

    Silence it with `warnings.filterwarnings("ignore", category=FallbackWarning)`, or make
    it an error to be sure a model runs on fastconv everywhere.
    """


# --------------------------------------------------------------------------- tensors <-> arrays


def _array(tensor: torch.Tensor | None) -> np.ndarray | None:
    """The tensor's memory as a NumPy array: a view, not a copy (CPU strided tensors only)."""
    return None if tensor is None else tensor.detach().numpy()


def _batched_array(tensor: torch.Tensor) -> np.ndarray:
    """`_array`, with a batch axis put in front of an unbatched (C, H, W) tensor.

    fastconv's gradients take 4-D arrays only, so the Functions work on 4-D views
    throughout and take the axis off again in `_tensor`.
    """
    array = _array(tensor)
    return array[None] if tensor.dim() == 3 else array


def _tensor(array: np.ndarray | None, unbatched: bool = False) -> torch.Tensor | None:
    """A fastconv result as a tensor sharing its memory; [0] where the input had no batch axis."""
    if array is None:
        return None
    return torch.from_numpy(array[0] if unbatched else array)


# --------------------------------------------------------------------------- autograd Functions


def _differentiable_by_torch(op, torch_gradients):
    """The backward of `op` on fastconv's kernels, once differentiable; under
    create_graph=True (grad mode on in the backward) with a tensor that requires grad,
    `torch_gradients(ctx, *grad_outputs)` instead (with a FallbackWarning): the same gradients from torch's own operators, recorded by
    autograd, so that second derivatives (a gradient penalty, a Hessian-vector product)
    are torch's. once_differentiable alone would mark its results so that differentiating
    them raises, but only along the grad_outputs: a term through the saved input or
    weight would be dropped without a word.
    """

    def decorate(backward):
        first_order = once_differentiable(backward)

        @functools.wraps(backward)
        def wrapper(ctx, *grad_outputs):
            saved = ctx.saved_tensors
            if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (*saved, *grad_outputs)):
                _warn_fallback(op, "a backward with create_graph=True runs torch's operators (for second derivatives)", stacklevel=2)
                return torch_gradients(ctx, *grad_outputs)
            return first_order(ctx, *grad_outputs)

        return wrapper

    return decorate


def _recorded_gradients(ctx, recompute, inputs, grad_output):
    """The gradients of `recompute()` (torch's operator on `inputs`, the Function's first
    arguments) with respect to those inputs that need one, recorded by autograd
    (create_graph); None for the others."""
    needed = ctx.needs_input_grad[: len(inputs)]
    wanted = [t for t, need in zip(inputs, needed) if need]
    if not wanted:
        return (None,) * len(inputs)
    with torch.enable_grad():
        output = recompute()
    found = iter(torch.autograd.grad(output, wanted, grad_output, create_graph=True, materialize_grads=True))
    return tuple(next(found) if need else None for need in needed)


# The recomputations take the arguments as fastconv normalises them (any padding form
# fastconv takes, NumPy integers), in forms torch's operators all take.


def _torch_conv2d(input, weight, stride, padding, dilation, groups):
    stride, dilation = P.positive_pair(stride, "stride"), P.positive_pair(dilation, "dilation")
    top, bottom, left, right = P.conv_padding(padding, tuple(weight.shape[2:]), stride, dilation)
    return F.conv2d(F.pad(input, (left, right, top, bottom)), weight, None, stride, 0, dilation, P.check_groups(groups))


def _torch_conv_transpose2d(input, weight, stride, padding, output_padding, groups, dilation):
    pairs = [P.positive_pair(stride, "stride"), P.nonnegative_pair(padding, "padding"), P.nonnegative_pair(output_padding, "output_padding")]
    return F.conv_transpose2d(input, weight, None, *pairs, P.check_groups(groups), P.positive_pair(dilation, "dilation"))


def _conv_by_torch(torch_op):
    """A convolution Function's gradients from `torch_op` (see _differentiable_by_torch)."""

    def gradients(ctx, grad_output):
        input, weight = ctx.saved_tensors
        grad_input, grad_weight = _recorded_gradients(ctx, lambda: torch_op(input, weight, *ctx.conv_args), (input, weight), grad_output)
        channel_axis = grad_output.dim() - 3
        others = [d for d in range(grad_output.dim()) if d != channel_axis]
        grad_bias = grad_output.sum(dim=others) if ctx.needs_input_grad[2] else None
        return (grad_input, grad_weight, grad_bias) + (None,) * len(ctx.conv_args)

    return gradients


def _max_pool_by_indices(ctx, grad_output, *unused):
    """max_pool2d's input gradient from the saved indices, routed as the kernels route
    it (an index outside the plane, from a window of padding only, passes nothing): a
    scatter-add, which autograd records. torch's own max_pool2d backward would write
    such a gradient outside the plane."""
    input, indices = ctx.saved_tensors
    plane = input.shape[-2] * input.shape[-1]
    flat = indices.flatten(-2)
    inside = (flat >= 0) & (flat < plane)
    sources = grad_output.flatten(-2) * inside.to(grad_output.dtype)
    grad_input = torch.zeros((*input.shape[:-2], plane), dtype=grad_output.dtype).scatter_add(-1, flat.clamp(0, plane - 1), sources)
    return (grad_input.reshape(input.shape),) + (None,) * 6


def _avg_pool_by_torch(ctx, grad_output):
    """avg_pool2d's input gradient by torch's operator on zeros of the input's shape
    (the pooling is linear: its gradient depends on grad_output only)."""
    kernel_size, stride, padding, ceil_mode, count_include_pad, divisor = ctx.pool_args
    g = P.pool2d_geometry(ctx.input_size, kernel_size, stride, padding, 1, ceil_mode)
    zeros = torch.zeros(ctx.input_size[1:] if ctx.unbatched else ctx.input_size, dtype=grad_output.dtype, requires_grad=True)
    divisor = None if divisor is None else int(divisor)

    def recompute():
        return F.avg_pool2d(zeros, (g.kh, g.kw), (g.sh, g.sw), (g.ph, g.pw), bool(ceil_mode), bool(count_include_pad), divisor)

    return _recorded_gradients(ctx, recompute, (zeros,), grad_output) + (None,) * 6


def _lp_pool_by_torch(ctx, grad_output):
    """lp_pool2d's input gradient by torch's operator on the saved input."""
    (input,) = ctx.saved_tensors
    norm_type, kernel_size, stride, ceil_mode = ctx.pool_args
    g = P.lp_geometry(_batched_array(input).shape, norm_type, kernel_size, stride, ceil_mode)

    def recompute():
        return F.lp_pool2d(input, float(norm_type), (g.kh, g.kw), (g.sh, g.sw), bool(ceil_mode))

    return _recorded_gradients(ctx, recompute, (input,), grad_output) + (None,) * 4


def _conv_backward(ctx, grad_output, input_grad, weight_grad):
    """The gradients a convolution Function returns: input, weight and bias (each only
    if needed; the bias adds to every output pixel, transposed or not), then None for
    each of ctx.conv_args."""
    input, weight = ctx.saved_tensors
    x, gy = _batched_array(input), _batched_array(grad_output)
    needs_input, needs_weight, needs_bias = ctx.needs_input_grad[:3]
    grad_input = input_grad(x.shape, _array(weight), gy, *ctx.conv_args) if needs_input else None
    grad_weight = weight_grad(x, weight.shape, gy, *ctx.conv_args) if needs_weight else None
    grad_bias = fastconv.grad.conv2d_bias(gy) if needs_bias else None
    return (_tensor(grad_input, input.dim() == 3), _tensor(grad_weight), _tensor(grad_bias)) + (None,) * len(ctx.conv_args)


class Conv2dFunction(torch.autograd.Function):
    """conv2d on fastconv's kernels: `Conv2dFunction.apply(input, weight, bias, stride, padding, dilation, groups)`.

    input (N, C_in, H, W) or (C_in, H, W); weight (C_out, C_in / groups, kH, kW) (OIHW);
    bias (C_out,) or None; the other arguments as torch.nn.functional.conv2d (padding also
    'valid', 'same' or ((top, bottom), (left, right))). Returns (N, C_out, H_out, W_out),
    or (C_out, H_out, W_out) for an unbatched input. CPU float32/float64 tensors of one
    dtype; use `fastconv.torch.conv2d`, which checks that and falls back to torch.
    """

    @staticmethod
    def forward(ctx, input, weight, bias, stride, padding, dilation, groups):
        ctx.conv_args = (stride, padding, dilation, groups)
        ctx.save_for_backward(input, weight)
        out = fastconv.conv2d(_batched_array(input), _array(weight), _array(bias), *ctx.conv_args)
        return _tensor(out, unbatched=input.dim() == 3)

    @staticmethod
    @_differentiable_by_torch("conv2d", _conv_by_torch(_torch_conv2d))
    def backward(ctx, grad_output):
        return _conv_backward(ctx, grad_output, fastconv.grad.conv2d_input, fastconv.grad.conv2d_weight)


class ConvTranspose2dFunction(torch.autograd.Function):
    """conv_transpose2d on fastconv's kernels:
    `ConvTranspose2dFunction.apply(input, weight, bias, stride, padding, output_padding, groups, dilation)`.

    input (N, C_in, H, W) or (C_in, H, W); weight (C_in, C_out / groups, kH, kW) (IOHW);
    bias (C_out,) or None. Returns (N, C_out, H_out, W_out) with
    H_out = (H - 1) * stride - 2 * padding + dilation * (kH - 1) + output_padding + 1.
    """

    @staticmethod
    def forward(ctx, input, weight, bias, stride, padding, output_padding, groups, dilation):
        ctx.conv_args = (stride, padding, output_padding, groups, dilation)
        ctx.save_for_backward(input, weight)
        out = fastconv.conv_transpose2d(_batched_array(input), _array(weight), _array(bias), *ctx.conv_args)
        return _tensor(out, unbatched=input.dim() == 3)

    @staticmethod
    @_differentiable_by_torch("conv_transpose2d", _conv_by_torch(_torch_conv_transpose2d))
    def backward(ctx, grad_output):
        return _conv_backward(ctx, grad_output, fastconv.grad.conv_transpose2d_input, fastconv.grad.conv_transpose2d_weight)


class MaxPool2dFunction(torch.autograd.Function):
    """max_pool2d on fastconv's kernels:
    `MaxPool2dFunction.apply(input, kernel_size, stride, padding, dilation, ceil_mode, return_indices)`.

    input (N, C, H, W) or (C, H, W). Returns the output, and with return_indices also the
    int64 flat indices (h * W + w) of each window's maximum in its input plane, as torch.
    The backward routes each gradient to the index the forward found (never a second
    search), so the forward keeps the indices whenever the input needs a gradient.
    """

    @staticmethod
    def forward(ctx, input, kernel_size, stride, padding, dilation, ceil_mode, return_indices):
        ctx.pool_args = (kernel_size, stride, padding, dilation, ceil_mode)
        unbatched = input.dim() == 3
        want_indices = return_indices or ctx.needs_input_grad[0]
        result = fastconv.max_pool2d(_batched_array(input), *ctx.pool_args, return_indices=want_indices)
        if not want_indices:
            return _tensor(result, unbatched)
        out, indices = _tensor(result[0], unbatched), _tensor(result[1], unbatched)
        # Saved rather than kept on ctx so that autograd notices if the caller changes
        # the returned indices in place before the backward.
        ctx.save_for_backward(input, indices)
        if not return_indices:
            return out
        ctx.mark_non_differentiable(indices)
        return out, indices

    @staticmethod
    @_differentiable_by_torch("max_pool2d", _max_pool_by_indices)
    def backward(ctx, grad_output, *unused_grad_indices):
        input, indices = ctx.saved_tensors
        grad_input = fastconv.grad.max_pool2d_input(
            _batched_array(input), _batched_array(grad_output), *ctx.pool_args, indices=_batched_array(indices)
        )
        return _tensor(grad_input, unbatched=input.dim() == 3), None, None, None, None, None, None


class AvgPool2dFunction(torch.autograd.Function):
    """avg_pool2d on fastconv's kernels: `AvgPool2dFunction.apply(input, kernel_size, stride, padding,
    ceil_mode, count_include_pad, divisor_override)`; input (N, C, H, W) or (C, H, W)."""

    @staticmethod
    def forward(ctx, input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
        ctx.pool_args = (kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)
        x = _batched_array(input)
        ctx.input_size, ctx.unbatched = x.shape, input.dim() == 3  # the backward needs only the shape
        return _tensor(fastconv.avg_pool2d(x, *ctx.pool_args), ctx.unbatched)

    @staticmethod
    @_differentiable_by_torch("avg_pool2d", _avg_pool_by_torch)
    def backward(ctx, grad_output):
        grad_input = fastconv.grad.avg_pool2d_input(ctx.input_size, _batched_array(grad_output), *ctx.pool_args)
        return _tensor(grad_input, ctx.unbatched), None, None, None, None, None, None


class LPPool2dFunction(torch.autograd.Function):
    """lp_pool2d on fastconv's kernels: `LPPool2dFunction.apply(input, norm_type, kernel_size, stride, ceil_mode)`.

    (sum of x ** norm_type over each window) ** (1 / norm_type), no padding; input
    (N, C, H, W) or (C, H, W); norm_type a positive finite number. A window whose power
    sum is zero passes no gradient, as in torch.
    """

    @staticmethod
    def forward(ctx, input, norm_type, kernel_size, stride, ceil_mode):
        ctx.pool_args = (norm_type, kernel_size, stride, ceil_mode)
        ctx.save_for_backward(input)
        return _tensor(fastconv.lp_pool2d(_batched_array(input), *ctx.pool_args), unbatched=input.dim() == 3)

    @staticmethod
    @_differentiable_by_torch("lp_pool2d", _lp_pool_by_torch)
    def backward(ctx, grad_output):
        (input,) = ctx.saved_tensors
        grad_input = fastconv.grad.lp_pool2d_input(_batched_array(input), _batched_array(grad_output), *ctx.pool_args)
        return _tensor(grad_input, unbatched=input.dim() == 3), None, None, None, None


# --------------------------------------------------------------------------- functional wrappers

_FLOAT_DTYPES = (torch.float32, torch.float64)
# Parameter is the one tensor subclass that behaves exactly like a tensor here; any other
# subclass may override operators through __torch_function__, which only torch's op honours.
_PLAIN_TENSOR_TYPES = (torch.Tensor, torch.nn.Parameter)
# torch.compiler.is_compiling arrived in torch 2.3; older versions cannot be compiling here.
_is_compiling = getattr(torch.compiler, "is_compiling", lambda: False)


def _why_not_fastconv(input: torch.Tensor, *others: torch.Tensor | None) -> str | None:
    """None where fastconv can run on these tensors, else why torch must."""
    if torch.jit.is_tracing():
        return "torch.jit is tracing (a trace must record torch's own operators)"
    if _is_compiling():
        return "torch.compile is compiling (the compiler works on torch's own operators)"
    tensors = [t for t in (input, *others) if t is not None]
    for t in tensors:
        if type(t) not in _PLAIN_TENSOR_TYPES:
            return f"tensor subclass {type(t).__name__}"
        if t.device.type != "cpu":
            return f"tensor on {t.device} (fastconv runs on the CPU)"
        if t.layout != torch.strided:
            return f"{t.layout} tensor"
        if t.dtype not in _FLOAT_DTYPES:
            return f"dtype {t.dtype} (fastconv runs float32 and float64)"
    if len({t.dtype for t in tensors}) > 1:
        return f"mixed dtypes {sorted({str(t.dtype) for t in tensors})}"
    if input.dim() not in (3, 4):
        return f"{input.dim()}-D input (fastconv takes (N, C, H, W) or (C, H, W))"
    return None


def _warn_fallback(op: str, reason: str, stacklevel: int = 1) -> None:
    """Warn that `op` runs torch's; stacklevel counts from the caller, as in warnings.warn."""
    # Python shows each distinct message once per call site by default, so a training
    # loop is not flooded. Under torch.compile a warning would only break the graph.
    if not _is_compiling():
        message = f"fastconv.torch.{op} runs torch.nn.functional.{op}: {reason}"
        warnings.warn(message, FallbackWarning, stacklevel=stacklevel + 1)


def _run(op: str, function, torch_op, tensors: tuple, args: tuple):
    """`function.apply(*args)` where fastconv takes the call, else `torch_op(*args)` with a warning.

    fastconv checks its arguments before any kernel runs and raises ValueError or
    TypeError for what it refuses; torch may accept some of these,
    so a refusal goes to torch, which gives its own answer or its own error.
    """
    reason = _why_not_fastconv(*tensors)
    if reason is None:
        try:
            return function.apply(*args)
        except (ValueError, TypeError) as error:
            reason = f"fastconv refused the arguments ({error})"
    _warn_fallback(op, reason, stacklevel=3)  # point at the code that called conv2d etc.
    return torch_op(*args)


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """torch.nn.functional.conv2d on fastconv's kernels (see Conv2dFunction for shapes)."""
    args = (input, weight, bias, stride, padding, dilation, groups)
    return _run("conv2d", Conv2dFunction, F.conv2d, (input, weight, bias), args)


def conv_transpose2d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    """torch.nn.functional.conv_transpose2d on fastconv's kernels (see ConvTranspose2dFunction)."""
    args = (input, weight, bias, stride, padding, output_padding, groups, dilation)
    return _run("conv_transpose2d", ConvTranspose2dFunction, F.conv_transpose2d, (input, weight, bias), args)


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    """torch.nn.functional.max_pool2d on fastconv's kernels; with return_indices, (output, int64 indices)."""
    args = (input, kernel_size, stride, padding, dilation, ceil_mode, return_indices)
    return _run("max_pool2d", MaxPool2dFunction, F.max_pool2d, (input,), args)


def avg_pool2d(
    input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True, divisor_override=None
):
    """torch.nn.functional.avg_pool2d on fastconv's kernels."""
    args = (input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)
    return _run("avg_pool2d", AvgPool2dFunction, F.avg_pool2d, (input,), args)


def lp_pool2d(input, norm_type, kernel_size, stride=None, ceil_mode=False):
    """torch.nn.functional.lp_pool2d on fastconv's kernels; norm_type inf (max pooling of |x|) runs torch's."""
    args = (input, norm_type, kernel_size, stride, ceil_mode)
    return _run("lp_pool2d", LPPool2dFunction, F.lp_pool2d, (input,), args)


# --------------------------------------------------------------------------- modules


class Conv2d(torch.nn.Conv2d):
    """torch.nn.Conv2d on fastconv's kernels; built, saved and loaded exactly as torch.nn.Conv2d.

    padding_mode 'reflect', 'replicate' or 'circular' pads with torch.nn.functional.pad
    and convolves the padded input unpadded, as torch.nn.Conv2d itself does.
    """

    # torch.nn.Conv2d.forward calls _conv_forward(input, self.weight, self.bias); replacing
    # that hook keeps forward (and anything that calls the hook with other weights) intact.
    def _conv_forward(self, input, weight, bias):
        if self.padding_mode != "zeros":
            padded = torch.nn.functional.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return conv2d(padded, weight, bias, self.stride, 0, self.dilation, self.groups)
        return conv2d(input, weight, bias, self.stride, self.padding, self.dilation, self.groups)


class ConvTranspose2d(torch.nn.ConvTranspose2d):
    """torch.nn.ConvTranspose2d on fastconv's kernels, forward(input, output_size=None) included."""

    def forward(self, input, output_size=None):
        if self.padding_mode != "zeros":
            return super().forward(input, output_size)  # torch raises its own ValueError
        # torch's helper turns output_size into output_padding, validating it the same way.
        output_padding = self._output_padding(
            input, output_size, self.stride, self.padding, self.kernel_size, 2, self.dilation
        )
        return conv_transpose2d(
            input, self.weight, self.bias, self.stride, self.padding, output_padding, self.groups, self.dilation
        )


class MaxPool2d(torch.nn.MaxPool2d):
    """torch.nn.MaxPool2d on fastconv's kernels; return_indices=True returns int64 indices as torch."""

    def forward(self, input):
        return max_pool2d(
            input, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode, self.return_indices
        )


class AvgPool2d(torch.nn.AvgPool2d):
    """torch.nn.AvgPool2d on fastconv's kernels."""

    def forward(self, input):
        return avg_pool2d(
            input, self.kernel_size, self.stride, self.padding, self.ceil_mode, self.count_include_pad,
            self.divisor_override,
        )


class LPPool2d(torch.nn.LPPool2d):
    """torch.nn.LPPool2d on fastconv's kernels (a positive finite norm_type; else torch's)."""

    def forward(self, input):
        return lp_pool2d(input, float(self.norm_type), self.kernel_size, self.stride, self.ceil_mode)


# torch.nn class -> its fastconv drop-in, for patch and (reversed) unpatch.
_DROP_INS = {
    torch.nn.Conv2d: Conv2d,
    torch.nn.ConvTranspose2d: ConvTranspose2d,
    torch.nn.MaxPool2d: MaxPool2d,
    torch.nn.AvgPool2d: AvgPool2d,
    torch.nn.LPPool2d: LPPool2d,
}
_ORIGINALS = {fast: original for original, fast in _DROP_INS.items()}


# --------------------------------------------------------------------------- patch / unpatch


@dataclasses.dataclass
class PatchReport:
    """What `patch` did, by module name as in `model.named_modules()` ('' is the model itself).

    replaced: the modules now running on fastconv.
    skipped: module name -> why it stays torch's.
    """

    replaced: list[str] = dataclasses.field(default_factory=list)
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)

    def __str__(self) -> str:
        lines = [f"fastconv.torch.patch: {len(self.replaced)} replaced, {len(self.skipped)} skipped"]
        lines += [f"  replaced {name or '<model>'}" for name in self.replaced]
        lines += [f"  skipped  {name or '<model>'}: {reason}" for name, reason in self.skipped.items()]
        return "\n".join(lines)


def _why_not_patch(module: torch.nn.Module) -> str | None:
    """None where `module` (an instance of one of _DROP_INS's torch classes) can be replaced."""
    if type(module) not in _DROP_INS:
        # A subclass (the user's, a lazy or quantisation-aware module, a parametrized
        # module) may change forward or state: swapping its class would lose that.
        return f"{type(module).__qualname__} is a subclass of a torch.nn class; only the exact classes are replaced"
    if isinstance(module, torch.nn.LPPool2d) and not 0 < float(module.norm_type) < math.inf:
        return f"norm_type={module.norm_type} (fastconv takes a positive finite norm_type)"
    for name, tensor in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
        if tensor.device.type != "cpu":
            return f"{name} is on {tensor.device} (fastconv runs on the CPU)"
        if tensor.dtype not in _FLOAT_DTYPES:
            return f"{name} has dtype {tensor.dtype} (fastconv runs float32 and float64)"
    return None


def patch(model: torch.nn.Module) -> PatchReport:
    """Run every torch.nn Conv2d, ConvTranspose2d, MaxPool2d, AvgPool2d and LPPool2d in
    `model` (the model itself included) on fastconv, in place; returns a PatchReport.

    Each module keeps its identity: patch changes the module's class to the fastconv
    subclass (as torch.nn.utils.parametrize does) instead of building a new module, so
    the Parameter objects (and an optimiser holding them), buffers, hooks, training mode
    and every reference to the module stay as they were. Modules that fastconv cannot
    take (on a GPU, a non-float32/float64 dtype, subclasses of the torch classes) are
    left alone and listed in `report.skipped`.
    Patching twice changes nothing more.
    """
    report = PatchReport()
    for name, module in model.named_modules():
        if not isinstance(module, tuple(_DROP_INS)) or type(module) in _ORIGINALS:
            continue  # not a layer fastconv replaces, or already a fastconv one
        reason = _why_not_patch(module)
        if reason is None:
            module.__class__ = _DROP_INS[type(module)]
            report.replaced.append(name)
        else:
            report.skipped[name] = reason
    return report


def unpatch(model: torch.nn.Module) -> list[str]:
    """Undo `patch`: every fastconv layer in `model` goes back to its torch.nn class, in
    place and with the same parameters. Returns the names of the modules restored."""
    restored = []
    for name, module in model.named_modules():
        if type(module) in _ORIGINALS:
            module.__class__ = _ORIGINALS[type(module)]
            restored.append(name)
    return restored
