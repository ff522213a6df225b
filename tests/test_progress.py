"""Grid progress: the time-left estimate against recorded grids, and the ledger it reads."""

from __future__ import annotations

import itertools
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


def ledger_at(plan: dict | None, done: list[Finished], starts: dict[str, float], now: float,
              jobs: bool = True) -> Ledger:
    """The ledger a status line at ``now`` reads: the cell ends so far, the starts so far and,
    with ``jobs``, each started job's start line (as fipa.progress.grid_job writes them)."""
    started = {label: t for label, t in starts.items() if t <= now}
    ledger = Ledger(list(done), started)
    if jobs and plan is not None:
        for label, t in started.items():
            key = plan["cells"][label][2]
            ledger.jobs.setdefault(key, progress.Job([], t)).labels.append(label)
            ledger.job_of[label] = key
    return ledger


def replay(plan: dict | None, events: list[Finished], starts: dict[str, float], end: float,
           jobs: bool = True) -> list[tuple[int, float, float]]:
    """(cells done, estimate, actual time left) after every job's last cell, from 10% on."""
    out = []
    for i, f in enumerate(events):
        done = events[: i + 1]
        if (i + 1 < len(events) and events[i + 1].job == f.job) or len(done) < 0.1 * len(events):
            continue
        if len(done) == len(events):
            break
        ledger = ledger_at(plan, done, starts, f.end, jobs)
        out.append((len(done), estimate_left(plan, ledger, len(events), f.end), end - f.end))
    return out


@pytest.mark.parametrize("recording", ["grid_default.json", "grid_ablations.json"])
@pytest.mark.parametrize("ceiling", [None, 100])
def test_estimate_within_30_percent_of_the_actual_time_left_from_10_percent_on(recording, ceiling):
    """With the slots the ledger shows running at once; also when the plan's ceiling says 100
    (the SLURM profile's `jobs`), which the recorded 2-core runs never granted."""
    plan, events, starts, end = load_recording(recording)
    if ceiling is not None:
        plan["concurrency"] = ceiling
    points = replay(plan, events, starts, end)
    errors = [abs(est / actual - 1) for _, est, actual in points]
    print(f"{recording} (ceiling {plan['concurrency']}): {len(points)} status points, "
          f"worst relative error {max(errors):.2f}")
    assert len(points) >= 8
    assert max(errors) <= 0.30, [(n, round(e), round(a)) for n, e, a in points]


def test_a_ceiling_of_100_without_job_lines_would_understate_the_time_left():
    """The oracle of the test above: the plan's ceiling alone (no start lines to observe)
    schedules the default grid's queue on 100 slots and says far too little."""
    plan, events, starts, end = load_recording("grid_default.json")
    plan["concurrency"] = 100
    errors = [est / actual - 1 for _, est, actual in replay(plan, events, starts, end, jobs=False)]
    assert min(errors) < -0.30


def test_plan_ceiling_of_100_with_two_jobs_at_once_in_the_ledger():
    """10 one-cell jobs of prior 10 s; the plan says 100 at once, the ledger shows 2.

    At t = 15: a and b ran 0..10 (pace 1.0 of the prior), c and d started at 10 (5 s left
    each), 6 queued. On 2 slots: 5 + 3 x 10 = 35 s; on 100 it would be 10 s."""
    names = "abcdefghij"
    cells = {f"{n}/p/m/x/seed0": ["t", 10.0, f"{n}/p/m/x/seed0"] for n in names}
    plan = {"concurrency": 100, "cells": cells}
    ledger = Ledger([], {})
    for n, t in zip("abcd", [0.0, 0.0, 10.0, 10.0], strict=True):
        ledger.feed({"event": "start", "job": f"h:{n}", "labels": [f"{n}/p/m/x/seed0"], "t": t})
    for n in "ab":
        ledger.feed({"event": "end", "label": f"{n}/p/m/x/seed0", "job": f"h:{n}", "t": 10.0, "wall": 10.0})
        ledger.feed({"event": "job_end", "job": f"h:{n}", "t": 10.0, "status": "ok"})
    assert progress.observed_slots(ledger, 15.0) == 2
    assert progress.concurrency(plan, ledger, 15.0) == 2
    assert estimate_left(plan, ledger, 10, 15.0) == pytest.approx(35.0)
    assert estimate_left(plan, Ledger(ledger.done, ledger.started), 10, 15.0) == pytest.approx(10.0)
    plan["concurrency"] = 1  # the ceiling still bounds what was observed
    assert progress.concurrency(plan, ledger, 15.0) == 1


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


