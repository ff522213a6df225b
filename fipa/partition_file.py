"""A partition file (``fipa partition``) read back for one run, checked against its config.

Each rule of PARTITION_RULES takes (the file's JSON content, the run's config, its task's
sample count n) and returns one problem, or None; the first problem fails the run before
any training, with the fix (regenerate the file).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from fipa.config import RunConfig, canonical
from fipa.errors import ConfigError, UnreadableFileError
from fipa.partition import SCHEMES


def load_partition(path: str, cfg: RunConfig, n: int) -> list[np.ndarray]:
    """Client index lists from a ``fipa partition`` file, checked by PARTITION_RULES against this
    run (``n`` samples in its task's training pool)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise UnreadableFileError(f"partition_file: {path} is unreadable ({e}); run `fipa partition` "
                                  "again") from None
    for rule in PARTITION_RULES:
        problem = rule(data, cfg, n)
        if problem is not None:
            raise ConfigError(f"partition_file: {path} {problem}; regenerate it with `fipa partition` "
                              "for this run's config")
    return [np.asarray(p, dtype=np.int64) for p in data["indices"]]


def _part_form(data: Any, cfg: RunConfig, n: int) -> str | None:
    """A mapping whose ``indices`` are lists of integer sample indices, one list per client."""
    indices = data.get("indices") if isinstance(data, dict) else None
    if not isinstance(indices, list) or not all(
            isinstance(p, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in p)
            for p in indices):
        return "is not a partition file (indices: one list of sample indices per client)"
    return None


def _part_size(data: dict, cfg: RunConfig, n: int) -> str | None:
    """As many clients as the run, over the run's sample count."""
    if len(data["indices"]) != cfg.clients or data.get("n") != n:
        return (f"holds {len(data['indices'])} clients over {data.get('n')} samples, but this run has "
                f"{cfg.clients} clients over {n}")
    return None


def _part_origin(data: dict, cfg: RunConfig, n: int) -> str | None:
    """Made for this run's seed, task and partition settings (a split of another seed or scheme
    would train on data the run's config does not describe)."""
    if data.get("seed") != cfg.seed:
        return f"was made for seed {data.get('seed')!r}, this run has seed {cfg.seed}"
    made = {"task": data.get("task"), "partition": data.get("partition")}
    wanted = {"task": cfg.task.to_dict("name"), "partition": {**cfg.partition.to_dict("scheme"),
                                                              "clients": cfg.clients}}
    if canonical(made) != canonical(wanted):
        return "was made for other task or partition settings"
    return None


def _part_indices(data: dict, cfg: RunConfig, n: int) -> str | None:
    """Indices in [0, n), each sample held by at most one client, no client empty, and every sample
    held where the scheme promises it (its declared ``covers_all``; the built-in schemes do)."""
    parts = data["indices"]
    flat = [i for p in parts for i in p]
    if any(i < 0 or i >= n for i in flat):
        return f"holds sample indices outside [0, {n})"
    if len(set(flat)) != len(flat):
        return "gives some samples to more than one client (or twice to one)"
    empty = [m for m, p in enumerate(parts) if not p]
    if empty:
        return f"gives client {empty[0]} no sample"
    if len(flat) != n and SCHEMES.get(cfg.partition.name).covers_all:
        return f"leaves {n - len(flat)} of the {n} samples to no client"
    return None


PARTITION_RULES = (_part_form, _part_size, _part_origin, _part_indices)
