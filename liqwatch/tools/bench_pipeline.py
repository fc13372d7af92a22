"""`liqwatch bench pipeline`: workers' throughput and latency on the real broker, side by side in one run.

For every combination of `accounts` × `workers`, on fresh topics (a prefix of their own) of one local stack — the
running one from --state-dir, or a temporary one:
1. Load: `accounts` accounts of the calm population and a crash-day firehose of `ticks` ticks (at `rate` ticks
   per second of event time).
2. raw_consume_per_s: plain consumers reading the ticks topic, aiokafka and confluent-kafka (librdkafka), each
   record's value taken, measured like the workers between 10% and 90% of the records (start-up excluded): the
   ceiling of a Python process reading it.
3. worker_ticks_per_s: each worker replaying the same ticks (prices, shard health every 10 s of event time,
   marks, cascades), measured between 10% and 90% of the ticks processed (start-up excluded);
   cluster_ticks_per_s: how fast the workers together get through the stream. With --market-stage, first
   stage_ticks_per_s: as many stages as workers staging the ticks alone (before any worker runs); the workers
   then read staged rows, and the cluster goes at the slower of the stages and the slowest worker.
3b. catch_up: with every account loaded (the first exact flush done), the workers paused (SIGSTOP, inside the
   group's session timeout), `ticks` more ticks written (at most a million), the workers resumed: their rate
   through them (their market path with a loaded book: boundaries evaluate every account), against the raw
   consumers reading the same records afterwards. Step 3 reads its ticks beside the load of every account (another topic and the table),
   the raw consumers read ticks alone: this one compares like with like.
4. Latency: ticks produced live at `rate` per second, event time = wall time, for a warm-up and then `seconds` (once the first exact flush has emitted every account's health);
   for every `mark` event after the warm-up, latency = arrival at a consumer − the newest tick's produce time,
   plus the gap to the previous mark event (the wait of the oldest tick of that batch): p50, p99, max of that
   upper bound; whether every live tick was processed (by every worker); and what the feed waited for meanwhile:
   queued account work (feed_held_s) and event-loop stalls over half a second (loop_stalls, loop_stalled_s).
   The live phase starts once exactly one worker leads and none is in a rebalance (only the leader publishes
   marks); marks_emitted (per worker) and leading_after_live say who published, should mark_events be 0.
"""

from __future__ import annotations

import asyncio
import json
import re
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import msgspec
import numpy as np
import yaml
from aiokafka import AIOKafkaConsumer, TopicPartition

from liqwatch import scenarios
from liqwatch.kafka import Connection
from liqwatch.tools import stack
from liqwatch.tools import transport
from liqwatch.sinks.topics import MARKET_MAX_BYTES, TopicNames, key_of

_encode = msgspec.json.Encoder().encode


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_inputs(path: Path, accounts: int, ticks: int, per_second: int) -> int:
    """The first second of the calm evening (prices and references), the account population, then a crash-day
    firehose: `ticks` ticks cycling over every book at `per_second` ticks per second of event time."""
    n = 0
    books: dict[tuple[str, str], dict] = {}
    with path.open("wb") as f:
        for ev in scenarios.generate("calm", accounts, seed=11):
            if ev["ts"] > scenarios.T0 + 1_000:
                break
            if ev["type"] == "tick":
                books[(ev["venue"], ev["symbol"])] = ev
            f.write(_encode(ev) + b"\n")
            n += 1
        for ev in _firehose(list(books.values()), ticks, scenarios.T0 + 2_000, per_second, seed=5):
            f.write(_encode(ev) + b"\n")
            n += 1
    return n


def _firehose(templates: list[dict], ticks: int, t0: int, per_second: int, seed: int):
    """`ticks` ticks cycling over the books of `templates` from event time t0, `per_second` a second, each
    price moved by a little noise."""
    noise = np.random.default_rng(seed).normal(0, 2e-4, ticks).tolist()
    for k in range(ticks):
        ev = dict(templates[k % len(templates)])
        ev["ts"] = t0 + k * 1000 // per_second
        ev["bid"] = ev["bid"] * (1 + noise[k])
        ev["ask"] = ev["ask"] * (1 + noise[k])
        if "last" in ev:
            ev["last"] = ev["last"] * (1 + noise[k])
        yield ev


