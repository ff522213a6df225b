"""FedDyn: dynamic regularization (Acar et al. 2021)."""

from __future__ import annotations

from dataclasses import dataclass

from fipa.clients.base import CLIENT_METHODS, ClientMethod, summed
from fipa.keys import key


@dataclass
class FedDynParams:
    """FedDyn's options (Acar et al. 2021)."""

    alpha: float = key(0.01, "weight of the dynamic regularizer", gt=0)
    server_correction: bool = key(
        True, "apply the server's h-term (theta <- theta - h / alpha) after any aggregator")


@CLIENT_METHODS.register("feddyn")
class FedDyn(ClientMethod):
    """Dynamic regularization (Acar et al. 2021, Algorithm 1).

    Client k at round t minimizes
        L_k(theta) - <g_k, theta> + (alpha/2) ||theta - theta^{t-1}||^2,
    g_k = grad L_k(theta_k^{t-1}) (zero at first), then updates (first-order condition)
        g_k <- g_k - alpha (theta_k^t - theta^{t-1}).
    Server: h <- h - (alpha/N) sum_{k in P_t} (theta_k^t - theta^{t-1});
            theta^t = aggregate(theta_k^t) - h / alpha   (the paper aggregates by a plain mean;
    here the configured aggregator does, FedAvg weighting by sample counts).
    The server's sum is over the uploaded deltas: FedDyn sends nothing else.
    """

    Params = FedDynParams
    client_state_keys = ("grad",)
    server_state_keys = ("h",)
    # stacked with other runs, the round's sums change in the last bits (relative 1e-7 on the
    # regression oracle, benchmarks/core_oracle.py): the published grid's runs of this method
    # were made alone, and reproduce bit for bit only alone
    alone_reason = "its published runs were trained alone (stacking changes their last bits)"

    def extra_loss(self, flat, theta0, state):
        return -(state["grad"] * flat).sum() + 0.5 * self.params.alpha * (flat - theta0).pow(2).sum()

    def after_local(self, theta0, theta, steps, state, ctx):
        delta = theta - theta0
        return {**state, "grad": state["grad"] - self.params.alpha * delta}, {}

    def end_round(self, theta, updates, ctx, num_clients):
        alpha = self.params.alpha
        # h <- h - (alpha / N) sum_k (theta_k - theta^{t-1}); the deltas are the round's uploads
        h = ctx.server["h"] - alpha / num_clients * summed([u.delta for u in updates])
        server = {**ctx.server, "h": h}
        return (theta - h / alpha if self.params.server_correction else theta), server
