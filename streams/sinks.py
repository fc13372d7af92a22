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

from streams.events import BadEvent
from streams.metrics import Metrics
from streams.topics import TopicNames, key_of

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
    def __init__(self, bootstrap: str, names: TopicNames, metrics: Metrics, client_id: str = "liqwatch"):
        self.names = names
        self.metrics = metrics
        self.bootstrap = bootstrap
        self.client_id = client_id
        self.producer: AIOKafkaProducer | None = None  # created in start(): aiokafka binds the running loop
        self._pending: list = []

    async def start(self) -> None:
        self.producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, client_id=self.client_id, linger_ms=5,
                                         max_batch_size=1 << 20, acks=1)
        await self.producer.start()

    async def stop(self) -> None:
        await self.flush()
        await self.producer.stop()

    async def emit(self, topic: str, event: dict, key: bytes | None = None) -> None:
        """Queue one event (waits only when the producer's buffer is full); `flush` waits for delivery."""
        fut = await self.producer.send(topic, _encode(event), key=key if key is not None else key_of(event),
                                 timestamp_ms=event.get("ts") if isinstance(event.get("ts"), int) else None)
        self._pending.append(fut)
        self.metrics.emitted.labels(topic=topic).inc()

    async def flush(self) -> None:
        pending, self._pending = self._pending, []
        if pending:
            await asyncio.gather(*pending)

    async def dead_letter(self, err: BadEvent, topic: str, partition: int, offset: int, raw: bytes | None,
                          key: bytes | None = None) -> None:
        self.metrics.deadletter.labels(reason=err.kind).inc()
        log.warning("dead letter %s[%d]@%d: %s", topic, partition, offset, err.reason)
        rec = dead_letter_record(err.reason, err.kind, topic, partition, offset, raw)
        await self.emit(self.names.DEADLETTER, rec, key=key or b"")
