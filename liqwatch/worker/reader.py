"""The market feed's Kafka reader: librdkafka (confluent-kafka) on assigned partitions, polled from the event loop.

Measured in the worker (bench pipeline --profile, ingest phase): aiokafka's fetcher built a Python record object
per tick and spent 43% of the feed's time doing it; librdkafka fetches and decompresses in its own threads and
hands over C message objects, whose values the feed takes in one list. Records are built only for the rare one
that is dead-lettered (`Records`).

    reader = Reader(kafka, client_id, partition_bytes)
    parts = await reader.partitions(topic)
    reader.assign({tp: offset_or_None})              # None: from the beginning
    batch = await reader.fetch(20_000, wait_s=0.1)   # {tp: Records} in offset order, {} after wait_s
    reader.highwater(tp)                             # as of the last fetch (no request)
    ends = await reader.ends(tps)                    # asked of the broker; raises ReaderError when it is away
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from itertools import groupby, repeat
from operator import is_not
from typing import NamedTuple

from aiokafka import TopicPartition
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Message
from confluent_kafka import TopicPartition as CTP

from liqwatch.kafka import Connection

log = logging.getLogger(__name__)
IDLE_POLL_S = 0.002  # between polls of an empty queue: the latency a tick can gain when the feed is idle


class ReaderError(RuntimeError):
    """The broker did not answer (away, restarting) or a partition is gone."""


class Record(NamedTuple):
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


class Records:
    """A partition's messages as a list of records (topic, partition, offset, key, value), each built when asked."""

    __slots__ = ("msgs",)

    def __init__(self, msgs: list):
        self.msgs = msgs

    def __len__(self) -> int:
        return len(self.msgs)

    def __getitem__(self, k):
        if isinstance(k, slice):
            return Records(self.msgs[k])
        m = self.msgs[k]
        return Record(m.topic(), m.partition(), m.offset(), m.key(), m.value())

    def __iter__(self):
        return (self[k] for k in range(len(self.msgs)))

    def values(self) -> list:
        return list(map(Message.value, self.msgs))


class Reader:
    def __init__(self, kafka: Connection, client_id: str, partition_bytes: int):
        self.consumer = Consumer({
            **kafka.confluent(), "client.id": client_id,
            "group.id": f"{client_id}-unused",  # required by librdkafka; partitions are assigned, nothing committed
            "enable.auto.commit": False, "enable.auto.offset.store": False,
            "max.partition.fetch.bytes": partition_bytes, "fetch.max.bytes": partition_bytes + (8 << 20),
            "receive.message.max.bytes": partition_bytes + (16 << 20),
            # prefetch deep, as the raw consumer of `bench pipeline` does: with librdkafka's default (100,000
            # messages) the feed found the queue empty for ~17% of a catch-up (py-spy); at most 256 MB held
            "queued.min.messages": 1_000_000, "queued.max.messages.kbytes": 256 << 10,
            "fetch.wait.max.ms": 100,
            "logger": logging.getLogger("librdkafka")})  # through logging: the storm filter holds repeats
        # the broker's answers (metadata, end offsets) block: a thread of their own, not the account work's pool
        self.asking = ThreadPoolExecutor(max_workers=1, thread_name_prefix="liqwatch-feed-ask")

    async def _ask(self, fn, *args):
        try:
            return await asyncio.get_running_loop().run_in_executor(self.asking, fn, *args)
        except KafkaException as e:
            raise ReaderError(str(e)) from e

    async def partitions(self, topic: str) -> list[int]:
        meta = await self._ask(lambda: self.consumer.list_topics(topic, timeout=5))
        t = meta.topics.get(topic)
        if t is None or t.error is not None:
            return []
        return sorted(t.partitions)

    def assign(self, offsets: dict[TopicPartition, int | None]) -> None:
        self.consumer.assign([CTP(tp.topic, tp.partition, OFFSET_BEGINNING if at is None else at)
                              for tp, at in offsets.items()])

    async def fetch(self, max_records: int, wait_s: float) -> dict[TopicPartition, Records]:
        """What librdkafka has fetched, up to max_records, grouped by partition in offset order; waits (polling,
        the loop free) up to wait_s for the first message."""
        loop = asyncio.get_running_loop()
        until = loop.time() + wait_s
        while True:
            msgs = self.consumer.consume(num_messages=max_records, timeout=0)
            if msgs or loop.time() >= until:
                break
            await asyncio.sleep(IDLE_POLL_S)
        if not msgs:
            return {}
        if any(map(is_not, map(Message.error, msgs), repeat(None))):  # in C: KafkaError's == refuses None
            msgs = self._without_errors(msgs)
        # librdkafka hands a partition's messages over in runs: group the runs, each message's topic and
        # partition read in C (a Python loop building a TopicPartition per message was 10% of the ingest)
        out: dict[TopicPartition, list] = {}
        at = 0
        for (topic, partition), run in groupby(zip(map(Message.topic, msgs), map(Message.partition, msgs))):
            n = len(list(run))
            tp = TopicPartition(topic, partition)
            got = out.get(tp)
            if got is None:
                out[tp] = msgs[at:at + n]
            else:
                got.extend(msgs[at:at + n])
            at += n
        return {tp: Records(ms) for tp, ms in out.items()}

    @staticmethod
    def _without_errors(msgs: list) -> list:
        kept = []
        for m in msgs:
            err = m.error()
            if err is None:
                kept.append(m)
            elif err.fatal() or not err.retriable():
                raise ReaderError(f"{m.topic()}[{m.partition()}]: {err}")
            # else a retriable error: librdkafka retries it itself
        return kept

    def highwater(self, tp: TopicPartition) -> int | None:
        """The partition's end offset as of the last fetch response; None before one."""
        try:
            _, high = self.consumer.get_watermark_offsets(CTP(tp.topic, tp.partition), cached=True)
        except Exception:  # noqa: BLE001 - not known yet
            return None
        return high if high >= 0 else None

    async def ends(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        def ask() -> dict:
            return {tp: self.consumer.get_watermark_offsets(CTP(tp.topic, tp.partition), timeout=5)[1]
                    for tp in tps}

        return await self._ask(ask)

    def close(self) -> None:
        try:
            self.consumer.close()
        finally:
            self.asking.shutdown(wait=False)
