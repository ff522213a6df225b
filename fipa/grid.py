"""Expand a workflow config (config/config.yaml) into per-job run configs.

The workflow grid is task x partition x client method x aggregator x seed. Each cell's
run config is a plain dict that ``fipa train`` validates; nothing here imports Snakemake.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

TASK_RUN_KEYS = ("rounds", "eval_every", "checkpoint_every", "participation", "dtype", "device",
                 "vectorize")


@dataclass(frozen=True)
class GridCell:
    """One training job of the grid."""

    task: str
    partition: str
    method: str
    aggregator: str
    seed: int

    @property
    def run_id(self) -> str:
        return f"{self.task}/{self.partition}/{self.method}/{self.aggregator}/seed{self.seed}"


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


def cells(config: dict[str, Any]) -> list[GridCell]:
    """Every job of the grid, in a stable order."""
    out = []
    for tname, t in config["tasks"].items():
        methods = _selected(t, "client_methods", list(config["client_methods"]))
        for pname in t["partitions"]:
            for method in methods:
                for agg in method_aggregators(config, tname, method):
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
    return f"results/warmup/{task}/{partition}/seed{seed}/state.pt"


def run_spec(config: dict[str, Any], cell: GridCell, partition_file: str,
             warmup_file: str | None = None) -> dict[str, Any]:
    """The full run config of one cell, with the partition file (and warm-up state) it starts from."""
    t = config["tasks"][cell.task]
    client = _merge(t.get("client", {}), config["client_methods"][cell.method])
    aggregator = _merge(config["aggregators"][cell.aggregator],
                        t.get("aggregator_overrides", {}).get(cell.aggregator))
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
    spec.update({k: t[k] for k in TASK_RUN_KEYS if k in t})
    if warmup_file is not None:
        spec["warmup_checkpoint"] = warmup_file
    return spec


def check(config: dict[str, Any]) -> None:
    """Validate the whole grid before any job runs: cross-references between the config's
    sections, and every cell's (and warm-up's) run config with ``fipa train``'s own validator.

    Raises one ConfigError whose message starts with the key's path in the workflow config
    (``tasks.<task>.aggregators``, ``aggregators.<name>.rho``, ...).
    """
    from fipa.config import parse_run_config
    from fipa.errors import ConfigError

    seeds = config.get("seeds", [])
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds: {seeds} repeats a seed; list each seed once")
    for tname, t in config["tasks"].items():
        own = t.get("seeds", seeds)
        if len(set(own)) != len(own):
            raise ConfigError(f"tasks.{tname}.seeds: {own} repeats a seed; list each seed once")
        for key, section in (("aggregators", "aggregators"), ("client_methods", "client_methods")):
            if t.get(key) == []:
                raise ConfigError(f"tasks.{tname}.{key}: an empty list gives this task no training job; "
                                  f"list at least one name of top-level {section}, or drop the key for all")
            for name in t.get(key) or []:
                if name not in config[section]:
                    raise ConfigError(f"tasks.{tname}.{key}: {name!r} is not defined under top-level "
                                      f"{section} ({', '.join(config[section])})")
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
        warm = t.get("warmup")
        if warm:
            for key, section in (("aggregator", "aggregators"), ("client_method", "client_methods")):
                name = warm.get(key, "fedavg" if key == "aggregator" else "local")
                if name not in config[section]:
                    raise ConfigError(f"tasks.{tname}.warmup.{key}: {name!r} is not defined under "
                                      f"top-level {section}")
    check_distinct_run_dirs(config)
    checked: set[str] = set()
    for cell in cells(config):
        specs = [(f"tasks.{cell.task} cell {cell.run_id}", run_spec(config, cell, "", None))]
        if "warmup" in config["tasks"][cell.task]:
            specs.append((f"tasks.{cell.task}.warmup", warmup_spec(config, cell.task, cell.partition,
                                                                 cell.seed, "")))
        for where, spec in specs:
            key = _seedless_key(spec)
            if key in checked:  # seeds only change the seed: validated once
                continue
            checked.add(key)
            try:
                parse_run_config(spec, where)
            except ConfigError as e:
                raise ConfigError(f"{where}: {e}") from None


def check_distinct_run_dirs(config: dict[str, Any]) -> None:
    """Refuse two cells whose run directories resolve to one path (a name "." or ".." would make
    them): one cell's results would replace the other's."""
    import os

    from fipa.errors import ConfigError

    seen: dict[str, GridCell] = {}
    for cell in cells(config):
        where = os.path.normpath(cell.run_id)
        if where in seen:
            raise ConfigError(f"tasks.{cell.task}: cells {seen[where].run_id} and {cell.run_id} resolve to "
                              f"one run directory (results/runs/{where}); rename the entries named . or ..")
        seen[where] = cell


def _seedless_key(spec: dict[str, Any]) -> str:
    """Drop the file references and labels of ``spec`` (in place); a key equal for every seed."""
    for k in ("partition_file", "warmup_checkpoint", "labels"):
        spec.pop(k, None)
    return repr(sorted((k, repr(v)) for k, v in spec.items() if k != "seed"))


def plan_cells(config: dict[str, Any], batched: Callable[[str], bool],
               bundled: dict[str, str] | None = None) -> list[tuple[str, str, Any]]:
    """(run id, Snakemake job, RunConfig) of every cell, for the progress plan (fipa/progress.py).

    The job is the cell's ``train_batch`` job (task/partition/method) where its task is
    ``batched``, its ``train_bundle`` job (``bundle:<task>/<bundle>``, :func:`bundles`) where
    ``bundled`` names one, else the cell itself; configs are parsed once per seedless spec.
    """
    from fipa.config import parse_run_config

    parsed: dict[str, Any] = {}
    out = []
    for cell in cells(config):
        spec = run_spec(config, cell, "", None)
        key = _seedless_key(spec)
        if key not in parsed:
            parsed[key] = parse_run_config(spec, cell.run_id)
        job = f"{cell.task}/{cell.partition}/{cell.method}" if batched(cell.task) else cell.run_id
        if bundled and cell.run_id in bundled:
            job = f"bundle:{bundled[cell.run_id]}"
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
