"""Client methods (fipa/clients/): each method's defining property against an oracle.

FedProx mu = 0, FedSAM rho = 0 and FedRCL weight = 0 are plain local training bit for
bit; SCAFFOLD's local steps, control-variate update (option II) and server average,
FedDyn's linear term, state update and server correction follow the papers' formulas,
recomputed here by hand with autograd; every method runs under every aggregator and
resumes from a checkpoint to the same numbers. The methods are stateless: the state a round
reads (the client's, the server's) is passed in and the next one returned, never kept on
the method object.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fipa.aggregators import ClientUpdate
from fipa.client_model import ClientModel
from fipa.clients import (
    CLIENT_METHODS,
    FedDynParams,
    FedProxParams,
    FedRCLParams,
    FedSAMParams,
    LocalParams,
    ScaffoldParams,
    relaxed_contrastive_loss,
)
from fipa.config import ClientConfig, parse_run_config
from fipa.losses import mean_loss
from fipa.params import ParamLayout, model_params
from fipa.round_context import RoundContext
from fipa.simulate import train
from fipa.tasks.regression import Regression, RegressionParams
from fipa.tasks.vision import Vision, VisionParams
from tests.helpers import available_aggregators, tiny

DT = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")


def regression_setup(n: int = 32):
    task = Regression(RegressionParams(n_train=n, hidden=[8, 8], test_points=10), seed=0, dtype=DT)
    torch.manual_seed(0)
    model = task.build_model()
    layout = ParamLayout.of(model)
    return task, model, layout, layout.flatten(model_params(model)), task.client_data(np.arange(n))


def digits_setup(n: int = 48):
    task = Vision(VisionParams(train_subsample=200, test_subsample=50), seed=0, dtype=DT)
    torch.manual_seed(0)
    model = task.build_model()
    layout = ParamLayout.of(model)
    return task, model, layout, layout.flatten(model_params(model)), task.client_data(np.arange(n))


def method(name: str, params, **cfg):
    base = {"optimizer": "sgd", "lr": 0.05, "local_steps": 5, "batch_size": 8}
    base.update(cfg)
    return CLIENT_METHODS.get(name)(ClientConfig(method=name, params=params, **base))


def run_local(m, setup, seed: int = 7, state=None, server=None):
    """One client's local training in round 1; returns its LocalResult (theta_m, next state, upload)."""
    task, model, layout, theta0, data = setup
    state = m.init_state(theta0) if state is None else state
    ctx = RoundContext(1, m.init_server_state(theta0) if server is None else server)
    gen = torch.Generator().manual_seed(seed)
    return m.train(ClientModel(task, model, layout), theta0, data, gen, state, ctx)


def loss_grad(task, model, layout, theta, batch) -> torch.Tensor:
    """Oracle gradient of the task loss at theta [P], straight from autograd."""
    flat = theta.detach().clone().requires_grad_(True)
    loss = mean_loss(task.loss_kind, task.outputs(model, layout.unflatten(flat), batch), task.targets(batch))
    return torch.autograd.grad(loss, flat)[0]


# ----------------------------------------------------------------------------- zero settings


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize(("name", "params"), [("fedprox", FedProxParams(mu=0.0)),
                                             ("fedsam", FedSAMParams(rho=0.0))])
def test_zero_strength_is_plain_local_training_bit_for_bit(name, params, optimizer):
    setup = regression_setup()
    plain = run_local(method("local", LocalParams(), optimizer=optimizer), setup).theta
    ours = run_local(method(name, params, optimizer=optimizer), setup).theta
    assert torch.equal(plain, ours) and not torch.equal(plain, setup[3])


def test_fedrcl_weight_zero_is_plain_training_bit_for_bit():
    setup = digits_setup()
    plain = run_local(method("local", LocalParams(), local_steps=3, batch_size=16), setup).theta
    ours = run_local(method("fedrcl", FedRCLParams(weight=0.0), local_steps=3, batch_size=16), setup).theta
    assert torch.equal(plain, ours)
    other = run_local(method("fedrcl", FedRCLParams(weight=1.0), local_steps=3, batch_size=16), setup).theta
    assert not torch.allclose(plain, other)


def test_scaffold_with_zero_controls_first_step_is_plain_sgd():
    setup = regression_setup()
    plain = run_local(method("local", LocalParams(), local_steps=1), setup).theta
    ours = run_local(method("scaffold", ScaffoldParams(), local_steps=1), setup).theta
    assert torch.equal(plain, ours)


# ----------------------------------------------------------------------------- FedProx, FedSAM


