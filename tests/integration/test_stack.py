"""The local stack for real: Kafka answers and round-trips, Prometheus/Alertmanager are ready
and configured, everything listens on 127.0.0.1 only, and up/down behave."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaTimeoutError, UnknownTopicOrPartitionError

from liqwatch.tools import stack as lwstack

pytestmark = pytest.mark.integration

MakeConfig = Callable[[Path], lwstack.StackConfig]

_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_get(url: str) -> tuple[int, bytes]:
    with _NO_PROXY.open(url, timeout=5) as resp:
        return resp.status, resp.read()


def _decode_addr(hex_addr: str) -> tuple[str, int]:
    host_hex, port_hex = hex_addr.split(":")
    raw = bytes.fromhex(host_hex)
    if len(raw) == 4:
        host = socket.inet_ntop(socket.AF_INET, raw[::-1])
    else:  # four little-endian 32-bit words
        v6 = ipaddress.IPv6Address(b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4)))
        host = str(v6.ipv4_mapped or v6)
    return host, int(port_hex, 16)


def listening_sockets(pid: int) -> set[tuple[str, str, int]]:
    """(proto, host, port) of every listening TCP / unconnected UDP socket of `pid`."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = set()
    for proto in ("tcp", "tcp6", "udp", "udp6"):
        for line in Path(f"/proc/{pid}/net/{proto}").read_text().splitlines()[1:]:
            f = line.split()
            local, remote, state, inode = f[1], f[2], f[3], f[9]
            listening = state == "0A" if proto.startswith("tcp") else remote.endswith(":0000")
            if inode in inodes and listening:
                found.add((proto, *_decode_addr(local)))
    return found


def process_gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"  # exited, awaiting its parent's reap


# --------------------------------------------------------------------------- shared stack


def test_kafka_metadata_and_round_trip(stack: lwstack.StackConfig) -> None:
    bootstrap = lwstack.bootstrap_servers(stack)
    topic = f"stack-test-{uuid.uuid4().hex[:8]}"

    async def run() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            cluster = await admin.describe_cluster()
            assert [(b["host"], b["port"]) for b in cluster["brokers"]] == [("127.0.0.1", stack.ports.kafka)]
            await admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])
        finally:
            await admin.close()

        producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait(topic, b"liq-1", key=b"BTC")
        finally:
            await producer.stop()

        consumer = AIOKafkaConsumer(
            topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=f"g-{topic}"
        )
        await consumer.start()
        try:
            msg = await asyncio.wait_for(consumer.getone(), timeout=30)
        finally:
            await consumer.stop()
        assert (msg.key, msg.value) == (b"BTC", b"liq-1")

    asyncio.run(run())


def test_topics_are_not_auto_created(stack: lwstack.StackConfig) -> None:
    bootstrap = lwstack.bootstrap_servers(stack)

    async def run() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, request_timeout_ms=2000)
        await producer.start()
        try:
            with pytest.raises((UnknownTopicOrPartitionError, KafkaTimeoutError)):
                await producer.send_and_wait("no-such-topic", b"x")
        finally:
            await producer.stop()
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            assert "no-such-topic" not in await admin.list_topics()
        finally:
            await admin.close()

    asyncio.run(run())


def test_prometheus_and_alertmanager_ready(stack: lwstack.StackConfig) -> None:
    assert http_get(f"{lwstack.prometheus_url(stack)}/-/ready")[0] == 200
    assert http_get(f"{lwstack.alertmanager_url(stack)}/-/ready")[0] == 200
    _, body = http_get(f"{lwstack.prometheus_url(stack)}/api/v1/alertmanagers")
    urls = [a["url"] for a in json.loads(body)["data"]["activeAlertmanagers"]]
    assert urls == [f"{lwstack.alertmanager_url(stack)}/api/v2/alerts"]


def test_status_reports_healthy(stack: lwstack.StackConfig) -> None:
    rows = lwstack.status(stack.state_dir)
    assert [r.name for r in rows] == ["kafka", "prometheus", "alertmanager"]
    assert all(r.healthy and r.pid for r in rows), rows
    assert lwstack.load(stack.state_dir) == stack


def test_everything_listens_on_loopback_only(stack: lwstack.StackConfig) -> None:
    p = stack.ports
    expected = {"kafka": {p.kafka, p.controller}, "prometheus": {p.prometheus}, "alertmanager": {p.alertmanager}}
    for row in lwstack.status(stack):
        assert row.pid is not None
        socks = listening_sockets(row.pid)
        assert {host for _, host, _ in socks} == {"127.0.0.1"}, (row.name, socks)
        assert {port for _, _, port in socks} == expected[row.name], (row.name, socks)


