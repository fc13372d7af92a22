"""JSONL file → Kafka input topics, and Kafka topic → JSONL (SPEC §1, `liqwatch produce` / `liqwatch dump`).

    report = await produce_file("oct.jsonl", Connection.plain("127.0.0.1:9092"))   # creates missing topics first
    print(report.summary())   # produced 213,102 events: ticks 204,859 · references 3,243 · accounts 5,000 · …
    n = await dump_topic("liqwatch.alerts", kafka, "alerts.jsonl")               # kafka: liqwatch.kafka.Connection

produce: each line's original bytes go unchanged to the topic of its `type` (`topics.INPUT_OF_TYPE`), keyed by
`topics.key_of`, with the event's `ts` as the Kafka timestamp (so Kafka's time index finds events by event time).
One producer, and aiokafka keeps at most one batch in flight per partition, so file order is kept per partition,
hence per key. Lines that are not JSON objects or have no input `type` go, unkeyed, to `unknown_to` (default the
accounts topic), where the workers' dead-letter path reports them; they are counted as `unroutable`, never dropped.

dump: manual partition assignment, no consumer group (it never moves the workers' offsets); one value per line,
per partition in offset order, partitions merged by message timestamp; stops once every partition is past its
end offset as of start and nothing arrived for `until_idle` seconds (or never, with `follow`).

`prefix` puts every topic name under it (as `topics.TopicNames` does): tests and side-by-side runs share a broker.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import sys
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import msgspec
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaConnectionError, KafkaError
from aiokafka.partitioner import DefaultPartitioner
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TransferSpeedColumn

from liqwatch.sinks import topics as T
from liqwatch.events import MAX_TS
from liqwatch.kafka import Connection


LABEL = {"tick": "ticks", "reference": "references", "account": "accounts"}
MAX_BATCH_BYTES = 512 * 1024  # < the broker's message.max.bytes (1 MiB): a batch is one broker message
_TOPIC_ALREADY_EXISTS = 36


class TransportError(RuntimeError):
    """Kafka can't be reached or refused something; the message is one line for the user."""


@dataclass
class ProduceReport:
    events: int = 0
    by_type: Counter[str] = field(default_factory=Counter)
    unroutable: int = 0
    unkeyed: int = 0  # known type, key field missing: sent unkeyed to its topic, the worker dead-letters it
    bytes: int = 0
    seconds: float = 0.0
    min_ts: int | None = None
    topics: dict[str, str] = field(default_factory=dict)  # type (and "unroutable") → topic
    warnings: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        parts = [f"{LABEL[t]} {self.by_type[t]:,}" for t in LABEL] + [f"unroutable {self.unroutable:,}"]
        extra = f" · {self.unkeyed:,} without their key field (sent unkeyed)" if self.unkeyed else ""
        return (f"produced {self.events:,} events: {' · '.join(parts)}{extra} "
                f"({self.seconds:.1f} s, {self.rate / 1000:,.0f}k/s)")


def _reach(bootstrap: str, e: BaseException) -> TransportError:
    why = "no broker answered (is the stack up? `liqwatch stack status`)" if isinstance(e, KafkaConnectionError) \
        else f"{type(e).__name__}: {e}"
    return TransportError(f"cannot reach Kafka at {bootstrap}: {why}")


@contextlib.asynccontextmanager
async def _started(client: Any, bootstrap: str) -> AsyncIterator[Any]:
    """start()/stop() an aiokafka client, turning connection failures into one TransportError line."""
    try:
        await client.start()
    except (KafkaError, OSError) as e:
        with contextlib.suppress(Exception):
            await (client.close() if isinstance(client, AIOKafkaAdminClient) else client.stop())
        raise _reach(bootstrap, e) from None
    try:
        yield client
    except KafkaError as e:  # the broker went away or refused mid-run: still one line, no traceback
        raise TransportError(f"Kafka at {bootstrap} failed: {e!r}") from None
    finally:
        with contextlib.suppress(KafkaError, OSError):
            await (client.close() if isinstance(client, AIOKafkaAdminClient) else client.stop())


async def ensure_topics(kafka: Connection, wanted: Mapping[str, int]) -> list[str]:
    """Create those of `wanted` (name → partitions) that are missing, keeping messages forever like
    `topics.create_topics` does (timestamps are event times: time retention would delete a replayed day)."""
    admin = AIOKafkaAdminClient(**kafka.aiokafka(), client_id="liqwatch-transport")
    async with _started(admin, kafka.bootstrap):
        existing = set(await admin.list_topics())
        replicas = T.replication_factor(len((await admin.describe_cluster())["brokers"]))
        new = [NewTopic(n, num_partitions=p, replication_factor=replicas,
                        topic_configs={"retention.ms": "-1", "retention.bytes": "-1",
                                       "min.insync.replicas": str(T.min_insync(replicas))})
               for n, p in wanted.items() if n not in existing]
        if new:
            resp = await admin.create_topics(new)
            for name, code, *rest in resp.topic_errors:
                if code not in (0, _TOPIC_ALREADY_EXISTS):  # a concurrent creator is fine
                    raise TransportError(f"cannot create topic {name}: error {code} {rest[0] if rest else ''}")
        return [t.name for t in new]


