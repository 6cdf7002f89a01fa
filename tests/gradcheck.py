"""Directional finite differences: the check every gradient must pass in float64.

For a forward f and its claimed vector-Jacobian product, with a random grad_output
gy and a random direction v of an argument a, the directional derivative of
<f(a), gy> along v, by central differences, must equal <vjp(gy), v>.
"""

import numpy as np


def check_directional(forward, vjp, arg, grad_output, rng, eps=1e-6, rtol=1e-6, trials=3):
    for _ in range(trials):
        v = rng.standard_normal(arg.shape)
        plus = np.vdot(forward(arg + eps * v), grad_output)
        minus = np.vdot(forward(arg - eps * v), grad_output)
        numeric = (plus - minus) / (2 * eps)
        analytic = np.vdot(vjp(grad_output), v)
        scale = max(abs(numeric), abs(analytic), 1e-8)
        assert abs(numeric - analytic) <= rtol * scale + 1e-9, f"finite difference {numeric!r} != gradient {analytic!r}"
