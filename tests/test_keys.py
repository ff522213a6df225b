"""Keys documented once: the Params fields and config/README.md's tables agree (the workflow schema's
bounds are generated from the same fields: tests/test_schema.py)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from fipa import aggregators, clients, keys, partition, tasks
from fipa.client_config import ClientConfig
from fipa.config import ConfigError, RunConfig, parse_params

README = Path("config/README.md")

# fields that are not keys a user writes: the run config's sections and the client's parsed method Params
NOT_KEYS = {(RunConfig, n) for n in ("task", "partition", "clients", "client", "aggregator")} | {
    (ClientConfig, "params")}


def builtin_params() -> list[type]:
    """Params classes of the built-in registry entries, plus the run and client configs."""
    out = [RunConfig, ClientConfig]
    for registry in (aggregators.AGGREGATORS, clients.CLIENT_METHODS, partition.SCHEMES, tasks.TASKS):
        for name in registry.names():
            cls = getattr(registry.get(name), "Params", None)
            # plugins registered by other tests are not this README's business
            if cls is not None and cls.__module__.startswith("fipa.") and cls not in out:
                out.append(cls)
    return out


def test_readme_key_tables_match_the_fields():
    text = README.read_text()
    assert keys.regenerate(text) == text, (
        "config/README.md's key tables differ from the Params fields: run make docs "
        "(python -m fipa.keys config/README.md)")


def test_every_key_is_documented_and_has_a_readme_table():
    tabled = set(keys.regions(README.read_text()))
    for cls in builtin_params():
        for f in dataclasses.fields(cls):
            where = f"{cls.__qualname__}.{f.name}"
            if (cls, f.name) not in NOT_KEYS:
                assert f.metadata.get("doc"), f"{where}: declare it with keys.key(default, doc)"
        if keys.documented_fields(cls):
            dotted = f"{cls.__module__}.{cls.__qualname__}"
            assert dotted in tabled, f"config/README.md lacks <!-- keys: {dotted} -->; add it, make docs"


@pytest.mark.parametrize(("values", "message"), [
    ({"rank": 0}, "aggregator.rank: must be >= 1 eigenpair per client, got 0"),
    ({"rho": -1.0}, "aggregator.rho: must be >= 0 (relative damping), got -1.0"),
    ({"curvature_samples": 0}, "aggregator.curvature_samples: must be >= 1 or null (all samples), got 0"),
    ({"rho_increase": 1.0}, "aggregator.rho_increase: must be > 1, got 1.0"),
    ({"shrink_below": 0.9}, "aggregator.shrink_below: must be <= expand_above, got 0.9 > 0.75"),
])
def test_bounds_come_before_cross_field_rules_with_todays_messages(values, message):
    with pytest.raises(ConfigError) as e:
        parse_params(aggregators.FIPAParams, values, "aggregator")
    assert str(e.value) == message


def test_bound_messages_cover_open_closed_and_nullable_intervals():
    assert parse_params(ClientConfig, {"local_steps": None}, "client").local_steps is None
    for values, message in [
        ({"lr_decay": 0}, "client.lr_decay: must lie in (0, 1] (per-round factor on lr), got 0.0"),
        ({"momentum": 1}, "client.momentum: must lie in [0, 1), got 1.0"),
        ({"batch_size": 0}, "client.batch_size: must be >= 1 or null, got 0"),
    ]:
        with pytest.raises(ConfigError) as e:
            parse_params(ClientConfig, values, "client")
        assert str(e.value) == message
    assert keys.value_problem(RunConfig, "seed", 2**63) == "must lie in [0, 2^63), got 9223372036854775808"


def test_list_defaults_are_copied_per_instance():
    a, b = tasks.TASKS.get("regression").Params(), tasks.TASKS.get("regression").Params()
    a.hidden.append(1)
    assert b.hidden == [32, 32]
