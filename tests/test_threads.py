"""fastconv's thread control: it sets Numba's and NumPy's BLAS threads (not torch's),
restores them, refuses bad counts, and results agree across thread counts."""

import numba
import numpy as np
import pytest

import fastconv
from fastconv import dispatch, grad
from fastconv.threads import _blas_pools
from tests.conftest import assert_close


def test_set_and_restore():
    before = fastconv.get_num_threads()
    with fastconv.num_threads(1):
        assert fastconv.get_num_threads() == 1 == numba.get_num_threads()
        assert all(pool.num_threads == 1 for pool in _blas_pools())
    assert fastconv.get_num_threads() == before


@pytest.mark.parametrize("bad", [0, -1, 10**6, 1.5, True, "2"])
def test_bad_thread_counts_are_refused(bad):
    with pytest.raises(ValueError, match="n must be an int in"):
        fastconv.set_num_threads(bad)


def test_torch_threads_untouched():
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    with fastconv.num_threads(1):
        assert torch.get_num_threads() == before


@pytest.mark.parametrize("path", dispatch.PATHS)
def test_results_agree_across_thread_counts(path, rng):
    x = rng.standard_normal((4, 8, 10, 10))
    w = rng.standard_normal((8, 4, 3, 3))
    gy = rng.standard_normal((4, 8, 10, 10))
    kw = dict(padding=1, groups=2)
    runs = []
    for n in sorted({1, fastconv.get_num_threads()}):
        with fastconv.num_threads(n), dispatch.force_path(path):
            runs.append((fastconv.conv2d(x, w, **kw), grad.conv2d_input(x.shape, w, gy, **kw), grad.conv2d_weight(x, w.shape, gy, **kw),
                         grad.max_pool2d_input(x, gy[:, :, ::2, ::2], 3, 2, 1)))
    for a, b in zip(runs[0], runs[-1]):
        assert_close(a, b, np.float64)


def test_warmup_compiles_both_dtypes():
    from fastconv.kernels import conv, direct, pool

    assert fastconv.warmup() > 0
    for kernel in (conv.im2col, direct.forward, direct.input_grad, direct.weight_grad, pool.max_pool, pool.avg_pool, pool.adaptive_max_pool):
        dtypes = {sig[0].dtype.name for sig in kernel.signatures}
        assert {"float32", "float64"} <= dtypes, kernel
