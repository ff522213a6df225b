"""Grid progress: one status line per finished cell, with an estimate of the time left.

Two small files under the grid's runs root carry what the estimate needs, so that a status
line reads one ledger instead of every final.json (quadratic at paper scale):

* ``.grid-plan.json``, written once when Snakemake starts (workflow ``onstart``): every cell's
  task family, *prior cost* (:func:`prior_seconds`) and Snakemake job, and how many jobs
  run at once;
* ``.grid-ledger.jsonl``, one line appended when a job starts (its cells) and one when a
  cell ends (its wall time).

:func:`estimate_left` corrects the priors by what the finished jobs took (per grid task
entry, else per task family, else over all finished jobs), keeps what is left of the
running jobs and list-schedules the rest on the plan's concurrency. Without a plan it falls
back to cells per second since the first one started. tests/test_progress.py replays two
recorded grids against it.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PLAN = ".grid-plan.json"
LEDGER = ".grid-ledger.jsonl"
EARLIER = ""  # ledger job id of cells finished before this Snakemake started


@dataclass(frozen=True)
class Finished:
    """One ledger line: a cell that ended at ``end`` (epoch s) after ``wall`` s in job ``job``."""

    label: str
    job: str
    end: float
    wall: float


@dataclass
class Ledger:
    """What the ledger says so far: finished cells, and when each job's cells started."""

    done: list[Finished]
    started: dict[str, float]  # cell label -> start time of the job that trains it


