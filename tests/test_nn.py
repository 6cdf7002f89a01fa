"""Layers, losses, optimisers and checkpoints against PyTorch (float64), and the
LeNet training command."""

import numpy as np
import pytest

from fastconv import nn, optim, train
from tests.conftest import assert_close

torch = pytest.importorskip("torch")
T = torch.nn
F64 = np.float64


def _same_weights(ours, theirs):
    theirs.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in ours.state_dict().items()})


LAYERS = [
    (lambda: nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2, dtype=F64, seed=0), lambda: T.Conv2d(4, 6, 3, stride=2, padding=1, groups=2), (2, 4, 9, 9)),
    (lambda: nn.Conv2d(3, 4, (3, 2), padding="same", dilation=2, bias=False, dtype=F64, seed=1), lambda: T.Conv2d(3, 4, (3, 2), padding="same", dilation=2, bias=False), (2, 3, 7, 8)),
    (lambda: nn.ConvTranspose2d(4, 6, 4, stride=2, padding=1, output_padding=1, groups=2, dtype=F64, seed=2),
     lambda: T.ConvTranspose2d(4, 6, 4, stride=2, padding=1, output_padding=1, groups=2), (2, 4, 5, 5)),
    (lambda: nn.MaxPool2d(3, 2, 1, ceil_mode=True), lambda: T.MaxPool2d(3, 2, 1, ceil_mode=True), (2, 3, 8, 8)),
    (lambda: nn.AvgPool2d(3, 2, 1, count_include_pad=False), lambda: T.AvgPool2d(3, 2, 1, count_include_pad=False), (2, 3, 8, 8)),
    (lambda: nn.LPPool2d(2, 2), lambda: T.LPPool2d(2, 2), (2, 3, 8, 8)),
    (lambda: nn.AdaptiveAvgPool2d((3, 2)), lambda: T.AdaptiveAvgPool2d((3, 2)), (2, 3, 8, 7)),
    (lambda: nn.AdaptiveMaxPool2d((3, None)), lambda: T.AdaptiveMaxPool2d((3, None)), (2, 3, 8, 7)),
    (lambda: nn.Linear(7, 5, dtype=F64, seed=3), lambda: T.Linear(7, 5), (4, 7)),
    (lambda: nn.Linear(7, 5, dtype=F64, seed=4), lambda: T.Linear(7, 5), (2, 3, 7)),
    (lambda: nn.Linear(40, 48, bias=False, dtype=F64, seed=5), lambda: T.Linear(40, 48, bias=False), (40,)),
    (lambda: nn.BatchNorm2d(3, dtype=F64), lambda: T.BatchNorm2d(3), (4, 3, 5, 5)),
    (lambda: nn.Sequential(nn.Flatten(), nn.ReLU(), nn.Dropout(0.0)), lambda: T.Sequential(T.Flatten(), T.ReLU(), T.Dropout(0.0)), (2, 3, 4, 4)),
    (lambda: nn.Dropout(1.0), lambda: T.Dropout(1.0), (2, 3, 4, 4)),
    # one-element sequences stand for both sides, as in PyTorch
    (lambda: nn.Conv2d(3, 4, 3, stride=(2,), padding=[1], dtype=F64, seed=6), lambda: T.Conv2d(3, 4, 3, stride=(2,), padding=[1]), (2, 3, 7, 8)),
    (lambda: nn.MaxPool2d((2,), stride=[1]), lambda: T.MaxPool2d((2,), stride=[1]), (2, 3, 5, 6)),
]


@pytest.mark.parametrize("make, make_torch, shape", LAYERS, ids=lambda v: getattr(v, "__name__", "") if not isinstance(v, tuple) else str(v))
@pytest.mark.parametrize("training", [True, False])
def test_layer_matches_torch(make, make_torch, shape, training, rng):
    ours, theirs = make(), make_torch().double()
    _same_weights(ours, theirs)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    ours.train(training)
    theirs.train(training)
    x = rng.standard_normal(shape)
    tx = torch.tensor(x, requires_grad=True)
    ty = theirs(tx)
    gy = rng.standard_normal(tuple(ty.shape))
    ty.backward(torch.tensor(gy))
    y = ours(x)
    assert_close(y, ty.detach().numpy(), F64)
    assert_close(ours.backward(gy), tx.grad.numpy(), F64)
    for (name, p), (tname, tp) in zip(ours.named_parameters(), theirs.named_parameters()):
        assert name == tname
        assert_close(p.grad, tp.grad.numpy(), F64)
    for key, value in theirs.state_dict().items():
        assert_close(np.asarray(ours.state_dict()[key], dtype=F64), value.double().numpy(), F64)


