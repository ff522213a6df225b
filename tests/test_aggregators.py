"""Oracle tests of the server aggregation rules in ``fipa.aggregators``.

The low-rank FIPA step is checked against dense P x P formulas of docs/method.md ("Update rule")
(only possible for small P), against the Gauss-Newton property on linear least squares,
and the averaging baselines against steps written out by hand. All in float64.
"""

from __future__ import annotations

import pytest
import torch

from fipa.aggregators import AGGREGATORS, ClientUpdate, RoundContext, fipa_direction, mean_delta
from fipa.curvature import lowrank_factor

DT = torch.float64
ROUND = RoundContext(1)  # a round without client-method state or loss probe


pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------- helpers


def assert_close_rel(actual: torch.Tensor, expected: torch.Tensor, rtol: float) -> None:
    """Elementwise ``|a - e| <= rtol |e| + rtol max|e|`` (scale-aware absolute floor)."""
    atol = rtol * float(expected.abs().max())
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol)


def random_problem(
    seed: int, P: int, ranks: list[int]
) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
    """Deltas [P], factors A_m [r_m, P] with decaying row scales, positive weights [M]."""
    g = torch.Generator().manual_seed(seed)
    factors = []
    for r in ranks:
        scales = torch.logspace(0.5, -0.5, r, dtype=DT) * (0.5 + torch.rand(1, generator=g, dtype=DT))
        factors.append(scales[:, None] * torch.randn(r, P, generator=g, dtype=DT))
    deltas = [torch.randn(P, generator=g, dtype=DT) for _ in ranks]
    weights = 0.2 + torch.rand(len(ranks), generator=g, dtype=DT)
    return deltas, factors, weights / weights.sum()