def _hand_made_grid(root: Path) -> dict:
    """A plan of 5 one-cell jobs a..e (prior 10 s) and a ledger written through the real
    functions: a done, b's job killed (SIGTERM line), c running, d and e queued."""
    cells = {f"{n}/p/m/x/seed0": ["t", 10.0, f"{n}/p/m/x/seed0"] for n in "abcde"}
    (root / progress.PLAN).write_text(json.dumps({"concurrency": 100, "cells": cells}))
    lines = [
        {"event": "start", "job": "h:1", "labels": ["a/p/m/x/seed0"], "t": 0.0},
        {"event": "start", "job": "h:2", "labels": ["b/p/m/x/seed0"], "t": 0.0},
        {"event": "end", "label": "a/p/m/x/seed0", "job": "h:1", "t": 20.0, "wall": 19.0,
         "outcome": "test_mse 0.5"},
        {"event": "job_end", "job": "h:1", "t": 20.5, "status": "ok"},
        {"event": "job_end", "job": "h:2", "t": 21.0, "status": "killed"},
        {"event": "start", "job": "h:3", "labels": ["c/p/m/x/seed0"], "t": 21.0},
    ]
    (root / progress.LEDGER).write_text("".join(json.dumps(d) + "\n" for d in lines))
    return cells


