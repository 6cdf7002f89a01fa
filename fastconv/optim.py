"""Optimisers with torch.optim's update rules, over fastconv.nn Parameters, and
single-file checkpoints of a model and its optimiser."""

from __future__ import annotations

import numpy as np


class Optimizer:
    STATE_NAMES: tuple[str, ...] = ()  # the per-parameter state a subclass keeps (checked on load if named)

    def __init__(self, params, lr):
        self.params = list(params)
        if not self.params:
            raise ValueError("optimizer got an empty parameter list")
        if not lr > 0:
            raise ValueError(f"lr must be positive, got {lr}")
        self.lr = lr
        self.state: dict[int, dict[str, np.ndarray]] = {}
        self.steps = 0

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def _gradient(self, p, weight_decay):
        return p.grad if not weight_decay else p.grad + weight_decay * p.data

    def state_dict(self) -> dict[str, np.ndarray]:
        """Flat arrays by name: "steps" and "<param index>.<buffer>"."""
        out = {"steps": np.array(self.steps)}
        for i, buffers in self.state.items():
            for name, value in buffers.items():
                out[f"{i}.{name}"] = value.copy()
        return out

    def load_state_dict(self, state: dict) -> None:
        self.steps = int(state["steps"])
        self.state = {}
        for key, value in state.items():
            if key == "steps":
                continue
            i, name = key.split(".", 1)
            i = int(i)
            if self.STATE_NAMES and name not in self.STATE_NAMES:
                raise ValueError(f"optimizer state {key!r} is not {type(self).__name__}'s, which keeps {self.STATE_NAMES} per parameter")
            if i >= len(self.params) or np.shape(value) != self.params[i].shape:
                raise ValueError(f"optimizer state {key!r} does not match parameter {i} of this optimizer")
            self.state.setdefault(i, {})[name] = np.array(value, dtype=self.params[i].data.dtype)


class SGD(Optimizer):
    """torch.optim.SGD: g = grad + weight_decay * p; with momentum, a buffer
    b = momentum * b + (1 - dampening) * g (b = g on the first step), and the step
    uses b (or g + momentum * b with nesterov)."""

    STATE_NAMES = ("momentum_buffer",)

    def __init__(self, params, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
        super().__init__(params, lr)
        if momentum < 0 or weight_decay < 0:
            raise ValueError(f"momentum and weight_decay must be non-negative, got {momentum}, {weight_decay}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("nesterov momentum requires a momentum and zero dampening")
        self.momentum, self.dampening, self.weight_decay, self.nesterov = momentum, dampening, weight_decay, nesterov

    def step(self) -> None:
        self.steps += 1
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            g = self._gradient(p, self.weight_decay)
            if self.momentum:
                buffers = self.state.setdefault(i, {})
                if "momentum_buffer" not in buffers:
                    buffers["momentum_buffer"] = np.array(g, copy=True)
                else:
                    buffers["momentum_buffer"] = self.momentum * buffers["momentum_buffer"] + (1 - self.dampening) * g
                g = g + self.momentum * buffers["momentum_buffer"] if self.nesterov else buffers["momentum_buffer"]
            p.data -= (self.lr * g).astype(p.data.dtype, copy=False)


class Adam(Optimizer):
    """torch.optim.Adam (no amsgrad): bias-corrected first and second moments."""

    STATE_NAMES = ("exp_avg", "exp_avg_sq")

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params, lr)
        if not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"betas must be in [0, 1), got {betas}")
        self.betas, self.eps, self.weight_decay = betas, eps, weight_decay

    def step(self) -> None:
        self.steps += 1
        b1, b2 = self.betas
        correction1 = 1 - b1**self.steps
        correction2 = 1 - b2**self.steps
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            g = self._gradient(p, self.weight_decay)
            buffers = self.state.setdefault(i, {})
            m = buffers.get("exp_avg", np.zeros_like(p.data))
            v = buffers.get("exp_avg_sq", np.zeros_like(p.data))
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            buffers["exp_avg"], buffers["exp_avg_sq"] = m, v
            denom = np.sqrt(v) / np.sqrt(correction2) + self.eps
            p.data -= ((self.lr / correction1) * m / denom).astype(p.data.dtype, copy=False)


def save(path, model, optimizer=None) -> None:
    """Write a model's state_dict (and an optimiser's) to one .npz file."""
    arrays = {f"model/{k}": v for k, v in model.state_dict().items()}
    if optimizer is not None:
        arrays.update({f"optimizer/{k}": v for k, v in optimizer.state_dict().items()})
    np.savez(path, **arrays)


def load(path, model, optimizer=None) -> None:
    """Read a checkpoint written by save(); a key the model does not have, or lacks,
    is an error naming it."""
    with np.load(path) as data:
        model.load_state_dict({k[len("model/"):]: data[k] for k in data.files if k.startswith("model/")})
        if optimizer is not None:
            state = {k[len("optimizer/"):]: data[k] for k in data.files if k.startswith("optimizer/")}
            if not state:
                raise KeyError(f"{path} holds no optimizer state")
            optimizer.load_state_dict(state)
