"""`liqwatch bench pipeline`: a worker's throughput and latency on the real broker, side by side in one run.

1. Load: `accounts` accounts of the oct-2025 population and a crash-day firehose of `ticks` ticks (at `rate`
   ticks per second of event time) into fresh topics (a prefix of their own) of a local stack — the running one
   from --state-dir, or a temporary one.
2. raw_consume_per_s: a plain aiokafka consumer reading the ticks topic end to end (the ceiling).
3. worker_ticks_per_s: one `liqwatch worker` replaying the same ticks (prices, shard health every 10 s of event
   time, marks, cascades), measured between 10% and 90% of the ticks processed (start-up excluded).
4. Latency: ticks produced live at `rate` per second for `seconds`, with event time = wall time; for every
   `mark` event the worker emits, latency = arrival at a consumer − the newest tick's produce time, plus the gap
   to the previous mark event (the wait of the oldest tick of that batch): p50 and p99 of that upper bound.
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
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from liqwatch import scenarios
from liqwatch.tools import stack
from liqwatch.tools import transport
from liqwatch.sinks.topics import TopicNames, key_of

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
        rng = np.random.default_rng(5)
        templates = list(books.values())
        noise = rng.normal(0, 2e-4, ticks).tolist()
        t0 = scenarios.T0 + 2_000
        for k in range(ticks):
            ev = dict(templates[k % len(templates)])
            ev["ts"] = t0 + k * 1000 // per_second
            ev["bid"] = ev["bid"] * (1 + noise[k])
            ev["ask"] = ev["ask"] * (1 + noise[k])
            if "last" in ev:
                ev["last"] = ev["last"] * (1 + noise[k])
            f.write(_encode(ev) + b"\n")
            n += 1
    return n


async def _raw_consume_rate(bootstrap: str, topic: str) -> tuple[int, float]:
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                         max_partition_fetch_bytes=8 << 20)
    await c.start()
    try:
        tp = TopicPartition(topic, 0)
        c.assign([tp])
        end = (await c.end_offsets([tp]))[tp]
        best = float("inf")
        for _ in range(2):
            c.seek(tp, 0)
            t0 = time.perf_counter()
            got = 0
            while got < end:
                batch = await c.getmany(tp, timeout_ms=500, max_records=50_000)
                got += sum(len(v) for v in batch.values())
            best = min(best, time.perf_counter() - t0)
        return end, best
    finally:
        await c.stop()


def _metric(port: int, name: str) -> float | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            for line in r.read().decode().splitlines():
                if line.startswith(name):
                    return float(line.rsplit(" ", 1)[1])
    except OSError:
        return None
    return 0.0


async def _live_latency(bootstrap: str, names: TopicNames, books: list[tuple[str, str, float]], rate: int,
                        seconds: float) -> np.ndarray:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=2, max_batch_size=1 << 20)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await producer.start()
    await consumer.start()
    tp = TopicPartition(names.MARKS, 0)
    consumer.assign([tp])
    await consumer.seek_to_end(tp)
    latencies: list[float] = []
    stop = asyncio.Event()

    async def collect() -> None:
        prev = None
        while not stop.is_set():
            batch = await consumer.getmany(tp, timeout_ms=100)
            now = time.time() * 1000
            for rec in batch.get(tp, []):
                ev = json.loads(rec.value)
                if ev["ts"] < start_ms:
                    continue
                gap = 0.0 if prev is None else max(now - prev, 0.0)
                latencies.append(now - ev["ts"] + gap)
            if batch:
                prev = now

    start_ms = time.time() * 1000
    task = asyncio.get_running_loop().create_task(collect())
    rng = np.random.default_rng(3)
    sent = 0
    t0 = time.perf_counter()
    step = 0.01  # send in 10 ms slices
    while time.perf_counter() - t0 < seconds:
        due = int((time.perf_counter() - t0) * rate)
        ts = int(time.time() * 1000)
        while sent < due:
            venue, symbol, mid = books[sent % len(books)]
            m = mid * (1 + rng.normal(0, 1e-4))
            ev = {"type": "tick", "venue": venue, "symbol": symbol, "ts": ts, "bid": m * 0.9999, "ask": m * 1.0001}
            await producer.send(names.TICKS, _encode(ev), key=key_of(ev), timestamp_ms=ts)
            sent += 1
        await asyncio.sleep(step)
    await producer.flush()
    await asyncio.sleep(3.0)
    stop.set()
    await task
    await producer.stop()
    await consumer.stop()
    return np.array(latencies)


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


def pipeline(accounts: int = 100_000, rate: int = 50_000, seconds: float = 20.0,
             state_dir: Path | None = None, ticks: int = 500_000, profile: Path | None = None) -> dict:
    own_stack = None
    if state_dir is not None:
        cfg = stack.load(state_dir)
    else:
        tmp = Path(tempfile.mkdtemp(prefix="liqwatch-bench-"))
        cfg = stack.StackConfig.resolve(tmp, kafka_port=_free_port(), controller_port=_free_port(),
                                        prometheus_port=_free_port(), alertmanager_port=_free_port())
        stack.up(cfg)
        own_stack = cfg
    bootstrap = stack.bootstrap_servers(cfg)
    prefix = f"bench-{uuid.uuid4().hex[:6]}."
    names = TopicNames(prefix)
    work = Path(tempfile.mkdtemp(prefix="liqwatch-bench-"))
    config_path = scenarios.config_path("oct-2025", "prefix")
    worker = None
    try:
        events = work / "inputs.jsonl"
        _write_inputs(events, accounts, ticks, per_second=rate)
        asyncio.run(transport.produce_file(events, bootstrap, prefix=prefix, progress=False))
        ticks, raw_s = asyncio.run(_raw_consume_rate(bootstrap, names.TICKS))  # includes the first second
        port = _free_port()
        log = (work / "worker.log").open("wb")
        worker = subprocess.Popen(
            [sys.executable, "-m", "liqwatch", "worker", "-c", str(config_path), "--bootstrap", bootstrap,
             "--topic-prefix", prefix, "--app-id", prefix.rstrip("."), "--web-port", str(port),
             "--worker-id", "bench-1"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        samples: list[tuple[float, float]] = []
        deadline = time.monotonic() + 600
        spy = None
        while time.monotonic() < deadline:
            n = _metric(port, 'liqwatch_events_processed_total{topic="ticks"}')
            if n is not None:
                if spy is None and n > 0:
                    spy = Profiler(profile, worker.pid, "ingest")
                samples.append((time.perf_counter(), n))
                if n >= ticks:
                    break
            time.sleep(0.05)
        if spy is not None:
            spy.stop()
        arr = np.array(samples)
        t10 = np.interp(0.1 * ticks, arr[:, 1], arr[:, 0])
        t90 = np.interp(0.9 * ticks, arr[:, 1], arr[:, 0])
        worker_rate = 0.8 * ticks / (t90 - t10)
        time.sleep(3.0)  # the idle flush of the replay
        books = _last_mids(events)
        spy = Profiler(profile, worker.pid, "live")
        lat = asyncio.run(_live_latency(bootstrap, names, books, rate, seconds))
        spy.stop()
        processed_live = _metric(port, 'liqwatch_events_processed_total{topic="ticks"}') or 0
        raw_rate = ticks / raw_s
        return {
            "accounts": accounts,
            "ticks": ticks,
            "raw_consume_per_s": round(raw_rate),
            "worker_ticks_per_s": round(worker_rate),
            "worker_vs_raw": round(worker_rate / raw_rate, 3),
            "live_rate_per_s": rate,
            "live_seconds": seconds,
            "live_ticks_processed": int(processed_live - ticks),
            "mark_events": int(lat.size),
            "latency_p50_ms": round(float(np.percentile(lat, 50)), 1) if lat.size else None,
            "latency_p99_ms": round(float(np.percentile(lat, 99)), 1) if lat.size else None,
            "latency_max_ms": round(float(lat.max()), 1) if lat.size else None,
        }
    finally:
        if worker is not None and worker.poll() is None:
            os.killpg(worker.pid, signal.SIGTERM)
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
        if own_stack is not None:
            stack.down(own_stack)


def _last_mids(path: Path) -> list[tuple[str, str, float]]:
    mids: dict[tuple[str, str], float] = {}
    with path.open("rb") as f:
        for line in f:
            if line.startswith(b'{"type":"tick"'):
                ev = json.loads(line)
                mids[(ev["venue"], ev["symbol"])] = (ev["bid"] + ev["ask"]) / 2
    return [(v, s, m) for (v, s), m in sorted(mids.items())]


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
