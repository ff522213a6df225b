"""Vectorized rounds (fipa/vectorized.py) against the sequential reference path.

Oracles: the sequential path (``vectorize: false``) itself, whose metrics.csv the
vectorized path must reproduce to 1e-9 relative in float64 for every client method and
aggregator on the regression and PINN tasks, with unequal client sizes; the minibatch
generator ``fipa.clients.minibatches`` for the batch plans; ``client_curvature`` per client
for the round's stacked curvature.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from torch.func import functional_call

from fipa.client_model import ClientModel
from fipa.clients import CLIENT_METHODS, minibatches
from fipa.config import ClientConfig, ConfigError, parse_run_config
from fipa.curvature import CurvatureRequest, client_curvature
from fipa.params import ParamLayout, call
from fipa.round_context import RoundContext
from fipa.simulate import Simulation, train
from fipa.stacked_curvature import round_curvature
from fipa.tasks.regression import ACTIVATIONS, mlp
from fipa.vectorized import (
    AUTO_VECTORIZE_WORK,
    batch_plan,
    choose_path,
    direct_path,
    local_train,
    stacked_model,
)
from tests.helpers import available_aggregators, tiny

RTOL = 1e-9
# FIPA's damped solve amplifies rounding by up to 1/rho per round: with rho = 1e-3 the
# sequential path alone moves by ~1e-10 between 1 and 2 torch threads after two rounds
# (notes/speed-results.md); rho = 1e-2 keeps both comparisons far inside RTOL.
METHODS = {"local": {}, "fedprox": {"mu": 0.1}, "scaffold": {}, "feddyn": {"alpha": 0.1},
           "fedsam": {"rho": 0.05}}
AGG_PARAMS = {"fipa": {"rho": 1e-2, "rank": 4}, "diag_fisher": {}, "fedadam": {"server_lr": 0.01}}
PDE = {
    "task": {"name": "pde", "problem": "poisson1d", "n_domain": 30, "hidden": [8, 8], "test_points": 40},
    "partition": {"scheme": "domain_split", "clients": 3, "pieces": 1},
    "client": {"method": "local", "optimizer": "adam", "lr": 0.003, "local_steps": 4},
    "aggregator": {"name": "fedavg"},
    "rounds": 2, "eval_every": 1, "seed": 0,
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def both_paths(cfg: dict, tmp_path) -> tuple[pd.DataFrame, pd.DataFrame, dict, dict]:
    """(sequential metrics, vectorized metrics, their checkpoints) without wall times."""
    out = []
    for vec in (False, True):
        d = tmp_path / f"vec{vec}"
        final = train(parse_run_config({**cfg, "vectorize": vec}), d, log=lambda s: None)
        assert final["local_training"]["vectorized"] is vec
        out.append((pd.read_csv(d / "metrics.csv").drop(columns=["wall_s"]),
                    torch.load(d / "checkpoint.pt", weights_only=True)))
    (a, ca), (b, cb) = out
    return a, b, ca, cb


def assert_close_vector(got: torch.Tensor, want: torch.Tensor, rtol: float = RTOL) -> None:
    """||got - want|| <= RTOL ||want|| (parameter vectors: entries near 0 make elementwise
    relative errors meaningless); integer state (an optimizer's step count) exactly."""
    if not got.is_floating_point():
        assert torch.equal(got, want)
        return
    assert float((got - want).norm()) <= rtol * float(want.norm()) + 1e-15


def assert_same_run(cfg: dict, tmp_path, rtol: float = RTOL) -> None:
    a, b, ca, cb = both_paths(cfg, tmp_path)
    assert list(a.columns) == list(b.columns) and len(a) == cfg["rounds"] + 1
    np.testing.assert_allclose(b.to_numpy(float), a.to_numpy(float), rtol=rtol, atol=0)
    assert_close_vector(cb["theta"], ca["theta"], rtol)
    # stateful methods: per-client and server state agree as well
    assert ca["client_states"].keys() == cb["client_states"].keys()
    for m, st in ca["client_states"].items():
        for k, v in st.items():
            assert_close_vector(cb["client_states"][m][k], v, rtol)
    for k, v in ca["method_state"].items():
        assert_close_vector(cb["method_state"][k], v, rtol)


def client_block(method: str, **over) -> dict:
    return {"method": method, **METHODS[method], **over}


# ----------------------------------------------------------------------------- batch plans


@pytest.mark.parametrize(("n", "batch_size", "epochs", "steps"), [
    (13, 4, 2, None), (12, 4, 1, None), (7, None, 3, None), (5, 8, 2, None), (13, 4, 1, 7), (9, 2, 1, 3),
])
def test_batch_plan_is_minibatches_with_padding(n, batch_size, epochs, steps):
    cfg = ClientConfig(batch_size=batch_size, local_epochs=epochs, local_steps=steps)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    ref = list(minibatches(n, cfg, g1))
    plan = batch_plan(n, cfg, g2)
    assert plan.shape[0] == len(ref)
    for row, idx in zip(plan, ref, strict=True):
        assert row[row >= 0].tolist() == idx.tolist() and (row[len(idx):] == -1).all()
    # the same draws: both generators are left in the same state
    assert torch.equal(g1.get_state(), g2.get_state())


# ----------------------------------------------------------------------------- stacked MLP


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_stacked_mlp_is_the_model_at_each_clients_theta(activation):
    """Oracle: the model itself (functional_call at theta_k) on client k's inputs."""
    torch.manual_seed(0)
    model = mlp([2, 6, 5, 3], ACTIVATIONS[activation]).double()
    layout = ParamLayout.of(model)
    K, n = 4, 7
    thetas = torch.randn(K, layout.numel, dtype=torch.float64)
    x = torch.randn(K, n, 2, dtype=torch.float64)
    want = torch.stack([functional_call(model, layout.unflatten(thetas[k]), (x[k],)) for k in range(K)])
    twin = stacked_model(model)
    params = layout.unflatten_batched(thetas)
    for got in (call(twin, params, x), call(twin, twin.columns(params), x),
                functional_call(twin, params, (x,))):
        torch.testing.assert_close(got, want, rtol=1e-13, atol=1e-14)


def test_stacked_model_only_for_plain_mlps_and_direct_path_only_where_declared():
    assert stacked_model(torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.BatchNorm1d(3))) is None
    assert stacked_model(torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Softmax(dim=1))) is None
    assert stacked_model(torch.nn.Linear(2, 3)) is None
    sim = Simulation.build(parse_run_config(tiny()))
    assert stacked_model(sim.model) is not None and direct_path(sim.method, sim.task)
    fedrcl = CLIENT_METHODS.get("fedrcl")(ClientConfig(method="fedrcl", params=None))
    assert not direct_path(fedrcl, sim.task)  # its own objective: vmap path
    from fipa.tasks import Task

    assert not Task.stacks_clients  # the base's declared default
    assert not direct_path(sim.method, SimpleNamespace(stacks_clients=False))


