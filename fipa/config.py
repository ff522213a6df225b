"""Typed run configuration: load one job's YAML, validate every key, fill defaults.

A run config has fixed top-level sections; the keys inside ``task``, ``partition``,
``client`` and ``aggregator`` beyond their ``name``/``scheme``/``method`` are the
``Params`` dataclass of the registered entry, so each entry documents its own keys.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fipa import keys
from fipa.client_config import ClientConfig  # re-exported
from fipa.errors import ConfigError  # re-exported: the project-wide user error
from fipa.plugins import load as load_plugins
from fipa.registry import Registry, UnknownNameError

# ----------------------------------------------------------------------------- params

# sizes, counts and steps above this are typos or overflows, not work (seeds have their own range)
INT_LIMIT = 2**31 - 1


def _coerce(value: Any, typ: Any, key: str) -> Any:
    """Coerce a YAML scalar to the annotated type; PyYAML reads ``1e-3`` as a string."""
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], key)
    if origin is typing.Literal:
        choices = typing.get_args(typ)
        if value not in choices:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(repr, choices))}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (inner,) = typing.get_args(typ)[:1]
        return [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if typ is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        if abs(value) > INT_LIMIT and not key.endswith("seed"):
            raise ConfigError(f"{key}: {value} is beyond any count this pipeline can run (limit {INT_LIMIT})")
        return value
    if typ is float:
        try:
            if isinstance(value, bool):
                raise ValueError
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
        if not math.isfinite(number):
            raise ConfigError(f"{key}: must be a finite number, got {value!r}")
        return number
    if typ is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    return value


def parse_params(cls: type, values: dict[str, Any], path: str) -> Any:
    """Build dataclass ``cls`` from ``values``: reject unknown keys, coerce types, validate.

    The bounds declared on the fields (``fipa.keys.key``) are checked first; ``cls`` may
    define ``check(self) -> list[tuple[str, str]]`` returning (key, problem) pairs for the
    rules that a single field's bounds cannot state (one key against another, registries).
    """
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        valid = ", ".join(fields) or "(none)"
        raise ConfigError(f"{path}.{unknown[0]}: unknown key; valid keys here: {valid}")
    kwargs = {}
    for name, f in fields.items():
        if name in values:
            kwargs[name] = _coerce(values[name], hints[name], f"{path}.{name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{path}.{name}: missing required key")
    obj = cls(**kwargs)
    # bounds first: check() may assume every value lies within its field's bounds
    for name, problem in keys.bound_problems(obj) or getattr(obj, "check", lambda: [])():
        raise ConfigError(f"{path}.{name}: {problem}")
    return obj


def as_dict(obj: Any) -> Any:
    """Dataclass (nested) -> plain dict for YAML/JSON."""
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj


@dataclass
class NoParams:
    """An entry without options."""


# ----------------------------------------------------------------------------- sections


@dataclass
class Section:
    """A registry-backed section: the entry's name plus its validated ``Params``."""

    name: str
    params: Any

    def to_dict(self, name_key: str) -> dict[str, Any]:
        return {name_key: self.name, **as_dict(self.params)}


