"""Server-side aggregation rules: a registry from config name to class.

Every aggregator maps the broadcast model theta^k [P] and the clients' uploads to
theta^{k+1} [P]. Client m's weight is w_m = N_m / sum_j N_j over the round's clients.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch

from fipa.curvature import CurvatureRequest
from fipa.keys import key
from fipa.registry import Registry


@dataclass
class ClientUpdate:
    """One client's upload: delta_m = theta_m - theta^k [P], its sample count, curvature."""

    delta: torch.Tensor
    num_samples: int
    factor: torch.Tensor | None = None  # A_m [r, P], H_m ~= A_m^T A_m
    diag: torch.Tensor | None = None  # diag(H_m) [P]
    buffers: dict[str, torch.Tensor] | None = None  # BatchNorm statistics after local training
    client: int = -1  # the client's index (set by the round loop; keys FIPA's curvature memory)

    @property
    def uplink_numbers(self) -> int:
        """Numbers sent: P for the delta, + r(P + 1) for the eigenpairs (V_m, sigma_m) that
        A_m = diag(sqrt sigma_m) V_m^T encodes, + P for a diagonal, + the model's buffers."""
        n = self.delta.numel() + sum(b.numel() for b in (self.buffers or {}).values())
        if self.factor is not None:
            n += self.factor.numel() + self.factor.shape[0]
        if self.diag is not None:
            n += self.diag.numel()
        return n


State = dict[str, torch.Tensor]


@dataclass
class LossProbe:
    """The round's clients' weighted task loss at a candidate model: one scalar uplink per client.

    ``loss(theta)`` [P] -> sum_m w_m L_m(theta), L_m client m's mean task loss on its full local
    data (one forward pass per client, ``clients`` passes per call). ``hessian_scale``: the
    Hessian of that loss in the outputs is ``hessian_scale`` times the L_i of the uploaded
    curvature factors (2 for squared error, whose factors are the GGN of half of it; 1 for
    cross-entropy), so the true GGN of sum_m w_m L_m is hessian_scale * H.
    """

    loss: Callable[[torch.Tensor], float]
    clients: int
    hessian_scale: float = 1.0


class Aggregator:
    """Base class: FedAvg-style weights and an empty server state.

    Capabilities a subclass declares (the round loop reads them; nothing is probed):
    ``needs_loss_probe``: ``step`` takes a keyword ``probe``, a :class:`LossProbe` of the
    round's clients, to measure the actual loss at candidate steps (trust-region damping).
    """

    Params: ClassVar[type]
    needs_loss_probe: ClassVar[bool] = False  # True: step(..., probe=LossProbe)

    def __init__(self, params: Any) -> None:
        self.params = params

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

    def step(self, theta: torch.Tensor, updates: list[ClientUpdate], state: State) -> torch.Tensor:
        """theta^k [P], uploads -> theta^{k+1} [P]; may update ``state`` in place."""
        raise NotImplementedError

    def stats(self, state: State) -> dict[str, float]:
        """Scalars of the server state recorded per evaluated round (metrics.csv columns, in
        this order) and at the end (final.json ``aggregator_stats``); none by default."""
        return {}


AGGREGATORS: Registry[type[Aggregator]] = Registry("aggregator")


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


# ----------------------------------------------------------------------------- averaging


@dataclass
class ServerLRParams:
    """The server step size of the averaging rules (and FIPA's)."""

    server_lr: float = key(1.0, "server step size eta_s: theta^{k+1} = theta^k + eta_s x the aggregated "
                           "update", gt=0)


@AGGREGATORS.register("fedavg")
class FedAvg(Aggregator):
    """theta^{k+1} = theta^k + eta_s dbar (McMahan et al. 2017; eta_s = 1 is plain FedAvg)."""

    Params = ServerLRParams

    def step(self, theta, updates, state):
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

    def step(self, theta, updates, state):
        state["v"] = self.params.momentum * state["v"] + mean_delta(updates)
        return theta + self.params.server_lr * state["v"]


