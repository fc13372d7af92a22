"""What a worker evaluates at each boundary of the schedule, and once its input goes idle (the exact flush)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from liqwatch.core.monitor import Monitor
from liqwatch.core.schedule import Boundary
from liqwatch.worker.accounts import AccountShard
from liqwatch.worker.cascades import ShardService
from liqwatch.worker.leader import Leadership

log = logging.getLogger(__name__)


class Evaluations:
    def __init__(self, monitor: Monitor, accounts: AccountShard, shard: ShardService, leadership: Leadership,
                 is_leader: Callable[[], bool], market_caught_up: Callable[[], bool], idle_s: float,
                 keep_boundaries: int, worker_id: str):
        self.monitor = monitor
        self.accounts = accounts
        self.shard = shard
        self.leadership = leadership
        self.is_leader = is_leader
        self.market_caught_up = market_caught_up
        self.idle_s = idle_s
        self.keep_boundaries = keep_boundaries
        self.worker_id = worker_id
        self.lock = asyncio.Lock()  # a boundary waits for an idle flush in progress (and back): none is skipped
        self.flushed = True
        self.leader_flushed = False

    async def at(self, b: Boundary) -> None:
        """One boundary: shard health, market alerts, and at cascade boundaries the shards' frozen accounts and
        (leader) the cascades."""
        mon, lead = self.monitor, self.leadership
        async with self.lock:
            self.accounts.retain()
            await mon.evaluate(full=False, with_severity=b.severity)
            if b.cascade:  # every worker: the shards keep their accounts as of this boundary, and the market snapshot
                await self.accounts.refresh_offsets()
                self.shard.freeze(b.t, keep=self.keep_boundaries)
                lead.keep_snapshot(b.t)
            await lead.follow(b.t)
            await lead.market_alerts(b.t)
            if lead.leading and b.cascade:
                # on a snapshot of the boundary, beside the feed (shards answer from their frozen accounts); one run
                # in flight: the next boundary waits for it, so a slow run slows the feed instead of piling up
                if lead.cascade_task is not None:
                    await lead.cascade_task
                lead.start_cascades(mon.snapshot())
            self.flushed = False
            self.leader_flushed = False

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
        self.accounts.retain()
        # a worker elected leader after its last flush still owes the leader's part (marks, alerts, cascades)
        if mon.dirty or not self.flushed or (self.is_leader() and not self.leader_flushed):
            mon.dirty = False
            self.flushed = True
            await mon.release_accounts(None)  # the market is caught up: every held account joins
            async with self.lock:
                n = await mon.evaluate(full=True, with_severity=True)
            await mon.emit_marks(self.is_leader())
            await mon.sink.flush()
            log.info("%s: idle flush at event time %d: %d health events", self.worker_id, mon.t, n)
            await self.accounts.refresh_offsets()
            lead.keep_snapshot(mon.t)
            await lead.follow(mon.t)
            await lead.market_alerts(mon.t)
            if lead.leading:
                self.leader_flushed = True
                # beside the timer, after any boundary's run (the lock orders them): a boundary still waiting for
                # its shards must not hold the idle evaluation of every worker's health
                lead.start_cascades(mon.snapshot())
        elif lead.coordinator.provisional and self.is_leader() and lead.idle():
            lead.start_cascades(mon.snapshot())
