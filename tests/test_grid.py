"""The grid's per-task seeds, per-client-method aggregator lists and reference runs: cells and
their checks."""

from __future__ import annotations

import copy

import pytest
import yaml

from fipa import grid
from fipa.errors import ConfigError
from tests.test_workflow import ROOT

BASE = {
    "seeds": [0, 1],
    "client_methods": {"local": {"method": "local"}, "fedprox": {"method": "fedprox", "mu": 0.01}},
    "aggregators": {"fedavg": {"name": "fedavg"}, "fipa": {"name": "fipa"}, "fedadam": {"name": "fedadam"}},
    "tasks": {
        "reg": {"task": {"name": "regression"}, "partitions": {"p": {"scheme": "iid", "clients": 2}},
                "rounds": 1},
        "more": {"task": {"name": "regression"}, "partitions": {"p": {"scheme": "iid", "clients": 2}},
                 "rounds": 1, "seeds": [0, 1, 2, 3],
                 "method_aggregators": {"fedprox": ["fedavg", "fipa"]}},
    },
}


def test_task_seeds_and_method_aggregators_shape_the_cells():
    cells = grid.cells(BASE)
    reg = [c for c in cells if c.task == "reg"]
    more = [c for c in cells if c.task == "more"]
    assert len(reg) == 2 * 3 * 2  # methods x every aggregator x top-level seeds
    assert {c.seed for c in more} == {0, 1, 2, 3}
    assert sorted({(c.method, c.aggregator) for c in more}) == sorted(
        [("local", a) for a in ("fedavg", "fipa", "fedadam")] + [("fedprox", "fedavg"), ("fedprox", "fipa")])
    assert len(more) == (3 + 2) * 4
    assert grid.all_seeds(BASE) == [0, 1, 2, 3]  # the partition jobs write every task's seeds
    grid.check(BASE)


@pytest.mark.parametrize(("edit", "words"), [
    (lambda t: t.update(method_aggregators={"fedsam": ["fedavg"]}),
     "method_aggregators.fedsam: not a client method"),
    (lambda t: t.update(method_aggregators={"fedprox": ["fedyogi"]}),
     "'fedyogi' is not an aggregator this task"),
    (lambda t: t.update(aggregators=["fedavg"], method_aggregators={"fedprox": ["fipa"]}),
     "'fipa' is not an aggregator this task"),
    (lambda t: t.update(seeds=[1, 1]), "tasks.more.seeds: [1, 1] repeats a seed"),
])
def test_bad_grid_entries_are_named(edit, words):
    config = copy.deepcopy(BASE)
    edit(config["tasks"]["more"])
    with pytest.raises(ConfigError) as e:
        grid.check(config)
    assert words in str(e.value), str(e.value)


def test_default_config_compares_fipa_under_every_client_method():
    """config/config.yaml's vision tasks: five seeds, every aggregator under local; MNIST-1D runs
    FedAvg, its tuned server step and FIPA under every other client method."""
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    for task in ("digits", "mnist1d"):
        cells = [c for c in grid.cells(config) if c.task == task]
        assert {c.seed for c in cells} == {0, 1, 2, 3, 4}
        methods = config["tasks"][task]["client_methods"]
        for m in methods:
            aggs = {c.aggregator for c in cells if c.method == m}
            assert {"fedavg", "fedavg_tuned", "fipa"} <= aggs
        local = {c.aggregator for c in cells if c.method == "local"}
        assert local == set(config["tasks"][task]["aggregators"]) | {grid.reference(config, task)} - {None}
    assert len(config["tasks"]["mnist1d"]["client_methods"]) == 6


