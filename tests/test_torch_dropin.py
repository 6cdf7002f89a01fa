"""fastconv.torch: the autograd Functions (gradcheck), the drop-in modules against
torch.nn's (outputs and gradients), patch/unpatch on a small CNN with its optimiser,
and the fallbacks to torch for what fastconv does not take."""

import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import fastconv  # noqa: E402
import fastconv.torch as fct  # noqa: E402
from tests.conftest import RTOL, assert_close  # noqa: E402

nn = torch.nn
F64, F32 = torch.float64, torch.float32

# A silent fallback would make a parity test compare torch with itself: every
# FallbackWarning is an error here, except inside the pytest.warns of the fallback tests.
pytestmark = pytest.mark.filterwarnings("error::fastconv.torch.FallbackWarning")


def randn(*shape, dtype=F64, seed=0, requires_grad=False):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator, dtype=dtype).requires_grad_(requires_grad)


def distinct(*shape, seed=0):
    """float64 values 0.1 apart in random order: max pooling has no ties within gradcheck's eps."""
    generator = torch.Generator().manual_seed(seed)
    n = int(np.prod(shape))
    return (torch.randperm(n, generator=generator).to(F64) * 0.1).reshape(shape).requires_grad_()


def gradcheck(function, *args):
    assert torch.autograd.gradcheck(function.apply, args, eps=1e-6, atol=1e-8, rtol=1e-6)


# ----------------------------------------------------------------------------- gradcheck on the Functions

