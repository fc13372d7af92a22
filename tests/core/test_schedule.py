"""The evaluation schedule: boundaries from the records' event times alone."""

from __future__ import annotations

from liqwatch.config import ScheduleSpec
from liqwatch.core.schedule import Boundary, Schedule

SPEC = ScheduleSpec(evaluate_every_ms=10, severity_every_ms=30, cascade_every_ms=60)


def crossings(times: list[int]) -> list[Boundary]:
    s = Schedule(SPEC)
    return [b for t in times if (b := s.cross(t)) is not None]


def test_the_first_event_is_a_boundary_of_every_kind():
    assert crossings([5]) == [Boundary(5, True, True)]


def test_no_boundary_before_any_event():
    assert crossings([-1]) == []


def test_the_next_boundary_counts_from_the_record_that_reached_it():
    assert [b.t for b in crossings([0, 4, 9, 12, 21, 22, 33])] == [0, 12, 22, 33]


def test_severities_and_cascades_come_on_their_own_intervals():
    got = crossings(list(range(0, 130, 10)))
    assert [b.t for b in got if b.severity] == [0, 30, 60, 90, 120]
    assert [b.t for b in got if b.cascade] == [0, 60, 120]


def test_a_gap_in_the_stream_gives_one_boundary_not_a_backlog():
    assert crossings([0, 1000]) == [Boundary(0, True, True), Boundary(1000, True, True)]


def test_the_schedule_is_in_the_config_id():
    from liqwatch import scenarios
    from liqwatch.config import load_config
    cfg = load_config(scenarios.config_path("oct-2025"))
    assert cfg.with_schedule(cascade_every_ms=300_000).config_id != cfg.config_id
    assert cfg.with_schedule(cascade_every_ms=None).config_id == cfg.config_id
