import inspect
import os
import subprocess
import sys

import fastconv.kernels

import fastconv
import fastconv.grad
import fastconv.reference


def test_kernels_install_only_inside_fastconv(tmp_path):
    # Outside the source tree, the installed distribution has fastconv.kernels and no `kernels`.
    code = "import importlib.util, fastconv.kernels; print(importlib.util.find_spec('kernels') is None)"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"


def test_reference_has_the_public_signatures():
    for module in (fastconv, fastconv.grad):
        for name in dir(module):
            fn = getattr(module, name)
            if inspect.isfunction(fn) and not name.startswith("_") and fn.__module__.startswith("fastconv.") and hasattr(fastconv.reference, name):
                assert inspect.signature(fn) == inspect.signature(getattr(fastconv.reference, name)), name


# torch.nn.functional's documented parameter lists (several are builtins or
# dispatch wrappers that carry no Python signature to read).
TORCH_PARAMETERS = {
    "conv2d": ["input", "weight", "bias", "stride", "padding", "dilation", "groups"],
    "conv_transpose2d": ["input", "weight", "bias", "stride", "padding", "output_padding", "groups", "dilation"],
    "avg_pool2d": ["input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override"],
    "max_pool2d": ["input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"],
    "max_unpool2d": ["input", "indices", "kernel_size", "stride", "padding", "output_size"],
    "lp_pool2d": ["input", "norm_type", "kernel_size", "stride", "ceil_mode"],
    "adaptive_avg_pool2d": ["input", "output_size"],
    "adaptive_max_pool2d": ["input", "output_size", "return_indices"],
}


def test_torch_parameter_names():
    for name, theirs in TORCH_PARAMETERS.items():
        assert list(inspect.signature(getattr(fastconv, name)).parameters) == theirs, name
