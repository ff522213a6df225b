"""Flower both ways (fipa/flower/): Flower's strategies as the aggregator `flower`, FIPA as a Flower
strategy, and the same job through Flower's simulation engine and through `fipa train`.

Oracles: the built-in aggregators (fedavg, fipa), the example plugin's coordinate-wise median,
an uninterrupted run (kill and resume), a dense GGN (the client's curvature helper). Everything but
the refusal without Flower needs the extra (`pip install .[flower]`) and is skipped without it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from fipa.config import ConfigError, parse_run_config
from fipa.round_context import RoundContext
from fipa.simulate import train
from tests.helpers import flwr_installed, sigkill_after_round, tiny

ROOT = Path(__file__).resolve().parents[1]
FEDMEDIAN = ROOT / "examples" / "plugins" / "fedmedian.py"
JOB = ROOT / "examples" / "flower" / "fipa_flower_app" / "job.yaml"
METRICS = ["train_loss", "test_loss", "test_mse"]

needs_flwr = pytest.mark.skipif(not flwr_installed(), reason="Flower is not installed: pip install .[flower]")
pytestmark = pytest.mark.usefixtures("one_thread")


def run(cfg: dict, out: Path) -> pd.DataFrame:
    train(parse_run_config(cfg), out, log=lambda s: None)
    return pd.read_csv(out / "metrics.csv")


def theta(out: Path) -> torch.Tensor:
    return torch.load(out / "checkpoint.pt", weights_only=True)["theta"]


def max_rel(a, b) -> float:
    """max |a - b| / |b| over the entries: metrics (nonzero losses)."""
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b)) / np.abs(np.asarray(b))))


def rel_theta(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| over the parameters [P] (a parameter may be near 0)."""
    return float((a - b).abs().max() / b.abs().max())


def ten_rounds(aggregator: dict) -> dict:
    """The regression job of the issue: 4 domain-split clients, float64, tiny settings, 10 rounds."""
    return tiny(aggregator=aggregator, rounds=10)


# ----------------------------------------------------------------------------- the aggregator `flower`


@needs_flwr
def test_flower_fedavg_equals_builtin_fedavg(tmp_path):
    """sum_m w_m theta_m (Flower) against theta + sum_m w_m delta_m (fedavg): rounding apart."""
    ours = run(ten_rounds({"name": "fedavg"}), tmp_path / "fedavg")
    flower = run(ten_rounds({"name": "flower", "strategy": "FedAvg"}), tmp_path / "flower")
    assert len(ours) == 11
    assert max_rel(flower[METRICS], ours[METRICS]) < 1e-12
    assert rel_theta(theta(tmp_path / "flower"), theta(tmp_path / "fedavg")) < 1e-12


@pytest.fixture
def isolated_aggregators(monkeypatch):
    """The aggregator registry and sys.modules restored afterwards (the FedMedian plugin loads here)."""
    from fipa.aggregators import AGGREGATORS

    monkeypatch.setattr(AGGREGATORS, "_entries", dict(AGGREGATORS._entries))
    monkeypatch.setattr(AGGREGATORS, "_lazy", dict(AGGREGATORS._lazy))
    monkeypatch.setattr(sys, "path", list(sys.path))
    modules = set(sys.modules)
    yield
    for name in set(sys.modules) - modules:
        if not name.startswith(("flwr", "fipa")):  # keep what other tests import as well
            del sys.modules[name]


@needs_flwr
def test_flower_fedmedian_equals_the_example_plugin(tmp_path, isolated_aggregators):
    """Flower's np.median of the client models against the plugin's median of the deltas."""
    plugin = run({**ten_rounds({"name": "fedmedian"}), "plugins": [str(FEDMEDIAN)]}, tmp_path / "plugin")
    flower = run(ten_rounds({"name": "flower", "strategy": "FedMedian"}), tmp_path / "flower")
    assert max_rel(flower[METRICS], plugin[METRICS]) < 1e-12
    assert rel_theta(theta(tmp_path / "flower"), theta(tmp_path / "plugin")) < 1e-12
    fedavg = run(ten_rounds({"name": "fedavg"}), tmp_path / "fedavg")
    assert max_rel(flower[METRICS], fedavg[METRICS]) > 1e-3  # the median is not the mean here


