"""The aggregator's base: a client's upload, the server step's contract, the registry.

Every aggregator maps the broadcast model theta^k [P] and the clients' uploads to
theta^{k+1} [P]. Client m's weight is w_m = N_m / sum_j N_j over the round's clients.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from fipa.curvature_request import CurvatureRequest
from fipa.keys import key
from fipa.registry import Registry
from fipa.round_context import RoundContext


@dataclass
class ClientUpdate:
    """One client's upload: delta_m = theta_m - theta^k [P], its sample count, curvature."""

    delta: torch.Tensor
    num_samples: int
    factor: torch.Tensor | None = None  # A_m [r, P], H_m ~= A_m^T A_m
    diag: torch.Tensor | None = None  # diag(H_m) [P]
    buffers: dict[str, torch.Tensor] | None = None  # BatchNorm statistics after local training
    client: int = -1  # the client's index (set by the round loop; keys FIPA's curvature memory)
    # the client method's own upload to its server side (SCAFFOLD's Delta c_i [P]), read by
    # ClientMethod.end_round, not by aggregators
    method_upload: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def uplink_numbers(self) -> int:
        """Numbers sent: P for the delta, + r(P + 1) for the eigenpairs (V_m, sigma_m) that
        A_m = diag(sqrt sigma_m) V_m^T encodes, + P for a diagonal, + the model's buffers, + the
        client method's upload."""
        n = self.delta.numel() + sum(b.numel() for b in (self.buffers or {}).values())
        n += sum(v.numel() for v in self.method_upload.values())
        if self.factor is not None:
            n += self.factor.numel() + self.factor.shape[0]
        if self.diag is not None:
            n += self.diag.numel()
        return n


State = dict[str, torch.Tensor]


class Aggregator:
    """Base class: FedAvg-style weights and an empty server state.

    What a subclass declares (the round loop reads it; nothing is probed):
    ``needs_loss_probe``: the round's :class:`~fipa.round_context.RoundContext` carries a
    ``probe`` of the round's clients' loss, to measure the actual loss at candidate steps
    (trust-region damping); ``curvature_request()``: the curvature clients upload.
    """

    Params: ClassVar[type]

    def __init__(self, params: Any) -> None:
        self.params = params

    @property
    def needs_loss_probe(self) -> bool:
        """Whether ``step`` reads ``ctx.probe`` (the loop then builds one each round)."""
        return False

    @classmethod
    def for_task(cls, params: Any, loss_kind: str) -> Aggregator:
        """The aggregator of a run whose task's loss is ``loss_kind`` ("mse" or "ce"); a rule whose
        choice depends on the loss (FIPA's ``step_bound: auto``) resolves it here."""
        return cls(params)

    def curvature_request(self) -> CurvatureRequest | None:
        """What curvature the clients must upload (None: only deltas)."""
        return None

    def init_state(self, theta: torch.Tensor) -> State:
        return {}

    def step(self, theta: torch.Tensor, updates: list[ClientUpdate], state: State, ctx: RoundContext
             ) -> torch.Tensor:
        """theta^k [P], the round's uploads -> theta^{k+1} [P]; may update ``state`` in place.
        ``ctx``: the round's number, and its loss probe where ``needs_loss_probe``."""
        raise NotImplementedError

    def stats(self, state: State) -> dict[str, float]:
        """Scalars of the server state recorded per evaluated round (metrics.csv columns, in
        this order) and at the end (final.json ``aggregator_stats``); none by default."""
        return {}


AGGREGATORS: Registry[type[Aggregator]] = Registry("aggregator", discover="fipa.aggregators")
# Flower's strategies as aggregators (fipa/flower/aggregator.py): announced here, imported on first
# use, so that flwr (the optional extra `flower`) is needed only by configs that name it
AGGREGATORS.register_lazy("flower", "fipa.flower.aggregator")


def client_weights(updates: list[ClientUpdate]) -> torch.Tensor:
    """w_m = N_m / sum_j N_j, float64 [M]."""
    n = torch.tensor([u.num_samples for u in updates], dtype=torch.float64)
    return n / n.sum()


def mean_delta(updates: list[ClientUpdate]) -> torch.Tensor:
    """dbar = sum_m w_m delta_m [P]."""
    w = client_weights(updates).to(updates[0].delta.dtype)
    out = torch.zeros_like(updates[0].delta)
    for wm, u in zip(w, updates, strict=True):
        out.add_(u.delta, alpha=float(wm))
    return out


@dataclass
class ServerLRParams:
    """The server step size of the averaging rules (and FIPA's)."""

    server_lr: float = key(1.0, "server step size eta_s: theta^{k+1} = theta^k + eta_s x the aggregated "
                           "update", gt=0)
