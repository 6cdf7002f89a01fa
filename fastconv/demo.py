"""`python -m fastconv demo`: run every operator and gradient once and print how
fastconv agrees with the NumPy reference (and with PyTorch when it is installed)."""

from __future__ import annotations

import numpy as np

import fastconv
from fastconv import grad, reference


def cases(rng, dtype):
    """(name, fastconv call, reference call) for every forward and gradient."""
    x = rng.standard_normal((2, 4, 9, 9)).astype(dtype)
    w = rng.standard_normal((6, 2, 3, 3)).astype(dtype)
    wt = rng.standard_normal((4, 3, 3, 3)).astype(dtype)
    conv = dict(stride=2, padding=1, dilation=1, groups=2)
    convt = dict(stride=2, padding=1, output_padding=1, groups=2, dilation=1)
    gy = rng.standard_normal(reference.conv2d(x, w, **conv).shape).astype(dtype)
    gt = rng.standard_normal(reference.conv_transpose2d(x, wt, **convt).shape).astype(dtype)
    pool = dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)
    gp = rng.standard_normal(reference.max_pool2d(x, **pool).shape).astype(dtype)
    lp = dict(kernel_size=3, stride=2, ceil_mode=True)
    gl = rng.standard_normal(reference.lp_pool2d(x, 2, **lp).shape).astype(dtype)
    ga = rng.standard_normal((2, 4, 4, 5)).astype(dtype)
    y, idx = reference.max_pool2d(x, 2, return_indices=True)
    gu = rng.standard_normal((2, 4, 9, 9)).astype(dtype)
    ax = np.abs(x)
    table = [
        ("conv2d", "conv2d", (x, w), conv),
        ("conv2d_input", "conv2d_input", (x.shape, w, gy), conv),
        ("conv2d_weight", "conv2d_weight", (x, w.shape, gy), conv),
        ("conv2d_bias", "conv2d_bias", (gy,), {}),
        ("conv_transpose2d", "conv_transpose2d", (x, wt), convt),
        ("conv_transpose2d_input", "conv_transpose2d_input", (x.shape, wt, gt), convt),
        ("conv_transpose2d_weight", "conv_transpose2d_weight", (x, wt.shape, gt), convt),
        ("max_pool2d", "max_pool2d", (x,), pool),
        ("max_pool2d_input", "max_pool2d_input", (x, gp), pool),
        ("max_unpool2d", "max_unpool2d", (y, idx, 2), {"output_size": (9, 9)}),
        ("max_unpool2d_input", "max_unpool2d_input", (gu, idx), {}),
        ("avg_pool2d", "avg_pool2d", (x,), pool),
        ("avg_pool2d_input", "avg_pool2d_input", (x.shape, gp), pool),
        ("sum_pool2d", "sum_pool2d", (x,), pool),
        ("sum_pool2d_input", "sum_pool2d_input", (x.shape, gp), pool),
        ("lp_pool2d", "lp_pool2d", (ax, 2), lp),
        ("lp_pool2d_input", "lp_pool2d_input", (ax, gl, 2), lp),
        ("adaptive_avg_pool2d", "adaptive_avg_pool2d", (x, (4, 5)), {}),
        ("adaptive_avg_pool2d_input", "adaptive_avg_pool2d_input", (x.shape, ga), {}),
        ("adaptive_max_pool2d", "adaptive_max_pool2d", (x, (4, 5)), {}),
        ("adaptive_max_pool2d_input", "adaptive_max_pool2d_input", (x, ga), {}),
    ]
    for name, fn, args, kwargs in table:
        ours = getattr(grad, fn, None) if name.endswith(("_input", "_weight", "_bias")) else getattr(fastconv, fn)
        yield name, lambda ours=ours, args=args, kwargs=kwargs: ours(*args, **kwargs), lambda fn=fn, args=args, kwargs=kwargs: getattr(reference, fn)(*args, **kwargs)


def max_relative_error(actual, expected) -> float:
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    scale = max(float(np.max(np.abs(expected))), 1e-30)
    return float(np.max(np.abs(actual - expected)) / scale)


TOLERANCE = {np.float32: 1e-4, np.float64: 1e-10}


def main(argv=None) -> int:
    from rich.console import Console
    from rich.table import Table

    rng = np.random.default_rng(0)
    table = Table(title="fastconv vs the NumPy reference (max relative error)")
    table.add_column("operator")
    for dtype in TOLERANCE:
        table.add_column(np.dtype(dtype).name, justify="right")
    rows: dict[str, list[str]] = {}
    failures = 0
    for dtype, tol in TOLERANCE.items():
        for name, ours, ref in cases(rng, dtype):
            err = max_relative_error(ours(), ref())
            failures += not err <= tol
            colour = "green" if err <= tol else "bold red"
            rows.setdefault(name, []).append(f"[{colour}]{err:.1e}[/{colour}]")
    for name, cells in rows.items():
        table.add_row(name, *cells)
    console = Console()
    console.print(table)
    console.print("all within tolerance" if not failures else f"[bold red]{failures} results outside tolerance[/]")
    return 1 if failures else 0
