"""Nonlinear function regression: named target functions on boxes, MLP models, test MSE."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from fipa.keys import key
from fipa.losses import mean_loss
from fipa.params import call
from fipa.partition import PartitionInput
from fipa.registry import Registry
from fipa.tasks.base import TASKS, Batch, Task


@dataclass(frozen=True)
class Target:
    """A function R^d -> R on the box ``bounds``."""

    fn: Callable[[torch.Tensor], torch.Tensor]  # [n, d] -> [n]
    bounds: tuple[tuple[float, float], ...]


TARGETS: Registry[Target] = Registry("target")


def _gramacy_lee(x: torch.Tensor) -> torch.Tensor:
    # Gramacy & Lee (2012): sin(10 pi x) / (2x) + (x - 1)^4 on [0.5, 2.5]
    x = x[:, 0]
    return torch.sin(10 * math.pi * x) / (2 * x) + (x - 1) ** 4


def _schaffer(x: torch.Tensor) -> torch.Tensor:
    # Schaffer N.2: 0.5 + (sin^2(x^2 - y^2) - 0.5) / (1 + 0.001 (x^2 + y^2))^2
    a, b = x[:, 0] ** 2, x[:, 1] ** 2
    return 0.5 + (torch.sin(a - b) ** 2 - 0.5) / (1 + 0.001 * (a + b)) ** 2


def _multiscale_sine(x: torch.Tensor) -> torch.Tensor:
    # sum of sines at scales 1, 1/3, 1/8 on [-1, 1]
    x = x[:, 0]
    return (torch.sin(math.pi * x) + 0.5 * torch.sin(3 * math.pi * x)
            + 0.25 * torch.sin(8 * math.pi * x))


TARGETS.register("gramacy_lee")(Target(_gramacy_lee, ((0.5, 2.5),)))
TARGETS.register("schaffer")(Target(_schaffer, ((-2.0, 2.0), (-2.0, 2.0))))
TARGETS.register("multiscale_sine")(Target(_multiscale_sine, ((-1.0, 1.0),)))

ACTIVATIONS: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "relu": nn.ReLU, "gelu": nn.GELU,
                                           "silu": nn.SiLU}


@dataclass
class RegressionParams:
    """A target from TARGETS, n_train samples drawn uniformly, an MLP; test MSE on a dense grid."""

    target: str = key("multiscale_sine", "the function: `multiscale_sine`, `gramacy_lee` or `schaffer` (2-D)")
    n_train: int = key(256, "training samples, drawn uniformly on the target's box", ge=1)
    test_points: int = key(2000, "test grid points; the 2-D grid uses its square root per axis", ge=2)
    noise: float = key(0.0, "standard deviation of Gaussian noise on the training targets (0: none)", ge=0)
    hidden: list[int] = key([32, 32], "hidden layer widths of the MLP")
    activation: str = key("tanh", "`tanh`, `relu`, `gelu` or `silu`")

    def check(self):
        out = TARGETS.name_problems(self.target, "target")
        if self.activation not in ACTIVATIONS:
            out.append(("activation", f"choose one of {', '.join(ACTIVATIONS)}"))
        if any(h < 1 for h in self.hidden):
            out.append(("hidden", f"layer widths must be >= 1, got {self.hidden}"))
        return out


def mlp(sizes: list[int], activation: type[nn.Module]) -> nn.Sequential:
    """Fully connected net sizes[0] -> ... -> sizes[-1], activation between layers."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


def test_grid(bounds: tuple[tuple[float, float], ...], points: int, dtype) -> torch.Tensor:
    """Dense tensor grid over the box: [points, d] (about ``points`` in total)."""
    per_axis = points if len(bounds) == 1 else max(2, round(points ** (1 / len(bounds))))
    axes = [torch.linspace(lo, hi, per_axis, dtype=dtype) for lo, hi in bounds]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, len(bounds))


@TASKS.register("regression")
class Regression(Task):
    """Fit y = f(x) + noise with an MLP; inputs are rescaled to [-1, 1]^d for the network."""

    Params = RegressionParams
    loss_kind = "mse"
    sample_step_seconds = 4e-6  # a 2 x 32 MLP's forward and backward per sample (2 cores)

    @classmethod
    def catalog(cls):
        return {"regression targets (task.target)": TARGETS}
    resources = {"mem_mb": 1000, "runtime": 20}  # per job; see Task.resources
    metrics = {"test_mse": "min"}
    primary_metric = "test_mse"
    # ``outputs`` broadcasts over a leading client axis (x [K, n, d], a stacked model twin
    # from fipa.vectorized.stacked_model): the vectorized path then needs no vmap
    stacks_clients = True

    @classmethod
    def sample_count(cls, params) -> int:
        return params.n_train

    def __init__(self, params: RegressionParams, seed: int, dtype: torch.dtype) -> None:
        super().__init__(params, seed, dtype)
        self.target = TARGETS.get(params.target, key="task.target")
        lo = torch.tensor([b[0] for b in self.target.bounds], dtype=dtype)
        hi = torch.tensor([b[1] for b in self.target.bounds], dtype=dtype)
        self._lo, self._span = lo, hi - lo
        g = torch.Generator().manual_seed(seed * 7919 + 17)
        d = len(self.target.bounds)
        self.x_train = lo + (hi - lo) * torch.rand(params.n_train, d, generator=g, dtype=dtype)
        y = self.target.fn(self.x_train)
        if params.noise > 0:
            y = y + params.noise * torch.randn(y.shape, generator=g, dtype=dtype)
        self.y_train = y[:, None]
        self.x_test = test_grid(self.target.bounds, params.test_points, dtype)
        self.y_test = self.target.fn(self.x_test)[:, None]

    def partition_input(self) -> PartitionInput:
        return PartitionInput(n=len(self.x_train), coords=self.x_train.double().numpy(),
                              bounds=list(self.target.bounds))

    def client_data(self, indices: np.ndarray) -> Batch:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return {"x": self.x_train[idx], "y": self.y_train[idx]}

    def build_model(self) -> nn.Module:
        p = self.params
        sizes = [len(self.target.bounds), *p.hidden, 1]
        return mlp(sizes, ACTIVATIONS[p.activation]).to(self.dtype)

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        """Map the box onto [-1, 1]^d: [n, d] -> [n, d]."""
        return 2 * (x - self._lo) / self._span - 1

    def outputs(self, model, params, batch):
        return call(model, params, self.scale(batch["x"]))

    def evaluate(self, model, params) -> dict[str, float]:
        with torch.no_grad():
            pred = functional_call(model, params, (self.scale(self.x_test),))
            mse = float(mean_loss("mse", pred, self.y_test))
        return {"test_loss": mse, "test_mse": mse}

    def describe(self) -> str:
        return f"regression[{self.params.target}]"
