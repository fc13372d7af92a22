"""The merge of the market partitions into event-time runs, and its wall-clock side (a fake clock)."""

from __future__ import annotations

from dataclasses import dataclass

from liqwatch.core.merge import Arrivals, Merge


@dataclass
class R:
    timestamp: int
    name: str = ""


def drain(m: Merge, caught: dict, stop_at: int = 10**9) -> list[list[str]]:
    runs = []
    while (run := m.next_run(caught, stop_at)) is not None:
        runs.append([r.name for r in run])
    return runs


def merge(refs: list[int], ticks: list[int]) -> Merge:
    m = Merge(["refs", "ticks"])
    m.push("refs", [R(t, f"r{t}") for t in refs])
    m.push("ticks", [R(t, f"t{t}") for t in ticks])
    return m


def test_everything_buffered_and_caught_merges_by_time_references_first_on_ties():
    runs = drain(merge([1, 5, 5], [2, 5, 6]), {"refs": True, "ticks": True})
    assert [x for run in runs for x in run] == ["r1", "t2", "r5", "r5", "t5", "t6"]


def test_a_partition_not_caught_up_holds_back_later_records_of_the_others():
    m = merge([3], [1, 3, 9])
    assert drain(m, {"refs": False, "ticks": False}) == [["t1"], ["r3"], ["t3"]]  # refs may still send < 9
    assert drain(m, {"refs": True, "ticks": False}) == [["t9"]]


def test_a_run_stops_at_the_first_record_reaching_the_boundary():
    m = merge([], [1, 2, 10, 10, 11])
    assert drain(m, {"refs": True, "ticks": True}, stop_at=10)[0] == ["t1", "t2", "t10"]


def test_runs_are_capped():
    m = Merge(["ticks"], max_run=2)
    m.push("ticks", [R(t, str(t)) for t in range(5)])
    assert drain(m, {"ticks": True}) == [["0", "1"], ["2", "3"], ["4"]]


def test_order_does_not_depend_on_how_records_arrived():
    whole = drain(merge([1, 4, 8], [2, 4, 7, 9]), {"refs": True, "ticks": True})
    m = Merge(["refs", "ticks"])
    got = []
    for part, rec in [("ticks", R(2, "t2")), ("refs", R(1, "r1")), ("ticks", R(4, "t4")), ("refs", R(4, "r4")),
                      ("ticks", R(7, "t7")), ("refs", R(8, "r8")), ("ticks", R(9, "t9"))]:
        m.push(part, [rec])
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
