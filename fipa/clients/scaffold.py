"""SCAFFOLD: control variates against client drift (Karimireddy et al. 2020)."""

from __future__ import annotations

from dataclasses import dataclass

from fipa.clients.base import CLIENT_METHODS, ClientMethod, summed


@dataclass
class ScaffoldParams:
    """SCAFFOLD has no options of its own (option II control variates; the global step
    size is the aggregator's ``server_lr``)."""


@CLIENT_METHODS.register("scaffold")
class Scaffold(ClientMethod):
    """Control variates (Karimireddy et al. 2020, Algorithm 1 with option II).

    Local step:  y <- y - eta_l (g_i(y) - c_i + c)         (here: the optimizer gets g - c_i + c)
    After K steps from x:  c_i+ = c_i - c + (x - y) / (K eta_l),   Delta c_i = c_i+ - c_i
    Server:      c <- c + (1/N) sum_{i in S} Delta c_i     (N = all clients)
    Each client uploads Delta c_i [P] beside its delta (twice the uplink of plain local training).
    Option II assumes plain SGD; with momentum or Adam the corrected gradient goes through
    that optimizer instead (the usual practice, no longer the paper's analysis).
    """

    Params = ScaffoldParams
    client_state_keys = ("c",)
    server_state_keys = ("c",)
    # stacked with other runs, the round's sums change in the last bits (relative 1e-7 on the
    # regression oracle, benchmarks/core_oracle.py): the published grid's runs of this method
    # were made alone, and reproduce bit for bit only alone
    alone_reason = "its published runs were trained alone (stacking changes their last bits)"

    def direction(self, grad_fn, theta, state, ctx):
        grad, loss = grad_fn(theta)
        # drift correction g - c_i + c; exactly g when c = c_i (e.g. both zero at the start)
        return grad + (ctx.server["c"] - state["c"]), loss

    def after_local(self, theta0, theta, steps, state, ctx):
        c_new = state["c"] - ctx.server["c"] + (theta0 - theta) / (max(steps, 1) * self.cfg.lr)
        return {**state, "c": c_new}, {"dc": c_new - state["c"]}

    def end_round(self, theta, updates, ctx, num_clients):
        # c <- c + (1/N) sum_i Delta c_i
        return theta, {**ctx.server, "c": ctx.server["c"] + summed([u.method_upload["dc"] for u in updates])
                       / num_clients}