# ----------------------------------------------------------------------------- equality


@pytest.mark.parametrize("aggregator", available_aggregators())
@pytest.mark.parametrize("method", list(METHODS))
def test_regression_every_method_and_aggregator_matches_sequential(tmp_path, method, aggregator):
    """Domain split with unequal sizes (3 to 5 clients), short last batches, Adam."""
    clients = 3 + len(method) % 3
    cfg = tiny(client=client_block(method, optimizer="adam", lr=0.01, local_epochs=2, batch_size=5),
               aggregator={"name": aggregator, **AGG_PARAMS.get(aggregator, {})}, rounds=2,
               partition={"scheme": "domain_split", "clients": clients, "pieces": 1})
    assert_same_run(cfg, tmp_path)


@pytest.mark.parametrize("aggregator", available_aggregators())
@pytest.mark.parametrize("method", list(METHODS))
def test_pinn_every_method_and_aggregator_matches_sequential(tmp_path, method, aggregator):
    """Full-batch PINN steps: clients of different sizes padded to the largest."""
    cfg = {**PDE, "client": {**PDE["client"], **client_block(method)},
           "aggregator": {"name": aggregator, **AGG_PARAMS.get(aggregator, {})}}
    assert_same_run(cfg, tmp_path)


@pytest.mark.parametrize(("method", "clients"), [("scaffold", 6), ("feddyn", 5), ("local", 8)])
def test_quantity_skew_sgd_momentum_and_partial_participation(tmp_path, method, clients):
    """Strongly unequal sizes (Dirichlet quantity skew), SGD with momentum, half the clients a
    round: clients run different step counts, and stateful clients are revisited."""
    cfg = tiny(client=client_block(method, optimizer="sgd", lr=0.02, momentum=0.5, local_epochs=2,
                                   batch_size=4),
               partition={"scheme": "quantity_skew", "clients": clients, "alpha": 0.5, "min_size": 2},
               aggregator={"name": "fipa", "rho": 1e-2, "rank": 3}, rounds=3, participation=0.5)
    sim = Simulation.build(parse_run_config(cfg))
    sizes = {next(iter(d.values())).shape[0] for d in sim.data}
    assert len(sizes) > 2  # the data sizes really differ
    # three rounds of FIPA (rounding amplified up to 1/rho = 100x per round, see RTOL) on top
    # of SCAFFOLD's control variates: the two paths part by ~5e-10 on some CPUs
    assert_same_run(cfg, tmp_path, rtol=1e-8)


