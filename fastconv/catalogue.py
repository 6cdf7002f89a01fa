"""The benchmark catalogue: the shapes fastconv is measured on, and how each
implementation (fastconv, the NumPy reference, PyTorch) runs them.

One source of cases for `python -m fastconv bench` and the pytest-benchmark suite in
bench/. A case runs in two modes: "fwd" (the forward pass) and "fwdbwd" (forward,
input gradient and weight gradient, as one training step needs them).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable

import numpy as np

import fastconv
from fastconv import grad, reference
from fastconv.params import conv2d_geometry, conv_transpose2d_geometry, is_int, pool2d_geometry

MODES = ("fwd", "fwdbwd")


@dataclasses.dataclass(frozen=True)
class Case:
    """One benchmark shape. op is 'conv', 'convT', 'max' or 'avg'; K is output
    channels (convs only), k the square kernel, s stride, p padding, d dilation, g groups."""

    name: str
    op: str
    N: int
    C: int
    H: int
    W: int
    K: int = 0
    k: int = 3
    s: int = 1
    p: int = 0
    d: int = 1
    g: int = 1

    def geometry(self):
        """The convolution's geometry (for 'convT', of the convolution it is the
        adjoint of, as fastconv's dispatch sees it)."""
        if self.op == "conv":
            return conv2d_geometry((self.N, self.C, self.H, self.W), (self.K, self.C // self.g, self.k, self.k), self.s, self.p, self.d, self.g)
        return conv_transpose2d_geometry((self.N, self.C, self.H, self.W), (self.C, self.K // self.g, self.k, self.k), self.s, self.p, 0, self.g, self.d)

    def flops(self) -> float:
        """Forward flops (2 per multiply-add); fwd+bwd is three times this for convs."""
        return float(self.geometry().flops) if self.op in ("conv", "convT") else 0.0

    def bytes_moved(self, itemsize: int) -> float:
        """Pooling forward traffic: the input read once and the output written once."""
        geo = pool2d_geometry((self.N, self.C, self.H, self.W), self.k, self.s, self.p, self.d if self.op == "max" else 1)
        return float(itemsize * (self.N * self.C * (self.H * self.W + geo.oh * geo.ow)))


CATALOGUE = [
    Case("lenet_c1", "conv", 64, 1, 28, 28, K=6, k=5),
    Case("lenet_c2", "conv", 64, 6, 12, 12, K=16, k=5),
    Case("cifar_stem", "conv", 64, 3, 32, 32, K=32, k=3, p=1),
    Case("res3x3", "conv", 32, 64, 32, 32, K=64, k=3, p=1),
    Case("res3x3_s2", "conv", 32, 64, 32, 32, K=128, k=3, s=2, p=1),
    Case("dilated", "conv", 32, 64, 32, 32, K=64, k=3, p=2, d=2),
    Case("depthwise", "conv", 32, 128, 32, 32, K=128, k=3, p=1, g=128),
    Case("pointwise", "conv", 32, 128, 32, 32, K=128, k=1),
    Case("grouped", "conv", 32, 64, 32, 32, K=64, k=3, p=1, g=8),
    Case("batch1", "conv", 1, 16, 32, 32, K=16, k=3, p=1),
    Case("dcgan_up", "convT", 32, 64, 16, 16, K=32, k=4, s=2, p=1),
    Case("decoder_up", "convT", 64, 128, 8, 8, K=64, k=4, s=2, p=1),
    Case("maxpool2", "max", 64, 64, 32, 32, k=2, s=2),
    Case("maxpool3", "max", 64, 64, 32, 32, k=3, s=2, p=1),
    Case("avgpool2", "avg", 64, 64, 32, 32, k=2, s=2),
]

# Shapes outside the catalogue, to check that speed is not tuned to it.
EXTRA = [
    Case("x_conv5_s2", "conv", 16, 32, 40, 40, K=48, k=5, s=2, p=2),
    Case("x_depthwise5", "conv", 16, 96, 28, 28, K=96, k=5, p=2, g=96),
    Case("x_grouped4", "conv", 16, 96, 24, 24, K=96, k=3, p=1, g=4),
    Case("x_dilated3", "conv", 16, 48, 30, 30, K=48, k=3, p=3, d=3),
    Case("x_rgb7_s2", "conv", 32, 3, 64, 64, K=24, k=7, s=2, p=3),
    Case("x_convT3", "convT", 16, 48, 20, 20, K=32, k=3, s=2, p=1),
    Case("x_maxpool3_s1", "max", 32, 48, 28, 28, k=3, s=1, p=1),
    Case("x_avgpool3", "avg", 32, 48, 28, 28, k=3, s=2, p=1),
]


OPS = ("conv", "convT", "max", "avg")


def checked_case(entry) -> Case:
    """A Case from a JSON object, every field checked and the shape validated as the
    operator would (ValueError naming what is wrong)."""
    if not isinstance(entry, dict):
        raise ValueError(f"a case must be an object with Case's fields, got {entry!r}")
    fields = {f.name: f for f in dataclasses.fields(Case)}
    unknown = sorted(set(entry) - set(fields))
    missing = [n for n, f in fields.items() if f.default is dataclasses.MISSING and n not in entry]
    if unknown or missing:
        raise ValueError(f"case {entry.get('name', entry)!r}: unknown fields {unknown}, missing fields {missing}")
    if not isinstance(entry["name"], str) or entry["op"] not in OPS:
        raise ValueError(f"case {entry['name']!r}: name must be a string and op one of {OPS}, got op {entry['op']!r}")
    numbers = {n: v for n, v in entry.items() if n not in ("name", "op")}
    bad = {n: v for n, v in numbers.items() if not is_int(v)}
    if bad:
        raise ValueError(f"case {entry['name']!r}: fields {sorted(bad)} must be ints, got {bad}")
    case = Case(**entry)
    try:
        case.flops() if case.op in ("conv", "convT") else case.bytes_moved(4)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"case {case.name!r}: {exc}") from None
    return case


def matching(cases, text: str, ops: bool = False) -> list[Case]:
    """The cases whose name contains one of the comma-separated substrings of `text`
    (every case for an empty text); with `ops`, also those whose op is one of them."""
    wanted = [w.strip() for w in text.split(",") if w.strip()]
    return [c for c in cases if not wanted or any(w in c.name or (ops and w == c.op) for w in wanted)]


def load_cases(path: str) -> list[Case]:
    """A user's own shapes: a JSON list of objects with Case's fields, each checked
    (checked_case); ValueError naming the file and what is wrong."""
    try:
        with open(path) as f:
            entries = json.load(f)
    except (OSError, ValueError) as exc:
        raise ValueError(f"--cases {path}: {exc}") from None
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"--cases {path}: expected a non-empty JSON list of cases")
    return [checked_case(entry) for entry in entries]


@dataclasses.dataclass
class Workload:
    """Arrays for one case, and for each implementation a callable per mode that
    returns its results (forward output; then input and weight gradients)."""

    case: Case
    arrays: dict
    runs: dict[str, dict[str, Callable[[], tuple]]]


def _conv_workload(case: Case, dtype, rng) -> Workload:
    x = rng.standard_normal((case.N, case.C, case.H, case.W)).astype(dtype)
    transposed = case.op == "convT"
    wshape = (case.C, case.K // case.g, case.k, case.k) if transposed else (case.K, case.C // case.g, case.k, case.k)
    w = (rng.standard_normal(wshape) / np.sqrt(np.prod(wshape[1:]))).astype(dtype)
    if transposed:
        kw = dict(stride=case.s, padding=case.p, output_padding=0, groups=case.g, dilation=case.d)
        names = ("conv_transpose2d", "conv_transpose2d_input", "conv_transpose2d_weight")
    else:
        kw = dict(stride=case.s, padding=case.p, dilation=case.d, groups=case.g)
        names = ("conv2d", "conv2d_input", "conv2d_weight")
    y = getattr(reference, names[0])(x, w, **kw)
    gy = rng.standard_normal(y.shape).astype(dtype)

    def ours(fwd_module, grad_module):
        forward, input_grad, weight_grad = getattr(fwd_module, names[0]), getattr(grad_module, names[1]), getattr(grad_module, names[2])
        return {
            "fwd": lambda: (forward(x, w, **kw),),
            "fwdbwd": lambda: (forward(x, w, **kw), input_grad(x.shape, w, gy, **kw), weight_grad(x, w.shape, gy, **kw)),
        }

    runs = {"fastconv": ours(fastconv, grad), "reference": ours(reference, reference)}
    torch_runs = _torch_conv(x, w, gy, transposed, kw)
    if torch_runs:
        runs["torch"] = torch_runs
    return Workload(case, {"x": x, "w": w, "gy": gy}, runs)


def _pool_workload(case: Case, dtype, rng) -> Workload:
    x = rng.standard_normal((case.N, case.C, case.H, case.W)).astype(dtype)
    if case.op == "max":
        kw = dict(kernel_size=case.k, stride=case.s, padding=case.p, dilation=case.d)
        y = reference.max_pool2d(x, **kw)
    else:
        kw = dict(kernel_size=case.k, stride=case.s, padding=case.p)
        y = reference.avg_pool2d(x, **kw)
    gy = rng.standard_normal(y.shape).astype(dtype)

    def ours(f, g):
        if case.op == "max":

            def fwdbwd():
                out, idx = f.max_pool2d(x, **kw, return_indices=True)
                return out, g.max_pool2d_input(x, gy, **kw, indices=idx)

            return {"fwd": lambda: (f.max_pool2d(x, **kw),), "fwdbwd": fwdbwd}
        return {"fwd": lambda: (f.avg_pool2d(x, **kw),), "fwdbwd": lambda: (f.avg_pool2d(x, **kw), g.avg_pool2d_input(x.shape, gy, **kw))}

    runs = {"fastconv": ours(fastconv, grad), "reference": ours(reference, reference)}
    torch_runs = _torch_pool(x, gy, case.op, kw)
    if torch_runs:
        runs["torch"] = torch_runs
    return Workload(case, {"x": x, "gy": gy}, runs)


def workload(case: Case, dtype=np.float32, seed: int = 0) -> Workload:
    rng = np.random.default_rng(seed)
    return _conv_workload(case, dtype, rng) if case.op in ("conv", "convT") else _pool_workload(case, dtype, rng)


def torch_module():
    try:
        import torch
    except ImportError:
        return None
    return torch


def _torch_conv(x, w, gy, transposed, kw):
    torch = torch_module()
    if torch is None:
        return None
    F = torch.nn.functional
    fn = F.conv_transpose2d if transposed else F.conv2d
    tx, tw, tgy = torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(gy)

    def fwd():
        with torch.no_grad():
            return (fn(tx, tw, None, **kw).numpy(),)

    def fwdbwd():
        ax, aw = tx.detach().requires_grad_(), tw.detach().requires_grad_()
        y = fn(ax, aw, None, **kw)
        y.backward(tgy)
        return y.detach().numpy(), ax.grad.numpy(), aw.grad.numpy()

    return {"fwd": fwd, "fwdbwd": fwdbwd}


def _torch_pool(x, gy, op, kw):
    torch = torch_module()
    if torch is None:
        return None
    F = torch.nn.functional
    fn = F.max_pool2d if op == "max" else F.avg_pool2d
    tx, tgy = torch.from_numpy(x), torch.from_numpy(gy)

    def fwd():
        with torch.no_grad():
            return (fn(tx, **kw).numpy(),)

    def fwdbwd():
        ax = tx.detach().requires_grad_()
        y = fn(ax, **kw)
        y.backward(tgy)
        return y.detach().numpy(), ax.grad.numpy()

    return {"fwd": fwd, "fwdbwd": fwdbwd}