async def _retention_warnings(kafka: Connection, names: list[str], min_ts: int | None) -> list[str]:
    """Warn when a topic's time retention would delete these events (their ts is their Kafka timestamp)."""
    if min_ts is None:
        return []
    age_ms = time.time() * 1000 - min_ts
    admin = AIOKafkaAdminClient(**kafka.aiokafka(), client_id="liqwatch-transport")
    doomed: dict[str, int] = {}
    async with _started(admin, kafka.bootstrap):
        res = [ConfigResource(ConfigResourceType.TOPIC, n, {"retention.ms": None}) for n in names]
        for resp in await admin.describe_configs(res):
            for _code, _msg, _type, name, entries, *_ in resp.resources:
                for entry in entries:
                    if entry[0] == "retention.ms" and entry[1] and 0 <= int(entry[1]) < age_ms:
                        doomed[name] = int(entry[1])
    if not doomed:
        return []
    days = ", ".join(f"{n} ({ms / 86_400_000:g} d)" for n, ms in sorted(doomed.items()))
    return [f"the oldest event is {age_ms / 86_400_000:,.0f} days old and these topics delete messages older than "
            f"their retention.ms by timestamp: {days}; Kafka will delete them at its next retention check (≤ 5 "
            f"min); set retention.ms=-1 on them to keep them"]


def _bar(console: Console, *columns: Any) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), *columns, console=console, transient=True)


def _lines(path: Path | str) -> Iterator[bytes]:
    if str(path) == "-":
        yield from sys.stdin.buffer
        return
    with open(path, "rb") as f:
        yield from f


LOCKSTEP_MS = 30_000  # unpaced produce: event time between flushes of every topic's batch