CONV_CASES = [
    # (C_in, C_out, kernel, stride, padding, dilation, groups, H, W)
    (2, 3, (3, 3), 1, 0, 1, 1, 5, 5),
    (2, 3, (3, 2), (2, 1), (1, 0), 1, 1, 6, 5),
    (4, 4, (3, 3), 1, "same", 2, 2, 6, 6),
    (3, 3, (3, 3), 2, 1, 1, 3, 5, 6),  # depthwise
    (2, 4, (2, 2), 1, "valid", (1, 2), 2, 4, 5),
]


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_gradcheck(case, bias):
    c_in, c_out, (kh, kw), stride, padding, dilation, groups, h, w = case
    x = randn(2, c_in, h, w, requires_grad=True)
    weight = randn(c_out, c_in // groups, kh, kw, seed=1, requires_grad=True)
    b = randn(c_out, seed=2, requires_grad=True) if bias else None
    gradcheck(fct.Conv2dFunction, x, weight, b, stride, padding, dilation, groups)


CONV_TRANSPOSE_CASES = [
    # (C_in, C_out, kernel, stride, padding, output_padding, groups, dilation, H, W)
    (2, 3, (3, 3), 1, 0, 0, 1, 1, 3, 4),
    (2, 3, (3, 3), 2, 1, 1, 1, 1, 3, 3),
    (4, 2, (2, 3), (2, 1), (0, 1), (1, 0), 2, 1, 3, 3),
    (2, 2, (3, 3), 2, 1, 1, 1, 2, 3, 3),
]


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("case", CONV_TRANSPOSE_CASES)
def test_conv_transpose2d_gradcheck(case, bias):
    c_in, c_out, (kh, kw), stride, padding, output_padding, groups, dilation, h, w = case
    x = randn(2, c_in, h, w, requires_grad=True)
    weight = randn(c_in, c_out // groups, kh, kw, seed=1, requires_grad=True)
    b = randn(c_out, seed=2, requires_grad=True) if bias else None
    gradcheck(fct.ConvTranspose2dFunction, x, weight, b, stride, padding, output_padding, groups, dilation)


MAX_CASES = [
    # (kernel_size, stride, padding, dilation, ceil_mode, H, W)
    (2, None, 0, 1, False, 4, 5),
    (3, 2, 1, 1, True, 6, 7),
    ((3, 2), (2, 1), (1, 0), (2, 1), False, 7, 6),
    (2, 1, 0, 1, False, 4, 4),  # overlapping windows: gradients add up
]


@pytest.mark.parametrize("return_indices", [False, True])
@pytest.mark.parametrize("case", MAX_CASES)
def test_max_pool2d_gradcheck(case, return_indices):
    kernel_size, stride, padding, dilation, ceil_mode, h, w = case
    x = distinct(2, 2, h, w)
    gradcheck(fct.MaxPool2dFunction, x, kernel_size, stride, padding, dilation, ceil_mode, return_indices)


AVG_CASES = [
    # (kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)
    (2, None, 0, False, True, None),
    (3, 2, 1, True, True, None),
    (3, 2, 1, True, False, None),
    ((3, 2), (1, 2), (1, 1), False, False, None),
    (2, 1, 0, False, True, 3),
]


@pytest.mark.parametrize("case", AVG_CASES)
def test_avg_pool2d_gradcheck(case):
    x = randn(2, 2, 6, 7, requires_grad=True)
    gradcheck(fct.AvgPool2dFunction, x, *case)


LP_CASES = [
    # (norm_type, kernel_size, stride, ceil_mode)
    (2.0, 2, None, False),
    (3.0, (3, 2), (2, 1), True),
    (1.5, 2, 1, False),
]


@pytest.mark.parametrize("case", LP_CASES)
def test_lp_pool2d_gradcheck(case):
    x = (randn(2, 2, 6, 7).abs() + 0.5).requires_grad_()  # positive: x ** 1.5 is real
    gradcheck(fct.LPPool2dFunction, x, *case)


def test_functions_take_unbatched_inputs():
    x = randn(2, 5, 6, requires_grad=True)
    gradcheck(fct.Conv2dFunction, x, randn(3, 2, 3, 3, seed=1, requires_grad=True), None, 1, 1, 1, 1)
    gradcheck(fct.ConvTranspose2dFunction, x, randn(2, 3, 3, 3, seed=1, requires_grad=True), None, 2, 1, 1, 1, 1)
    gradcheck(fct.MaxPool2dFunction, distinct(2, 5, 6), 3, 2, 1, 1, True, True)
    gradcheck(fct.AvgPool2dFunction, x, 3, 2, 1, True, False, None)
    gradcheck(fct.LPPool2dFunction, (x.detach().abs() + 0.5).requires_grad_(), 2.0, 2, None, False)
    assert fct.conv2d(x, randn(3, 2, 3, 3)).shape == (3, 3, 4)
    out, indices = fct.max_pool2d(x, 2, return_indices=True)
    assert out.shape == indices.shape == (2, 2, 3)


# ----------------------------------------------------------------------------- memory and needed gradients


def test_forward_and_backward_share_memory_with_the_tensors(monkeypatch):
    seen = {}

    def spy(input, weight, bias, *args):
        seen.update(input=input, weight=weight)
        seen["output"] = fastconv.functional.conv2d(input, weight, bias, *args)
        return seen["output"]

    monkeypatch.setattr(fastconv, "conv2d", spy)
    x = randn(2, 3, 6, 5).transpose(2, 3)  # a non-contiguous view is passed as is
    weight = nn.Parameter(randn(4, 3, 3, 3, seed=1))
    out = fct.conv2d(x, weight)
    assert np.shares_memory(seen["input"], x.numpy())
    assert np.shares_memory(seen["weight"], weight.detach().numpy())
    assert np.shares_memory(out.detach().numpy(), seen["output"])


def test_gradients_only_for_inputs_that_need_them(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("gradient computed that nobody asked for")

    x = randn(1, 2, 5, 5, requires_grad=True)
    weight, bias = randn(3, 2, 3, 3, seed=1), randn(3, seed=2)  # no requires_grad
    monkeypatch.setattr(fastconv.grad, "conv2d_weight", refuse)
    monkeypatch.setattr(fastconv.grad, "conv2d_bias", refuse)
    fct.conv2d(x, weight, bias).sum().backward()
    assert x.grad is not None

    monkeypatch.undo()
    monkeypatch.setattr(fastconv.grad, "conv2d_input", refuse)
    weight.requires_grad_()
    fct.conv2d(x.detach(), weight, bias).sum().backward()
    assert weight.grad is not None


def test_max_pool_backward_uses_the_forward_indices(monkeypatch):
    seen = {}
    original = fastconv.grad.max_pool2d_input

    def spy(*args, indices=None):
        seen["indices"] = indices
        return original(*args, indices=indices)

    monkeypatch.setattr(fastconv.grad, "max_pool2d_input", spy)
    x = distinct(1, 2, 6, 6)
    fct.max_pool2d(x, 3, 2, 1).sum().backward()
    expected = torch.nn.functional.max_pool2d(x.detach(), 3, 2, 1, return_indices=True)[1]
    np.testing.assert_array_equal(seen["indices"], expected.numpy())


def test_import_fastconv_does_not_import_torch():
    code = "import sys, fastconv; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# ----------------------------------------------------------------------------- modules vs torch.nn

MODULE_CASES = [
    ("Conv2d", dict(in_channels=4, out_channels=6, kernel_size=3, padding=1, groups=2)),
    ("Conv2d", dict(in_channels=4, out_channels=4, kernel_size=(3, 2), stride=2, padding=(1, 0), dilation=(1, 2),
                    bias=False)),
    ("Conv2d", dict(in_channels=4, out_channels=8, kernel_size=3, padding="same", dilation=2)),
    ("Conv2d", dict(in_channels=4, out_channels=6, kernel_size=3, padding=(1, 2), padding_mode="reflect")),
    ("Conv2d", dict(in_channels=4, out_channels=4, kernel_size=(2, 3), stride=2, padding=1, groups=4, padding_mode="circular")),
    ("ConvTranspose2d", dict(in_channels=4, out_channels=6, kernel_size=3, stride=2, padding=1, output_padding=1,
                             groups=2)),
    ("ConvTranspose2d", dict(in_channels=4, out_channels=3, kernel_size=(2, 3), stride=(2, 1), dilation=(1, 2),
                             bias=False)),
    ("MaxPool2d", dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)),
    ("MaxPool2d", dict(kernel_size=2)),
    ("AvgPool2d", dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False)),
    ("AvgPool2d", dict(kernel_size=2, stride=1, divisor_override=3)),
    ("LPPool2d", dict(norm_type=2, kernel_size=2)),
    ("LPPool2d", dict(norm_type=3, kernel_size=(3, 2), stride=(2, 1), ceil_mode=True)),
]


def module_pair(name, kwargs, dtype):
    """(torch.nn module, fastconv.torch module) with the same weights, loaded through state_dict."""
    torch.manual_seed(0)
    original = getattr(nn, name)(**kwargs).to(dtype)
    fast = getattr(fct, name)(**kwargs).to(dtype)
    assert list(fast.state_dict()) == list(original.state_dict())
    fast.load_state_dict(original.state_dict())
    return original, fast


def forward_backward(module, x, **forward_kwargs):
    """-> {'output': ..., 'input': grad, parameter name: grad} as NumPy arrays."""
    x = x.detach().requires_grad_()
    module.zero_grad()
    out = module(x, **forward_kwargs)
    out.backward(randn(*out.shape, dtype=out.dtype, seed=7))
    results = {"output": out.detach().numpy(), "input": x.grad.numpy()}
    results.update({name: p.grad.numpy() for name, p in module.named_parameters()})
    return results


def assert_same_results(actual, expected, dtype):
    assert actual.keys() == expected.keys()
    for key in expected:
        assert_close(actual[key], expected[key], dtype, RTOL)


def module_input(name, dtype, *shape):
    x = randn(*shape, dtype=dtype, seed=3)
    return x.abs() + 0.1 if name == "LPPool2d" else x  # x ** p for positive x only


@pytest.mark.parametrize("dtype", [F64, F32], ids=["float64", "float32"])
@pytest.mark.parametrize("name, kwargs", MODULE_CASES)
def test_module_matches_torch(name, kwargs, dtype):
    original, fast = module_pair(name, kwargs, dtype)
    assert isinstance(fast, getattr(nn, name))
    assert repr(fast) == repr(original)
    x = module_input(name, dtype, 2, 4, 9, 8)
    np_dtype = np.float64 if dtype == F64 else np.float32
    # a contiguous input, a non-contiguous view and an unbatched (C, H, W) one
    for inp in (x, x.transpose(2, 3), x[0]):
        assert_same_results(forward_backward(fast, inp), forward_backward(original, inp), np_dtype)


def test_conv_transpose_output_size():
    kwargs = dict(in_channels=2, out_channels=3, kernel_size=3, stride=3, padding=1)
    original, fast = module_pair("ConvTranspose2d", kwargs, F64)
    x = randn(2, 2, 4, 5)
    for output_size in ([10, 13], [2, 3, 12, 14], None):
        expected = forward_backward(original, x, output_size=output_size)
        assert_same_results(forward_backward(fast, x, output_size=output_size), expected, np.float64)
    with pytest.raises(ValueError, match="output size"):
        fast(x, output_size=[20, 20])


def test_max_pool_module_returns_torch_indices():
    original, fast = module_pair("MaxPool2d", dict(kernel_size=3, stride=2, padding=1, return_indices=True), F32)
    x = randn(2, 3, 7, 6, dtype=F32, requires_grad=True)
    (out, indices), (expected, expected_indices) = fast(x), original(x)
    assert indices.dtype == torch.int64 and not indices.requires_grad
    assert torch.equal(indices, expected_indices) and torch.equal(out, expected)
    out.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), torch.autograd.grad(expected.sum(), x)[0].numpy())