def _templates(path: Path) -> list[dict]:
    """The last tick of every book in an inputs file (the firehose's books, as last quoted)."""
    books: dict[tuple[str, str], dict] = {}
    with path.open("rb") as f:
        for line in f:
            if line.startswith(b'{"type":"tick"'):
                ev = msgspec.json.decode(line)
                books[(ev["venue"], ev["symbol"])] = ev
    return list(books.values())


def _steady_rate(samples: list[tuple[float, float]], end: int) -> float:
    """Records per second between 10% and 90% of `end` records read, from (time, records read so far) samples:
    start-up (connecting, the first fetch) excluded, for the raw consumers as for the workers."""
    arr = np.array(samples)
    t10, t90 = np.interp(0.1 * end, arr[:, 1], arr[:, 0]), np.interp(0.9 * end, arr[:, 1], arr[:, 0])
    return 0.8 * end / max(t90 - t10, 1e-9)


RAW_BATCH = 10_000  # records a raw consumer takes per call: the worker's order of batch, fine enough to time by


async def _raw_aiokafka(kafka: Connection, topic: str, end: int, partitions: int, start: list[int] | None = None
                        ) -> float:
    """Records per second of a plain aiokafka consumer reading `end` records of the topic's partitions from the
    offsets `start` (default: the beginning), each record's value taken (`_steady_rate`, best of two)."""
    c = AIOKafkaConsumer(**kafka.aiokafka(), group_id=None, enable_auto_commit=False,
                         max_partition_fetch_bytes=8 << 20)
    await c.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        c.assign(tps)
        best = 0.0
        for _ in range(2):
            for tp in tps:
                c.seek(tp, start[tp.partition] if start else 0)
            got = 0
            samples = [(time.perf_counter(), 0)]
            while got < end:
                batch = await c.getmany(*tps, timeout_ms=500, max_records=RAW_BATCH)
                for records in batch.values():
                    _ = [r.value for r in records]
                    got += len(records)
                samples.append((time.perf_counter(), got))
            best = max(best, _steady_rate(samples, end))
        return best
    finally:
        await c.stop()


def _raw_confluent(kafka: Connection, topic: str, end: int, partitions: int, start: list[int] | None = None) -> float:
    """The same with confluent-kafka (librdkafka)."""
    import confluent_kafka as ck

    best = 0.0
    c = ck.Consumer({**kafka.confluent(), "group.id": "liqwatch-bench-raw", "enable.auto.commit": False,
                     "fetch.wait.max.ms": 10, "queued.max.messages.kbytes": (1 << 21) - 1,
                     "queued.min.messages": 1_000_000,
                     "max.partition.fetch.bytes": 16 << 20})
    try:
        for _ in range(2):
            c.assign([ck.TopicPartition(topic, p, start[p] if start else 0) for p in range(partitions)])
            got = 0
            samples = [(time.perf_counter(), 0)]
            while got < end:
                msgs = c.consume(num_messages=RAW_BATCH, timeout=0.5)
                _ = [m.value() for m in msgs]
                got += len(msgs)
                samples.append((time.perf_counter(), got))
            best = max(best, _steady_rate(samples, end))
            c.unassign()
    finally:
        c.close()
    return best


async def _end(kafka: Connection, topic: str, partitions: int) -> int:
    return sum(await _ends(kafka, topic, partitions))


async def _ends(kafka: Connection, topic: str, partitions: int) -> list[int]:
    c = AIOKafkaConsumer(**kafka.aiokafka(), group_id=None)
    await c.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        ends = await c.end_offsets(tps)
        return [ends[tp] for tp in tps]
    finally:
        await c.stop()