def test_rows_of_two_runs_each_with_its_server_state_train_in_one_call():
    """The runs axis for a method with server state (SCAFFOLD): the rows of two runs, each from its
    own theta^k and control variate c ([rows, P] in the context), stacked in one ``local_train``
    call, equal each run's own call: models, next client states and uploads."""
    cfg = tiny(client=client_block("scaffold", optimizer="sgd", lr=0.05, local_epochs=2, batch_size=5),
               partition={"scheme": "domain_split", "clients": 3, "pieces": 1})
    sim = Simulation.build(parse_run_config(cfg))
    method, cm, theta = sim.method, sim.client_model, sim.initial_theta()
    g = torch.Generator().manual_seed(2)
    noise = lambda scale: scale * torch.randn(theta.shape, generator=g, dtype=theta.dtype)  # noqa: E731
    runs = [(theta, {"c": noise(0.1)}), (theta + noise(0.01), {"c": noise(0.1)})]
    states = [{"c": noise(0.05)} for _ in range(3)]
    gens = lambda r: [torch.Generator().manual_seed(10 * r + m) for m in range(3)]  # noqa: E731
    alone = [local_train(method, cm, th, sim.data, gens(r), states, RoundContext(1, server))
             for r, (th, server) in enumerate(runs)]
    rows = lambda x: torch.stack([x(r) for r in range(2) for _ in range(3)])  # noqa: E731
    both = local_train(method, cm, rows(lambda r: runs[r][0]), sim.data * 2, gens(0) + gens(1), states * 2,
                       RoundContext(1, {"c": rows(lambda r: runs[r][1]["c"])}))
    for r in range(2):
        for m in range(3):
            i = 3 * r + m
            assert_close_vector(both.theta[i], alone[r].theta[m])
            assert_close_vector(both.states[i]["c"], alone[r].states[m]["c"])
            assert_close_vector(both.uploads[i]["dc"], alone[r].uploads[m]["dc"])
    assert not torch.allclose(alone[0].states[0]["c"], alone[1].states[0]["c"])  # the server's c matters


def test_pinn_minibatches_and_local_steps(tmp_path):
    cfg = {**PDE, "client": {**PDE["client"], "batch_size": 4, "local_steps": 5},
           "partition": {"scheme": "domain_split", "clients": 4, "pieces": 1},
           "aggregator": {"name": "fipa", "rho": 1e-4, "rank": 3, "curvature_at": "local"}}
    assert_same_run(cfg, tmp_path)


# ----------------------------------------------------------------------------- curvature