@dataclass
class AdaptiveParams:
    """Reddi et al. (2021), "Adaptive Federated Optimization", Algorithm 2."""

    server_lr: float = key(0.01, "server step size eta", gt=0)
    beta1: float = key(0.9, "decay of the first moment m of dbar", ge=0, lt=1)
    beta2: float = key(0.99, "decay of the second moment v (fedadam, fedyogi; fedadagrad sums)", ge=0, lt=1)
    tau: float = key(1e-3, "adaptivity: eta m / (sqrt v + tau); v starts at tau^2", gt=0)


class _Adaptive(Aggregator):
    """m <- b1 m + (1-b1) dbar; v <- rule(v, dbar^2); theta <- theta + eta m / (sqrt v + tau)."""

    Params = AdaptiveParams

    def init_state(self, theta):
        # v_{-1} = tau^2 as in Reddi et al.; m_{-1} = 0
        return {"m": torch.zeros_like(theta), "v": torch.full_like(theta, self.params.tau**2)}

    def second_moment(self, v: torch.Tensor, d2: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def step(self, theta, updates, state):
        p = self.params
        d = mean_delta(updates)
        state["m"] = p.beta1 * state["m"] + (1 - p.beta1) * d
        state["v"] = self.second_moment(state["v"], d * d)
        return theta + p.server_lr * state["m"] / (state["v"].sqrt() + p.tau)


@AGGREGATORS.register("fedadam")
class FedAdam(_Adaptive):
    """v <- b2 v + (1 - b2) dbar^2."""

    def second_moment(self, v, d2):
        return self.params.beta2 * v + (1 - self.params.beta2) * d2


@AGGREGATORS.register("fedyogi")
class FedYogi(_Adaptive):
    """v <- v - (1 - b2) dbar^2 sign(v - dbar^2)."""

    def second_moment(self, v, d2):
        return v - (1 - self.params.beta2) * d2 * torch.sign(v - d2)


@AGGREGATORS.register("fedadagrad")
class FedAdagrad(_Adaptive):
    """v <- v + dbar^2."""

    def second_moment(self, v, d2):
        return v + d2


# ----------------------------------------------------------------------------- fisher


@dataclass
class DiagFisherParams(ServerLRParams):
    """Fisher merging's options beside the step size."""

    eps: float = key(1e-8, "added to the summed diagonal Fisher: sum_m w_m F_mj + eps", ge=0)
    curvature_samples: int | None = key(None, "client data subsample for the diagonal Fisher (null: all)")
    curvature_at: Literal["broadcast", "local"] = key(
        "broadcast", "curvature at the broadcast model theta^k or at the client's `local` result")


@AGGREGATORS.register("diag_fisher")
class DiagFisher(Aggregator):
    """update_j = sum_m w_m F_mj delta_mj / (sum_m w_m F_mj + eps)  (Fisher merging)."""

    Params = DiagFisherParams

    def curvature_request(self):
        p = self.params
        # auto: S stacked while it has at most 2^26 entries (every default-config model), else
        # the diagonal accumulated over bounded sample chunks (ResNet-18: J would take 57 GB)
        return CurvatureRequest("diag", samples=p.curvature_samples, at=p.curvature_at, method="auto")

    def step(self, theta, updates, state):
        w = client_weights(updates).to(theta.dtype)
        num = torch.zeros_like(theta)
        den = torch.zeros_like(theta)
        for wm, u in zip(w, updates, strict=True):
            num.addcmul_(u.diag, u.delta, value=float(wm))
            den.add_(u.diag, alpha=float(wm))
        return theta + self.params.server_lr * num / (den + self.params.eps)


@dataclass
class FIPAParams(ServerLRParams):
    """FIPA's knobs, each documented on its field; the damping rules they feed are the FIPA
    class docstring's (and config/README.md's prose).

    The dataclass defaults (``damping: fixed``, ``memory: none``) keep every config written
    before adaptive damping existed bit for bit; config/config.yaml's ``fipa`` entry opts in.
    """

    rho: float = key(1e-3, "damping relative to the largest curvature eigenvalue: lambda = rho lambda_max(H) "
                     "(`fixed`; the first round's rho under `trust_region`). 0 = the paper's undamped pinv "
                     "(with `complement: none`; it blows up, and a run whose numbers overflow ends "
                     "`diverged: true`)", ge=0, note="(relative damping)")
    complement: Literal["fedavg", "none"] = key("fedavg", "the FedAvg step outside range(H), or `none`")
    rank: int = key(10, "eigenpairs per client", ge=1, note="eigenpair per client")
    curvature_samples: int | None = key(None, "client data subsample for the GGN (null: all)", ge=1,
                                        note="(all samples)")
    curvature_at: Literal["broadcast", "local"] = key(
        "broadcast", "curvature at the broadcast model theta^k or at the client's `local` result")
    chunk: int = key(1 << 16, "column block of the streamed server solve", ge=1)
    curvature_method: Literal["exact", "gram", "matrix_free", "auto"] = key(
        "auto", "`exact` (stacked per-sample Jacobians, eigensolve of the Gram), `gram` (the rows M_i^T J_i "
        "only, one reverse pass each, eigensolve of their Gram: the same eigenpairs, N = samples x "
        "rows-per-sample rows of P numbers in memory, about N backward passes of time), `matrix_free` "
        "(GGN-vector products in a randomized range finder, O(P r) memory whatever N, (rank + oversample)"
        "(power_iters + 2) products) or `auto` (exact while the Jacobian stack has at most 2^26 entries, "
        "else gram while N <= 2 (rank + oversample), else matrix_free)")
    curvature_fisher: Literal["ggn", "sampled"] = key(
        "ggn", "the exact output Hessian (C rows per sample), or `sampled` (a label drawn from the model: "
        "one row per sample, an unbiased estimate)")
    step_bound: Literal["none", "fedavg", "auto"] = key(
        "none", "`fedavg`: the update is shortened to at most the length of the averaged delta ||dbar|| "
        "before eta_s scales it (`fixed` and `adaptive` damping); `auto`: `fedavg` for cross-entropy "
        "tasks, `none` for squared error (the rule is the FIPA class docstring's)")
    oversample: int = key(10, "range-finder probes beyond the rank (`matrix_free`)", ge=0,
                          note="extra probe vectors")
    power_iters: int = key(4, "subspace iterations of the range finder (`matrix_free`)", ge=0)
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
    """Fisher-Informed Parameterwise Aggregation (fipa-spec.md).

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
    needs_loss_probe = True  # called by damping "trust_region" only
    # step_bound auto, by the task's loss: squared error is quadratic in the outputs, so the GGN
    # model fails only where the network is nonlinear; cross-entropy's exponential tails bound
    # the model's validity further (FIPA class docstring, "step_bound")
    AUTO_STEP_BOUND: ClassVar[dict[str, str]] = {"mse": "none", "ce": "fedavg"}

    @classmethod
    def for_task(cls, params: FIPAParams, loss_kind: str) -> FIPA:
        if params.step_bound == "auto":
            params = dataclasses.replace(params, step_bound=cls.AUTO_STEP_BOUND[loss_kind])
        return cls(params)

    def curvature_request(self):
        p = self.params
        return CurvatureRequest(
            "lowrank", p.rank, p.curvature_samples, p.curvature_at, method=p.curvature_method,
            fisher=p.curvature_fisher, oversample=p.oversample, power_iters=p.power_iters,
        )

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

    def step(self, theta, updates, state, probe: LossProbe | None = None):
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
        if probe is None:
            raise ValueError("fipa damping 'trust_region' needs the round loop's loss probe (probe=...)")
        return self._trust_region_step(theta, system, floor, state, probe)

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


def _column_chunks(P: int, chunk: int):
    for i in range(0, P, chunk):
        yield slice(i, min(i + chunk, P))


class FIPASystem:
    """One round's server problem, reduced to range(H): built once, solved for any lambda.

    Streams over column blocks of the factors (no stacked copy of B): O(P R^2) time,
    O(P + R chunk) extra memory. The R x R problem is solved in float64. B = diag(t) A with
    A = [A_1; ...; A_M] unscaled and t = sqrt(w_m) on client m's rows, so the column blocks
    are A's (one float64 buffer, each client's rows copied in: one pass over the factors)
    and the row scales t enter only the R x R and R-vector algebra.

    G = B B^T = U diag(e) U^T [R, R] (eigenvalues at round-off dropped), s = sqrt(e); the
    columns of Q = B^T U / s are an orthonormal basis of range(H), H = Q diag(e) Q^T. Only
    the coordinates a = Q^T update = Q^T g / (e + lambda) depend on lambda, so a retry with
    another damping costs O(R^2) and one back-projection, never a new eigendecomposition.
    ``anchors`` (A_j, w_j): extra rows of B with delta_j = 0 (FIPA's curvature memory); then
    dbar averages the deltas with weights / sum(weights). Non-finite deltas or factors give a
    NaN direction (the round loop ends the run diverged), never an eigensolver error.
    """

    def __init__(self, deltas: list[torch.Tensor], factors: list[torch.Tensor], weights: torch.Tensor,
                 anchors: list[tuple[torch.Tensor, torch.Tensor]] = (), chunk: int = 1 << 16) -> None:
        P = deltas[0].numel()
        self.P, self.chunk = P, chunk
        dbar = torch.zeros_like(deltas[0])
        dbar_w = weights / weights.sum() if anchors else weights
        for wm, d in zip(dbar_w, deltas, strict=True):
            dbar.add_(d, alpha=float(wm))
        self.dbar = dbar  # sum_m w_m delta_m [P]

        self.factors = [*factors, *(A for A, _ in anchors)]
        if anchors:
            weights = torch.cat([weights.to(torch.float64), torch.stack([w for _, w in anchors])])
        ranks = torch.tensor([A.shape[0] for A in self.factors])
        R, offsets = int(ranks.sum()), [0, *ranks.cumsum(0).tolist()]
        self.rows_of = [slice(offsets[m], offsets[m + 1]) for m in range(len(self.factors))]
        device = deltas[0].device
        t = weights.to(torch.float64).sqrt().repeat_interleave(ranks).to(device)  # [R]
        self.t = t
        self.buffer = torch.empty(R, min(chunk, P), dtype=torch.float64, device=device)

        gram = torch.zeros(R, R, dtype=torch.float64, device=device)  # A A^T
        c = torch.zeros(R, dtype=torch.float64, device=device)  # A_m delta_m (0 on anchor rows)
        b_dbar = torch.zeros(R, dtype=torch.float64, device=device)  # A dbar
        for cols in _column_chunks(P, chunk):
            Ac = self.block(cols)
            gram.addmm_(Ac, Ac.T)
            b_dbar.addmv_(Ac, dbar[cols].to(torch.float64))
            for rows, d in zip(self.rows_of, deltas, strict=False):
                c[rows].addmv_(Ac[rows], d[cols].to(torch.float64))
        # scale the rows: G = B B^T = diag(t) A A^T diag(t), c_m = sqrt(w_m) A_m delta_m, B dbar
        gram.mul_(t[:, None] * t[None, :])
        c.mul_(t)
        b_dbar.mul_(t)
        self.row_curvature = gram.diagonal().clone()  # w_m ||A_m,i||^2 = w_m sigma_m,i  [R]
        self.finite = bool(torch.isfinite(gram).all() and torch.isfinite(c).all()
                           and torch.isfinite(b_dbar).all() and torch.isfinite(dbar).all())
        if not self.finite:  # eigh of a non-finite matrix may fail or hang: skip it
            return

        # eigen-decompose the Gram matrix: G = U diag(s^2) U^T, so H = Q diag(s^2) Q^T, Q = B^T U / s
        e, U = torch.linalg.eigh(gram)
        keep = e > e.max().clamp_min(0) * R * torch.finfo(torch.float64).eps * 10
        self.e, self.U = e[keep], U[:, keep]
        self.s = self.e.sqrt()
        self.uc = self.U.T @ c  # U^T c
        self.ub = self.U.T @ b_dbar  # U^T B dbar

    def block(self, cols: slice) -> torch.Tensor:
        """Rows of A restricted to these columns, in float64: [R, c] (a view of the buffer)."""
        out = self.buffer[:, : cols.stop - cols.start]
        for rows, A in zip(self.rows_of, self.factors, strict=True):
            out[rows].copy_(A[:, cols])
        return out

    def truncation_level(self, rank: int) -> float:
        """tau = sum_m w_m sigma_{m,r}: the largest curvature per direction that rank-r
        truncation hides (a factor with fewer than ``rank`` rows is complete: hides none)."""
        return sum(float(self.row_curvature[rows].min()) for rows in self.rows_of
                   if rows.stop - rows.start >= rank)

    def relative_damping(self, rho: float, floor: float = 0.0) -> float:
        """lambda / lambda_max(H) of :meth:`coefficients` (rho where the floor does not bind)."""
        lam_max = float(self.e.max()) if self.finite and self.e.numel() else 0.0
        return max(float(rho), floor / lam_max) if lam_max > 0 else float(rho)

    def coefficients(self, rho: float, floor: float = 0.0) -> torch.Tensor:
        """a = Q^T (H + lambda I)^-1 g [R'], lambda = max(rho lambda_max(H), floor) (0: pinv)."""
        if not self.finite:
            return torch.full((1,), math.nan, dtype=torch.float64)
        e, s = self.e, self.s
        lam = rho * float(e.max()) if e.numel() else 0.0
        if floor > lam:
            lam = floor
        # Q^T g = U^T (G c + lambda B dbar) / s = s U^T c + lambda U^T B dbar / s   (G U = U diag(s^2))
        qt_g = s * self.uc + lam * self.ub / s
        return qt_g / (e + lam)  # coordinates of the update in range(H), basis Q

    def direction(self, coef: torch.Tensor, complement: str = "fedavg") -> torch.Tensor:
        """The update [P] = Q a + (I - Pi) dbar (complement fedavg) or Q a (none)."""
        if not self.finite:
            return torch.full_like(self.dbar, math.nan)
        use_complement = complement == "fedavg"
        if use_complement:
            # (I - Pi) dbar = dbar - Q Q^T dbar: subtract Q^T dbar from the range coordinates
            coef = coef - self.ub / self.s
        z = self.t * (self.U @ (coef / self.s))  # Q coef = B^T U (coef / s) = A^T z
        out = self.dbar.clone() if use_complement else torch.zeros_like(self.dbar)
        for cols in _column_chunks(self.P, self.chunk):
            # apply A^T to the row coefficients: z -> A^T z, one column block at a time
            out[cols] += (self.block(cols).T @ z).to(out.dtype)
        return out

    def model_decrease(self, coef: torch.Tensor, eta: float = 1.0) -> float:
        """s^T B^T c - 1/2 ||B s||^2 for the step s = eta update, update's range coordinates a.

        B Q = U diag(s) and B (I - Pi) = 0, so B s = eta U (s a): O(R) work.
        """
        if not self.finite:
            return math.nan
        Bs = eta * (self.s * coef)  # U^T B s
        return float(Bs @ self.uc - 0.5 * (Bs @ Bs))


def fipa_direction(
    deltas: list[torch.Tensor], factors: list[torch.Tensor], weights: torch.Tensor,
    rho: float, complement: str = "fedavg", chunk: int = 1 << 16,
) -> torch.Tensor:
    """The FIPA update [P] from deltas [P] and factors A_m [r_m, P]; never forms P x P.

    One :class:`FIPASystem` solved at relative damping ``rho``: O(P R^2) time, O(P + R chunk)
    extra memory, the R x R problem in float64.
    """
    system = FIPASystem(deltas, factors, weights, chunk=chunk)
    return system.direction(system.coefficients(rho), complement)


# Flower's strategies as aggregators (fipa/flower/aggregator.py): announced here, imported on first
# use, so that flwr (the optional extra `flower`) is needed only by configs that name it
AGGREGATORS.register_lazy("flower", "fipa.flower.aggregator")
