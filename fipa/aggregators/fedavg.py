"""Averaging: FedAvg and its server momentum (FedAvgM)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fipa.aggregators.base import AGGREGATORS, Aggregator, ServerLRParams, mean_delta
from fipa.keys import key


@AGGREGATORS.register("fedavg")
class FedAvg(Aggregator):
    """theta^{k+1} = theta^k + eta_s dbar (McMahan et al. 2017; eta_s = 1 is plain FedAvg)."""

    Params = ServerLRParams

    def step(self, theta, updates, state, ctx):
        return theta + self.params.server_lr * mean_delta(updates)


@dataclass
class FedAvgMParams(ServerLRParams):
    """FedAvgM's server momentum beside the step size."""

    momentum: float = key(0.9, "server momentum beta: v <- beta v + dbar", ge=0, lt=1)


@AGGREGATORS.register("fedavgm")
class FedAvgM(Aggregator):
    """Server momentum (Hsu et al. 2019): v <- beta v + dbar; theta <- theta + eta_s v."""

    Params = FedAvgMParams

    def init_state(self, theta):
        return {"v": torch.zeros_like(theta)}

    def step(self, theta, updates, state, ctx):
        state["v"] = self.params.momentum * state["v"] + mean_delta(updates)
        return theta + self.params.server_lr * state["v"]
