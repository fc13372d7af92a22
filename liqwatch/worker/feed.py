"""The market feed: every tick and reference, read by every worker (prices are global), through the partitions'
doors, merged by event time (liqwatch.core.merge, as the replay does) into the monitor, with an evaluation at each
boundary of the schedule (liqwatch.core.schedule). A supervised service: its place in the topics survives a
restart of the feed (a broker restart, an error), and it resumes there instead of from the beginning.

With a market stage (worker/stage.py) the feed reads the stage's admitted rows of each tick partition
(liqwatch.market) instead of the ticks: the same rows with the same merge times, decoded once for the cluster. A
staged partition is caught up once the stage has staged the tick partition to its end and the feed has read
that."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

import msgspec
import numpy as np
from aiokafka import TopicPartition

from liqwatch.config import Config
from liqwatch.core.ingest import PartitionDoor
from liqwatch.core.merge import Arrivals, Merge, next_step
from liqwatch.core.monitor import Monitor
from liqwatch.core.schedule import Boundary, Schedule
from liqwatch.core.staged import unpack
from liqwatch.events import BadEvent
from liqwatch.kafka import Connection
from liqwatch.sinks.topics import MARKET_MAX_BYTES, TopicNames
from liqwatch.worker.reader import Reader, ReaderError
from liqwatch.worker.supervise import Supervisor

log = logging.getLogger(__name__)
ASSIGNMENT_WAIT_S = 60
TICKS_END_EVERY_S = 0.1


class MarketFeed:
    def __init__(self, cfg: Config, names: TopicNames, monitor: Monitor, services: Supervisor, kafka: Connection,
                 worker_id: str, grace_s: float, pause_s: float, resume_grace_s: float, boundary_wait_s: float,
                 assigned: Callable[[], bool], is_leader: Callable[[], bool],
                 on_boundary: Callable[[Boundary], Awaitable[None]], on_release: Callable[[int], Awaitable[None]],
                 staged: bool = False):
        self.cfg = cfg
        self.names = names
        self.staged = staged
        self.grace = (grace_s, pause_s, resume_grace_s)
        self.boundary_wait_s = boundary_wait_s
        self.due_since: float | None = None  # wall time a boundary was reached and not yet crossed
        self.crossed = -1                    # event time of the last boundary crossed
        self.late_n, self.late_said = 0, -1e9
        self.monitor = monitor
        self.services = services
        self.kafka = kafka
        self.worker_id = worker_id
        self.assigned = assigned
        self.is_leader = is_leader
        self.on_boundary = on_boundary
        self.on_release = on_release  # held account snapshots up to an event time may join (worker/evaluations.py)
        self.tps: list[TopicPartition] = []  # references, then each tick partition (or its staged rows)
        self.schedule = Schedule(cfg.schedule)
        self.resume_at: dict[TopicPartition, int] = {}  # next offset to fetch
        self.upto: dict[int, int] = {}  # staged: per tick partition, the last source offset taken
        self.ticks_end: dict = {}       # staged: the tick partitions' end offsets, asked at ticks_end_at
        self.ticks_end_at = -1e9
        self.lag: dict[str, int] = {}
        self.caught_up = False  # read to the end of both topics and handed everything to the monitor

    async def run(self) -> None:
        # a worker started on recorded data must know whether it leads before its first boundary: alerts and
        # cascades of boundaries passed before the first assignment would be lost (and a replay would differ)
        waited = time.monotonic()
        while not self.assigned() and time.monotonic() - waited < ASSIGNMENT_WAIT_S:
            self.services.beat("market feed")
            await asyncio.sleep(0.1)
        log.info("%s: market feed %s (leader: %s, after %.1f s)", self.worker_id,
                 "resumes" if self.resume_at else "starts", self.is_leader(), time.monotonic() - waited)
        reader = Reader(self.kafka, f"{self.worker_id}-market", MARKET_MAX_BYTES if self.staged else 8 << 20)
        try:
            if not self.tps:
                await self._partitions(reader)
            reader.assign({tp: self.resume_at.get(tp) for tp in self.tps})  # None: from the beginning
            while True:
                self.services.beat("market feed")
                await self._step(reader)
                # a step over a backlog (librdkafka's queue never empty) awaits nothing that suspends: let the
                # loop's other work run between batches (the accounts agent, the web pages, Faust's heartbeats)
                await asyncio.sleep(0)
        finally:
            with contextlib.suppress(Exception):
                reader.close()

    async def _partitions(self, reader: Reader) -> None:
        """The input partitions, in the merge's order for ties (the replay's: references, then the tick
        partitions in order), and their merge, doors and arrival clocks."""
        names = self.names
        for _ in range(50):
            parts = await reader.partitions(names.TICKS)
            if parts:
                break
            await asyncio.sleep(0.1)
        else:
            raise RuntimeError(f"topic {names.TICKS} has no partitions (not created?)")
        source = names.MARKET if self.staged else names.TICKS
        self.tps = [TopicPartition(names.REFERENCES, 0)] + [TopicPartition(source, p) for p in sorted(parts)]
        self.merge = Merge(self.tps)
        self.arrivals = Arrivals(self.tps, *self.grace)
        ing = self.cfg.ingest
        self.doors = {tp: PartitionDoor(self.monitor.engine.gate, ing.max_ahead_ms, ing.jump_keys)
                      for tp in self.tps if tp.topic != names.MARKET}
        self.ticks = {tp: TopicPartition(names.TICKS, tp.partition) for tp in self.tps if tp.topic == names.MARKET}
        log.info("%s: market feed reads %s", self.worker_id, ", ".join(f"{tp.topic}[{tp.partition}]"
                                                                       for tp in self.tps))

    async def _push(self, tp: TopicPartition, recs: list) -> None:
        mon = self.monitor
        if tp.topic != self.names.MARKET:
            self._merge(tp, await mon.admit_market(self.doors[tp], recs, recs.values()))  # bad: dead-lettered
            return
        for rec in recs:
            try:
                staged = unpack(rec.value)
            except msgspec.DecodeError as e:  # nothing of liqwatch's wrote it: keep it, say so, go on
                await mon.sink.dead_letter(BadEvent("bad_staged", f"(staged record): {e}"[:200]), tp.topic,
                                           tp.partition, rec.offset, rec.value, rec.key)
                continue
            after = self.upto.get(tp.partition, -1)
            self._merge(tp, await mon.admit_staged(staged, self.names.TICKS, after))
            self.upto[tp.partition] = max(after, staged.last)

    def _merge(self, tp: TopicPartition, rows) -> None:
        """Rows into the merge; those at or before a boundary already evaluated are late (counted, said once a
        minute): a partition delivered them more than boundary_wait_s after another one had passed their time."""
        if len(rows) and int(rows.merge_ts[0]) <= self.crossed:
            late = int(np.searchsorted(rows.merge_ts, self.crossed, "right"))
            self.monitor.metrics.late.labels(topic=tp.topic).inc(late)
            self.late_n += late
            now = time.monotonic()
            if now - self.late_said >= 60.0:
                log.warning("%s: %d market record(s) arrived after the boundary at event time %d had been evaluated "
                            "without them (%s[%d], %d ms of event time before it): the partitions' records reach this "
                            "worker out of step by more than --boundary-wait-s %.2g", self.worker_id, self.late_n,
                            self.crossed, tp.topic, tp.partition, self.crossed - int(rows.merge_ts[0]),
                            self.boundary_wait_s)
                self.late_said, self.late_n = now, 0
        self.merge.push(tp, rows)

    async def _step(self, reader: Reader) -> None:
        tps, mon = self.tps, self.monitor
        batch = await reader.fetch(20_000, wait_s=0.1)
        self.arrivals.arrived([tp for tp, recs in batch.items() if recs])
        for tp, recs in batch.items():
            await self._push(tp, recs)  # a staged record that is refused (StageMismatch) is read again at restart
            self.resume_at[tp] = recs[-1].offset + 1
        try:
            end = await reader.ends(tps) if not batch else None
        except ReaderError:  # the broker is away: not caught up, try again
            end = {tp: None for tp in tps}
        at_end = {}
        lag: dict[str, int] = {}
        for tp in tps:
            hw = reader.highwater(tp) if end is None else end[tp]
            at = self.resume_at.get(tp, 0)
            at_end[tp] = hw is not None and at >= hw
            lag[tp.topic] = lag.get(tp.topic, 0) + max((hw or 0) - at, 0)  # summed over a topic's partitions
        for topic, n in lag.items():
            mon.metrics.lag.labels(topic=topic).set(n)
        self.lag = lag
        staged_at_end = [tp for tp in self.ticks if at_end[tp]]
        if staged_at_end:  # and the stage has staged its tick partition to the end
            now = time.monotonic()
            if now - self.ticks_end_at > TICKS_END_EVERY_S:  # as fresh as a fetch's highwater, without a request
                try:                                         # on every step
                    self.ticks_end = await reader.ends(list(self.ticks.values()))
                    self.ticks_end_at = now
                except ReaderError:
                    self.ticks_end = {}
            for tp in staged_at_end:
                hw = self.ticks_end.get(self.ticks[tp])
                at_end[tp] = hw is not None and self.upto.get(tp.partition, -1) + 1 >= hw
        caught = self.arrivals.caught(at_end)
        now = time.monotonic()
        due = self.due_since
        waited = self.boundary_wait_s <= 0 or (due is not None and now - due >= self.boundary_wait_s)
        await self.release(caught, {tp: c and waited for tp, c in caught.items()})
        if self.due_since is None and 0 <= self.monitor.market_t and self.monitor.market_t >= self.schedule.next_eval:
            self.due_since = now  # a boundary reached and not crossed: partitions may still deliver records before it
        self.caught_up = all(at_end.values()) and self.merge.buffered() == 0 and self.due_since is None

    async def release(self, caught: dict, settled: dict | None = None) -> None:
        """Hand the merge's runs to the monitor and evaluate at each boundary, once no partition can still deliver
        a record before it (liqwatch.core.merge.next_step). `settled`: the partitions that count as caught up for
        that: at the live edge, those caught up boundary_wait_s after the boundary was reached (the brokers of
        different partitions make records visible out of step)."""
        mon = self.monitor
        released = 0
        while (step := next_step(self.merge, self.schedule, mon.market_t, caught, settled)) is not None:
            if isinstance(step, Boundary):
                self.due_since = None
                self.crossed = step.t
                await mon.emit_marks(self.is_leader())
                released = 0
                await self.on_boundary(step)
                continue
            await mon.on_market(step)
            await self.on_release(mon.market_t)
            released += len(step)
        if released:
            await mon.emit_marks(self.is_leader())