def test_depthwise_separable_block(rng):
    block = nn.DepthwiseSeparableConv2d(4, 8, dtype=F64, seed=0)
    ref = T.Sequential(T.Conv2d(4, 4, 3, 1, 1, groups=4), T.ReLU(), T.Conv2d(4, 8, 1)).double()
    ref.load_state_dict({k.replace("depthwise", "0").replace("pointwise", "2"): torch.from_numpy(v) for k, v in block.state_dict().items()})
    x = rng.standard_normal((2, 4, 6, 6))
    assert_close(block(x), ref(torch.tensor(x)).detach().numpy(), F64)


def test_losses_match_torch(rng):
    logits = rng.standard_normal((6, 10)) * 30  # large logits: the log-softmax must stay stable
    target = rng.integers(0, 10, 6)
    ce = nn.CrossEntropyLoss()
    tl = torch.tensor(logits, requires_grad=True)
    loss = T.functional.cross_entropy(tl, torch.tensor(target))
    loss.backward()
    assert abs(ce(logits, target) - loss.item()) <= 1e-12 * abs(loss.item())
    assert_close(ce.backward(), tl.grad.numpy(), F64)
    pred, goal = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    mse = nn.MSELoss()
    tp = torch.tensor(pred, requires_grad=True)
    tloss = T.functional.mse_loss(tp, torch.tensor(goal))
    tloss.backward()
    assert abs(mse(pred, goal) - tloss.item()) <= 1e-12
    assert_close(mse.backward(), tp.grad.numpy(), F64)
    with pytest.raises(ValueError, match="class indices"):
        ce(logits, target + 10)


@pytest.mark.parametrize("make_opt", [
    (lambda p: optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-3), lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-3)),
    (lambda p: optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True), lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True)),
    (lambda p: optim.Adam(p, lr=3e-3, weight_decay=1e-4), lambda p: torch.optim.Adam(p, lr=3e-3, weight_decay=1e-4)),
], ids=["sgd-momentum", "sgd-nesterov", "adam"])
def test_lenet_loss_curve_matches_torch(make_opt, rng):
    model = train.lenet5(dtype=F64, seed=0)
    tmodel = train.torch_lenet5().double()
    _same_weights(model, tmodel)
    opt, topt = make_opt[0](model.parameters()), make_opt[1](tmodel.parameters())
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(5):
        x = rng.random((16, 1, 32, 32))
        y = rng.integers(0, 10, 16)
        loss, _ = train.train_step(model, loss_fn, opt, x, y)
        topt.zero_grad()
        tloss = T.functional.cross_entropy(tmodel(torch.tensor(x)), torch.tensor(y))
        tloss.backward()
        topt.step()
        assert abs(loss - tloss.item()) <= 1e-8 * abs(tloss.item())
    for key, value in tmodel.state_dict().items():
        assert_close(model.state_dict()[key], value.numpy(), F64, {np.float64: 1e-8})


def test_checkpoint_round_trip_and_mismatch(tmp_path, rng):
    model = train.lenet5(seed=0)
    opt = optim.Adam(model.parameters())
    loss_fn = nn.CrossEntropyLoss()
    x, y = rng.random((8, 1, 32, 32), dtype=np.float32), rng.integers(0, 10, 8)
    train.train_step(model, loss_fn, opt, x, y)
    optim.save(tmp_path / "ckpt.npz", model, opt)
    other = train.lenet5(seed=1)
    other_opt = optim.Adam(other.parameters())
    optim.load(tmp_path / "ckpt.npz", other, other_opt)
    for key, value in model.state_dict().items():
        assert np.array_equal(other.state_dict()[key], value)
    train.train_step(model, loss_fn, opt, x, y)
    train.train_step(other, loss_fn, other_opt, x, y)
    for key, value in model.state_dict().items():
        assert np.array_equal(other.state_dict()[key], value)
    wrong = nn.Sequential(nn.Conv2d(1, 6, 5), nn.ReLU(), nn.Conv2d(6, 8, 3))
    with pytest.raises(KeyError, match="unexpected keys \\['3.weight'"):
        optim.load(tmp_path / "ckpt.npz", wrong)
    resized = train.lenet5(seed=0)
    resized[0].weight.data = np.zeros((6, 1, 3, 3), np.float32)
    with pytest.raises(ValueError, match="'0.weight' has shape \\(6, 1, 5, 5\\)"):
        optim.load(tmp_path / "ckpt.npz", resized)