def _family(pid: int) -> list[int]:
    """A process and its children (a worker's market stage runs in a session of its own)."""
    out = [pid]
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _settled(ports: list[int], quiet_s: float = 3.0, limit_s: float = 180.0) -> None:
    """Wait until no worker has emitted anything for `quiet_s` (an exact flush at 1M accounts takes ~20 s, and its
    cascades after it): a raw consumer timed beside it would read slower than on a quiet machine."""
    def emitted() -> float:
        total = 0.0
        for port in ports:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                    total += sum(float(line.rsplit(" ", 1)[1]) for line in r.read().decode().splitlines()
                                 if line.startswith("liqwatch_events_emitted_total{"))
            except OSError:
                pass
        return total

    until = time.monotonic() + limit_s
    last, since = emitted(), time.monotonic()
    while time.monotonic() < until and time.monotonic() - since < quiet_s:
        time.sleep(0.5)
        now = emitted()
        if now != last:
            last, since = now, time.monotonic()


CATCH_UP_MAX = 1_000_000  # written in ~2-3 s here: the pause stays inside the workers' 6 s session timeout


def _catch_up(kafka: Connection, names: TopicNames, procs: list, ports: list[int], templates: list[dict], ticks: int,
              t0: int, per_second: int, partitions: int, say, profile: Path | None = None, phase: str = "") -> dict:
    """The market path's own rate: with every account loaded, the workers are paused (SIGSTOP, a few seconds:
    inside the group's session timeout), a recorded firehose of `ticks` ticks is written meanwhile, and the workers
    get through it once resumed, measured like the ingest above between 10% and 90% of it; then the raw
    consumers read the same records. The ingest phase above runs beside the load of every account (another
    topic, the accounts table): this one measures the ticks alone, as the raw consumers do."""
    import confluent_kafka as ck

    ticks = min(ticks, CATCH_UP_MAX)
    start = asyncio.run(_ends(kafka, names.TICKS, partitions))
    counted = 'liqwatch_events_processed_total{topic="ticks"}'
    before = {p: _metric(p, counted) or 0.0 for p in ports}
    records = [(_encode(ev), key_of(ev)) for ev in _firehose(templates, ticks, t0, per_second, seed=6)]
    producer = ck.Producer({**kafka.confluent(), "linger.ms": 20, "batch.size": 1 << 20,
                            "queue.buffering.max.messages": 2 * ticks, "queue.buffering.max.kbytes": 1 << 21,
                            "partitioner": "murmur2_random"})
    pids = [p for w in procs for p in _family(w.pid)]
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        for value, key in records:
            producer.produce(names.TICKS, value, key)
        producer.flush(30)
    finally:
        paused = time.monotonic() - stopped
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    spy = Profiler(profile, procs[0].pid, f"catchup-{phase}")
    end_t = t0 + (ticks - 1) * 1000 // per_second
    resumed = time.perf_counter()
    samples: dict[int, list[tuple[float, float]]] = {p: [(resumed, 0.0)] for p in ports}
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and not all(s and s[-1][1] >= ticks for s in samples.values()):
        for port in ports:
            n = _metric(port, counted)
            if n is not None:
                samples[port].append((time.perf_counter(), min(n - before[port], ticks)))
        time.sleep(0.05)
    spy.stop()
    if not all(s and s[-1][1] >= ticks for s in samples.values()):
        raise RuntimeError(f"the workers did not reach the firehose's end (event time {end_t}) in 600 s")
    rates = [_steady_rate(samples[p], ticks) for p in ports]
    _settled(ports)  # the workers idle (their exact flush and its cascades done) before the raw consumers read
    raw = {"aiokafka": asyncio.run(_raw_aiokafka(kafka, names.TICKS, ticks, partitions, start))}
    try:
        raw["confluent_kafka"] = _raw_confluent(kafka, names.TICKS, ticks, partitions, start)
    except ImportError:
        pass
    fastest = max(raw, key=raw.get)
    if paused > 5.0:
        say(f"  the workers were paused {paused:.1f} s, near their 6 s session timeout: a rebalance may have cost "
            f"the catch-up time (fewer --ticks)")
    say(f"  catch-up, accounts loaded: {', '.join(f'{r:,.0f}' for r in rates)} ticks/s per worker against "
        f"{fastest} {raw[fastest]:,.0f}/s on the same records ({min(rates) / raw[fastest]:.3f}; paused {paused:.1f} s)")
    return {"ticks": ticks, "paused_s": round(paused, 1), "raw_consume_per_s": {k: round(v) for k, v in raw.items()},
            "fastest_raw": fastest, "worker_ticks_per_s": [round(r) for r in rates],
            "worker_vs_fastest_raw": round(min(rates) / raw[fastest], 3)}