def test_fedprox_step_adds_the_proximal_gradient():
    task, model, layout, theta0, data = setup = regression_setup()
    mu, lr = 0.3, 0.05
    ours = run_local(method("fedprox", FedProxParams(mu=mu), local_steps=2, batch_size=None), setup).theta
    y = theta0.clone()
    for _ in range(2):  # full batch: y <- y - lr (grad L(y) + mu (y - theta0))
        y = y - lr * (loss_grad(task, model, layout, y, data) + mu * (y - theta0))
    torch.testing.assert_close(ours, y, rtol=1e-12, atol=1e-14)


def test_fedsam_step_is_the_sam_oracle():
    task, model, layout, theta0, data = setup = regression_setup()
    rho, lr = 0.05, 0.05
    ours = run_local(method("fedsam", FedSAMParams(rho=rho), local_steps=2, batch_size=None), setup).theta
    y = theta0.clone()
    for _ in range(2):  # eps = rho g / ||g||; y <- y - lr grad L(y + eps)
        g = loss_grad(task, model, layout, y, data)
        y = y - lr * loss_grad(task, model, layout, y + rho * g / g.norm(), data)
    torch.testing.assert_close(ours, y, rtol=1e-12, atol=1e-14)


# ----------------------------------------------------------------------------- SCAFFOLD


