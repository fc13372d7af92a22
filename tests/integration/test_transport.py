"""`produce` / `dump` against a real broker: every line once, on the right topic, key, partition and timestamp,
per-key order kept; malformed lines reach the --unknown-to topic; dump stops by itself; the CLI's exit codes
and messages. Every test uses its own topic prefix, so it never meets the workers' topics or other tests."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.partitioner import DefaultPartitioner

from liqwatch.kafka import Connection
from liqwatch.tools import stack as lwstack
from liqwatch.sinks import topics as T
from liqwatch.tools import transport as tr

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bootstrap(stack: lwstack.StackConfig) -> str:
    return lwstack.bootstrap_servers(stack)


@pytest.fixture(scope="module")
def calm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's `calm` scenario, 200 accounts (~209k events)."""
    out = tmp_path_factory.mktemp("transport") / "calm.jsonl"
    subprocess.run([sys.executable, "-m", "liqwatch", "scenario", "calm", "--accounts", "200", "--out", str(out)],
                   cwd=REPO, check=True, capture_output=True)
    return out


def prefix() -> str:
    return f"t-{uuid.uuid4().hex[:10]}."


def inputs(pre: str) -> dict[str, str]:
    """type → input topic under the prefix `pre`."""
    return {t: pre + name for t, name in T.INPUT_OF_TYPE.items()}


def read_all(bootstrap: str, topic: str) -> list[Any]:
    """Every record of `topic` (key, partition, offset, timestamp), by partition then offset."""

    async def go() -> list[Any]:
        c = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                             auto_offset_reset="earliest")
        await c.start()
        try:
            cluster = await c._client.fetch_all_metadata()
            tps = [TopicPartition(topic, p) for p in sorted(cluster.partitions_for_topic(topic))]
            c.assign(tps)
            end = await c.end_offsets(tps)
            out: list[Any] = []
            while any([await c.position(tp) < end[tp] for tp in tps]):
                for msgs in (await c.getmany(timeout_ms=500)).values():
                    out += msgs
            return sorted(out, key=lambda m: (m.partition, m.offset))
        finally:
            await c.stop()

    return asyncio.run(go())


def dump(bootstrap: str, topic: str, path: Path, **kw: Any) -> tuple[int, list[bytes]]:
    n = asyncio.run(tr.dump_topic(topic, Connection.plain(bootstrap), path, until_idle=kw.pop("until_idle", 0.5),
                                  progress=False,
                                  **kw))
    return n, path.read_bytes().splitlines()


def test_every_line_once_on_its_topic_key_partition_and_timestamp(bootstrap: str, calm: Path, tmp_path: Path):
    pre = prefix()
    names = inputs(pre)
    report = asyncio.run(tr.produce_file(calm, Connection.plain(bootstrap), prefix=pre, progress=False))

    lines = calm.read_bytes().splitlines()
    by_type: dict[str, list[bytes]] = defaultdict(list)
    for line in lines:
        by_type[json.loads(line)["type"]].append(line)
    assert report.events == len(lines) and report.unroutable == 0 and report.unkeyed == 0
    assert dict(report.by_type) == {t: len(v) for t, v in by_type.items()}
    assert report.summary().startswith(f"produced {len(lines):,} events: ticks {len(by_type['tick']):,} · ")

    hasher = DefaultPartitioner()
    for etype, topic in names.items():
        records = read_all(bootstrap, topic)
        assert sorted(r.value for r in records) == sorted(by_type[etype]), topic  # each line exactly once
        parts = sorted({r.partition for r in records})
        n_parts = 8 if etype == "account" else 1  # topics.topic_specs: accounts sharded, the rest 1 partition
        assert len(parts) <= n_parts and (etype != "account" or len(parts) > 1)
        for r in records:
            event = json.loads(r.value)
            assert r.key == T.key_of(event)
            assert r.timestamp == event["ts"]
            # murmur2 like the Java client and Faust, so a key always lands where the workers expect it
            assert r.partition == hasher(r.key, list(range(n_parts)), list(range(n_parts)))
        # per key, offsets follow file order
        in_kafka: dict[bytes, list[bytes]] = defaultdict(list)
        for r in records:
            in_kafka[r.key].append(r.value)
        in_file: dict[bytes, list[bytes]] = defaultdict(list)
        for line in by_type[etype]:
            in_file[T.key_of(json.loads(line))].append(line)
        assert in_kafka == in_file

        n, dumped = dump(bootstrap, topic, tmp_path / f"{etype}.jsonl")
        assert n == len(dumped) == len(by_type[etype])
        if n_parts == 1:
            assert dumped == by_type[etype]  # one partition: exactly the file's lines in the file's order
        else:
            assert sorted(dumped) == sorted(by_type[etype])


