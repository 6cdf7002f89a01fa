"""fastconv's thread control: it sets Numba's threads and its GEMM workers' (not
torch's, not NumPy's BLAS), restores them, refuses bad counts, and results agree
across thread counts; the GEMM workers' products against NumPy's."""

import os
import signal

import numba
import numpy as np
import pytest
from fastconv.kernels import gemm
from hypothesis import given, settings
from hypothesis import strategies as st

import fastconv
from fastconv import dispatch, grad
from tests.conftest import assert_close


def _numpy_blas_threads():
    return [lib.num_threads for lib in gemm.numpy_blas()]


def test_set_and_restore():
    before, blas = fastconv.get_num_threads(), _numpy_blas_threads()
    with fastconv.num_threads(1):
        assert fastconv.get_num_threads() == 1 == numba.get_num_threads()
        assert _numpy_blas_threads() == blas
    assert fastconv.get_num_threads() == before


def test_gemm_path_leaves_numpy_blas_threads_alone(rng):
    blas = _numpy_blas_threads()
    x, w = rng.standard_normal((2, 8, 5, 5)), rng.standard_normal((16, 8, 1, 1))
    with dispatch.force_path("gemm"):
        fastconv.conv2d(x, w)
    assert _numpy_blas_threads() == blas


@pytest.mark.parametrize("threads", [1, 2, 3, 5])
@pytest.mark.parametrize("shapes", [
    ((40, 7), (7, 9)), ((3, 70, 6), (3, 6, 4)), ((1, 33, 5), (4, 1, 5, 2)), ((2, 1, 9, 3), (2, 3, 3, 8)),
    ((400, 256), (256, 200)), ((3, 1, 200, 128), (2, 128, 160)),  # large enough to split (MIN_FLOPS)
])
def test_gemm_workers_match_numpy(threads, shapes, rng):
    a, b = rng.standard_normal(shapes[0]), rng.standard_normal(shapes[1])
    expected = np.matmul(a, b)
    out = np.empty_like(expected)
    gemm.matmul(a, b, out, threads)
    assert_close(out, expected, np.float64)
    again = np.ones_like(expected)
    gemm.matmul(a, b, again, threads, accumulate=True)
    assert_close(again, expected + 1, np.float64)
    rerun = np.empty_like(expected)
    assert np.array_equal(gemm.matmul(a, b, rerun, threads), out)


@pytest.mark.parametrize("batch, rows, threads", [(1, 100, 2), (1, 10, 4), (3, 64, 8), (5, 17, 2), (2, 1000, 3)])
def test_gemm_blocks_cover_each_row_once(batch, rows, threads):
    covered = np.zeros((batch, rows), dtype=int)
    for b, m0, m1 in gemm.blocks(batch, rows, threads):
        covered[b, m0:m1] += 1
    assert (covered == 1).all()


@pytest.mark.parametrize("bad", [0, -1, 10**6, 1.5, True, "2"])
def test_bad_thread_counts_are_refused(bad):
    with pytest.raises(ValueError, match="n must be an int in"):
        fastconv.set_num_threads(bad)


def test_thread_count_is_per_python_thread():
    # as Numba's: a numpy integer is a count too; another thread keeps its own
    import threading

    seen = []
    with fastconv.num_threads(np.int64(1)):
        assert fastconv.get_num_threads() == 1
        worker = threading.Thread(target=lambda: seen.append(fastconv.get_num_threads()))
        worker.start()
        worker.join()
    assert seen == [numba.config.NUMBA_NUM_THREADS]


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


@pytest.mark.parametrize("dtypes", [(np.float32, np.float64), ("float32", "float64")])
def test_warmup_compiles_both_dtypes(dtypes):
    from fastconv.kernels import activation, blocked, conv, direct, pool, rows, winograd

    assert fastconv.warmup(dtypes) > 0
    kernels = (conv.im2col, direct.forward, direct.input_grad, direct.weight_grad, pool.max_pool, pool.avg_pool, pool.adaptive_max_pool,
               activation.relu, activation.relu_backward, winograd.forward_units, winograd.weight_units, direct.split_planes,
               blocked.forward_blocks, blocked.input_blocks, blocked.weight_blocks, blocked.channel_blocks, blocked.transpose_sums,
               blocked.interleave_weights, blocked.select_taps, rows.forward_planes, rows.input_planes, rows.weight_planes)
    for kernel in kernels:
        dtypes = {arg.dtype.name for sig in kernel.signatures for arg in sig[:2] if hasattr(arg, "dtype") and arg.dtype.name.startswith("float")}
        assert {"float32", "float64"} <= dtypes, kernel


@pytest.mark.parametrize("dtype", [np.float32, "float64", np.dtype(np.float32)])
def test_warmup_takes_one_dtype(dtype):
    assert fastconv.warmup(dtype) > 0


