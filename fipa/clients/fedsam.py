"""FedSAM: sharpness-aware local training (Qu et al. 2022; Caldarola et al. 2022)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fipa.clients.base import CLIENT_METHODS, ClientMethod
from fipa.keys import key


@dataclass
class FedSAMParams:
    """FedSAM's option."""

    rho: float = key(0.05, "radius of the sharpness-aware perturbation (0: plain local training)", ge=0)


@CLIENT_METHODS.register("fedsam")
class FedSAM(ClientMethod):
    """Local SAM (Foret et al. 2021) as in FedSAM (Qu et al. 2022; Caldarola et al. 2022).

    eps = rho g(w) / ||g(w)||;  the optimizer steps from w with g(w + eps).
    rho = 0 gives eps = 0 exactly, so the step is plain local training bit for bit.
    """

    Params = FedSAMParams

    def direction(self, grad_fn, theta, state, ctx):
        grad, loss = grad_fn(theta)
        # ascent to the worst point of the rho-ball (first-order): w + rho g / ||g||, per client
        norm = grad.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(grad.dtype).tiny)
        sharp, _ = grad_fn(theta.detach() + self.params.rho * grad / norm)
        return sharp, loss
