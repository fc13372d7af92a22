"""The merge of the market partitions into event-time runs, and its wall-clock side (a fake clock)."""

from __future__ import annotations

import numpy as np

from liqwatch.config import ScheduleSpec
from liqwatch.core.columns import ROW, MarketRows
from liqwatch.core.merge import Arrivals, Merge, next_step
from liqwatch.core.schedule import Boundary, Schedule


def rows(prefix: str, times: list[int]) -> MarketRows:
    """Rows with these merge times, named by their records."""
    r = np.zeros(len(times), ROW)
    r["merge_ts"] = times
    return MarketRows(r, [f"{prefix}{t}" for t in times])


def drain(m: Merge, caught: dict, stop_at: int = 10**9) -> list[list[str]]:
    runs = []
    while (run := m.next_run(caught, stop_at)) is not None:
        runs.append(list(run.records))
    return runs


def merge(refs: list[int], ticks: list[int]) -> Merge:
    m = Merge(["refs", "ticks"])
    m.push("refs", rows("r", refs))
    m.push("ticks", rows("t", ticks))
    return m


def test_everything_buffered_and_caught_merges_by_time_references_first_on_ties():
    runs = drain(merge([1, 5, 5], [2, 5, 6]), {"refs": True, "ticks": True})
    assert [x for run in runs for x in run] == ["r1", "t2", "r5", "r5", "t5", "t6"]


def test_a_partition_not_caught_up_holds_back_later_records_of_the_others():
    m = merge([3], [1, 3, 9])
    assert drain(m, {"refs": False, "ticks": False}) == [["t1", "r3", "t3"]]  # refs may still send < 9
    assert drain(m, {"refs": True, "ticks": False}) == [["t9"]]


def test_a_run_stops_after_every_record_at_the_time_of_the_first_reaching_the_boundary():
    m = merge([10], [1, 2, 10, 10, 11])
    assert drain(m, {"refs": True, "ticks": True}, stop_at=9)[0] == ["t1", "t2", "r10", "t10", "t10"]


def test_runs_are_capped():
    m = Merge(["ticks"], max_run=2)
    m.push("ticks", rows("", list(range(5))))
    assert drain(m, {"ticks": True}) == [["0", "1"], ["2", "3"], ["4"]]


def test_order_does_not_depend_on_how_records_arrived():
    whole = drain(merge([1, 4, 8], [2, 4, 7, 9]), {"refs": True, "ticks": True})
    m = Merge(["refs", "ticks"])
    got = []
    for part, t in [("ticks", 2), ("refs", 1), ("ticks", 4), ("refs", 4), ("ticks", 7), ("refs", 8), ("ticks", 9)]:
        m.push(part, rows(part[0], [t]))
        got += drain(m, {"refs": False, "ticks": False})
    got += drain(m, {"refs": True, "ticks": True})
    assert [x for run in got for x in run] == [x for run in whole for x in run]


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_partition_at_its_end_counts_as_caught_up_only_after_the_grace():
    clock = Clock()
    a = Arrivals(["refs", "ticks"], grace_s=0.5, pause_s=1.0, resume_grace_s=3.0, clock=clock)
    a.last = {"refs": 99.9, "ticks": 99.9}  # both delivered just now (no pause)
    a.arrived(["ticks"])
    assert a.caught({"refs": True, "ticks": True}) == {"refs": False, "ticks": False}
    clock.now += 0.6
    assert a.caught({"refs": True, "ticks": True}) == {"refs": True, "ticks": True}
    assert a.caught({"refs": True, "ticks": False}) == {"refs": True, "ticks": False}


def test_after_a_pause_every_partition_holds_for_the_resume_grace():
    clock = Clock()
    a = Arrivals(["refs", "ticks"], grace_s=0.5, pause_s=1.0, resume_grace_s=3.0, clock=clock)
    a.arrived(["ticks"])  # first records ever: a pause since 0.0
    clock.now += 2.9
    assert a.caught({"refs": True, "ticks": True}) == {"refs": False, "ticks": False}
    clock.now += 0.2
    assert a.caught({"refs": True, "ticks": True}) == {"refs": True, "ticks": True}