def _status(port: int) -> dict | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
            return json.loads(r.read())
    except OSError as e:
        if hasattr(e, "read"):  # 503: the body is the status all the same
            return json.loads(e.read())
        return None


def _metric(port: int, name: str) -> float | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            for line in r.read().decode().splitlines():
                if line.startswith(name):
                    return float(line.rsplit(" ", 1)[1])
    except OSError:
        return None
    return 0.0


def _one_leader(ports: list[int], limit_s: float = 120.0) -> None:
    """Wait until exactly one worker leads and none is in a rebalance: only the leader publishes marks, so a live
    phase measured during a rebalance (after the catch-up's pause, say) would count no mark at all."""
    until = time.monotonic() + limit_s
    while True:
        statuses = [_status(p) or {} for p in ports]
        if sum(bool(s.get("leading")) for s in statuses) == 1 and not any(s.get("rebalancing", True) for s in statuses):
            return
        if time.monotonic() > until:
            raise RuntimeError("no single leader settled in %.0f s before the live phase: %s" % (limit_s, [
                {k: s.get(k) for k in ("worker", "leading", "rebalancing", "account_work", "cascades")}
                for s in statuses]))
        time.sleep(0.5)


async def _live_latency(kafka: Connection, names: TopicNames, books: list[tuple[str, str, float]], rate: int,
                        seconds: float, warmup_s: float, caught_up) -> tuple[np.ndarray, int]:
    """Ticks produced at `rate` per second for warmup_s + seconds, event time = wall time at the send; the latency
    of every mark event after the warm-up (the worker's start on a new stream is not its steady state). The load comes from
    librdkafka (confluent-kafka) in a thread: an aiokafka producer in Python could not keep 50,000 ticks/s on a
    shared core, and its ticks then carried times older than their sending. Marks are collected until
    `caught_up(sent)` says every worker has every live tick (at most a minute), and 2 s more: a slow machine's
    late marks are counted, not lost. Returns (latencies ms, ticks sent)."""
    import confluent_kafka as ck

    consumer = AIOKafkaConsumer(**kafka.aiokafka(), group_id=None, enable_auto_commit=False)
    await consumer.start()
    tp = TopicPartition(names.MARKS, 0)
    consumer.assign([tp])
    await consumer.seek_to_end(tp)
    latencies: list[float] = []
    stop = asyncio.Event()
    start_ms = time.time() * 1000
    measure_from = start_ms + warmup_s * 1000

    async def collect() -> None:
        prev = None
        while not stop.is_set():
            batch = await consumer.getmany(tp, timeout_ms=100)
            now = time.time() * 1000
            for rec in batch.get(tp, []):
                ev = json.loads(rec.value)
                if ev["ts"] < measure_from:
                    continue
                gap = 0.0 if prev is None else max(now - prev, 0.0)
                latencies.append(now - ev["ts"] + gap)
            if batch:
                prev = now

    def produce() -> int:
        producer = ck.Producer({**kafka.confluent(), "linger.ms": 2, "queue.buffering.max.messages": 1 << 20,
                                "partitioner": "murmur2_random"})  # `liqwatch produce`'s (Java's) partitions
        rng = np.random.default_rng(3)
        sent = 0
        t0 = time.perf_counter()
        while (elapsed := time.perf_counter() - t0) < warmup_s + seconds:
            due = int(elapsed * rate)
            noise = rng.normal(0, 1e-4, max(due - sent, 0)).tolist()
            for k in range(due - sent):
                venue, symbol, mid = books[(sent + k) % len(books)]
                ts = int(time.time() * 1000)
                m = mid * (1 + noise[k])
                ev = {"type": "tick", "venue": venue, "symbol": symbol, "ts": ts, "bid": m * 0.9999,
                      "ask": m * 1.0001}
                producer.produce(names.TICKS, _encode(ev), key=key_of(ev), timestamp=ts)
            sent = max(sent, due)
            producer.poll(0)
            time.sleep(0.005)
        producer.flush(30)
        return sent

    task = asyncio.get_running_loop().create_task(collect())
    sent = await asyncio.to_thread(produce)
    waited = time.monotonic()
    while not await asyncio.to_thread(caught_up, sent) and time.monotonic() - waited < 60:
        await asyncio.sleep(0.5)
    await asyncio.sleep(2.0)
    stop.set()
    await task
    await consumer.stop()
    return np.array(latencies), sent