def test_registered_target_is_scraped(stack: lwstack.StackConfig) -> None:
    # Alertmanager serves /metrics, so it stands in for a worker.
    lwstack.register_scrape_target(stack.state_dir, "selftest", stack.ports.alertmanager)

    def liqwatch_targets() -> list[dict[str, object]]:
        _, body = http_get(f"{lwstack.prometheus_url(stack)}/api/v1/targets")
        return [t for t in json.loads(body)["data"]["activeTargets"] if t["labels"]["job"] == "liqwatch"]

    deadline = time.monotonic() + 20
    while not any(t["health"] == "up" for t in liqwatch_targets()):
        assert time.monotonic() < deadline, liqwatch_targets()
        time.sleep(0.5)
    [target] = liqwatch_targets()
    assert target["labels"] == {
        "job": "liqwatch",
        "instance": f"127.0.0.1:{stack.ports.alertmanager}",
        "worker": "selftest",
    }

    assert lwstack.unregister_scrape_target(stack.state_dir, "selftest")
    assert not lwstack.unregister_scrape_target(stack.state_dir, "selftest")
    deadline = time.monotonic() + 20
    while liqwatch_targets():
        assert time.monotonic() < deadline
        time.sleep(0.5)


def test_promtool_accepts_generated_config(stack: lwstack.StackConfig) -> None:
    done = subprocess.run(
        ["/usr/bin/promtool", "check", "config", str(stack.state_dir / "config" / "prometheus.yml")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_amtool_accepts_alertmanager_config() -> None:
    done = subprocess.run(
        ["/usr/bin/amtool", "check-config", str(lwstack.DASHBOARDS_DIR / "alertmanager.yml")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr


# --------------------------------------------------------------------------- own stacks


def test_up_is_idempotent_and_down_stops_everything(tmp_path: Path, make_stack_config: MakeConfig) -> None:
    cfg = make_stack_config(tmp_path)
    try:
        first = {r.name: r.pid for r in lwstack.up(cfg)}
        again = {r.name: r.pid for r in lwstack.up(cfg)}
        assert again == first and all(first.values())
    finally:
        stopped = lwstack.down(cfg)
    assert sorted(stopped) == ["alertmanager", "kafka", "prometheus"]
    assert all(process_gone(pid) for pid in first.values() if pid)
    assert not any((tmp_path / "run").iterdir())
    assert not any(r.running for r in lwstack.status(cfg))
    assert lwstack.down(cfg) == []


def test_down_leaves_foreign_processes_alone(tmp_path: Path, make_stack_config: MakeConfig) -> None:
    cfg = make_stack_config(tmp_path)
    (tmp_path / "run").mkdir()
    stranger = subprocess.Popen(["sleep", "30"])
    try:
        cfg.pid_file("kafka").write_text(f"{stranger.pid}\n")  # e.g. a recycled pid
        assert lwstack.down(cfg) == []
        assert stranger.poll() is None
        assert not cfg.pid_file("kafka").exists()
    finally:
        stranger.kill()
        stranger.wait()


def test_port_clash_starts_nothing(tmp_path: Path, make_stack_config: MakeConfig) -> None:
    cfg = make_stack_config(tmp_path)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", cfg.ports.prometheus))
        squatter.listen()
        with pytest.raises(lwstack.StackError, match=f"127.0.0.1:{cfg.ports.prometheus}"):
            lwstack.up(cfg)
    assert not list((tmp_path / "run").iterdir())


def test_failed_start_reports_log_tail(tmp_path: Path, make_stack_config: MakeConfig) -> None:
    dashboards = tmp_path / "dashboards"
    shutil.copytree(lwstack.DASHBOARDS_DIR, dashboards)
    (dashboards / "alertmanager.yml").write_text("route: {receiver: nowhere}\nreceivers: []\n")
    cfg = lwstack.StackConfig(
        state_dir=tmp_path / "state", ports=make_stack_config(tmp_path).ports, dashboards_dir=dashboards
    )
    with pytest.raises(lwstack.StackError) as err:
        lwstack.up(cfg, services=["alertmanager"])
    assert "alertmanager failed to start (exited)" in str(err.value)
    assert "nowhere" in str(err.value)  # the log's complaint about the undefined receiver
    assert not cfg.pid_file("alertmanager").exists()