def steps(m: Merge, caught: dict, every: int = 10, settled: dict | None = None,
          market_t: int = -1) -> tuple[list[str], list[tuple[int, list[str]]], int]:
    """Drive the merge as the feed and the replay do (`next_step`): the rows in order, each boundary with the rows
    applied before it, and the market time reached."""
    schedule = Schedule(ScheduleSpec(evaluate_every_ms=every, severity_every_ms=every, cascade_every_ms=every))
    order: list[str] = []
    crossed: list[tuple[int, list[str]]] = []
    while (step := next_step(m, schedule, market_t, caught, settled)) is not None:
        if isinstance(step, Boundary):
            crossed.append((step.t, list(order)))
            continue
        order += list(step.records)
        market_t = max(market_t, int(step.merge_ts.max()))
    return order, crossed, market_t


def test_how_a_partition_was_pushed_does_not_change_the_order_or_the_boundaries():
    from hypothesis import given, settings, strategies as st

    times = st.lists(st.integers(0, 50), max_size=40).map(sorted)

    @settings(max_examples=200, deadline=None)
    @given(times, times, st.integers(1, 7), st.integers(1, 20))
    def check(refs, ticks, chunk, every):
        whole = merge(refs, ticks)
        pieces = Merge(["refs", "ticks"])
        for name, ts in (("refs", refs), ("ticks", ticks)):
            for i in range(0, len(ts), chunk):
                pieces.push(name, rows(name[0], ts[i:i + chunk]))
        caught = {"refs": True, "ticks": True}
        order, crossed, _ = steps(pieces, caught, every)
        assert (order, crossed) == steps(whole, caught, every)[:2]
        # each boundary's evaluation sees exactly the records up to its time, all of them
        for t, before in crossed:
            assert sorted(before) == sorted(r for r in order if int(r[1:]) <= t)

    check()


def test_a_boundary_waits_until_no_partition_can_still_deliver_a_record_before_it():
    """The references partition is caught up by the merge's rule but not settled (its broker may still be making a
    record visible): the tick at 11 reaches the boundary, 12 waits with it, the reference at 10 arrives in time and
    the boundary's evaluation sees it."""
    m = merge([0], [0, 11, 12])
    schedule = Schedule(ScheduleSpec(evaluate_every_ms=10))
    caught = {"refs": True, "ticks": True}
    waiting = {"refs": False, "ticks": True}
    applied: list[str] = []
    market_t = -1

    def step(settled):
        nonlocal market_t
        got = next_step(m, schedule, market_t, caught, settled)
        if isinstance(got, MarketRows):
            applied.extend(got.records)
            market_t = max(market_t, int(got.merge_ts.max()))
        return got

    assert list(step(caught).records) == ["r0", "t0"] and step(caught) == Boundary(0, True, True)
    assert list(step(waiting).records) == ["t11"]  # reaches the next boundary: due
    assert step(waiting) is None  # 12 must not go, and the boundary is not crossed: refs may still send <= 11
    m.push("refs", rows("r", [10]))
    assert list(step(waiting).records) == ["r10"]  # late for the merge's order, in time for the boundary
    assert step(waiting) is None
    assert step(caught) == Boundary(11, False, False)  # the wait is over
    assert applied == ["r0", "t0", "t11", "r10"] and list(step(caught).records) == ["t12"]


def test_a_run_that_starts_at_the_boundary_is_the_rows_of_that_time():
    m = merge([], [5, 10, 10, 12])
    runs = drain(m, {"refs": True, "ticks": True}, stop_at=10)
    assert runs[:2] == [["t5", "t10", "t10"], ["t12"]]


def test_interleaved_partitions_come_as_one_run_in_time_then_partition_order():
    """Tick partitions whose books tick at the same times: one joined run (not a run of a few rows per partition),
    ordered by time, then partition, then offset; a boundary still ends it."""
    from hypothesis import given, settings, strategies as st

    times = st.lists(st.integers(0, 30), max_size=30).map(sorted)

    @settings(max_examples=200, deadline=None)
    @given(st.lists(times, min_size=1, max_size=4), st.integers(0, 40))
    def check(parts, stop_at):
        names = [f"p{k}" for k in range(len(parts))]
        m = Merge(names)
        for name, ts in zip(names, parts):
            m.push(name, MarketRows(rows("", ts).rows, [(t, name, i) for i, t in enumerate(ts)]))
        runs = drain(m, dict.fromkeys(names, True), stop_at)
        order = [x for run in runs for x in run]
        assert order == sorted(order, key=lambda x: (x[0], names.index(x[1]), x[2]))
        assert len(order) == sum(map(len, parts))
        # a run ends only at a row reaching the boundary (or when nothing is left): never at a partition's edge
        assert all(run[-1][0] >= stop_at for run in runs[:-1])
        assert all(x[0] < stop_at or x[0] == run[-1][0] for run in runs for x in run[:-1])

    check()