def test_cell_states_and_fipa_status_on_a_hand_made_ledger(tmp_path, capsys):
    from fipa.cli import main
    from fipa.grid_status import status

    cells = _hand_made_grid(tmp_path)
    st = status(tmp_path, now=31.0)
    assert {k: sorted(v) for k, v in st.cells.items()} == {
        "done": ["a/p/m/x/seed0"], "failed": ["b/p/m/x/seed0"], "running": ["c/p/m/x/seed0"],
        "queued": ["d/p/m/x/seed0", "e/p/m/x/seed0"]}
    # a took 20 s for a prior of 10 (ratio 2): c has 20 - 10 = 10 s left, d and e 20 s each; the
    # ledger showed 2 jobs at once, so d after c (10 + 20) and e alongside (20): 30 s; b is
    # failed and waits for a rerun, not for this one
    assert st.slots == 2 and st.left == pytest.approx(30.0)
    assert st.slowest == [("c/p/m/x/seed0", 10.0, 20.0)] and not st.finished
    assert main(["status", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "1/5 cells done, 1 running, 2 queued, 1 failed" in out
    assert "failed b/p/m/x/seed0" in out and "running c/p/m/x/seed0" in out
    # a rerun in the same session that finishes b turns it to done; the session's end turns
    # the still-open c failed and the queued cells too: nothing waits any more
    progress._append(tmp_path, {"event": "start", "job": "h:4", "labels": ["b/p/m/x/seed0"], "t": 40.0})
    progress.record(tmp_path, "b/p/m/x/seed0", 5.0, job="h:4")
    progress.record_session_end(tmp_path, "error")
    st = status(tmp_path, now=60.0)
    assert sorted(st.cells["done"]) == ["a/p/m/x/seed0", "b/p/m/x/seed0"]
    assert sorted(st.cells["failed"]) == sorted(set(cells) - {"a/p/m/x/seed0", "b/p/m/x/seed0"})
    assert st.finished and st.left == 0.0


def test_watch_refreshes_until_the_grid_is_finished(tmp_path):
    from fipa.grid_status import watch

    _hand_made_grid(tmp_path)
    printed, naps = [], []

    def nap(s):  # the grid moves on while the watch sleeps: here, it ends
        naps.append(s)
        if len(naps) == 2:
            progress.record_session_end(tmp_path, "success")

    st = watch(tmp_path.parent / tmp_path.name, 5.0, echo=printed.append, sleep=nap, limit=10)
    assert naps == [5.0, 5.0] and len(printed) == 3 and st.finished
    assert "the run ended (success)" in printed[-1]


def test_sigterm_writes_the_job_end_line_and_still_ends_the_process(tmp_path):
    import signal
    import subprocess
    import sys

    code = ("import os, signal, sys; from fipa import progress\n"
            "with progress.grid_job(sys.argv[1], ['a']):\n"
            "    os.kill(os.getpid(), signal.SIGTERM)\n"
            "    import time; time.sleep(30)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], timeout=60)
    assert proc.returncode == -signal.SIGTERM  # the default action, as without the handler
    ledger = progress.read_ledger(tmp_path)
    job = next(iter(ledger.jobs.values()))
    assert job.status == "killed" and progress.cell_states(["a"], ledger) == {"a": "failed"}


def test_follower_prints_each_cell_end_once_with_the_local_line(tmp_path):
    from fipa.grid_status import Follower

    cells = {f"{n}/p/m/x/seed0": ["t", 10.0, f"{n}/p/m/x/seed0"] for n in "abc"}
    (tmp_path / progress.PLAN).write_text(json.dumps({"concurrency": 2, "cells": cells}))
    progress.record(tmp_path, "c/p/m/x/seed0", 0.0, job=progress.EARLIER)  # finished before: no line
    follower = Follower(tmp_path)
    assert follower.poll() == []
    progress._append(tmp_path, {"event": "start", "job": "h:1", "labels": ["a/p/m/x/seed0"], "t": 0.0})
    progress.record(tmp_path, "a/p/m/x/seed0", 3.25, job="h:1", outcome="test_mse 0.01")
    with open(tmp_path / progress.LEDGER, "a") as fh:
        fh.write('{"event": "end", "label": "b/p/m')  # still being written: waits
    lines = follower.poll()
    assert len(lines) == 1 and lines[0].startswith(
        "[done 2/3] a/p/m/x/seed0: test_mse 0.01 (3.2 s); 1 jobs left, about ")
    with open(tmp_path / progress.LEDGER, "a") as fh:
        fh.write('/x/seed0", "job": "h:1", "t": 5.0, "wall": 4.0}\n')
    assert [line[:40] for line in follower.poll()] == ["[done 3/3] b/p/m/x/seed0: done (4.0 s); "]
    assert follower.poll() == []


def test_bundles_pack_short_cells_in_grid_order_and_leave_long_ones_alone(monkeypatch):
    """Priors by aggregator: a 0.4 s, b 0.5 s, c 2 s; limit 1 s. In grid order (a0 a1 b0 b1 c0
    c1) a0 + a1 = 0.8 fit, b0 would make 1.3: a second bundle, b0 + b1 = 1.0; c is long."""
    config = yaml.safe_load((ROOT / "tests" / "cluster" / "cells_config.yaml").read_text())
    config["tasks"] = {"regression_1d": {**config["tasks"]["regression_1d"], "client_methods": ["local"],
                                         "reference": None}}
    config["aggregators"] = {"a": {"name": "fedavg"}, "b": {"name": "fedavg"}, "c": {"name": "fedavg"}}
    cost = {"a": 0.4, "b": 0.5, "c": 2.0}
    names = itertools.cycle("aabbcc")  # the entries parse to one config: priors by call, in grid order
    monkeypatch.setattr(progress, "prior_seconds", lambda cfg: ("regression", cost[next(names)]))
    got = grid.bundles(config, lambda task: False, 1.0)
    run = "regression_1d/domain4/local/{}/seed{}"
    assert got == {run.format("a", 0): "regression_1d/b0", run.format("a", 1): "regression_1d/b0",
                   run.format("b", 0): "regression_1d/b1", run.format("b", 1): "regression_1d/b1"}
    assert grid.bundles(config, lambda task: False, 0) == {}
    assert grid.bundles(config, lambda task: True, 1.0) == {}  # batched tasks have their batch jobs


def test_a_bundle_trains_each_cell_as_fipa_train_does_bit_for_bit(tmp_path):
    """`fipa train-batch --one-by-one` (the workflow's bundles) against `fipa train` per cell:
    identical metrics.csv but for the wall time, and final metrics equal exactly."""
    import csv

    from fipa.cli import main
    from tests.helpers import tiny

    specs = [tiny(seed=0), tiny(seed=1, aggregator={"name": "fipa", "rho": 1e-4, "rank": 4})]
    cells = [{"spec": spec, "output": str(tmp_path / f"bundle{i}"), "label": f"c{i}"}
             for i, spec in enumerate(specs)]
    assert main(["train-batch", "--one-by-one", "--cells", json.dumps(cells), "-q", "--threads", "1"]) == 0
    for i, spec in enumerate(specs):
        assert main(["train", "--spec", json.dumps(spec), "-o", str(tmp_path / f"alone{i}"), "-q",
                     "--threads", "1"]) == 0

        def rows(d):
            with open(d / "metrics.csv") as fh:
                return [{k: v for k, v in r.items() if k != "wall_s"} for r in csv.DictReader(fh)]

        bundled, alone = rows(tmp_path / f"bundle{i}"), rows(tmp_path / f"alone{i}")
        assert len(bundled) >= spec["rounds"] and bundled == alone
        final = [json.loads((tmp_path / f"{k}{i}" / "final.json").read_text())["final"]
                 for k in ("bundle", "alone")]
        assert final[0] == final[1]