def test_default_config_runs_the_centralized_reference_where_it_did_as_an_aggregator():
    """config/config.yaml's grid: 334 cells; the centralized reference (once an aggregator entry)
    under `local` in every task but mnist1d, whose reference is the pooled task mnist1d_reference."""
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    cells = grid.cells(config)
    assert len(cells) == 334 and len({c.run_id for c in cells}) == 334
    ref = sorted({c.run_id.rsplit("/", 1)[0] for c in cells if c.aggregator == "centralized"})
    pde = ("allen_cahn", "burgers_smooth", "diffusion_reaction", "heat1d", "helmholtz2d", "poisson1d")
    tasks = ["digits/dirichlet01", "mnist1d_reference/pooled", "regression_1d/domain4",
             *(f"pde_{p}/domain4" for p in pde)]
    assert ref == sorted(f"{t}/local/centralized" for t in tasks)
    assert {c.aggregator for c in cells if c.task == "mnist1d_reference"} == {"centralized"}


REFERENCE = {**BASE, "reference": "centralized", "tasks": {
    **BASE["tasks"],
    "pooled": {**BASE["tasks"]["reg"], "aggregators": [], "warmup": {"rounds": 2}},
    "none": {**BASE["tasks"]["reg"], "reference": None, "aggregators": ["fedavg"]}}}


def test_reference_cells_per_partition_method_and_seed():
    """`reference` at top level is every task's default (a task's own null: none); the reference
    cell comes after the aggregators', labelled by the reference's name, under every client method."""
    cells = grid.cells(REFERENCE)
    reg = [c for c in cells if c.task == "reg" and c.method == "local"]
    order = ("fedavg", "fipa", "fedadam", "centralized")
    assert [c.aggregator for c in reg] == [a for a in order for _ in (0, 1)]
    assert {(c.method, c.aggregator) for c in cells if c.task == "pooled"} == {
        ("local", "centralized"), ("fedprox", "centralized")}
    assert {c.aggregator for c in cells if c.task == "none"} == {"fedavg"}
    cell = grid.GridCell("pooled", "p", "fedprox", "centralized", 1)
    assert cell.run_id == "pooled/p/fedprox/centralized/seed1" and grid.is_reference(REFERENCE, cell)
    assert not grid.is_reference(REFERENCE, grid.GridCell("reg", "p", "local", "fedavg", 1))


def test_reference_run_spec_is_fedavg_with_the_reference_key():
    """The contract with fipa/config.py: a reference cell runs FedAvg's entry with the run-level
    key `reference`, keeps its label, and starts from the task's warm-up like every other cell."""
    cell = grid.GridCell("pooled", "p", "fedprox", "centralized", 1)
    spec = grid.run_spec(REFERENCE, cell, "part.json", grid.warmup_file("pooled", "p", 1))
    assert spec["aggregator"] == {"name": "fedavg"} and spec["reference"] == "centralized"
    assert spec["labels"] == {"task": "pooled", "partition": "p", "client_method": "fedprox",
                              "aggregator": "centralized"}
    assert spec["client"] == {"method": "fedprox", "mu": 0.01}
    assert spec["warmup_checkpoint"] == "results/warmup/pooled/p/seed1/state.pt"
    assert "reference" not in grid.run_spec(REFERENCE, grid.GridCell("reg", "p", "local", "fipa", 0), "")


@pytest.mark.parametrize(("edit", "words"), [
    (lambda c: c["aggregators"].update(centralized={"name": "centralized"}),
     "aggregators.centralized: `centralized` is no longer an aggregator but a task's reference run: write "
     "`reference: centralized` in the task"),
    (lambda c: c["tasks"]["reg"].update(aggregators=["fedavg", "centralized"]),
     "tasks.reg.aggregators: 'centralized' is not defined under top-level aggregators (`centralized` is "
     "no longer an aggregator"),
    (lambda c: c["tasks"]["reg"].update(aggregators=[]),
     "tasks.reg.aggregators: an empty list gives this task no training job"),
    (lambda c: c["aggregators"].update(centralized={"name": "fedavg"}) or c.update(reference="centralized"),
     "resolve to one run directory (results/runs/reg/p/local/centralized/seed0)"),
])
def test_retired_centralized_aggregator_is_refused_with_the_replacement(edit, words):
    config = copy.deepcopy(BASE)
    edit(config)
    with pytest.raises(ConfigError) as e:
        grid.check(config)
    assert words in str(e.value), str(e.value)
