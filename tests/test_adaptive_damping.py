"""FIPA's damping rules (``damping: fixed | adaptive | trust_region``) and curvature memory.

The trust-region rule is checked on quadratics where the server's local-minimizer model is
exact (ratio 1: rho relaxes) or where every step raises the loss (rho grows, then dbar);
``damping: fixed`` against a verbatim copy of the pre-change solver, bit for bit; adaptive
runs against themselves resumed from a checkpoint; the paper's undamped form ends diverged.
"""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from fipa.aggregators import (
    AGGREGATORS,
    FIPA,
    ClientUpdate,
    FIPASystem,
    LossProbe,
    RoundContext,
    fipa_direction,
)
from fipa.batch import CellJob, run_cells
from fipa.config import parse_run_config
from fipa.simulate import finite_uploads, train
from tests.helpers import tiny
from tests.test_aggregators import random_problem

DT = torch.float64
pytestmark = pytest.mark.usefixtures("one_thread")


def _reference_fipa_direction(deltas, factors, weights, rho, complement="fedavg", chunk=1 << 16):
    """fipa_direction as it was before adaptive damping (verbatim): the bitwise oracle."""
    P = deltas[0].numel()
    dbar = torch.zeros_like(deltas[0])
    for wm, d in zip(weights, deltas, strict=True):
        dbar.add_(d, alpha=float(wm))
    ranks = torch.tensor([A.shape[0] for A in factors])
    R, offsets = int(ranks.sum()), [0, *ranks.cumsum(0).tolist()]
    rows_of = [slice(offsets[m], offsets[m + 1]) for m in range(len(factors))]
    device = deltas[0].device
    t = weights.to(torch.float64).sqrt().repeat_interleave(ranks).to(device)
    buffer = torch.empty(R, min(chunk, P), dtype=torch.float64, device=device)

    def block(cols):
        out = buffer[:, : cols.stop - cols.start]
        for rows, A in zip(rows_of, factors, strict=True):
            out[rows].copy_(A[:, cols])
        return out

    def chunks():
        for i in range(0, P, chunk):
            yield slice(i, min(i + chunk, P))

    gram = torch.zeros(R, R, dtype=torch.float64, device=device)
    c = torch.zeros(R, dtype=torch.float64, device=device)
    b_dbar = torch.zeros(R, dtype=torch.float64, device=device)
    for cols in chunks():
        Ac = block(cols)
        gram.addmm_(Ac, Ac.T)
        b_dbar.addmv_(Ac, dbar[cols].to(torch.float64))
        for rows, d in zip(rows_of, deltas, strict=True):
            c[rows].addmv_(Ac[rows], d[cols].to(torch.float64))
    gram.mul_(t[:, None] * t[None, :])
    c.mul_(t)
    b_dbar.mul_(t)
    e, U = torch.linalg.eigh(gram)
    keep = e > e.max().clamp_min(0) * R * torch.finfo(torch.float64).eps * 10
    e, U = e[keep], U[:, keep]
    s = e.sqrt()
    lam = rho * float(e.max()) if e.numel() else 0.0
    qt_g = s * (U.T @ c) + lam * (U.T @ b_dbar) / s
    coef = qt_g / (e + lam)
    use_complement = complement == "fedavg"
    if use_complement:
        coef = coef - U.T @ b_dbar / s
    z = t * (U @ (coef / s))
    out = dbar.clone() if use_complement else torch.zeros_like(dbar)
    for cols in chunks():
        out[cols] += (block(cols).T @ z).to(out.dtype)
    return out


def run(cfg, outdir) -> dict:
    return train(parse_run_config(cfg), outdir, log=lambda s: None)


def metrics(path) -> pd.DataFrame:
    return pd.read_csv(path / "metrics.csv").drop(columns=["wall_s"])


# ----------------------------------------------------------------------------- trust region


def quadratic_round(seed: int = 0, P: int = 40, ranks=(3, 4, 2)):
    """theta^k, the round's uploads with exact factors, and the model loss of the server:
    L(theta) = sum_m w_m kappa/2 (theta - theta^k - delta_m)^T A_m^T A_m (...), kappa = 2."""
    deltas, factors, w = random_problem(seed, P, list(ranks))
    counts = [int(round(float(x) * 1000)) for x in w]
    w = torch.tensor(counts, dtype=DT) / sum(counts)
    theta = torch.linspace(-1, 1, P, dtype=DT)
    ups = [ClientUpdate(d, n, factor=A, client=m) for m, (d, n, A) in
           enumerate(zip(deltas, counts, factors, strict=True))]

    def model_loss(at: torch.Tensor) -> float:
        return sum(float(wm) * float(((A @ (at - theta - d)) ** 2).sum())  # kappa/2 = 1
                   for wm, A, d in zip(w, factors, deltas, strict=True))

    return theta, ups, model_loss


def trust_region(**over) -> FIPA:
    cls = AGGREGATORS.get("fipa")
    # truncation 0: the floor (tested below) stays out of these rho checks
    return cls(cls.Params(**{"rho": 1e-3, "rank": 4, "damping": "trust_region", "truncation": 0.0, **over}))