# ----------------------------------------------------------------------------- patch / unpatch on a small CNN


def small_cnn():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(inplace=True),  # in place on the conv's output, which the conv must not need
        nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1, groups=4),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(8 * 2 * 2, 5),
    ).double()


def loss_and_grads(model, x, target):
    model.zero_grad()
    loss = torch.nn.functional.cross_entropy(model(x), target)
    loss.backward()
    return loss.item(), [p.grad.clone() for p in model.parameters()]


def test_patched_cnn_trains_like_torch():
    reference, model = small_cnn(), small_cnn()
    parameters = list(model.parameters())
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)  # created before patching
    reference_optimiser = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9)

    report = fct.patch(model)
    assert report.replaced == ["0", "2", "3", "4"] and report.skipped == {}
    expected_types = [fct.Conv2d, nn.ReLU, fct.MaxPool2d, fct.Conv2d, fct.AvgPool2d, nn.Flatten, nn.Linear]
    assert [type(m) for m in model] == expected_types
    assert all(a is b for a, b in zip(model.parameters(), parameters, strict=True))
    assert list(model.state_dict()) == list(reference.state_dict())
    assert fct.patch(model).replaced == []  # patching twice changes nothing more

    x, target = randn(4, 3, 8, 8, seed=5), torch.tensor([0, 1, 2, 3])
    for _ in range(2):
        loss, grads = loss_and_grads(model, x, target)
        reference_loss, reference_grads = loss_and_grads(reference, x, target)
        assert loss == pytest.approx(reference_loss, rel=1e-12)
        for g, reference_g in zip(grads, reference_grads, strict=True):
            assert_close(g.numpy(), reference_g.numpy(), np.float64, RTOL)
        optimiser.step()
        reference_optimiser.step()
        for p, reference_p in zip(model.parameters(), reference.parameters(), strict=True):
            assert_close(p.detach().numpy(), reference_p.detach().numpy(), np.float64, RTOL)
    assert not torch.equal(model[0].weight, small_cnn()[0].weight)  # the steps did update it

    assert fct.unpatch(model) == ["0", "2", "3", "4"]
    assert [type(m) for m in model] == [type(m) for m in reference]
    assert all(a is b for a, b in zip(model.parameters(), parameters, strict=True))