def test_dump_merges_partitions_by_timestamp(bootstrap: str, tmp_path: Path):
    # 300 accounts over 8 partitions, strictly increasing ts: the merged dump is the file itself.
    lines = [json.dumps({"type": "account", "account": f"a{i % 37}", "ts": 1_760_000_000_000 + i,
                         "collateral": {"USDT": i}, "borrowed": {}, "positions": []}).encode() for i in range(300)]
    src = tmp_path / "accounts.jsonl"
    src.write_bytes(b"\n".join(lines) + b"\n")
    pre = prefix()
    asyncio.run(tr.produce_file(src, Connection.plain(bootstrap), prefix=pre, progress=False))
    n, dumped = dump(bootstrap, pre + T.ACCOUNTS, tmp_path / "out.jsonl")
    assert n == 300 and dumped == lines
    n, dumped = dump(bootstrap, pre + T.ACCOUNTS, tmp_path / "max.jsonl", max_messages=25)
    assert n == 25 and dumped == lines[:25]


def test_malformed_lines_reach_the_unknown_topic_and_are_counted(bootstrap: str, tmp_path: Path):
    good = [b'{"type":"tick","venue":"binance","symbol":"BTC/USDT","ts":1760126400001,"bid":1.0,"ask":2.0}',
            b'{"type":"reference","asset":"USDe","ts":1760126400002,"in":"USD","rate":1.0}']
    bad = [b"not json", b'{"type":"weird","ts":1760126400003}', b"[1,2]", b'{"ts":1760126400004}',
           b'{"type": "tick", "broken', b"\xff\xfe not utf-8"]
    src = tmp_path / "mixed.jsonl"
    src.write_bytes(b"\n".join([good[0], bad[0], bad[1], b"", good[1], *bad[2:]]) + b"\n")
    pre = prefix()
    unknown = pre + "unknown"
    report = asyncio.run(tr.produce_file(src, Connection.plain(bootstrap), prefix=pre, unknown_to=unknown,
                                         progress=False))
    assert (report.events, report.unroutable, report.by_type["tick"], report.by_type["reference"]) == (8, 6, 1, 1)
    assert "unroutable 6" in report.summary()

    records = read_all(bootstrap, unknown)
    assert [r.value for r in records] == bad and all(r.key is None for r in records)  # 1 partition: file order
    n, dumped = dump(bootstrap, unknown, tmp_path / "unknown.jsonl")
    assert n == 6
    assert dumped[1:3] == bad[1:3] and dumped[3] == bad[3]  # JSON as is
    raw = [json.loads(d) for d in (dumped[0], dumped[4], dumped[5])]  # not JSON, or not UTF-8: wrapped
    assert [base64.b64decode(r["_raw_base64"]) for r in raw] == [bad[0], bad[4], bad[5]]
    assert [r["_offset"] for r in raw] == [0, 4, 5]


def test_dump_stops_by_itself_and_an_empty_topic_gives_nothing(bootstrap: str, tmp_path: Path):
    pre = prefix()
    asyncio.run(tr.ensure_topics(Connection.plain(bootstrap), {pre + T.TICKS: 1}))
    t0 = time.monotonic()
    n, dumped = dump(bootstrap, pre + T.TICKS, tmp_path / "empty.jsonl", until_idle=1.0)
    assert n == 0 and dumped == []
    assert 1.0 <= time.monotonic() - t0 < 10

    src = tmp_path / "one.jsonl"
    src.write_bytes(b'{"type":"tick","venue":"okx","symbol":"BTC/USDT","ts":1760126400001,"bid":1,"ask":2}\n')
    asyncio.run(tr.produce_file(src, Connection.plain(bootstrap), prefix=pre, progress=False))
    n, _ = dump(bootstrap, pre + T.TICKS, tmp_path / "latest.jsonl", from_beginning=False)
    assert n == 0  # --latest: only what arrives after the start


def test_rate_and_speed_pace_the_sending(bootstrap: str, tmp_path: Path):
    src = tmp_path / "paced.jsonl"
    # 101 ticks over 1 s of event time
    src.write_text("".join(json.dumps({"type": "tick", "venue": "okx", "symbol": "BTC/USDT", "ts": 1760126400000
                                       + 10 * i, "bid": 1, "ask": 2}) + "\n" for i in range(101)))
    pre = prefix()
    for kw, low, high in (({"rate": 200.0}, 0.45, 3.0), ({"speed": 2.0}, 0.45, 3.0), ({}, 0.0, 0.45)):
        report = asyncio.run(tr.produce_file(src, Connection.plain(bootstrap), prefix=pre, progress=False, **kw))
        assert low <= report.seconds < high, (kw, report.seconds)
    assert len(read_all(bootstrap, pre + T.TICKS)) == 303


