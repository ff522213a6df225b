"""What a run records: its metrics.csv rows, its progress lines and its final.json.

A metrics row is one evaluated round (round, losses, the task's metrics, the aggregator's
server-state scalars, uplink bytes, wall time); final.json is the run's identity, outcome,
final and best metrics and provenance (config, versions, device).
"""

from __future__ import annotations

import math
import platform
import sys
from importlib import metadata
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from fipa.checkpoint import RunState

if TYPE_CHECKING:  # records read a simulation, they do not build one
    from fipa.simulation import Simulation

BASE_COLUMNS = ["round", "train_loss", "test_loss"]
TAIL_COLUMNS = ["uplink_bytes", "uplink_bytes_total", "diverged", "wall_s"]


def metrics_columns(task_metrics: list[str], stats: list[str]) -> list[str]:
    """metrics.csv's header: the base columns, the task's metrics, the aggregator's server-state
    scalars (``Aggregator.stats``), then uplink, divergence and wall time."""
    return BASE_COLUMNS + list(task_metrics) + list(stats) + TAIL_COLUMNS


def metrics_row(rnd: int, metrics: dict[str, float], bytes_: int, total: int, diverged: bool,
                wall: float) -> dict[str, Any]:
    """One metrics.csv row: round ``rnd``'s ``metrics``, its uplink ``bytes_`` (and the run's
    ``total``), whether the run diverged, and the run's wall seconds so far."""
    return {"round": rnd, **metrics, "uplink_bytes": bytes_, "uplink_bytes_total": total,
            "diverged": int(diverged), "wall_s": round(wall, 3)}


def progress_line(label: str, row: dict[str, Any], rounds: int, metric: str) -> str:
    """The log line of one metrics row: the round, the training loss and the primary ``metric``."""
    if row["diverged"]:
        return f"{label} round {row['round']}/{rounds}  DIVERGED (non-finite parameters or loss)"
    return (f"{label} round {row['round']}/{rounds}  train_loss {row['train_loss']:.4g}  "
            f"{metric} {row.get(metric, float('nan')):.4g}  [{row['wall_s']:.1f} s]")


def best_metrics(rows: list[dict[str, Any]], directions: dict[str, str]) -> dict[str, float]:
    """Each metric's best finite value over the evaluated ``rows`` (min or max by ``directions``)."""
    best = {}
    for k, direction in directions.items():
        vals = [r[k] for r in rows if k in r and math.isfinite(r[k])]
        if vals:
            best[k] = min(vals) if direction == "min" else max(vals)
    return best


def final_record(sim: Simulation, state: RunState) -> dict[str, Any]:
    """The content of final.json: identity, outcome, final and best metrics, provenance."""
    cfg = sim.cfg
    evaluated = [r for r in state.rows if "test_loss" in r]
    # a diverged run has no final metrics: its last finite evaluation is not where it ended
    last = evaluated[-1] if evaluated and not state.diverged else {}
    keys = ["train_loss", "test_loss", *sim.task.metrics]
    directions = {"train_loss": "min", "test_loss": "min", **sim.task.metrics}
    labels = cfg.labels
    return {
        "task": labels.get("task", cfg.task.name),
        "partition": labels.get("partition", cfg.partition.name),
        "client_method": labels.get("client_method", cfg.client.method),
        "aggregator": labels.get("aggregator", sim.regime.name or cfg.aggregator.name),
        "role": sim.regime.role,
        "seed": cfg.seed,
        "task_family": cfg.task.name,
        "rounds_completed": state.round,
        "diverged": state.diverged,
        "final": {k: last[k] for k in keys if k in last},
        "best": best_metrics(evaluated, {k: directions[k] for k in keys}),
        "metric_directions": directions,
        "primary_metric": sim.task.primary_metric,
        "num_params": sim.layout.numel,
        "local_training": {"vectorized": sim.vectorized, "rule": sim.path_reason},
        "threads": sim.threads.to_dict() if sim.threads else None,
        "uplink_bytes_total": state.uplink_total,
        "wall_s": round(state.wall_s, 3),
        "config": cfg.to_dict(),
        "versions": versions(),
        "device": str(sim.device),
    }


def versions() -> dict[str, str]:
    """The versions a run was made with: Python, torch, numpy, this package (its installed
    metadata, pyproject's version) and the platform."""
    return {"python": sys.version.split()[0], "torch": torch.__version__, "numpy": np.__version__,
            "fipa": metadata.version("fipa"), "platform": platform.platform()}
