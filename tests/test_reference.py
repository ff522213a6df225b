"""Run regimes: the centralized reference is `reference: centralized`, recorded as a role in final.json."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fipa.checkpoint import fingerprint
from fipa.config import ConfigError, parse_run_config
from fipa.reference import REFERENCES, Reference
from fipa.simulate import Simulation, train
from tests.helpers import tiny

CENTRALIZED = {"aggregator": {"name": "fedavg"}, "reference": "centralized"}


def test_the_old_aggregator_name_says_what_to_write():
    with pytest.raises(ConfigError) as e:
        parse_run_config(tiny(aggregator={"name": "centralized"}))
    assert str(e.value).startswith("aggregator.name: 'centralized' is a reference regime, not an aggregator")
    assert "`reference: centralized`" in str(e.value) and "`aggregator: {name: fedavg}`" in str(e.value)


@pytest.mark.parametrize(("aggregator", "got"), [({"name": "fedavg", "server_lr": 0.5}, "got server_lr 0.5"),
                                                 ({"name": "fipa"}, "got name 'fipa'")])
def test_a_reference_steps_with_plain_fedavg_only(aggregator, got):
    with pytest.raises(ConfigError) as e:
        parse_run_config(tiny(aggregator=aggregator, reference="centralized"))
    assert str(e.value).startswith("aggregator: a `reference: centralized` run steps with plain FedAvg; "
                                   "write `aggregator: {name: fedavg}`")
    assert str(e.value).endswith(got)
    # FedAvg's defaults written out are plain FedAvg too
    parse_run_config(tiny(aggregator={"name": "fedavg", "server_lr": 1.0}, reference="centralized"))


def test_an_unknown_reference_names_the_choices():
    with pytest.raises(ConfigError, match="reference: unknown reference 'pooled'; choose one of centralized"):
        parse_run_config(tiny(**{**CENTRALIZED, "reference": "pooled"}))


def test_a_federated_config_is_unchanged_by_the_key():
    """Absent, not null, in the resolved config: federated runs keep their fingerprints (resume)."""
    fed = parse_run_config(tiny())
    assert "reference" not in fed.to_dict()
    assert fingerprint(fed) == fingerprint(parse_run_config({**tiny(), "reference": None}))
    assert parse_run_config(tiny(**CENTRALIZED)).to_dict()["reference"] == "centralized"


def test_final_json_records_the_role_after_the_aggregator(tmp_path):
    """The workflow's spec of the reference cell (aggregator label centralized) through `fipa train`."""
    from fipa.cli import main

    spec = {**tiny(rounds=2), **CENTRALIZED, "labels": {"aggregator": "centralized", "task": "reg"}}
    assert main(["train", "--spec", json.dumps(spec), "-o", str(tmp_path / "ref"), "-q"]) == 0
    ref = json.loads((tmp_path / "ref" / "final.json").read_text())
    assert list(ref)[list(ref).index("aggregator") + 1] == "role"
    assert (ref["aggregator"], ref["role"], ref["task"]) == ("centralized", "reference", "reg")
    fed = train(parse_run_config(tiny(rounds=2)), tmp_path / "fed", log=lambda s: None)
    assert (fed["aggregator"], fed["role"]) == ("fipa", "federated")
    # without labels, a reference run is labelled by its regime, not by its FedAvg step
    alone = train(parse_run_config(tiny(rounds=1, **CENTRALIZED)), tmp_path / "alone", log=lambda s: None)
    assert (alone["aggregator"], alone["role"]) == ("centralized", "reference")


def test_a_second_reference_regime_is_one_registry_entry(monkeypatch):
    """A regime that keeps only the first client: registered, it is a valid `reference:` value,
    the simulation trains its clients, alone, and the step rule of every reference holds."""
    monkeypatch.setattr(REFERENCES, "_entries", dict(REFERENCES._entries))

    @REFERENCES.register("first_client")
    class FirstClient(Reference):
        name = "first_client"

        def clients(self, client, parts):
            return client, parts[:1]

    cfg = parse_run_config(tiny(aggregator={"name": "fedavg"}, reference="first_client"))
    sim = Simulation.build(cfg)
    fed = Simulation.build(parse_run_config(tiny(aggregator={"name": "fedavg"})))
    assert len(sim.data) == 1 and np.array_equal(sim.data[0]["x"].numpy(), fed.data[0]["x"].numpy())
    assert sim.stack_key() is None and sim.regime.role == "reference" and not sim.method.keep_optimizer
    with pytest.raises(ConfigError, match="`reference: first_client` run steps with plain FedAvg"):
        parse_run_config(tiny(reference="first_client"))
