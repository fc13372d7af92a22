"""What a worker evaluates at each boundary of the schedule, and once its input goes idle (the exact flush).

The market feed must never wait for account work: at a boundary it only takes what belongs to that moment of the
market (the price snapshot, the market alerts) and queues the account work — shard health and severities, the
cascade boundary's frozen accounts, the leader's cascades — to `run`, a service of its own that does the heavy
parts in threads (the kernels release the GIL). Account snapshots later than the work has reached are held and
join through the same queue (`release`), so every boundary's work sees exactly the accounts of its event time,
in the order the feed crossed them. The queue is long enough to absorb a burst
(`queue` boundaries, 32 by default: five minutes of event time at the default schedule), so the feed does not
wait for account work; a worker whose account work cannot keep up for longer than that slows its feed rather than
falling ever further behind, and says so. How far the account work is behind the market is a gauge
(liqwatch_account_work_lag_seconds, in event time).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable

from liqwatch.core.monitor import Monitor
from liqwatch.core.schedule import Boundary
from liqwatch.worker.accounts import AccountShard
from liqwatch.worker.cascades import ShardService
from liqwatch.worker.leader import Leadership

log = logging.getLogger(__name__)
PAUSE_LIMIT_S = 60.0  # a rebalance's pause longer than this is taken as one whose assignment never came


class Evaluations:
    def __init__(self, monitor: Monitor, accounts: AccountShard, shard: ShardService, leadership: Leadership,
                 is_leader: Callable[[], bool], market_caught_up: Callable[[], bool], idle_s: float,
                 keep_boundaries: int, worker_id: str, queue: int = 32):
        self.monitor = monitor
        self.accounts = accounts
        self.shard = shard
        self.leadership = leadership
        self.is_leader = is_leader
        self.market_caught_up = market_caught_up
        self.idle_s = idle_s
        self.keep_boundaries = keep_boundaries
        self.worker_id = worker_id
        self.queue = queue  # boundaries the account work may lag the feed by
        self.lock = asyncio.Lock()  # the shard's accounts: changed or read by one piece of work at a time
        self.work: deque[list] = deque()  # ["release", upto] | ["boundary", Boundary, prices], in feed order
        self.queued = asyncio.Condition()
        self.settled = asyncio.Event()  # nothing queued or in progress
        self.settled.set()
        self.flushed = True
        self.leader_flushed = False
        self.held_s, self.held_since, self.held_said = 0.0, None, -1e9  # the feed's waits for the account work
        self.assigned = asyncio.Event()  # cleared while a rebalance takes the partitions back (`pause`)
        self.assigned.set()
        self.paused_at = 0.0

    # -- on the feed: what belongs to the boundary's moment of the market, then queue the rest ----------------
    async def at(self, b: Boundary) -> None:
        """One boundary: the market's part now, the accounts' part queued."""
        mon, lead = self.monitor, self.leadership
        mon.engine.max_ts = mon.t
        prices = mon.snapshot()  # the boundary's prices, copied: the feed moves on
        if b.cascade:
            lead.keep_snapshot(b.t, prices)
        await lead.follow(b.t)
        await lead.market_alerts(b.t)
        await self._put(["boundary", b, prices])
        self.flushed = False
        self.leader_flushed = False

    async def release(self, upto: int) -> None:
        """Held account snapshots up to event time `upto` join the shard, in order with the boundaries (a release
        behind another one in the queue only moves its time: the feed never queues more than one per boundary)."""
        if not self.monitor.pending_accounts:
            return
        if self.work and self.work[-1][0] == "release":
            self.work[-1][1] = max(self.work[-1][1], upto)
            return
        await self._put(["release", upto])

    async def _put(self, work: list) -> None:
        async with self.queued:
            # a worker whose account work cannot keep up slows its feed, rather than falling ever further behind
            full = lambda: sum(w[0] == "boundary" for w in self.work) >= self.queue  # noqa: E731
            if full():
                waited = time.monotonic()
                await self.queued.wait_for(lambda: not full())
                self._held(time.monotonic() - waited)
            self.settled.clear()
            self.work.append(work)
            self.queued.notify_all()

    def _held(self, seconds: float) -> None:
        """The feed waited for the account work: counted, and said at most once a minute (the time summed)."""
        self.monitor.metrics.feed_held_seconds.inc(seconds)
        now = time.monotonic()
        self.held_s += seconds
        if self.held_since is None:
            self.held_since = now - seconds
        if now - self.held_said >= 60.0:
            log.warning("%s: the market feed waited %.1f s of the last %.0f s for the account work (%d boundaries "
                        "queued: health, severities and cascades run slower than the market's event time)",
                        self.worker_id, self.held_s, now - self.held_since, self.queue)
            self.held_s, self.held_since, self.held_said = 0.0, None, now

    # -- rebalances -------------------------------------------------------------------------------------------
    async def pause(self) -> None:
        """Faust takes the partitions back: the piece of work in hand finishes, what it published is flushed, and no
        more account work runs until the new assignment (`resume`). Some partitions may go to another worker, which
        reads what was published here once it has them (AccountShard.last_published)."""
        async with self.lock:
            self.assigned.clear()
            self.paused_at = time.monotonic()
            # the leader's part of the idle flush is owed again: a leader stepping down drops the flush's cascade run,
            # and once the input is idle no boundary comes to run it (led again with the same partitions, nothing
            # dirty, it would never publish the final cascades)
            self.leader_flushed = False
        await self.monitor.sink.flush()

    def resume(self) -> None:
        self.assigned.set()

    def _paused_s(self) -> float:
        return 0.0 if self.assigned.is_set() else time.monotonic() - self.paused_at

    def _unpause(self) -> None:
        """A rebalance that never ended here (no assignment after PAUSE_LIMIT_S): work rather than stall the feed
        and the idle flush."""
        if not self.assigned.is_set():
            log.warning("%s: no partition assignment %.0f s after a rebalance began: account work resumes",
                        self.worker_id, self._paused_s())
            self.assigned.set()

    # -- the account work, a supervised service ---------------------------------------------------------------
    async def run(self) -> None:
        while True:
            if not self.assigned.is_set():
                try:
                    await asyncio.wait_for(self.assigned.wait(), max(0.0, PAUSE_LIMIT_S - self._paused_s()))
                except asyncio.TimeoutError:
                    self._unpause()
            async with self.queued:
                await self.queued.wait_for(lambda: bool(self.work))
                work = self.work.popleft()  # taken out: a later release coalesces into a queued one only
                self.queued.notify_all()
            lag = self.monitor.metrics.account_work_lag
            if work[0] == "boundary":
                lag.set(max(self.monitor.market_t - work[1].t, 0) / 1000.0)
            try:
                async with self.lock:
                    if work[0] == "release":
                        await self.monitor.release_accounts(work[1])
                    else:
                        await self._boundary(work[1], work[2])
                if work[0] == "boundary":
                    await self._cascades(work[1], work[2])
            except Exception:  # noqa: BLE001 - one boundary's failure is said, the next boundaries still run
                log.exception("%s: account work %s failed", self.worker_id, work[:2])
            finally:
                if not self.work:
                    self.settled.set()
                    lag.set(0.0)

    async def _boundary(self, b: Boundary, prices) -> None:
        """Shard health at the boundary's prices, and at cascade boundaries the shard's frozen accounts."""
        mon = self.monitor
        await self.accounts.retain()
        await mon.evaluate(full=False, with_severity=b.severity, prices=prices, in_thread=True)
        if b.cascade:  # every worker: the shards keep their accounts as of this boundary
            await self.accounts.refresh_offsets()
            await self.shard.freeze(b.t, keep=self.keep_boundaries)

    async def _cascades(self, b: Boundary, prices) -> None:
        """The leader's cascades of a cascade boundary, after the run in flight. Outside the accounts' lock: the
        shards' answers wait for the accounts up to the boundary, which the accounts agent applies under it."""
        lead = self.leadership
        if lead.leading and b.cascade:
            # one run in flight: the next boundary's waits for it (a slow run slows the account work, not the feed)
            if lead.cascade_task is not None:  # waited for, never awaited: a step-down cancels it, not this work
                await asyncio.wait([lead.cascade_task])
            if lead.leading:  # not stepped down meanwhile
                lead.start_cascades(prices)

    async def apply_account(self, apply) -> None:
        """The accounts agent's way in: under the lock (never while a piece of work reads the accounts). A
        snapshot later than the boundaries' work has reached is held by the monitor and joins through the queue
        (`Monitor.accounts_upto`)."""
        async with self.lock:
            await apply()

    # -- the exact flush ----------------------------------------------------------------------------------------
    async def idle(self) -> None:
        """When input stops: exact health with severities, marks and cascades, so the last events are final."""
        mon, lead = self.monitor, self.leadership
        if mon.t < 0:
            # nothing has arrived: nothing to flush. (A leader's flush would otherwise repeat every tick before the
            # first event, each with an admin client on the group: a worker doing that while the group rebalanced
            # never rejoined, and its accounts were never consumed.)
            return
        if time.monotonic() - mon.last_input_wall < self.idle_s or not self.market_caught_up():
            return
        if self._paused_s() > PAUSE_LIMIT_S:  # the account work waits on the queue: it would not see it
            self._unpause()
        if not self.settled.is_set() or not self.assigned.is_set():
            return  # the boundaries' work first; none during a rebalance
        # a worker elected leader after its last flush still owes the leader's part (marks, alerts, cascades)
        if mon.dirty or not self.flushed or (self.is_leader() and not self.leader_flushed):
            mon.dirty = False
            self.flushed = True
            async with self.lock:
                await self.accounts.retain()
                await mon.release_accounts(None)  # the market is caught up: every held account joins
                n = await mon.evaluate(full=True, with_severity=True, in_thread=True)
            await mon.emit_marks(self.is_leader())
            await mon.sink.flush()
            log.info("%s: idle flush at event time %d: %d health events", self.worker_id, mon.t, n)
            await self.accounts.refresh_offsets()
            mon.engine.max_ts = mon.t
            lead.keep_snapshot(mon.t, mon.snapshot())
            await lead.follow(mon.t)
            await lead.market_alerts(mon.t)
            if lead.leading:
                self.leader_flushed = True
                # beside the timer, after any boundary's run (the lock orders them): a boundary still waiting for
                # its shards must not hold the idle evaluation of every worker's health
                lead.start_cascades(mon.snapshot())
        elif lead.coordinator.provisional and self.is_leader() and lead.idle():
            lead.start_cascades(mon.snapshot())
