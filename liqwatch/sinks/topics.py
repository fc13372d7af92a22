"""Kafka topics of liqwatch (SPEC §1): names, keys, partition counts, and their creation.

    await create_topics(Connection.plain("127.0.0.1:9092"), partitions=8)     # idempotent; RF 3 on 3+ brokers
    key_of({"type": "tick", "venue": "binance", "symbol": "BTC/USDT", ...})   # b"binance:BTC/USDT"

Inputs:
- liqwatch.ticks       key venue:symbol   1 partition, or T (`tick_partitions`: a book's ticks stay ordered in
                                          one); every worker applies every tick (prices are global), all
                                          partitions merged in one event-time order, the order a batch run uses
- liqwatch.references  key asset          1 partition
- liqwatch.accounts    key account        N partitions: accounts are sharded across workers by key, so one
                                          account's snapshots stay ordered
Outputs: liqwatch.marks, liqwatch.health, liqwatch.cascades, liqwatch.alerts, liqwatch.deadletter.
Internal: liqwatch.cascade-rounds (coordinator → shards), liqwatch.cascade-flows (shards → coordinator),
liqwatch.market (the market stage's admitted ticks, partition for partition of liqwatch.ticks: liqwatch.core.staged).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from liqwatch.kafka import Connection

log = logging.getLogger(__name__)

TICKS = "liqwatch.ticks"
REFERENCES = "liqwatch.references"
ACCOUNTS = "liqwatch.accounts"
MARKS = "liqwatch.marks"
HEALTH = "liqwatch.health"
CASCADES = "liqwatch.cascades"
ALERTS = "liqwatch.alerts"
DEADLETTER = "liqwatch.deadletter"
CASCADE_ROUNDS = "liqwatch.cascade-rounds"
CASCADE_FLOWS = "liqwatch.cascade-flows"
LEADER = "liqwatch.leader"  # the leader's stress-episode state after each cascade boundary it published
MARKET = "liqwatch.market"
MARKET_MAX_BYTES = 64 << 20  # a staged record holds a batch of ticks with their source bytes

INPUT_OF_TYPE = {"tick": TICKS, "reference": REFERENCES, "account": ACCOUNTS}


@dataclass(frozen=True)
class TopicNames:
    """The topic names of one deployment; `prefix` lets tests and side-by-side runs share a broker."""

    prefix: str = ""

    def __getattr__(self, item: str) -> str:
        base = globals().get(item)
        if item.isupper() and isinstance(base, str):
            return self.prefix + base
        raise AttributeError(item)

    def input_of_type(self, event_type: str) -> str | None:
        base = INPUT_OF_TYPE.get(event_type)
        return None if base is None else self.prefix + base


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    compacted: bool = False
    max_bytes: int | None = None


def topic_specs(partitions: int = 8, prefix: str = "", tick_partitions: int = 1) -> list[TopicSpec]:
    """Every topic with its partition count; `partitions` applies to the sharded ones, `tick_partitions` to the
    ticks and the market stage's output."""
    specs = [
        TopicSpec(TICKS, tick_partitions),
        TopicSpec(MARKET, tick_partitions, max_bytes=MARKET_MAX_BYTES),
        TopicSpec(REFERENCES, 1),
        TopicSpec(ACCOUNTS, partitions),
        TopicSpec(MARKS, 1),
        TopicSpec(HEALTH, partitions),
        TopicSpec(CASCADES, 1),
        TopicSpec(ALERTS, 1),
        TopicSpec(DEADLETTER, 1),
        TopicSpec(CASCADE_ROUNDS, 1),
        TopicSpec(CASCADE_FLOWS, 1),
        TopicSpec(LEADER, 1, compacted=True),
    ]
    return [TopicSpec(prefix + s.name, s.partitions, s.compacted, s.max_bytes) for s in specs]


def key_of(event: dict) -> bytes | None:
    """The SPEC §1 key of an input or output event."""
    t = event.get("type")
    if t == "tick":
        return f"{event['venue']}:{event['symbol']}".encode()
    if t == "reference":
        return str(event["asset"]).encode()
    if t in ("account", "health"):
        return str(event["account"]).encode()
    if t == "alert":
        return str(event["id"]).encode()
    if t == "cascade":
        return f"{event['scenario']}:{event['severity']}".encode()
    if t == "mark":
        return str(event.get("asset") or event.get("instrument")).encode()
    return None


def replication_factor(brokers: int) -> int:
    """Replicas of every liqwatch topic on a cluster of `brokers`: three where there are three (a broker lost
    keeps two in sync), else every broker."""
    return max(1, min(3, brokers))


def min_insync(replicas: int) -> int:
    """Replicas that must have a write before acks=all returns: two of three, so one can be lost and writes
    go on; one on a cluster smaller than three."""
    return 2 if replicas >= 3 else 1


