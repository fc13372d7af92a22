"""The merge of the market input partitions (references, ticks) into one event-time order, as runs of records, and
the evaluation boundaries of the schedule crossed in it.

    merge = Merge(["references", "ticks"])          # ties at one time: the earlier partition in this list first
    merge.push("ticks", rows)                       # admitted rows of one partition (core.columns.MarketRows)
    step = next_step(merge, schedule, market_t, caught, settled)  # a run to apply, a Boundary, or None for now

A record may go once no other partition can still deliver an earlier one: a partition with buffered records
bounds the others by its next record's time; one with nothing buffered bounds them by the last time it delivered,
unless it is caught up (`caught`: the feed knows it has read to its end, and nothing more arrived for a grace
time). Rows carry their merge time in `merge_ts` (liqwatch.core.ingest.PartitionDoor makes it monotone per
partition: a binary search finds where a run ends). A run stops after the records at the time of the first record
that reaches the next evaluation boundary, or at `max_run` records. The boundary at that time T is crossed only
once no partition can still deliver a record at or before T (`settled`): every evaluation sees exactly the records
up to its time, all of them, whatever order the partitions' records arrived in. The live feed pushes records as they
arrive; the replay pushes a whole window and says every partition is caught up: both get the same order and the
same boundaries.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Hashable, Mapping, Sequence

import numpy as np

from liqwatch.core.columns import ROW, MarketRows, PickedRecords
from liqwatch.core.schedule import Boundary, Schedule

MAX_RUN = 20_000  # records per run: the feed yields to the loop (heartbeats, the accounts agent) between runs


class Merge:
    def __init__(self, partitions: Sequence[Hashable], max_run: int = MAX_RUN):
        self.partitions = list(partitions)
        self.max_run = max_run
        # per partition: the batches pushed and not yet handed out (a run never spans two: pushing copies nothing)
        self.buf: dict[Hashable, deque[MarketRows]] = {p: deque() for p in self.partitions}
        self.pos: dict[Hashable, int] = {p: 0 for p in self.partitions}  # next row of the first batch
        self.seen: dict[Hashable, int] = {p: -1 for p in self.partitions}  # last merge time pushed

    def push(self, partition: Hashable, batch: MarketRows) -> None:
        if len(batch):
            self.buf[partition].append(batch)
            self.seen[partition] = int(batch.merge_ts[-1])

    def buffered(self) -> int:
        return sum(sum(len(b) for b in self.buf[p]) - self.pos[p] for p in self.partitions)

    def _head(self, p: Hashable) -> int | None:
        """Merge time of p's next row, or None when p has nothing buffered."""
        buf = self.buf[p]
        return int(buf[0].merge_ts[self.pos[p]]) if buf else None

    def settled(self, t: int, caught: Mapping[Hashable, bool]) -> bool:
        """No partition can still deliver a row at merge time t or before: its next buffered row is later, it
        delivered a later one, or it is caught up."""
        for p in self.partitions:
            if self.buf[p]:
                if self._head(p) <= t:
                    return False
            elif not caught.get(p, False) and self.seen[p] <= t:
                return False
        return True

    def next_run(self, caught: Mapping[Hashable, bool], stop_at: int, limit: int | None = None) -> MarketRows | None:
        """The next rows that no partition's unread rows can precede, in (merge time, partition, offset) order, or
        None for now; none later than `limit` (a boundary waiting to be crossed). Rows come from each partition's first batch; a partition bounds the others by what it can
        still deliver after that batch: its next batch's first row (ties: the earlier partition first), or, with
        nothing more buffered, its last merge time (it may still deliver rows from that time on) unless it is
        caught up. Partitions whose books tick at the same times interleave row by row: this takes them in one
        sort, as one batch for the monitor."""
        parts = self.partitions
        live = [k for k, p in enumerate(parts) if self.buf[p]]
        if not live:
            return None
        # each partition's frontier: (time, ties allowed for every partition, or only for earlier ones)
        frontier: list[tuple[int, int, bool]] = [] if limit is None else [(-1, limit, True)]
        for k, o in enumerate(parts):
            buf = self.buf[o]
            if len(buf) > 1:
                frontier.append((k, int(buf[1].merge_ts[0]), False))
            elif not caught.get(o, False):
                frontier.append((k, self.seen[o], True))
        segs: list[tuple[int, MarketRows, np.ndarray]] = []
        for q in live:
            bound, incl = None, True
            for k, t, any_tie in frontier:
                if k == q:
                    continue
                tie = any_tie or q < k
                if bound is None or t < bound:
                    bound, incl = t, tie
                elif t == bound:
                    incl = incl and tie
            p = parts[q]
            batch, start = self.buf[p][0], self.pos[p]
            times = batch.merge_ts[start:]
            end = len(times) if bound is None else int(np.searchsorted(times, bound, "right" if incl else "left"))
            if end:
                segs.append((q, batch[start:start + end], times[:end]))
        if not segs:
            return None
        if len(segs) == 1:
            q, run, times = segs[0]
            n = min(_through_boundary(times, stop_at), self.max_run)
            self._advance(parts[q], n)
            return run[:n]
        times = np.concatenate([t for _, _, t in segs])
        order = np.argsort(times, kind="stable")  # ties: partitions in order, each in offset order
        n = min(_through_boundary(times[order], stop_at), self.max_run)
        chosen = order[:n]
        lens = np.array([len(t) for _, _, t in segs])
        seg = np.repeat(np.arange(len(segs)), lens)[chosen]
        starts = np.concatenate(([0], np.cumsum(lens)[:-1]))
        allrows = np.empty(int(lens.sum()), ROW)
        for i, (_, run, _) in enumerate(segs):  # slice assignment: np.concatenate of structured arrays is slow
            allrows[starts[i]:starts[i] + len(run)] = run.rows
        rows = allrows[chosen]
        counts = np.bincount(seg, minlength=len(segs))
        records = None
        if all(run.records is not None for _, run, _ in segs):
            records = PickedRecords([run.records for _, run, _ in segs], seg, chosen - starts[seg])
        for i, (q, _, _) in enumerate(segs):
            if counts[i]:
                self._advance(parts[q], int(counts[i]))
        return MarketRows(rows, records)

    def _advance(self, p: Hashable, n: int) -> None:
        """n rows of p's first batch handed out."""
        pos = self.pos[p] + n
        if pos == len(self.buf[p][0]):
            self.buf[p].popleft()
            self.pos[p] = 0
        else:
            self.pos[p] = pos