@needs_flwr
def test_flower_strategy_state_survives_sigkill_and_resume(tmp_path):
    """FedAdam keeps m_t, v_t and the last global arrays in its attributes: after a SIGKILL the run
    resumes from the checkpointed state and ends with the numbers of an uninterrupted run."""
    cfg = tiny(rounds=40, client={"local_epochs": 6}, task={"n_train": 128},
               aggregator={"name": "flower", "strategy": "FedAdam", "options": {"eta": 0.01}})
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "fipa.cli", "train", "-c", str(path), "-o", str(out), "--threads", "1", "-q"]
    sigkill_after_round(cmd, out / "checkpoint.pt")
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    killed_at = state["round"]
    assert 3 <= killed_at < 40 and not (out / "final.json").exists(), "kill came too late"
    assert {"flower_round", "flower.m_t:dict:theta", "flower.v_t:dict:theta"} <= set(state["agg_state"])
    assert int(state["agg_state"]["flower_round"]) == killed_at
    assert subprocess.run(cmd, check=False).returncode == 0
    straight = [c if c != str(out) else str(tmp_path / "straight") for c in cmd]
    assert subprocess.run(straight, check=False).returncode == 0
    drop = ["wall_s"]
    pd.testing.assert_frame_equal(pd.read_csv(out / "metrics.csv").drop(columns=drop),
                                  pd.read_csv(tmp_path / "straight" / "metrics.csv").drop(columns=drop),
                                  check_exact=True)
    assert torch.equal(theta(out), theta(tmp_path / "straight"))


@needs_flwr
def test_state_codec_round_trips_every_kind():
    """encode -> decode gives back None, numbers, arrays, lists, dicts and ArrayRecords bit for bit."""
    from flwr.app import ArrayRecord
    from flwr.serverapp.strategy import FedAvgM

    from fipa.flower.records import to_array
    from fipa.flower.state import decode, encode

    a = FedAvgM(server_momentum=0.5)
    rng = np.random.default_rng(0)
    a.momentum_vector = [rng.standard_normal(3), rng.standard_normal((2, 2))]
    a.current_arrays = ArrayRecord({"theta": to_array(rng.standard_normal(5))})
    a.extra_dict, a.extra_none, a.extra_int = {"m": rng.standard_normal(4)}, None, 7
    b = FedAvgM(server_momentum=0.0)
    decode(b, encode(a))
    assert b.server_momentum == 0.5 and b.extra_int == 7 and b.extra_none is None
    for x, y in zip(a.momentum_vector, b.momentum_vector, strict=True):
        assert x.dtype == y.dtype and np.array_equal(x, y)
    assert np.array_equal(a.current_arrays["theta"].numpy(), b.current_arrays["theta"].numpy())
    assert np.array_equal(a.extra_dict["m"], b.extra_dict["m"])


def _object_state_strategy():
    """A Flower strategy keeping state in an object the checkpoint cannot hold."""
    from flwr.serverapp.strategy import FedAvg

    class _Accountant:
        pass

    class ObjectState(FedAvg):
        def __init__(self, **kw):
            super().__init__(**kw)
            self.accountant = _Accountant()

    return ObjectState


@needs_flwr
@pytest.mark.parametrize(("agg", "message"), [
    ({"strategy": "NoSuchStrategy"}, "aggregator.strategy: 'NoSuchStrategy' is not a Flower strategy; "
                                     "choose one of"),
    ({"strategy": "FedAvg", "options": {"fraction_train": 0.5}},
     "aggregator.options.fraction_train: client sampling is the run's: set `participation` instead"),
    ({"strategy": "FedTrimmedAvg", "options": {"no_such_arg": 1}},
     "aggregator.options: FedTrimmedAvg(**options) failed: TypeError"),
    ({"strategy": "tests.test_flower.OBJECT_STATE"},
     "aggregator.strategy: ObjectState keeps state in accountant (_Accountant), which this pipeline cannot "
     "save in a checkpoint"),
])
def test_bad_strategies_are_refused_before_training(agg, message, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "OBJECT_STATE", _object_state_strategy(), raising=False)
    with pytest.raises(ConfigError) as err:
        parse_run_config(tiny(aggregator={"name": "flower", **agg}))
    assert message in str(err.value)


