"""Adaptive server optimizers (Reddi et al. 2021): FedAdam, FedYogi, FedAdagrad."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fipa.aggregators.base import AGGREGATORS, Aggregator, mean_delta
from fipa.keys import key


@dataclass
class AdaptiveParams:
    """Reddi et al. (2021), "Adaptive Federated Optimization", Algorithm 2."""

    server_lr: float = key(0.01, "server step size eta", gt=0)
    beta1: float = key(0.9, "decay of the first moment m of dbar", ge=0, lt=1)
    beta2: float = key(0.99, "decay of the second moment v (fedadam, fedyogi; fedadagrad sums)", ge=0, lt=1)
    tau: float = key(1e-3, "adaptivity: eta m / (sqrt v + tau); v starts at tau^2", gt=0)


class FedOpt(Aggregator):
    """m <- b1 m + (1-b1) dbar; v <- rule(v, dbar^2); theta <- theta + eta m / (sqrt v + tau).

    The three rules differ only in ``second_moment``.
    """

    Params = AdaptiveParams

    def init_state(self, theta):
        # v_{-1} = tau^2 as in Reddi et al.; m_{-1} = 0
        return {"m": torch.zeros_like(theta), "v": torch.full_like(theta, self.params.tau**2)}

    def second_moment(self, v: torch.Tensor, d2: torch.Tensor) -> torch.Tensor:
        """The rule's v [P] from the last v and dbar^2 [P]."""
        raise NotImplementedError

    def step(self, theta, updates, state, ctx):
        p = self.params
        d = mean_delta(updates)
        state["m"] = p.beta1 * state["m"] + (1 - p.beta1) * d
        state["v"] = self.second_moment(state["v"], d * d)
        return theta + p.server_lr * state["m"] / (state["v"].sqrt() + p.tau)


@AGGREGATORS.register("fedadam")
class FedAdam(FedOpt):
    """v <- b2 v + (1 - b2) dbar^2."""

    def second_moment(self, v, d2):
        return self.params.beta2 * v + (1 - self.params.beta2) * d2


@AGGREGATORS.register("fedyogi")
class FedYogi(FedOpt):
    """v <- v - (1 - b2) dbar^2 sign(v - dbar^2)."""

    def second_moment(self, v, d2):
        return v - (1 - self.params.beta2) * d2 * torch.sign(v - d2)


@AGGREGATORS.register("fedadagrad")
class FedAdagrad(FedOpt):
    """v <- v + dbar^2."""

    def second_moment(self, v, d2):
        return v + d2
