"""The market stage: decodes and judges the ticks once for the whole cluster, so that the market path scales out.

    liqwatch.ticks (T partitions, by book) ─▶ stage (a consumer group: each stage takes some partitions)
        ─▶ each partition's records through its door (liqwatch.core.columns.admit_rows)
        ─▶ liqwatch.market, same partition: rows + source offsets + source bytes + dead letters
           (liqwatch.core.staged) ─▶ every worker's feed merges them by event time and applies them

A worker started with `--market-stage` runs one as a child process (`liqwatch market-stage` runs one alone): the
stage uses another core than the worker's event loop, and with T tick partitions and W workers each stage decodes
about T/W of the ticks. librdkafka (confluent-kafka) reads and writes here: it hands over records several times
cheaper than aiokafka (`liqwatch bench pipeline`, raw consumers).

Where a stage resumes is read from liqwatch.market itself, not from committed offsets: the last staged record of a
partition says which source offset it covered and the door's clock after it. A stage that dies after publishing
is resumed exactly there; one that dies before publishing loses nothing (the source records are read again). A
partition moved while its old stage still publishes may get a few rows twice, with the same content: the feed
keeps the first copy of each offset.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import subprocess
import threading
import time
from collections import defaultdict

import numpy as np

from liqwatch.config import Config
from liqwatch.core.columns import admit_rows
from liqwatch.core.engine import Engine
from liqwatch.core.ingest import PartitionDoor
from liqwatch.core.staged import Rejected, pack, restore_clock, rules_id, unpack
from liqwatch.kafka import Connection
from liqwatch.sinks.topics import MARKET_MAX_BYTES, TopicNames
from liqwatch.worker.warm import settle_heap

log = logging.getLogger(__name__)
BATCH_RECORDS = 5_000        # source records per staged record, at most
BATCH_BYTES = 8 << 20        # and source bytes
GATHER_S = 0.005             # records arriving within this long go in one batch
BREAK_S = 0.1                # with nothing arriving, a poll waits this long


class StageError(RuntimeError):
    pass


class MarketStage:
    def __init__(self, cfg: Config, names: TopicNames, kafka: Connection, group: str, client_id: str):
        self.cfg = cfg
        self.names = names
        self.kafka = kafka
        self.group = group
        self.client_id = client_id
        engine = Engine(cfg)
        self.gate = engine.gate
        self.slots, self.assets = engine.market.slot, engine.layout.asset_id
        self.rules = rules_id(cfg, self.gate, self.slots, self.assets)
        self.doors: dict[int, PartitionDoor] = {}
        self.staged: dict[int, int] = {}  # partition → records staged (figures for the log)
        self.failed: str | None = None

    # -- where a partition resumes ---------------------------------------------------------------------------
    def _recover(self, partitions: list[int]) -> dict[int, int]:
        """Per source partition, the next offset to stage, with its door set to the clock the last staged record
        left (a fresh door at offset 0 when nothing was staged yet)."""
        from confluent_kafka import Consumer, TopicPartition

        reader = Consumer({**self.kafka.confluent(), "group.id": f"{self.group}-recover",
                           "enable.auto.commit": False, "client.id": f"{self.client_id}-recover",
                           "fetch.max.bytes": MARKET_MAX_BYTES, "message.max.bytes": MARKET_MAX_BYTES,
                           "receive.message.max.bytes": MARKET_MAX_BYTES + (1 << 20)})
        try:
            nxt = {}
            for p in partitions:
                door = PartitionDoor(self.gate, self.cfg.ingest.max_ahead_ms, self.cfg.ingest.jump_keys)
                nxt[p] = 0
                lo, hi = reader.get_watermark_offsets(TopicPartition(self.names.MARKET, p), timeout=10)
                if hi > lo:
                    reader.assign([TopicPartition(self.names.MARKET, p, hi - 1)])
                    msg = None
                    deadline = time.monotonic() + 30
                    while msg is None and time.monotonic() < deadline:
                        msg = reader.poll(1.0)
                        if msg is not None and msg.error():
                            raise StageError(f"reading {self.names.MARKET}[{p}]: {msg.error()}")
                    if msg is None:
                        raise StageError(f"could not read the last record of {self.names.MARKET}[{p}]")
                    last = unpack(msg.value())
                    if last.rules != self.rules:
                        log.warning("market stage: %s[%d] was staged under other market rules (%s; this stage: "
                                    "%s); resuming after it", self.names.MARKET, p, last.rules, self.rules)
                    restore_clock(door.clock, last.clock)
                    nxt[p] = last.last + 1
                self.doors[p] = door
            return nxt
        finally:
            reader.close()

    # -- the loop --------------------------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        from confluent_kafka import Consumer, KafkaException, Producer

        consumer = Consumer({**self.kafka.confluent(), "group.id": self.group,
                             "client.id": self.client_id, "enable.auto.commit": False,
                             "auto.offset.reset": "earliest", "fetch.max.bytes": 64 << 20,
                             "max.partition.fetch.bytes": 16 << 20, "session.timeout.ms": 6000,
                             "heartbeat.interval.ms": 1500})
        producer = Producer({**self.kafka.confluent(), "client.id": f"{self.client_id}-out",
                             "enable.idempotence": True, "acks": "all", "linger.ms": 2,
                             "message.max.bytes": MARKET_MAX_BYTES, "queue.buffering.max.kbytes": 1 << 20})

        def on_assign(c, tps):
            got = self._recover([tp.partition for tp in tps])
            for tp in tps:
                tp.offset = got[tp.partition]
            c.assign(tps)
            log.info("market stage %s: stages %s[%s] from offsets %s", self.client_id, self.names.TICKS,
                     ",".join(str(tp.partition) for tp in tps), ",".join(str(tp.offset) for tp in tps))

        def on_revoke(c, tps):
            producer.flush(30)  # what was staged is out before another stage reads where it ends
            for tp in tps:
                self.doors.pop(tp.partition, None)

        def delivered(err, msg):
            if err is not None and self.failed is None:
                self.failed = f"{self.names.MARKET}[{msg.partition()}]: {err}"

        consumer.subscribe([self.names.TICKS], on_assign=on_assign, on_revoke=on_revoke)
        try:
            while not stop.is_set():
                if self.failed:  # let the supervisor restart us: we resume after what was delivered
                    raise StageError(f"a staged record was not delivered: {self.failed}")
                # what is there within GATHER_S (a batch's wait is latency: a full batch at 50,000 ticks/s would
                # take 100 ms); when nothing is, wait for the next record
                msgs = consumer.consume(BATCH_RECORDS, GATHER_S)
                producer.poll(0)
                if not msgs:
                    msgs = consumer.consume(1, BREAK_S)
                    if not msgs:
                        continue
                    msgs += consumer.consume(BATCH_RECORDS - 1, GATHER_S)
                by_partition: dict[int, list] = defaultdict(list)
                for m in msgs:
                    if m.error():
                        if m.error().fatal():
                            raise KafkaException(m.error())
                        continue  # e.g. end of partition: librdkafka retries what it can
                    by_partition[m.partition()].append(m)
                for p, recs in by_partition.items():
                    if p in self.doors:
                        self._stage(producer, p, recs, delivered)
        finally:
            producer.flush(30)
            consumer.close()

    def _stage(self, producer, p: int, msgs: list, delivered) -> None:
        """Stage one partition's records (offset order), in chunks a staged record can hold."""
        chunk, size = [], 0
        for m in msgs:
            v = m.value() or b""
            if chunk and size + len(v) > BATCH_BYTES:
                self._publish(producer, p, chunk, delivered)
                chunk, size = [], 0
            chunk.append(m)
            size += len(v)
        if chunk:
            self._publish(producer, p, chunk, delivered)

    def _publish(self, producer, p: int, msgs: list, delivered) -> None:
        door = self.doors[p]
        values = [m.value() or b"" for m in msgs]
        batch, rejected, ignored = admit_rows(door, list(range(len(msgs))), self.slots, self.assets, values=values,
                                              topic=self.names.TICKS)
        kept = batch.records
        offsets = np.fromiter((msgs[k].offset() for k in kept), np.int64, len(kept))
        dead = [Rejected(msgs[k].offset(), e.kind, e.reason, values[k], msgs[k].key()) for k, e in rejected]
        batch.records = None
        value = pack(self.rules, p, msgs[0].offset(), msgs[-1].offset(), door.clock, batch, offsets,
                     [values[k] for k in kept], dead, ignored)
        ts = int(batch.merge_ts[-1]) if len(batch) else msgs[-1].timestamp()[1]
        while True:
            try:
                producer.produce(self.names.MARKET, value, partition=p, timestamp=max(int(ts), 0),
                                 on_delivery=delivered)
                break
            except BufferError:  # the producer's queue is full: let it deliver
                producer.poll(0.05)
        self.staged[p] = self.staged.get(p, 0) + len(msgs)


