"""The grid's per-task seeds and per-client-method aggregator lists: cells and their checks."""

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
        assert local == set(config["tasks"][task]["aggregators"])
    assert len(config["tasks"]["mnist1d"]["client_methods"]) == 6
