"""The workflow config's schema: its structure by hand, its names and bounds from the package.

workflow/schemas/config.schema.yaml describes the workflow config's own structure: its sections,
which keys are lists or mappings, defaults, and the workflow's own rules (a grid cell trains at
least one round). What the package declares is not repeated there but generated at every workflow
start, after the config's plugins are imported (:func:`workflow_schema`):

- the name enums of the four registries (aggregators, client methods, tasks, partition schemes),
  a plugin's entries included;
- each named entry's options: the bounds and ``Literal`` choices of its ``Params`` fields
  (``key(..., ge=0)``, fipa/keys.py), as an ``if name is X then ...`` clause per entry the config
  names (only those: importing every task family would load DeepXDE and torchvision for a grid
  without them);
- the bounds and choices of the run-level keys a task entry sets (``RunConfig``'s fields:
  ``eval_every``, ``participation``, ``dtype``, ...), of every seed and of ``partition.clients``.

Each generated node carries a ``description`` naming its field, which jsonschema prints with a
failed bound ("Failed validating 'minimum' in schema[...]: {'description': 'range declared by
FIPAParams.rho (fipa.aggregators)', 'minimum': 0} On instance['aggregators']['fipa']['rho']").
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import tempfile
import types
import typing
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from fipa import keys

_JSON_BOUNDS = {"ge": "minimum", "gt": "exclusiveMinimum", "le": "maximum", "lt": "exclusiveMaximum"}
# task-level keys of a workflow config that are a run config's own (grid.TASK_RUN_KEYS, reference);
# `rounds` is not: the workflow asks >= 1 round of a cell, where `fipa partition` runs 0
_RUN_LEVEL = ("eval_every", "checkpoint_every", "participation", "dtype", "device", "vectorize", "reference")


@dataclass(frozen=True)
class Section:
    """Where the workflow config holds the named entries of one registry.

    ``path``: keys from the schema's root to the schema node of one entry; ``name_key``: the key
    that names the entry (``name``, ``method``, ``scheme``).
    """

    kind: str
    path: tuple[str, ...]
    name_key: str


_TASK = ("properties", "tasks", "additionalProperties")
SECTIONS = (
    Section("aggregator", ("properties", "aggregators", "additionalProperties"), "name"),
    Section("client method", ("properties", "client_methods", "additionalProperties"), "method"),
    Section("task", (*_TASK, "properties", "task"), "name"),
    Section("partition scheme", (*_TASK, "properties", "partitions", "additionalProperties"), "scheme"),
)


def registries() -> dict[str, Any]:
    """Every registry a workflow config names entries of, by kind."""
    from fipa.aggregators import AGGREGATORS
    from fipa.clients import CLIENT_METHODS
    from fipa.partition import SCHEMES
    from fipa.tasks import TASKS

    return {reg.kind: reg for reg in (AGGREGATORS, CLIENT_METHODS, TASKS, SCHEMES)}


def field_schema(cls: type, f: dataclasses.Field) -> dict[str, Any]:
    """The JSON-schema keywords of field ``f`` of dataclass ``cls``: its bounds (``minimum``, ...)
    and, for a ``Literal`` type, its choices (``enum``, with null where the field may be None).
    Empty: nothing to check. Bounds skip non-numbers, as ``fipa train``'s coercion of "1e-3" needs."""
    out: dict[str, Any] = {_JSON_BOUNDS[k]: v for k, v in keys.bounds_of(f).items()}
    typ = typing.get_type_hints(cls)[f.name]
    args = typing.get_args(typ) if typing.get_origin(typ) in (typing.Union, types.UnionType) else (typ,)
    literals = [a for a in args if typing.get_origin(a) is typing.Literal]
    if len(literals) == len([a for a in args if a is not type(None)]) and literals:
        out["enum"] = [v for lit in literals for v in typing.get_args(lit)]
        out["enum"] += [None] if type(None) in args else []
    if out:
        out["description"] = f"range declared by {cls.__qualname__}.{f.name} ({cls.__module__})"
    return out


