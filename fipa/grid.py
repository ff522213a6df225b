"""Expand a workflow config (config/config.yaml) into per-job run configs.

The workflow grid is task x partition x client method x aggregator x seed, plus a task's
reference run (``reference: centralized``) per partition x client method x seed. Each cell's
run config is a plain dict that ``fipa train`` validates; nothing here imports Snakemake.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fipa import paths

TASK_RUN_KEYS = ("rounds", "eval_every", "checkpoint_every", "participation", "dtype", "device",
                 "vectorize")


@dataclass(frozen=True)
class GridCell:
    """One training job of the grid (a reference run's ``aggregator`` is the reference's name)."""

    task: str
    partition: str
    method: str
    aggregator: str
    seed: int

    @property
    def run_id(self) -> str:
        return paths.run_id(self.task, self.partition, self.method, self.aggregator, self.seed)


def _merge(base: dict[str, Any], over: dict[str, Any] | None) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _selected(task_cfg: dict[str, Any], key: str, all_names: list[str]) -> list[str]:
    chosen = task_cfg.get(key)
    return list(all_names) if chosen is None else list(chosen)


def task_seeds(config: dict[str, Any], task: str) -> list[int]:
    """The seeds of ``task``'s cells: its own ``seeds`` list, else the top-level one."""
    return [int(s) for s in config["tasks"][task].get("seeds", config["seeds"])]


def all_seeds(config: dict[str, Any]) -> list[int]:
    """Every seed some task runs (the partition jobs write one file per seed of this list)."""
    return sorted({s for task in config["tasks"] for s in task_seeds(config, task)})


def method_aggregators(config: dict[str, Any], task: str, method: str) -> list[str]:
    """The aggregators that client method ``method`` runs with in ``task``: the task's
    ``method_aggregators`` entry for it, else the task's ``aggregators`` (default: all)."""
    t = config["tasks"][task]
    own = (t.get("method_aggregators") or {}).get(method)
    return list(own) if own is not None else _selected(t, "aggregators", list(config["aggregators"]))


def reference(config: dict[str, Any], task: str) -> str | None:
    """The reference regime ``task`` runs beside its aggregators (``centralized``), or None: the
    task's ``reference`` key where it has one (null: none), else the top-level default."""
    t = config["tasks"][task]
    return t["reference"] if "reference" in t else config.get("reference")


def is_reference(config: dict[str, Any], cell: GridCell) -> bool:
    """Whether ``cell`` is its task's reference run (its aggregator label names the reference)."""
    return cell.aggregator == reference(config, cell.task)


def cells(config: dict[str, Any]) -> list[GridCell]:
    """Every job of the grid, in a stable order: per task, partition and client method, each
    aggregator's cells, then the reference's (one per seed, under every client method)."""
    out = []
    for tname, t in config["tasks"].items():
        methods = _selected(t, "client_methods", list(config["client_methods"]))
        ref = reference(config, tname)
        for pname in t["partitions"]:
            for method in methods:
                labels = method_aggregators(config, tname, method) + ([ref] if ref else [])
                for agg in labels:
                    for seed in task_seeds(config, tname):
                        out.append(GridCell(tname, pname, method, agg, int(seed)))
    return out


def partition_spec(config: dict[str, Any], task: str, partition: str, seed: int) -> dict[str, Any]:
    """A run config sufficient for ``fipa partition`` (task, partition, seed)."""
    t = config["tasks"][task]
    return {
        "task": copy.deepcopy(t["task"]),
        "partition": copy.deepcopy(t["partitions"][partition]),
        "client": {},
        "aggregator": {"name": "fedavg"},
        "rounds": 0,
        "seed": int(seed),
        **({"dtype": t["dtype"]} if "dtype" in t else {}),
    }


def warmup_spec(config: dict[str, Any], task: str, partition: str, seed: int,
                partition_file: str) -> dict[str, Any]:
    """The shared warm-up run of a task x partition x seed: ``warmup.rounds`` of an averaging method.

    Every refinement cell of that task, partition and seed starts from its final parameters.
    """
    t = config["tasks"][task]
    w = t["warmup"]
    cell = GridCell(task, partition, w.get("client_method", "local"), w.get("aggregator", "fedavg"), seed)
    spec = run_spec(config, cell, partition_file, warmup_file=None)
    spec["rounds"] = w["rounds"]
    spec["labels"] = {**spec["labels"], "aggregator": f"warmup-{cell.aggregator}"}
    return spec


def warmup_file(task: str, partition: str, seed: int) -> str:
    """The warm-up state every refinement cell of (task, partition, seed) starts from."""
    return paths.warmup_state(task, partition, seed)


