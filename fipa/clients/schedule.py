"""A client's round of local work: its minibatch plans and its optimizer."""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F

from fipa.client_config import ClientConfig
from fipa.optim import OPTIMIZERS, Optimizer


def batch_size(n: int, cfg: ClientConfig) -> int:
    """Minibatch size on n samples: ``batch_size`` capped at n, or n (full batch)."""
    return n if cfg.batch_size is None else min(cfg.batch_size, n)


def steps_per_round(n: int, cfg: ClientConfig) -> int:
    """Optimizer steps of one round of local work on n samples: ``local_steps``, or
    ``local_epochs`` passes of ceil(n / batch) minibatches."""
    if cfg.local_steps is not None:
        return cfg.local_steps
    return cfg.local_epochs * -(-n // batch_size(n, cfg))


def epoch_plans(n: int, cfg: ClientConfig, gen: torch.Generator) -> Iterator[torch.Tensor]:
    """A client's minibatch indices for one round, epoch by epoch: [batches, bs] each, -1
    padding a short last batch, cut at ``steps_per_round`` in all.

    The one planner of both training paths. One permutation of ``gen`` per started epoch
    (none for full batches), drawn only when its epoch begins: the sequential path's draws
    interleave with the task's data augmentation exactly as training proceeds.
    """
    bs, steps = batch_size(n, cfg), steps_per_round(n, cfg)
    per_epoch = -(-n // bs)
    for start in range(0, steps, per_epoch):
        perm = torch.randperm(n, generator=gen) if bs < n else torch.arange(n)
        yield F.pad(perm, (0, per_epoch * bs - n), value=-1).reshape(per_epoch, bs)[: steps - start]


def minibatches(n: int, cfg: ClientConfig, gen: torch.Generator) -> Iterator[torch.Tensor]:
    """Index batches [<= bs] for one round of local work: shuffled epochs, or ``local_steps`` steps."""
    for epoch in epoch_plans(n, cfg, gen):
        for row in epoch:
            yield row[row >= 0]


def batch_plan(n: int, cfg: ClientConfig, gen: torch.Generator) -> torch.Tensor:
    """The whole round's plan [T, bs] at once (the vectorized path), -1 padded."""
    return torch.cat(list(epoch_plans(n, cfg, gen)))


def make_optimizer(cfg: ClientConfig, rnd: int = 1) -> Optimizer:
    """The functional optimizer named by ``client.optimizer`` (fipa/optim.py) for round ``rnd``
    (from 1): its learning rate is lr * lr_decay^(rnd - 1)."""
    return OPTIMIZERS.get(cfg.optimizer, key="client.optimizer")(
        lr=cfg.lr * cfg.lr_decay ** (rnd - 1), momentum=cfg.momentum, weight_decay=cfg.weight_decay)