def test_without_flower_the_error_names_the_extra(tmp_path):
    """flwr hidden from the import system: the package imports, `fipa list` names `flower`, and a
    config that uses it stops before training with the install command."""
    code = (
        "import sys; sys.modules['flwr'] = None\n"
        "from fipa.aggregators import AGGREGATORS\n"
        "assert 'flower' in AGGREGATORS.names()\n"
        "AGGREGATORS.get('flower')  # the module imports without flwr\n"
        "from fipa.config import parse_run_config, ConfigError\n"
        "from tests.helpers import tiny\n"
        "try:\n"
        "    parse_run_config(tiny(aggregator={'name': 'flower', 'strategy': 'FedAvg'}))\n"
        "except ConfigError as e:\n"
        "    print(e)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == (
        "aggregator.strategy: aggregator `flower` needs Flower, which is not installed: install Flower with "
        "`pip install .[flower]` (or `pip install 'flwr[simulation]==1.42.0'`)")


@needs_flwr
def test_flower_grid_config_runs_fedavg_and_fedmedian_as_entries(tmp_path):
    """config/flower.yaml through Snakemake: Flower's FedAvg and FedMedian are two config entries of
    the regression grid; FedAvg's cells end where the built-in fedavg's do."""
    from tests.test_workflow import snakemake

    (tmp_path / "config").mkdir()
    cfg = yaml.safe_load((ROOT / "config" / "flower.yaml").read_text())
    cfg["seeds"] = [0]
    (tmp_path / "config" / "config.yaml").write_text(yaml.safe_dump(cfg))
    res = snakemake(tmp_path)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    summary = pd.read_csv(tmp_path / "results" / "summary.csv").set_index("aggregator")
    assert sorted(summary.index) == ["fedavg", "fipa", "flower_fedavg", "flower_fedmedian"]
    assert not summary["diverged"].any()
    final = summary["final_test_mse"]
    assert final["flower_fedavg"] == pytest.approx(final["fedavg"], rel=1e-12)


# ----------------------------------------------------------------------------- FIPA as a Flower strategy


@needs_flwr
@pytest.mark.parametrize("options", [
    {"rho": 1e-3, "rank": 3},
    {"rho": 1e-4, "rank": 3, "damping": "adaptive", "memory": "curvature", "complement": "none"},
])
def test_fipa_strategy_step_is_the_fipa_aggregator(options):
    """aggregate_train on replies in any arrival order equals the registered fipa aggregator's step
    on the clients in id order, over three rounds (curvature memory and damping state included)."""
    from flwr.app import ConfigRecord

    from fipa.aggregators import AGGREGATORS, ClientUpdate
    from fipa.config import parse_params
    from fipa.flower.aggregator import _RoundGrid, offline_round
    from fipa.flower.client import fipa_reply
    from fipa.flower.records import flat_record, flatten_record
    from fipa.flower.strategy import RANK, FIPAStrategy

    gen = torch.Generator().manual_seed(0)
    P, shapes = 12, {"w": (3, 3), "b": (3,)}
    strategy = FIPAStrategy(fipa=options, min_train_nodes=1, min_available_nodes=1)
    oracle = AGGREGATORS.get("fipa")(parse_params(AGGREGATORS.get("fipa").Params, options, "fipa"))
    th = torch.randn(P, generator=gen, dtype=torch.float64)
    state = oracle.init_state(th)
    arrays = flat_record(th, shapes)
    for rnd in (1, 2, 3):
        clients = [0, 1, 2, 3] if rnd != 2 else [1, 3]  # round 2: two clients sit out (memory)
        f64 = {"generator": gen, "dtype": torch.float64}
        updates = [ClientUpdate(torch.randn(P, **f64), 10 + 5 * m, torch.randn(3, P, **f64), client=m)
                   for m in clients]
        with offline_round(rnd):
            sent = list(strategy.configure_train(rnd, arrays, ConfigRecord(), _RoundGrid(len(updates))))
            assert all(msg.content["config"][RANK] == 3 for msg in sent)
            sent.sort(key=lambda msg: msg.metadata.dst_node_id)
            replies = [fipa_reply(msg, u.delta, u.num_samples, u.factor, client_id=u.client)
                       for msg, u in zip(sent, updates, strict=True)]
            replies.reverse()  # arrival order reversed: the server sums in client order
            arrays, _ = strategy.aggregate_train(rnd, replies)
        th_oracle = oracle.step(th, updates, state, RoundContext(rnd))
        th = flatten_record(arrays)
        assert list(arrays.keys()) == ["w", "b"]
        assert torch.equal(th, th_oracle)


