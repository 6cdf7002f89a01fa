"""Every convolution kernel path against fastconv.reference, in both dtypes, over a
grid and random (hypothesis) shapes; plus non-contiguous inputs, determinism and
the adjoint identity. Independent of PyTorch."""

import numba
import numpy as np
import pytest
from fastconv.kernels import phases
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import fastconv
from fastconv import dispatch, grad, reference
from tests.conftest import assert_close

DTYPES = [np.float32, np.float64]
path_param = pytest.mark.parametrize("path", dispatch.PATHS)
dtype_param = pytest.mark.parametrize("dtype", DTYPES)

GRID = [
    # (N, C, K, H, W, kernel, stride, padding, dilation, groups)
    (2, 3, 4, 7, 8, (3, 3), 1, 1, 1, 1),
    (1, 4, 6, 9, 7, (3, 2), (2, 1), ((0, 2), (1, 0)), (1, 2), 2),
    (2, 8, 8, 6, 6, (3, 3), 1, "same", 2, 8),
    (2, 4, 8, 8, 8, (5, 5), 2, 2, 1, 4),
    (1, 1, 6, 12, 12, (5, 5), 1, 0, 1, 1),
    (3, 16, 32, 5, 5, (1, 1), 1, 0, 1, 1),
    (2, 16, 32, 5, 6, (1, 1), 2, 0, 1, 1),
    (1, 2, 2, 3, 3, (3, 3), 1, 0, 1, 1),
    (2, 3, 3, 1, 1, (3, 3), 1, 1, 1, 1),
    (2, 20, 40, 9, 9, (3, 3), 3, 4, 3, 1),
]
grid_param = pytest.mark.parametrize("case", GRID, ids=lambda c: "-".join(map(str, c)).replace(" ", ""))


