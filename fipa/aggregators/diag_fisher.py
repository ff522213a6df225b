"""Fisher merging with the clients' diagonal GGN (docs/method.md, "Diagonal baseline")."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fipa.aggregators.base import AGGREGATORS, Aggregator, ServerLRParams, client_weights
from fipa.curvature_request import CurvatureRequest, CurvatureSampling
from fipa.keys import key


@dataclass
class DiagFisherParams(CurvatureSampling, ServerLRParams):
    """Fisher merging's options beside the step size and the curvature keys."""

    eps: float = key(1e-8, "added to the summed diagonal Fisher: sum_m w_m F_mj + eps", ge=0)


@AGGREGATORS.register("diag_fisher")
class DiagFisher(Aggregator):
    """update_j = sum_m w_m F_mj delta_mj / (sum_m w_m F_mj + eps)  (Fisher merging)."""

    Params = DiagFisherParams

    def curvature_request(self):
        # curvature_method auto: S stacked while it has at most 2^26 entries (every default-config
        # model), else the diagonal accumulated over bounded sample chunks (ResNet-18: J would take 57 GB)
        return CurvatureRequest.of("diag", self.params)

    def step(self, theta, updates, state, ctx):
        w = client_weights(updates).to(theta.dtype)
        num = torch.zeros_like(theta)
        den = torch.zeros_like(theta)
        for wm, u in zip(w, updates, strict=True):
            num.addcmul_(u.diag, u.delta, value=float(wm))
            den.add_(u.diag, alpha=float(wm))
        return theta + self.params.server_lr * num / (den + self.params.eps)
