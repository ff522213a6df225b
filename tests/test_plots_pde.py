"""Solution figures of PINN runs: arrays rebuilt from run directories against independent oracles."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch.func import functional_call

from fipa.config import parse_run_config
from fipa.simulate import Simulation, train

pytest.importorskip("fipa.tasks.pde")
from fipa.plots_pde import cell_edges, median_seed, solution_arrays, solution_figure  # noqa: E402


def make_run(tmp_path, name: str, problem: str, aggregator: dict, **task) -> tuple:
    """A 2-round run of a tiny PINN in tmp_path/name: (run dir, resolved config dict)."""
    cfg = {
        "task": {"name": "pde", "problem": problem, "n_domain": 36, "n_boundary": 8, "n_initial": 8,
                 "hidden": [8, 8], "test_points": 21, "reference_dir": str(tmp_path / "ref"), **task},
        "partition": {"scheme": "domain_split", "clients": 4, "pieces": 1,
                      **({"axis": 0} if problem in ("burgers", "heat1d") else {})},
        "client": {"method": "local", "optimizer": "adam", "lr": 0.01, "local_steps": 5},
        "aggregator": aggregator, "rounds": 2, "eval_every": 1, "seed": 0,
        "labels": {"aggregator": name},
    }
    out = tmp_path / name
    train(parse_run_config(cfg), out, log=lambda s: None)
    return out, cfg


@pytest.fixture(scope="module")
def helmholtz_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pde-fig")
    over = {"hard_bc": True, "residual_scale": (4 * math.pi) ** 2, "input_scale": 2 * math.pi,
            "activation": "sin"}
    fedavg = make_run(tmp, "fedavg", "helmholtz2d", {"name": "fedavg"}, **over)
    fipa = make_run(tmp, "fipa", "helmholtz2d", {"name": "fipa", "rho": 1e-4, "rank": 4}, **over)
    return tmp, {"FedAvg": fedavg, "FIPA": fipa}


def test_error_arrays_are_the_final_models_pointwise_error(helmholtz_runs):
    tmp, runs = helmholtz_runs
    sols = solution_arrays({label: d for label, (d, _) in runs.items()})
    for label, (run_dir, cfg) in runs.items():
        s = sols[label]
        assert s.X.shape == (21, 21, 2) and s.round == 2
        # oracle: the final parameters through a fresh model, the closed-form solution
        sim = Simulation.build(parse_run_config(cfg))
        theta = torch.load(run_dir / "checkpoint.pt", weights_only=True)["theta"]
        x = torch.from_numpy(s.X.reshape(-1, 2))
        with torch.no_grad():
            u = functional_call(sim.model, sim.layout.unflatten(theta), (x,))[:, 0].numpy().reshape(21, 21)
        k0 = 4 * math.pi
        u_ref = np.sin(k0 * s.X[..., 0]) * np.sin(k0 * s.X[..., 1])
        np.testing.assert_allclose(s.u_pred, u, rtol=0, atol=1e-14)
        np.testing.assert_allclose(s.u_ref, u_ref, rtol=0, atol=1e-14)
        np.testing.assert_array_equal(s.err, np.abs(s.u_pred - s.u_ref))
        # the run's own final metric, recomputed from the checkpoint
        final = json.loads((run_dir / "final.json").read_text())
        assert s.rel_l2 == pytest.approx(final["final"]["rel_l2"], rel=1e-12)
        # hard BC: zero on the boundary of the test grid
        assert np.abs(s.u_pred[[0, -1]]).max() < 1e-14 and np.abs(s.u_pred[:, [0, -1]]).max() < 1e-14
        # the 2 x 2 block split: client m owns the points of block m
        assert sorted(np.unique(s.owner).tolist()) == [0, 1, 2, 3]
    assert not np.array_equal(sols["FedAvg"].u_pred, sols["FIPA"].u_pred)


def test_solution_figure_writes_a_png_per_layout(helmholtz_runs, tmp_path):
    tmp, runs = helmholtz_runs
    out = solution_figure({label: d for label, (d, _) in runs.items()}, tmp_path / "figs" / "helmholtz.png")
    assert out.is_file() and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    # 1-D problems: line plots
    a, _ = make_run(tmp_path, "fedavg", "poisson1d", {"name": "fedavg"})
    b, _ = make_run(tmp_path, "fipa", "poisson1d", {"name": "fipa", "rho": 1e-4, "rank": 4})
    out = solution_figure({"FedAvg": a, "FIPA": b}, tmp_path / "poisson.png")
    assert out.is_file() and out.stat().st_size > 10_000
    # runs of different problems do not share a figure
    with pytest.raises(ValueError, match="compare runs of one task"):
        solution_arrays({"FedAvg": a, "FIPA": runs["FIPA"][0]})
    finals = {d: json.loads((d / "final.json").read_text())["final"]["rel_l2"] for d in (a, b)}
    assert median_seed([a, b]) == min(finals, key=finals.get)  # of two, the lower middle one


def test_cell_edges_follow_the_domain_split():
    def cfg(problem, **part):
        return parse_run_config({
            "task": {"name": "pde", "problem": problem},
            "partition": {"scheme": "domain_split", "clients": 4, **part},
            "client": {}, "aggregator": {"name": "fedavg"}, "rounds": 1})

    square = [(0.0, 1.0), (0.0, 1.0)]
    edges = cell_edges(cfg("helmholtz2d"), square)
    assert list(edges) == [0, 1] and edges[0].tolist() == [0.5] and edges[1].tolist() == [0.5]
    edges = cell_edges(cfg("burgers", axis=0, pieces=2), [(-1.0, 1.0), (0.0, 1.0)])
    np.testing.assert_allclose(edges[0], np.linspace(-1, 1, 9)[1:-1])
    assert list(edges) == [0]


def test_a_reference_run_is_drawn_in_the_reference_style(tmp_path):
    """The role recorded in final.json, not the run's label, picks the style of its lines."""
    from fipa import palette
    from fipa.plots_pde import _line_figure
    from fipa.report import draw

    a, _ = make_run(tmp_path, "fedavg", "poisson1d", {"name": "fedavg"})
    b, _ = make_run(tmp_path, "oracle", "poisson1d", {"name": "fedavg"})
    final = json.loads((b / "final.json").read_text())
    (b / "final.json").write_text(json.dumps({**final, "role": "reference"}))
    sols = solution_arrays({"FedAvg": a, "oracle": b})
    assert not sols["FedAvg"].reference and sols["oracle"].reference
    fig = _line_figure(sols, sols["FedAvg"], {})
    drawn = draw.figure_colors(fig)
    assert drawn == {"fedavg": {palette.color("fedavg")}, "oracle": {palette.REFERENCE.color}}
    assert draw.check_colors(fig) == []