async def produce_file(
    path: Path | str,
    kafka: Connection,
    *,
    partitions: int = 8,
    tick_partitions: int = 1,
    prefix: str = "",
    unknown_to: str | None = None,
    rate: float | None = None,
    speed: float | None = None,
    progress: bool = True,
    console: Console | None = None,
) -> ProduceReport:
    """Send every line of the JSONL file `path` (or "-" for stdin) to its input topic; see the module doc.

    `rate`: at most this many events per second of wall time. `speed`: replay event time N× faster than real
    time (an event is sent when (ts − first ts) / speed of wall time has passed). Both None: as fast as possible.
    """
    if rate is not None and speed is not None:
        raise ValueError("rate and speed: choose one")
    routes = {t: prefix + name for t, name in T.INPUT_OF_TYPE.items()}
    unknown = unknown_to or routes["account"]
    try:  # the whole layout (under `prefix`), as the workers expect it; --unknown-to may name another topic
        await T.create_topics(kafka, partitions, prefix, tick_partitions)
    except (KafkaError, OSError) as e:
        raise _reach(kafka.bootstrap, e) from None
    await ensure_topics(kafka, {unknown: 1})
    wanted = [*routes.values(), unknown]

    report = ProduceReport(topics={**routes, "unroutable": unknown})
    console = console or Console(stderr=True)
    size = Path(path).stat().st_size if str(path) != "-" else None
    bar = _bar(console, TransferSpeedColumn()) if progress and console.is_terminal else None
    # idempotent with acks=all: a broker restart mid-file is waited out (batches are retried in order, without
    # duplicates, for up to request_timeout) instead of aborting a paced produce half-way
    producer = AIOKafkaProducer(
        **kafka.aiokafka(), client_id="liqwatch-produce", acks="all", enable_idempotence=True,
        linger_ms=10, max_batch_size=MAX_BATCH_BYTES, request_timeout_ms=120_000,
    )
    loop = asyncio.get_running_loop()
    async with _started(producer, kafka.bootstrap):
        # We fill one BatchBuilder per partition and hand over whole batches: per-message send() futures cost
        # more than everything else (~95k/s vs ~250k/s). Partitions are chosen like the Java client (murmur2
        # of the key, what Faust and aiokafka use), cached per key: keys repeat a lot.
        parts = {name: sorted(await producer.partitions_for(name)) for name in wanted}
        hasher = DefaultPartitioner()
        part_of: dict[tuple[str, bytes], int] = {}
        builders: dict[tuple[str, int], Any] = {}
        sent: deque[asyncio.Future[Any]] = deque()

        async def flush(tp: tuple[str, int]) -> None:
            batch = builders.pop(tp)
            batch.close()  # a closed batch leaves without lingering
            # send_batch waits while this partition already has a queued batch: backpressure, bounded memory.
            fut = await producer.send_batch(batch, tp[0], partition=tp[1])
            # After the first failure the rest fail too; retrieve them so asyncio doesn't log each one.
            fut.add_done_callback(lambda f: f.cancelled() or f.exception())
            sent.append(fut)
            while sent and sent[0].done():
                _check(sent.popleft(), kafka.bootstrap)

        async def barrier() -> None:
            """Every topic's open batch leaves, and all are on the broker before anything later is sent: a consumer
            merging the topics by time never sees one topic run ahead while another's records of the same time are
            still on their way (unpaced produce, where a topic would otherwise lead by whole batches)."""
            for tp in list(builders):
                await flush(tp)
            if sent:
                await asyncio.wait(sent)
                while sent:
                    _check(sent.popleft(), kafka.bootstrap)

        t0 = loop.time()
        aligned_ts = -LOCKSTEP_MS
        first_ts: int | None = None
        last_ts = 0
        task = bar.add_task("producing", total=size) if bar else None
        if bar:
            bar.start()
        try:
            for raw in _lines(path):
                report.bytes += len(raw)
                value = raw.rstrip(b"\r\n")
                if not value.strip():
                    continue  # blank lines are not events (the batch reader skips them too)
                try:
                    event = msgspec.json.decode(value)
                except Exception:  # noqa: BLE001 - not JSON, bad UTF-8, nested too deep: the worker judges it
                    event = None
                etype = event.get("type") if isinstance(event, dict) else None
                ts = event.get("ts") if isinstance(event, dict) else None
                if type(ts) is not int or not 0 <= ts <= MAX_TS:
                    ts = None  # the broker then stamps it with the time of sending
                key: bytes | None = None
                if etype in routes:
                    topic = routes[etype]
                    report.by_type[etype] += 1
                    try:
                        key = T.key_of(event)
                    except Exception:  # noqa: BLE001 - a key field missing or not a string
                        report.unkeyed += 1
                else:
                    topic = unknown
                    report.unroutable += 1
                report.events += 1
                if ts is not None:
                    first_ts = ts if first_ts is None else first_ts
                    last_ts = ts
                    report.min_ts = ts if report.min_ts is None else min(report.min_ts, ts)

                if not (rate or speed) and ts is not None and ts - aligned_ts >= LOCKSTEP_MS:
                    # unpaced: every topic's open batch leaves together every LOCKSTEP_MS of event time, so that
                    # a consumer merging the topics by time never sees one topic minutes ahead of another
                    aligned_ts = ts
                    await barrier()
                if rate or speed:
                    due = (report.events - 1) / rate if rate else (last_ts - (first_ts or 0)) / 1000 / speed
                    ahead = due - (loop.time() - t0)
                    if ahead > 0.002:  # shorter sleeps cost more than they pace
                        for tp in list(builders):  # what is due now leaves now
                            await flush(tp)
                        await asyncio.sleep(ahead)

                if key is None:
                    partition = hasher(None, parts[topic], parts[topic])  # random, as for any keyless record
                elif (partition := part_of.get((topic, key))) is None:
                    partition = part_of[(topic, key)] = hasher(key, parts[topic], parts[topic])
                tp = (topic, partition)
                if (batch := builders.get(tp)) is None:
                    batch = builders[tp] = producer.create_batch()
                # a line without a valid ts is stamped with its predecessor's: the broker would stamp it with the
                # wall clock, a time that in a replayed day lies a year ahead of its neighbours
                stamp = ts if ts is not None else (last_ts if first_ts is not None else None)
                if batch.append(timestamp=stamp, key=key, value=value) is None:  # full: send it, start the next
                    if rate or speed:
                        await flush(tp)
                    else:
                        await barrier()
                    batch = builders[tp] = producer.create_batch()
                    batch.append(timestamp=stamp, key=key, value=value)  # one record always fits an empty batch
                if bar and report.events % 20_000 == 0:
                    bar.update(task, completed=report.bytes)
            for tp in list(builders):
                await flush(tp)
            if sent:
                await asyncio.wait(sent)
            for fut in sent:
                _check(fut, kafka.bootstrap)
        finally:
            if bar:
                bar.stop()
        report.seconds = loop.time() - t0
    report.warnings = await _retention_warnings(kafka, sorted(set(report.topics.values())), report.min_ts)
    return report


def _check(fut: asyncio.Future[Any], bootstrap: str) -> None:
    if (e := fut.exception()) is not None:
        raise TransportError(f"Kafka at {bootstrap} refused a batch: {e!r}")