@pytest.mark.parametrize(("damping", "probes"),
                         [("fixed", False), ("adaptive", False), ("trust_region", True)])
def test_only_trust_region_asks_the_round_for_a_loss_probe(damping, probes):
    """The loop builds ``RoundContext.probe`` where ``needs_loss_probe``: FIPA's trust-region test only."""
    cls = AGGREGATORS.get("fipa")
    assert cls(cls.Params(damping=damping)).needs_loss_probe is probes
    fedavg = AGGREGATORS.get("fedavg")
    assert fedavg(fedavg.Params()).needs_loss_probe is False


def test_trust_region_relaxes_rho_when_the_model_is_exact():
    """Loss = the server's own quadratic model: actual = predicted decrease, ratio 1 > 3/4."""
    theta, ups, loss = quadratic_round()
    agg = trust_region()
    state = agg.init_state(theta)
    out = agg.step(theta, ups, state, RoundContext(1, probe=LossProbe(loss, clients=3, hessian_scale=2.0)))
    assert float(state["ratio"]) == pytest.approx(1.0, rel=1e-8)
    assert float(state["rho"]) == pytest.approx(1e-3 / 2)
    assert int(state["rejected_steps"]) == 0 and int(state["loss_probe_passes"]) == 2 * 3
    expected = theta + fipa_direction([u.delta for u in ups], [u.factor for u in ups],
                                      torch.tensor([u.num_samples for u in ups], dtype=DT)
                                      / sum(u.num_samples for u in ups), 1e-3)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def test_trust_region_grows_rho_after_bad_steps_then_averages():
    """Every step raises the loss: each try is rejected, rho grows by rho_increase per try,
    and after max_retries retries the round takes dbar; then good rounds relax rho again."""
    theta, ups, loss = quadratic_round(1)
    bad = LossProbe(lambda at: loss(at) + 1e3 * float((at - theta).norm() ** 2), 3, 2.0)
    agg = trust_region(max_retries=2)
    state = agg.init_state(theta)
    out = agg.step(theta, ups, state, RoundContext(1, probe=bad))
    assert float(state["rho"]) == pytest.approx(1e-3 * 4**3)
    assert int(state["rejected_steps"]) == 3 and int(state["fallback_steps"]) == 1
    assert int(state["loss_probe_passes"]) == 3 * (1 + 3)
    dbar = sum(u.num_samples * u.delta for u in ups) / sum(u.num_samples for u in ups)
    torch.testing.assert_close(out, theta + dbar, rtol=1e-12, atol=1e-12)
    grown = float(state["rho"])
    for _ in range(2):  # exact model again: two good rounds halve rho twice
        agg.step(theta, ups, state, RoundContext(1, probe=LossProbe(loss, 3, 2.0)))
    assert float(state["rho"]) == pytest.approx(grown / 4)


def test_poor_step_grows_rho_but_is_kept():
    """ratio < shrink_below with a decrease: accepted, rho grows; scale errors count (kappa)."""
    theta, ups, loss = quadratic_round(2)
    agg = trust_region()
    state = agg.init_state(theta)
    # the true loss is a tenth of the model: actual / pred = 0.1
    agg.step(theta, ups, state, RoundContext(1, probe=LossProbe(lambda at: 0.1 * loss(at), 3, 2.0)))
    assert float(state["ratio"]) == pytest.approx(0.1, rel=1e-8)
    assert float(state["rho"]) == pytest.approx(4e-3) and int(state["rejected_steps"]) == 0


def test_adaptive_floor_is_the_truncation_level():
    """lambda = max(rho lambda_max, tau), tau = sum_m w_m sigma_{m,r} (complete factors: 0)."""
    deltas, factors, w = random_problem(3, 60, [4, 4, 2])
    system = FIPASystem(deltas, factors, w)
    tau = sum(float(wm) * float((A * A).sum(1).min()) for wm, A in zip(w, factors, strict=True)
              if A.shape[0] >= 4)
    assert system.truncation_level(4) == pytest.approx(tau, rel=1e-12)
    lam_max = float(torch.linalg.eigvalsh(sum(wm * A.T @ A for wm, A in zip(w, factors, strict=True))).max())
    rho = 0.5 * tau / lam_max  # the floor binds: same as fixed damping at rho = tau / lambda_max
    got = system.direction(system.coefficients(rho, tau))
    torch.testing.assert_close(got, fipa_direction(deltas, factors, w, tau / lam_max), rtol=1e-9, atol=1e-12)