def _staged_upto(kafka: Connection, names: TopicNames, partitions: int, reader) -> int:
    """Ticks the stages have staged so far: per tick partition, the last staged record's last source offset + 1."""
    import confluent_kafka as ck

    from liqwatch.core.staged import unpack

    total = 0
    for p in range(partitions):
        lo, hi = reader.get_watermark_offsets(ck.TopicPartition(names.MARKET, p), timeout=5)
        if hi <= lo:
            continue
        reader.assign([ck.TopicPartition(names.MARKET, p, hi - 1)])
        msg = reader.poll(5.0)
        if msg is not None and not msg.error():
            total += unpack(msg.value()).last + 1
    return total


def _stage_rate(kafka: Connection, config_path: Path, prefix: str, names: TopicNames, end: int, partitions: int,
                n_stages: int, work: Path) -> float:
    """n_stages `liqwatch market-stage` processes (the workers' group) staging the recorded ticks, before any
    worker runs: ticks per second between 10% and 90% staged. They stop after; the workers' own stages then
    resume at the end."""
    import confluent_kafka as ck


    procs = []
    for k in range(n_stages):
        log = (work / f"stage-{k}.log").open("wb")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "liqwatch", "market-stage", "-c", str(config_path), *kafka.options(),
             "--topic-prefix", prefix, "--group", f"{prefix.rstrip('.')}-market-stage", "--stage-id",
             f"bench-stage-{k + 1}"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, **kafka.child_env()}))
    reader = ck.Consumer({**kafka.confluent(), "group.id": f"{prefix}bench-reader",
                          "enable.auto.commit": False, "fetch.max.bytes": MARKET_MAX_BYTES,
                          "receive.message.max.bytes": MARKET_MAX_BYTES + (1 << 20)})
    samples = []
    try:
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            n = _staged_upto(kafka, names, partitions, reader)
            samples.append((time.perf_counter(), n))
            if n >= end:
                break
            time.sleep(0.1)
        else:
            raise RuntimeError(f"the market stages did not stage the {end} ticks in 900 s (logs: {work})")
    finally:
        reader.close()
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(30)
    return _steady_rate(samples, end)


