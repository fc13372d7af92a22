"""When the monitor evaluates, in event time only: the boundaries every worker and the replay cross alike.

    schedule = Schedule(cfg.schedule)
    run = merge.next_run(caught, stop_at=schedule.next_eval)   # a run ends at the first record reaching it
    ... apply the run ...
    boundary = schedule.cross(market_t)                        # None, or which evaluations are due at market_t

A boundary is the event time of the first record that reaches it, and the next one is counted from there, so the
schedule depends on the records' times alone: a worker that read faster or slower, a replay of the same topics,
cross the same boundaries. Intervals come from the config (`schedule:`), so they are part of its `config_id`.
"""

from __future__ import annotations

from dataclasses import dataclass

from liqwatch.config import ScheduleSpec


@dataclass(frozen=True)
class Boundary:
    t: int              # the event time the evaluation is at
    severity: bool      # liquidation severities are recomputed
    cascade: bool       # stress cascades run (leader), shards keep their accounts as of t


class Schedule:
    def __init__(self, spec: ScheduleSpec):
        self.spec = spec
        self.next_eval = 0
        self.next_severity = 0
        self.next_cascade = 0

    def cross(self, t: int) -> Boundary | None:
        """The boundary reached at market event time t, if any; the schedule moves past it."""
        if t < 0 or t < self.next_eval:
            return None
        s = self.spec
        self.next_eval = t + s.evaluate_every_ms
        severity = t >= self.next_severity
        if severity:
            self.next_severity = t + s.severity_every_ms
        cascade = t >= self.next_cascade
        if cascade:
            self.next_cascade = t + s.cascade_every_ms
        return Boundary(t, severity, cascade)