def run_stage(cfg: Config, names: TopicNames, kafka: Connection, group: str, client_id: str) -> None:
    """Run until SIGTERM or SIGINT; a failure is logged and ends the process with status 1 (the worker that
    started it starts it again)."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stage = MarketStage(cfg, names, kafka, group, client_id)
    settle_heap()
    log.info("market stage %s: reading %s for group %s at %s", client_id, names.TICKS, group, kafka.describe())
    stage.run(stop)
    log.info("market stage %s: stopped (%s records staged)", client_id, sum(stage.staged.values()))


class StageChild:
    """A worker's market stage as a child process (`liqwatch market-stage ...`), started again when it ends.

    The child runs in a session of its own (a Ctrl-C at the terminal stops the worker, which stops the child; the
    child never races it), and gets SIGTERM if the worker dies (Linux: PR_SET_PDEATHSIG)."""

    RESTART_S = (1.0, 30.0)

    def __init__(self, argv: list[str], name: str, env: dict[str, str] | None = None):
        self.argv = argv
        self.env = env  # the Kafka password goes by environment, never in argv (ps shows argv)
        self.name = name
        self.proc: subprocess.Popen | None = None
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._keep, name=f"{name}-supervisor", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _keep(self) -> None:
        pause = self.RESTART_S[0]
        while not self.stopping.is_set():
            started = time.monotonic()
            self.proc = subprocess.Popen(self.argv, start_new_session=True, preexec_fn=_die_with_parent, env=self.env)
            code = self.proc.wait()
            if self.stopping.is_set():
                return
            pause = self.RESTART_S[0] if time.monotonic() - started > 60 else min(pause * 2, self.RESTART_S[1])
            log.warning("%s ended with status %s; starting it again in %.0f s", self.name, code, pause)
            self.stopping.wait(pause)

    def stop(self, timeout: float = 15.0) -> None:
        self.stopping.set()
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.thread.join(timeout)


def _die_with_parent() -> None:
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
