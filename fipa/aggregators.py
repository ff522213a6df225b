"""Server-side aggregation rules: a registry from config name to class.

Every aggregator maps the broadcast model theta^k [P] and the clients' uploads to
theta^{k+1} [P]. Client m's weight is w_m = N_m / sum_j N_j over the round's clients.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch

from fipa.curvature import CurvatureRequest
from fipa.registry import Registry


@dataclass
class ClientUpdate:
    """One client's upload: delta_m = theta_m - theta^k [P], its sample count, curvature."""

    delta: torch.Tensor
    num_samples: int
    factor: torch.Tensor | None = None  # A_m [r, P], H_m ~= A_m^T A_m
    eigvals: torch.Tensor | None = None  # sigma_m [r]
    diag: torch.Tensor | None = None  # diag(H_m) [P]
    buffers: dict[str, torch.Tensor] | None = None  # BatchNorm statistics after local training

    @property
    def uplink_numbers(self) -> int:
        """Numbers sent: P for the delta, + r(P + 1) for eigenpairs, + P for a diagonal, + the
        model's buffers where it has them."""
        n = self.delta.numel() + sum(b.numel() for b in (self.buffers or {}).values())
        if self.factor is not None:
            n += self.factor.numel() + self.factor.shape[0]
        if self.diag is not None:
            n += self.diag.numel()
        return n


State = dict[str, torch.Tensor]


class Aggregator:
    """Base class: FedAvg-style weights and an empty server state."""

    Params: ClassVar[type]
    pools_clients: ClassVar[bool] = False  # True: one client holds the union of all data

    def __init__(self, params: Any) -> None:
        self.params = params

    def curvature_request(self) -> CurvatureRequest | None:
        """What curvature the clients must upload (None: only deltas)."""
        return None

    def init_state(self, theta: torch.Tensor) -> State:
        return {}

    def step(self, theta: torch.Tensor, updates: list[ClientUpdate], state: State) -> torch.Tensor:
        """theta^k [P], uploads -> theta^{k+1} [P]; may update ``state`` in place."""
        raise NotImplementedError


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
    server_lr: float = 1.0

    def check(self):
        return [("server_lr", f"must be > 0, got {self.server_lr}")] if self.server_lr <= 0 else []


@AGGREGATORS.register("fedavg")
class FedAvg(Aggregator):
    """theta^{k+1} = theta^k + eta_s dbar (McMahan et al. 2017; eta_s = 1 is plain FedAvg)."""

    Params = ServerLRParams

    def step(self, theta, updates, state):
        return theta + self.params.server_lr * mean_delta(updates)


@AGGREGATORS.register("centralized")
class Centralized(FedAvg):
    """Reference: one client holding all the data, the same rounds and local epochs."""

    pools_clients = True


@dataclass
class FedAvgMParams(ServerLRParams):
    momentum: float = 0.9

    def check(self):
        bad = [] if 0 <= self.momentum < 1 else [("momentum", f"must lie in [0, 1), got {self.momentum}")]
        return super().check() + bad


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

    server_lr: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3

    def check(self):
        out = []
        if self.server_lr <= 0:
            out.append(("server_lr", f"must be > 0, got {self.server_lr}"))
        for k in ("beta1", "beta2"):
            if not 0 <= getattr(self, k) < 1:
                out.append((k, f"must lie in [0, 1), got {getattr(self, k)}"))
        if self.tau <= 0:
            out.append(("tau", f"must be > 0, got {self.tau}"))
        return out


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
    eps: float = 1e-8
    curvature_samples: int | None = None
    curvature_at: Literal["broadcast", "local"] = "broadcast"

    def check(self):
        bad = [("eps", f"must be >= 0, got {self.eps}")] if self.eps < 0 else []
        return super().check() + bad


@AGGREGATORS.register("diag_fisher")
class DiagFisher(Aggregator):
    """update_j = sum_m w_m F_mj delta_mj / (sum_m w_m F_mj + eps)  (Fisher merging)."""

    Params = DiagFisherParams

    def curvature_request(self):
        p = self.params
        return CurvatureRequest("diag", samples=p.curvature_samples, at=p.curvature_at)

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
    """Damping lambda = rho * lambda_max(H); rank r eigenpairs per client."""

    rho: float = 1e-3
    complement: Literal["fedavg", "none"] = "fedavg"
    rank: int = 10
    curvature_samples: int | None = None
    curvature_at: Literal["broadcast", "local"] = "broadcast"
    chunk: int = 1 << 16
    curvature_method: Literal["exact", "matrix_free", "auto"] = "auto"
    curvature_fisher: Literal["ggn", "sampled"] = "ggn"
    oversample: int = 10
    power_iters: int = 4

    def check(self):
        out = super().check()
        if self.rho < 0:
            out.append(("rho", f"must be >= 0 (relative damping), got {self.rho}"))
        if self.rank < 1:
            out.append(("rank", f"must be >= 1 eigenpair per client, got {self.rank}"))
        if self.curvature_samples is not None and self.curvature_samples < 1:
            out.append(("curvature_samples", "must be >= 1 or null (all samples)"))
        if self.chunk < 1:
            out.append(("chunk", f"must be >= 1, got {self.chunk}"))
        if self.oversample < 0:
            out.append(("oversample", f"must be >= 0 extra probe vectors, got {self.oversample}"))
        if self.power_iters < 0:
            out.append(("power_iters", f"must be >= 0, got {self.power_iters}"))
        return out


