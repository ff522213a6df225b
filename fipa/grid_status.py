"""A grid's state from its plan and ledger: `fipa status`, `--watch`, and the status lines of a
cluster run's submitting host.

Reads only the runs root's ``.grid-plan.json`` and ``.grid-ledger.jsonl`` (fipa/progress.py), never
the run directories: one small read however large the grid, locally, on a cluster's login node
(a shared file system) and after the run.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fipa import progress
from fipa.progress import DONE, FAILED, QUEUED, RUNNING, Ledger


@dataclass
class GridStatus:
    """What a grid has done, does and has left at time ``now``.

    ``cells`` maps each state (done, running, queued, failed) to its cells; ``slowest`` holds
    the running cells that have run longest, as (label, seconds so far, expected seconds of
    their job or None); ``left`` is the estimate of fipa.progress.estimate_left (None before any
    cell finished); ``slots`` the jobs seen running at once; ``closed`` the submitting
    Snakemake's end (time, success|error), None while it runs.
    """

    now: float
    cells: dict[str, list[str]]
    left: float | None
    slots: int | None
    slowest: list[tuple[str, float, float | None]]
    closed: tuple[float, str] | None

    @property
    def total(self) -> int:
        return sum(len(v) for v in self.cells.values())

    @property
    def finished(self) -> bool:
        """Nothing runs or waits: every cell done or failed, or the session ended."""
        return self.closed is not None or not (self.cells[RUNNING] or self.cells[QUEUED])


def find_root(path: str | Path) -> Path:
    """The runs root under ``path``: ``path/runs`` (a results directory) or ``path`` itself."""
    path = Path(path)
    return path / "runs" if (path / "runs" / progress.PLAN).exists() else path


def summarize(plan: dict[str, Any] | None, ledger: Ledger, now: float, top: int = 3) -> GridStatus:
    """The grid's status: each cell's state (fipa.progress.cell_states) over the plan's cells
    (without a plan, over the cells the ledger names), the time left and the slowest runners."""
    labels = list(plan["cells"]) if plan else list(dict.fromkeys(
        [*ledger.started, *(f.label for f in ledger.done)]))
    states = progress.cell_states(labels, ledger)
    cells: dict[str, list[str]] = {s: [] for s in (DONE, RUNNING, QUEUED, FAILED)}
    for label, state in states.items():
        cells[state].append(label)
    left = progress.estimate_left(plan, ledger, len(labels), now) if labels else 0.0
    running = sorted(cells[RUNNING], key=lambda label: ledger.started[label])[:top]
    slowest = [(label, now - ledger.started[label], _expected(plan, ledger, label)) for label in running]
    closed = (ledger.closed, ledger.session or "") if ledger.closed is not None else None
    return GridStatus(now, cells, left, progress.observed_slots(ledger, now), slowest, closed)


def _expected(plan: dict[str, Any] | None, ledger: Ledger, label: str) -> float | None:
    """Expected seconds of the job that trains ``label``: the priors of its cells scaled by the
    observed pace (the estimate's own correction), None without a plan or a finished job."""
    if not plan or label not in plan["cells"]:
        return None
    cells = plan["cells"]
    measured = [f for f in ledger.done if f.job != progress.EARLIER]
    if not measured:
        return None
    ratio = progress._cost_ratios(cells, measured, ledger.started)
    job = cells[label][2]
    total = 0.0
    for other, (fam, prior, other_job) in cells.items():
        if other_job == job:
            total += prior * next(ratio[k] for k in (progress._entry(other), fam, None) if k in ratio)
    return total


def format_status(st: GridStatus, root: str | Path) -> str:
    """A few lines for a person: counts, time left, the longest-running cells, failures."""
    c = st.cells
    head = (f"{root}: {len(c[DONE])}/{st.total} cells done, {len(c[RUNNING])} running, "
            f"{len(c[QUEUED])} queued, {len(c[FAILED])} failed")
    if st.closed is not None:
        ended = time.strftime("%H:%M:%S", time.localtime(st.closed[0]))
        lines = [head, f"the run ended ({st.closed[1]}) at {ended}"]
    else:
        seen = f"; {st.slots} jobs seen running at once" if st.slots else ""
        lines = [head, f"time left: about {progress.format_duration(st.left)}{seen}"]
    for label, ran, expected in st.slowest:
        of = f" of about {progress.format_duration(expected)}" if expected is not None else ""
        lines.append(f"  running {label}: {progress.format_duration(ran)}{of}")
    lines += [f"  failed {label} (its job ended before it; rerun the same command to resume it)"
              for label in c[FAILED]]
    if not st.total:
        lines.append("  no grid plan or ledger here yet (written when Snakemake starts the grid)")
    return "\n".join(lines)


def status(root: str | Path, now: float | None = None) -> GridStatus:
    """Read the plan and the ledger under ``root`` (a runs root) and summarize them."""
    now = time.time() if now is None else now
    return summarize(progress.read_plan(root), progress.read_ledger(root), now)


def watch(path: str | Path, every: float, echo: Callable[[str], None] = print,
          sleep: Callable[[float], None] = time.sleep, limit: int | None = None) -> GridStatus:
    """Print the status every ``every`` seconds until the grid is finished (or ``limit``
    refreshes, or Ctrl-C, which the command turns into a normal exit)."""
    root = find_root(path)
    n = 0
    while True:
        st = status(root)
        echo(format_status(st, root))
        n += 1
        if st.finished or (limit is not None and n >= limit):
            return st
        sleep(every)


class Follower:
    """Prints the status line of every cell end that reaches the ledger, from a thread.

    For the submitting host of a cluster run, where the jobs' own lines go to SLURM logs. Lines
    are those a local job prints (fipa.progress.format_line): done k/N counts the ledger up to
    that end, the estimate is made when the line is printed. Cells recorded as finished before
    this run (fipa.progress.EARLIER) get no line, as in a local run.
    """

    def __init__(self, root: str | Path, echo: Callable[[str], None] | None = None, every: float = 2.0):
        self.root = Path(root)
        self.echo = echo or (lambda s: print(s, flush=True))
        self.every = every
        self.ledger = Ledger([], {})
        self.offset = 0
        self.plan = progress.read_plan(self.root)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def poll(self) -> list[str]:
        """Read the ledger's new complete lines; the status lines of their cell ends."""
        try:
            with open(self.root / progress.LEDGER, "rb") as fh:
                fh.seek(self.offset)
                data = fh.read()
        except OSError:
            return []
        cut = data.rfind(b"\n") + 1  # a line still being written waits for the next poll
        self.offset += cut
        lines = []
        for raw in data[:cut].decode(errors="replace").splitlines():
            d = progress.parse_line(raw)
            try:
                f = self.ledger.feed(d) if d is not None else None
            except (ValueError, KeyError, TypeError):
                continue
            if f is not None and f.job != progress.EARLIER:
                total = len(self.plan["cells"]) if self.plan else len(self.ledger.started)
                lines.append(progress.format_line(f, self.plan, self.ledger, total, time.time()))
        return lines

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            for line in self.poll():
                self.echo(line)

    def start(self) -> Follower:
        self._thread = threading.Thread(target=self._run, name="fipa-ledger-follower", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread, then print the lines it has not printed yet."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        for line in self.poll():
            self.echo(line)
