"""This worker's shard of the accounts: which partitions it owns, whether its book holds them, and whether it has
applied every account event up to an event time (a cascade or a frozen book may read it only then)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from liqwatch.core.monitor import Monitor
from liqwatch.sinks.topics import TopicNames

log = logging.getLogger(__name__)


class AccountShard:
    def __init__(self, app, table, names: TopicNames, monitor: Monitor, bootstrap: str, app_id: str,
                 worker_id: str, partitions: int, market_caught_up: Callable[[], bool]):
        self.app = app
        self.table = table
        self.names = names
        self.monitor = monitor
        self.bootstrap = bootstrap
        self.app_id = app_id
        self.worker_id = worker_id
        self.partitions = partitions
        self.market_caught_up = market_caught_up
        # partitions whose accounts are in the book: one just assigned is not until the table's recovery ends (a
        # taken-over partition's accounts come from its changelog), and no cascade may read the book before
        self.in_book: set[int] = set()
        self._offsets_asked = 0.0

    def owned_partitions(self) -> list[int]:
        return [tp.partition for tp in self.app.assignor.assigned_actives() if tp.topic == self.names.ACCOUNTS]

    async def rebuild_book(self) -> None:
        """The table's recovery ended (`Table.on_recover`): the book is the table's snapshots."""
        snapshots = [v for _, v in self.table.items()]
        self.monitor.reset_accounts(snapshots)
        self.in_book = set(self.owned_partitions())
        log.info("%s: shard rebuilt from the accounts table: %d accounts", self.worker_id, len(snapshots))

    def caught_up(self, t: int) -> bool:
        """Has this shard applied every account event up to event time t? Either a partition already delivered a
        later event, or its consumer reached the end of it."""
        mon = self.monitor
        if mon.market_t < t and not self.market_caught_up():
            return False  # accounts join the book by market event time: this shard's market must reach t first
        for p in self.owned_partitions():
            if p not in self.in_book:
                return False  # assigned, its table not recovered yet
            if mon.account_ts.get(p, -1) >= t:
                continue
            hw = self.app.consumer.highwater(TopicPartition(self.names.ACCOUNTS, p))
            if hw is None or mon.account_offsets.get(p, -1) + 1 < hw:
                return False
        return True

    def retain(self) -> None:
        """Drop the rows of partitions this worker no longer owns."""
        if self.app.assignor.assigned_actives():
            self.monitor.retain_partitions(set(self.owned_partitions()), self.partitions)

    async def refresh_offsets(self) -> None:
        """Partitions taken over from a dead worker may deliver nothing (it had consumed them to the end): their
        consumed offset is the group's committed offset. Asked of the broker with an admin client, never of
        Faust's consumer (its position() waits on the consumer thread while partitions are being assigned), at
        most once a second."""
        mon = self.monitor
        missing = [p for p in self.owned_partitions() if p not in mon.account_offsets]
        if not missing or time.monotonic() - self._offsets_asked < 1.0:
            return
        self._offsets_asked = time.monotonic()
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, client_id=f"{self.worker_id}-offsets")
        try:
            await asyncio.wait_for(admin.start(), 5)
            committed = await asyncio.wait_for(admin.list_consumer_group_offsets(
                self.app_id, partitions=[TopicPartition(self.names.ACCOUNTS, p) for p in missing]), 5)
        except Exception as e:  # noqa: BLE001 - asked again at the next boundary
            log.debug("committed offsets not read: %s", e)
            return
        finally:
            with contextlib.suppress(Exception):
                await admin.close()
        for tp, meta in committed.items():
            if meta is not None and meta.offset >= 0 and tp.partition not in mon.account_offsets:
                mon.account_offsets[tp.partition] = meta.offset - 1
