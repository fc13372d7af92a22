"""Where results go: output topics (batched aiokafka producer) and the dead-letter topic.

    out = OutputSink(bootstrap, names)
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
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from liqwatch.events import BadEvent
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
    """One idempotent producer (acks=all) for every output topic. Kafka away (a broker restart) is waited out, not
    an error: the producer retries its batches in order (idempotence keeps them unduplicated and in order per
    partition); a send that still fails is sent again with backoff. One log line when delivery stalls, one when it
    recovers."""

    RETRY_S = (0.5, 10.0)

    def __init__(self, bootstrap: str, names: TopicNames, metrics: Metrics, client_id: str = "liqwatch"):
        self.names = names
        self.metrics = metrics
        self.bootstrap = bootstrap
        self.client_id = client_id
        self.producer: AIOKafkaProducer | None = None  # created in start(): aiokafka binds the running loop
        self._pending: list[tuple[asyncio.Future, str, bytes, bytes | None, int | None]] = []
        self._stalled_since: float | None = None
        self._dead_seen: set[str] = set()
        self._dead_since_report: dict[str, int] = {}
        self._dead_reported = time.monotonic()

    async def start(self) -> None:
        # request_timeout is also how long a batch may wait for a partition leader (aiokafka expires it then)
        self.producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, client_id=self.client_id, linger_ms=5,
                                         max_batch_size=1 << 20, acks="all", enable_idempotence=True,
                                         request_timeout_ms=120_000)
        await self.producer.start()

    async def stop(self) -> None:
        """Deliver what is queued, then close the producer."""
        if self.producer is None:
            return
        try:
            await self.flush()
        finally:
            await self.producer.stop()
            self.producer = None

    async def emit(self, topic: str, event: dict, key: bytes | None = None) -> None:
        """Queue one event (waits only when the producer's buffer is full or Kafka is away); `flush` waits for
        delivery."""
        value = _encode(event)
        key = key if key is not None else key_of(event)
        ts = event.get("ts") if isinstance(event.get("ts"), int) else None
        self._pending.append((await self._send(topic, value, key, ts), topic, value, key, ts))
        self.metrics.emitted.labels(topic=topic).inc()

    async def _send(self, topic: str, value: bytes, key: bytes | None, ts: int | None) -> asyncio.Future:
        delay = self.RETRY_S[0]
        while True:
            try:
                return await self.producer.send(topic, value, key=key, timestamp_ms=ts)
            except KafkaError as e:
                self._stalled(e)
                await asyncio.sleep(delay)
                delay = min(2 * delay, self.RETRY_S[1])

    async def flush(self) -> None:
        """Wait until everything emitted so far is on its topic (sending again what Kafka failed to take)."""
        pending, self._pending = self._pending, []
        delay = self.RETRY_S[0]
        while pending:
            results = await asyncio.gather(*(p[0] for p in pending), return_exceptions=True)
            failed = [p for p, r in zip(pending, results) if isinstance(r, Exception)]
            if not failed:
                break
            self._stalled(next(r for r in results if isinstance(r, Exception)))
            await asyncio.sleep(delay)
            delay = min(2 * delay, self.RETRY_S[1])
            pending = [(await self._send(t, v, k, ts), t, v, k, ts) for _, t, v, k, ts in failed]
        if self._stalled_since is not None:
            log.warning("output producer: delivering again after %.1f s", time.monotonic() - self._stalled_since)
            self._stalled_since = None

    def _stalled(self, e: BaseException) -> None:
        if self._stalled_since is None:
            self._stalled_since = time.monotonic()
            log.warning("output producer: Kafka at %s is not taking records (%s: %s); holding them and retrying",
                        self.bootstrap, type(e).__name__, e)

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