def _through_boundary(times: np.ndarray, stop_at: int) -> int:
    """How many of these sorted times go in one run: up to the first that reaches `stop_at` and every other row of
    that same time (an evaluation at T sees every record at T), or all of them."""
    reach = int(np.searchsorted(times, stop_at, "left"))
    if reach == len(times):
        return reach
    return int(np.searchsorted(times, times[reach], "right"))


def next_step(merge: Merge, schedule: Schedule, market_t: int, caught: Mapping[Hashable, bool],
              settled: Mapping[Hashable, bool] | None = None) -> MarketRows | Boundary | None:
    """What the feed (or the replay) does next: apply a run of rows, evaluate at a boundary, or wait (None).
    A boundary is due once the market has reached it; it is crossed when no partition can still deliver a record at
    or before its time (`settled`: which partitions count as caught up for that; by default `caught`); until then
    only rows up to its time go."""
    if market_t >= 0 and market_t >= schedule.next_eval:
        if merge.settled(market_t, caught if settled is None else settled):
            return schedule.cross(market_t)
        return merge.next_run(caught, schedule.next_eval, limit=market_t)
    return merge.next_run(caught, schedule.next_eval)


class Arrivals:
    """The live feed's wall-clock side of the merge, with the clock injected (tests drive it by hand).

    A partition that has read to its end may still receive records any moment (a producer writing a batch of each
    topic in turn): it counts as caught up only once nothing arrived for `grace_s`. Records arriving again after
    a pause of `pause_s` (the first ones, or a broker back from a restart) come from producers that resume in no
    particular order, so every partition then holds the merge for `resume_grace_s`."""

    def __init__(self, partitions: Sequence[Hashable], grace_s: float, pause_s: float, resume_grace_s: float,
                 clock: Callable[[], float] = time.monotonic):
        self.grace_s = grace_s
        self.pause_s = pause_s
        self.resume_grace_s = resume_grace_s
        self.clock = clock
        self.last: dict[Hashable, float] = {p: 0.0 for p in partitions}  # wall time of each one's last records

    def arrived(self, partitions: Sequence[Hashable]) -> None:
        """Records of `partitions` arrived now."""
        if not partitions:
            return
        now = self.clock()
        if now - max(self.last.values()) > self.pause_s:
            for p in self.last:
                self.last[p] = now + self.resume_grace_s - self.grace_s
        for p in partitions:
            self.last[p] = max(self.last[p], now)

    def caught(self, at_end: Mapping[Hashable, bool]) -> dict[Hashable, bool]:
        """Which partitions the merge may treat as caught up: at their end, and quiet for the grace time."""
        quiet_since = self.clock() - self.grace_s
        return {p: bool(at_end.get(p)) and self.last[p] <= quiet_since for p in self.last}