def prior_seconds(cfg: Any) -> tuple[str, float]:
    """(task family, rough seconds) of one run config, without building its task.

    rounds x participating clients x local steps x minibatch samples x the task's
    ``sample_seconds``; the pool size per client comes from ``Task.work_samples``.
    """
    from fipa.clients import batch_size, steps_per_round
    from fipa.tasks import TASKS

    task = TASKS.get(cfg.task.name)
    per_client = max(1, task.work_samples(cfg.task.params) // max(cfg.clients, 1))
    clients = max(1, math.ceil(cfg.clients * cfg.participation))
    steps = steps_per_round(per_client, cfg.client) * batch_size(per_client, cfg.client)
    return cfg.task.name, cfg.rounds * clients * steps * task.sample_seconds(cfg.task.params)


def write_plan(root: str | Path, cells: Iterable[tuple[str, str, Any]], concurrency: int) -> Path:
    """Write ``root/.grid-plan.json`` for ``(label, job, RunConfig)`` cells (``job``: the
    Snakemake job that trains the cell) and start a fresh ledger."""
    from fipa.io import atomic_write

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    cells = list(cells)
    plan = {"concurrency": max(1, int(concurrency)),
            "cells": {label: [*prior_seconds(cfg), job] for label, job, cfg in cells}}
    atomic_write(root / PLAN, lambda fh: json.dump(plan, fh))
    (root / LEDGER).unlink(missing_ok=True)
    for label in plan["cells"]:  # finished in an earlier session: done, but no measure of this one's pace
        if (root / label / "final.json").exists():
            record(root, label, 0.0, job=EARLIER)
    return root / PLAN


def _append(root: str | Path, entry: dict[str, Any]) -> None:
    """One O_APPEND write of one line: lines of concurrent processes never interleave."""
    fd = os.open(Path(root) / LEDGER, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        os.write(fd, (json.dumps(entry) + "\n").encode())
    finally:
        os.close(fd)


def this_job() -> str:
    return f"{os.uname().nodename}:{os.getpid()}"


def record_start(root: str | Path, labels: list[str], t: float | None = None) -> None:
    """Note that this process, started at ``t`` (default now), trains ``labels``: the estimate
    counts a running job's progress, and its set-up in its cost."""
    _append(root, {"event": "start", "job": this_job(), "labels": labels,
                   "t": time.time() if t is None else t})


def record(root: str | Path, label: str, wall: float, job: str | None = None) -> None:
    """Note that ``label`` finished after ``wall`` s; ``job`` defaults to this process (the
    plan, not the ledger, knows each cell's family and Snakemake job)."""
    _append(root, {"event": "end", "label": label, "job": this_job() if job is None else job,
                   "t": time.time(), "wall": wall})


def read_ledger(root: str | Path) -> Ledger:
    """The ledger's events; a torn or foreign line is skipped."""
    ledger = Ledger([], {})
    try:
        text = (Path(root) / LEDGER).read_text()
    except OSError:
        return ledger
    for line in text.splitlines():
        try:
            d = json.loads(line)
            if d["event"] == "start":
                ledger.started.update(dict.fromkeys(d["labels"], float(d["t"])))
            else:
                ledger.done.append(Finished(d["label"], d["job"], float(d["t"]), float(d["wall"])))
        except (ValueError, KeyError, TypeError):
            continue
    return ledger


def read_plan(root: str | Path) -> dict[str, Any] | None:
    try:
        return json.loads((Path(root) / PLAN).read_text())
    except (OSError, ValueError):
        return None


def estimate_left(plan: dict[str, Any] | None, ledger: Ledger, total: int, now: float) -> float | None:
    """Seconds until the grid is done; None before any cell finished.

    With a plan: a job's cost is the longest wall time of its cells (they train in lockstep).
    The ratio of observed to prior cost, per task entry, else family, else overall, scales
    the priors of the jobs not done; running jobs keep what is left of their cost, and the
    queue is list-scheduled on ``concurrency`` slots. Without a plan: the remaining cells at
    the observed cells per second.
    """
    labels = {f.label for f in ledger.done}
    measured = [f for f in ledger.done if f.job != EARLIER]
    if len(labels) >= total:
        return 0.0
    if not measured:
        return None
    if plan is None or not plan.get("cells"):
        elapsed = max(now - min(f.end - f.wall for f in measured), 1e-9)
        return (total - len(labels)) * elapsed / len({f.label for f in measured})
    cells = plan["cells"]
    ratio = _cost_ratios(cells, measured, ledger.started)
    jobs: dict[str, float] = {}  # plan job -> corrected cost of its cells
    for label, (fam, prior, job) in cells.items():
        if label not in labels:
            factor = next(ratio[k] for k in (_entry(label), fam, None) if k in ratio)
            jobs[job] = jobs.get(job, 0.0) + prior * factor
    started: dict[str, float] = {}  # running plan job -> its start
    for label, t in ledger.started.items():
        job = cells.get(label, (None, None, None))[2]
        if job in jobs:
            started[job] = min(t, started.get(job, t))
    slots = [max(cost - (now - started[job]), 0.0) for job, cost in jobs.items() if job in started]
    slots += [0.0] * max(int(plan.get("concurrency", 1)) - len(slots), 0)
    for job, cost in jobs.items():
        if job not in started:  # queued: to the slot that frees first
            i = slots.index(min(slots))
            slots[i] += cost
    return max(slots)


def _entry(label: str) -> str:
    """The grid task entry of a cell label ``entry/partition/method/aggregator/seedS``."""
    return "entry:" + label.split("/", 1)[0]


def _cost_ratios(cells: dict[str, Any], done: list[Finished], started: dict[str, float]
                 ) -> dict[str | None, float]:
    """Observed / prior cost of the finished plan jobs, per task entry, per family and over
    all of them (key None).

    Only jobs whose every cell is done count (a diverged cell ends its job's lockstep early).
    A job's observed cost runs from its process start (imports and set-up included) to its
    last cell's end where the ledger has the start, else it is its longest cell's wall time.
    """
    members: dict[str, list[str]] = {}
    for label, (_, _, job) in cells.items():
        members.setdefault(job, []).append(label)
    ended = {f.label: f for f in done}
    seen: dict[str | None, list[float]] = {}
    for labels in members.values():
        if not all(label in ended for label in labels):
            continue
        prior = sum(cells[label][1] for label in labels)
        wall = max(ended[label].wall for label in labels)
        if all(label in started for label in labels):
            wall = max(ended[label].end for label in labels) - min(started[label] for label in labels)
        for key in (_entry(labels[0]), cells[labels[0]][0], None):
            acc = seen.setdefault(key, [0.0, 0.0])
            acc[0] += wall
            acc[1] += prior
    return {k: w / p for k, (w, p) in seen.items() if p > 0} or {None: 1.0}


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    m, s = divmod(int(round(seconds)), 60)
    return f"{m} min {s:02d} s" if m else f"{s} s"


def status_line(label: str, final: dict, runs_root: str | Path, total: int) -> str:
    """Record ``final`` in the ledger and return its status line:
    ``[done 14/27] <label>: test_mse 0.0015 (21.3 s); 13 jobs left, about 4 min 10 s``."""
    record(runs_root, label, float(final.get("wall_s", 0.0)))
    ledger = read_ledger(runs_root)
    plan = read_plan(runs_root)
    if plan and label in plan["cells"]:  # this invocation's cells (the targets asked for), not the grid's
        total = len(plan["cells"])
    finished = len({f.label for f in ledger.done})
    left = estimate_left(plan, ledger, total, time.time())
    metric = final.get("primary_metric")
    value = final.get("final", {}).get(metric)
    if final.get("diverged"):
        outcome = "DIVERGED"
    else:
        outcome = f"{metric} {value:.4g}" if value is not None else "done"
    return (f"[done {finished}/{total}] {label}: {outcome} ({final.get('wall_s', 0):.1f} s); "
            f"{max(total - finished, 0)} jobs left, about {format_duration(left)}")