def params_schema(cls: type, only: tuple[str, ...] | None = None) -> dict[str, dict[str, Any]]:
    """``{field: keywords}`` of every field of ``cls`` (or of ``only``) that has bounds or choices."""
    out = {}
    for f in dataclasses.fields(cls):
        node = field_schema(cls, f) if only is None or f.name in only else {}
        if node:
            out[f.name] = node
    return out


def entry_params(entry: Any) -> type:
    """The options dataclass of a registry entry, as fipa.config.parse_section reads it (an entry
    without options has none)."""
    from fipa.config import NoParams

    return getattr(entry, "Params", NoParams)


def named_entries(config: dict[str, Any], section: Section) -> list[str]:
    """The registered names the config's entries of ``section`` use, in order of appearance."""
    if section.kind == "task":
        found = [t.get("task") for t in (config.get("tasks") or {}).values() if isinstance(t, dict)]
    elif section.kind == "partition scheme":
        found = [p for t in (config.get("tasks") or {}).values() if isinstance(t, dict)
                 for p in (t.get("partitions") or {}).values()]
    else:
        found = list((config.get(section.path[1]) or {}).values())
    names = [e.get(section.name_key) for e in found if isinstance(e, dict)]
    return list(dict.fromkeys(n for n in names if isinstance(n, str)))


def entry_clause(section: Section, name: str, entry: Any) -> dict[str, Any] | None:
    """``if <name_key> is name then <its Params' bounds and choices>`` (None: nothing to check)."""
    props = params_schema(entry_params(entry))
    if not props:
        return None
    return {"if": {"properties": {section.name_key: {"const": name}}, "required": [section.name_key]},
            "then": {"properties": props}}


def _node(schema: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    for k in path:
        schema = schema[k]
    return schema


def _merge(node: dict[str, Any], generated: dict[str, Any]) -> None:
    """``generated`` keywords into ``node``, the field that declares them after its description."""
    described = "; ".join(d for d in (node.get("description"), generated.get("description")) if d)
    node.update(generated)
    if described:
        node["description"] = described


def generate(hand: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """The schema to validate ``config`` against: ``hand`` (the hand-written structure, unchanged)
    with every registry's name enum, each named entry's option clauses and the run-level keys'
    bounds and choices filled in. Registries are read now: import the config's plugins first."""
    from fipa.config import RunConfig

    schema = copy.deepcopy(hand)
    regs = registries()
    for section in SECTIONS:
        node, reg = _node(schema, section.path), regs[section.kind]
        node["properties"][section.name_key]["enum"] = reg.names()
        clauses = [entry_clause(section, n, reg.get(n)) for n in named_entries(config, section) if n in reg]
        if any(clauses):
            node.setdefault("allOf", []).extend(c for c in clauses if c)
    run = params_schema(RunConfig, _RUN_LEVEL)
    for where in (schema, _node(schema, _TASK)):
        for name, generated in run.items():
            if name in where["properties"]:
                _merge(where["properties"][name], generated)
    seed = params_schema(RunConfig, ("seed",))["seed"]
    for where in (schema, _node(schema, _TASK)):
        _merge(where["properties"]["seeds"]["items"], seed)
    clients = params_schema(RunConfig, ("clients",))["clients"]
    _merge(_node(schema, SECTIONS[3].path)["properties"]["clients"], clients)
    return schema


@contextmanager
def workflow_schema(config: dict[str, Any], schema_path: str) -> Iterator[str]:
    """The path of a schema file to validate a workflow ``config`` against (``snakemake.utils.
    validate`` reads only files): the config's plugins imported, its retired forms refused with
    what to write instead (fipa.grid.refuse_retired), then :func:`generate` from ``schema_path``
    written to a temporary file, removed on exit."""
    from fipa import plugins
    from fipa.grid import refuse_retired
    from fipa.io import read_yaml

    plugins.load(config.get(plugins.KEY))
    refuse_retired(config)
    schema = generate(read_yaml(schema_path), config)
    fd, tmp = tempfile.mkstemp(prefix="fipa-schema-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(schema, fh)
        yield tmp
    finally:
        os.unlink(tmp)