def run_spec(config: dict[str, Any], cell: GridCell, partition_file: str,
             warmup_file: str | None = None) -> dict[str, Any]:
    """The full run config of one cell, with the partition file (and warm-up state) it starts from.

    A reference cell runs the regime its ``reference`` key names (fipa/config.py) with FedAvg's
    entry, no aggregator of the config; its label stays the reference's name."""
    t = config["tasks"][cell.task]
    client = _merge(t.get("client", {}), config["client_methods"][cell.method])
    ref = is_reference(config, cell)
    aggregator = {"name": "fedavg"} if ref else _merge(
        config["aggregators"][cell.aggregator], t.get("aggregator_overrides", {}).get(cell.aggregator))
    spec = {
        "task": copy.deepcopy(t["task"]),
        "partition": copy.deepcopy(t["partitions"][cell.partition]),
        "client": client,
        "aggregator": aggregator,
        "seed": cell.seed,
        "partition_file": partition_file,
        "labels": {"task": cell.task, "partition": cell.partition,
                   "client_method": cell.method, "aggregator": cell.aggregator},
    }
    if ref:
        spec["reference"] = cell.aggregator
    spec.update({k: t[k] for k in TASK_RUN_KEYS if k in t})
    if warmup_file is not None:
        spec["warmup_checkpoint"] = warmup_file
    return spec


RETIRED_CENTRALIZED = ("`centralized` is no longer an aggregator but a task's reference run: write "
                       "`reference: centralized` in the task (or once at top level, for every task) and "
                       "drop `centralized` from the aggregators")


def refuse_retired(config: dict[str, Any]) -> None:
    """Refuse the retired form of the centralized reference (an aggregator ``{name: centralized}``),
    saying what to write instead; the workflow asks before its schema, whose enum would only say
    "not one of". Raises ConfigError."""
    from fipa.errors import ConfigError

    for key, entry in (config.get("aggregators") or {}).items():
        if isinstance(entry, dict) and entry.get("name") == "centralized":
            raise ConfigError(f"aggregators.{key}: {RETIRED_CENTRALIZED}")


def check(config: dict[str, Any]) -> None:
    """Validate the whole grid before any job runs: cross-references between the config's
    sections, and every cell's (and warm-up's) run config with ``fipa train``'s own validator.

    Raises one ConfigError whose message starts with the key's path in the workflow config
    (``tasks.<task>.aggregators``, ``aggregators.<name>.rho``, ...).
    """
    refuse_retired(config)
    _check_seeds("seeds", config.get("seeds", []))
    for tname, t in config["tasks"].items():
        _check_seeds(f"tasks.{tname}.seeds", t.get("seeds", config.get("seeds", [])))
        _check_names(config, tname)
        _check_method_entries(config, tname)
    check_distinct_run_dirs(config)
    _check_cell_specs(config)


def _check_seeds(key: str, seeds: list[int]) -> None:
    from fipa.errors import ConfigError

    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"{key}: {seeds} repeats a seed; list each seed once")


def _check_names(config: dict[str, Any], tname: str) -> None:
    """A task's lists of aggregators and client methods, and its warm-up, name top-level entries."""
    from fipa.errors import ConfigError

    t = config["tasks"][tname]
    for key in ("aggregators", "client_methods"):
        if t.get(key) == [] and not (key == "aggregators" and reference(config, tname)):
            raise ConfigError(f"tasks.{tname}.{key}: an empty list gives this task no training job; "
                              f"list at least one name of top-level {key}, or drop the key for all"
                              + (" (or give the task a `reference`)" if key == "aggregators" else ""))
        for name in t.get(key) or []:
            if name not in config[key]:
                hint = RETIRED_CENTRALIZED if name == "centralized" else ", ".join(config[key])
                raise ConfigError(f"tasks.{tname}.{key}: {name!r} is not defined under top-level "
                                  f"{key} ({hint})")
    for key, section, default in (("aggregator", "aggregators", "fedavg"),
                                  ("client_method", "client_methods", "local")):
        name = (t.get("warmup") or {}).get(key, default)
        if t.get("warmup") and name not in config[section]:
            raise ConfigError(f"tasks.{tname}.warmup.{key}: {name!r} is not defined under "
                              f"top-level {section}")


def _check_method_entries(config: dict[str, Any], tname: str) -> None:
    """``method_aggregators`` and ``aggregator_overrides`` name what the task runs."""
    from fipa.errors import ConfigError

    t = config["tasks"][tname]
    chosen = _selected(t, "aggregators", list(config["aggregators"]))
    methods = _selected(t, "client_methods", list(config["client_methods"]))
    for method, names in (t.get("method_aggregators") or {}).items():
        if method not in methods:
            raise ConfigError(f"tasks.{tname}.method_aggregators.{method}: not a client method this task "
                              f"runs ({', '.join(methods)})")
        for name in names:
            if name not in chosen:
                raise ConfigError(f"tasks.{tname}.method_aggregators.{method}: {name!r} is not an "
                                  f"aggregator this task runs ({', '.join(chosen)})")
    for name in t.get("aggregator_overrides") or {}:
        if name not in chosen:
            raise ConfigError(f"tasks.{tname}.aggregator_overrides.{name}: not an aggregator this "
                              f"task runs ({', '.join(chosen)})")