@needs_flwr
def test_fipa_strategy_refuses_trust_region_and_bad_keys():
    from fipa.flower.strategy import FIPAStrategy

    with pytest.raises(ConfigError, match="fipa.damping: trust_region is not available in Flower"):
        FIPAStrategy(fipa={"damping": "trust_region"})
    with pytest.raises(ConfigError, match="fipa.rank: must be >= 1"):
        FIPAStrategy(fipa={"rank": 0})


@needs_flwr
@pytest.mark.parametrize("loss", ["mse", "ce"])
def test_curvature_factor_of_a_model_is_the_top_of_the_dense_ggn(loss):
    """A^T A = V_r diag(sigma_r) V_r^T of H = (1/n) sum_i J_i^T L_i J_i, formed densely here."""
    from torch import nn
    from torch.func import functional_call, jacrev

    from fipa.flower.client import curvature_factor, flat_params
    from fipa.losses import hessian_sqrt
    from fipa.params import ParamLayout

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).double()
    x = torch.randn(7, 3, dtype=torch.float64)
    sigma, A = curvature_factor(model, nn.MSELoss() if loss == "mse" else nn.CrossEntropyLoss(), x, rank=4)
    layout, th = ParamLayout.of(model), flat_params(model)
    J = jacrev(lambda t: functional_call(model, layout.unflatten(t), (x,)))(th)  # [n, C, P]
    M = hessian_sqrt(loss, functional_call(model, layout.unflatten(th), (x,)))  # [n, C, C]
    S = torch.einsum("nck,ncp->nkp", M, J).reshape(-1, th.numel()) / x.shape[0] ** 0.5
    e, V = torch.linalg.eigh(S.T @ S)
    top = V[:, -4:] @ torch.diag(e[-4:]) @ V[:, -4:].T
    torch.testing.assert_close(A.T @ A, top, rtol=0, atol=1e-10)
    torch.testing.assert_close(sigma, e[-4:].flip(0), rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------- Flower's simulation engine


def _simulate(job: Path, out: Path) -> None:
    res = subprocess.run([sys.executable, "-m", "fipa.flower.pipeline", str(job), str(out)], cwd=ROOT,
                         capture_output=True, text=True, timeout=600, check=False)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]


@needs_flwr
@pytest.mark.parametrize("aggregator", [{"name": "fedavg"}, {"name": "fipa", "rho": 1e-3, "rank": 4}])
def test_flower_simulation_reproduces_fipa_train(tmp_path, aggregator):
    """The example app's job through Flower's simulation engine (Ray, one actor per CPU, nodes in
    any order) and through `fipa train`: the same 10 rounds to 1e-9 relative. Flower's FedAvg runs
    against the built-in fedavg, FIPAStrategy (clients summed in id order) against fipa."""
    job = yaml.safe_load(JOB.read_text())
    job["aggregator"] = aggregator
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    _simulate(path, tmp_path / "flower")
    run(job, tmp_path / "fipa")
    ours = pd.read_csv(tmp_path / "fipa" / "metrics.csv")
    flower = pd.read_csv(tmp_path / "flower" / "metrics.csv")
    assert list(flower["round"]) == list(ours["round"]) == list(range(11))
    rel = max_rel(flower[METRICS], ours[METRICS])
    rel_th = rel_theta(torch.load(tmp_path / "flower" / "theta.pt"), theta(tmp_path / "fipa"))
    print(json.dumps({"aggregator": aggregator["name"], "metrics_max_rel": rel, "theta_max_rel": rel_th}))
    assert rel < 1e-9 and rel_th < 1e-9
