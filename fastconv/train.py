"""`python -m fastconv train`: LeNet-5 on scikit-learn's bundled handwritten digits
(1797 8x8 images, no download), upsampled to 32x32, trained on CPU with fastconv.

Prints a progress bar per epoch with loss, accuracy and images/s, then the
held-out test accuracy. `--bench-step` instead times one training step (batch 64)
against the same network in PyTorch, interleaved in this process.
"""

from __future__ import annotations

import argparse
import math
import os
import time

import numba
import numpy as np

from fastconv import nn, optim


def lenet5(dtype=np.float32, seed=0) -> nn.Sequential:
    """LeNet-5 for 1x32x32 input; its state_dict keys match the same torch.nn.Sequential."""
    rng = np.random.default_rng(seed)
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, dtype=dtype, seed=rng), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5, dtype=dtype, seed=rng), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(400, 120, dtype=dtype, seed=rng), nn.ReLU(),
        nn.Linear(120, 84, dtype=dtype, seed=rng), nn.ReLU(),
        nn.Linear(84, 10, dtype=dtype, seed=rng),
    )


def digits(test_fraction=0.2, seed=0, dtype=np.float32):
    """scikit-learn's digits as (N, 1, 32, 32) images in [0, 1], split train/test."""
    from scipy.ndimage import zoom
    from sklearn.datasets import load_digits

    data = load_digits()
    images = zoom(data.images / 16.0, (1, 4, 4), order=1).astype(dtype)[:, None]  # 8x8 -> 32x32
    labels = data.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(labels))
    cut = int(len(labels) * (1 - test_fraction))
    return (images[order[:cut]], labels[order[:cut]]), (images[order[cut:]], labels[order[cut:]])


def accuracy(model, images, labels, batch=256) -> float:
    model.eval()
    hits = sum(int((model(images[i : i + batch]).argmax(axis=1) == labels[i : i + batch]).sum()) for i in range(0, len(labels), batch))
    model.train()
    return hits / len(labels)


def train_step(model, loss_fn, optimizer, x, y) -> tuple[float, np.ndarray]:
    optimizer.zero_grad()
    logits = model(x)
    loss = loss_fn(logits, y)
    model.backward(loss_fn.backward())
    optimizer.step()
    return loss, logits


def _positive(kind):
    """An argparse type: a positive (and finite) value of `kind`, else a usage error."""

    def parse(text):
        value = kind(text)
        if not 0 < value < math.inf:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m fastconv train", description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=_positive(int), default=12)
    p.add_argument("--batch-size", type=_positive(int), default=64)
    p.add_argument("--lr", type=_positive(float), default=2e-3)
    p.add_argument("--threads", type=_positive(int), default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save", help="write the trained model and optimiser to this .npz checkpoint (.npz is added)")
    p.add_argument("--bench-step", action="store_true", help="time one training step against PyTorch instead")
    args = p.parse_args(argv)
    if args.threads is not None and args.threads > numba.config.NUMBA_NUM_THREADS:
        p.error(f"argument --threads: at most {numba.config.NUMBA_NUM_THREADS} here, got {args.threads}")
    if args.save:
        if not args.save.endswith(".npz"):
            args.save += ".npz"  # as np.savez names it
        folder = os.path.dirname(os.path.abspath(args.save))
        if not os.path.isdir(folder):
            p.error(f"argument --save: no folder {folder}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    import fastconv

    if args.bench_step:
        import torch  # noqa: F401  before fastconv's threads start (see fastconv.torch)
    if args.threads:
        fastconv.set_num_threads(args.threads)
    if args.bench_step:
        return bench_step(args.batch_size)
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console()
    (train_x, train_y), (test_x, test_y) = digits(seed=args.seed)
    model = lenet5(seed=args.seed)
    loss_fn = nn.CrossEntropyLoss()
    optimizer = optim.Adam(model.parameters(), lr=args.lr)
    rng = np.random.default_rng(args.seed)
    start = time.perf_counter()
    columns = [TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[stats]}"), TimeElapsedColumn()]
    with Progress(*columns, console=console) as progress:
        for epoch in range(1, args.epochs + 1):
            order = rng.permutation(len(train_y))
            task = progress.add_task(f"epoch {epoch:2d}/{args.epochs}", total=len(order), stats="")
            seen = hits = 0
            total_loss = 0.0
            t0 = time.perf_counter()
            for i in range(0, len(order), args.batch_size):
                idx = order[i : i + args.batch_size]
                loss, logits = train_step(model, loss_fn, optimizer, train_x[idx], train_y[idx])
                seen += len(idx)
                hits += int((logits.argmax(axis=1) == train_y[idx]).sum())
                total_loss += loss * len(idx)
                rate = seen / (time.perf_counter() - t0)
                progress.update(task, advance=len(idx), stats=f"loss {total_loss / seen:.4f}  acc {hits / seen:.3f}  {rate:,.0f} img/s")
    test_acc = accuracy(model, test_x, test_y)
    console.print(f"test accuracy {test_acc:.4f} on {len(test_y)} held-out digits; trained in {time.perf_counter() - start:.1f} s")
    if args.save:
        optim.save(args.save, model, optimizer)
        console.print(f"saved model and optimizer to {args.save}")
    return 0


def torch_lenet5():
    import torch

    T = torch.nn
    return T.Sequential(
        T.Conv2d(1, 6, 5), T.ReLU(), T.MaxPool2d(2), T.Conv2d(6, 16, 5), T.ReLU(), T.MaxPool2d(2), T.Flatten(),
        T.Linear(400, 120), T.ReLU(), T.Linear(120, 84), T.ReLU(), T.Linear(84, 10),
    )


def bench_step(batch_size=64) -> int:
    """Median time of one LeNet-5 training step (forward, backward, SGD update) in
    fastconv and in PyTorch, same weights, same threads, interleaved."""
    import torch

    from fastconv.threads import get_num_threads
    from fastconv.timing import interleaved_medians

    torch.set_num_threads(get_num_threads())
    rng = np.random.default_rng(0)
    x = rng.random((batch_size, 1, 32, 32), dtype=np.float32)
    y = rng.integers(0, 10, batch_size)
    model = lenet5()
    tmodel = torch_lenet5()
    tmodel.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()})
    loss_fn, opt = nn.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    topt = torch.optim.SGD(tmodel.parameters(), lr=0.01, momentum=0.9)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)

    def torch_step():
        topt.zero_grad()
        torch.nn.functional.cross_entropy(tmodel(tx), ty).backward()
        topt.step()

    times = interleaved_medians({"fastconv": lambda: train_step(model, loss_fn, opt, x, y), "torch": torch_step}, rounds=41, budget_s=10)
    print(f"LeNet-5 training step, batch {batch_size}, {get_num_threads()} threads: fastconv {times['fastconv'] * 1e3:.2f} ms, "
          f"PyTorch {times['torch'] * 1e3:.2f} ms, speedup {times['torch'] / times['fastconv']:.2f}x")
    return 0
