"""FIPA: Fisher-Informed Parameterwise Aggregation, its options and its damping rules.

The server step of docs/method.md ("Update rule", "Damping", "Complement"), solved by
:class:`~fipa.aggregators.fipa_system.FIPASystem`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from fipa.aggregators.base import AGGREGATORS, Aggregator, ClientUpdate, ServerLRParams, State, client_weights
from fipa.aggregators.fipa_system import FIPASystem
from fipa.curvature_request import CurvatureParams, CurvatureRequest
from fipa.keys import key
from fipa.round_context import LossProbe


@dataclass
class FIPAParams(CurvatureParams, ServerLRParams):
    """FIPA's knobs, each documented on its field; the damping rules they feed are the FIPA
    class docstring's (and config/README.md's prose). The curvature keys (``curvature_samples``,
    ``curvature_method``, ...) are the ones every curvature aggregator shares
    (fipa/curvature_request.py).

    The dataclass defaults (``damping: fixed``, ``memory: none``) keep every config written
    before adaptive damping existed bit for bit; config/config.yaml's ``fipa`` entry opts in.
    """

    rho: float = key(1e-3, "damping relative to the largest curvature eigenvalue: lambda = rho lambda_max(H) "
                     "(`fixed`; the first round's rho under `trust_region`). 0 = the paper's undamped pinv "
                     "(with `complement: none`; it blows up, and a run whose numbers overflow ends "
                     "`diverged: true`)", ge=0, note="(relative damping)")
    complement: Literal["fedavg", "none"] = key("fedavg", "the FedAvg step outside range(H), or `none`")
    rank: int = key(10, "eigenpairs per client", ge=1, note="eigenpair per client")
    chunk: int = key(1 << 16, "column block of the streamed server solve", ge=1)
    step_bound: Literal["none", "fedavg", "auto"] = key(
        "none", "`fedavg`: the update is shortened to at most the length of the averaged delta ||dbar|| "
        "before eta_s scales it (`fixed` and `adaptive` damping); `auto`: `fedavg` for cross-entropy "
        "tasks, `none` for squared error (the rule is the FIPA class docstring's)")
    # ---- damping (FIPA class docstring)
    damping: Literal["fixed", "adaptive", "trust_region"] = key(
        "fixed", "the damping rule: `fixed` lambda = rho lambda_max(H); `adaptive` lambda >= the truncation "
        "level tau as well; `trust_region` adaptive plus a Levenberg-Marquardt test of each step on the "
        "clients' loss (rules below)")
    memory: Literal["none", "curvature"] = key(
        "none", "`curvature`: the server keeps each client's last factor (memory M r P numbers) and absent "
        "clients enter H with delta 0, so their curvature damps the step (below)")
    truncation: float = key(1.0, "`adaptive`, `trust_region`: lambda >= truncation x tau", ge=0)
    # ---- trust_region only: rho lives in the server state
    rho_min: float = key(1e-8, "`trust_region`: rho stays in [rho_min, rho_max]; 0 < rho_min <= rho_max, "
                         "rho_min > 0 so that rho can grow")
    rho_max: float = key(1e2, "`trust_region`: at 1e2 the step is dbar up to ~1% (lambda >> every "
                         "eigenvalue)")
    rho_increase: float = key(4.0, "`trust_region`: rho *= this after a poor (ratio < shrink_below) or "
                              "rejected step", gt=1)
    rho_decrease: float = key(2.0, "`trust_region`: rho /= this after a good step (ratio > expand_above)",
                              gt=1)
    shrink_below: float = key(0.25, "`trust_region`: ratio = actual / predicted decrease below this: grow "
                              "rho (at most expand_above)")
    expand_above: float = key(0.75, "`trust_region`: ratio above this: relax rho")
    accept_increase: float = key(0.0, "`trust_region`: reject a step whose loss exceeds (1 + this) "
                                 "L(theta^k) (0: any increase)", ge=0)
    max_retries: int = key(3, "`trust_region`: rejected steps retried with rho *= rho_increase; then "
                           "eta_s dbar", ge=0)

    def check(self):
        out = []
        if not 0 < self.rho_min <= self.rho_max:
            out.append(("rho_min", f"need 0 < rho_min <= rho_max, got {self.rho_min}, {self.rho_max}"))
        if self.shrink_below > self.expand_above:
            out.append(("shrink_below", "must be <= expand_above, got "
                        f"{self.shrink_below} > {self.expand_above}"))
        return out


@AGGREGATORS.register("fipa")
class FIPA(Aggregator):
    """Fisher-Informed Parameterwise Aggregation (docs/method.md, "Update rule").

    H = sum_m w_m H_m = B^T B,  B = [sqrt(w_1) A_1; ...; sqrt(w_M) A_M]   [R, P]
    g = sum_m w_m H_m delta_m + lambda dbar = B^T c + lambda dbar,  c_m = sqrt(w_m) A_m delta_m
    update = (H + lambda I)^-1 g                     (lambda = rho lambda_max(H) > 0)
           = pinv(H) B^T c + (I - Pi) dbar            (lambda = 0, complement fedavg)
    theta^{k+1} = theta^k + eta_s update

    ``memory: curvature`` (server memory O(M r P)): the server keeps every client's last
    factor A_j and sample count; a client j absent from round k enters H (and lambda_max(H))
    with its stale H_j, weight w_j = N_j / sum N over the round's and the remembered clients,
    and delta_j = 0 (it asks to stay where it is), while dbar averages the round's clients
    only. Absent clients' curvature thus damps the step in the directions their data
    determine; with full participation nothing changes.

    ``damping: fixed``: lambda = rho lambda_max(H), rho the config's, every round.
    ``damping: adaptive``:
        lambda = max(rho lambda_max(H), truncation * tau),   tau = sum_m w_m sigma_{m,r},
    tau bounding the curvature that the clients' rank-r truncation hides from the server
    (client m's unsent eigenvalues are <= sigma_{m,r}, its smallest sent one; a client that
    sent fewer than r pairs hides nothing; with memory, absent clients count too). Where H's
    spectrum is steep (heterogeneous clients, early training) tau << rho lambda_max and this
    is fixed damping; where it is flat (iid clients, late training) the unseen curvature is
    as large as the seen one, the Gauss-Newton step is noise there, and lambda follows tau
    towards the averaging step.
    ``damping: trust_region``: as adaptive, with rho in the server state (initially the
    config's, clamped to [rho_min, rho_max]) and a Levenberg-Marquardt test on the clients'
    measured loss L(theta) = sum_m w_m L_m(theta) (round's clients; each reports its task
    loss on all local data at theta^k and at each candidate: one forward pass and one scalar
    per client and evaluation, counted in ``loss_probe_passes``). The server's model of L
    is that of local minimizers, L(theta^k + u) ~ L* + kappa/2 sum_m w_m (u - delta_m)^T
    H_m (u - delta_m), kappa the probe's ``hessian_scale`` (2 for squared error, whose H_m
    is half its GGN; 1 for cross-entropy); for the step s = eta_s update it predicts
        pred = kappa (s^T B^T c - 1/2 ||B s||^2)     (O(R) from s's coordinates in range(H)),
    and actual = L(theta^k) - L(theta^k + s), ratio = actual / pred:
        L(theta^k + s) > (1 + accept_increase) L(theta^k), or not finite: reject;
            rho <- min(rho rho_increase, rho_max) and retry (same eigendecomposition: one
            back-projection and one probe), at most max_retries times; then s = eta_s dbar;
        else accept, and ratio < shrink_below: rho <- min(rho rho_increase, rho_max);
                         ratio > expand_above: rho <- max(rho / rho_decrease, rho_min);
                         otherwise, or pred <= 0 (no meaningful ratio): rho unchanged.
    ``server_lr`` scales the candidate step and the test judges that scaled step.
    ``step_bound: fedavg`` (``fixed``/``adaptive``): update <- update min(1, ||dbar|| / ||update||),
    the curvature sets the direction and averaging the length. Why (notes/label-skew.md): under
    strong label skew a client holding one or two classes owns directions (its classes' logits)
    in which the others' GGN is nearly zero, since a confident softmax has no curvature where it
    fits, so FIPA applies that client's delta there at full weight where FedAvg applies w_m of it;
    the quadratic models predict no harm, the cross-entropy's exponential tail disagrees, and the
    full step overshoots (digits, alpha 0.05: accuracy 0.82 -> 0.69 in one seed). Squared error
    is quadratic in the outputs, where this does not happen, and its tasks need FIPA's longer
    steps (PINNs: a bound doubles allen_cahn's error), hence ``auto``: ``fedavg`` for
    cross-entropy, ``none`` for squared error.
    """

    Params = FIPAParams
    # step_bound auto, by the task's loss: squared error is quadratic in the outputs, so the GGN
    # model fails only where the network is nonlinear; cross-entropy's exponential tails bound
    # the model's validity further (FIPA class docstring, "step_bound")
    AUTO_STEP_BOUND: ClassVar[dict[str, str]] = {"mse": "none", "ce": "fedavg"}

    @classmethod
    def for_task(cls, params: FIPAParams, loss_kind: str) -> FIPA:
        if params.step_bound == "auto":
            params = dataclasses.replace(params, step_bound=cls.AUTO_STEP_BOUND[loss_kind])
        return cls(params)

    @property
    def needs_loss_probe(self) -> bool:
        # only the trust-region test measures the clients' loss at candidate steps
        return self.params.damping == "trust_region"

    def curvature_request(self):
        return CurvatureRequest.of("lowrank", self.params, rank=self.params.rank)

    def init_state(self, theta):
        p = self.params
        if p.damping == "fixed":
            return {}
        f64 = torch.float64
        # rho_effective = lambda / lambda_max(H) of the last step; lambda_floor = truncation * tau
        out = {"rho_effective": torch.tensor(p.rho, dtype=f64), "lambda_floor": torch.tensor(0.0, dtype=f64)}
        if p.damping == "trust_region":
            out.update(rho=torch.tensor(min(max(p.rho, p.rho_min), p.rho_max), dtype=f64),
                       ratio=torch.tensor(math.nan, dtype=f64), rejected_steps=torch.tensor(0),
                       fallback_steps=torch.tensor(0), loss_probe_passes=torch.tensor(0))
        return out

    _STATS: ClassVar[dict[str, type]] = {
        "rho_effective": float, "lambda_floor": float, "rho": float, "ratio": float,
        "rejected_steps": int, "fallback_steps": int, "loss_probe_passes": int}

    def stats(self, state):
        # metrics.csv columns: damping_rho_effective, ..., damping_loss_probe_passes
        return {f"damping_{k}": cast(state[k]) for k, cast in self._STATS.items() if k in state}

    def step(self, theta, updates, state, ctx):
        p = self.params
        deltas, factors = [u.delta for u in updates], [u.factor for u in updates]
        if p.memory == "curvature":
            system = FIPASystem(deltas, factors, *self._with_memory(updates, state), chunk=p.chunk)
        else:
            system = FIPASystem(deltas, factors, client_weights(updates), chunk=p.chunk)
        if p.damping == "fixed":
            return theta + p.server_lr * self._bounded(system, system.direction(system.coefficients(p.rho),
                                                                                 p.complement))
        floor = p.truncation * system.truncation_level(p.rank)
        state["lambda_floor"].fill_(floor)
        if p.damping == "adaptive":
            state["rho_effective"].fill_(system.relative_damping(p.rho, floor))
            direction = system.direction(system.coefficients(p.rho, floor), p.complement)
            return theta + p.server_lr * self._bounded(system, direction)
        if ctx.probe is None:
            raise ValueError("fipa damping 'trust_region' needs the round's loss probe (RoundContext.probe)")
        return self._trust_region_step(theta, system, floor, state, ctx.probe)

    def _bounded(self, system: FIPASystem, direction: torch.Tensor) -> torch.Tensor:
        """``step_bound: fedavg``: the direction [P] shortened to at most ||dbar|| (FIPA sets the
        direction, averaging the length); ``none``: as it is."""
        if self.params.step_bound != "fedavg":  # none (or auto outside a run: for_task resolves it)
            return direction
        norm, bound = float(direction.norm()), float(system.dbar.norm())
        return direction * (bound / norm) if norm > bound else direction

    @staticmethod
    def _with_memory(updates: list[ClientUpdate], state: State):
        """(weights [M], anchors) of ``memory: curvature``; stores the round's factors in ``state``.

        Anchors: (A_j, w_j) of every remembered client absent this round, by client index;
        weights over the round's and the remembered clients together.
        """
        present = {u.client for u in updates}
        if -1 in present:
            raise ValueError("fipa memory 'curvature' needs ClientUpdate.client (set by the round loop)")
        absent = sorted(int(k.rsplit(".", 1)[1]) for k in state if k.startswith("memory.samples."))
        absent = [j for j in absent if j not in present]
        counts = [u.num_samples for u in updates] + [int(state[f"memory.samples.{j}"]) for j in absent]
        w = torch.tensor(counts, dtype=torch.float64) / float(sum(counts))
        anchors = [(state[f"memory.factor.{j}"], w[len(updates) + i]) for i, j in enumerate(absent)]
        for u in updates:  # remember this round's curvature for the rounds a client sits out
            state[f"memory.factor.{u.client}"] = u.factor.detach().clone()
            state[f"memory.samples.{u.client}"] = torch.tensor(u.num_samples)
        return w[: len(updates)], anchors

    def _trust_region_step(self, theta: torch.Tensor, system: FIPASystem, floor: float, state: State,
                           probe: LossProbe) -> torch.Tensor:
        """One accepted step of the trust_region rule (class docstring); updates rho and counters."""
        p = self.params
        eta, rho = p.server_lr, float(state["rho"])

        def loss(at: torch.Tensor) -> float:
            state["loss_probe_passes"] += probe.clients  # one forward pass per client
            return probe.loss(at)

        before = loss(theta)
        for _ in range(p.max_retries + 1):
            coef = system.coefficients(rho, floor)
            candidate = theta + eta * system.direction(coef, p.complement)
            after = loss(candidate)
            if after <= before + p.accept_increase * abs(before):  # NaN compares False: rejected
                state["rho_effective"].fill_(system.relative_damping(rho, floor))
                pred = probe.hessian_scale * system.model_decrease(coef, eta)
                ratio = (before - after) / pred if pred > 0 else math.nan
                if ratio < p.shrink_below:
                    rho = min(rho * p.rho_increase, p.rho_max)
                elif ratio > p.expand_above:
                    rho = max(rho / p.rho_decrease, p.rho_min)
                state["rho"].fill_(rho)
                state["ratio"].fill_(ratio)
                return candidate
            state["rejected_steps"] += 1
            rho = min(rho * p.rho_increase, p.rho_max)
        # every damped candidate failed the test: the averaging step, lambda -> infinity
        state["rho"].fill_(rho)
        state["rho_effective"].fill_(math.inf)
        state["ratio"].fill_(math.nan)
        state["fallback_steps"] += 1
        return theta + eta * system.dbar