def test_constructor_errors():
    with pytest.raises(ValueError, match="divisible by groups"):
        nn.Conv2d(3, 4, 3, groups=2)
    with pytest.raises(ValueError, match="padding_mode must be one of"):
        nn.Conv2d(3, 4, 3, padding_mode="mirror")
    with pytest.raises(ValueError, match="padding_mode must be one of \\('zeros',\\), got 'reflect'"):
        nn.ConvTranspose2d(3, 4, 3, padding_mode="reflect")  # as torch: zeros only
    with pytest.raises(ValueError, match="'same' is not supported for strided"):
        nn.Conv2d(3, 4, 3, stride=2, padding="same")
    with pytest.raises(ValueError, match="dropout probability p must be in \\[0, 1\\], got 1.5"):
        nn.Dropout(1.5)
    with pytest.raises(TypeError, match="momentum must be a number or None"):
        nn.BatchNorm2d(3, momentum="0.1")


def test_batch_norm_cumulative_average_and_one_value_per_channel(rng):
    # momentum=None: the running averages are the plain mean over the batches seen
    ours, theirs = nn.BatchNorm2d(3, momentum=None, dtype=F64), T.BatchNorm2d(3, momentum=None).double()
    for _ in range(3):
        x = rng.standard_normal((4, 3, 5, 5)) * 3 + 1
        assert_close(ours(x), theirs(torch.from_numpy(x)).detach().numpy(), F64)
    for key, value in theirs.state_dict().items():
        assert_close(np.asarray(ours.state_dict()[key], dtype=F64), value.double().numpy(), F64)
    # one value per channel has no unbiased variance: refused in training, as in PyTorch
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        ours(np.ones((1, 3, 1, 1)))
    ours.eval()
    assert ours(np.ones((1, 3, 1, 1))).shape == (1, 3, 1, 1)


