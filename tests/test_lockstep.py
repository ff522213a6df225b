"""The runs axis: cells of a batch trained in lockstep, their clients stacked in one call, give
the numbers each cell gives alone (float64, 1e-9 relative), and resume after a kill."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from fipa.batch import CellJob, run_cells
from fipa.config import parse_run_config
from fipa.loop import RunLoop, _lockstep_groups, train
from fipa.simulation import Simulation
from tests.helpers import available_aggregators, sigkill_after_round, tiny

RTOL = 1e-9
AGG_PARAMS = {"fipa": {"rho": 1e-2, "rank": 4}, "fedadam": {"server_lr": 0.01}}
PINN = {"task": {"name": "pde", "problem": "poisson1d", "n_domain": 30, "hidden": [8, 8], "test_points": 40},
        "partition": {"scheme": "domain_split", "clients": 3, "pieces": 1},
        "client": {"method": "local", "optimizer": "adam", "lr": 0.003, "local_steps": 4},
        "aggregator": {"name": "fedavg"}, "rounds": 3, "eval_every": 1, "seed": 0}


pytestmark = pytest.mark.usefixtures("one_thread")


ADAPTIVE = {"name": "fipa", "rho": 1e-3, "rank": 4, "damping": "adaptive", "memory": "curvature",
            "truncation": 0.1}
CENTRALIZED = {"aggregator": {"name": "fedavg"}, "reference": "centralized"}


def grid(base: dict, seeds=(0, 1)) -> list[dict]:
    """Every aggregator (and FIPA's adaptive damping with curvature memory, whose server state
    grows over the rounds) x seeds of ``base``, then the centralized reference's seeds: the cells
    of one batch job."""
    aggs = [{"name": a, **AGG_PARAMS.get(a, {})} for a in available_aggregators()] + [ADAPTIVE]
    return [{**base, "seed": s, "aggregator": agg} for agg in aggs for s in seeds] + [
        {**base, "seed": s, **CENTRALIZED} for s in seeds]


def metrics(path) -> np.ndarray:
    return pd.read_csv(path / "metrics.csv").drop(columns=["wall_s"]).to_numpy(float)


def assert_lockstep_equals_alone(cfgs: list[dict], tmp_path) -> None:
    cells = [CellJob(output=str(tmp_path / "stacked" / str(i)), spec=c) for i, c in enumerate(cfgs)]
    results = run_cells(cells, lambda cell: (lambda s: None), echo=lambda s: None, threads=1)
    assert all(r is not None for r in results.values())
    for i, c in enumerate(cfgs):
        alone = tmp_path / "alone" / str(i)
        train(parse_run_config(c), alone, log=lambda s: None, threads=1)
        np.testing.assert_allclose(metrics(tmp_path / "stacked" / str(i)), metrics(alone), rtol=RTOL, atol=0,
                                   err_msg=json.dumps([c["aggregator"], c.get("reference")]))


def test_cells_stack_into_one_group_per_round(tmp_path):
    """The grid's federated cells share one group; centralized and SCAFFOLD train alone."""
    cfgs = grid(tiny(), seeds=(0, 1, 2))
    cfgs.append({**tiny(), "client": {**tiny()["client"], "method": "scaffold"}})
    loops = [RunLoop(Simulation.build(parse_run_config(c)), tmp_path / str(i), lambda s: None, "")
             for i, c in enumerate(cfgs)]
    groups = _lockstep_groups(loops)
    sizes = sorted(len(g) for g in groups)
    federated = 3 * (len(available_aggregators()) + 1)  # every aggregator, plus ADAPTIVE
    assert sizes == [1, 1, 1, 1, federated]  # 3 centralized reference seeds and the SCAFFOLD cell alone


def test_regression_lockstep_equals_alone_unequal_sizes_partial_participation(tmp_path):
    base = tiny(partition={"scheme": "quantity_skew", "clients": 6, "alpha": 0.5, "min_size": 3},
                participation=0.5, rounds=3)
    sizes = {len(d["x"]) for d in Simulation.build(parse_run_config(base)).data}
    assert len(sizes) > 2  # the clients' sizes really differ
    assert_lockstep_equals_alone(grid(base), tmp_path)


def test_pinn_lockstep_equals_alone_with_fedprox(tmp_path):
    base = {**PINN, "client": {**PINN["client"], "method": "fedprox", "mu": 0.1}}
    assert_lockstep_equals_alone(grid(base, seeds=(0, 1)), tmp_path)


def test_killed_batch_resumes_every_cell_to_the_same_numbers(tmp_path):
    cfgs = [tiny(rounds=30, client={"local_epochs": 4}, task={"n_train": 128}, seed=s,
                 aggregator={"name": a, **AGG_PARAMS.get(a, {})})
            for a in ("fipa", "fedavg") for s in (0, 1)]
    cells = lambda root: json.dumps([{"spec": c, "output": str(root / str(i))}  # noqa: E731
                                     for i, c in enumerate(cfgs)])
    cmd = [sys.executable, "-m", "fipa.cli", "train-batch", "--threads", "1", "-q", "--cells"]
    killed = tmp_path / "killed"
    sigkill_after_round([*cmd, cells(killed)], killed / "3" / "checkpoint.pt")
    assert not (killed / "3" / "final.json").exists(), "kill came too late"
    assert subprocess.run([*cmd, cells(killed)], check=False).returncode == 0
    straight = tmp_path / "straight"
    assert subprocess.run([*cmd, cells(straight)], check=False).returncode == 0
    for i in range(len(cfgs)):
        pd.testing.assert_frame_equal(pd.read_csv(killed / str(i) / "metrics.csv").drop(columns=["wall_s"]),
                                      pd.read_csv(straight / str(i) / "metrics.csv").drop(columns=["wall_s"]),
                                      check_exact=True)
