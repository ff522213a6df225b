"""BatchNorm running statistics in federated rounds (fipa/buffers.py).

Oracles: a hand-computed weighted mean; each client's statistics from PyTorch's own
BatchNorm, trained alone from the broadcast state; an eval-mode forward pass with the
averaged statistics; an uninterrupted run for resumption.
"""

from __future__ import annotations

import copy

import pandas as pd
import pytest
import torch
from torch.func import functional_call

from fipa import buffers
from fipa.client_model import ClientModel
from fipa.config import parse_run_config
from fipa.losses import per_sample_loss
from fipa.round_context import RoundContext
from fipa.simulate import Simulation, derive_seed, train
from tests.test_vision import digits_run

pytestmark = pytest.mark.usefixtures("one_thread")


def bn_run(**over) -> dict:
    task = {**digits_run()["task"], "norm": "batch"}
    return digits_run(**{"task": task, "partition": {"scheme": "iid", "clients": 3},
                         "aggregator": {"name": "fedavg"}, **over})


def test_average_weights_by_sample_count_and_rounds_counters():
    a = {"mean": torch.tensor([1.0, 2.0]), "n": torch.tensor(3)}
    b = {"mean": torch.tensor([5.0, -2.0]), "n": torch.tensor(6)}
    out = buffers.average([a, b], [1, 3])
    torch.testing.assert_close(out["mean"], torch.tensor([4.0, -1.0]))
    assert out["n"].dtype == torch.int64 and int(out["n"]) == 5  # (3 + 18) / 4 = 5.25


@pytest.mark.parametrize("aggregator", [{"name": "fedavg"}, {"name": "fipa", "rho": 1e-3, "rank": 4,
                                                               "curvature_samples": 16}])
def test_a_round_averages_the_clients_batchnorm_statistics(tmp_path, aggregator):
    cfg = parse_run_config(bn_run(rounds=1, aggregator=aggregator))
    final = train(cfg, tmp_path, log=lambda s: None)
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)

    sim = Simulation.build(cfg)
    assert not final["local_training"]["vectorized"]  # buffers: one client at a time
    theta0 = sim.initial_theta()
    uploads, sizes = [], []
    for m, data in enumerate(sim.data):  # each client alone, from the broadcast model
        model = copy.deepcopy(sim.model).train()
        gen = torch.Generator().manual_seed(derive_seed(cfg.seed, 1, m, 0xC1))
        sim.method.train(ClientModel(sim.task, model, sim.layout), theta0, data, gen,
                         sim.method.init_state(theta0), RoundContext(1))
        uploads.append(buffers.read(model))
        sizes.append(len(data["y"]))
    n = sum(sizes)
    for name in ("body.1.running_mean", "body.1.running_var", "body.5.running_mean", "body.5.running_var"):
        expected = sum(u[name] * (s / n) for u, s in zip(uploads, sizes, strict=True))
        torch.testing.assert_close(ckpt["buffers"][name], expected, rtol=1e-5, atol=1e-7)
    assert not torch.equal(ckpt["buffers"]["body.1.running_mean"], torch.zeros(16))

    # evaluation: eval mode, the averaged running statistics
    model = copy.deepcopy(sim.model).eval()
    buffers.load(model, ckpt["buffers"])
    x = sim.task.normalize(sim.task.x_test)
    logits = functional_call(model, sim.layout.unflatten(ckpt["theta"]), (x,))
    loss = float(per_sample_loss("ce", logits, sim.task.y_test).mean())
    assert final["final"]["test_loss"] == pytest.approx(loss, rel=1e-5)
    # the statistics count in the uplink: per client the delta, means and variances of 16 + 32
    # channels and two counters (and FIPA's eigenpairs), 4 bytes each
    stats = sum(b.numel() for b in ckpt["buffers"].values())
    assert stats == 2 * (16 + 32) + 2
    eigenpairs = 4 * (sim.layout.numel + 1) if aggregator["name"] == "fipa" else 0
    per_client = sim.layout.numel + stats + eigenpairs
    assert final["uplink_bytes_total"] == 3 * per_client * 4


def test_a_batchnorm_run_resumes_with_its_statistics(tmp_path):
    whole = train(parse_run_config(bn_run(rounds=3)), tmp_path / "whole", log=lambda s: None)
    train(parse_run_config(bn_run(rounds=1)), tmp_path / "parts", log=lambda s: None)
    resumed = train(parse_run_config(bn_run(rounds=3)), tmp_path / "parts", log=lambda s: None)
    assert resumed["final"] == whole["final"]
    read = [pd.read_csv(tmp_path / d / "metrics.csv").drop(columns="wall_s") for d in ("whole", "parts")]
    pd.testing.assert_frame_equal(*read)


def test_a_warmup_without_the_models_statistics_is_refused(tmp_path):
    from fipa.config import ConfigError

    sim = Simulation.build(parse_run_config(bn_run()))
    theta = sim.initial_theta()
    torch.save({"theta": theta, "round": 3}, tmp_path / "state.pt")  # as from a buffer-free model
    with pytest.raises(ConfigError, match="running statistics for 0 buffers, the model has 6"):  # at build
        Simulation.build(parse_run_config(bn_run(warmup_checkpoint=str(tmp_path / "state.pt"))))


def test_constant_buffers_are_not_running_statistics():
    """A PINN's input box is a buffer that training never changes: no train/eval switching,
    nothing averaged, and its clients still train stacked."""
    pinn = {"task": {"name": "pde", "problem": "poisson1d", "n_domain": 24, "n_boundary": 2, "hidden": [8]},
            "partition": {"scheme": "domain_split", "clients": 2, "pieces": 1},
            "client": {"method": "local", "optimizer": "adam", "lr": 1e-3, "local_steps": 2},
            "aggregator": {"name": "fedavg"}, "rounds": 1}
    sim = Simulation.build(parse_run_config(pinn))
    assert dict(sim.model.named_buffers()) and not buffers.has_buffers(sim.model)
    assert sim.vectorized and buffers.read(sim.model) == {}