def _conv_arrays(case, dtype, rng):
    n, c, k, h, w, ks, s, p, d, groups = case
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    wt = rng.standard_normal((k, c // groups) + ks).astype(dtype)
    return x, wt, dict(stride=s, padding=p, dilation=d, groups=groups)


def _check_conv(x, w, kw, dtype, rng):
    b = rng.standard_normal(w.shape[0]).astype(dtype)
    y = reference.conv2d(x, w, b, **kw)
    gy = rng.standard_normal(y.shape).astype(dtype)
    assert_close(fastconv.conv2d(x, w, b, **kw), y, dtype)
    assert_close(grad.conv2d_input(x.shape, w, gy, **kw), reference.conv2d_input(x.shape, w, gy, **kw), dtype)
    assert_close(grad.conv2d_weight(x, w.shape, gy, **kw), reference.conv2d_weight(x, w.shape, gy, **kw), dtype)
    assert_close(grad.conv2d_bias(gy), reference.conv2d_bias(gy), dtype)


@path_param
@dtype_param
@grid_param
def test_conv2d_paths(path, dtype, case, rng):
    x, w, kw = _conv_arrays(case, dtype, rng)
    with dispatch.force_path(path):
        _check_conv(x, w, kw, dtype, rng)


@path_param
@dtype_param
@grid_param
def test_conv_transpose2d_paths(path, dtype, case, rng):
    n, c, k, h, w_, ks, s, p, d, groups = case
    if isinstance(p, str) or isinstance(p, tuple) and isinstance(p[0], tuple):
        p = 1
    s, d = np.broadcast_to(s, 2), np.broadcast_to(d, 2)
    op = tuple(int(max(a, b)) - 1 for a, b in zip(s, d))
    x = rng.standard_normal((n, c, h, w_)).astype(dtype)
    wt = rng.standard_normal((c, k // groups) + ks).astype(dtype)
    kw = dict(stride=tuple(map(int, s)), padding=p, output_padding=op, groups=groups, dilation=tuple(map(int, d)))
    try:
        y = reference.conv_transpose2d(x, wt, **kw)
    except ValueError:
        kw["padding"] = 0
        y = reference.conv_transpose2d(x, wt, **kw)
    gy = rng.standard_normal(y.shape).astype(dtype)
    with dispatch.force_path(path):
        assert_close(fastconv.conv_transpose2d(x, wt, **kw), y, dtype)
        assert_close(grad.conv_transpose2d_input(x.shape, wt, gy, **kw), reference.conv_transpose2d_input(x.shape, wt, gy, **kw), dtype)
        assert_close(grad.conv_transpose2d_weight(x, wt.shape, gy, **kw), reference.conv_transpose2d_weight(x, wt.shape, gy, **kw), dtype)


@st.composite
def random_conv(draw, kernels=None, samples=(1, 3), group_counts=(1, 4), blocks_of_four=False, strides=(1, 3)):
    """(case for _conv_arrays, dtype, path, seed): random geometries; `kernels` a
    strategy for the kernel shape, `blocks_of_four` output channels per group a
    multiple of four."""
    groups = draw(st.integers(*group_counts))
    case = (
        draw(st.integers(*samples)), groups * draw(st.integers(1, 4)),
        groups * (4 * draw(st.integers(1, 2)) if blocks_of_four else draw(st.integers(1, 4))),
        draw(st.integers(1, 12)), draw(st.integers(1, 12)),
        draw(kernels) if kernels is not None else (draw(st.integers(1, 4)), draw(st.integers(1, 4))),
        (draw(st.integers(*strides)), draw(st.integers(*strides))),
        ((draw(st.integers(0, 3)), draw(st.integers(0, 3))), (draw(st.integers(0, 3)), draw(st.integers(0, 3)))),
        (draw(st.integers(1, 3)), draw(st.integers(1, 3))),
        groups,
    )
    return case, draw(st.sampled_from(DTYPES)), draw(st.sampled_from(dispatch.PATHS)), draw(st.integers(0, 2**16))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_conv())
def test_conv2d_random_against_reference(drawn):
    case, dtype, path, seed = drawn
    rng = np.random.default_rng(seed)
    x, w, kw = _conv_arrays(case, dtype, rng)
    try:
        reference.conv2d(x, w, **kw)
    except ValueError:
        with pytest.raises(ValueError):
            fastconv.conv2d(x, w, **kw)
        return
    with dispatch.force_path(path):
        _check_conv(x, w, kw, dtype, rng)


@path_param
def test_non_contiguous_inputs(path, rng):
    x = rng.standard_normal((4, 6, 10, 12))[::2, ::2, :, ::2]  # (2, 3, 10, 6), strided views
    w = np.asfortranarray(rng.standard_normal((4, 3, 3, 3)))
    kw = dict(stride=1, padding=1)
    gy = rng.standard_normal((2, 4, 10, 6))[:, :, :, ::-1]
    with dispatch.force_path(path):
        assert_close(fastconv.conv2d(x, w, **kw), reference.conv2d(np.ascontiguousarray(x), np.ascontiguousarray(w), **kw), np.float64)
        assert_close(grad.conv2d_input(x.shape, w, gy, **kw), reference.conv2d_input(x.shape, w, np.ascontiguousarray(gy), **kw), np.float64)
        assert_close(grad.conv2d_weight(x, w.shape, gy, **kw), reference.conv2d_weight(np.ascontiguousarray(x), w.shape, np.ascontiguousarray(gy), **kw), np.float64)


@path_param
def test_bitwise_identical_reruns(path, rng):
    x = rng.standard_normal((8, 16, 12, 12)).astype(np.float32)
    w = rng.standard_normal((32, 16, 3, 3)).astype(np.float32)
    gy = rng.standard_normal((8, 32, 12, 12)).astype(np.float32)
    with dispatch.force_path(path):
        runs = [
            (fastconv.conv2d(x, w, padding=1), grad.conv2d_input(x.shape, w, gy, padding=1), grad.conv2d_weight(x, w.shape, gy, padding=1))
            for _ in range(3)
        ]
    for run in runs[1:]:
        for a, b in zip(run, runs[0]):
            assert np.array_equal(a, b)


@path_param
def test_adjoint_identity(path, rng):
    # <conv(x, w), g> = <x, conv2d_input(g)> = <w, conv2d_weight(x, g)>
    x = rng.standard_normal((2, 6, 9, 8))
    w = rng.standard_normal((4, 3, 3, 2))
    kw = dict(stride=(2, 1), padding=((1, 0), (0, 2)), dilation=(1, 2), groups=2)
    with dispatch.force_path(path):
        y = fastconv.conv2d(x, w, **kw)
        g = rng.standard_normal(y.shape)
        lhs = np.vdot(y, g)
        assert np.isclose(lhs, np.vdot(x, grad.conv2d_input(x.shape, w, g, **kw)), rtol=1e-12)
        assert np.isclose(lhs, np.vdot(w, grad.conv2d_weight(x, w.shape, g, **kw)), rtol=1e-12)


def test_depthwise_is_grouped_conv(rng):
    x = rng.standard_normal((2, 4, 7, 7))
    w = rng.standard_normal((8, 1, 3, 3))
    per_channel = np.concatenate([fastconv.conv2d(x[:, c : c + 1], w[2 * c : 2 * c + 2], padding=1) for c in range(4)], axis=1)
    assert_close(fastconv.conv2d(x, w, padding=1, groups=4), per_channel, np.float64)


def test_transposed_conv_is_conv_input_gradient(rng):
    x = rng.standard_normal((2, 4, 5, 5))
    w = rng.standard_normal((4, 3, 3, 3))
    y = fastconv.conv_transpose2d(x, w, stride=2, padding=1, output_padding=1)
    assert_close(y, grad.conv2d_input(y.shape, w, x, stride=2, padding=1), np.float64)


def test_each_kernel_compiles_once_per_dtype(rng):
    from fastconv.kernels import conv as K
    from fastconv.kernels import direct as D

    for dtype in DTYPES:
        for path in dispatch.PATHS:
            x, w, kw = _conv_arrays(GRID[1], dtype, rng)
            with dispatch.force_path(path):
                _check_conv(x, w, kw, dtype, rng)
                _check_conv(x[:, :, ::-1], w, kw, dtype, rng)
    for kernel in (K.im2col, K.col2im, D.forward, D.input_grad, D.weight_grad):
        assert len(kernel.signatures) == 2, (kernel, kernel.signatures)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "kernel, padding, dilation, channels, out_channels, groups",
    [
        (3, 1, 1, 8, 8, 2),  # blocks of 4 output channels, 3-wide rows fused
        (5, 2, 1, 4, 8, 1),  # blocks of 4, other widths
        (3, (3, 0), 1, 8, 8, 2),  # padding beyond the kernel: input gradient by scatter
        (1, 1, 1, 4, 8, 1),
        (2, (1, 2), 2, 4, 4, 1),
        (3, 1, 2, 8, 16, 2),
        (3, 1, 1, 6, 6, 2),  # 3 channels per group: one at a time
        (3, 1, 1, 6, 2, 2),  # one output channel a group: nine-tap passes, its first set
        (5, 2, 1, 6, 3, 3),  # nine-tap passes of 25 taps, then passes of the rest
        (3, 1, 2, 4, 4, 4),  # depthwise, dilated
    ],
)
def test_direct_stride1_channel_blocks(kernel, padding, dilation, channels, out_channels, groups, dtype, rng):
    x = rng.standard_normal((2, channels, 7, 9)).astype(dtype)
    w = rng.standard_normal((out_channels, channels // groups, kernel, kernel)).astype(dtype)
    kw = dict(padding=padding, dilation=dilation, groups=groups)
    with dispatch.force_path("direct"):
        _check_conv(x, w, kw, dtype, rng)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(
    "n, h, w, kernel, stride, padding, dilation, groups",
    [
        (7, 11, 13, 3, 1, 1, 1, 1),  # runs of five samples, a short last run
        (75, 5, 6, 3, 2, 1, 1, 2),
        (75, 6, 6, 4, 2, 1, 1, 1),  # every phase with two taps
        (75, 9, 7, 3, (2, 3), (2, 0), (1, 2), 1),
        (13, 10, 12, 2, 1, 0, 3, 2),
    ],
)
def test_direct_runs_of_samples(n, h, w, kernel, stride, padding, dilation, groups, threads, dtype, rng):
    # Small planes and several channel blocks: the direct kernels take the batch in
    # runs of samples, their rows interleaved in each phase.
    x = rng.standard_normal((n, 12, h, w)).astype(dtype)
    wt = rng.standard_normal((16, 12 // groups, kernel, kernel)).astype(dtype)
    kw = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    with fastconv.num_threads(threads), dispatch.force_path("direct"):
        _check_conv(x, wt, kw, dtype, rng)
        _check_conv(x[:, :, :, ::-1], wt, kw, dtype, rng)


@dtype_param
@pytest.mark.parametrize("padding, dilation, groups, as_forward", [
    (1, 1, 1, True),  # 'same': the forward's planes are the gather's
    (((2, 2), (3, 3)), (2, 3), 2, True),
    (((2, 1), (3, 0)), (2, 3), 2, False),  # less than 'same': the adjoint computes more cells
    (0, 1, 1, False),  # valid: the adjoint would pad by 2
    (((3, 0), (1, 1)), 1, 3, False),  # top padding past the kernel: the adjoint's negative
    (2, 1, 6, True),  # depthwise, padded past 'same'
])
def test_stride_one_input_gradient_both_ways(dtype, padding, dilation, groups, as_forward, rng):
    from fastconv.kernels import direct

    from fastconv.params import conv2d_geometry

    x = rng.standard_normal((3, 6, 9, 8)).astype(dtype)
    w = rng.standard_normal((12, 6 // groups, 3, 3)).astype(dtype)
    kw = dict(stride=1, padding=padding, dilation=dilation, groups=groups)
    gy = rng.standard_normal(reference.conv2d(x, w, **kw).shape).astype(dtype)
    assert direct._as_forward(conv2d_geometry(x.shape, w.shape, **kw)) == as_forward
    with dispatch.force_path("direct"):
        assert_close(grad.conv2d_input(x.shape, w, gy, **kw), reference.conv2d_input(x.shape, w, gy, **kw), dtype)


@dtype_param
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("stride, multiplier", [(1, 1), (2, 1), (1, 2), ((2, 1), 3)])
def test_direct_several_blocks_per_iteration(stride, multiplier, threads, dtype, rng):
    # Small depthwise planes: an iteration takes a range of successive blocks, not
    # all ranges alike (33 blocks in 4 or 8 iterations).
    from fastconv.kernels import direct

    from fastconv.params import conv2d_geometry

    x = rng.standard_normal((3, 11, 5, 6)).astype(dtype)
    wt = rng.standard_normal((11 * multiplier, 1, 3, 3)).astype(dtype)
    kw = dict(stride=stride, padding=1, groups=11)
    plan = direct._Plan(conv2d_geometry(x.shape, wt.shape, **kw), threads)
    blocks = plan.runs * 11 * -(-multiplier // plan.block)
    assert 1 < plan.parts < blocks and blocks % plan.parts
    with fastconv.num_threads(threads), dispatch.force_path("direct"):
        _check_conv(x, wt, kw, dtype, rng)


@dtype_param
@pytest.mark.parametrize("threads", [1, 2])
def test_gemm_path_chunks_on_several_threads(threads, dtype, rng):
    # Large enough (kernels.gemm.MIN_FLOPS) for the chunks of samples to be dealt
    # to several threads, each packing and multiplying its own.
    from fastconv.kernels import gemm

    from fastconv.params import conv2d_geometry

    x = rng.standard_normal((16, 32, 16, 16)).astype(dtype)
    w = rng.standard_normal((64, 16, 3, 3)).astype(dtype)
    kw = dict(stride=(1, 2), padding=1, groups=2)
    assert conv2d_geometry(x.shape, w.shape, **kw).flops >= 2 * gemm.MIN_FLOPS
    with fastconv.num_threads(threads), dispatch.force_path("gemm"):
        _check_conv(x, w, kw, dtype, rng)
        gy = rng.standard_normal(reference.conv2d(x, w, **kw).shape).astype(dtype)
        first = grad.conv2d_weight(x, w.shape, gy, **kw)
        assert np.array_equal(grad.conv2d_weight(x, w.shape, gy, **kw), first)


@path_param
@pytest.mark.parametrize("kernel, groups", [((2, 2), 1), ((5, 5), 1), ((1, 2), 2), ((4, 4), 4), ((5, 5), 4), ((3, 3), 4)])
def test_forward_with_infinite_inputs(path, kernel, groups, rng):
    # Kernels whose tap count is not a multiple of three: the padding taps must not
    # multiply real cells (0 * inf would turn an infinite output into NaN).
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((2, 4, 9, 8))
    x[0, 1, 4, 3], x[1, 2, 0, 7], x[1, 3, 6, 0] = np.inf, -np.inf, np.inf
    w = rng.standard_normal((8, 4 // groups) + kernel)
    kw = dict(padding=1, groups=groups)
    expected = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w), **kw).numpy()
    assert np.isinf(expected).any()
    with dispatch.force_path(path):
        assert_close(fastconv.conv2d(x, w, **kw), expected, np.float64)


@path_param
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("padding, stride", [(0, 1), (0, 2), (2, 1), (((0, 1), (2, 0)), (2, 3))])
def test_weight_gradient_with_infinite_inputs(path, dtype, padding, stride, rng):
    # Input cells reached only by the wide layout's extra columns must not make NaN
    # where PyTorch's sums are infinite.
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((2, 3, 9, 8)).astype(dtype)
    x[0, 1, 4, 7], x[1, 0, 8, 0], x[1, 2, 0, 3] = np.inf, -np.inf, np.inf
    kw = dict(stride=stride, padding=padding)
    wshape = (4, 3, 3, 3)
    gy = rng.standard_normal(reference.conv2d(np.zeros_like(x), np.zeros(wshape, dtype), **kw).shape).astype(dtype)
    tpad = padding if isinstance(padding, int) else 0
    tx = torch.nn.functional.pad(torch.from_numpy(x), (2, 0, 0, 1)) if tpad != padding else torch.from_numpy(x)
    expected = torch.nn.grad.conv2d_weight(tx, wshape, torch.from_numpy(gy), stride=stride, padding=tpad).numpy()
    with dispatch.force_path(path):
        assert_close(grad.conv2d_weight(x, wshape, gy, **kw), expected, dtype)


@path_param
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel, stride, padding, dilation, groups", [
    ((3, 3), 1, 0, 1, 1), ((3, 3), 1, 1, 1, 1), ((4, 4), 2, 1, 1, 1), ((3, 3), 1, 2, 2, 1), ((3, 3), 2, 1, 2, 2), ((3, 3), 1, 1, 1, 1)])
def test_input_gradient_with_non_finite_weights(path, dtype, kernel, stride, padding, dilation, groups, rng):
    # The input gradient (and conv_transpose2d, the same computation) sums only the
    # taps that reach each input cell: an infinite or NaN weight must not meet the
    # zeros padding grad_output, which PyTorch never multiplies.
    torch = pytest.importorskip("torch")
    c = 4 if groups == 1 else 2 * groups
    x_shape = (2, c, 9, 8)
    w = rng.standard_normal((6, c // groups) + kernel).astype(dtype)
    w[0, 0, 0, 0], w[3, 1, -1, -1], w[5, 0, 1, 0] = np.inf, np.nan, -np.inf
    kw = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    gy = rng.standard_normal(reference.conv2d(np.zeros(x_shape, dtype), np.zeros_like(w), **kw).shape).astype(dtype)
    tw, tgy = torch.from_numpy(w), torch.from_numpy(gy)
    expected = torch.nn.grad.conv2d_input(x_shape, tw, tgy, **kw).numpy()
    assert np.isfinite(expected).any()
    with dispatch.force_path(path):
        assert_close(grad.conv2d_input(x_shape, w, gy, **kw), expected, dtype)
        with np.errstate(invalid="ignore"):
            assert_close(reference.conv2d_input(x_shape, w, gy, **kw), expected, dtype)
        # conv_transpose2d of gy with the same weight (IOHW) is this gradient
        out = fastconv.conv_transpose2d(gy, w, stride=stride, padding=padding, groups=groups, dilation=dilation)
        expected_t = torch.nn.functional.conv_transpose2d(tgy, tw, stride=stride, padding=padding, groups=groups, dilation=dilation).numpy()
        assert_close(out, expected_t, dtype)


@pytest.mark.parametrize("result_size, operand_size", [(5, 50), (50, 5)])
def test_nan_from_non_finite_needs_both(result_size, operand_size):
    # whichever array is read first: a NaN in the result and a non-finite operand
    for nan, non_finite in [(False, False), (True, False), (False, True), (True, True)]:
        result, operand = np.ones(result_size), np.ones(operand_size)
        result[-1], operand[-1] = (np.nan if nan else 1.0), (-np.inf if non_finite else 1.0)
        assert dispatch._nan_from_non_finite(result, operand) == (nan and non_finite)


def test_gemm_rule():
    from fastconv.params import conv2d_geometry

    def gemm(g, threads=2):
        return [dispatch._gemm_pays(g, c, threads) for c in dispatch.PASSES]

    strided = conv2d_geometry((8, 64, 32, 32), (128, 64, 3, 3), stride=2, padding=1)
    assert gemm(strided) == [True] * 3
    # 64 output channels: the weight gradient's product too thin for GEMM
    assert gemm(conv2d_geometry((8, 64, 32, 32), (64, 64, 5, 5), padding=2)) == [True, True, False]
    # batch 1 on small planes: the weight gradient's 64 positions too short a product
    assert gemm(conv2d_geometry((1, 256, 8, 8), (256, 256, 3, 3), padding=1)) == [True, True, False]
    depthwise = conv2d_geometry((8, 64, 32, 32), (64, 1, 3, 3), stride=2, padding=1, groups=64)
    grouped = conv2d_geometry((8, 256, 32, 32), (256, 64, 3, 3), padding=1, groups=4)
    small = conv2d_geometry((8, 32, 32, 32), (64, 32, 4, 4), stride=4)  # 32,768 weights, 512 positions
    for g in (depthwise, grouped, small):
        assert gemm(g) == [False] * 3, g
    # the same weights over 8192 positions
    assert gemm(conv2d_geometry((32, 32, 32, 32), (64, 32, 4, 4), stride=2, padding=1)) == [True, True, False]
    # past gemm.MOST_THREADS threads the other paths scale further
    assert gemm(strided, 16) == [False] * 3


def test_conv_path_order(monkeypatch):
    from fastconv.params import conv2d_geometry

    def paths(g, threads=2):
        return [dispatch.conv_path(g, c, threads) for c in dispatch.PASSES]

    # 1x1: the blocked sums where the channels fill them, GEMM for the rest and
    # for a forward whose outputs fill its blocks of cells poorly (16 cells of a
    # batch-1 4x4 plane in a block of 32 in float32; in float64 one of 16)
    assert paths(conv2d_geometry((8, 64, 32, 32), (128, 64, 1, 1))) == ["blocked"] * 3
    assert paths(conv2d_geometry((8, 8, 32, 32), (8, 8, 1, 1))) == ["blocked", "blocked", "gemm"]
    assert paths(conv2d_geometry((8, 64, 32, 32), (1, 64, 1, 1)))[0] == "gemm"
    late = conv2d_geometry((1, 1024, 4, 4), (1024, 1024, 1, 1))
    assert paths(late) == ["gemm", "blocked", "blocked"]
    assert [dispatch.conv_path(late, c, 2, np.float64) for c in dispatch.PASSES] == ["blocked"] * 3
    assert paths(conv2d_geometry((1, 1024, 7, 7), (1024, 1024, 1, 1))) == ["blocked"] * 3
    # GEMM pays for every pass, uneven phases (4, 2, 2 and 1 taps): blocked still
    strided = conv2d_geometry((8, 64, 32, 32), (128, 64, 3, 3), stride=2, padding=1)
    assert paths(strided) == ["blocked"] * 3
    assert paths(strided, 16) == ["blocked"] * 3
    # four taps in every phase
    assert paths(conv2d_geometry((64, 64, 16, 16), (128, 64, 4, 4), stride=2, padding=1)) == ["blocked"] * 3
    # GEMM pays for some passes only (64 outputs): the layer blocked, not mixed
    assert paths(conv2d_geometry((32, 32, 32, 32), (64, 32, 4, 4), stride=2, padding=1)) == ["blocked"] * 3
    # Winograd first for undilated layers of two samples or more whose transformed
    # weights take at most 2 MiB; elsewhere only where the blocked sums do not apply
    assert paths(conv2d_geometry((8, 64, 32, 32), (64, 64, 3, 3), padding=1)) == ["winograd"] * 3
    assert [dispatch.conv_path(conv2d_geometry((8, 128, 28, 28), (128, 128, 3, 3), padding=1), c, 2, np.float64) for c in dispatch.PASSES] == ["winograd"] * 3
    assert paths(conv2d_geometry((8, 256, 14, 14), (256, 256, 3, 3), padding=1)) == ["blocked"] * 3
    assert [dispatch.conv_path(conv2d_geometry((8, 128, 28, 28), (256, 128, 3, 3), padding=1), c, 2, np.float64) for c in dispatch.PASSES] == ["blocked"] * 3
    assert paths(conv2d_geometry((1, 64, 56, 56), (64, 64, 3, 3), padding=1)) == ["blocked"] * 3
    assert paths(conv2d_geometry((8, 64, 32, 32), (64, 64, 3, 3), padding=2, dilation=2)) == ["blocked"] * 3
    monkeypatch.setattr(dispatch, "BLOCKED_FILL", 10**6)
    monkeypatch.setattr(dispatch, "BLOCKED_GRADIENT_CHANNELS", 10**6)
    assert paths(conv2d_geometry((8, 64, 32, 32), (64, 64, 3, 3), padding=1)) == ["winograd"] * 3
    monkeypatch.undo()
    # rows read in place: the forward and input gradient of first layers of 1 and 3
    # channels and of 2 inputs a group over shared rows (3x3 to 7x7 at stride 1),
    # every pass of depthwise layers, the weight gradient of a first layer of one
    # channel where the blocked dot products do not pay (9 terms); not rows of 8
    # cells (a 5x5 valid layer of 12x12 planes)
    assert paths(conv2d_geometry((8, 3, 32, 32), (32, 3, 3, 3), padding=1)) == ["rows", "rows", "blocked"]
    assert paths(conv2d_geometry((8, 1, 28, 28), (6, 1, 5, 5))) == ["rows", "rows", "blocked"]
    assert paths(conv2d_geometry((8, 1, 28, 28), (32, 1, 3, 3))) == ["rows", "rows", "rows"]
    assert paths(conv2d_geometry((8, 1, 12, 12), (6, 1, 5, 5))) == ["blocked", "rows", "blocked"]
    assert paths(conv2d_geometry((8, 64, 32, 32), (64, 1, 3, 3), padding=1, groups=64)) == ["rows"] * 3
    # and the weight gradient of up to 4 channels a group each way over rows of one
    # chunk (32 cells in float32; in float64 two chunks of 16, blocked)
    grouped = conv2d_geometry((8, 64, 32, 32), (128, 2, 3, 3), padding=1, groups=32)
    assert paths(grouped) == ["rows"] * 3
    assert [dispatch.conv_path(grouped, c, 2, np.float64) for c in dispatch.PASSES] == ["rows", "rows", "blocked"]
    assert paths(conv2d_geometry((8, 64, 32, 32), (128, 2, 3, 3), stride=2, padding=1, groups=32))[2] == "blocked"
    # output layers: every pass by rows for one output channel, the weight
    # gradient by the blocked dot products from three (and at stride 2, where
    # rows do not apply, every pass blocked)
    assert paths(conv2d_geometry((8, 64, 32, 32), (1, 64, 3, 3), padding=1)) == ["rows"] * 3
    assert paths(conv2d_geometry((8, 32, 32, 32), (3, 32, 3, 3), padding=1)) == ["rows", "rows", "blocked"]
    assert paths(conv2d_geometry((8, 32, 32, 32), (3, 32, 3, 3), stride=2, padding=1)) == ["blocked"] * 3
    # rows at stride 1 and 2 along the width; the input gradient by rows at stride
    # 2 along the width or 1 both ways (a depthwise layer at stride 2 down the
    # height only takes the direct loops), at stride 3 none
    assert paths(conv2d_geometry((8, 64, 32, 32), (64, 1, 3, 3), stride=2, padding=1, groups=64)) == ["rows"] * 3
    assert paths(conv2d_geometry((8, 64, 32, 32), (64, 1, 3, 3), stride=(2, 1), padding=1, groups=64)) == ["rows", "direct", "rows"]
    assert paths(conv2d_geometry((8, 64, 32, 32), (64, 1, 3, 3), stride=3, padding=1, groups=64)) == ["direct"] * 3
    # blocks of 4 and 8 that the channels fill; the weight gradient's dot products
    # from 16 terms and 2 output channels
    assert paths(conv2d_geometry((8, 64, 16, 16), (64, 4, 3, 3), padding=1, groups=16)) == ["blocked"] * 3
    assert paths(conv2d_geometry((8, 64, 32, 32), (64, 4, 3, 3), padding=1, groups=16)) == ["blocked", "blocked", "rows"]
    assert paths(conv2d_geometry((8, 64, 32, 32), (64, 8, 3, 3), padding=1, groups=8)) == ["blocked"] * 3
    assert paths(conv2d_geometry((8, 16, 24, 24), (24, 16, 5, 5), padding=2)) == ["blocked"] * 3
    # the rows' blocks of 3 fuller than blocks of 8 (12 input channels, 9 both sides)
    # over rows that fill their chunks: in float64 from 12 cells (lenet_c2's input
    # gradient), in float32 from 24
    assert paths(conv2d_geometry((8, 12, 24, 24), (24, 12, 5, 5), padding=2)) == ["blocked", "rows", "blocked"]
    assert paths(conv2d_geometry((8, 9, 24, 24), (9, 9, 5, 5), padding=2)) == ["rows", "rows", "blocked"]
    lenet_c2 = conv2d_geometry((8, 6, 12, 12), (16, 6, 5, 5))
    assert paths(lenet_c2) == ["blocked"] * 3
    assert [dispatch.conv_path(lenet_c2, c, 2, np.float64) for c in dispatch.PASSES] == ["blocked", "rows", "blocked"]
    # channels that fill blocks of 8 or 3 to less than 3/4 (10 and 2): blocked sums
    # rather than the direct loops; at stride 2 the input gradient by rows; the
    # weight gradient of one output, or two of two inputs, by rows
    assert paths(conv2d_geometry((8, 5, 32, 32), (10, 5, 3, 3), stride=2, padding=1)) == ["blocked", "rows", "blocked"]
    assert paths(conv2d_geometry((8, 64, 32, 32), (64, 2, 3, 3), stride=2, padding=1, groups=32)) == ["blocked", "rows", "rows"]
    # depthwise layers of rows of at most a quarter of a row chunk: the forward and
    # stride-1 input gradient blocked (7 cells in float32, not in float64)
    small = conv2d_geometry((8, 512, 7, 7), (512, 1, 3, 3), padding=1, groups=512)
    assert paths(small) == ["blocked", "blocked", "rows"]
    assert [dispatch.conv_path(small, c, 2, np.float64) for c in dispatch.PASSES] == ["rows"] * 3
    assert paths(conv2d_geometry((8, 512, 14, 14), (512, 1, 3, 3), padding=1, groups=512)) == ["rows"] * 3
    # small layers (one sample of 32x32 by up to 24 channels): every pass by rows,
    # the weight gradient only at stride 1 undilated; not from 32 channels or over
    # 2048 cells
    assert paths(conv2d_geometry((1, 16, 32, 32), (16, 16, 3, 3), padding=1)) == ["rows"] * 3
    assert paths(conv2d_geometry((1, 16, 32, 32), (24, 16, 5, 5), padding=2)) == ["rows"] * 3
    assert paths(conv2d_geometry((1, 16, 32, 32), (16, 16, 3, 3), dilation=2, padding=2)) == ["rows", "rows", "blocked"]
    assert paths(conv2d_geometry((1, 32, 32, 32), (32, 32, 3, 3), padding=1)) == ["blocked"] * 3
    assert paths(conv2d_geometry((8, 16, 16, 16), (16, 16, 3, 3), padding=1)) == ["blocked"] * 3
    # and the strided input gradient over as many cells where the input channels
    # times the cells of the rows' chunks come to at most 512 (28 cells take one
    # chunk of 32 in float32, two of 16 in float64; 14 one in either)
    def input_path(shape, weight, dtype):
        return dispatch.conv_path(conv2d_geometry(shape, weight, stride=2, padding=1), "input", 2, dtype)

    assert paths(conv2d_geometry((1, 16, 28, 28), (32, 16, 3, 3), stride=2, padding=1)) == ["blocked", "rows", "blocked"]
    assert input_path((1, 16, 28, 28), (32, 16, 3, 3), np.float64) == "rows"
    assert input_path((1, 24, 28, 28), (48, 24, 3, 3), np.float32) == "blocked"
    assert input_path((1, 32, 14, 14), (64, 32, 3, 3), np.float32) == "blocked"
    assert input_path((1, 32, 14, 14), (64, 32, 3, 3), np.float64) == "rows"
    assert input_path((1, 24, 28, 28), (48, 24, 3, 3), np.float64) == "blocked"
    assert input_path((4, 8, 16, 16), (16, 8, 3, 3), np.float32) == "rows"
    assert input_path((5, 8, 16, 16), (16, 8, 3, 3), np.float32) == "blocked"
    assert paths(conv2d_geometry((1, 64, 28, 28), (128, 64, 3, 3), stride=2, padding=1)) == ["blocked"] * 3
    # dilated, rows shared within each class of output rows (every second one)
    assert paths(conv2d_geometry((8, 64, 32, 32), (64, 2, 3, 3), dilation=2, padding=2, groups=32)) == ["rows"] * 3
    assert paths(conv2d_geometry((8, 64, 16, 16), (1, 64, 3, 3), stride=2, padding=1))[2] == "rows"
    assert paths(conv2d_geometry((8, 32, 8, 8), (2, 32, 3, 3), padding=1))[2] == "blocked"


@given(st.integers(1, 60), st.integers(0, 60))
def test_tap_passes_are_the_fewest_and_even(count, first):
    from fastconv.kernels import direct

    assume(first <= count)
    passes = direct._tap_passes(count, first)
    sizes = passes[:, 1] - passes[:, 0]
    assert passes[0, 0] == first if count > first else passes.shape[0] == 0
    assert (passes[1:, 0] == passes[:-1, 1]).all() and (count == first or passes[-1, 1] == count)
    assert len(passes) == -(-(count - first) // direct.MOST_TAPS)
    assert (sizes >= 1).all() and (sizes <= direct.MOST_TAPS).all() and (len(sizes) == 0 or np.ptp(sizes) <= 1)


@dtype_param
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(
    "n, h, w, kernel, stride, padding, dilation, forward_passes, gather_pairs",
    [
        (5, 11, 12, (4, 4), 2, 1, 1, [4, 4, 4, 4], {4}),
        (5, 11, 12, (2, 2), 1, 0, 1, [4], {4}),
        (5, 11, 12, (2, 4), (1, 2), (1, 2), (2, 1), [4, 4], {4}),
        (5, 11, 12, (4, 4), 1, "same", 1, [4, 4, 4, 4], None),  # the input gradient runs the forward's loops
        (5, 11, 12, (4, 4), 2, ((0, 3), (2, 1)), 1, [4, 4, 4, 4], {4}),
        (9, 1, 2, (4, 4), 2, ((3, 2), (1, 3)), 1, [4, 4, 4, 4], {4}),  # a 1x2 plane: phases without input rows
        (5, 11, 12, (3, 3), 1, 1, 1, [4, 5], None),
        (5, 11, 12, (3, 3), 1, 0, 1, [4, 5], {5, 4}),  # unpadded: the gather
        (5, 11, 12, (3, 3), 2, 1, 1, [4, 5], {5, 4, 2}),  # phases of 4, 2, 2, 1 taps: five channels per pass
        (4, 13, 12, (5, 5), 1, 0, 1, [5] * 5, {5}),
        (4, 13, 12, (5, 5), 2, 2, 1, [5] * 5, {5, 4}),  # phases of 9, 6, 6, 4: five channels per pass
        (3, 15, 14, (7, 7), 2, 3, 1, [4] + [5] * 9, {5, 4}),
        (5, 11, 12, (1, 2), 1, 0, 1, [2], {5, 4}),
        (5, 11, 12, (2, 3), (2, 1), 1, (1, 2), [3, 3], {5, 3}),
    ],
)
def test_passes_of_up_to_five_taps(n, h, w, kernel, stride, padding, dilation, forward_passes, gather_pairs, threads, dtype, rng):
    # Taps (and the input gradient's (channel, tap) pairs) go up to five at a time
    # in the fewest passes, in blocks of four channels; the transposed convolution
    # of a 4x4 stride-2 kernel runs all three passes in fours.
    from fastconv.kernels import direct

    from fastconv.params import conv2d_geometry

    x = rng.standard_normal((n, 8, h, w)).astype(dtype)
    wt = rng.standard_normal((12, 8) + kernel).astype(dtype)
    kw = dict(stride=stride, padding=padding, dilation=dilation)
    g = conv2d_geometry(x.shape, wt.shape, **kw)
    plan = direct._Plan(g, threads)
    assert plan.block == direct.BLOCK and plan.nines == 0
    assert list(plan.passes[:, 1] - plan.passes[:, 0]) == forward_passes
    assert set(plan.weight_passes[:, 1] - plan.weight_passes[:, 0]) <= {3, 4, 5}
    if gather_pairs is None:
        assert direct._as_forward(g)
    else:
        assert not direct._as_forward(g) and set(direct._gather_plan(g, threads).chunks[:, 1]) == gather_pairs
    with fastconv.num_threads(threads), dispatch.force_path("direct"):
        _check_conv(x, wt, kw, dtype, rng)
        if stride == 2:
            xt = rng.standard_normal((n, 8, 6, 5)).astype(dtype)
            ct = dict(stride=stride, padding=1)
            y = reference.conv_transpose2d(xt, wt.transpose(1, 0, 2, 3), **ct)
            assert_close(fastconv.conv_transpose2d(xt, wt.transpose(1, 0, 2, 3), **ct), y, dtype)


@dtype_param
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("kernel, channels", [((3, 3), 1), ((5, 5), 1), ((3, 3), 5), ((4, 4), 6), ((1, 3), 2)])
def test_blocks_of_fewer_than_four_channels(kernel, channels, threads, dtype, rng):
    # Output channels per group that are not a multiple of four leave blocks of one
    # to three channels (add_rows, row by row); one channel per group (depthwise)
    # takes nine taps per pass in the forward, the rest up to five.
    from fastconv.kernels import direct

    from fastconv.params import conv2d_geometry

    groups = 3
    x = rng.standard_normal((4, 2 * groups, 9, 10)).astype(dtype)
    wt = rng.standard_normal((channels * groups, 2) + kernel).astype(dtype)
    kw = dict(padding=1, groups=groups)
    plan = direct._Plan(conv2d_geometry(x.shape, wt.shape, **kw), threads)
    assert plan.nines == (kernel[0] * kernel[1] // 9 if channels == 1 else 0)
    with fastconv.num_threads(threads), dispatch.force_path("direct"):
        _check_conv(x, wt, kw, dtype, rng)


@dtype_param
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("groups, stride", [(2, 1), (4, 2), (1, 1)])
def test_weight_gradient_splitting_its_own_planes(groups, stride, threads, dtype, rng):
    # Large planes and one block per group: each weight-gradient iteration splits
    # the input planes it reads, rather than a pass over all of them before.
    from fastconv.kernels import direct

    from fastconv.params import conv2d_geometry

    x = rng.standard_normal((4, 4 * groups, 32 * stride + 1, 32 * stride + 3)).astype(dtype)
    w = rng.standard_normal((8 * groups, 4, 3, 3)).astype(dtype)
    kw = dict(stride=stride, padding=1, groups=groups)
    plan, block = direct._weight_plan(conv2d_geometry(x.shape, w.shape, **kw), threads)
    assert block == 8 and not plan.split
    with fastconv.num_threads(threads), dispatch.force_path("direct"):
        _check_conv(x, w, kw, dtype, rng)


@dtype_param
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("kernel", [2, 4])
def test_kernel_at_its_own_stride(kernel, threads, dtype, rng):
    # Non-overlapping windows (patches): every phase has one tap, and the gather's
    # accumulator rows (16 phases of 960 cells at 4x4) would lie a multiple of
    # 4 KiB apart; their pitch is one vector loop longer.
    from fastconv.kernels import direct

    from fastconv.params import conv2d_geometry

    x = rng.standard_normal((16, 8, 32, 32)).astype(dtype)
    w = rng.standard_normal((8, 8, kernel, kernel)).astype(dtype)
    kw = dict(stride=kernel)
    g = conv2d_geometry(x.shape, w.shape, **kw)
    hq, wq = direct.phase_shape(g)
    runs_of = direct._blocking(g.n, g.groups, g.c_in, hq * wq, threads)[3]
    width = g.sh * g.sw * direct._rounded(runs_of * hq * wq)
    assert direct._unaliased(width, x.itemsize) * x.itemsize % 4096 != 0
    with fastconv.num_threads(threads), dispatch.force_path("direct"):
        _check_conv(x, w, kw, dtype, rng)
        xt = x[:, :, :7, :9]
        assert_close(fastconv.conv_transpose2d(xt, w, **kw), reference.conv_transpose2d(xt, w, **kw), dtype)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    random_conv(
        kernels=st.tuples(st.integers(1, 7), st.integers(1, 7)),
        samples=(4, 9),
        group_counts=(1, 2),
        blocks_of_four=True,
        strides=(1, 4),
    ),
    st.integers(1, 2),
)
def test_passes_of_up_to_five_taps_random_against_reference(drawn, threads):
    # Random geometries of the direct kernels' passes of up to five taps (blocks of
    # four channels; the gather's chunks of up to five pairs, of one to five
    # channels, and row spans where the phases allow)
    from fastconv.kernels import direct

    from fastconv.params import conv2d_geometry

    case, dtype, _, seed = drawn
    rng = np.random.default_rng(seed)
    x, w, kw = _conv_arrays(case, dtype, rng)
    try:
        g = conv2d_geometry(x.shape, w.shape, **kw)
    except ValueError:
        assume(False)  # the kernel does not fit the padded input
    assert direct._Plan(g, threads).block == direct.BLOCK
    with fastconv.num_threads(threads), dispatch.force_path("direct"):
        _check_conv(x, w, kw, dtype, rng)


@numba.njit
def _split_pairs(src, src_at, count, dst, even_at, odd_at):
    phases.split_pairs(src, src_at, count, dst, even_at, odd_at)


@dtype_param
@settings(max_examples=40, deadline=None)
@given(st.data())
def test_split_pairs_against_numpy(dtype, data):
    count, src_at, gap = data.draw(st.integers(0, 70)), data.draw(st.integers(0, 9)), data.draw(st.integers(0, 9))
    evens, odds = (count + 1) // 2, count // 2
    # the two runs in either order, gap cells apart; dst ends at the last cell written
    if data.draw(st.booleans()):
        even_at, odd_at = gap, gap + evens + gap
    else:
        odd_at, even_at = gap, gap + odds + gap
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    src = np.concatenate([np.full(src_at, np.nan), rng.standard_normal(count)]).astype(dtype)
    dst = np.full(max(even_at + evens, odd_at + odds), -7.0, dtype=dtype)
    expected = dst.copy()
    expected[even_at : even_at + evens] = src[src_at::2]
    expected[odd_at : odd_at + odds] = src[src_at + 1 :: 2]
    _split_pairs(src, src_at, count, dst, even_at, odd_at)
    assert np.array_equal(dst, expected)


def test_split_pairs_refuses_arrays_that_are_not_contiguous():
    # its cells are addressed from the data pointer: a strided view is a typing error
    src, dst = np.arange(20.0), np.zeros(20)
    with pytest.raises(numba.core.errors.TypingError):
        _split_pairs(src[::2], 0, 10, dst, 0, 5)
    with pytest.raises(numba.core.errors.TypingError):
        _split_pairs(src, 0, 10, dst[::2], 0, 5)