def test_patch_keeps_hooks_and_the_model_itself():
    conv = nn.Conv2d(2, 2, 3).double()
    calls = []
    conv.register_forward_hook(lambda module, args, out: calls.append(type(module)))
    report = fct.patch(conv)
    assert report.replaced == [""] and type(conv) is fct.Conv2d
    conv(randn(1, 2, 5, 5))
    assert calls == [fct.Conv2d]


class MyConv(nn.Conv2d):
    pass


def test_patch_skips_and_reports_what_it_cannot_take():
    model = nn.Sequential(
        nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"),
        nn.Conv2d(2, 2, 3).half(),
        nn.Conv2d(2, 2, 3, device="meta"),  # stands in for a CUDA module: any non-CPU device
        nn.LPPool2d(float("inf"), 2),
        MyConv(2, 2, 3),
        nn.MaxPool2d(2),
    )
    types = [type(m) for m in model]
    report = fct.patch(model)
    assert report.replaced == ["0", "5"]  # a padding_mode pads with torch, then runs fastconv
    assert list(report.skipped) == ["1", "2", "3", "4"]
    for name, words in zip("1234", ["float16", "meta", "norm_type", "subclass"], strict=True):
        assert words in report.skipped[name]
        assert type(model[int(name)]) is types[int(name)]
    assert "skipped" in str(report) and "float16" in str(report)


# ----------------------------------------------------------------------------- fallbacks to torch


