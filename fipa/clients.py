"""Client-side local training methods: a registry from config name to class.

A client starts from the broadcast theta^k [P], runs its optimizer on its own data and
returns theta_m [P]. Methods that keep per-client state across rounds (SCAFFOLD, FedDyn)
store it in a dict of tensors that the simulator checkpoints.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from fipa.config import ClientConfig
from fipa.losses import mean_loss
from fipa.params import ParamLayout
from fipa.registry import Registry
from fipa.tasks.base import Batch, Task

ClientState = dict[str, torch.Tensor]


def minibatches(n: int, cfg: ClientConfig, gen: torch.Generator) -> Iterator[torch.Tensor]:
    """Index batches for one round of local work: shuffled epochs, or ``local_steps`` steps."""
    bs = n if cfg.batch_size is None else min(cfg.batch_size, n)
    steps = cfg.local_steps if cfg.local_steps is not None else cfg.local_epochs * -(-n // bs)
    done = 0
    while done < steps:
        perm = torch.randperm(n, generator=gen) if bs < n else torch.arange(n)
        for i in range(0, n, bs):
            if done == steps:
                return
            yield perm[i : i + bs]
            done += 1


def make_optimizer(cfg: ClientConfig, params: list[torch.Tensor]) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


@dataclass
class LocalResult:
    theta: torch.Tensor  # theta_m [P]
    train_loss: float  # mean minibatch loss over the local steps
    state: ClientState


class ClientMethod:
    """Plain local training (SGD or Adam) on the task loss."""

    Params: ClassVar[type]

    def __init__(self, cfg: ClientConfig) -> None:
        self.cfg = cfg
        self.params = cfg.params

    def init_state(self, theta: torch.Tensor) -> ClientState:
        return {}

    def extra_loss(self, flat: torch.Tensor, theta0: torch.Tensor, state: ClientState) -> torch.Tensor | None:
        """A term added to the minibatch loss (FedProx proximal term and the like)."""
        return None

    def train(
        self, task: Task, model: nn.Module, layout: ParamLayout, theta0: torch.Tensor,
        data: Batch, gen: torch.Generator, state: ClientState,
    ) -> LocalResult:
        flat = theta0.clone().requires_grad_(True)
        opt = make_optimizer(self.cfg, [flat])
        n = next(iter(data.values())).shape[0]
        total, steps = 0.0, 0
        for idx in minibatches(n, self.cfg, gen):
            batch = {k: v[idx] for k, v in data.items()}
            opt.zero_grad(set_to_none=True)
            loss = mean_loss(task.loss_kind, task.outputs(model, layout.unflatten(flat), batch),
                             task.targets(batch))
            total += float(loss.detach())
            extra = self.extra_loss(flat, theta0, state)
            if extra is not None:
                loss = loss + extra
            loss.backward()
            opt.step()
            steps += 1
        return LocalResult(flat.detach(), total / max(steps, 1), state)


CLIENT_METHODS: Registry[type[ClientMethod]] = Registry("client method")


@dataclass
class LocalParams:
    """Plain local training has no extra options."""


ClientMethod.Params = LocalParams
CLIENT_METHODS.register("local")(ClientMethod)


@dataclass
class FedProxParams:
    mu: float = 0.01

    def check(self):
        return [("mu", f"must be >= 0, got {self.mu}")] if self.mu < 0 else []


@CLIENT_METHODS.register("fedprox")
class FedProx(ClientMethod):
    """Local loss + (mu/2) ||theta - theta^k||^2 (Li et al. 2020)."""

    Params = FedProxParams

    def extra_loss(self, flat, theta0, state):
        if self.params.mu == 0:
            return None
        return 0.5 * self.params.mu * (flat - theta0).pow(2).sum()