def dense_terms(
    deltas: list[torch.Tensor], factors: list[torch.Tensor], weights: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """H = sum w_m A_m^T A_m [P, P], sum_m w_m H_m d_m [P], dbar [P] (dense oracle)."""
    H = sum(w * A.T @ A for w, A in zip(weights, factors, strict=True))
    hd = sum(w * (A.T @ A) @ d for w, A, d in zip(weights, factors, deltas, strict=True))
    dbar = sum(w * d for w, d in zip(weights, deltas, strict=True))
    return H, hd, dbar


def range_projector(H: torch.Tensor) -> torch.Tensor:
    """Pi, the orthogonal projector onto range(H), from a dense eigendecomposition."""
    e, V = torch.linalg.eigh(H)
    Q = V[:, e > 1e-10 * e.max()]
    return Q @ Q.T


def dense_fipa(
    deltas: list[torch.Tensor], factors: list[torch.Tensor], weights: torch.Tensor,
    rho: float, complement: str,
) -> torch.Tensor:
    """The FIPA direction from the P x P formulas of docs/method.md ("Update rule", "Complement").

    rho > 0: u = (H + lam I)^-1 g, g = sum w H_m d_m + lam dbar, lam = rho lambda_max(H);
    complement "none" keeps only Pi u (the code drops the part outside range(H)).
    rho = 0: u = pinv(H) sum w H_m d_m, plus (I - Pi) dbar for complement "fedavg".
    """
    H, hd, dbar = dense_terms(deltas, factors, weights)
    P = H.shape[0]
    Pi = range_projector(H)
    if rho > 0:
        lam = rho * float(torch.linalg.eigvalsh(H).max())
        u = torch.linalg.solve(H + lam * torch.eye(P, dtype=DT), hd + lam * dbar)
        return u if complement == "fedavg" else Pi @ u
    u = torch.linalg.pinv(H, hermitian=True, rtol=1e-10) @ hd
    return u + (dbar - Pi @ dbar) if complement == "fedavg" else u


PROBLEMS = [(0, 50, [2, 3, 4]), (1, 120, [5, 2, 6, 3]), (2, 200, [6, 6, 4])]
SETTINGS = [(1e-2, "fedavg"), (1e-4, "fedavg"), (1e-3, "none"), (0.0, "none"), (0.0, "fedavg")]


# ----------------------------------------------------------------------------- FIPA math


@pytest.mark.parametrize(("rho", "complement"), SETTINGS)
@pytest.mark.parametrize(("seed", "P", "ranks"), PROBLEMS)
def test_fipa_direction_matches_dense_oracle(seed, P, ranks, rho, complement):
    """Low-rank streaming solve == dense formula, with H rank-deficient (R = sum r_m < P).

    For rho > 0 and complement "none" the oracle is Pi (H + lam I)^-1 g: the code keeps the
    range(H) part of the damped solve and drops (I - Pi) dbar, the part outside range(H).
    """
    deltas, factors, w = random_problem(seed, P, ranks)
    assert sum(ranks) < P
    got = fipa_direction(deltas, factors, w, rho, complement)
    assert_close_rel(got, dense_fipa(deltas, factors, w, rho, complement), rtol=1e-8)


def test_complement_choice_matters_and_splits_by_range():
    """fedavg - none == (I - Pi) dbar exactly when rho = 0; nonzero since R < P."""
    deltas, factors, w = random_problem(3, 80, [3, 4, 2])
    H, _, dbar = dense_terms(deltas, factors, w)
    diff = fipa_direction(deltas, factors, w, 0.0, "fedavg") - fipa_direction(deltas, factors, w, 0.0, "none")
    expected = dbar - range_projector(H) @ dbar
    assert expected.norm() > 0.5 * dbar.norm()
    assert_close_rel(diff, expected, rtol=1e-8)


@pytest.mark.parametrize(("rho", "complement"), [(1e-3, "fedavg"), (1e-3, "none"), (0.0, "fedavg")])
def test_fipa_direction_independent_of_chunk(rho, complement):
    """Column streaming: chunk=7 (P = 103 is no multiple of 7) == default chunk == oracle."""
    deltas, factors, w = random_problem(4, 103, [4, 3, 5])
    small = fipa_direction(deltas, factors, w, rho, complement, chunk=7)
    default = fipa_direction(deltas, factors, w, rho, complement)
    torch.testing.assert_close(small, default, rtol=1e-12, atol=1e-12 * float(default.abs().max()))
    assert_close_rel(small, dense_fipa(deltas, factors, w, rho, complement), rtol=1e-8)


def test_fipa_step_uses_sample_count_weights_and_server_lr():
    """FIPA.step through the registry: theta + eta_s * oracle, with w_m = N_m / sum N."""
    deltas, factors, _ = random_problem(5, 60, [3, 2, 4])
    counts = [10, 35, 5]
    w = torch.tensor(counts, dtype=DT) / sum(counts)
    cls = AGGREGATORS.get("fipa")
    agg = cls(cls.Params(rho=1e-3, complement="fedavg", server_lr=0.7, rank=4))
    theta = torch.linspace(-1, 1, 60, dtype=DT)
    ups = [ClientUpdate(d, n, factor=A) for d, n, A in zip(deltas, counts, factors, strict=True)]
    got = agg.step(theta, ups, agg.init_state(theta), ROUND)
    expected = theta + 0.7 * dense_fipa(deltas, factors, w, 1e-3, "fedavg")
    assert_close_rel(got, expected, rtol=1e-8)


def test_fipa_direction_float32_factors_match_float64_oracle():
    """Float32 uploads, nearly collinear clients: the server solve should still be float64-accurate.

    The oracle takes the very same float32 numbers, exactly promoted to float64. Clients 1 and 2
    share their top eigenvectors up to 1e-3, as clients with similar data do; the Gram matrix
    then has eigenvalues far below float32 resolution relative to its largest one.
    """
    g = torch.Generator().manual_seed(8)
    P = 1500
    A1 = torch.logspace(0, -3, 10, dtype=DT)[:, None] * torch.randn(10, P, generator=g, dtype=DT)
    A2 = A1 + 1e-3 * torch.randn(10, P, generator=g, dtype=DT)
    factors = [A.float() for A in (A1, A2, torch.randn(5, P, generator=g, dtype=DT))]
    deltas = [torch.randn(P, generator=g, dtype=DT).float() for _ in range(3)]
    w = torch.tensor([0.3, 0.3, 0.4], dtype=DT)
    got = fipa_direction(deltas, factors, w, 1e-3, "none").double()
    expected = dense_fipa([d.double() for d in deltas], [A.double() for A in factors], w, 1e-3, "none")
    assert float((got - expected).norm() / expected.norm()) < 1e-5


# ----------------------------------------------------------------------------- Gauss-Newton


def local_exact_solve(X: torch.Tensor, y: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """The client's own least-squares minimizer from theta (minimum-norm step if n < P)."""
    n, P = X.shape
    if n >= P:
        return torch.linalg.lstsq(X, y).solution
    return theta + torch.linalg.pinv(X) @ (y - X @ theta)


def least_squares_clients(seed: int, sizes: list[int], P: int):
    """Heterogeneous linear-regression clients: X_m [n_m, P] (shifted per client), y_m [n_m]."""
    g = torch.Generator().manual_seed(seed)
    truth = torch.randn(P, generator=g, dtype=DT)
    data = []
    for m, n in enumerate(sizes):
        X = torch.randn(n, P, generator=g, dtype=DT) + 0.5 * m
        y = X @ truth + 0.3 * torch.randn(n, generator=g, dtype=DT) + (m - 1.0)
        data.append((X, y))
    return data


def linear_round(data, theta: torch.Tensor, name: str, **params) -> torch.Tensor:
    """One round: exact local solves, exact full-rank factors of H_m = X_m^T X_m / n_m."""
    P = theta.numel()
    updates = []
    for X, y in data:
        n = X.shape[0]
        _, A = lowrank_factor(X / n**0.5, rank=P)
        updates.append(ClientUpdate(local_exact_solve(X, y, theta) - theta, n, factor=A))
    cls = AGGREGATORS.get(name)
    agg = cls(cls.Params(**params))
    return agg.step(theta, updates, agg.init_state(theta), ROUND)


@pytest.mark.parametrize("complement", ["none", "fedavg"])
@pytest.mark.parametrize("sizes", [[9, 14, 20], [3, 4, 12, 5]])
def test_fipa_rho0_is_one_gauss_newton_step(sizes, complement):
    """Linear least squares: one undamped FIPA round from any theta^k == lstsq(X, y).

    sizes [9, 14, 20] (all n_m >= P = 8) gives R = 24 > P, a rank-deficient Gram matrix;
    [3, 4, 12, 5] mixes minimum-norm local solves (n_m < P) with an overdetermined one.
    """
    P = 8
    data = least_squares_clients(7, sizes, P)
    X = torch.cat([x for x, _ in data])
    y = torch.cat([t for _, t in data])
    central = torch.linalg.lstsq(X, y).solution
    theta = torch.randn(P, generator=torch.Generator().manual_seed(1), dtype=DT)
    got = linear_round(data, theta, "fipa", rho=0.0, complement=complement, rank=P)
    assert_close_rel(got, central, rtol=1e-8)
    fedavg = linear_round(data, theta, "fedavg")
    assert (fedavg - central).norm() > 1e-2 * central.norm()


# ----------------------------------------------------------------------------- baselines


def make(name: str, **params):
    """An aggregator from the registry with the given parameters."""
    cls = AGGREGATORS.get(name)
    return cls(cls.Params(**params))


ROUNDS = [  # two rounds, two clients with unequal counts (weights 1/4, 3/4)
    [ClientUpdate(torch.tensor([0.4, -0.2, 1e-4], dtype=DT), 10),
     ClientUpdate(torch.tensor([0.0, 0.2, 1e-4], dtype=DT), 30)],
    [ClientUpdate(torch.tensor([-0.04, 0.08, 2e-3], dtype=DT), 30),
     ClientUpdate(torch.tensor([0.0, 0.0, -2e-3], dtype=DT), 10)],
]
THETA0 = [1.0, -2.0, 0.5]


def by_hand_mean(updates: list[ClientUpdate]) -> list[float]:
    """sum_m N_m delta_m / sum_m N_m, coordinate by coordinate in Python floats."""
    N = sum(u.num_samples for u in updates)
    P = updates[0].delta.numel()
    return [sum(u.num_samples * float(u.delta[j]) for u in updates) / N for j in range(P)]


def adaptive_by_hand(rule: str, eta: float, b1: float, b2: float, tau: float) -> list[float]:
    """Reddi et al. (2021), Algorithm 2, in scalar Python for every coordinate and round."""
    x = list(THETA0)
    m = [0.0] * len(x)
    v = [tau**2] * len(x)
    for updates in ROUNDS:
        D = by_hand_mean(updates)
        for j, dj in enumerate(D):
            m[j] = b1 * m[j] + (1 - b1) * dj
            d2 = dj * dj
            if rule == "fedadam":
                v[j] = b2 * v[j] + (1 - b2) * d2
            elif rule == "fedyogi":
                sign = (v[j] > d2) - (v[j] < d2)
                v[j] = v[j] - (1 - b2) * d2 * sign
            else:  # fedadagrad
                v[j] = v[j] + d2
            x[j] = x[j] + eta * m[j] / (v[j] ** 0.5 + tau)
    return x


def run_rounds(agg) -> torch.Tensor:
    """Apply the aggregator for the rounds in ROUNDS from THETA0, keeping server state."""
    theta = torch.tensor(THETA0, dtype=DT)
    state = agg.init_state(theta)
    for k, updates in enumerate(ROUNDS):
        theta = agg.step(theta, updates, state, RoundContext(k + 1))
    return theta


@pytest.mark.parametrize("rule", ["fedadam", "fedyogi", "fedadagrad"])
def test_adaptive_server_optimizers_match_algorithm_2(rule):
    """Two rounds of FedAdam/FedYogi/FedAdagrad == Algorithm 2 written out by hand."""
    hp = {"server_lr": 0.1, "beta1": 0.8, "beta2": 0.95, "tau": 1e-3}
    got = run_rounds(make(rule, **hp))
    expected = adaptive_by_hand(rule, hp["server_lr"], hp["beta1"], hp["beta2"], hp["tau"])
    torch.testing.assert_close(got, torch.tensor(expected, dtype=DT), rtol=1e-12, atol=1e-14)


def test_yogi_differs_from_adam_when_sign_flips():
    """The data above drive v - dbar^2 through both signs, so the rules must disagree."""
    hp = {"server_lr": 0.1, "beta1": 0.8, "beta2": 0.95, "tau": 1e-3}
    adam, yogi = run_rounds(make("fedadam", **hp)), run_rounds(make("fedyogi", **hp))
    assert (adam - yogi).abs().max() > 1e-3


def test_fedavgm_matches_hand_computation():
    """v <- beta v + dbar; x <- x + eta v, two rounds."""
    beta, eta = 0.9, 0.5
    x, v = list(THETA0), [0.0] * 3
    for updates in ROUNDS:
        D = by_hand_mean(updates)
        v = [beta * vj + dj for vj, dj in zip(v, D, strict=True)]
        x = [xj + eta * vj for xj, vj in zip(x, v, strict=True)]
    got = run_rounds(make("fedavgm", server_lr=eta, momentum=beta))
    torch.testing.assert_close(got, torch.tensor(x, dtype=DT), rtol=1e-13, atol=1e-15)


def test_fedavg_is_sample_weighted_mean():
    """FedAvg with counts 1, 3, 6: theta + eta * sum N_m delta_m / 10."""
    deltas = [torch.tensor([1.0, 0.0, -2.0], dtype=DT), torch.tensor([0.0, 3.0, 1.0], dtype=DT),
              torch.tensor([-1.0, 1.0, 0.5], dtype=DT)]
    ups = [ClientUpdate(d, n) for d, n in zip(deltas, [1, 3, 6], strict=True)]
    expected_mean = torch.tensor([(1 - 6) / 10, (9 + 6) / 10, (-2 + 3 + 3) / 10], dtype=DT)
    torch.testing.assert_close(mean_delta(ups), expected_mean, rtol=1e-15, atol=1e-15)
    theta = torch.tensor([1.0, 2.0, 3.0], dtype=DT)
    got = make("fedavg", server_lr=2.0).step(theta, ups, {}, ROUND)
    torch.testing.assert_close(got, theta + 2.0 * expected_mean, rtol=1e-15, atol=1e-15)


def test_diag_fisher_matches_hand_computation():
    """update_j = sum w F_mj d_mj / (sum w F_mj + eps); a coordinate with F = 0 stays put."""
    deltas = [torch.tensor([1.0, -1.0, 2.0, 0.5], dtype=DT), torch.tensor([3.0, 1.0, -2.0, 0.5], dtype=DT)]
    fishers = [torch.tensor([2.0, 0.0, 1.0, 0.0], dtype=DT), torch.tensor([1.0, 4.0, 1e-3, 0.0], dtype=DT)]
    counts, eps, eta = [20, 60], 1e-2, 0.5
    ups = [ClientUpdate(d, n, diag=F) for d, n, F in zip(deltas, counts, fishers, strict=True)]
    w = [n / sum(counts) for n in counts]
    expected = []
    for j in range(4):
        num = sum(w[m] * float(fishers[m][j]) * float(deltas[m][j]) for m in range(2))
        den = sum(w[m] * float(fishers[m][j]) for m in range(2))
        expected.append(eta * num / (den + eps))
    theta = torch.zeros(4, dtype=DT)
    got = make("diag_fisher", eps=eps, server_lr=eta).step(theta, ups, {}, ROUND)
    torch.testing.assert_close(got, torch.tensor(expected, dtype=DT), rtol=1e-14, atol=1e-15)
    assert got[3] == 0.0


def test_uplink_numbers():
    """P for the delta alone, P + r(P + 1) with a rank-r factor, 2P with a diagonal."""
    P, r = 37, 5
    delta = torch.zeros(P, dtype=DT)
    assert ClientUpdate(delta, 3).uplink_numbers == P
    factor_up = ClientUpdate(delta, 3, factor=torch.zeros(r, P, dtype=DT))
    assert factor_up.uplink_numbers == P + r * (P + 1)
    assert ClientUpdate(delta, 3, diag=torch.zeros(P, dtype=DT)).uplink_numbers == 2 * P
