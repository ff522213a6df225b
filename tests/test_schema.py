"""The workflow schema: the hand-written file holds the workflow's structure, the names and bounds
the package declares are generated from the registries and the key() fields (fipa/schema.py)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from fipa import keys, schema
from fipa.config import RunConfig
from fipa.io import read_yaml

ROOT = Path(__file__).resolve().parents[1]
HAND = ROOT / "workflow" / "schemas" / "config.schema.yaml"
_JSON_BOUNDS = {"minimum": "ge", "exclusiveMinimum": "gt", "maximum": "le", "exclusiveMaximum": "lt"}
# the bounds the hand-written file may state: the workflow's own rules, no run-config key's range
WORKFLOW_OWN = {
    "threads_per_job": "Snakemake's threads: no run-config key",
    "bundle_s": "cluster bundling: no run-config key",
    "tasks.*.rounds": "a grid cell trains >= 1 round; `fipa partition`'s run configs use rounds 0",
    "tasks.*.warmup.rounds": "a warm-up trains >= 1 round",
}


def bounds_at(node: Any, path: str = "") -> dict[str, dict[str, float]]:
    """Every schema location with numeric bounds: "tasks.*.partitions.*.alpha" -> {"gt": 0}."""
    if not isinstance(node, dict):
        return {}
    out = {}
    bounds = {_JSON_BOUNDS[k]: v for k, v in node.items() if k in _JSON_BOUNDS}
    if bounds:
        out[path] = bounds
    for name, child in node.get("properties", {}).items():
        out.update(bounds_at(child, f"{path}.{name}".lstrip(".")))
    for key, suffix in (("additionalProperties", ".*"), ("items", "[]")):
        out.update(bounds_at(node.get(key), f"{path}{suffix}"))
    return out


def default_config() -> dict:
    return yaml.safe_load((ROOT / "config" / "config.yaml").read_text())


def test_hand_written_schema_repeats_no_declared_bound_or_name():
    """Bounds in the file are the workflow's own; no registry's names are listed there."""
    hand = read_yaml(HAND)
    extra = {loc: b for loc, b in bounds_at(hand).items() if loc not in WORKFLOW_OWN}
    assert not extra, f"bounds a key() field declares belong to the field (fipa/schema.py): {extra}"
    for section in schema.SECTIONS:
        node = schema._node(hand, section.path)["properties"][section.name_key]
        assert "enum" not in node, f"{section.kind} names are generated from the registry"


def test_generated_name_enums_are_the_registries():
    generated = schema.generate(read_yaml(HAND), default_config())
    for section in schema.SECTIONS:
        node = schema._node(generated, section.path)["properties"][section.name_key]
        assert node["enum"] == schema.registries()[section.kind].names(), section.kind


def clauses(generated: dict, section: schema.Section) -> dict[str, dict]:
    """entry name -> its then-clause's properties."""
    node = schema._node(generated, section.path)
    return {c["if"]["properties"][section.name_key]["const"]: c["then"]["properties"]
            for c in node.get("allOf", [])}


def test_generated_bounds_are_the_fields():
    """Each named entry's clause states its Params fields' bounds (and choices), nothing else;
    the run-level keys, seeds and clients carry RunConfig's."""
    config = default_config()
    generated = schema.generate(read_yaml(HAND), config)
    regs = schema.registries()
    for section in schema.SECTIONS:
        found = clauses(generated, section)
        for name in schema.named_entries(config, section):
            cls = schema.entry_params(regs[section.kind].get(name))
            fields = {f.name: f for f in dataclasses.fields(cls)}
            for key, node in found.get(name, {}).items():
                got = {_JSON_BOUNDS[k]: v for k, v in node.items() if k in _JSON_BOUNDS}
                assert got == keys.bounds_of(fields[key]), (section.kind, name, key)
    fipa = clauses(generated, schema.SECTIONS[0])["fipa"]
    assert fipa["rho"]["minimum"] == 0 and fipa["rank"]["minimum"] == 1
    assert fipa["server_lr"]["exclusiveMinimum"] == 0 and fipa["complement"]["enum"] == ["fedavg", "none"]
    assert fipa["curvature_samples"]["minimum"] == 1  # an Optional bound: null passes (not a number)
    assert clauses(generated, schema.SECTIONS[3])["dirichlet"]["alpha"] == {
        "exclusiveMinimum": 0, "description": "range declared by DirichletParams.alpha (fipa.partition)"}
    task = schema._node(generated, schema._TASK)["properties"]
    assert task["participation"]["exclusiveMinimum"] == 0 and task["participation"]["maximum"] == 1
    assert task["participation"]["default"] == 1.0  # the hand-written default stays
    assert task["dtype"]["enum"] == ["float32", "float64"]
    assert task["seeds"]["items"]["exclusiveMaximum"] == 2**63 == keys.bounds_of(
        next(f for f in dataclasses.fields(RunConfig) if f.name == "seed"))["lt"]
    assert json.loads(json.dumps(generated)) == generated  # a JSON file for snakemake's validate


def validate(config: dict, tmp_path: Path) -> None:
    """snakemake.utils.validate, as the Snakefile calls it, against the generated schema."""
    from snakemake.utils import validate as snakemake_validate

    with schema.workflow_schema(config, str(HAND)) as path:
        snakemake_validate(config, path)


@pytest.mark.parametrize(("edit", "needles"), [
    (lambda c: c["aggregators"]["fipa"].update(rho=-1.0),
     ["-1.0 is less than the minimum of 0", "FIPAParams.rho", "On instance['aggregators']['fipa']['rho']"]),
    (lambda c: c["aggregators"]["fipa"].update(complement="half"),
     ["'half' is not one of ['fedavg', 'none']", "FIPAParams.complement"]),
    (lambda c: c["client_methods"]["fedprox"].update(mu=-0.1),
     ["FedProxParams.mu", "On instance['client_methods']['fedprox']['mu']"]),
    (lambda c: c["tasks"]["digits"].update(participation=1.5),
     ["1.5 is greater than the maximum of 1", "RunConfig.participation"]),
    (lambda c: c["tasks"]["digits"]["partitions"]["dirichlet01"].update(clients=0),
     ["0 is less than the minimum of 1", "RunConfig.clients"]),
])
def test_bad_value_fails_naming_the_key_and_its_field(edit, needles, tmp_path):
    config = default_config()
    validate(config, tmp_path)  # the default config passes
    config = default_config()
    edit(config)
    from snakemake.exceptions import WorkflowError

    with pytest.raises(WorkflowError) as e:
        validate(config, tmp_path)
    text = str(e.value) + "".join(str(a) for a in e.value.args)
    for needle in needles:
        assert needle in text, text[-2000:]


def test_retired_centralized_aggregator_fails_before_the_schema(tmp_path):
    """One message saying what to write instead, not the name enum's bare "not one of"."""
    from fipa.errors import ConfigError

    config = default_config()
    config["aggregators"]["centralized"] = {"name": "centralized"}
    with pytest.raises(ConfigError, match="aggregators.centralized: `centralized` is no longer an aggregator "
                                          "but a task's reference run: write `reference: centralized`"):
        validate(config, tmp_path)