def test_warmup_refuses_other_dtypes():
    with pytest.raises(TypeError, match="float32 or float64"):
        fastconv.warmup("int64")
    with pytest.raises(TypeError, match="float32 or float64"):
        fastconv.warmup([np.float32, np.float16])


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_gemm_workers_in_a_forked_child(rng):
    a, b = rng.standard_normal((256, 256)), rng.standard_normal((256, 256))  # two threads' worth
    out = np.empty((256, 256))
    gemm.matmul(a, b, out, 2)  # the parent's workers exist now
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: a product on workers of its own (a hang ends at the alarm)
        try:
            signal.alarm(20)
            child = np.empty((256, 256))
            gemm.matmul(a, b, child, 2)
            os.write(writer, b"1" if np.allclose(child, a @ b) else b"0")
        finally:
            os._exit(0)
    os.close(writer)
    with os.fdopen(reader, "rb") as f:
        assert f.read() == b"1"
    os.waitpid(pid, 0)


def test_numpy_blas_single_threaded_inside_products_only():
    from threadpoolctl import ThreadpoolController

    with ThreadpoolController().limit(limits=2, user_api="blas"):
        before = _numpy_blas_threads()
        seen = gemm.in_parallel(list(range(6)), 3, lambda part: _numpy_blas_threads())
        assert len(seen) == 3 and all(counts == [1] * len(before) for counts in seen)
        assert _numpy_blas_threads() == before
    assert gemm.in_parallel([], 2, lambda part: part) == []


def test_gemm_pool_serves_changing_thread_counts(rng):
    # Products asking for different thread counts, from several threads at once:
    # none may find its executor shut down under it.
    import concurrent.futures

    a, b = rng.standard_normal((512, 128)), rng.standard_normal((128, 256))
    expected = a @ b

    def product(threads):
        out = np.empty_like(expected)
        return np.allclose(gemm.matmul(a, b, out, threads), expected)

    with concurrent.futures.ThreadPoolExecutor(4) as callers:
        assert all(callers.map(product, [2, 3, 4, 5, 2, 3, 4, 5] * 3))


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 3), st.integers(1, 300), st.integers(1, 200), st.integers(1, 200), st.integers(1, 5), st.booleans(), st.integers(0, 2**16))
def test_gemm_matmul_random(batch, m, k, n, threads, accumulate, seed):
    # up to 72 MFLOP: above MIN_FLOPS a thread, so products split across threads too
    rng = np.random.default_rng(seed)
    a, b = rng.standard_normal((batch, m, k)), rng.standard_normal((k, n))
    out = rng.standard_normal((batch, m, n))
    expected = out + a @ b if accumulate else a @ b
    assert_close(gemm.matmul(a, b, out, threads, accumulate=accumulate), expected, np.float64)


def _run_python(code, env=None):
    import os
    import subprocess
    import sys

    environment = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    environment.update(env or {})
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environment, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


START_THREADS = """
import os
import numpy as np
import fastconv
from numba.np.ufunc import parallel
print(parallel._is_initialized)
fastconv.conv2d(np.ones((1, 1, 5, 5)), np.ones((1, 1, 3, 3)))
print(parallel._is_initialized, os.environ.get("GOMP_SPINCOUNT", "unset"))
"""


def test_numba_threads_start_on_the_first_kernel_with_the_environment_restored():
    # Not at import (PyTorch imported after Numba's threads start runs its MKL
    # convolutions far slower); the short spin is set only while they start.
    assert _run_python(START_THREADS) == ["False", "True", "unset"]
    assert _run_python(START_THREADS, {"GOMP_SPINCOUNT": "5"}) == ["False", "True", "5"]


def test_numpy_blas_is_told_from_torch_by_package_folder():
    # An environment whose path merely contains "torch" (/opt/torch/.venv) holds
    # NumPy's BLAS, which fastconv must still set to one thread inside its products.
    site = "/opt/torch/.venv/lib/python3.12/site-packages"
    assert not gemm._inside(f"{site}/numpy.libs/libscipy_openblas64_.so", f"{site}/torch")
    assert not gemm._inside(f"{site}/torchvision/lib/libblas.so", f"{site}/torch")
    assert gemm._inside(f"{site}/torch/lib/libopenblas.so", f"{site}/torch")
    assert not gemm._inside(f"{site}/numpy.libs/libopenblas.so", None)
    from threadpoolctl import threadpool_info

    numpy_folder = gemm._package_folder("numpy")  # its wheel's BLAS lies in numpy.libs beside it
    numpy_libs = {i["filepath"] for i in threadpool_info() if i["user_api"] == "blas" and os.path.realpath(i["filepath"]).startswith(numpy_folder)}
    assert numpy_libs <= {lib.filepath for lib in gemm.numpy_blas()}


def test_numpy_blas_single_threaded_from_any_python_thread(rng):
    # threadpoolctl lets only one Python thread set OpenBLAS's process-wide count;
    # products started from another thread must still run single-threaded BLAS, and
    # give the same bytes as from the main thread.
    import threading


    x, gy = rng.standard_normal((2, 64, 23, 23)), rng.standard_normal((2, 96, 23, 23))
    with fastconv.num_threads(1), dispatch.force_path("gemm"):
        expected = grad.conv2d_weight(x, (96, 64, 3, 3), gy, padding=1)
    seen = {}

    def worker():
        gemm._enter()
        seen["threads"] = _numpy_blas_threads()
        gemm._leave()
        with fastconv.num_threads(1), dispatch.force_path("gemm"):
            seen["result"] = grad.conv2d_weight(x, (96, 64, 3, 3), gy, padding=1)

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert seen["threads"] == [1] * len(seen["threads"])
    assert np.array_equal(seen["result"], expected)
