"""Each catalogue case, forward and forward+backward, for fastconv, the NumPy
reference and PyTorch (when installed). Float32, all cores."""

import numpy as np
import pytest

from fastconv import catalogue

CASES = catalogue.CATALOGUE + catalogue.EXTRA
IMPLS = ["fastconv", "reference", "torch"]


@pytest.fixture(scope="module")
def workloads():
    return {}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("mode", catalogue.MODES)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_bench(benchmark, workloads, case, mode, impl):
    if case.name not in workloads:
        workloads[case.name] = catalogue.workload(case, np.float32)
    runs = workloads[case.name].runs
    if impl not in runs:
        pytest.skip(f"{impl} is not installed")
    fn = runs[impl][mode]
    fn()  # compile and warm up outside the timing
    benchmark.group = f"{case.name}-{mode}"
    benchmark.extra_info["gflop"] = case.flops() * (3 if mode == "fwdbwd" else 1) / 1e9
    benchmark(fn)