async def create_topics(kafka: Connection, partitions: int = 8, prefix: str = "",
                        tick_partitions: int = 1, extra: Sequence[TopicSpec] = ()) -> list[str]:
    """Create the missing topics (liqwatch's, and `extra`); returns the names created. Existing topics are left as
    they are (the market stage's topic gets as many partitions as an existing ticks topic has). On a cluster of
    three brokers or more every topic has three replicas and takes a write once two have it
    (`min.insync.replicas` 2, with the producers' acks=all): one broker lost loses nothing and stops nothing.
    Returns once every topic has a leader for each partition, as the cluster answers several times in a row."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(**kafka.aiokafka(), client_id="liqwatch-admin")
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        replicas = replication_factor(len((await admin.describe_cluster())["brokers"]))
        if prefix + TICKS in existing:
            (desc,) = await admin.describe_topics([prefix + TICKS])
            tick_partitions = len(desc["partitions"])
        # Messages carry event time as their timestamp (replays seek by it); time-based retention would delete
        # a recorded crash day on arrival, so our topics keep everything until an operator says otherwise.
        new = [NewTopic(s.name, num_partitions=s.partitions, replication_factor=replicas,
                        topic_configs={"retention.ms": "-1", "retention.bytes": "-1",
                                       "min.insync.replicas": str(min_insync(replicas)),
                                       **({"cleanup.policy": "compact"} if s.compacted else {}),
                                       **({"max.message.bytes": str(s.max_bytes)} if s.max_bytes else {})})
               for s in [*topic_specs(partitions, prefix, tick_partitions), *extra] if s.name not in existing]
        if new:
            await admin.create_topics(new)
            log.info("created topics %s", ", ".join(t.name for t in new))
            await _until_visible(admin, {t.name: t.num_partitions for t in new})
        return [t.name for t in new]
    finally:
        await admin.close()


async def _until_visible(admin, wanted: dict[str, int], timeout_s: float = 30.0) -> None:
    """Wait until the cluster's metadata has every topic with all its partitions led. A broker learns of a new
    topic from the metadata log a moment after the controller: a client asking it meanwhile sees no partitions
    (Faust then stops its table's agent: "changelog topic has 0 partitions", seen on three brokers)."""
    import asyncio
    import time

    deadline = time.monotonic() + timeout_s
    agreed = 0
    while agreed < 3:  # three answers in a row, from whichever brokers the client asked
        desc = await admin.describe_topics(list(wanted))
        ready = all(t["error_code"] == 0 and len(t["partitions"]) == wanted[t["topic"]]
                    and all(p["leader"] >= 0 for p in t["partitions"]) for t in desc)
        agreed = agreed + 1 if ready else 0
        if time.monotonic() > deadline:
            log.warning("topics %s: not every partition has a leader after %.0f s; going on", ", ".join(wanted),
                        timeout_s)
            return
        await asyncio.sleep(0.1)


async def _partitions_of(consumer, topic: str) -> list[int]:
    """The topic's partitions, asking the broker when the consumer's metadata does not know the topic yet."""
    parts = consumer.partitions_for_topic(topic) or set()
    if not parts:
        await consumer._client.force_metadata_update()
        parts = consumer.partitions_for_topic(topic) or set()
    return sorted(parts)


async def read_latest(kafka: Connection, topic: str, partitions: list[int] | None = None,
                      client_id: str = "liqwatch-reader") -> dict[int, tuple[int, list[bytes]]]:
    """Per partition of `topic`: the timestamp (the event time liqwatch stamps) of its last record, and the values
    of every record from the first one stamped with it to the end. How a shard's new owner learns what the last
    owner published (worker/accounts.py) and a new leader what the last one did (worker/leader.py); two requests
    and a short read per partition (all of them when `partitions` is None), whatever its length."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(**kafka.aiokafka(), group_id=None, enable_auto_commit=False, client_id=client_id)
    await consumer.start()
    try:
        if partitions is None:
            partitions = await _partitions_of(consumer, topic)
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        if not tps:
            return {}
        consumer.assign(tps)
        end = await consumer.end_offsets(tps)
        out: dict[int, tuple[int, list[bytes]]] = {}
        for tp in tps:
            if end[tp] <= 0:
                continue
            consumer.seek(tp, end[tp] - 1)
            last = None
            for _ in range(10):  # the last offset may hold no record (a transaction marker): then nothing is known
                got = await consumer.getmany(tp, timeout_ms=1000, max_records=1)
                if (last := next(iter(got.get(tp, [])), None)) is not None:
                    break
            if last is None:
                continue
            t = last.timestamp
            start = (await consumer.offsets_for_times({tp: t}))[tp]
            consumer.seek(tp, start.offset if start is not None else end[tp] - 1)
            values: list[bytes] = []
            while await consumer.position(tp) < end[tp]:
                got = await consumer.getmany(tp, timeout_ms=1000, max_records=50_000)
                values.extend(r.value for r in got.get(tp, []) if r.offset < end[tp] and r.timestamp >= t)
            out[tp.partition] = (t, values)
        return out
    finally:
        await consumer.stop()


async def read_to_end(kafka: Connection, topic: str, client_id: str = "liqwatch-reader") -> list[bytes]:
    """Every value of `topic` up to its end offsets as of now (all partitions, no consumer group): how a new
    leader reads the alerts topic, the alerts' changelog."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(**kafka.aiokafka(), group_id=None, enable_auto_commit=False, client_id=client_id)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in await _partitions_of(consumer, topic)]
        if not tps:
            return []
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        out: list[bytes] = []
        todo = {tp for tp in tps if end[tp] > 0}
        while todo:
            batch = await consumer.getmany(*todo, timeout_ms=1000, max_records=50_000)
            for tp, recs in batch.items():
                out.extend(r.value for r in recs if r.offset < end[tp])
            for tp in list(todo):
                if await consumer.position(tp) >= end[tp]:
                    todo.discard(tp)
        return out
    finally:
        await consumer.stop()
