"""Grid progress: one status line per finished cell, with an estimate of the time left.

Two small files under the grid's runs root carry what the estimate needs, so that a status
line reads one ledger instead of every final.json (quadratic at paper scale):

* ``.grid-plan.json``, written once when Snakemake starts (workflow ``onstart``): every cell's
  task family, *prior cost* (:func:`prior_seconds`) and Snakemake job, and how many jobs
  run at once;
* ``.grid-ledger.jsonl``, one line appended when a job starts (its cells), one when a cell
  ends (its wall time and outcome), one when a job ends (``ok``, ``failed`` or ``killed``: a
  SIGTERM, as SLURM sends on ``scancel`` or a time limit) and one when the submitting
  Snakemake ends (``session``: ``success`` or ``error``).

A cell is *done* once its end line is in; *failed* when the job that last started it ended
(its job-end line, or the session's end for a job killed without a word, SIGKILL) without
the cell's end line; *running* when started and neither; *queued* otherwise
(:func:`cell_states`). A rerun writes a fresh plan and ledger, where a failed cell is queued
again and turns done when its end line comes.

:func:`estimate_left` corrects the priors by what the finished jobs took (per grid task
entry, else per task family, else over all finished jobs), keeps what is left of the
running jobs and list-schedules the rest on the slots that the ledger shows running at
once (:func:`observed_slots`, at most the plan's ceiling). Without a plan it falls back to
cells per second since the first one started. tests/test_progress.py replays two recorded
grids against it.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
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
    outcome: str = "done"  # what its status line says: "test_mse 0.0015", "DIVERGED"


@dataclass
class Job:
    """One process that trains cells: its start, and its end and status once it ended."""

    labels: list[str]
    start: float
    end: float | None = None
    status: str | None = None  # ok | failed | killed


@dataclass
class Ledger:
    """What the ledger says so far: finished cells, when each cell's latest job started, the
    jobs themselves, and when the submitting Snakemake ended (None while it runs)."""

    done: list[Finished]
    started: dict[str, float]  # cell label -> start time of the latest job that trains it
    jobs: dict[str, Job] = field(default_factory=dict)  # ledger job id -> its span
    job_of: dict[str, str] = field(default_factory=dict)  # cell label -> its latest job id
    closed: float | None = None
    session: str | None = None  # success | error, once closed

    def feed(self, d: dict[str, Any]) -> Finished | None:
        """Add one parsed ledger line (raises KeyError/TypeError/ValueError on a foreign one);
        returns the cell end it records, if it is one."""
        kind = d["event"]
        if kind == "start":
            labels, t = [str(x) for x in d["labels"]], float(d["t"])
            self.jobs[d["job"]] = Job(labels, t)
            self.started.update(dict.fromkeys(labels, t))
            self.job_of.update(dict.fromkeys(labels, d["job"]))
        elif kind == "end":
            f = Finished(d["label"], d["job"], float(d["t"]), float(d["wall"]), d.get("outcome", "done"))
            self.done.append(f)
            return f
        elif kind == "job_end":
            job = self.jobs.get(d["job"])
            if job is not None and job.end is None:  # the first word counts (SIGTERM, then the finally)
                job.end, job.status = float(d["t"]), str(d["status"])
        elif kind == "session":
            self.closed, self.session = float(d["t"]), str(d["status"])
        return None


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
    entry = {"event": "start", "job": this_job(), "labels": labels, "t": time.time() if t is None else t}
    if os.environ.get("SLURM_JOB_ID"):  # which SLURM job to look at (or scancel) for these cells
        entry["slurm_job"] = os.environ["SLURM_JOB_ID"]
    _append(root, entry)


def record(root: str | Path, label: str, wall: float, job: str | None = None,
           outcome: str = "done") -> None:
    """Note that ``label`` finished after ``wall`` s with ``outcome`` (its status line's words);
    ``job`` defaults to this process (the plan, not the ledger, knows each cell's family and
    Snakemake job)."""
    _append(root, {"event": "end", "label": label, "job": this_job() if job is None else job,
                   "t": time.time(), "wall": wall, "outcome": outcome})


def record_job_end(root: str | Path, status: str) -> None:
    """Note that this process ends: ``ok``, ``failed`` (an error) or ``killed`` (SIGTERM)."""
    _append(root, {"event": "job_end", "job": this_job(), "t": time.time(), "status": status})


def record_session_end(root: str | Path, status: str) -> None:
    """Note that the submitting Snakemake ended (``success`` or ``error``): a job still open
    then was killed without a word (SIGKILL, a lost node) and its unfinished cells failed."""
    _append(root, {"event": "session", "t": time.time(), "status": status})


@contextmanager
def grid_job(root: str | Path, labels: list[str], t: float | None = None) -> Iterator[None]:
    """The start line of this job, and its end line however it ends: ``ok`` when the block
    returns, ``failed`` on an exception, ``killed`` on SIGTERM (written from the handler, after
    which the default action ends the process as before: nothing else changes)."""
    record_start(root, labels, t)

    def on_term(signum, frame) -> None:
        record_job_end(root, "killed")
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, on_term)
    status = "failed"
    try:
        yield
        status = "ok"
    finally:
        signal.signal(signal.SIGTERM, previous)
        record_job_end(root, status)


def parse_line(line: str) -> dict[str, Any] | None:
    """One ledger line as a dict; None for a torn or foreign line."""
    try:
        d = json.loads(line)
    except ValueError:
        return None
    return d if isinstance(d, dict) else None


def read_ledger(root: str | Path) -> Ledger:
    """The ledger's events; a torn or foreign line is skipped."""
    ledger = Ledger([], {})
    try:
        text = (Path(root) / LEDGER).read_text()
    except OSError:
        return ledger
    for line in text.splitlines():
        d = parse_line(line)
        try:
            if d is not None:
                ledger.feed(d)
        except (ValueError, KeyError, TypeError):
            continue
    return ledger


DONE, FAILED, RUNNING, QUEUED = "done", "failed", "running", "queued"


def cell_states(labels: Iterable[str], ledger: Ledger) -> dict[str, str]:
    """Each cell's state (module docstring): done by its end line; failed when its latest job
    ended, or the session did, without that line; running when started; queued otherwise."""
    ended = {f.label for f in ledger.done}
    states = {}
    for label in labels:
        job = ledger.jobs.get(ledger.job_of.get(label, ""))
        if label in ended:
            states[label] = DONE
        elif job is None and label not in ledger.started:
            states[label] = FAILED if ledger.closed is not None else QUEUED
        elif (job is not None and job.end is not None) or ledger.closed is not None:
            states[label] = FAILED
        else:
            states[label] = RUNNING
    return states


def job_spans(ledger: Ledger, now: float) -> list[tuple[float, float]]:
    """(start, end) of every job in the ledger; a job without its end line ends at its last
    cell's end if all its cells ended, else at the session's end, else it runs until ``now``."""
    ends: dict[str, float] = {}
    for f in ledger.done:
        ends[f.label] = max(f.end, ends.get(f.label, f.end))
    spans = []
    for job in ledger.jobs.values():
        end = job.end
        if end is None and job.labels and all(label in ends for label in job.labels):
            end = max(ends[label] for label in job.labels)
        if end is None:
            end = ledger.closed if ledger.closed is not None else now
        spans.append((job.start, max(end, job.start)))
    return spans


def observed_slots(ledger: Ledger, now: float, min_overlap_s: float = 2.0) -> int | None:
    """The most jobs the ledger shows running at once for at least ``min_overlap_s`` (a sweep
    over the job spans); None before any job started. What the cluster grants, not what the
    profile asks for. The tolerance keeps out a job that starts a moment before its
    predecessor's last line (clocks of different nodes, a process that ends after its cells)."""
    spans = job_spans(ledger, now)
    if not spans:
        return None
    # at a tie an end (-1) sorts first: a slot freed and taken again at once is one slot
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    most = running = 0
    for (t, step), (t_next, _) in zip(events, [*events[1:], (math.inf, 0)], strict=True):
        running += step
        if t_next - t >= min_overlap_s:  # held long enough to count
            most = max(most, running)
    return max(most, 1)


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
    if plan is not None and plan.get("cells"):  # failed cells wait for a rerun, not for this one
        labels |= {c for c, st in cell_states(plan["cells"], ledger).items() if st == FAILED}
    if len(labels) >= total or ledger.closed is not None:
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
    slots += [0.0] * max(concurrency(plan, ledger, now) - len(slots), 0)
    for job, cost in jobs.items():
        if job not in started:  # queued: to the slot that frees first
            i = slots.index(min(slots))
            slots[i] += cost
    return max(slots)


def concurrency(plan: dict[str, Any], ledger: Ledger, now: float) -> int:
    """Jobs that run at once: as many as the ledger has shown at once, at most the plan's
    ceiling (cores / threads here, the profile's ``jobs`` on a cluster, which a busy or small
    cluster never grants); the ceiling alone while the ledger has no job spans."""
    ceiling = max(1, int(plan.get("concurrency", 1)))
    seen = observed_slots(ledger, now)
    return ceiling if seen is None else min(seen, ceiling)


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


def outcome_of(final: dict[str, Any]) -> str:
    """What a status line says of a finished cell: its primary metric, DIVERGED, or done."""
    metric = final.get("primary_metric")
    value = final.get("final", {}).get(metric)
    if final.get("diverged"):
        return "DIVERGED"
    return f"{metric} {value:.4g}" if value is not None else "done"


def status_line(label: str, final: dict, runs_root: str | Path, total: int) -> str:
    """Record ``final`` in the ledger and return its status line:
    ``[done 14/27] <label>: test_mse 0.0015 (21.3 s); 13 jobs left, about 4 min 10 s``."""
    wall = float(final.get("wall_s", 0.0))
    record(runs_root, label, wall, outcome=outcome_of(final))
    return format_line(Finished(label, this_job(), time.time(), wall, outcome_of(final)),
                       read_plan(runs_root), read_ledger(runs_root), total, time.time())


def format_line(f: Finished, plan: dict[str, Any] | None, ledger: Ledger, total: int, now: float) -> str:
    """The status line of cell end ``f``, given the ledger up to it: done k/N, its outcome and
    wall time, and the time left. ``total`` counts the grid where the plan lacks the cell."""
    if plan and f.label in plan["cells"]:  # this invocation's cells (the targets asked for), not the grid's
        total = len(plan["cells"])
    finished = len({d.label for d in ledger.done})
    left = estimate_left(plan, ledger, total, now)
    return (f"[done {finished}/{total}] {f.label}: {f.outcome} ({f.wall:.1f} s); "
            f"{max(total - finished, 0)} jobs left, about {format_duration(left)}")
