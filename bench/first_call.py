"""Seconds each operator's first call takes with an empty kernel cache: the compile
time a user meets without fastconv.warmup().

    python bench/first_call.py [--dtype float32|float64]

The cache goes to a fresh temporary directory (NUMBA_CACHE_DIR, set before fastconv
is imported), so the disk cache of earlier runs is not touched or used. Each step
compiles only what the steps before it have not.
"""

import argparse
import os
import tempfile
import time

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
args = parser.parse_args()

with tempfile.TemporaryDirectory() as cache:
    os.environ["NUMBA_CACHE_DIR"] = cache
    import numpy as np

    import fastconv
    from fastconv import grad

    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 3, 32, 32)).astype(args.dtype)
    w = rng.standard_normal((16, 3, 3, 3)).astype(args.dtype)
    w2 = rng.standard_normal((32, 16, 3, 3)).astype(args.dtype)
    out = {}
    steps = {
        "conv2d forward (3x3)": lambda: out.setdefault("y", fastconv.conv2d(x, w, padding=1)),
        "conv2d_weight": lambda: grad.conv2d_weight(x, w.shape, out["y"], padding=1),
        "conv2d forward, stride 2": lambda: out.setdefault("y2", fastconv.conv2d(out["y"], w2, stride=2, padding=1)),
        "conv2d_input, stride 2": lambda: grad.conv2d_input(out["y"].shape, w2, out["y2"], stride=2, padding=1),
        "max_pool2d, 3x3 stride 2, with indices": lambda: fastconv.max_pool2d(out["y"], 3, 2, 1, return_indices=True),
    }
    for name, step in steps.items():
        start = time.perf_counter()
        step()
        print(f"{name:40s} {time.perf_counter() - start:6.1f} s", flush=True)