class Profiler:
    """py-spy attached to the worker for one phase (collapsed stacks, one line per stack with its samples):
    `liqwatch bench top FILE` sums them into the frames where the time goes."""

    def __init__(self, path: Path | None, pid: int, phase: str):
        self.proc = None
        if path is not None:
            out = path.with_name(f"{path.stem}-{phase}{path.suffix or '.txt'}")
            self.proc = subprocess.Popen([str(Path(sys.executable).with_name("py-spy")), "record", "--pid", str(pid),
                                          "--format", "raw", "--rate", "250", "--nonblocking", "-o", str(out)],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
            self.proc.wait(30)


def pipeline(accounts: list[int] = (100_000,), workers: list[int] = (1,), rate: int = 50_000,
             seconds: float = 20.0, state_dir: Path | None = None, ticks: int = 2_000_000,
             profile: Path | None = None, warmup_s: float = 5.0, progress=None, tick_partitions: int = 1,
             market_stage: bool = False) -> dict:
    """Every (accounts, workers) combination on fresh topics of one stack, side by side: the raw consumers'
    rate, the workers' ingest and the live latency."""
    own_stack = None
    if state_dir is not None:
        cfg = stack.load(state_dir)
    else:
        tmp = Path(tempfile.mkdtemp(prefix="liqwatch-bench-"))
        cfg = stack.StackConfig.resolve(tmp, kafka_port=_free_port(), controller_port=_free_port(),
                                        prometheus_port=_free_port(), alertmanager_port=_free_port())
        stack.up(cfg)
        own_stack = cfg
    kafka = stack.connection(cfg)
    say = progress or (lambda msg: None)
    try:
        runs = []
        for n_accounts in accounts:
            for n_workers in workers:
                say(f"{n_accounts:,} accounts, {n_workers} worker(s)")
                runs.append(_one(kafka, n_accounts, n_workers, rate, seconds, ticks, profile, warmup_s, say,
                                 tick_partitions, market_stage))
        out = {"runs": runs}
        for n_accounts in accounts:
            one = [r for r in runs if r["accounts"] == n_accounts and r["workers"] == 1]
            two = [r for r in runs if r["accounts"] == n_accounts and r["workers"] == 2]
            if one and two:
                out.setdefault("scale_out", []).append({
                    "accounts": n_accounts,
                    "cluster_ticks_per_s_1": one[0]["cluster_ticks_per_s"],
                    "cluster_ticks_per_s_2": two[0]["cluster_ticks_per_s"],
                    "second_worker_adds": round(two[0]["cluster_ticks_per_s"] / one[0]["cluster_ticks_per_s"] - 1, 3),
                })
        return out
    finally:
        if own_stack is not None:
            stack.down(own_stack)


def _one(kafka: Connection, accounts: int, n_workers: int, rate: int, seconds: float, ticks: int,
         profile: Path | None, warmup_s: float, say, tick_partitions: int = 1, market_stage: bool = False) -> dict:
    prefix = f"bench-{uuid.uuid4().hex[:6]}."
    names = TopicNames(prefix)
    work = Path(tempfile.mkdtemp(prefix="liqwatch-bench-"))
    # the October config, with room for the live phase to continue the recorded firehose a year later (else
    # its first ticks are "ahead of the stream" and the first few dead-lettered: the jump rule)
    config_path = work / "config.yaml"
    spec = yaml.safe_load(scenarios.config_path("oct-2025", "prefix").read_text())
    spec.setdefault("ingest", {})["max_ahead_ms"] = 3 * 365 * 86_400_000
    config_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    procs: list[subprocess.Popen] = []
    ports: list[int] = []
    try:
        events = work / "inputs.jsonl"
        _write_inputs(events, accounts, ticks, per_second=rate)
        asyncio.run(transport.produce_file(events, kafka, prefix=prefix, progress=False,
                                           tick_partitions=tick_partitions))
        end = asyncio.run(_end(kafka, names.TICKS, tick_partitions))  # includes the first second
        raw = {"aiokafka": asyncio.run(_raw_aiokafka(kafka, names.TICKS, end, tick_partitions))}
        try:
            raw["confluent_kafka"] = _raw_confluent(kafka, names.TICKS, end, tick_partitions)
        except ImportError:  # not installed: the aiokafka figure alone
            pass
        fastest = max(raw, key=raw.get)
        say(f"  raw consumers: {', '.join(f'{k} {v:,.0f}/s' for k, v in raw.items())}")
        stage_rate = None
        if market_stage:  # the stages alone first: their capacity, with the workers' share of the cores idle
            stage_rate = _stage_rate(kafka, config_path, prefix, names, end, tick_partitions, n_workers, work)
            say(f"  {n_workers} market stage(s) alone: {stage_rate:,.0f} ticks/s")
        for k in range(n_workers):
            port = _free_port()
            log = (work / f"worker-{k}.log").open("wb")
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "liqwatch", "worker", "-c", str(config_path), *kafka.options(),
                 "--topic-prefix", prefix, "--app-id", prefix.rstrip("."), "--web-port", str(port),
                 "--worker-id", f"bench-{k + 1}",
                 "--resume-grace-s", "0", "--boundary-wait-s", "0",  # one producer, done before: no wait
                 *(["--market-stage"] if market_stage else [])],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, **kafka.child_env()}))
            ports.append(port)
        samples: dict[int, list[tuple[float, float]]] = {p: [] for p in ports}
        deadline = time.monotonic() + 900
        spy = None
        done: set[int] = set()
        while time.monotonic() < deadline and len(done) < len(ports):
            for port in ports:
                if port in done:
                    continue
                n = _metric(port, 'liqwatch_events_processed_total{topic="ticks"}')
                if n is None:
                    continue
                if spy is None and n > 0:
                    spy = Profiler(profile, procs[0].pid, f"ingest-{accounts}-{n_workers}")
                samples[port].append((time.perf_counter(), n))
                if n >= end:
                    done.add(port)
            time.sleep(0.05)
        if spy is not None:
            spy.stop()
        if len(done) < len(ports):
            raise RuntimeError(f"workers did not process the {end} ticks in 900 s (logs: {work})")
        rates = [_steady_rate(samples[port], end) for port in ports]
        # every worker applies every tick: the cluster gets through the stream at its slowest worker's pace, and
        # with market stages at most at the stages' (the workers above read rows staged before they started)
        cluster = min(rates) if stage_rate is None else min(min(rates), stage_rate)
        # every account loaded (the accounts agent reads them beside the ticks), then the first exact flush, which
        # emits every account's health once: the live phase measures the steady state
        waited, loaded = time.monotonic(), 0.0
        while time.monotonic() - waited < 1800:
            loaded = sum(_metric(p, 'liqwatch_events_processed_total{topic="accounts"}') or 0 for p in ports)
            if loaded >= accounts:
                break
            time.sleep(1.0)
        else:
            raise RuntimeError(f"the workers loaded {loaded:,.0f} of {accounts:,} accounts in 30 minutes (logs: {work})")
        say(f"  {accounts:,} accounts loaded {time.monotonic() - waited:.0f} s after the ticks")
        # the first exact flush (the input idle for a second) emits every active account's health once
        active = sum((_status(p) or {}).get("accounts", 0) for p in ports)
        waited, emitted = time.monotonic(), 0.0
        while time.monotonic() - waited < 900:
            emitted = sum(_metric(p, f'liqwatch_events_emitted_total{{topic="{names.HEALTH}"}}') or 0 for p in ports)
            if emitted >= active:
                break
            time.sleep(0.5)
        else:
            raise RuntimeError(f"the first exact flush emitted {emitted:,.0f} of {active:,} health events in 15 "
                               f"minutes (logs: {work})")
        say(f"  first exact flush: {emitted:,.0f} health events, {time.monotonic() - waited:.0f} s")
        time.sleep(5.0)  # delivered, and the flush's cascades done
        first_end = scenarios.T0 + 2_000 + (ticks - 1) * 1000 // rate
        books = _templates(events)  # every book's last tick: the catch-up and the live ticks go on from there
        catch = _catch_up(kafka, names, procs, ports, books, ticks, first_end + 1_000, rate,
                          tick_partitions, say, profile, f"{accounts}-{n_workers}")
        time.sleep(5.0)  # its flush and cascades done
        _one_leader(ports)
        counted = 'liqwatch_events_processed_total{topic="ticks"}'
        emitted = f'liqwatch_events_emitted_total{{topic="{names.MARKS}"}}'
        before = [_metric(p, counted) or 0 for p in ports]
        marks_before = [_metric(p, emitted) or 0 for p in ports]
        waits_before = [_waits(p) for p in ports]

        def processed_live() -> float:
            return min((_metric(p, counted) or 0) - b for p, b in zip(ports, before))

        spy = Profiler(profile, procs[0].pid, f"live-{accounts}-{n_workers}")
        lat, sent = asyncio.run(_live_latency(kafka, names, _last_mids(books), rate, seconds, warmup_s,
                                              lambda sent: processed_live() >= sent))
        spy.stop()
        processed = processed_live()  # short of `sent` if a worker did not get every live tick in a minute
        # who published marks in the live phase, and who led after it: what a count of no marks needs to be read
        marks_emitted = [int((_metric(p, emitted) or 0) - b) for p, b in zip(ports, marks_before)]
        leading_after = [bool((_status(p) or {}).get("leading")) for p in ports]
        # what the feed waited for during the live phase: the account work's queue, and event-loop stalls
        waits = [tuple(None if x is None or y is None else round(x - y, 2) for x, y in zip(_waits(p), w))
                 for p, w in zip(ports, waits_before)]
        result = {
            "accounts": accounts,
            "workers": n_workers,
            "tick_partitions": tick_partitions,
            "market_stage": market_stage,
            "ticks": end,
            "raw_consume_per_s": {k: round(v) for k, v in raw.items()},
            "fastest_raw": fastest,
            "stage_ticks_per_s": None if stage_rate is None else round(stage_rate),
            "worker_ticks_per_s": [round(r) for r in rates],
            "cluster_ticks_per_s": round(cluster),
            "worker_vs_fastest_raw": round(min(rates) / raw[fastest], 3),
            "cluster_vs_fastest_raw": round(cluster / raw[fastest], 3),
            "catch_up": catch,
            "live_rate_per_s": rate,
            "live_seconds": seconds,
            "warmup_seconds": warmup_s,
            "live_ticks_sent": sent,
            "live_ticks_processed": int(processed),
            "all_live_ticks_processed": bool(processed >= sent),
            "mark_events": int(lat.size),                # received after the warm-up
            "marks_emitted": marks_emitted,              # per worker, the whole live phase (the leader's alone)
            "leading_after_live": leading_after,
            "logs": str(work),                           # the workers' and stages' logs, kept
            "latency_p50_ms": round(float(np.percentile(lat, 50)), 1) if lat.size else None,
            "latency_p99_ms": round(float(np.percentile(lat, 99)), 1) if lat.size else None,
            "latency_max_ms": round(float(lat.max()), 1) if lat.size else None,
            "feed_held_s": [w[0] for w in waits],       # per worker: waits for queued account work
            "loop_stalls": [None if w[1] is None else int(w[1]) for w in waits],  # event-loop stalls over 0.5 s, and
            "loop_stalled_s": [w[2] for w in waits],  # their seconds, per worker (liqwatch/worker/stall.py)
        }
        say(f"  ingest while loading the accounts {', '.join(f'{r:,.0f}' for r in rates)} ticks/s per worker "
            f"({result['worker_vs_fastest_raw']} of {fastest}); live p50 {result['latency_p50_ms']} ms, "
            f"p99 {result['latency_p99_ms']} ms ({lat.size:,} marks), {processed:,} of {sent:,} live ticks processed; "
            f"the feed waited "
            f"{', '.join(str(w[0]) for w in waits)} s for account work; loop stalls over 0.5 s "
            f"{', '.join(f'{w[1]} ({w[2]} s)' for w in waits)}")
        return result
    finally:
        for w in procs:
            if w.poll() is None:
                os.killpg(w.pid, signal.SIGTERM)
        for w in procs:
            try:
                w.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(w.pid, signal.SIGKILL)