def test_float16_and_bfloat16_fall_back_to_torch():
    original, fast = module_pair("Conv2d", dict(in_channels=2, out_channels=3, kernel_size=3), torch.float16)
    x = randn(1, 2, 5, 5, dtype=torch.float16)
    with pytest.warns(fct.FallbackWarning, match="float16"):
        out = fast(x)
    assert torch.equal(out, original(x))
    x = randn(1, 2, 5, 5, dtype=torch.bfloat16)
    with pytest.warns(fct.FallbackWarning, match="bfloat16"):
        assert torch.equal(fct.max_pool2d(x, 2), torch.nn.functional.max_pool2d(x, 2))


@pytest.mark.parametrize("padding_mode", ["reflect", "replicate", "circular"])
def test_padding_modes_run_on_fastconv(padding_mode, monkeypatch):
    # torch pads with F.pad and convolves unpadded; the convolution is fastconv's
    calls = []
    apply = fct.Conv2dFunction.apply
    monkeypatch.setattr(fct.Conv2dFunction, "apply", lambda *args: calls.append(1) or apply(*args))
    kwargs = dict(in_channels=4, out_channels=6, kernel_size=(3, 2), padding="same", dilation=(1, 2), groups=2, padding_mode=padding_mode)
    original, fast = module_pair("Conv2d", kwargs, F64)
    x = randn(2, 4, 7, 9)
    assert_same_results(forward_backward(fast, x), forward_backward(original, x), np.float64)
    assert calls


def test_non_cpu_tensors_fall_back_to_torch():
    # No GPU here: the meta device takes the same "not on the CPU" branch as CUDA.
    x, weight = torch.empty(1, 2, 5, 5, device="meta"), torch.empty(3, 2, 3, 3, device="meta")
    with pytest.warns(fct.FallbackWarning, match="meta"):
        out = fct.conv2d(x, weight)
    assert out.device.type == "meta" and out.shape == (1, 3, 3, 3)


def test_lp_pool_infinite_norm_falls_back_to_torch():
    original, fast = module_pair("LPPool2d", dict(norm_type=float("inf"), kernel_size=2), F64)
    x = randn(1, 2, 4, 4)
    with pytest.warns(fct.FallbackWarning, match="norm_type"):
        assert torch.equal(fast(x), original(x))


def test_an_empty_batch_runs_on_fastconv():
    # torch returns empty outputs and zero parameter gradients; no fallback warning
    fast, original = fct.Conv2d(2, 3, 3, padding=1).double(), nn.Conv2d(2, 3, 3, padding=1).double()
    fast.load_state_dict(original.state_dict())
    x = randn(0, 2, 5, 5, requires_grad=True)
    fast(x).sum().backward()
    original(randn(0, 2, 5, 5)).sum().backward()
    assert x.grad.shape == x.shape
    for a, b in zip(fast.parameters(), original.parameters()):
        assert torch.equal(a.grad, b.grad)
    assert fct.conv_transpose2d(x, randn(2, 3, 4, 4), stride=2).shape == (0, 3, 12, 12)
    assert fct.max_pool2d(x, 2, return_indices=True)[1].shape == (0, 2, 2, 2)


def test_what_fastconv_refuses_goes_to_torch():
    with pytest.warns(fct.FallbackWarning, match="must not be empty"), pytest.raises(RuntimeError):
        fct.conv2d(randn(1, 2, 0, 5), randn(3, 2, 3, 3))  # an empty plane: torch's error
    with pytest.warns(fct.FallbackWarning, match="refused"), pytest.raises(RuntimeError):
        fct.max_pool2d(randn(1, 1, 6, 6), 3, 1, 2)  # padding over half the kernel: torch's error
    with pytest.warns(fct.FallbackWarning, match="mixed dtypes"), pytest.raises(RuntimeError):
        fct.conv2d(randn(1, 2, 5, 5), randn(3, 2, 3, 3, dtype=F32))


