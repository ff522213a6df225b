"""Where a run's time goes: per-phase accounting on the sequential and the lockstep path.

Phases (``PHASES``): local training, curvature rows (per-sample Jacobian rows or GGN
products), curvature solve (the client's eigensolve or diagonal sum), server step,
evaluation, checkpoint I/O. Times are *exclusive*: a span opened inside another (the
eigensolve inside a curvature call) is subtracted from the outer one, so the phases of a
round add up to the time the round loop spent in them and nothing is counted twice.

Code that does the work only marks it (``with phases.span("curvature_solve"):``); the round
loop decides whose it is by activating a :class:`Meter`. With no active meter (library use,
tests) a span costs one context-variable lookup and records nothing.

Lockstep attribution. Work done once for several members (the stacked training call of a
batch's rows, the stacked Jacobians of a round's curvature) is *shared*; work done for one
member inside such a call (``with phases.member(i):``, e.g. client i's eigensolve) is that
member's own. :meth:`Meter.split` gives member i its own time plus each shared phase's time
times ``work[phase][i] / sum(work[phase])``, ``ATTRIBUTION`` in words (written to final.json).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar

PHASES = ("local_training", "curvature_rows", "curvature_solve", "server_step", "evaluation",
          "checkpoint_io")
# the phases that depend on the aggregator's choice of curvature (zero for FedAvg)
CURVATURE_PHASES = ("curvature_rows", "curvature_solve")

ATTRIBUTION = (
    "exclusive seconds per phase. Per-run phases (server_step, evaluation, checkpoint_io, and a "
    "client's own curvature_solve) are timed for that run alone. A stacked call shared by several "
    "rows (local training of a batch's clients in one vectorized call; their per-sample Jacobians) "
    "is split among its rows by work: local_training by steps x minibatch size, curvature_rows by "
    "curvature samples x outputs; a run's share is the sum over its rows.")

Phases = dict[str, float]


def zero() -> Phases:
    """Every phase at 0 s."""
    return dict.fromkeys(PHASES, 0.0)


def add(into: Phases, other: Mapping[str, float]) -> Phases:
    """``into`` += ``other``, phase by phase (in place; returns ``into``)."""
    for k, v in other.items():
        into[k] += v
    return into


class Meter:
    """Exclusive seconds per phase of ``members`` units of work (rows), plus shared seconds.

    ``own[i]`` holds what member i did alone, ``shared`` what a call did for all members at once.
    """

    def __init__(self, members: int = 1) -> None:
        self.own: list[Phases] = [zero() for _ in range(members)]
        self.shared: Phases = zero()
        self._member: int | None = None
        self._children: list[float] = []  # time of spans closed inside each open span

    def record(self, phase: str, seconds: float) -> None:
        """Add ``seconds`` to ``phase`` of the current member (or to the shared time)."""
        target = self.shared if self._member is None else self.own[self._member]
        target[phase] += seconds

    def split(self, work: Mapping[str, Sequence[float]] | None = None) -> list[Phases]:
        """Each member's phases: own time + its share of the shared time.

        ``work[phase]`` [members]: the work units of each member in that shared phase; a phase
        without an entry (or with no work) is split evenly.
        """
        n = len(self.own)
        out = [dict(o) for o in self.own]
        for phase, seconds in self.shared.items():
            if seconds == 0.0:
                continue
            w = [float(x) for x in (work or {}).get(phase, ())] or [1.0] * n
            s = sum(w)
            for i in range(n):
                out[i][phase] += seconds * (w[i] / s if s > 0 else 1.0 / n)
        return out

    def total(self) -> Phases:
        """Every member's time and the shared time, phase by phase."""
        out = dict(self.shared)
        for o in self.own:
            add(out, o)
        return out


_ACTIVE: ContextVar[Meter | None] = ContextVar("fipa_phase_meter", default=None)


@contextmanager
def metering(meter: Meter) -> Iterator[Meter]:
    """Make ``meter`` the one that spans record into, for the duration of the block."""
    token = _ACTIVE.set(meter)
    try:
        yield meter
    finally:
        _ACTIVE.reset(token)


@contextmanager
def member(i: int) -> Iterator[None]:
    """Spans inside the block are member ``i``'s own work (no-op without an active meter)."""
    meter = _ACTIVE.get()
    if meter is None:
        yield
        return
    before, meter._member = meter._member, i
    try:
        yield
    finally:
        meter._member = before


@contextmanager
def span(phase: str) -> Iterator[None]:
    """Time the block as ``phase`` (exclusive of spans nested in it) on the active meter."""
    meter = _ACTIVE.get()
    if meter is None:
        yield
        return
    meter._children.append(0.0)
    t0 = time.perf_counter()
    try:
        yield
    finally:
        elapsed = time.perf_counter() - t0
        inner = meter._children.pop()
        meter.record(phase, elapsed - inner)
        if meter._children:
            meter._children[-1] += elapsed
