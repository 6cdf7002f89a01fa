"""Which kernel runs a convolution: one small decision, made per shape.

conv2d, conv_transpose2d and their gradients all reduce to three computations on
a convolution geometry (forward, input gradient, weight gradient); conv_transpose2d
is the input gradient of the convolution it is the adjoint of. Each is run by the
GEMM family (im2col + BLAS, fastconv.kernels.conv), the direct family (loops,
fastconv.kernels.direct), Winograd's F(2x2, 3x3) (fastconv.kernels.winograd), the
register-blocked sums (fastconv.kernels.blocked) or the rows read in place
(fastconv.kernels.rows).
"""

from __future__ import annotations

import contextlib

import numpy as np

from fastconv import reference
from fastconv.kernels import blocked as B
from fastconv.kernels import conv as K
from fastconv.kernels import direct as D
from fastconv.kernels import gemm
from fastconv.kernels import rows as R
from fastconv.kernels import winograd as W
from fastconv.params import ConvGeometry
from fastconv.threads import get_num_threads

PATHS = ("gemm", "direct", "winograd", "blocked", "rows")
_forced: str | None = None
# Where Winograd's products beat the direct loops (python -m fastconv bench, and
# per-pass timings of both paths on 16 shapes): channels in and out, outputs per
# dilation phase along each side, and forward flops. Below them its transforms and
# dropped tiles cost more than the multiplications it saves.
WINOGRAD_CHANNELS = 48
WINOGRAD_SIDE = 12
WINOGRAD_FLOPS = 1 << 27