SECOND_ORDER = [
    (fct.Conv2dFunction, lambda: (randn(1, 4, 5, 5, requires_grad=True), randn(4, 2, 3, 3, requires_grad=True), randn(4, requires_grad=True), 2, 1, 1, 2)),
    (fct.Conv2dFunction, lambda: (randn(2, 3, 4), randn(2, 2, 2, 3, requires_grad=True), None, 1, ((1, 0), (0, 2)), (2, 1), 1)),
    (fct.ConvTranspose2dFunction, lambda: (randn(1, 2, 3, 3, requires_grad=True), randn(2, 3, 3, 3, requires_grad=True), None, 2, 1, 1, 1, 1)),
    (fct.MaxPool2dFunction, lambda: (distinct(1, 2, 5, 5), 3, 2, 1, 1, False, False)),
    (fct.AvgPool2dFunction, lambda: (randn(1, 2, 5, 5, requires_grad=True), 3, 2, 1, True, False, None)),
    (fct.LPPool2dFunction, lambda: (randn(1, 2, 4, 4, requires_grad=True).abs().add(0.5).detach().requires_grad_(), 2.0, 2, 2, False)),
]


@pytest.mark.parametrize("function, arguments", SECOND_ORDER, ids=lambda v: getattr(v, "__name__", ""))
def test_second_derivatives_are_torchs(function, arguments):
    # Under create_graph=True the backward runs torch's operators, so every second-order
    # term is there: through the grad_outputs and through the saved input and weight.
    args = arguments()
    with pytest.warns(fct.FallbackWarning, match="create_graph=True"):
        assert torch.autograd.gradgradcheck(function.apply, args, eps=1e-6, atol=1e-8, rtol=1e-6)


def test_create_graph_edge_cases():
    # only the bias needs a gradient; a 0-d NumPy stride; a max-pool window of padding
    # only, whose gradient the indices route nowhere (torch's backward writes it
    # outside the plane)
    x, w = randn(1, 2, 5, 5), randn(3, 2, 3, 3, seed=1)
    b = randn(3, seed=2, requires_grad=True)
    with pytest.warns(fct.FallbackWarning, match="create_graph=True"):
        (gb,) = torch.autograd.grad(fct.conv2d(x, w, b).pow(2).sum(), b, create_graph=True)
    assert_close(gb.detach().numpy(), torch.autograd.grad(nn.functional.conv2d(x, w, b).pow(2).sum(), b)[0].numpy(), np.float64)
    xr = randn(1, 2, 5, 5, requires_grad=True)
    with pytest.warns(fct.FallbackWarning, match="create_graph=True"):
        (gx,) = torch.autograd.grad(fct.conv2d(xr, w, None, np.array(2)).pow(2).sum(), xr, create_graph=True)
    assert_close(gx.detach().numpy(), torch.autograd.grad(nn.functional.conv2d(xr, w, None, 2).pow(2).sum(), xr)[0].numpy(), np.float64)
    xp = torch.tensor([[[[1.0, 2.0]], [[3.0, 4.0]]]], dtype=F64, requires_grad=True)
    kw = dict(kernel_size=(2, 4), stride=(3, 9), padding=(1, 1), dilation=(2, 2), ceil_mode=True)
    y = fct.max_pool2d(xp, **kw)
    (first,) = torch.autograd.grad(y, xp, torch.ones_like(y), retain_graph=True)
    with pytest.warns(fct.FallbackWarning, match="create_graph=True"):
        (second,) = torch.autograd.grad(y, xp, torch.ones_like(y).requires_grad_(), create_graph=True)
    assert torch.equal(first, second.detach())


def test_a_gradient_penalty_matches_torch():
    # WGAN-GP style: the gradient of a penalty on the input gradient, with respect to
    # the weight only (autograd.grad with named inputs), as torch computes it.
    x, weight = randn(1, 2, 5, 5, requires_grad=True), randn(3, 2, 3, 3, seed=1, requires_grad=True)

    def penalty(conv):
        (grad_x,) = torch.autograd.grad(conv(x, weight).pow(2).sum(), x, create_graph=True)
        return torch.autograd.grad(grad_x.pow(2).sum() + weight.pow(2).sum(), weight)[0]

    with pytest.warns(fct.FallbackWarning, match="create_graph=True"):
        ours = penalty(fct.conv2d)
    assert_close(ours.numpy(), penalty(nn.functional.conv2d).numpy(), np.float64)
    # without create_graph the backward stays on fastconv (no warning: they are errors here)
    (grad_x,) = torch.autograd.grad(fct.conv2d(x, weight).sum(), x)
    expected = torch.nn.grad.conv2d_input(x.shape, weight.detach(), torch.ones(1, 3, 3, 3, dtype=F64))
    assert torch.allclose(grad_x, expected, rtol=1e-12, atol=0)
