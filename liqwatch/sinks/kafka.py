"""Where results go: output topics (batched librdkafka producer) and the dead-letter topic.

    out = OutputSink(kafka, names)                    # kafka: liqwatch.kafka.Connection
    await out.start()
    await out.emit(names.HEALTH, {"type": "health", "account": "a1", ...})   # keyed per SPEC §1, batched
    await out.dead_letter(BadEvent(...), topic, partition, offset, raw)   # reason, where, original bytes
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time

import msgspec

from liqwatch.events import BadEvent
from liqwatch.kafka import Connection
from liqwatch.sinks.metrics import Metrics
from liqwatch.sinks.topics import TopicNames, key_of

log = logging.getLogger(__name__)
_encode = msgspec.json.Encoder().encode


def dead_letter_record(reason: str, kind: str, topic: str, partition: int, offset: int, raw: bytes | None) -> dict:
    return {
        "type": "deadletter",
        "reason": reason,
        "kind": kind,
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "ts": int(time.time() * 1000),
        "original": base64.b64encode(raw or b"").decode(),
    }


class OutputSink:
    """One idempotent producer (acks=all) for every output topic, librdkafka's (confluent-kafka): a record costs
    the event loop a few microseconds, where aiokafka's Python producer cost tens (a 300,000-account flush took 26 s
    of the loop that also carries the ticks). Keys go to the partitions Java clients and aiokafka pick (murmur2).
    Kafka away (a broker restart) is waited out, not an error: librdkafka retries its batches in order, never
    expiring them (idempotence keeps them unduplicated and in order per partition); a record whose delivery still
    fails is sent again with backoff. One log line when delivery stalls, one when it recovers. Delivery reports
    are served on the event loop (`poll`), so nothing here runs in another thread."""

    RETRY_S = (0.5, 10.0)
    POLL_S = 0.02

    def __init__(self, kafka: Connection, names: TopicNames, metrics: Metrics, client_id: str = "liqwatch"):
        self.names = names
        self.metrics = metrics
        self.kafka = kafka
        self.client_id = client_id
        self.producer = None  # created in start()
        self._seq = 0
        self._outstanding: dict[int, tuple[str, bytes, bytes | None, int | None]] = {}  # in emission order
        self._failed: list[int] = []
        self._emitted: dict[str, object] = {}  # the counter's child per topic
        self._stalled_since: float | None = None
        self._poller: asyncio.Task | None = None
        self._dead_seen: set[str] = set()
        self._dead_since_report: dict[str, int] = {}
        self._dead_reported = time.monotonic()

    async def start(self) -> None:
        from confluent_kafka import Producer

        self.producer = Producer({
            **self.kafka.confluent(), "client.id": self.client_id, "enable.idempotence": True,
            "acks": "all", "linger.ms": 5, "batch.size": 1 << 20, "partitioner": "murmur2_random",
            "message.timeout.ms": 0,  # never expire a record: a broker away is waited out
            "queue.buffering.max.messages": 1_000_000, "queue.buffering.max.kbytes": 1 << 20,
            "error_cb": self._on_error,
            "logger": logging.getLogger("librdkafka")})  # through logging: the storm filter holds repeats
        self._poller = asyncio.get_running_loop().create_task(self._serve())

    async def stop(self) -> None:
        """Deliver what is queued, then close the producer."""
        if self.producer is None:
            return
        try:
            await self.flush()
        finally:
            if self._poller is not None:
                self._poller.cancel()
            self.producer = None

    async def emit(self, topic: str, event: dict, key: bytes | None = None) -> None:
        """Queue one event (waits only when the producer's queue is full); `flush` waits for delivery."""
        value = _encode(event)
        key = key if key is not None else key_of(event)
        ts = event.get("ts") if isinstance(event.get("ts"), int) else None
        self._seq += 1
        self._outstanding[self._seq] = (topic, value, key, ts)
        await self._produce(self._seq)
        counter = self._emitted.get(topic)
        if counter is None:
            counter = self._emitted[topic] = self.metrics.emitted.labels(topic=topic)
        counter.inc()

    async def _produce(self, seq: int) -> None:
        topic, value, key, ts = self._outstanding[seq]
        while True:
            try:
                self.producer.produce(topic, value, key, on_delivery=lambda err, _msg: self._delivered(seq, err),
                                      timestamp=ts or 0)
                return
            except BufferError:  # the queue is full: let librdkafka deliver some first
                self.producer.poll(0)
                await asyncio.sleep(0.005)

    def _delivered(self, seq: int, err) -> None:
        if err is None:
            self._outstanding.pop(seq, None)
            if self._stalled_since is not None:
                log.warning("output producer: delivering again after %.1f s", time.monotonic() - self._stalled_since)
                self._stalled_since = None
            return
        self._stalled(err)
        self._failed.append(seq)

    def _on_error(self, err) -> None:
        from confluent_kafka import KafkaError

        if err.code() == KafkaError._ALL_BROKERS_DOWN or err.fatal():
            self._stalled(err)
        if err.fatal():
            log.error("output producer: fatal error %s", err)

    async def _serve(self) -> None:
        """Delivery reports, and records that failed sent again (with backoff)."""
        delay = self.RETRY_S[0]
        while True:
            self.producer.poll(0)
            if self._failed:
                failed, self._failed = self._failed, []
                await asyncio.sleep(delay)
                delay = min(2 * delay, self.RETRY_S[1])
                for seq in failed:
                    await self._produce(seq)
                continue
            delay = self.RETRY_S[0]
            await asyncio.sleep(self.POLL_S)

    async def flush(self) -> None:
        """Wait until everything emitted so far is on its topic (sending again what Kafka failed to take)."""
        upto = self._seq
        while self._outstanding and next(iter(self._outstanding)) <= upto:
            self.producer.poll(0)
            await asyncio.sleep(0.002)

    def _stalled(self, e) -> None:
        if self._stalled_since is None:
            self._stalled_since = time.monotonic()
            log.warning("output producer: Kafka at %s is not taking records (%s); holding them and retrying",
                        self.kafka.bootstrap, e)

    def _log_dead_letter(self, err: BadEvent, topic: str, partition: int, offset: int) -> None:
        """The first dead letter of each kind with its reason, then one summary line a minute (a poisoned topic
        must not flood the log: the metric and the dead-letter topic have every record)."""
        if err.kind not in self._dead_seen:
            self._dead_seen.add(err.kind)
            log.warning("dead letter %s[%d]@%d: %s (first %s; later ones are summed up once a minute)", topic,
                        partition, offset, err.reason, err.kind)
            return
        self._dead_since_report[err.kind] = self._dead_since_report.get(err.kind, 0) + 1
        now = time.monotonic()
        if now - self._dead_reported >= 60.0:
            counts = ", ".join(f"{k} {n}" for k, n in sorted(self._dead_since_report.items()))
            log.warning("dead letters in the last %.0f s: %s", now - self._dead_reported, counts)
            self._dead_since_report.clear()
            self._dead_reported = now

    async def dead_letter(self, err: BadEvent, topic: str, partition: int, offset: int, raw: bytes | None,
                          key: bytes | None = None) -> None:
        self.metrics.deadletter.labels(reason=err.kind).inc()
        self._log_dead_letter(err, topic, partition, offset)
        rec = dead_letter_record(err.reason, err.kind, topic, partition, offset, raw)
        await self.emit(self.names.DEADLETTER, rec, key=key or b"")