def test_tied_and_reused_modules(rng):
    # A Parameter shared by two layers is stepped once, its gradient the sum of both
    # uses, as torch's tied weights; one module object twice in a Sequential is refused.
    first, second = nn.Linear(3, 3, dtype=F64, seed=1), nn.Linear(3, 3, dtype=F64, seed=2)
    second.weight = first.weight
    model = nn.Sequential(first, nn.ReLU(), second)
    assert [name for name, _ in model.named_parameters()] == ["0.weight", "0.bias", "2.bias"]
    assert list(model.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    t_first, t_second = T.Linear(3, 3).double(), T.Linear(3, 3).double()
    t_first.load_state_dict({k: torch.from_numpy(v) for k, v in first.state_dict().items()})
    t_second.load_state_dict({k: torch.from_numpy(v) for k, v in second.state_dict().items()})
    t_second.weight = t_first.weight
    t_model = T.Sequential(t_first, T.ReLU(), t_second)
    x = rng.standard_normal((4, 3))
    gy = rng.standard_normal((4, 3))
    model(x)
    model.backward(gy)
    t_model(torch.from_numpy(x)).backward(torch.from_numpy(gy))
    assert len(model.parameters()) == len(list(t_model.parameters())) == 3
    for p, tp in zip(model.parameters(), t_model.parameters()):
        assert_close(p.grad, tp.grad.numpy(), F64)
    relu = nn.ReLU()
    with pytest.raises(ValueError, match="ReLU in module 2 is already in module 0"):
        nn.Sequential(relu, first, relu)
    with pytest.raises(ValueError, match="Linear in module 1 is already in module 0"):
        nn.Sequential(first, nn.Sequential(nn.ReLU(), first))


def test_batch_norm_output_is_not_its_saved_state(rng):
    # without affine, the normalised input is kept for backward: an in-place layer after
    # it must not change it
    x, gy = rng.standard_normal((4, 2, 3, 3)), rng.standard_normal((4, 2, 3, 3))
    ours = nn.Sequential(nn.BatchNorm2d(2, affine=False, dtype=F64), nn.ReLU(inplace=True))
    theirs = T.Sequential(T.BatchNorm2d(2, affine=False).double(), T.ReLU(inplace=True))
    tx = torch.tensor(x, requires_grad=True)
    theirs(tx).backward(torch.from_numpy(gy))
    assert_close(ours(x), theirs(torch.from_numpy(x)).detach().numpy(), F64)
    assert_close(ours.backward(gy), tx.grad.numpy(), F64)


@pytest.mark.parametrize("make", [
    lambda: nn.Conv2d(2, 3, 3), lambda: nn.MaxPool2d(2), lambda: nn.Linear(3, 2), lambda: nn.Flatten(),
    lambda: nn.Dropout(0.5), lambda: nn.ReLU(), lambda: nn.BatchNorm2d(2), lambda: nn.Sequential(nn.ReLU()),
])
def test_backward_before_forward_is_refused(make):
    with pytest.raises(RuntimeError, match="backward called before any forward"):
        make().backward(np.ones((1, 2, 4, 4), np.float32))
    for loss in (nn.CrossEntropyLoss(), nn.MSELoss()):
        with pytest.raises(RuntimeError, match="backward called before any forward"):
            loss.backward()


def test_train_command_reaches_97_percent(capsys):
    assert train.main(["--epochs", "12"]) == 0
    out = capsys.readouterr().out
    accuracy = float(out.split("test accuracy ")[1].split()[0])
    assert accuracy >= 0.97, out


def test_optimizer_and_loss_errors(tmp_path):
    params = nn.Linear(3, 2).parameters()
    with pytest.raises(ValueError, match="lr must be positive"):
        optim.SGD(params, lr=0)
    with pytest.raises(ValueError, match="empty parameter list"):
        optim.Adam([])
    with pytest.raises(ValueError, match="momentum and weight_decay must be non-negative"):
        optim.SGD(params, lr=0.1, momentum=-1)
    with pytest.raises(ValueError, match="nesterov momentum requires"):
        optim.SGD(params, lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="betas must be in"):
        optim.Adam(params, betas=(1.0, 0.9))
    opt = optim.SGD(params, lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="does not match parameter 0"):
        opt.load_state_dict({"steps": np.array(1), "0.momentum_buffer": np.zeros(5)})
    with pytest.raises(ValueError, match="'0.exp_avg' is not SGD's"):
        opt.load_state_dict({"steps": np.array(1), "0.exp_avg": np.zeros(params[0].shape)})
    model = nn.Linear(3, 2)
    optim.save(tmp_path / "model_only.npz", model)
    with pytest.raises(KeyError, match="holds no optimizer state"):
        optim.load(tmp_path / "model_only.npz", model, optim.Adam(model.parameters()))
    with pytest.raises(ValueError, match="expected logits"):
        nn.CrossEntropyLoss()(np.zeros((2, 3, 1)), np.zeros(2, np.int64))
    with pytest.raises(ValueError, match="same shape"):
        nn.MSELoss()(np.zeros((2, 3)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match=r"BatchNorm2d\(4\) expects"):
        nn.BatchNorm2d(4)(np.zeros((2, 3, 5, 5), np.float32))


@pytest.mark.parametrize("padding_mode", ["reflect", "replicate", "circular"])
@pytest.mark.parametrize("padding, stride, dilation, groups, pads", [
    (1, 1, 1, 1, (1, 1, 1, 1)),
    (((2, 0), (1, 3)), 2, 1, 2, (2, 0, 1, 3)),
    ("same", 1, (2, 1), 1, (2, 2, 1, 2)),  # a 3x4 kernel: the odd extra column on the right
    (0, 1, 1, 1, (0, 0, 0, 0)),
])
def test_conv2d_padding_modes_match_torch(padding_mode, padding, stride, dilation, groups, pads):
    # torch pads with F.pad (reflect, replicate or circular), then convolves unpadded
    rng = np.random.default_rng(0)
    layer = nn.Conv2d(4, 6, (3, 4), stride=stride, padding=padding, dilation=dilation, groups=groups, padding_mode=padding_mode, dtype=np.float64)
    x = rng.standard_normal((2, 4, 7, 9))
    y = layer(x)
    gy = rng.standard_normal(y.shape)
    gx = layer.backward(gy)

    pt, pb, pl, pr = pads
    tx = torch.from_numpy(x).requires_grad_()
    tw, tb = torch.from_numpy(layer.weight.data).requires_grad_(), torch.from_numpy(layer.bias.data).requires_grad_()
    padded = torch.nn.functional.pad(tx, (pl, pr, pt, pb), mode=padding_mode)
    ty = torch.nn.functional.conv2d(padded, tw, tb, stride, 0, dilation, groups)
    ty.backward(torch.from_numpy(gy))
    assert_close(y, ty.detach().numpy(), np.float64)
    assert_close(gx, tx.grad.numpy(), np.float64)
    assert_close(layer.weight.grad, tw.grad.numpy(), np.float64)
    assert_close(layer.bias.grad, tb.grad.numpy(), np.float64)


def test_conv2d_padding_mode_limits():
    x = np.zeros((1, 2, 3, 5), np.float32)
    with pytest.raises(ValueError, match="'reflect' pads at most \\(2, 4\\) cells on a 3x5 plane, got padding \\(3, 3, 3, 3\\)"):
        nn.Conv2d(2, 2, 3, padding=3, padding_mode="reflect")(x)
    with pytest.raises(ValueError, match="'circular' pads at most"):
        nn.Conv2d(2, 2, 3, padding=4, padding_mode="circular")(x)
    assert nn.Conv2d(2, 2, 3, padding=9, padding_mode="replicate")(x).shape == (1, 2, 19, 21)


@pytest.mark.parametrize("layer", [
    lambda: nn.Conv2d(3, 4, 3, padding=1, dtype=np.float64, seed=0),
    lambda: nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect", dtype=np.float64, seed=0),
    lambda: nn.ConvTranspose2d(3, 4, 3, stride=2, dtype=np.float64, seed=0),
    lambda: nn.MaxPool2d(3, 2, 1),
    lambda: nn.MaxPool2d(2, return_indices=True),
    lambda: nn.AvgPool2d(3, 2, 1),
    lambda: nn.LPPool2d(2, 2),
    lambda: nn.AdaptiveAvgPool2d(3),
    lambda: nn.AdaptiveMaxPool2d(3, return_indices=True),
])
def test_spatial_layers_take_unbatched_input(layer):
    # as torch.nn: a (C, H, W) input runs as a batch of one, forward and backward
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 7, 8))
    unbatched, batched = layer(), layer()
    y = unbatched(x)
    y1 = batched(x[None])
    for a, b in zip(y if isinstance(y, tuple) else (y,), y1 if isinstance(y1, tuple) else (y1,)):
        assert np.array_equal(a, b[0])
    out = y[0] if isinstance(y, tuple) else y
    gy = rng.standard_normal(out.shape)
    gx = unbatched.backward(gy)
    assert gx.shape == x.shape
    assert np.array_equal(gx, batched.backward(gy[None])[0])
    for p, q in zip(unbatched.parameters(), batched.parameters()):
        assert np.array_equal(p.grad, q.grad)


