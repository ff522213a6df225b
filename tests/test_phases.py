"""Per-phase accounting (fipa/phases.py): exclusive spans, members, and the lockstep split."""

from __future__ import annotations

import pytest

from fipa import phases


class FakeClock:
    """perf_counter that advances only when told: spans measure exact, chosen durations."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    c = FakeClock()
    monkeypatch.setattr(phases.time, "perf_counter", c)
    return c


def test_nested_spans_are_exclusive_and_members_own_their_work(clock):
    meter = phases.Meter(members=2)
    # shared: 3 s of rows around two eigensolves that are each member's own
    with phases.metering(meter), phases.span("curvature_rows"):
        clock.now += 1.0
        for i, solve in enumerate((0.5, 2.0)):
            with phases.member(i), phases.span("curvature_solve"):
                clock.now += solve
        clock.now += 2.0
    assert meter.shared["curvature_rows"] == pytest.approx(3.0)
    assert meter.shared["curvature_solve"] == 0.0
    assert [o["curvature_solve"] for o in meter.own] == pytest.approx([0.5, 2.0])
    # nothing counted twice: the phases add up to the block's 5.5 s
    assert sum(meter.total().values()) == pytest.approx(5.5)


def test_split_gives_each_member_its_work_share_and_the_shares_sum_to_the_shared_time():
    meter = phases.Meter(members=3)
    meter.record("local_training", 6.0)  # one stacked call for three rows
    meter.own[1]["curvature_solve"] = 0.25
    split = meter.split({"local_training": [1, 2, 3]})
    assert [s["local_training"] for s in split] == pytest.approx([1.0, 2.0, 3.0])
    assert sum(s["local_training"] for s in split) == pytest.approx(meter.shared["local_training"])
    assert [s["curvature_solve"] for s in split] == [0.0, 0.25, 0.0]
    # a shared phase without declared work is split evenly
    meter.record("evaluation", 3.0)
    assert [s["evaluation"] for s in meter.split()] == pytest.approx([1.0, 1.0, 1.0])


def test_spans_without_an_active_meter_record_nothing(clock):
    with phases.span("server_step"):
        clock.now += 1.0
    meter = phases.Meter()
    with phases.metering(meter):
        pass
    assert sum(meter.total().values()) == 0.0