def parse_section(
    raw: Any, path: str, name_key: str, registry: Registry, extra: tuple[str, ...] = ()
) -> tuple[Section, dict[str, Any]]:
    """Split ``{name_key: X, ...}`` into the registered entry's Params and the ``extra`` keys."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with key {name_key!r}, got {raw!r}")
    if name_key not in raw:
        raise ConfigError(f"{path}.{name_key}: missing required key")
    try:
        entry = registry.get(raw[name_key], key=f"{path}.{name_key}")
    except UnknownNameError as e:
        raise ConfigError(str(e)) from None
    rest = {k: v for k, v in raw.items() if k != name_key and k not in extra}
    params = parse_params(getattr(entry, "Params", NoParams), rest, path)
    return Section(raw[name_key], params), {k: raw[k] for k in extra if k in raw}


@dataclass
class RunConfig:
    """One training job: task x partition x client method x aggregator x seed.

    The sections (task, partition with its ``clients``, client, aggregator) are documented by
    their Params classes; the top-level keys of a run config by the fields below.
    """

    task: Section
    partition: Section
    clients: int = keys.key(ge=1)  # bounds only: the key is partition.clients (README, partition schemes)
    client: ClientConfig
    aggregator: Section
    rounds: int = keys.key(doc="communication rounds (after the warm-up, if any)", ge=0)
    seed: int = keys.key(0, "fixes data sampling, partition, initialization, client sampling and minibatches",
                         ge=0, lt=2**63)
    participation: float = keys.key(1.0, "fraction of clients sampled per round", gt=0, le=1,
                                    note="(fraction of clients per round)")
    eval_every: int = keys.key(1, "evaluate (test metrics, one `metrics.csv` row, one progress line) every E "
                               "rounds and at the end", ge=1)
    checkpoint_every: int = keys.key(1, "rounds between checkpoints (resume points)", ge=1)
    dtype: typing.Literal["float32", "float64"] = keys.key(
        "float64", "`float64` for regression/PDE, `float32` for vision")
    device: str = keys.key("cpu", "`cpu`, `cuda`, `cuda:N` or `auto` (fipa/devices.py)")
    partition_file: str | None = keys.key(None, "a partition written by `fipa partition` (null: drawn here)")
    warmup_checkpoint: str | None = keys.key(None, "start from the final parameters of this warm-up run")
    labels: dict[str, str] = keys.key({}, "grid names for tables; no effect on numbers")
    reference: str | None = keys.key(
        None, "null: a federated run; `centralized`: the centralized reference, one model on the union of "
        "the clients' data with one persistent optimizer state and one client's steps per round "
        "(fipa/reference.py); its aggregator section is `{name: fedavg}` and final.json records its role "
        "as `reference`")
    vectorize: typing.Literal["auto", True, False] = keys.key(
        "auto", "local training of a round's clients: `auto` trains them together (stacked parameters, one "
        "`vmap` per step, fipa/vectorized.py) when at least two train per round, the client method allows it "
        "(not `fedrcl`; no data augmentation) and one client's minibatch step is small (batch x parameters "
        "<= 2^21); `true` wherever allowed; `false` one client at a time. Both paths give the same numbers "
        "up to floating-point rounding; it may change between a run and its resumption")
    threads: int | typing.Literal["auto"] = keys.key(
        "auto", "torch CPU threads: `auto` (fipa/threads.py: 1 for small models, every core for large ones) "
        "or a count >= 1; `fipa train --threads` overrides it")
    divergence_factor: float = keys.key(
        1e6, "a run whose training loss exceeds this multiple of its initial one has diverged (besides any "
        "non-finite parameter or loss): it ends with diverged: true and no final metrics", gt=1,
        note="(a multiple of the initial training loss)")
    plugins: list[str] = keys.key(
        [], "modules or .py files imported before the registries are read (fipa/plugins.py); they register "
        "the aggregators, client methods, tasks or schemes that the sections name")

    def to_dict(self) -> dict[str, Any]:
        client = as_dict(self.client)
        client.update(client.pop("params") or {})
        d = {
            "task": self.task.to_dict("name"),
            "partition": {**self.partition.to_dict("scheme"), "clients": self.clients},
            "client": client,
            "aggregator": self.aggregator.to_dict("name"),
        }
        for f in dataclasses.fields(self):
            if f.name not in ("task", "partition", "clients", "client", "aggregator"):
                d[f.name] = getattr(self, f.name)
        if not self.plugins:  # absent, not []: the fingerprints of runs without plugins stay as they were
            del d["plugins"]
        if self.reference is None:  # absent, not null: the fingerprints of federated runs stay as they were
            del d["reference"]
        return d


_SECTIONS = ("task", "partition", "client", "aggregator")
# the top-level keys and the types they are coerced to: RunConfig's fields (``clients`` is
# partition.clients), but ``threads`` is "auto" or a count, which _check_top checks itself
_TOP_TYPES = {name: typ for name, typ in typing.get_type_hints(RunConfig).items()
              if name not in (*_SECTIONS, "clients")} | {"threads": Any}
_TOP_KEYS = {*_SECTIONS, *_TOP_TYPES}
_REQUIRED = ("task", "partition", "client", "aggregator", "rounds")
_CLIENT_KEYS = {f.name for f in dataclasses.fields(ClientConfig)} - {"params"}


def parse_run_config(raw: Any, source: str = "run config") -> RunConfig:
    """Validate a run config mapping; raise one ConfigError naming the first bad key."""
    from fipa import aggregators, clients, partition, reference, tasks  # registries fill on import

    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a YAML mapping at top level")
    unknown = sorted(set(raw) - _TOP_KEYS)
    if unknown:
        raise ConfigError(
            f"{unknown[0]}: unknown top-level key in {source}; valid keys: {', '.join(sorted(_TOP_KEYS))}"
        )
    for key in _REQUIRED:
        if key not in raw:
            raise ConfigError(f"{key}: missing required key in {source}")
    load_plugins(raw.get("plugins"))  # before any registry lookup: they may name a plugin's entry

    task, _ = parse_section(raw["task"], "task", "name", tasks.TASKS)
    part, extra = parse_section(
        raw["partition"], "partition", "scheme", partition.SCHEMES, extra=("clients",)
    )
    if "clients" not in extra:
        raise ConfigError("partition.clients: missing required key (number of clients)")
    n_clients = _coerce(extra["clients"], int, "partition.clients")
    problem = keys.value_problem(RunConfig, "clients", n_clients)
    if problem:
        raise ConfigError(f"partition.clients: {problem}")
    n_samples = tasks.TASKS.get(task.name).sample_count(task.params)
    if n_samples is not None and n_clients > n_samples:
        raise ConfigError(f"partition.clients: {n_clients} clients but only {n_samples} training samples; "
                          "use fewer clients or more samples")

    craw = raw["client"]
    if not isinstance(craw, dict):
        raise ConfigError("client: expected a mapping")
    method = craw.get("method", "local")
    try:
        method_cls = clients.CLIENT_METHODS.get(method, key="client.method")
    except UnknownNameError as e:
        raise ConfigError(str(e)) from None
    common = {k: v for k, v in craw.items() if k in _CLIENT_KEYS}
    client = parse_params(ClientConfig, common, "client")
    client.params = parse_params(
        getattr(method_cls, "Params", NoParams),
        {k: v for k, v in craw.items() if k not in _CLIENT_KEYS},
        "client",
    )

    if isinstance(raw["aggregator"], dict):
        reference.refuse_aggregator_name(raw["aggregator"].get("name"))
    agg, _ = parse_section(raw["aggregator"], "aggregator", "name", aggregators.AGGREGATORS)
    top = {k: raw[k] for k in _TOP_TYPES if k in raw}
    cfg = RunConfig(
        task=task, partition=part, clients=n_clients, client=client, aggregator=agg,
        rounds=_coerce(top.pop("rounds"), int, "rounds"),
        **{k: _coerce(v, _TOP_TYPES[k], k) for k, v in top.items()},
    )
    _check_top(cfg)
    reference.check_reference(cfg)
    return cfg


def _check_top(cfg: RunConfig) -> None:
    for name, problem in keys.bound_problems(cfg):
        raise ConfigError(f"{name}: {problem}")
    if not isinstance(cfg.labels, dict) or not all(isinstance(v, str) for v in cfg.labels.values()):
        raise ConfigError("labels: expected a mapping of names to strings")
    if cfg.vectorize != "auto" and not isinstance(cfg.vectorize, bool):
        raise ConfigError(f"vectorize: use auto, true or false, got {cfg.vectorize!r}")
    if cfg.threads != "auto" and (isinstance(cfg.threads, bool) or not isinstance(cfg.threads, int)
                                  or cfg.threads < 1):
        raise ConfigError(f"threads: use auto or a count >= 1, got {cfg.threads!r}")
    if not re.fullmatch(r"cpu|auto|cuda(:\d+)?", cfg.device):
        raise ConfigError(f"device: use cpu, cuda, cuda:N or auto, got {cfg.device!r}")
    for key in ("partition_file", "warmup_checkpoint"):
        p = getattr(cfg, key)
        if p is not None and not Path(p).is_file():
            raise ConfigError(f"{key}: file {p} does not exist; run its producing step first")


def canonical(d: Any) -> str:
    """A config as final.json stores it (JSON: tuples become lists), as a comparable string."""
    return json.dumps(json.loads(json.dumps(d, default=str)), sort_keys=True)


def load_run_config(path: str | Path) -> RunConfig:
    """Read and validate a run YAML (``safe_load``)."""
    from fipa.io import read_yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        raw = read_yaml(path)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    except Exception as e:  # yaml errors carry line numbers; keep them
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    return parse_run_config(raw, source=str(path))


__all__ = ["ConfigError", "RunConfig", "ClientConfig", "parse_run_config", "load_run_config",
           "parse_params", "canonical", "field"]
