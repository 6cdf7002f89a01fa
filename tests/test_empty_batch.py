"""An empty batch (N = 0) works as in PyTorch: every operator and gradient returns
an empty result of the right shape and dtype (a weight or bias gradient of zeros),
in fastconv and the reference alike, and the NumPy layers train through it."""

import numpy as np
import pytest

import fastconv
from fastconv import grad, nn, reference

torch = pytest.importorskip("torch")
F = torch.nn.functional

IMPLS = {"fastconv": (fastconv, grad), "reference": (reference, reference)}
DTYPES = [np.float32, np.float64]
RNG = np.random.default_rng(0)
X = RNG.standard_normal((0, 4, 9, 9))
W = RNG.standard_normal((6, 2, 3, 3))

CONV = [dict(), dict(stride=2, padding=1), dict(groups=2, dilation=2), dict(padding=(2, 1), stride=(1, 2))]
CONV_TRANSPOSE = [dict(), dict(stride=2, padding=1, output_padding=1), dict(groups=2, dilation=2, stride=3)]


def _torch(a, dtype):
    return torch.from_numpy(np.asarray(a, dtype=dtype))


def assert_same(ours, theirs, dtype):
    theirs = theirs.detach().numpy()
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
    assert np.array_equal(ours, theirs)


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kw", CONV)
def test_conv2d(impl, dtype, kw):
    f, g = IMPLS[impl]
    x, w = X.astype(dtype), (W if "groups" in kw else RNG.standard_normal((6, 4, 3, 3))).astype(dtype)
    b = np.ones(6, dtype)
    expected = F.conv2d(_torch(x, dtype), _torch(w, dtype), _torch(b, dtype), **kw)
    assert_same(f.conv2d(x, w, b, **kw), expected, dtype)
    gy = np.zeros(tuple(expected.shape), dtype)
    assert_same(g.conv2d_input(x.shape, w, gy, **kw), torch.zeros(x.shape, dtype=expected.dtype), dtype)
    assert_same(g.conv2d_weight(x, w.shape, gy, **kw), torch.zeros(w.shape, dtype=expected.dtype), dtype)
    assert_same(g.conv2d_bias(gy), torch.zeros(6, dtype=expected.dtype), dtype)


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kw", CONV_TRANSPOSE)
def test_conv_transpose2d(impl, dtype, kw):
    f, g = IMPLS[impl]
    x, w = X.astype(dtype), RNG.standard_normal((4, 3, 4, 4)).astype(dtype)
    expected = F.conv_transpose2d(_torch(x, dtype), _torch(w, dtype), **kw)
    assert_same(f.conv_transpose2d(x, w, **kw), expected, dtype)
    gy = np.zeros(tuple(expected.shape), dtype)
    assert_same(g.conv_transpose2d_input(x.shape, w, gy, **kw), torch.zeros(x.shape, dtype=expected.dtype), dtype)
    assert_same(g.conv_transpose2d_weight(x, w.shape, gy, **kw), torch.zeros(w.shape, dtype=expected.dtype), dtype)


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("dtype", DTYPES)
def test_pooling(impl, dtype):
    f, g = IMPLS[impl]
    x = X.astype(dtype)
    t = _torch(x, dtype)
    out, indices = f.max_pool2d(x, 3, 2, 1, ceil_mode=True, return_indices=True)
    expected, expected_indices = F.max_pool2d(t, 3, 2, 1, ceil_mode=True, return_indices=True)
    assert_same(out, expected, dtype)
    assert_same(indices, expected_indices, dtype)
    assert_same(f.max_pool2d(x, 2), F.max_pool2d(t, 2), dtype)
    assert_same(f.avg_pool2d(x, 3, 2, 1), F.avg_pool2d(t, 3, 2, 1), dtype)
    assert_same(f.avg_pool2d(x, 2), F.avg_pool2d(t, 2), dtype)
    assert_same(f.lp_pool2d(x, 2, 3), F.lp_pool2d(t, 2, 3), dtype)
    assert_same(f.adaptive_avg_pool2d(x, 4), F.adaptive_avg_pool2d(t, 4), dtype)
    assert_same(f.adaptive_max_pool2d(x, 4), F.adaptive_max_pool2d(t, 4), dtype)
    assert_same(f.max_unpool2d(out, indices, 3, 2, 1), F.max_unpool2d(expected, expected_indices, 3, 2, 1), dtype)

    empty_input = torch.zeros(x.shape, dtype=t.dtype)
    assert_same(g.max_pool2d_input(x, np.zeros(out.shape, dtype), 3, 2, 1, ceil_mode=True), empty_input, dtype)
    assert_same(g.max_pool2d_input(x, np.zeros(out.shape, dtype), 3, 2, 1, ceil_mode=True, indices=indices), empty_input, dtype)
    assert_same(g.avg_pool2d_input(x.shape, np.zeros((0, 4, 4, 4), dtype), 2), empty_input, dtype)
    assert_same(g.lp_pool2d_input(x, np.zeros((0, 4, 3, 3), dtype), 2, 3), empty_input, dtype)
    assert_same(g.adaptive_avg_pool2d_input(x.shape, np.zeros((0, 4, 3, 3), dtype)), empty_input, dtype)
    assert_same(g.adaptive_max_pool2d_input(x, np.zeros((0, 4, 3, 3), dtype)), empty_input, dtype)
    assert_same(g.max_unpool2d_input(np.zeros((0, 4, 9, 9), dtype), indices), torch.zeros(out.shape, dtype=t.dtype), dtype)


def test_layers_train_through_an_empty_batch():
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2), nn.AvgPool2d(2),
        nn.ConvTranspose2d(4, 4, 2, stride=2), nn.Dropout(), nn.Flatten(), nn.Linear(64, 10),
    )
    batch_norm = model[1]
    running = batch_norm.running_mean.copy(), batch_norm.running_var.copy()
    loss = nn.CrossEntropyLoss()
    with np.errstate(all="raise"):
        logits = model(np.zeros((0, 1, 8, 8), np.float32))
        assert logits.shape == (0, 10)
        assert np.isnan(loss(logits, np.zeros(0, np.int64)))  # the mean over nothing, as torch
        assert model.backward(loss.backward()).shape == (0, 1, 8, 8)
    # torch keeps the running averages and counts the batch
    assert np.array_equal(batch_norm.running_mean, running[0]) and np.array_equal(batch_norm.running_var, running[1])
    assert batch_norm.num_batches_tracked == 1
    for p in model.parameters():
        assert not p.grad.any()