@pytest.mark.parametrize("request_", [
    CurvatureRequest(kind="lowrank", rank=3, curvature_method="exact"),
    CurvatureRequest(kind="lowrank", rank=5, curvature_samples=6, curvature_fisher="sampled",
                     curvature_method="exact"),
    CurvatureRequest(kind="diag", curvature_samples=7, curvature_method="exact"),
    CurvatureRequest(kind="lowrank", rank=3, curvature_method="matrix_free", power_iters=2),
], ids=["exact", "sampled-subsample", "diag", "matrix-free"])
@pytest.mark.parametrize("at", ["broadcast", "local"])
def test_round_curvature_is_client_curvature_per_client(request_, at):
    sim = Simulation.build(parse_run_config(tiny(partition={"scheme": "domain_split", "clients": 3})))
    theta = sim.initial_theta()
    g = torch.Generator().manual_seed(1)
    thetas = theta + 0.01 * torch.randn(3, theta.numel(), generator=g, dtype=theta.dtype)
    where = theta if at == "broadcast" else thetas
    got = round_curvature(request_, sim.client_model, where, sim.data,
                          [torch.Generator().manual_seed(10 + m) for m in range(3)])
    for m in range(3):
        ref = client_curvature(request_, sim.client_model, where if at == "broadcast" else thetas[m],
                               sim.data[m], torch.Generator().manual_seed(10 + m))
        assert (got[m].diag is None, got[m].factor is None) == (ref.diag is None, ref.factor is None)
        if ref.diag is not None:
            torch.testing.assert_close(got[m].diag, ref.diag, rtol=1e-10, atol=1e-14)
        else:  # eigenvectors up to sign: compare A^T A
            torch.testing.assert_close(got[m].eigvals, ref.eigvals, rtol=1e-10, atol=1e-14)
            torch.testing.assert_close(got[m].factor.T @ got[m].factor,
                                       ref.factor.T @ ref.factor, rtol=1e-9, atol=1e-12)


# ----------------------------------------------------------------------------- size rule


def test_auto_rule_and_overrides():
    base = tiny()
    sim = Simulation.build(parse_run_config(base))
    assert sim.vectorized and "<=" in sim.path_reason  # small MLP: vectorized
    assert not Simulation.build(parse_run_config({**base, "vectorize": False})).vectorized
    big = tiny(task={**base["task"], "hidden": [512, 512]})
    sim = Simulation.build(parse_run_config(big))
    assert sim.layout.numel * 8 > AUTO_VECTORIZE_WORK and not sim.vectorized
    assert Simulation.build(parse_run_config({**big, "vectorize": True})).vectorized
    # one client per round, or one pooled client: nothing to stack
    pooled = tiny(aggregator={"name": "fedavg"}, reference="centralized")
    assert not Simulation.build(parse_run_config(pooled)).vectorized
    with pytest.raises(ConfigError, match="vectorize"):
        parse_run_config({**base, "vectorize": "yes"})


def test_fedrcl_stays_sequential_even_when_forced():
    method = CLIENT_METHODS.get("fedrcl")(ClientConfig(method="fedrcl", params=None))
    model = torch.nn.Linear(2, 2)
    vec, why = choose_path(True, method, ClientModel(object(), model, ParamLayout.of(model)), [10, 12], 2)
    assert not vec and "fedrcl" in why


def test_auto_keeps_convolutional_models_sequential():
    cfg = {"task": {"name": "vision", "dataset": "digits", "model": "digits_cnn", "train_subsample": 200,
                    "test_subsample": 50},
           "partition": {"scheme": "dirichlet", "clients": 4, "alpha": 0.5},
           "client": {"optimizer": "sgd", "lr": 0.05, "local_steps": 2, "batch_size": 16},
           "aggregator": {"name": "fedavg"}, "rounds": 1, "dtype": "float32"}
    sim = Simulation.build(parse_run_config(cfg))
    assert not sim.vectorized and "Conv2d" in sim.path_reason


def test_resume_on_the_other_path_keeps_the_checkpoint(tmp_path):
    """vectorize does not enter the fingerprint: a run started on one path resumes on the other."""
    cfg = tiny(rounds=3)
    straight = train(parse_run_config(cfg), tmp_path / "a", log=lambda s: None)
    train(parse_run_config({**cfg, "rounds": 1, "vectorize": False}), tmp_path / "b", log=lambda s: None)
    resumed = train(parse_run_config(cfg), tmp_path / "b", log=lambda s: None)
    assert resumed["rounds_completed"] == 3
    for k, v in straight["final"].items():
        assert resumed["final"][k] == pytest.approx(v, rel=RTOL)
