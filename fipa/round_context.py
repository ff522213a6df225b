"""What one round hands to the aggregator and to the client method: its number, state and probes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

ClientState = dict[str, torch.Tensor]


@dataclass
class LossProbe:
    """The round's clients' weighted task loss at a candidate model: one scalar uplink per client.

    ``loss(theta)`` [P] -> sum_m w_m L_m(theta), L_m client m's mean task loss on its full local
    data (one forward pass per client, ``clients`` passes per call). ``hessian_scale``: the
    Hessian of that loss in the outputs is ``hessian_scale`` times the L_i of the uploaded
    curvature factors (2 for squared error, whose factors are the GGN of half of it; 1 for
    cross-entropy), so the true GGN of sum_m w_m L_m is hessian_scale * H.
    """

    loss: Callable[[torch.Tensor], float]
    clients: int
    hessian_scale: float = 1.0


@dataclass(frozen=True)
class RoundContext:
    """Round k's information, read (never changed) by every hook that needs it.

    ``round``: k, from 1 (the client learning-rate schedule lr * lr_decay^(k - 1)).
    ``server``: the client method's server-side state at the start of the round (SCAFFOLD's
    c, FedDyn's h): P-vectors [P], or [M, P] when the rows of several runs train in one
    stacked call (row m: its own run's state). ``probe``: the round's clients' loss at a
    candidate model, present only where the aggregator declares ``needs_loss_probe``.
    """

    round: int = 1
    server: ClientState = field(default_factory=dict)
    probe: LossProbe | None = None
