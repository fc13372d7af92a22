"""The merge of the market input partitions (references, ticks) into one event-time order, as runs of records.

    merge = Merge(["references", "ticks"])          # ties at one time: the earlier partition in this list first
    merge.push("ticks", rows)                       # admitted rows of one partition (core.columns.MarketRows)
    run = merge.next_run(caught, stop_at)           # rows of one partition that may go now, or None

A record may go once no other partition can still deliver an earlier one: a partition with buffered records
bounds the others by its next record's time; one with nothing buffered bounds them by the last time it delivered,
unless it is caught up (`caught`: the feed knows it has read to its end, and nothing more arrived for a grace
time). Rows carry their merge time in `merge_ts` (liqwatch.core.ingest.PartitionDoor makes it monotone per
partition: a binary search finds where a run ends). A run stops after the first record that reaches `stop_at` (the next evaluation boundary: the
evaluation then sees exactly the records up to it) or at `max_run` records. The live feed pushes records as they
arrive; the replay pushes a whole window and says every partition is caught up: both get the same order and the
same boundaries.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Hashable, Mapping, Sequence

import numpy as np

from liqwatch.core.columns import MarketRows

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

    def next_run(self, caught: Mapping[Hashable, bool], stop_at: int) -> MarketRows | None:
        """The next rows that no partition's unread rows can precede, or None for now: the runs of one partition
        each (`_next_run`) joined, up to the boundary or `max_run` rows. Partitions whose books tick at the same
        times interleave in runs of a few rows; the monitor then gets one batch, not one per run."""
        parts: list[MarketRows] = []
        n = 0
        while n < self.max_run:
            run = self._next_run(caught, stop_at, self.max_run - n)
            if run is None:
                break
            parts.append(run)
            n += len(run)
            if int(run.merge_ts[-1]) >= stop_at:  # the boundary: the evaluation sees exactly the rows up to it
                break
        if not parts:
            return None
        return parts[0] if len(parts) == 1 else MarketRows.concat(parts)

    def _next_run(self, caught: Mapping[Hashable, bool], stop_at: int, max_run: int) -> MarketRows | None:
        """The next run of one partition's rows that no other partition can precede, or None for now."""
        parts = self.partitions
        heads = [(t, k) for k, p in enumerate(parts) if (t := self._head(p)) is not None]
        if not heads:
            return None
        _, lead = min(heads)
        p = parts[lead]
        limit, inclusive = None, True  # rows of p with time < limit (or == limit if inclusive) may go
        for k, o in enumerate(parts):
            if k == lead:
                continue
            head = self._head(o)
            if head is not None:
                bound, incl = head, lead < k
            elif caught.get(o, False):
                continue
            else:
                bound, incl = self.seen[o], True  # o may still deliver records from seen[o] on
            if limit is None or bound < limit or (bound == limit and not incl):
                limit, inclusive = bound, incl
        batch, start = self.buf[p][0], self.pos[p]
        times = batch.merge_ts[start:]
        end = len(times) if limit is None else int(np.searchsorted(times, limit, "right" if inclusive else "left"))
        # the run ends with the first row reaching the boundary (the evaluation then sees exactly the rows up
        # to it), and after max_run rows
        end = min(end, int(np.searchsorted(times, stop_at, "left")) + 1, max_run)
        if end <= 0:
            return None
        if start + end == len(batch):
            self.buf[p].popleft()
            self.pos[p] = 0
        else:
            self.pos[p] = start + end
        return batch[start:start + end]


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
