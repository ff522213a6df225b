"""FedMedian: the coordinate-wise median of the client models, as a plugin (README, "Adding an aggregator").

Nothing in the package imports this file: a config lists it under ``plugins``, e.g.
``plugins: [examples/plugins/fedmedian.py]`` (relative to the working directory), and names the
aggregator as ``aggregator: {name: fedmedian}``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fipa.aggregators import AGGREGATORS, Aggregator, ClientUpdate, RoundContext, State
from fipa.keys import key


@dataclass
class FedMedianParams:
    """FedMedian's one key: its default, meaning and bounds (checked when a config is read)."""

    server_lr: float = key(1.0, "step length eta_s along the median delta (1: the median model itself)", gt=0)


def coordinate_median(x: torch.Tensor) -> torch.Tensor:
    """Median over the first axis, [M, P] -> [P]; for even M the mean of the two middle values
    (``torch.median`` would return the lower one)."""
    s = x.sort(dim=0).values
    m = x.shape[0]
    return (s[(m - 1) // 2] + s[m // 2]) / 2


@AGGREGATORS.register("fedmedian")
class FedMedian(Aggregator):
    """Coordinate-wise median (Yin et al. 2018): unweighted, robust to a minority of outlying clients.

        theta^{k+1}_p = theta^k_p + eta_s median_m (delta_m)_p,   delta_m = theta_m - theta^k

    With eta_s = 1 this is the median of the client models theta_m, coordinate by coordinate.
    """

    Params = FedMedianParams

    def step(self, theta: torch.Tensor, updates: list[ClientUpdate], state: State, ctx: RoundContext
             ) -> torch.Tensor:
        deltas = torch.stack([u.delta for u in updates])  # [M, P]
        return theta + self.params.server_lr * coordinate_median(deltas)