def test_memory_anchors_absent_clients_with_zero_delta():
    """memory: curvature == FIPA over all clients with the absent ones' stale factors and delta 0."""
    theta, ups, _ = quadratic_round(4, ranks=(3, 3, 3))
    cls = AGGREGATORS.get("fipa")
    agg = cls(cls.Params(rho=1e-3, rank=3, memory="curvature"))
    state = agg.init_state(theta)
    agg.step(theta, ups, state, RoundContext(1))  # round 1: everyone; remembered
    out = agg.step(theta, ups[:1], state, RoundContext(2))  # round 2: client 0 only
    counts = torch.tensor([u.num_samples for u in ups], dtype=DT)
    w = counts / counts.sum()
    system = FIPASystem([ups[0].delta, torch.zeros_like(theta), torch.zeros_like(theta)],
                        [u.factor for u in ups], w)
    system.dbar = ups[0].delta  # dbar averages the round's clients only
    expected_b = system  # same H, same c; dbar differs: compare through the dense formula
    H = sum(wm * u.factor.T @ u.factor for wm, u in zip(w, ups, strict=True))
    lam = 1e-3 * float(torch.linalg.eigvalsh(H).max())
    g = w[0] * ups[0].factor.T @ ups[0].factor @ ups[0].delta + lam * ups[0].delta
    dense = torch.linalg.solve(H + lam * torch.eye(theta.numel(), dtype=DT), g)
    del expected_b
    torch.testing.assert_close(out, theta + dense, rtol=1e-8, atol=1e-10)


# ----------------------------------------------------------------------------- fixed: bitwise


@pytest.mark.parametrize(("rho", "complement", "chunk"), [(1e-4, "fedavg", 1 << 16), (1e-3, "none", 7),
                                                          (0.0, "fedavg", 13), (0.0, "none", 1 << 16)])
def test_fixed_direction_bitwise_equals_pre_change_solver(rho, complement, chunk):
    deltas, factors, w = random_problem(5, 103, [4, 3, 5])
    assert torch.equal(fipa_direction(deltas, factors, w, rho, complement, chunk),
                       _reference_fipa_direction(deltas, factors, w, rho, complement, chunk))


def test_fixed_damping_run_bitwise_equals_pre_change_code(tmp_path, monkeypatch):
    cfg = tiny(rounds=3, aggregator={"damping": "fixed"})
    run(cfg, tmp_path / "now")

    def old_step(self, theta, updates, state, ctx):
        n = torch.tensor([u.num_samples for u in updates], dtype=DT)
        return theta + self.params.server_lr * _reference_fipa_direction(
            [u.delta for u in updates], [u.factor for u in updates], n / n.sum(), self.params.rho,
            self.params.complement, self.params.chunk)

    monkeypatch.setattr(FIPA, "step", old_step)
    run(cfg, tmp_path / "old")
    a, b = metrics(tmp_path / "now"), metrics(tmp_path / "old")
    assert list(a.columns) == list(b.columns) and "damping_rho_effective" not in a.columns
    pd.testing.assert_frame_equal(a, b, check_exact=True)


# ----------------------------------------------------------------------------- runs


@pytest.mark.parametrize("damping", ["adaptive", "trust_region"])
def test_adaptive_run_resumed_from_a_checkpoint_gives_the_same_numbers(tmp_path, damping):
    cfg = lambda rounds: tiny(rounds=rounds, participation=0.5,  # noqa: E731
                              aggregator={"damping": damping, "memory": "curvature"})
    run(cfg(3), tmp_path / "resumed")
    final = run(cfg(6), tmp_path / "resumed")
    straight = run(cfg(6), tmp_path / "straight")
    pd.testing.assert_frame_equal(metrics(tmp_path / "resumed"), metrics(tmp_path / "straight"),
                                  check_exact=True)
    assert final["aggregator_stats"] == straight["aggregator_stats"]
    assert "damping_rho_effective" in metrics(tmp_path / "straight").columns
    if damping == "trust_region":  # 4 of 4 clients... 2 per round here, at least 2 probes a round
        assert final["aggregator_stats"]["damping_loss_probe_passes"] >= 6 * 2 * 2


PAPER_FORM = {"name": "fipa", "rho": 0.0, "complement": "none", "rank": 4}


def test_paper_form_diverges_and_the_batch_goes_on(tmp_path):
    """rho 0, complement none (pinv, no damping): diverged, recorded, never a crash."""
    # on these small MLPs the undamped step blows the loss up by 1e8 to 1e25 but stays finite;
    # a large server step makes it overflow within a few rounds (NaN deltas, curvature, theta)
    diverging = tiny(rounds=8, aggregator={**PAPER_FORM, "server_lr": 1e100}, task={"activation": "gelu"})
    cells = [CellJob(output=str(tmp_path / "paper"), spec=diverging, label="paper"),
             CellJob(output=str(tmp_path / "fedavg"), spec=tiny(rounds=2, aggregator={"name": "fedavg"}))]
    out = run_cells(cells, make_log=lambda c: (lambda s: None), echo=lambda s: None)
    paper, other = out[str(tmp_path / "paper")], out[str(tmp_path / "fedavg")]
    assert paper is not None and paper["diverged"] is True and paper["rounds_completed"] < 8
    assert other is not None and other["diverged"] is False and other["rounds_completed"] == 2


def test_non_finite_uploads_give_nan_not_an_eigensolver_error():
    deltas, factors, w = random_problem(6, 30, [3, 3])
    factors[1] = factors[1].clone()
    factors[1][0, 0] = math.inf
    assert torch.isnan(fipa_direction(deltas, factors, w, 1e-4)).all()
    assert not finite_uploads([ClientUpdate(deltas[0], 1, factor=factors[1])])
    assert finite_uploads([ClientUpdate(deltas[0], 1, factor=factors[0])])
