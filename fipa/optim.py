"""Functional local optimizers on flat parameter tensors ([P], or stacked [M, P]).

torch.optim's constructors import torch._dynamo (seconds of start-up per job); these
elementwise steps follow torch.optim's update rules and work on any leading shape, which
is what vectorized training of many clients at once needs.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch

from fipa.registry import Registry

OptState = dict[str, torch.Tensor]


class Optimizer:
    """Base: ``init(theta)`` -> state; ``step(theta, grad, state)`` updates theta in place."""

    name: ClassVar[str]

    def __init__(self, lr: float, momentum: float = 0.0, weight_decay: float = 0.0,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self.betas, self.eps = betas, eps

    def init(self, theta: torch.Tensor) -> OptState:
        raise NotImplementedError

    def step(self, theta: torch.Tensor, grad: torch.Tensor, state: OptState) -> None:
        raise NotImplementedError


OPTIMIZERS: Registry[type[Optimizer]] = Registry("optimizer")


@OPTIMIZERS.register("sgd")
class SGD(Optimizer):
    """g <- g + wd theta;  b <- mu b + g (b = g at the first step);  theta <- theta - lr b."""

    def init(self, theta):
        return {"step": torch.zeros((), dtype=torch.int64), "buf": torch.zeros_like(theta)}

    def step(self, theta, grad, state):
        if self.weight_decay:
            grad = grad.add(theta, alpha=self.weight_decay)
        if self.momentum:
            buf = state["buf"]
            if int(state["step"]) == 0:
                buf.copy_(grad)
            else:
                buf.mul_(self.momentum).add_(grad)
            grad = buf
        state["step"] += 1
        theta.add_(grad, alpha=-self.lr)


@OPTIMIZERS.register("adam")
class Adam(Optimizer):
    """Kingma & Ba with bias correction, L2 weight decay added to the gradient (torch.optim.Adam).

    m <- b1 m + (1-b1) g;  v <- b2 v + (1-b2) g^2;
    theta <- theta - lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps)
    """

    def init(self, theta):
        z = torch.zeros_like(theta)
        return {"step": torch.zeros((), dtype=torch.int64), "m": z, "v": z.clone()}

    def step(self, theta, grad, state):
        b1, b2 = self.betas
        if self.weight_decay:
            grad = grad.add(theta, alpha=self.weight_decay)
        state["step"] += 1
        t = int(state["step"])
        state["m"].lerp_(grad, 1 - b1)
        state["v"].mul_(b2).addcmul_(grad, grad, value=1 - b2)
        step_size = self.lr / (1 - b1**t)
        denom = state["v"].sqrt().div_(math.sqrt(1 - b2**t)).add_(self.eps)  # one temporary
        theta.addcdiv_(state["m"], denom, value=-step_size)