def test_inplace_relu_and_dropout_leave_the_result_in_their_input():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    gy = rng.standard_normal(x.shape).astype(np.float32)
    for make in (lambda inplace: nn.ReLU(inplace), lambda inplace: nn.Dropout(0.3, inplace, seed=1)):
        for view in (x.copy(), x.copy().transpose(0, 1, 3, 2).copy().transpose(0, 1, 3, 2)):  # contiguous, and not
            out_of_place, in_place = make(False), make(True)  # the same dropout mask
            expected = out_of_place(x)
            y = in_place(view)
            assert y is view and np.array_equal(view, expected)
            assert np.array_equal(in_place.backward(gy), out_of_place.backward(gy))
    assert repr(nn.ReLU(inplace=True)) == "ReLU(inplace=True)"
    frozen = x.copy()
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="writable"):
        nn.ReLU(inplace=True)(frozen)


@pytest.mark.parametrize("argv, message", [
    (["--batch-size", "0"], "--batch-size: must be positive"), (["--epochs", "-3"], "--epochs: must be positive"),
    (["--lr", "nan"], "--lr: must be positive"), (["--threads", "100000"], "--threads: at most"),
    (["--save", "/no/such/folder/ck"], "--save: no folder"),
])
def test_train_command_refuses_bad_options(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        train.parse_args(argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_train_command_names_the_file_it_writes(tmp_path):
    assert train.parse_args(["--save", str(tmp_path / "ck")]).save == str(tmp_path / "ck.npz")
