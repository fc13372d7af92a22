"""Workers with market stages (`liqwatch worker --market-stage`) on the real broker, ticks in several partitions:
the stages share the decoding, the workers' last health and cascade events still equal the batch run, a bad tick
is dead-lettered (by each worker, as every market record), and a stage killed mid-stream is started again and
resumes where its last staged record ends (no tick lost, none applied twice)."""

from __future__ import annotations

import asyncio
import base64
import os
import random
import re
import signal
import time
import uuid

import pytest

from liqwatch.kafka import Connection
from liqwatch.core.staged import unpack
from liqwatch.tools import stack as lwstack
from liqwatch.tools import transport
from tests.integration.pipeline import (Worker, batch_results, metric_sum, produce_paced, read_topic, settle,
                                        wait_converged)
from tests.integration.test_pipeline import CONFIG, PARTITIONS, write
from tests.populations import population

pytestmark = pytest.mark.integration
TICK_PARTITIONS = 3


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:8]}."


def staged_workers(n, bootstrap, prefix, tmp_path) -> list[Worker]:
    return [Worker(CONFIG, bootstrap, prefix, f"s{i + 1}", PARTITIONS, tmp_path,
                   extra_args=("--market-stage",)).start() for i in range(n)]


def create(bootstrap: str, prefix: str) -> None:
    from liqwatch.sinks.topics import create_topics

    asyncio.run(create_topics(Connection.plain(bootstrap), PARTITIONS, prefix, TICK_PARTITIONS))


def stage_pids(w: Worker) -> list[int]:
    """The worker's market stage child (a session of its own: not in the worker's process group)."""
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        if ppid == w.proc.pid and b"market-stage" in cmd:
            out.append(int(pid))
    return out


def test_staged_workers_equal_batch_and_dead_letter_bad_ticks(stack, prefix, tmp_path):
    bootstrap = lwstack.bootstrap_servers(stack)
    rng = random.Random(8)
    good = population(31, 1200, steps=50)
    t_mid = good[len(good) // 2]["ts"]
    bad = []
    for i in range(40):
        bad.append('{"type": "tick", "venue": "binance", "symbol": "BTC/USDT", "ts": ' + str(t_mid) + ', "bid": ')
        bad.append({"type": "tick", "venue": "okx", "symbol": "BTC/USDT", "ts": t_mid, "bid": -1.0, "ask": 2.0})
    mixed = list(good)
    for b in bad:
        mixed.insert(rng.randrange(len(mixed) + 1), b)
    events = write(tmp_path / "ev.jsonl", mixed)
    health, cascades = batch_results(CONFIG, events)
    create(bootstrap, prefix)
    ws = staged_workers(2, bootstrap, prefix, tmp_path)
    try:
        settle(ws, PARTITIONS)
        asyncio.run(transport.produce_file(events, Connection.plain(bootstrap), partitions=PARTITIONS, prefix=prefix,
                                           tick_partitions=TICK_PARTITIONS, progress=False,
                                           unknown_to=prefix + "liqwatch.ticks"))  # the unparseable ones too
        diff = wait_converged(bootstrap, prefix, health, cascades, ws)
        assert diff == [], diff[:10]
        # every tick staged exactly once, the partitions' offsets covered without a gap, by both stages
        covered: dict[int, list[tuple[int, int]]] = {}
        for rec in read_topic(bootstrap, prefix + "liqwatch.market"):
            st = unpack(base64.b64decode(rec["_raw_base64"]))
            covered.setdefault(st.partition, []).append((st.first, st.last))
        assert sorted(covered) == list(range(TICK_PARTITIONS))
        for spans in covered.values():
            assert [a for a, _ in spans] == [0] + [b + 1 for _, b in spans[:-1]]
        n_ticks = sum(1 for e in mixed if isinstance(e, str) or e["type"] == "tick")
        assert sum(b - a + 1 for spans in covered.values() for a, b in spans) == n_ticks
        dead = read_topic(bootstrap, prefix + "liqwatch.deadletter")
        assert len(dead) == 2 * len(bad), [d["kind"] for d in dead][:10]  # every worker letters market records
        assert {d["topic"] for d in dead} == {prefix + "liqwatch.ticks"}
        assert {d["kind"] for d in dead} == {"invalid_json", "bad_number"}
        for w in ws:
            assert metric_sum(w.metrics(), "liqwatch_deadletter_total") == len(bad)
            assert len(stage_pids(w)) == 1, w.log_tail()
    finally:
        for w in ws:
            w.kill()
    for w in ws:  # a stopped worker stops its stage
        assert stage_pids(w) == []


def test_a_stage_killed_mid_stream_is_restarted_and_loses_nothing(stack, prefix, tmp_path):
    bootstrap = lwstack.bootstrap_servers(stack)
    good = population(32, 1000, steps=120)  # two minutes of event time, produced in about six seconds
    events = write(tmp_path / "ev.jsonl", good)
    n_ticks = sum(e["type"] == "tick" for e in good)
    health, cascades = batch_results(CONFIG, events)
    create(bootstrap, prefix)
    ws = staged_workers(1, bootstrap, prefix, tmp_path)
    try:
        settle(ws, PARTITIONS)
        producer = produce_paced(events, bootstrap, prefix, PARTITIONS, speed=20)
        time.sleep(3)
        (pid,) = stage_pids(ws[0])
        os.kill(pid, signal.SIGKILL)
        assert producer.wait(300) == 0, producer.log.read_text()[-2000:]
        diff = wait_converged(bootstrap, prefix, health, cascades, ws)
        assert diff == [], diff[:10]
        (again,) = stage_pids(ws[0])
        assert again != pid
        text = (tmp_path / "s1.log").read_text()
        assert "market stage ended with status -9" in text
        # the new stage resumed where the staged records end, before the end of the ticks: mid-stream
        resumed = re.findall(r"stages \S+ from offsets ([\d,]+)", text)
        assert len(resumed) == 2 and 0 < sum(map(int, resumed[1].split(","))) < n_ticks, resumed
        # every tick staged, no gap: a record staged twice (killed between publishing and nothing) is allowed,
        # and the workers' equality with the batch run says none was applied twice
        covered: dict[int, list[tuple[int, int]]] = {}
        for rec in read_topic(bootstrap, prefix + "liqwatch.market"):
            st = unpack(base64.b64decode(rec["_raw_base64"]))
            covered.setdefault(st.partition, []).append((st.first, st.last))
        total = 0
        for spans in covered.values():
            upto = -1
            for a, b in spans:
                assert a <= upto + 1, spans
                total += max(b - upto, 0)
                upto = max(upto, b)
        assert total == n_ticks
        assert metric_sum(ws[0].metrics(), "liqwatch_deadletter_total") == 0
    finally:
        for w in ws:
            w.kill()