def _line(msg: Any) -> bytes:
    """One JSONL line for a message value: the JSON as is, else {"_raw_base64", "_partition", "_offset"}."""
    v = msg.value
    if v is not None:
        try:
            v.decode("utf-8")
            msgspec.json.decode(v, type=msgspec.Raw)  # validates the JSON without building it
            if b"\n" in v or b"\r" in v:  # pretty-printed JSON would span lines: re-encode it compactly
                v = msgspec.json.encode(msgspec.json.decode(v))
            return v + b"\n"
        except (UnicodeDecodeError, msgspec.DecodeError):
            pass
    wrapped = {"_raw_base64": base64.b64encode(v or b"").decode(), "_partition": msg.partition,
               "_offset": msg.offset}
    return msgspec.json.encode(wrapped) + b"\n"


async def dump_topic(
    topic: str,
    kafka: Connection,
    out: Path | str | IO[bytes],
    *,
    from_beginning: bool = True,
    until_idle: float = 2.0,
    follow: bool = False,
    max_messages: int | None = None,
    progress: bool = True,
    console: Console | None = None,
) -> int:
    """Write the values of every partition of `topic` to `out`, one per line; returns the number written."""
    consumer = AIOKafkaConsumer(
        **kafka.aiokafka(), client_id="liqwatch-dump", group_id=None, enable_auto_commit=False,
        auto_offset_reset="earliest" if from_beginning else "latest",
        fetch_max_bytes=16 * 1024 * 1024, max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    console = console or Console(stderr=True)
    bootstrap = kafka.bootstrap
    async with _started(consumer, bootstrap):
        try:
            # consumer.topics() throws the partitions away; aiokafka is pinned, so its client's call is safe.
            cluster = await consumer._client.fetch_all_metadata()
        except KafkaError as e:
            raise _reach(bootstrap, e) from None
        if topic not in cluster.topics():
            names = sorted(cluster.topics())
            known = ", ".join(names[:20]) + (f", … ({len(names)} in all)" if len(names) > 20 else "") or "none"
            raise LookupError(f"no topic '{topic}' at {bootstrap} (topics: {known})")
        tps = [TopicPartition(topic, p) for p in sorted(cluster.partitions_for_topic(topic))]
        consumer.assign(tps)
        end = await consumer.end_offsets(tps)
        if from_beginning:
            await consumer.seek_to_beginning(*tps)
        else:
            await consumer.seek_to_end(*tps)
        start = {tp: await consumer.position(tp) for tp in tps}
        behind = {tp for tp in tps if start[tp] < end[tp]}  # partitions with data we know is there
        bufs: dict[TopicPartition, deque[Any]] = {tp: deque() for tp in tps}

        sink, close = (out, False) if hasattr(out, "write") else (open(out, "wb"), True)  # type: ignore[arg-type]
        bar = (_bar(console, MofNCompleteColumn())
               if progress and console.is_terminal and not follow else None)
        task = bar.add_task(f"dumping {topic}", total=sum(end[tp] - start[tp] for tp in tps) or None) if bar \
            else None
        written = 0
        limit = max_messages if max_messages is not None else float("inf")

        def emit(msgs: list[Any]) -> None:
            nonlocal written
            take = msgs[: int(min(len(msgs), limit - written))]
            sink.write(b"".join(_line(m) for m in take))  # type: ignore[union-attr]
            written += len(take)

        def drain() -> None:
            # Merge by timestamp: take from the partition with the oldest head everything up to the next-oldest
            # head. A partition still behind its start-time end offset with nothing buffered blocks the merge.
            while written < limit and not any(not bufs[tp] for tp in behind):
                heads = sorted((buf[0].timestamp, tp.partition, tp) for tp, buf in bufs.items() if buf)
                if not heads:
                    return
                buf = bufs[heads[0][2]]
                upto = heads[1][0] if len(heads) > 1 else float("inf")
                run = []
                while buf and buf[0].timestamp <= upto:
                    run.append(buf.popleft())
                emit(run)

        last_arrival = time.monotonic()
        try:
            if bar:
                bar.start()
            while written < limit:
                got = await consumer.getmany(timeout_ms=int(min(200, until_idle * 1000)), max_records=50_000)
                for tp, msgs in got.items():
                    bufs[tp].extend(msgs)
                if got:
                    last_arrival = time.monotonic()
                for tp in list(behind):
                    if await consumer.position(tp) >= end[tp]:
                        behind.discard(tp)
                drain()
                if follow:
                    sink.flush()  # type: ignore[union-attr]
                if bar:
                    bar.update(task, completed=written)
                if not follow and not behind and time.monotonic() - last_arrival >= until_idle:
                    break
        finally:
            if bar:
                bar.stop()
            if close:
                sink.close()  # type: ignore[union-attr]
            else:
                sink.flush()  # type: ignore[union-attr]
        return written
