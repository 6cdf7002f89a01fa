"""One training step of PyTorch models, unpatched vs patched with fastconv.torch.

    python bench/patched_step.py [--threads N]

Same model object, same weights, same optimiser; the two variants alternate in rounds
(patch, step, step, unpatch, step, step: the second step of each is timed, see
fastconv.timing) and the median of each is printed.
"""

import argparse
import statistics
import time

import torch

import fastconv
import fastconv.torch as fct
from fastconv.train import torch_lenet5

T = torch.nn


def mobilenet_blocks(width=64, blocks=4):
    """A stem and a stack of depthwise-separable blocks (depthwise 3x3, BN, ReLU,
    pointwise 1x1, BN, ReLU), average pooling and a classifier, for 3x32x32 input."""
    layers = [T.Conv2d(3, width, 3, padding=1, bias=False), T.BatchNorm2d(width), T.ReLU()]
    for b in range(blocks):
        stride = 2 if b in (1, 3) else 1
        layers += [
            T.Conv2d(width, width, 3, stride=stride, padding=1, groups=width, bias=False), T.BatchNorm2d(width), T.ReLU(),
            T.Conv2d(width, width, 1, bias=False), T.BatchNorm2d(width), T.ReLU(),
        ]
    layers += [T.AvgPool2d(8), T.Flatten(), T.Linear(width, 10)]
    return T.Sequential(*layers)


def step_times(model, x, y, rounds):
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step():
        opt.zero_grad()
        T.functional.cross_entropy(model(x), y).backward()
        opt.step()

    times = {"torch": [], "patched": []}
    for r in range(rounds + 1):
        for variant in ("torch", "patched"):
            if variant == "patched":
                fct.patch(model)
            step()
            t0 = time.perf_counter()
            step()
            if r:  # round 0 warms up (and compiles)
                times[variant].append(time.perf_counter() - t0)
            if variant == "patched":
                fct.unpatch(model)
    return {k: statistics.median(v) for k, v in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    fastconv.set_num_threads(args.threads)
    torch.manual_seed(0)
    cases = [
        ("LeNet-5, batch 64, 1x32x32", torch_lenet5(), torch.rand(64, 1, 32, 32), torch.randint(0, 10, (64,))),
        ("MobileNet-style blocks, batch 32, 3x32x32", mobilenet_blocks(), torch.rand(32, 3, 32, 32), torch.randint(0, 10, (32,))),
    ]
    for name, model, x, y in cases:
        t = step_times(model, x, y, args.rounds)
        print(f"{name}: torch {t['torch'] * 1e3:.2f} ms, patched {t['patched'] * 1e3:.2f} ms, "
              f"speedup {t['torch'] / t['patched']:.2f}x ({args.threads} threads)")


if __name__ == "__main__":
    main()