# --------------------------------------------------------------------------- the CLI


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "liqwatch.cli.transport", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_produce_and_dump(bootstrap: str, calm: Path, tmp_path: Path):
    pre = prefix()
    done = cli("produce", str(calm), "--bootstrap", bootstrap, "--topic-prefix", pre)
    assert done.returncode == 0, done.stderr
    n_lines = len(calm.read_bytes().splitlines())
    assert f"produced {n_lines:,} events: ticks " in done.stderr and "unroutable 0" in done.stderr

    out = tmp_path / "refs.jsonl"
    done = cli("dump", pre + T.REFERENCES, "--bootstrap", bootstrap, "--out", str(out), "--until-idle", "0.5")
    refs = [line for line in calm.read_bytes().splitlines() if b'"type":"reference"' in line]
    assert done.returncode == 0, done.stderr
    assert f"dumped {len(refs):,} messages from {pre}{T.REFERENCES}" in done.stderr
    assert out.read_bytes().splitlines() == refs

    done = cli("dump", pre + T.TICKS, "--bootstrap", bootstrap, "--max", "3")  # stdout
    assert done.returncode == 0 and len(done.stdout.splitlines()) == 3

    asyncio.run(tr.ensure_topics(Connection.plain(bootstrap), {pre + "empty": 1}))
    done = cli("dump", pre + "empty", "--bootstrap", bootstrap, "--until-idle", "0.3")
    assert done.returncode == 0 and done.stdout == "" and "is empty: dumped 0 messages" in done.stderr


def test_cli_errors_are_one_line_without_traceback(bootstrap: str, calm: Path, tmp_path: Path):
    dead = f"127.0.0.1:{free_port()}"
    for args in (["produce", str(calm), "--bootstrap", dead], ["dump", "liqwatch.ticks", "--bootstrap", dead]):
        done = cli(*args, timeout=60)
        assert done.returncode == 1, done
        assert done.stderr.strip() == done.stderr.strip().splitlines()[0]  # one line
        assert done.stderr.startswith(f"error: cannot reach Kafka at {dead}: ") and "Traceback" not in done.stderr

    bad_args = [
        (["produce", str(calm), "--bootstrap", "nohost"], "--bootstrap"),
        (["produce", str(calm), "--bootstrap", bootstrap, "--rate", "10", "--speed", "2"], "--rate and --speed"),
        (["produce", str(calm), "--bootstrap", bootstrap, "--rate", "-1"], "--rate"),
        (["produce", str(tmp_path / "missing.jsonl"), "--bootstrap", bootstrap], "FILE"),
        (["produce", str(calm), "--state-dir", str(tmp_path)], "--state-dir"),
        (["produce", str(calm), "--partitions", "0"], "--partitions"),
        (["dump", "x", "--bootstrap", bootstrap, "--until-idle", "0"], "--until-idle"),
        (["dump", f"no-such-{uuid.uuid4().hex}", "--bootstrap", bootstrap], "TOPIC"),
    ]
    for args, option in bad_args:
        done = cli(*args, timeout=60)
        assert done.returncode == 2, (args, done.stderr)
        assert option in done.stderr and "Traceback" not in done.stderr, (args, done.stderr)


def test_cli_follow_until_interrupted(bootstrap: str, tmp_path: Path):
    pre = prefix()
    asyncio.run(tr.ensure_topics(Connection.plain(bootstrap), {pre + T.REFERENCES: 1}))
    out = tmp_path / "followed.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "liqwatch.cli.transport", "dump", pre + T.REFERENCES,
                             "--bootstrap", bootstrap, "--follow", "--out", str(out)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        src = tmp_path / "refs.jsonl"
        src.write_text("".join(json.dumps({"type": "reference", "asset": "USDe", "ts": 1760126400000 + i,
                                           "in": "USD", "rate": 1.0}) + "\n" for i in range(50)))
        asyncio.run(tr.produce_file(src, Connection.plain(bootstrap), prefix=pre, progress=False))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(out.read_bytes().splitlines() if out.exists() else []) < 50:
            time.sleep(0.2)
        time.sleep(2.5)  # past the default --until-idle: --follow must not stop
        assert proc.poll() is None
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130 and "Traceback" not in err
    assert out.read_bytes().splitlines() == src.read_bytes().splitlines()
