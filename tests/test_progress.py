"""Grid progress: the time-left estimate against recorded grids, and the ledger it reads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from fipa import grid, progress
from fipa.config import parse_run_config
from fipa.progress import Finished, Ledger, estimate_left, prior_seconds

DATA = Path(__file__).parent / "data"
ROOT = Path(__file__).resolve().parents[1]


def load_recording(name: str) -> tuple[dict, list[Finished], dict[str, float], float]:
    """(plan, cell ends sorted by time, cell -> its job's start, grid end) of a recorded grid.

    The recordings are real Snakemake runs on 2 cores (``source`` in the file): every cell's
    end and wall time, and each job's start from its Snakemake benchmark record.
    """
    rec = json.loads((DATA / name).read_text())
    cells, events, starts = {}, [], {}
    for job in rec["jobs"]:
        spec = {k: v for k, v in job["config"].items() if k not in ("partition_file", "warmup_checkpoint")}
        family, prior = prior_seconds(parse_run_config(spec))
        for label, end, wall in job["cells"]:
            cells[label] = [family, prior, job["key"]]
            events.append(Finished(label, job["key"], end, wall))
            starts[label] = job["start"]
    events.sort(key=lambda f: f.end)
    return {"concurrency": rec["concurrency"], "cells": cells}, events, starts, events[-1].end


def replay(plan: dict | None, events: list[Finished], starts: dict[str, float], end: float
           ) -> list[tuple[int, float, float]]:
    """(cells done, estimate, actual time left) after every job's last cell, from 10% on."""
    out = []
    for i, f in enumerate(events):
        done = events[: i + 1]
        if (i + 1 < len(events) and events[i + 1].job == f.job) or len(done) < 0.1 * len(events):
            continue
        if len(done) == len(events):
            break
        started = {label: t for label, t in starts.items() if t <= f.end}
        out.append((len(done), estimate_left(plan, Ledger(done, started), len(events), f.end), end - f.end))
    return out


@pytest.mark.parametrize("recording", ["grid_default.json", "grid_ablations.json"])
def test_estimate_within_30_percent_of_the_actual_time_left_from_10_percent_on(recording):
    plan, events, starts, end = load_recording(recording)
    points = replay(plan, events, starts, end)
    errors = [abs(est / actual - 1) for _, est, actual in points]
    print(f"{recording}: {len(points)} status points, worst relative error {max(errors):.2f}")
    assert len(points) >= 8
    assert max(errors) <= 0.30, [(n, round(e), round(a)) for n, e, a in points]


def test_cells_per_second_alone_misjudges_a_mixed_grid():
    """The fallback (no plan) is what the status lines used to say: on the default grid,
    cheap regression and digits jobs first, it is off by more than 30% (why the plan exists)."""
    plan, events, starts, end = load_recording("grid_default.json")
    errors = [abs(est / actual - 1) for _, est, actual in replay(None, events, starts, end)]
    assert max(errors) > 0.30


def test_running_job_counts_its_progress_and_finished_earlier_cells_no_pace():
    cells = {"a/p/m/x/seed0": ["t", 10.0, "a/p/m"], "b/p/m/x/seed0": ["t", 10.0, "b/p/m"],
             "c/p/m/x/seed0": ["t", 10.0, "c/p/m"]}
    plan = {"concurrency": 1, "cells": cells}
    earlier = Finished("c/p/m/x/seed0", progress.EARLIER, 0.0, 0.0)
    first = Finished("a/p/m/x/seed0", "pid1", 20.0, 20.0)  # took twice its prior
    started = {"a/p/m/x/seed0": 0.0, "b/p/m/x/seed0": 20.0}
    assert estimate_left(plan, Ledger([earlier], {}), 3, 5.0) is None  # nothing measured yet
    at_start = estimate_left(plan, Ledger([earlier, first], started), 3, 20.0)
    halfway = estimate_left(plan, Ledger([earlier, first], started), 3, 30.0)
    assert at_start == pytest.approx(20.0)  # b's prior 10 s x the observed ratio 2
    assert halfway == pytest.approx(10.0)
    assert estimate_left(plan, Ledger([earlier, first, Finished("b/p/m/x/seed0", "pid2", 40.0, 20.0)],
                                      started), 3, 40.0) == 0.0


def test_ledger_lines_survive_concurrent_appends_and_skip_torn_ones(tmp_path):
    progress.record_start(tmp_path, ["a", "b"], t=1.0)
    progress.record(tmp_path, "a", 3.5)
    with open(tmp_path / progress.LEDGER, "a") as fh:
        fh.write('{"event": "end", "label": "tor')  # a line cut by a kill
    progress.record(tmp_path, "b", 4.0)
    ledger = progress.read_ledger(tmp_path)
    assert [f.label for f in ledger.done] == ["a"]  # the torn line swallowed b's: skipped whole
    assert ledger.started == {"a": 1.0, "b": 1.0}


def test_status_line_reads_the_ledger_not_every_final_json(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "final.json").write_text("{corrupt")  # would break a scan of results
    final = {"task_family": "regression", "primary_metric": "test_mse", "final": {"test_mse": 0.0015},
             "wall_s": 21.3, "diverged": False}
    progress.record(tmp_path, "done/p/m/a/seed0", 10.0)
    line = progress.status_line("t/p/m/a/seed0", final, tmp_path, 4)
    assert line.startswith("[done 2/4] t/p/m/a/seed0: test_mse 0.0015 (21.3 s); 2 jobs left, about ")


def test_plan_of_the_default_config_prices_every_cell_by_its_batch_job(tmp_path):
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    cells = grid.plan_cells(config, lambda task: config["tasks"][task].get("batch", True))
    progress.write_plan(tmp_path, cells, concurrency=2)
    plan = progress.read_plan(tmp_path)
    assert len(plan["cells"]) == len(grid.cells(config)) and plan["concurrency"] == 2
    assert all(prior > 0 for _, prior, _ in plan["cells"].values())
    jobs = {job for _, _, job in plan["cells"].values()}
    assert len(jobs) < len(plan["cells"])  # batched tasks: one job per task x partition x method
