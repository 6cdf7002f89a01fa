"""Each pass of a convolution timed apart: the forward, the input gradient and the
weight gradient, on fastconv's chosen path, on each path forced
(fastconv.dispatch.force_path), and in PyTorch, all interleaved in this one process
with the same thread count (fastconv.timing). The measurements behind
fastconv.dispatch.conv_path.

    python bench/passes.py [--filter res3x3_s2,decoder_up] [--extra]
                           [--cases my_shapes.json] [--dtype float64]
                           [--paths gemm,direct,winograd] [--threads 2]

A transposed convolution's passes are named as its own: its forward is the input
gradient of the convolution it is the adjoint of. A forced 'winograd' runs the
direct kernels where Winograd does not apply. Milliseconds per call, and GFLOP/s of
the pass's multiply-adds (2 flops each).
"""

from __future__ import annotations

import argparse
import sys

# fastconv before NumPy, as python -m fastconv bench (see fastconv/__init__.py)
from fastconv import catalogue

PASS_NAMES = ("forward", "input", "weight")


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--filter", default="", help="comma-separated substrings of case names")
    p.add_argument("--extra", action="store_true", help="also the shapes outside the catalogue")
    p.add_argument("--cases", help="JSON file with your own cases (a list of objects with Case's fields)")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--paths", default="gemm,direct,winograd", help="paths to force, besides the chosen one")
    p.add_argument("--threads", type=int, default=None, help="threads for fastconv and PyTorch (default: all cores)")
    return p.parse_args(argv)


def pass_calls(case, dtype):
    """{pass name: callable} for fastconv and, when installed, PyTorch."""
    import fastconv
    from fastconv import grad

    wl = catalogue.workload(case, dtype)
    x, w, gy = wl.arrays["x"], wl.arrays["w"], wl.arrays["gy"]
    kw = dict(stride=case.s, padding=case.p, groups=case.g, dilation=case.d)
    if case.op == "convT":
        ours = {
            "forward": lambda: fastconv.conv_transpose2d(x, w, **kw),
            "input": lambda: grad.conv_transpose2d_input(x.shape, w, gy, **kw),
            "weight": lambda: grad.conv_transpose2d_weight(x, w.shape, gy, **kw),
        }
    else:
        ours = {
            "forward": lambda: fastconv.conv2d(x, w, **kw),
            "input": lambda: grad.conv2d_input(x.shape, w, gy, **kw),
            "weight": lambda: grad.conv2d_weight(x, w.shape, gy, **kw),
        }
    torch = catalogue.torch_module()
    if torch is None:
        return ours, {}
    tx, tw, tgy = (torch.from_numpy(a) for a in (x, w, gy))
    transposed = case.op == "convT"
    forward = torch.nn.functional.conv_transpose2d if transposed else torch.nn.functional.conv2d

    def backward(mask):
        with torch.no_grad():
            out = torch.ops.aten.convolution_backward(tgy, tx, tw, None, [case.s] * 2, [case.p] * 2, [case.d] * 2, transposed, [0, 0], case.g, mask)
        return out[0] if mask[0] else out[1]

    theirs = {
        "forward": lambda: forward(tx.detach(), tw, **kw),
        "input": lambda: backward([True, False, False]),
        "weight": lambda: backward([False, True, False]),
    }
    return ours, theirs


def forced(path, fn):
    from fastconv import dispatch

    def call():
        with dispatch.force_path(path):
            return fn()

    return call


def main(argv=None) -> int:
    args = parse_args(argv)
    from fastconv import dispatch

    paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    bad = [p for p in paths if p not in dispatch.PATHS]
    try:
        if bad:
            raise ValueError(f"--paths: {bad} not among {dispatch.PATHS}")
        cases = catalogue.load_cases(args.cases) if args.cases else catalogue.CATALOGUE + (catalogue.EXTRA if args.extra else [])
    except ValueError as exc:
        print(f"bench/passes.py: {exc}", file=sys.stderr)
        return 2
    cases = catalogue.matching([c for c in cases if c.op in ("conv", "convT")], args.filter)
    if not cases:
        print(f"bench/passes.py: --filter {args.filter!r} matches no convolution", file=sys.stderr)
        return 2
    from fastconv.bench import same_threads
    from fastconv.timing import interleaved_medians

    try:
        threads, _ = same_threads(args.threads)
    except ValueError as exc:
        print(f"bench/passes.py: {exc}", file=sys.stderr)
        return 2
    print(f"{args.dtype}, {threads} threads: ms per call (GFLOP/s); 'chosen' is conv_path's choice, in brackets")
    for case in cases:
        ours, theirs = pass_calls(case, args.dtype)
        calls = {}
        for name in PASS_NAMES:
            calls[(name, "chosen")] = ours[name]
            calls.update({(name, path): forced(path, ours[name]) for path in paths})
            if theirs:
                calls[(name, "torch")] = theirs[name]
        times = interleaved_medians(calls, rounds=7, budget_s=4)
        flops = case.flops()
        geometry = case.geometry()
        for name in PASS_NAMES:
            computation = name if case.op == "conv" else {"forward": "input", "input": "forward"}.get(name, name)
            chosen = dispatch.conv_path(geometry, computation, dtype=args.dtype)
            cells = "  ".join(
                f"{label}{f' [{chosen}]' if label == 'chosen' else ''} {times[(name, label)] * 1e3:.2f} ({flops / times[(name, label)] / 1e9:.0f})"
                for n, label in times
                if n == name
            )
            print(f"{case.name:14s} {name:7s} {cells}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
