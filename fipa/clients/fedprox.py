"""FedProx: local training with a proximal term (Li et al. 2020)."""

from __future__ import annotations

from dataclasses import dataclass

from fipa.clients.base import CLIENT_METHODS, ClientMethod
from fipa.keys import key


@dataclass
class FedProxParams:
    mu: float = key(0.01, "weight of the proximal term (mu/2) ||theta - theta^k||^2 (Li et al. 2020)", ge=0)


@CLIENT_METHODS.register("fedprox")
class FedProx(ClientMethod):
    """Local loss + (mu/2) ||theta - theta^k||^2 (Li et al. 2020)."""

    Params = FedProxParams

    def extra_loss(self, flat, theta0, state):
        if self.params.mu == 0:
            return None
        return 0.5 * self.params.mu * (flat - theta0).pow(2).sum()