@AGGREGATORS.register("fipa")
class FIPA(Aggregator):
    """Fisher-Informed Parameterwise Aggregation (fipa-spec.md).

    H = sum_m w_m H_m = B^T B,  B = [sqrt(w_1) A_1; ...; sqrt(w_M) A_M]   [R, P]
    g = sum_m w_m H_m delta_m + lambda dbar = B^T c + lambda dbar,  c_m = sqrt(w_m) A_m delta_m
    update = (H + lambda I)^-1 g                     (lambda = rho lambda_max(H) > 0)
           = pinv(H) B^T c + (I - Pi) dbar            (lambda = 0, complement fedavg)
    theta^{k+1} = theta^k + eta_s update
    """

    Params = FIPAParams

    def curvature_request(self):
        p = self.params
        return CurvatureRequest(
            "lowrank", p.rank, p.curvature_samples, p.curvature_at, method=p.curvature_method,
            fisher=p.curvature_fisher, oversample=p.oversample, power_iters=p.power_iters,
        )

    def step(self, theta, updates, state):
        factors = [u.factor for u in updates]
        deltas = [u.delta for u in updates]
        direction = fipa_direction(
            deltas, factors, client_weights(updates), self.params.rho,
            self.params.complement, self.params.chunk,
        )
        return theta + self.params.server_lr * direction


def _column_chunks(P: int, chunk: int):
    for i in range(0, P, chunk):
        yield slice(i, min(i + chunk, P))


def fipa_direction(
    deltas: list[torch.Tensor], factors: list[torch.Tensor], weights: torch.Tensor,
    rho: float, complement: str = "fedavg", chunk: int = 1 << 16,
) -> torch.Tensor:
    """The FIPA update [P] from deltas [P] and factors A_m [r_m, P]; never forms P x P.

    Streams over column blocks of the factors (no stacked copy of B): O(P R^2) time,
    O(P + R chunk) extra memory. The R x R problem is solved in float64. B = diag(t) A with
    A = [A_1; ...; A_M] unscaled and t = sqrt(w_m) on client m's rows, so the column blocks
    are A's (one float64 buffer, each client's rows copied in: one pass over the factors)
    and the row scales t enter only the R x R and R-vector algebra.
    """
    P = deltas[0].numel()
    dbar = torch.zeros_like(deltas[0])
    for wm, d in zip(weights, deltas, strict=True):
        dbar.add_(d, alpha=float(wm))

    ranks = torch.tensor([A.shape[0] for A in factors])
    R, offsets = int(ranks.sum()), [0, *ranks.cumsum(0).tolist()]
    rows_of = [slice(offsets[m], offsets[m + 1]) for m in range(len(factors))]
    device = deltas[0].device
    t = weights.to(torch.float64).sqrt().repeat_interleave(ranks).to(device)  # [R]
    buffer = torch.empty(R, min(chunk, P), dtype=torch.float64, device=device)

    def block(cols: slice) -> torch.Tensor:
        # rows of A restricted to these columns, in float64: [R, c] (a view of ``buffer``)
        out = buffer[:, : cols.stop - cols.start]
        for rows, A in zip(rows_of, factors, strict=True):
            out[rows].copy_(A[:, cols])
        return out

    gram = torch.zeros(R, R, dtype=torch.float64, device=device)  # A A^T
    c = torch.zeros(R, dtype=torch.float64, device=device)  # A_m delta_m
    b_dbar = torch.zeros(R, dtype=torch.float64, device=device)  # A dbar
    for cols in _column_chunks(P, chunk):
        Ac = block(cols)
        gram.addmm_(Ac, Ac.T)
        b_dbar.addmv_(Ac, dbar[cols].to(torch.float64))
        for rows, d in zip(rows_of, deltas, strict=True):
            c[rows].addmv_(Ac[rows], d[cols].to(torch.float64))
    # scale the rows: G = B B^T = diag(t) A A^T diag(t), c_m = sqrt(w_m) A_m delta_m, B dbar
    gram.mul_(t[:, None] * t[None, :])
    c.mul_(t)
    b_dbar.mul_(t)

    # eigen-decompose the Gram matrix: G = U diag(s^2) U^T, so H = Q diag(s^2) Q^T, Q = B^T U / s
    e, U = torch.linalg.eigh(gram)
    keep = e > e.max().clamp_min(0) * R * torch.finfo(torch.float64).eps * 10
    e, U = e[keep], U[:, keep]
    s = e.sqrt()
    lam = rho * float(e.max()) if e.numel() else 0.0
    # Q^T g = U^T (G c + lambda B dbar) / s = s U^T c + lambda U^T B dbar / s   (G U = U diag(s^2))
    qt_g = s * (U.T @ c) + lam * (U.T @ b_dbar) / s
    coef = qt_g / (e + lam)  # coordinates of the update in range(H), basis Q
    use_complement = complement == "fedavg"
    if use_complement:
        # (I - Pi) dbar = dbar - Q Q^T dbar: subtract Q^T dbar from the range coordinates
        coef = coef - U.T @ b_dbar / s
    z = t * (U @ (coef / s))  # Q coef = B^T U (coef / s) = A^T z
    out = dbar.clone() if use_complement else torch.zeros_like(dbar)
    for cols in _column_chunks(P, chunk):
        # apply A^T to the row coefficients: z -> A^T z, one column block at a time
        out[cols] += (block(cols).T @ z).to(out.dtype)
    return out
