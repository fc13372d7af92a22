"""This worker's shard of the accounts: which partitions it owns, whether its engine holds them, and whether it has
applied every account event up to an event time (a cascade or a frozen copy may read it only then)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import msgspec

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from faust.types import TP

from liqwatch.core.monitor import Monitor
from liqwatch.kafka import Connection
from liqwatch.sinks.topics import TopicNames, read_latest

log = logging.getLogger(__name__)
STALL_S = 10.0  # an owned partition with records to read and no progress this long is stuck


class AccountShard:
    def __init__(self, app, table, names: TopicNames, monitor: Monitor, kafka: Connection, app_id: str,
                 worker_id: str, partitions: int, market_caught_up: Callable[[], bool]):
        self.app = app
        self.table = table
        self.names = names
        self.monitor = monitor
        self.kafka = kafka
        self.app_id = app_id
        self.worker_id = worker_id
        self.partitions = partitions
        self.market_caught_up = market_caught_up
        # partitions whose accounts are loaded: one just assigned is not until the table's recovery ends (a
        # taken-over partition's accounts come from its changelog), and no cascade may read them before
        self.loaded: set[int] = set()
        self._offsets_asked = 0.0
        self._progress: dict[int, tuple[int, float]] = {}  # partition -> (next offset, wall time it was first seen)
        self._ends: AIOKafkaConsumer | None = None

    def owned_partitions(self) -> list[int]:
        return [tp.partition for tp in self.app.assignor.assigned_actives() if tp.topic == self.names.ACCOUNTS]

    async def reload(self) -> None:
        """The table's recovery ended (`Table.on_recover`): the shard's accounts are the table's snapshots, and what
        the partitions' last owners published is not published again (`published`)."""
        snapshots = [v for _, v in self.table.items()]
        self.monitor.reset_accounts(snapshots)
        owned = self.owned_partitions()
        self.loaded = set(owned)
        await self.last_published(owned)
        log.info("%s: shard rebuilt from the accounts table: %d accounts", self.worker_id, len(snapshots))

    async def last_published(self, partitions: list[int]) -> None:
        """The event time of the last health event of each owned partition and the accounts at it: a shard rebuilt
        in a rebalance evaluates from where its feed is, which may be at or before the boundary the partition's
        last owner (or this worker, before the rebalance) published last."""
        try:
            latest = await asyncio.wait_for(read_latest(self.kafka, self.names.HEALTH, partitions,
                                                        f"{self.worker_id}-published"), 30)
        except Exception as e:  # noqa: BLE001 - publish rather than stall: a repeat is the lesser harm
            log.warning("%s: the health topic's last events not read (%s: %s): this shard may publish some of "
                        "them again", self.worker_id, type(e).__name__, e)
            latest = {}
        published, severities = {}, {}
        for p, (t, values) in latest.items():
            events: dict[tuple, bytes] = {}
            for v in values:  # in offset order: the last event of an account at t is the one that counts
                try:
                    h = msgspec.json.decode(v)
                    if h.get("ts") == t:
                        key = (h["account"], h.get("isolated"))
                        events[key] = v
                        if isinstance(h.get("liquidation_severity"), (int, float)):
                            severities[key] = float(h["liquidation_severity"])
                except Exception:  # noqa: BLE001 - not a health event of ours: no key
                    continue
            published[p] = (t, events)
        self.monitor.published = published
        self.monitor.seed_severities(severities)

    def caught_up(self, t: int) -> bool:
        """Has this shard applied every account event up to event time t? Either a partition already delivered a
        later event, or its consumer reached the end of it."""
        mon = self.monitor
        if mon.market_t < t and not self.market_caught_up():
            return False  # accounts join the engine by market event time: this shard's market must reach t first
        for p in self.owned_partitions():
            if p not in self.loaded:
                return False  # assigned, its table not recovered yet
            if mon.account_ts.get(p, -1) >= t:
                continue
            hw = self.app.consumer.highwater(TopicPartition(self.names.ACCOUNTS, p))
            if hw is None or mon.account_offsets.get(p, -1) + 1 < hw:
                return False
        return True

    async def retain(self) -> None:
        """Drop the rows of partitions this worker no longer owns."""
        if self.app.assignor.assigned_actives():
            await self.monitor.retain_partitions(set(self.owned_partitions()), self.partitions)

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
        admin = AIOKafkaAdminClient(**self.kafka.aiokafka(), client_id=f"{self.worker_id}-offsets")
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

    async def unstick(self) -> None:
        """Faust's consumer can keep a partition through a rebalance and never fetch it again, when its records
        arrived while the table was being recovered (seen when a second worker joins while data flows: the first
        one's shard stayed empty: the partition had left Faust's set of fetched partitions when its stream buffer
        filled, and never came back). A partition this worker owns, whose accounts are loaded, with records past
        what the shard consumed and no progress for STALL_S, is put back among the fetched partitions and sought
        to where the shard stopped; said once per occurrence. End offsets come from a consumer of our own, never through Faust's."""
        owned = [p for p in self.owned_partitions() if p in self.loaded]
        if not owned:
            return
        tps = [TopicPartition(self.names.ACCOUNTS, p) for p in owned]
        try:
            if self._ends is None:
                self._ends = AIOKafkaConsumer(**self.kafka.aiokafka(), group_id=None,
                                              client_id=f"{self.worker_id}-account-ends")
                await asyncio.wait_for(self._ends.start(), 5)
            ends = await asyncio.wait_for(self._ends.end_offsets(tps), 5)
        except Exception as e:  # noqa: BLE001 - a broker away: nothing is judged until it answers again
            log.debug("account partitions' end offsets not read: %s", e)
            self._progress.clear()
            if self._ends is not None:
                with contextlib.suppress(Exception):
                    await self._ends.stop()
                self._ends = None
            return
        now = time.monotonic()
        for tp in tps:
            at = self.monitor.account_offsets.get(tp.partition, -1) + 1
            if at >= ends.get(tp, 0):
                self._progress.pop(tp.partition, None)
                continue
            seen = self._progress.get(tp.partition)
            if seen is None or seen[0] != at:
                self._progress[tp.partition] = (at, now)
                continue
            if now - seen[1] < STALL_S:
                continue
            log.warning("%s: accounts partition %d has not moved from offset %d for %.0f s with %d records to read: "
                        "resuming it there", self.worker_id, tp.partition, at, now - seen[1], ends[tp] - at)
            ftp = TP(tp.topic, tp.partition)  # Faust's own type: its fetcher asserts it (an aiokafka one crashed it)
            try:
                self.app.consumer.resume_partitions({ftp})
                await asyncio.wait_for(self.app.consumer.seek(ftp, at), 5)
            except Exception as e:  # noqa: BLE001 - tried again after the next STALL_S
                log.warning("%s: accounts partition %d not resumed: %s: %s", self.worker_id, tp.partition,
                            type(e).__name__, e)
            self._progress[tp.partition] = (at, now)

    async def stop(self) -> None:
        if self._ends is not None:
            with contextlib.suppress(Exception):
                await self._ends.stop()
            self._ends = None