def test_scaffold_local_steps_and_option_ii_update():
    """y <- y - lr (g(y) - c_i + c) for K full-batch steps; c_i+ = c_i - c + (x - y)/(K lr), which
    for plain SGD is the mean of the raw gradients along the path; server c += sum dc / N."""
    task, model, layout, theta0, data = setup = regression_setup()
    K, lr, N = 4, 0.05, 10
    g = torch.Generator().manual_seed(1)
    c = 0.1 * torch.randn(theta0.shape, generator=g, dtype=DT)
    c_i = 0.1 * torch.randn(theta0.shape, generator=g, dtype=DT)
    m = method("scaffold", ScaffoldParams(), local_steps=K, batch_size=None)
    server = {"c": c.clone()}
    state = {"c": c_i.clone()}
    attributes = dict(vars(m))
    res = run_local(m, setup, state=state, server=server)
    y, grads = theta0.clone(), []
    for _ in range(K):
        grads.append(loss_grad(task, model, layout, y, data))
        y = y - lr * (grads[-1] - c_i + c)
    torch.testing.assert_close(res.theta, y, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(res.state["c"], torch.stack(grads).mean(0), rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(res.upload["dc"], res.state["c"] - c_i, rtol=0, atol=0)
    # stateless: the state and server state passed in are unchanged, the method holds none
    assert torch.equal(state["c"], c_i) and torch.equal(server["c"], c)
    update = ClientUpdate(res.theta - theta0, 32, method_upload=res.upload)
    out, next_server = m.end_round(res.theta, [update], RoundContext(1, server), N)
    assert out is res.theta  # SCAFFOLD leaves the aggregated model alone
    torch.testing.assert_close(next_server["c"], c + (res.state["c"] - c_i) / N, rtol=1e-12, atol=1e-15)
    assert torch.equal(server["c"], c) and vars(m) == attributes  # nothing kept on the object


def scaffold_cfg(**over):
    return tiny(client={"method": "scaffold", "optimizer": "sgd", "lr": 0.05, "local_epochs": 1,
                        "batch_size": 8}, aggregator={"name": "fedavg"}, **over)


def test_scaffold_server_c_is_the_mean_of_client_cs_with_full_participation(tmp_path):
    """From c = c_i = 0 and every client in every round, c = (1/N) sum_i c_i after each round."""
    train(parse_run_config(scaffold_cfg(rounds=2)), tmp_path, log=lambda s: None)
    ck = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    cs = torch.stack([s["c"] for s in ck["client_states"].values()])
    assert len(cs) == 4 and cs.abs().max() > 0
    torch.testing.assert_close(ck["method_state"]["c"], cs.mean(0), rtol=1e-12, atol=1e-15)


def test_scaffold_partial_participation_resumes_to_the_same_numbers(tmp_path):
    cfg = scaffold_cfg(participation=0.5, rounds=4)
    straight = train(parse_run_config(cfg), tmp_path / "a", log=lambda s: None)
    train(parse_run_config({**cfg, "rounds": 2}), tmp_path / "b", log=lambda s: None)
    resumed = train(parse_run_config(cfg), tmp_path / "b", log=lambda s: None)
    assert straight["final"] == resumed["final"]
    a, b = (torch.load(tmp_path / d / "checkpoint.pt", weights_only=True) for d in "ab")
    assert torch.equal(a["method_state"]["c"], b["method_state"]["c"])


# ----------------------------------------------------------------------------- FedDyn


def test_feddyn_local_objective_and_state_update():
    """Full-batch SGD on L(y) - <g_prev, y> + alpha/2 ||y - x||^2, then g <- g_prev - alpha (y - x)."""
    task, model, layout, theta0, data = setup = regression_setup()
    alpha, lr, K = 0.1, 0.05, 3
    g_prev = 0.05 * torch.randn(theta0.shape, generator=torch.Generator().manual_seed(2), dtype=DT)
    m = method("feddyn", FedDynParams(alpha=alpha), local_steps=K, batch_size=None)
    state = {"grad": g_prev.clone()}
    res = run_local(m, setup, state=state, server={"h": torch.zeros_like(theta0)})
    y = theta0.clone()
    for _ in range(K):
        y = y - lr * (loss_grad(task, model, layout, y, data) - g_prev + alpha * (y - theta0))
    torch.testing.assert_close(res.theta, y, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(res.state["grad"], g_prev - alpha * (res.theta - theta0), rtol=1e-12,
                               atol=1e-15)
    assert torch.equal(state["grad"], g_prev) and res.upload == {}  # FedDyn uploads its delta only


def test_feddyn_server_h_and_correction():
    """h <- h - (alpha / N) sum_k (theta_k - x);  broadcast = aggregate - h / alpha."""
    setup = regression_setup()
    theta0 = setup[3]
    alpha, N = 0.1, 8
    m = method("feddyn", FedDynParams(alpha=alpha), local_steps=2)
    h0 = 0.01 * torch.randn(theta0.shape, generator=torch.Generator().manual_seed(3), dtype=DT)
    ctx = RoundContext(1, {"h": h0.clone()})
    task, model, layout, _, data = setup
    cm = ClientModel(task, model, layout)
    thetas = [m.train(cm, theta0, data, torch.Generator().manual_seed(s), m.init_state(theta0), ctx).theta
              for s in (1, 2, 3)]
    updates = [ClientUpdate(t - theta0, 32) for t in thetas]
    agg = torch.stack(thetas).mean(0)
    out, server = m.end_round(agg, updates, ctx, N)
    h = h0 - alpha / N * sum(t - theta0 for t in thetas)
    torch.testing.assert_close(server["h"], h, rtol=1e-12, atol=1e-16)
    torch.testing.assert_close(out, agg - h / alpha, rtol=1e-12, atol=1e-14)
    assert torch.equal(ctx.server["h"], h0)
    plain = method("feddyn", FedDynParams(alpha=alpha, server_correction=False))
    assert plain.end_round(agg, updates, RoundContext(1, {"h": h0.clone()}), N)[0] is agg


# ----------------------------------------------------------------------------- FedRCL


def rcl_oracle(z, y, tau, lam, beta, k) -> float:
    """Loop form of FedRCL's loss: hardest positive vs k hardest negatives, plus the penalty."""
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    S = z @ z.T
    n, total = len(y), 0.0
    for i in range(n):
        pos = min(S[i, j] for j in range(n) if y[j] == y[i])
        negs = sorted((S[i, j] for j in range(n) if y[j] != y[i]), reverse=True)[:k]
        sup = -np.log(np.exp(pos / tau) / (np.exp(pos / tau) + sum(np.exp(s / tau) for s in negs)))
        close = [S[i, j] for j in range(n) if j != i and y[j] == y[i] and S[i, j] >= lam]
        div = np.log(1 + sum(np.exp((s - S[i, i]) / tau) for s in close))
        total += sup + beta * div
    return total / n


def test_relaxed_contrastive_loss_matches_the_loop_oracle():
    g = torch.Generator().manual_seed(4)
    z = torch.randn(12, 5, generator=g, dtype=DT)
    z[1] = z[0] + 0.05 * z[1]  # a same-class pair above the threshold
    y = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 3, 0, 1, 4])  # class 4 alone: its positive is itself
    for tau, lam, beta, k in [(0.05, 0.7, 1.0, 2), (0.5, 0.2, 0.3, 3), (0.1, 0.9, 2.0, 20)]:
        got = relaxed_contrastive_loss(z, y, tau, lam, beta, k)
        assert float(got) == pytest.approx(rcl_oracle(z.numpy(), y.numpy(), tau, lam, beta, k), rel=1e-10)
    zr = z.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(relaxed_contrastive_loss(zr, y), zr)
    assert torch.isfinite(grad).all()
    # one class only: no negatives, supervised term 0; nothing closer than threshold 1.0: no penalty
    one = relaxed_contrastive_loss(z, torch.zeros(12, dtype=torch.long), 0.1, 1.0, 1.0, 2)
    assert float(one) == pytest.approx(0.0, abs=1e-12)


def test_fedrcl_objective_is_ce_plus_weighted_rcl():
    task, model, layout, theta0, data = digits_setup(24)
    m = method("fedrcl", FedRCLParams(weight=0.5, penalty=0.7))
    flat = theta0.clone().requires_grad_(True)
    obj, loss = m.objective(ClientModel(task, model, layout), flat, theta0, data, {})
    with torch.no_grad():
        feats, out = task.features(model, layout.unflatten(theta0), data)
        ce = mean_loss("ce", out, data["y"])
        rcl = relaxed_contrastive_loss(feats, data["y"], 0.05, 0.7, 0.7, 2)
    assert float(loss.detach()) == pytest.approx(float(ce), rel=1e-12)
    assert float(obj.detach()) == pytest.approx(float(ce + 0.5 * rcl), rel=1e-12)


# ----------------------------------------------------------------------------- composition


@pytest.mark.parametrize("aggregator", available_aggregators())
@pytest.mark.parametrize("name", ["fedprox", "scaffold", "feddyn", "fedsam"])
def test_every_method_runs_under_every_aggregator(tmp_path, name, aggregator):
    cfg = tiny(client={"method": name, "optimizer": "sgd", "lr": 0.05, "local_steps": 2, "batch_size": 8},
               aggregator={"name": aggregator}, rounds=1, participation=0.5)
    final = train(parse_run_config(cfg), tmp_path, log=lambda s: None)
    assert final["rounds_completed"] == 1 and not final["diverged"]
    assert np.isfinite(final["final"]["test_mse"])


@pytest.mark.parametrize("aggregator", ["fedavg", "fipa"])
def test_fedrcl_runs_on_vision_with_fedavg_and_fipa(tmp_path, aggregator):
    cfg = {
        "task": {"name": "vision", "dataset": "digits", "train_subsample": 200, "test_subsample": 50},
        "partition": {"scheme": "dirichlet_balanced", "clients": 4, "alpha": 0.5},
        "client": {"method": "fedrcl", "optimizer": "sgd", "lr": 0.05, "local_steps": 2, "batch_size": 16},
        "aggregator": {"name": aggregator, **({"rank": 3, "curvature_samples": 8} if aggregator == "fipa"
                                              else {})},
        "rounds": 1, "dtype": "float32",
    }
    final = train(parse_run_config(cfg), tmp_path, log=lambda s: None)
    assert final["rounds_completed"] == 1 and 0 <= final["final"]["test_acc"] <= 1


def test_scaffold_uplink_counts_the_control_variate_delta(tmp_path):
    """Each SCAFFOLD client sends Delta y and Delta c_i: twice FedAvg-with-local's P numbers."""
    cfg = scaffold_cfg(rounds=2, participation=0.5)
    sc = train(parse_run_config(cfg), tmp_path / "s", log=lambda s: None)
    loc = train(parse_run_config({**cfg, "client": {**cfg["client"], "method": "local"}}), tmp_path / "l",
                log=lambda s: None)
    P = torch.load(tmp_path / "s" / "checkpoint.pt", weights_only=True)["theta"].numel()
    clients = 2 * 2  # rounds x sampled clients (participation 0.5 of 4)
    assert loc["uplink_bytes_total"] == clients * P * 8  # float64
    assert sc["uplink_bytes_total"] == 2 * loc["uplink_bytes_total"]


def test_a_task_loss_objective_is_the_task_loss_plus_extra_loss():
    """What ``objective_kind: task_loss`` declares, and the stacked direct path evaluates in its
    place: every such method's objective is the task's mean loss plus its ``extra_loss``."""
    task, model, layout, theta0, data = regression_setup(16)
    cm = ClientModel(task, model, layout)
    flat = theta0 + 0.01
    defaults = {"fedprox": FedProxParams(mu=0.3), "feddyn": FedDynParams(alpha=0.2)}
    for name in CLIENT_METHODS.names():
        cls = CLIENT_METHODS.get(name)
        if cls.objective_kind != "task_loss" or not cls.__module__.startswith("fipa."):
            continue  # plugins registered by other tests are not this test's business
        m = method(name, defaults.get(name, cls.Params()))
        state = {k: 0.1 * torch.ones_like(theta0) for k in m.client_state_keys}
        obj, loss = m.objective(cm, flat, theta0, data, state)
        want = mean_loss(task.loss_kind, cm.outputs(flat, data), task.targets(data))
        extra = m.extra_loss(flat, theta0, state)
        assert float(loss) == float(want), name
        assert float(obj) == float(want if extra is None else want + extra), name


def test_declared_task_features_match_what_each_task_implements():
    """``has_features`` (FedRCL's check reads it, no probing) agrees with the override."""
    from fipa.tasks import TASKS, Task

    for name in TASKS.names():
        cls = TASKS.get(name)
        assert cls.has_features == (cls.features is not Task.features), name