def _winograd_pays(g: ConvGeometry) -> bool:
    return (
        min(g.c_in, g.c_out) >= WINOGRAD_CHANNELS
        and min(-(-g.oh // g.dh), -(-g.ow // g.dw)) >= WINOGRAD_SIDE
        and g.flops >= WINOGRAD_FLOPS
    )


# Where Winograd runs every pass before the blocked sums: undilated layers of two
# samples or more whose transformed weights (16 K C values) take at most
# WINOGRAD_WEIGHT_BYTES, which every unit of tiles reads again (per-pass timings of
# 10 stride-1 3x3 layers of 48-512 channels, 12x12 to 56x56 planes, batch 1-32, on
# 2 cores of an AMD EPYC): float32 from 5% slower (128 channels of 16x16) to 22%
# faster (res3x3 11.8 -> 9.2 ms forward, 11.5 -> 9.6 weight gradient), float64
# 5-27% faster; 256 channels of 14x14 as fast in the forward, 35-50% slower in
# the weight gradient (4 MB of float32 weights), 512 2-4x slower;
# one sample of 64 channels of 56x56 7-35% slower in the forward and input
# gradient; dilated layers 3-17% slower in float32 (their outputs go to every
# d-th column, a cell at a time).
WINOGRAD_WEIGHT_BYTES = 2 << 20


def _winograd_first(g: ConvGeometry, dtype) -> bool:
    weight_bytes = 16 * g.c_in * g.c_out * np.dtype(dtype).itemsize
    undilated = g.dh == g.dw == 1
    return W.applicable(g) and _winograd_pays(g) and undilated and g.n > 1 and weight_bytes <= WINOGRAD_WEIGHT_BYTES


PASSES = ("forward", "input", "weight")
# Where im2col + BLAS beats the direct loops (per-pass timings of both paths on 26
# shapes, both dtypes, on 2 cores of an AVX-512 Xeon whose sgemm runs at 178 GFLOP/s
# a core against the direct loops' 65-75): convolutions of one group with at least
# GEMM_DEPTH inputs per output (C * kh * kw) and GEMM_OUTPUTS output channels, and
# either GEMM_WEIGHTS weights or GEMM_POSITIONS output positions over a batch of two
# or more.
# Below them the packing and the hand-off to the GEMM threads cost more than BLAS
# saves (a 4x4 stride-4 patch layer of 32 -> 64 channels over 512 positions ran
# 10-45% slower by GEMM; dcgan_up's 4x4 stride-2 layer of the same weight count
# over 8192 positions, 18% faster). The weight gradient's product has the output
# channels for rows: it needs GEMM_WEIGHT_ROWS of them and GEMM_POSITIONS positions
# (5x5 and 7x7 kernels with 64 outputs ran 1-30% slower by GEMM, 96 ran 17-42%
# faster; batch-1 layers of 64-196 positions 5-20% slower).
GEMM_DEPTH = 512
GEMM_OUTPUTS = 64
GEMM_WEIGHTS = 1 << 16
GEMM_POSITIONS = 1024
GEMM_WEIGHT_ROWS = 96


def _gemm_pays(g: ConvGeometry, computation: str, threads: int) -> bool:
    depth, positions = g.c_in * g.kh * g.kw, g.n * g.oh * g.ow
    if threads > gemm.MOST_THREADS or g.groups > 1 or depth < GEMM_DEPTH or g.c_out < GEMM_OUTPUTS:
        return False
    if computation == "weight":
        return g.c_out >= GEMM_WEIGHT_ROWS and positions >= GEMM_POSITIONS
    # one sample is packed on one thread: a batch-1 64-channel 3x3 layer over 1024
    # positions ran 30-65% slower by GEMM
    return g.c_out * depth >= GEMM_WEIGHTS or (positions >= GEMM_POSITIONS and g.n > 1)


# Where the register-blocked sums (fastconv.kernels.blocked) beat the other paths
# (per-pass timings of every path on 32 shapes, both dtypes, 2 cores of an AVX-512
# Xeon, and on 40 more of an AMD EPYC): the sums over a kernel of more than one
# tap, computed for blocks of channels (8, or 6 with AVX2; 4 for up to 4 channels)
# that the channels per group fill to BLOCKED_FILL or more (the forward's output
# channels, the input gradient's input channels: 2-4, 5-8, 9-16, ...; 3 channels
# in blocks of 8 ran 5-60% slower than the direct loops, in blocks of 4 10-30%
# faster, 6 and 8 channels 15-35% faster, 5, 9 and 10 in blocks of 8 0-30%, 2 in
# blocks of 3 15-35%; one channel in blocks of 4 10-55% slower), whatever the
# terms a sum (first layers of 1 to 3 channels by 3x3 and 5x5, 9 to 27 terms, and
# stride-2 layers of 4 to 16 channels: forward 10-45% faster than the direct loops,
# input gradient 5-30%). The weight gradient's dot products, in
# blocks of 4 output channels by 6 terms, pay from BLOCKED_WEIGHT_ROWS terms to
# BLOCKED_GRADIENT_CHANNELS outputs or more (first layers of 1-3 channels by 5x5
# and 3x3, grouped layers of 2-8 channels a group, 1-30% faster than the direct
# loops; output layers of 3 channels from 32, strided and dilated too, 25-60%
# faster, of 2 from 16 and 32 30-40%; one channel by 3x3, 9 terms, 25% slower;
# depthwise, one output channel a group, 5-30% slower). GEMM runs on fastconv's
# GEMM threads (up to gemm.MOST_THREADS), and a layer that goes from Numba's
# parallel loops to them pays for the OpenMP workers still spinning (PyTorch's
# libgomp, when PyTorch is imported first). So the blocked sums take every pass
# they apply to that Winograd does not take first (_winograd_first), even at
# stride 2, where the input gradient's
# phases take uneven taps (a 3x3 kernel: 4, 2, 2 and 1, each padded to whole
# blocks): forward + backward of res3x3_s2 19.7 ms all blocked, 23.2 all by GEMM,
# 21.7 with the weight gradient alone blocked; of 128-channel layers of 28x28 and
# 56x56 planes 31.2 and 27.7 ms, 34.7 and 30.7 by GEMM; in float64 5-12% faster
# blocked.
BLOCKED_FILL = 0.55
BLOCKED_WEIGHT_ROWS = 16
BLOCKED_GRADIENT_CHANNELS = 2


def _block_fill(channels: int) -> float:
    """The share of the blocked sums' blocks that `channels` channels fill."""
    return B.filled(channels, B.block_shape(np.float32, channels)[0])


def _fills_blocks(channels: int) -> bool:
    return _block_fill(channels) >= BLOCKED_FILL


def _channels_fill(g: ConvGeometry, computation: str) -> bool:
    """Whether the channels a group fill the blocked sums' blocks (BLOCKED_FILL) or
    rows of dot products (BLOCKED_WEIGHT_ROWS, BLOCKED_GRADIENT_CHANNELS)."""
    taps, cg, kg = g.kh * g.kw, g.c_in // g.groups, g.c_out // g.groups
    if computation == "forward":
        return _fills_blocks(kg)
    if computation == "input":
        return _fills_blocks(cg)
    return cg * taps >= BLOCKED_WEIGHT_ROWS and kg >= BLOCKED_GRADIENT_CHANNELS


def _blocked_pays(g: ConvGeometry, computation: str) -> bool:
    return g.kh * g.kw > 1 and _channels_fill(g, computation)


# Which path runs a 1x1 convolution of several channels a group (a plain matrix
# product; the direct kernels would pad the one tap to three): the blocked sums where
# they pay (_blocked_pays' rules for the channels), else GEMM. Per-pass timings of
# both paths on 24 shapes (1x1 layers of 3-2048 channels, planes of 4x4 to 56x56,
# batch 1-32, strides 1 and 2, groups 1 and 4, both dtypes, 2 cores of an AMD EPYC):
# the blocked sums 1.2-2.4x faster in float32 (pw 256 channels of 14x14 planes:
# forward 4.2 -> 2.5 ms, weight gradient 5.6 -> 2.3), 1-2x in float64, as fast on
# the catalogue's pointwise, where OpenBLAS's products are large; slower only in the
# forward where the outputs fill less than ONE_TAP_CELL_FILL of the blocks of cells
# (batch-1 layers of 1024 channels: of 4x4 planes in float32, 16 cells in a block
# of 32, 0.95 against 0.51 ms, as fast in float64's block of 16; of 7x7 in 2 blocks
# of 48, 1.52 against 1.25 ms, as fast in 2 of B.TALL_BLOCK's 32).
ONE_TAP_CELL_FILL = 0.6


def _one_tap_path(g: ConvGeometry, computation: str, dtype) -> str:
    cells_fill = computation != "forward" or B.forward_cell_fill(g, dtype) >= ONE_TAP_CELL_FILL
    return "blocked" if _channels_fill(g, computation) and cells_fill else "gemm"


# Where the rows read in place (fastconv.kernels.rows) beat the other paths (per-pass
# timings of every path, float32 and float64, on 2 cores of an AVX-512 Xeon and of
# an AMD EPYC):
# - over shared rows (R.shares_rows) that fill ROWS_FILL of the dtype's row chunks
#   (R.row_chunk: 32 cells of float32, 16 of float64) or more: the forward and
#   input gradient of layers of few input or output channels a group (at most
#   ROWS_CHANNELS): first layers of 1 and 3 channels by 3x3 to 7x7, forward as fast
#   as the blocked sums to 25% faster, input gradient 15-50% (which the blocked
#   sums computed in blocks of 3 rows, from a split copy of every output channel's
#   gradient); layers of 1 to 3 outputs 30-45%. Where both channel counts are
#   larger, the forward and input gradient where the channels they compute (the
#   forward's outputs, the input gradient's inputs) fill the rows' blocks of
#   R.OUTPUTS better than the blocked sums' blocks: 5, 6, 9 and 10 channels 10-45%
#   faster (lenet_c2's input gradient in float64, 6 channels, 0.40 ms against
#   0.57), 12 channels 30-50%; 8 to 64 in the blocked sums' full blocks of 8 as
#   fast or faster;
# - the weight gradient of up to ROWS_WEIGHT_CHANNELS outputs a group over shared
#   rows (one or two outputs from 16 to 64 channels, 5-25% faster than the blocked
#   dot products, 2x than the direct loops; of 3 the dot products are 15% faster),
#   and of one output (the direct loops' case), or two of few inputs (2 a group),
#   at any stride and dilation: 10-45% faster (two outputs of 16 and 32 channels
#   on small, strided or dilated planes: the dot products as fast or faster);
#   and at stride 1 undilated, of up to ROWS_GROUP_CHANNELS channels a group each
#   way (ResNeXt's groups) over rows that fill ROWS_FILL of one chunk: 2 to 4
#   channels a group of 28x28 and 32x32 planes 1.2-1.8x faster in float32, of
#   14x14 1.2-1.35x in float64 (14 cells of float32's 32 ran 1.1-1.15x slower by
#   rows; rows of two chunks or more 1.1x faster to 1.5x slower: 56 cells in
#   float32, 28 to 56 in float64; 8 channels a group as fast either way);
# - the input gradient at stride 2 along the width where the input channels fill
#   less than ROWS_STRIDED_FILL of the blocked sums' blocks (2, 5 and 10 channels:
#   25-45% faster; 8 as fast as the blocked sums, 12 to 32 slower);
# - every pass of layers of one input channel a group that the blocked sums leave
#   (depthwise layers, dilated too: forward 1.2-2.4x faster than the direct loops,
#   input gradient 1.1-2.2x, weight gradient 1.2-2.3x; at stride 2 the forward
#   1.1-1.4x, the input gradient 1.4-4x, the weight gradient 1.2-1.9x; the weight
#   gradient of first layers of one channel, 1.2x at 32 outputs), but for their
#   forward and input gradient at stride 1 over rows that fill at most
#   SMALL_DEPTHWISE_FILL of their chunks, which the blocked sums compute over runs
#   of samples laid side by side (_small_depthwise): 512 channels of 7x7 planes,
#   batch 32, forward 0.82 -> 0.67-0.71 ms in float32, 1024 of 4x4 0.19 -> 0.13,
#   0.20 -> 0.15 in float64; rows of 10 cells as fast either way in float32, of
#   7-20 cells by rows 10-130% faster.
# - every pass of small layers, at most SMALL_LAYER_CELLS input cells over the batch
#   and SMALL_LAYER_CHANNELS channels each way (one sample of up to 32x32
#   by 8-24 channels), whose sums are too short to pay for the blocked sums' copies
#   of the input and weights: batch-1 layers of 8-24 channels of 8x8 to 32x32
#   planes, 3x3 to 7x7 kernels, dilated and grouped: forward 10-45% faster, input
#   gradient 0-40%; the weight gradient only at stride 1 undilated (0-25% faster;
#   strided and dilated 10-50% slower). 32 channels of 24x24 ran 10-20% slower by
#   rows, 16 channels of 16x16 over 8 samples 10-50%. The input gradient at
#   stride 2 along the width over as many cells, where its input channels times
#   the cells of the row chunks (R.row_chunk) that its rows take come to at most
#   SMALL_STRIDED_CELLS (per-pass timings of 28 layers of 8-32 -> 16-64 channels
#   of 14x14 to 32x32 planes, batch 1-4, both dtypes): 8 channels 1.25-1.8x
#   faster by rows, 16 channels of one chunk (float32's rows of up to 32 cells)
#   1.15-1.35x, 24 and 32 of one chunk in float64 (14x14) 1.4-1.6x in one sample,
#   0.9-1.3x in 2 to 4; 16 channels of float64's two chunks 0.85-1.1x; 24 and 32
#   channels of float32's one chunk or float64's two 1.0-2x slower.
# With dilation d down the height the rows are shared within each of d classes of
# output rows (R.shares_rows): depthwise layers dilated by 2-4 ran their forward
# and input gradient 1.6-2.2x faster than the direct loops in float32 (in float64,
# out of the cache, 0.8-1.7x), 2-4x faster than unshared; layers of 1-12 channels
# a group 1.2-2.8x faster than the blocked sums.
ROWS_CHANNELS = 3
ROWS_WEIGHT_CHANNELS = 2
ROWS_GROUP_CHANNELS = 4
ROWS_FILL = 0.75
ROWS_STRIDED_FILL = 0.75
SMALL_DEPTHWISE_FILL = 0.25
SMALL_LAYER_CELLS = 1024
SMALL_LAYER_CHANNELS = 24
SMALL_STRIDED_CELLS = 512


def _row_cells(g: ConvGeometry, computation: str) -> int:
    """The cells of the rows a computation writes (the input gradient's are the
    input's)."""
    return g.w if computation == "input" else g.ow


def _fills_chunks(g: ConvGeometry, computation: str, dtype) -> bool:
    """Whether the rows a computation writes fill ROWS_FILL of the rows' chunks."""
    return B.filled(_row_cells(g, computation), R.row_chunk(dtype)) >= ROWS_FILL


def _small_depthwise(g: ConvGeometry, computation: str, dtype) -> bool:
    """Whether a depthwise layer's forward or input gradient at stride 1 goes to the
    blocked sums: rows of at most SMALL_DEPTHWISE_FILL of a chunk."""
    passes = computation != "weight" and g.sh == g.sw == 1
    return g.c_in == g.groups and passes and _row_cells(g, computation) <= SMALL_DEPTHWISE_FILL * R.row_chunk(dtype)


def _few_cells(g: ConvGeometry) -> bool:
    """Whether the input holds at most SMALL_LAYER_CELLS cells over the batch."""
    return g.n * g.h * g.w <= SMALL_LAYER_CELLS


def _small_layer(g: ConvGeometry, computation: str) -> bool:
    """Whether a layer is small enough for the rows (_few_cells,
    SMALL_LAYER_CHANNELS), its weight gradient only at stride 1 undilated (the
    input gradient at stride 2 along the width has a rule of its own)."""
    if computation == "input" and g.sw == 2:
        return False
    small = _few_cells(g) and max(g.c_in, g.c_out) <= SMALL_LAYER_CHANNELS
    return small and (computation != "weight" or _plain(g))


def _plain(g: ConvGeometry) -> bool:
    """Stride 1 and no dilation."""
    return g.sh == g.sw == g.dh == g.dw == 1


def _rows_pay(g: ConvGeometry, computation: str, dtype) -> bool:
    if _small_layer(g, computation):
        return True
    cg, kg = g.c_in // g.groups, g.c_out // g.groups
    computed = cg if computation == "input" else kg
    fills_chunks = _fills_chunks(g, computation, dtype)
    channels_pay = min(cg, kg) <= ROWS_CHANNELS or B.filled(computed, R.OUTPUTS) > _block_fill(computed)
    if computation != "weight" and R.shares_rows(g) and fills_chunks and channels_pay:
        return True
    if computation == "weight" and kg <= ROWS_WEIGHT_CHANNELS and (kg == 1 or cg <= ROWS_CHANNELS):
        return True
    chunk = R.row_chunk(dtype)
    chunked_cells = -(-_row_cells(g, computation) // chunk) * chunk
    if computation == "weight" and max(cg, kg) <= ROWS_GROUP_CHANNELS and _plain(g) and fills_chunks and chunked_cells == chunk:
        return True
    small_sample = _few_cells(g) and g.c_in * chunked_cells <= SMALL_STRIDED_CELLS
    if computation == "input" and g.sw == 2 and (_block_fill(cg) < ROWS_STRIDED_FILL or small_sample):
        return True
    return g.c_in == g.groups and not _blocked_pays(g, computation) and not _small_depthwise(g, computation, dtype)


def conv_path(g: ConvGeometry, computation: str = "forward", threads: int | None = None, dtype=np.float32) -> str:
    """The path of one computation (a PASSES name) of geometry g in dtype on
    `threads` threads (default: fastconv's count in this Python thread):

    - 'blocked' or 'gemm' for 1x1 convolutions over several channels
      (_one_tap_path);
    - 'gemm' for the passes that it pays for (_gemm_pays, on up to
      gemm.MOST_THREADS) and the blocked sums leave:
      3-4x faster than the direct loops on batch-1 layers of 256 channels and 8x8
      planes, 1.1-2x on strided, dilated and transposed layers of 64-256 channels;
    - 'rows' where they apply (R.applicable: stride 1 or 2 along the width) and pay
      (_rows_pay), checked next: every pass of small layers, 1-1.5x faster than
      the blocked sums; the forward and input gradient of layers of few
      channels on one side, or of channels that fill blocks of 3 better than the
      blocked sums' blocks, 1-1.5x faster than the blocked sums; the strided input
      gradient and the one-output weight gradient that the blocked sums fill
      poorly or leave, 1.1-1.8x; the layers of one input channel a group
      (depthwise) that the blocked sums leave, 1.1-2.4x faster than the direct
      loops;
    - 'blocked' for sums over more than one tap whose channels fill the blocks
      (_blocked_pays): 1.1-2x faster than the direct loops on most layers of
      3-128 channels and kernels of 3x3 to 7x7, and than GEMM;
    - 'winograd' for undilated stride-1 3x3 convolutions of one group where it
      runs faster than the blocked sums (_winograd_first), checked before them:
      1-1.3x; and for the other stride-1
      3x3 convolutions of one group the blocked sums leave, where it pays
      (_winograd_pays);
    - 'direct' for the rest, every stride, dilation and group count.
    """
    if _forced == "winograd":
        return "winograd" if W.applicable(g) else "direct"
    if _forced == "rows":
        return "rows" if R.applicable(g, computation) else "direct"
    if _forced is not None:
        return _forced
    threads = get_num_threads() if threads is None else threads
    if g.kh == g.kw == 1 and g.c_in // g.groups > 1:
        return _one_tap_path(g, computation, dtype)
    if R.applicable(g, computation) and _rows_pay(g, computation, dtype):
        return "rows"
    if _winograd_first(g, dtype):
        return "winograd"
    if _blocked_pays(g, computation) or _small_depthwise(g, computation, dtype):
        return "blocked"
    if W.applicable(g) and _winograd_pays(g):
        return "winograd"
    if _gemm_pays(g, computation, threads):
        return "gemm"
    return "direct"


@contextlib.contextmanager
def force_path(path: str | None):
    """Run every convolution inside on one path, for benchmarks: 'gemm', 'direct',
    'blocked', 'winograd' (the convolutions it computes, W.applicable; the others
    direct) or 'rows' (the computations it applies to, R.applicable; the others
    direct)."""
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


# An empty batch (N = 0, as PyTorch allows) has empty results and a zero weight
# gradient, and never reaches the kernels, whose plans divide the work by samples.


def forward(x, weight, g: ConvGeometry):
    if g.n == 0:
        return np.zeros(g.output_shape, dtype=x.dtype)
    x, weight = _contiguous(x, weight)
    path = conv_path(g, "forward", dtype=x.dtype)
    if path == "gemm":
        return K.gemm_forward(x, weight, g, get_num_threads())
    if path == "blocked":
        return B.forward(x, weight, g, get_num_threads())
    if path == "rows":
        return R.forward(x, weight, g, get_num_threads())
    if path == "winograd":
        out = W.forward(x, weight, g, get_num_threads())
        if out is not None:
            return out
        # an output is not finite: the direct sums give PyTorch's infinities
    return D.forward_driver(x, weight, g, get_num_threads())


def _adjoint(grad_output, g: ConvGeometry):
    """At stride 1 the input gradient is the forward convolution of grad_output with
    the flipped kernel (D._flipped) in the adjoint geometry, padded by d(k-1) - p: that
    geometry and grad_output, cropped where the padding is negative at the top or left
    (Winograd's split pads; cells past the bottom and right are never read)."""
    a = D._adjoint(g)
    top, left = max(0, -a.pt), max(0, -a.pl)
    if top or left:
        grad_output = np.ascontiguousarray(grad_output[:, :, top:, left:])
        a = a._replace(h=a.h - top, w=a.w - left, pt=a.pt + top, pl=a.pl + left)
    return grad_output, a


def _nan_from_non_finite(result, operand):
    """Whether result holds a NaN and operand a value that is not finite (the
    kernels' 0 * inf, below), the smaller array read first: each test reads all of
    its array (a 512-channel 3x3 weight gradient's NaN test took 0.5 ms where its
    input's took 0.05)."""
    tests = [lambda: bool(np.isnan(result).any()), lambda: not np.isfinite(operand).all()]
    if operand.size < result.size:
        tests.reverse()
    return tests[0]() and tests[1]()


def input_grad(weight, grad_output, g: ConvGeometry):
    if g.n == 0:
        return np.zeros(g.input_shape, dtype=grad_output.dtype)
    weight, grad_output = _contiguous(weight, grad_output)
    path = conv_path(g, "input", dtype=grad_output.dtype)
    gx = None
    if path == "gemm":
        gx = K.gemm_input(weight, grad_output, g, get_num_threads())
    elif path == "winograd":
        cropped, a = _adjoint(grad_output, g)
        gx = W.forward(cropped, D._flipped(weight, g), a, get_num_threads())
    elif path == "blocked" and g.sh == g.sw == 1:
        cropped, a = _adjoint(grad_output, g)
        gx = B.forward(cropped, weight, a, get_num_threads(), flipped=True)
    elif path == "blocked":
        gx = B.input_grad(weight, grad_output, g, get_num_threads())
    elif path == "rows":
        gx = R.input_grad(weight, grad_output, g, get_num_threads())
    if gx is None:
        gx = D.input_driver(weight, grad_output, g, get_num_threads())
    if _nan_from_non_finite(gx, weight):
        # The kernels multiply every weight tap by the zeros that pad grad_output: an
        # infinite tap there gives 0 * inf = NaN, where PyTorch adds only the taps that
        # land inside (finite or infinite). The reference's col2im adds those same terms.
        with np.errstate(invalid="ignore", over="ignore"):
            return np.ascontiguousarray(reference._conv_input_grad(weight, grad_output, g))
    return gx


def weight_grad(x, grad_output, g: ConvGeometry):
    if g.n == 0:
        return np.zeros(g.weight_shape, dtype=x.dtype)
    x, grad_output = _contiguous(x, grad_output)
    path = conv_path(g, "weight", dtype=x.dtype)
    gw = None
    if path == "gemm":
        gw = K.gemm_weight(x, grad_output, g, get_num_threads())
    elif path == "winograd":
        gw = W.weight_grad(x, grad_output, g, get_num_threads())
    elif path == "blocked":
        gw = B.weight_grad(x, grad_output, g, get_num_threads())
    elif path == "rows":
        gw = R.weight_grad(x, grad_output, g, get_num_threads())
    if gw is None:
        gw = D.weight_driver(x, grad_output, g, get_num_threads())
    if _nan_from_non_finite(gw, x):
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
