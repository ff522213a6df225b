"""Model buffers (BatchNorm running statistics) across a round: broadcast, local update, average.

The flat parameter vector theta [P] is what aggregators see. A model with buffers carries a
second, non-trainable state b (running means and variances, batch counters). Each round
every participating client starts from the global b, updates it while training in train
mode, and uploads it; the server replaces b by the sample-weighted mean

    b^{k+1} = sum_m n_m b_m / sum_m n_m        (FedAvg of the statistics, whatever the aggregator)

Outside a client's local training the module's own buffers hold the global b, and the
module stays in eval mode, so evaluation and curvature use the running statistics.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

Buffers = dict[str, torch.Tensor]


def running_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    """The module's buffers that training updates: running statistics of normalization layers
    (BatchNorm with ``track_running_stats``), by name. Constant buffers (a PINN's input box)
    are not state and are left out."""
    return {f"{prefix}.{name}" if prefix else name: buf
            for prefix, mod in model.named_modules()
            if isinstance(mod, nn.modules.batchnorm._NormBase) and mod.track_running_stats
            for name, buf in mod.named_buffers(recurse=False)}


def has_buffers(model: nn.Module) -> bool:
    return bool(running_buffers(model))


def read(model: nn.Module) -> Buffers:
    """Copies of the module's running statistics, keyed by name (empty for models without)."""
    return {n: b.detach().clone() for n, b in running_buffers(model).items()}


def load(model: nn.Module, buffers: Buffers) -> None:
    """Write ``buffers`` into the module's running statistics, in place (names must match)."""
    own = running_buffers(model)
    with torch.no_grad():
        for name, value in buffers.items():
            own[name].copy_(value)


def average(states: list[Buffers], weights: list[int]) -> Buffers:
    """Sample-weighted mean of the clients' buffers; integer counters are rounded."""
    total = float(sum(weights))
    out = {}
    for name, first in states[0].items():
        mean = sum(s[name].double() * (w / total) for s, w in zip(states, weights, strict=True))
        out[name] = mean.round().to(first.dtype) if not first.is_floating_point() else mean.to(first.dtype)
    return out


@contextmanager
def local_training(model: nn.Module) -> Iterator[dict[str, Buffers]]:
    """Train mode for one client's local steps, from the global buffers and back to them.

    Yields a dict whose ``"client"`` entry holds the client's updated buffers on exit.
    """
    start = read(model)
    upload: dict[str, Buffers] = {}
    model.train()
    try:
        yield upload
        upload["client"] = read(model)
    finally:
        load(model, start)
        model.eval()
