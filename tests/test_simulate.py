"""The round loop: bitwise determinism, resume after SIGKILL, divergence, sampling, outputs."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from fipa.config import parse_run_config
from fipa.simulate import Simulation, sample_clients, train
from tests.helpers import sigkill_after_round, tiny


def run(cfg, outdir) -> dict:
    return train(parse_run_config(cfg), outdir, log=lambda s: None)


def metrics_without_wall(path: Path) -> pd.DataFrame:
    return pd.read_csv(path / "metrics.csv").drop(columns=["wall_s"])


def test_same_seed_gives_bitwise_identical_metrics(tmp_path):
    run(tiny(), tmp_path / "a")
    run(tiny(), tmp_path / "b")
    a, b = (tmp_path / d / "metrics.csv" for d in "ab")
    strip = lambda p: [line.rsplit(",", 1)[0] for line in p.read_text().splitlines()]  # noqa: E731
    assert strip(a) == strip(b)
    # and a different seed does change them (the test can fail)
    run(tiny(seed=1), tmp_path / "c")
    assert not metrics_without_wall(tmp_path / "a").equals(metrics_without_wall(tmp_path / "c"))


def test_metrics_and_final_contract(tmp_path):
    final = run(tiny(), tmp_path)
    m = pd.read_csv(tmp_path / "metrics.csv")
    assert list(m.columns) == ["round", "train_loss", "test_loss", "test_mse", "uplink_bytes",
                               "uplink_bytes_total", "diverged", "wall_s"]
    assert m["round"].tolist() == [0, 1, 2, 3, 4]
    P = final["num_params"]
    # fipa, rank 4, 4 clients per round, float64: (P + r(P+1)) numbers each
    assert m["uplink_bytes"].iloc[1] == 4 * (P + 4 * (P + 1)) * 8
    assert m["uplink_bytes_total"].iloc[-1] == 4 * m["uplink_bytes"].iloc[1]
    assert final["rounds_completed"] == 4 and final["diverged"] is False
    assert final["final"]["test_mse"] == m["test_mse"].iloc[-1]
    assert final["best"]["test_mse"] == m["test_mse"].min()
    assert final["config"]["aggregator"]["rho"] == 1e-3
    assert final["versions"]["torch"] == torch.__version__
    assert final["versions"]["fipa"] == metadata.version("fipa")  # pyproject's version, not a copy
    assert json.loads((tmp_path / "final.json").read_text()) == json.loads(json.dumps(final))


def test_resume_extends_a_finished_run_to_the_same_numbers(tmp_path):
    run(tiny(rounds=2), tmp_path / "resumed")
    run(tiny(rounds=4), tmp_path / "resumed")
    run(tiny(rounds=4), tmp_path / "straight")
    pd.testing.assert_frame_equal(metrics_without_wall(tmp_path / "resumed"),
                                  metrics_without_wall(tmp_path / "straight"), check_exact=True)


CENTRALIZED = {"aggregator": {"name": "fedavg"}, "reference": "centralized"}


@pytest.mark.parametrize("regime", ["fipa", "centralized"])
def test_sigkill_mid_run_then_restart_matches_uninterrupted(tmp_path, regime):
    """The centralized reference too: its persistent optimizer state is part of the checkpoint."""
    over = {"fipa": {}, "centralized": CENTRALIZED}[regime]
    cfg = tiny(rounds=40, client={"local_epochs": 6}, task={"n_train": 128}, **over)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "fipa.cli", "train", "-c", str(path), "-o", str(out),
           "--threads", "1", "-q"]
    ckpt = out / "checkpoint.pt"
    sigkill_after_round(cmd, ckpt)
    killed_at = torch.load(ckpt, weights_only=True)["round"]
    assert 3 <= killed_at < 40 and not (out / "final.json").exists(), "kill came too late"
    assert subprocess.run(cmd, check=False).returncode == 0
    # the reference runs with the same thread count: BLAS results depend on it
    straight = [c if c != str(out) else str(tmp_path / "straight") for c in cmd]
    assert subprocess.run(straight, check=False).returncode == 0
    pd.testing.assert_frame_equal(metrics_without_wall(out), metrics_without_wall(tmp_path / "straight"),
                                  check_exact=True)
    a = json.loads((out / "final.json").read_text())
    b = json.loads((tmp_path / "straight" / "final.json").read_text())
    assert a["final"] == b["final"]


def test_divergence_ends_the_run_and_is_reported(tmp_path):
    final = run(tiny(aggregator={"name": "fedavg", "server_lr": 1e300}, rounds=6), tmp_path)
    assert final["diverged"] is True
    assert final["rounds_completed"] < 6
    m = pd.read_csv(tmp_path / "metrics.csv")
    assert m["diverged"].iloc[-1] == 1


def test_centralized_pools_all_clients_into_one():
    sim = Simulation.build(parse_run_config(tiny(**CENTRALIZED)))
    assert len(sim.data) == 1 and sim.data[0]["x"].shape[0] == 64
    fed = Simulation.build(parse_run_config(tiny(aggregator={"name": "fedavg"})))
    assert len(fed.data) == 4
    assert torch.equal(torch.sort(torch.cat([d["x"] for d in fed.data]), dim=0).values,
                       torch.sort(sim.data[0]["x"], dim=0).values)


PINN = {"task": {"name": "pde", "problem": "poisson1d", "n_domain": 40, "hidden": [8, 8], "test_points": 50},
        "partition": {"scheme": "domain_split", "clients": 4, "pieces": 1},
        "client": {"method": "local", "optimizer": "adam", "lr": 0.01, "local_steps": 10},
        **CENTRALIZED, "rounds": 3, "eval_every": 3, "seed": 0}


def test_centralized_is_one_uninterrupted_training():
    """3 rounds x 10 full-batch Adam steps = one round of 30: the optimizer state persists
    across rounds (metrics equal up to the rounding of theta + (theta_local - theta))."""
    three = train_final(PINN)
    one = train_final({**PINN, "rounds": 1, "eval_every": 1, "client": {**PINN["client"], "local_steps": 30}})
    for k in ("train_loss", "test_loss", "rel_l2"):
        assert three[k] == pytest.approx(one[k], rel=1e-10)
    # the oracle can fail: one client that restarts Adam every round (FedAvg of M = 1) does not match
    restarted = train_final({**PINN, "reference": None, "partition": {"scheme": "iid", "clients": 1}})
    assert abs(restarted["train_loss"] - one["train_loss"]) > 1e-3 * one["train_loss"]


def train_final(cfg: dict) -> dict:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        return run(cfg, d)["final"]


def test_centralized_takes_one_clients_steps_per_round(tmp_path):
    """local_epochs count a client's epochs: 64 samples over 4 iid clients (16 each), batch 8,
    2 epochs = 4 steps a round, so 4 rounds are 16 steps on the pooled data (not 4 x 16)."""
    run(tiny(**CENTRALIZED, partition={"scheme": "iid", "clients": 4}), tmp_path)
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert int(ckpt["client_states"]["0"]["opt.step"]) == 4 * 4


@pytest.mark.parametrize(("clients", "frac", "k"), [(20, 0.25, 5), (100, 0.05, 5), (4, 1.0, 4), (3, 0.1, 1)])
def test_client_sampling_is_seeded_and_sized(clients, frac, k):
    a = sample_clients(0, 7, clients, frac)
    assert len(a) == k == len(set(a)) and a == sorted(a) and max(a) < clients
    assert a == sample_clients(0, 7, clients, frac)
    draws = {tuple(sample_clients(0, r, clients, frac)) for r in range(1, 30)}
    assert len(draws) > 1 or k == clients


def test_partition_for_several_seeds_equals_one_call_per_seed(tmp_path, capsys):
    from fipa.cli import main

    cfg = {**tiny(partition={"scheme": "iid", "clients": 4}), "seed": 7}
    for seed in (0, 3):
        assert main(["partition", "--spec", json.dumps({**cfg, "seed": seed}),
                     "-o", str(tmp_path / f"one{seed}.json")]) == 0
    assert main(["partition", "--spec", json.dumps(cfg), "--seeds", "0", "3",
                 "-o", str(tmp_path / "many{seed}.json")]) == 0
    for seed in (0, 3):
        assert (tmp_path / f"many{seed}.json").read_text() == (tmp_path / f"one{seed}.json").read_text()
    assert (tmp_path / "one0.json").read_text() != (tmp_path / "one3.json").read_text()
    capsys.readouterr()
    assert main(["partition", "--spec", json.dumps(cfg), "--seeds", "0", "-o", str(tmp_path / "x.json")]) == 2
    assert "--output: with --seeds the path needs a {seed} placeholder" in capsys.readouterr().err


def test_partition_file_is_used_and_checked(tmp_path):
    from fipa.cli import main

    cfgp = tmp_path / "run.yaml"
    cfgp.write_text(yaml.safe_dump(tiny()))
    assert main(["partition", "-c", str(cfgp), "-o", str(tmp_path / "p.json")]) == 0
    part = json.loads((tmp_path / "p.json").read_text())
    assert sorted(sum(part["indices"], [])) == list(range(64))
    sim = Simulation.build(parse_run_config(tiny(partition_file=str(tmp_path / "p.json"))))
    assert [d["x"].shape[0] for d in sim.data] == part["stats"]["sizes"]
    from fipa.config import ConfigError

    with pytest.raises(ConfigError, match="partition_file: .* holds 4 clients"):
        Simulation.build(parse_run_config(tiny(partition={"clients": 2},
                                                partition_file=str(tmp_path / "p.json"))))