def _check_cell_specs(config: dict[str, Any]) -> None:
    """Every cell's and warm-up's run config through ``fipa train``'s validator, once per
    seedless spec (seeds only change the seed)."""
    from fipa.config import parse_run_config
    from fipa.errors import ConfigError

    checked: set[str] = set()
    for cell in cells(config):
        specs = [(f"tasks.{cell.task} cell {cell.run_id}", run_spec(config, cell, "", None))]
        if "warmup" in config["tasks"][cell.task]:
            specs.append((f"tasks.{cell.task}.warmup", warmup_spec(config, cell.task, cell.partition,
                                                                 cell.seed, "")))
        for where, spec in specs:
            key = _seedless_key(spec)
            if key in checked:
                continue
            checked.add(key)
            try:
                parse_run_config(spec, where)
            except ConfigError as e:
                raise ConfigError(f"{where}: {e}") from None


def check_distinct_run_dirs(config: dict[str, Any]) -> None:
    """Refuse two cells whose run directories resolve to one path (a name "." or ".." would make
    them, or an aggregator named as the task's reference): one cell's results would replace the
    other's."""
    import os

    from fipa.errors import ConfigError

    seen: dict[str, GridCell] = {}
    for cell in cells(config):
        where = os.path.normpath(cell.run_id)
        if where in seen:
            raise ConfigError(f"tasks.{cell.task}: cells {seen[where].run_id} and {cell.run_id} resolve to "
                              f"one run directory ({paths.run_dir(where)}); rename the entries named . "
                              f"or .., or the aggregator named as the task's reference")
        seen[where] = cell


def _seedless_key(spec: dict[str, Any]) -> str:
    """Drop the file references and labels of ``spec`` (in place); a key equal for every seed."""
    for k in ("partition_file", "warmup_checkpoint", "labels"):
        spec.pop(k, None)
    return repr(sorted((k, repr(v)) for k, v in spec.items() if k != "seed"))


def batch_job(task: str, partition: str, method: str) -> str:
    """The name of the ``train_batch`` job of a task x partition x client method in the progress plan."""
    return f"{task}/{partition}/{method}"


def bundle_job(bundle: str) -> str:
    """The name of the ``train_bundle`` job of ``bundle`` (``<task>/b<k>``, :func:`bundles`)."""
    return f"bundle:{bundle}"


def plan_cells(config: dict[str, Any], batched: Callable[[str], bool],
               bundled: dict[str, str] | None = None) -> list[tuple[str, str, Any]]:
    """(run id, Snakemake job, RunConfig) of every cell, for the progress plan (fipa/progress.py).

    The job is the cell's ``train_batch`` job (:func:`batch_job`) where its task is ``batched``,
    its ``train_bundle`` job (:func:`bundle_job`) where ``bundled`` names one, else the cell
    itself; configs are parsed once per seedless spec.
    """
    from fipa.config import parse_run_config

    parsed: dict[str, Any] = {}
    out = []
    for cell in cells(config):
        spec = run_spec(config, cell, "", None)
        key = _seedless_key(spec)
        if key not in parsed:
            parsed[key] = parse_run_config(spec, cell.run_id)
        job = batch_job(cell.task, cell.partition, cell.method) if batched(cell.task) else cell.run_id
        if bundled and cell.run_id in bundled:
            job = bundle_job(bundled[cell.run_id])
        out.append((cell.run_id, job, parsed[key]))
    return out


def bundles(config: dict[str, Any], batched: Callable[[str], bool], limit_s: float) -> dict[str, str]:
    """Run id -> bundle (``<task>/b<k>``) of every short cell of a ``batch: false`` task.

    A cell is short when its cost prior (fipa.progress.prior_seconds) is below ``limit_s``;
    consecutive short cells of one task entry, in grid order, share a bundle while their priors
    sum to at most ``limit_s``. One bundle is one job (rule train_bundle) that trains its cells
    one after another: on a cluster, where each job pays its own Snakemake start-up, many short
    cells pay it once. Long cells stay one job each; ``limit_s <= 0`` bundles nothing.
    """
    from fipa.progress import prior_seconds

    if limit_s <= 0:
        return {}
    out: dict[str, str] = {}
    fill: dict[str, tuple[int, float]] = {}  # task -> (current bundle index, its priors' sum)
    for run_id, _, cfg in plan_cells(config, batched):
        task = run_id.split("/", 1)[0]
        prior = prior_seconds(cfg)[1]
        if batched(task) or prior >= limit_s:
            continue
        k, used = fill.get(task, (0, 0.0))
        if used > 0 and used + prior > limit_s:  # this one would overfill: open the next bundle
            k, used = k + 1, 0.0
        fill[task] = (k, used + prior)
        out[run_id] = f"{task}/b{k}"
    return out


def missing_data(config: dict[str, Any], tasks: list[str]) -> list[str]:
    """``tasks.<task>: <what is missing, and the command that fetches it>`` for each of the
    config's ``tasks`` whose data are not on disk (Task.missing_data; paths only, nothing loaded)."""
    from fipa.config import parse_run_config
    from fipa.tasks import TASKS

    out = []
    for name in tasks:
        first = next(iter(config["tasks"][name]["partitions"]))
        task = parse_run_config(partition_spec(config, name, first, 0), f"tasks.{name}").task
        why = TASKS.get(task.name).missing_data(task.params)
        if why:
            out.append(f"tasks.{name}: {why}")
    return out