def _waits(port: int) -> tuple[float | None, float | None, float | None]:
    """A worker's feed waits so far: seconds held for account work, loop stalls over 0.5 s and their seconds
    (None for a metric the worker does not export)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            lines = dict(line.rsplit(" ", 1) for line in r.read().decode().splitlines() if not line.startswith("#"))
    except OSError:
        return None, None, None
    names = ("liqwatch_feed_held_seconds_total", "liqwatch_loop_stall_seconds_count", "liqwatch_loop_stall_seconds_sum")
    return tuple(float(lines[n]) if n in lines else None for n in names)


def _last_mids(books: list[dict]) -> list[tuple[str, str, float]]:
    """(venue, symbol, mid) of every book's last tick, sorted: where the live phase's ticks start."""
    return sorted((ev["venue"], ev["symbol"], (ev["bid"] + ev["ask"]) / 2) for ev in books)


def top_frames(path: Path, n: int = 25, thread: str | None = None) -> dict:
    """The frames of a py-spy collapsed-stacks file where the samples are: `self` (the frame was running) and
    `inclusive` (the frame was on the stack), in % of all samples (of the threads whose name contains `thread`)."""
    from collections import Counter

    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    with path.open() as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack or not count.isdigit():
                continue
            frames = [re.sub(r":\d+\)$", ")", fr) for fr in stack.split(";")]  # per function, not per line
            if thread is not None and thread not in frames[0]:
                continue
            k = int(count)
            total += k
            own[frames[-1]] += k
            for fr in set(frames[1:]):
                incl[fr] += k

    def share(c: Counter) -> list[tuple[str, float]]:
        return [(fr, round(100.0 * k / total, 1)) for fr, k in c.most_common(n)] if total else []

    return {"samples": total, "self": share(own), "inclusive": share(incl)}
