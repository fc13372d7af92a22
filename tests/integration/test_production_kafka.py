"""Production Kafka on the real local stack: three brokers, SASL_SSL with SCRAM users, a CA of the run.

One cluster (`liqwatch stack up --brokers 3 --auth scram`) for the module: the October evening runs through two
workers with `produce`, `dump` and `replay` all over TLS and SCRAM, and its alerts equal a plaintext run's on the
session's one-broker stack; clients without credentials, with a wrong password or trusting another CA are refused
(by the broker: its log says so; and by liqwatch: one line saying which); the partition leader of the alerts
topic is killed with SIGKILL mid-stream and restarted, and nothing is lost or duplicated. No secret reaches a log
or an output file.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from liqwatch import scenarios
from liqwatch.replay.replayer import compare_alerts, live_alert_key
from liqwatch.tools import stack as lwstack
from liqwatch.tools.certs import make_untrusted_ca
from tests.conftest import close
from tests.integration.conftest import free_ports, port_free
from tests.integration.pipeline import batch_results, differences, outputs_once, produce, read_topic
from tests.integration.test_faults import CASCADE_EVERY_MS, Webhook, evening, start_workers, wait_final_cascades

pytestmark = pytest.mark.integration
PRE = scenarios.config_path("oct-2025", "prefix")
ACCOUNTS = 1000


def cluster_ports() -> tuple[int, int]:
    """Client and controller ports of node 1 such that nodes 2 and 3 (100 and 200 above) are free too."""
    rng = random.Random()
    while True:
        kafka, controller = rng.randrange(20000, 29000), rng.randrange(20000, 29000)
        ports = [p + 100 * i for p in (kafka, controller) for i in range(3)]
        if len(set(ports)) == 6 and all(port_free(p) for p in ports):
            return kafka, controller


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    kafka, controller = cluster_ports()
    prometheus, alertmanager, receiver = free_ports(3)
    cfg = lwstack.StackConfig.resolve(tmp_path_factory.mktemp("cluster"), kafka_port=kafka,
                                      controller_port=controller, prometheus_port=prometheus,
                                      alertmanager_port=alertmanager, receiver_port=receiver, brokers=3, auth="scram")
    t0 = time.monotonic()
    try:
        lwstack.up(cfg)
        print(f"\nthree-broker SASL_SSL cluster up in {time.monotonic() - t0:.1f} s")
        yield cfg
    finally:
        lwstack.down(cfg)


WEBHOOK_SECRET = "production-kafka-webhook-secret"


@pytest.fixture
def webhook(tmp_path, monkeypatch):
    """A real `liqwatch webhook-receiver`, and the config whose workers deliver to it."""
    monkeypatch.setenv("LIQWATCH_WEBHOOK_SECRET", WEBHOOK_SECRET)
    hook = Webhook(tmp_path)
    yield hook
    hook.stop()


def secrets_of(cfg: lwstack.StackConfig) -> list[str]:
    users = json.loads((cfg.state_dir / "config" / "kafka-users.json").read_text())
    return sorted(users.values())


def liqwatch(*args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "liqwatch", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def refusals(cfg: lwstack.StackConfig) -> list[str]:
    """The brokers' own record of the connections they refused."""
    out = []
    for log in sorted((cfg.state_dir / "logs").glob("kafka-*.log")):
        out += [x for x in log.read_text(errors="replace").splitlines() if "Failed authentication" in x]
    return out


def test_stack_status_shows_brokers_controller_and_listeners(cluster):
    p = liqwatch("stack", "status", "--state-dir", str(cluster.state_dir), env={"COLUMNS": "200"})
    assert p.returncode == 0, p.stdout + p.stderr
    out = " ".join(p.stdout.split())
    assert "3 node(s), brokers up [1, 2, 3], active controller node" in out, out
    for node in (1, 2, 3):
        assert f"SASL_SSL://127.0.0.1:{cluster.broker_port(node)}" in out
    # every listener on loopback, and none in plaintext: clients SASL_SSL, the controllers TLS both ways
    for node in (1, 2, 3):
        props = (cluster.state_dir / "kafka" / f"server-{node}.properties").read_text()
        listeners = re.findall(r"^(?:advertised\.)?listeners=(.*)$", props, re.M)
        hosts = [x.split("://")[1].rsplit(":", 1)[0] for line in listeners for x in line.split(",")]
        assert hosts and set(hosts) == {"127.0.0.1"}, listeners
        assert "PLAINTEXT" not in re.search(r"^listener\.security\.protocol\.map=(.*)$", props, re.M).group(1)
        assert "listener.name.controller.ssl.client.auth=required" in props


@pytest.mark.parametrize("case", ["no credentials", "wrong password", "untrusted CA"])
def test_a_client_that_may_not_connect_is_refused(cluster, tmp_path, case):
    other_ca = make_untrusted_ca(tmp_path / "other-ca.pem")
    state = ["--state-dir", str(cluster.state_dir)]
    args, env, said, broker_says = {
        "no credentials": (["--bootstrap", lwstack.bootstrap_servers(cluster)], {},
                           "closed the connection during the handshake: its listener wants SSL or SASL_SSL, not "
                           "PLAINTEXT", "SSL handshake failed"),
        "wrong password": (state, {"LIQWATCH_KAFKA_PASSWORD": "not-the-password"},
                           "refused SCRAM-SHA-512 authentication of user 'liqwatch': wrong password (environment "
                           "variable LIQWATCH_KAFKA_PASSWORD)", "invalid credentials with SASL mechanism SCRAM-SHA-512"),
        "untrusted CA": ([*state, "--ssl-ca", str(other_ca)], {},
                         f"TLS: the certificate of Kafka at 127.0.0.1:{cluster.ports.kafka} is not trusted by the CA "
                         f"in kafka.ca_file ({other_ca})", "SSL handshake failed"),
    }[case]
    events = tmp_path / "ev.jsonl"
    events.write_text(json.dumps({"type": "tick", "venue": "binance", "symbol": "BTC/USDT", "ts": scenarios.T0,
                                  "bid": 100.0, "ask": 100.1}) + "\n")
    commands = [["dump", "liqwatch.alerts"], ["produce", str(events), "--topic-prefix", "refused."],
                ["worker", "-c", str(PRE), "--web-port", str(free_ports(1)[0]), "--topic-prefix", "refused."]]
    for cmd in commands:
        before = len(refusals(cluster))
        p = liqwatch(*cmd, *args, env=env, timeout=120)
        lines = [x for x in p.stderr.splitlines() if x.startswith("error:")]
        assert p.returncode == 1 and len(lines) == 1 and said in lines[0], (cmd, p.stderr[-3000:])
        assert "Traceback" not in p.stderr
        deadline = time.monotonic() + 10
        while not [x for x in refusals(cluster)[before:] if broker_says in x]:  # the broker logged the refusal
            assert time.monotonic() < deadline, (cmd, refusals(cluster)[before:])
            time.sleep(0.2)
        assert not any(s in p.stdout + p.stderr for s in secrets_of(cluster))
    # nothing was written: the refused producer and worker never reached the cluster (no topic was created)
    assert not [t for t in topics(lwstack.connection(cluster)) if t.startswith("refused.")]


def topics(kafka) -> list[str]:
    from confluent_kafka.admin import AdminClient

    return list(AdminClient({**kafka.confluent(), "log_level": 0}).list_topics(timeout=10).topics)


def run_evening(kafka, prefix: str, clean: Path, last_ts: int, tmp: Path, produced_by_cli: list[str] | None,
                config: Path = PRE) -> tuple[list, list[str]]:
    """Two workers on `kafka`, the evening produced (by `liqwatch produce` with `produced_by_cli` as its connection
    options, or in process), until the last cascades are out: the alerts topic, and the workers' command lines
    (what `ps` shows of them)."""
    ws = start_workers(kafka, prefix, tmp, config)
    try:
        cmdlines = [Path(f"/proc/{w.proc.pid}/cmdline").read_bytes().decode(errors="replace") for w in ws]
        if produced_by_cli is None:
            produce(clean, kafka, prefix, 4)
        else:
            p = liqwatch("produce", str(clean), *produced_by_cli, "--topic-prefix", prefix, "--partitions", "4")
            assert p.returncode == 0, p.stderr
            (tmp / "produce.stderr").write_text(p.stdout + p.stderr)
        wait_final_cascades(kafka, prefix, ws, last_ts)
        return read_topic(kafka, prefix + "liqwatch.alerts"), cmdlines
    finally:
        for w in ws:
            w.kill()


def test_scram_end_to_end_equals_plaintext(cluster, stack, tmp_path, webhook):
    clean = tmp_path / "clean.jsonl"
    _, last_ts = evening(clean, ACCOUNTS)
    scram = lwstack.connection(cluster)
    state = ["--state-dir", str(cluster.state_dir)]
    prefix = f"s{uuid.uuid4().hex[:8]}."
    t0 = time.monotonic()
    (tmp_path / "scram").mkdir()
    webhook.start()  # the workers deliver the alerts topic (read over SASL_SSL) to a real receiver
    alerts, cmdlines = run_evening(scram, prefix, clean, last_ts, tmp_path / "scram", state, webhook.config)
    delivered = webhook.assert_has(alerts)
    assert all("--sasl-password-env\0LIQWATCH_KAFKA_PASSWORD" in c for c in cmdlines), cmdlines
    took = time.monotonic() - t0

    # dump and replay over TLS + SCRAM, as a user would
    dumped = tmp_path / "alerts.jsonl"
    p = liqwatch("dump", prefix + "liqwatch.alerts", *state, "--out", str(dumped))
    assert p.returncode == 0, p.stderr
    assert [json.loads(x) for x in dumped.read_text().splitlines()] == alerts
    r = liqwatch("replay", *state, "--topic-prefix", prefix, "--from", "2025-10-10T20:00:00Z", "--to",
                 str(last_ts + 1000), "-c", str(webhook.config), "--report", str(tmp_path / "pm"),
                 "--cascade-every-ms", str(CASCADE_EVERY_MS))
    assert r.returncode == 0, r.stderr
    (tmp_path / "cli.log").write_text(p.stdout + p.stderr + r.stdout + r.stderr)
    replayed = [json.loads(x) for x in (tmp_path / "pm" / f"alerts-{webhook.config.stem}.jsonl").read_text()
                .splitlines()]
    assert len(alerts) > 10 and compare_alerts(alerts, replayed) == ([], [])
    health, cascades = batch_results(webhook.config, clean)
    assert differences(scram, prefix, health, cascades) == []

    # the same evening in plaintext on the session's one-broker stack: the same alerts
    plain = lwstack.bootstrap_servers(stack)
    (tmp_path / "plain").mkdir()
    t1 = time.monotonic()
    plain_alerts, _ = run_evening(plain, f"p{uuid.uuid4().hex[:8]}.", clean, last_ts, tmp_path / "plain", None,
                                  webhook.config)
    assert compare_alerts(alerts, plain_alerts) == ([], []) and len(alerts) == len(plain_alerts)
    # whole events, not only their keys: values to 1e-9 (sums over shards are added in the order the partitions
    # were assigned, which differs between runs in the last bits)
    by_key = {live_alert_key(a): a for a in plain_alerts}
    for a in alerts:
        b = by_key[live_alert_key(a)]
        assert {k: v for k, v in a.items() if k != "value"} == {k: v for k, v in b.items() if k != "value"}
        assert close(a["value"], b["value"], rel=1e-9), (a, b)
    print(f"\nSASL_SSL/SCRAM on 3 brokers: {len(alerts)} alerts = replay = plaintext run, {delivered} delivered "
          f"by webhook; health = batch "
          f"(scram run {took:.0f} s, plaintext run {time.monotonic() - t1:.0f} s)")

    # no secret anywhere: worker logs and command lines, CLI output, the dump, the report, the brokers' logs
    secrets = [*secrets_of(cluster), WEBHOOK_SECRET]
    assert not any(s in c for s in secrets for c in cmdlines)
    files = [f for f in tmp_path.rglob("*") if f.is_file()] + [
        f for f in (cluster.state_dir / "logs").rglob("*") if f.is_file()]
    assert len(files) > 10
    for f in files:
        data = f.read_bytes()
        assert not any(s.encode() in data for s in secrets), f


def outputs_equal_replay_and_batch(kafka, cluster, prefix: str, clean: Path, last_ts: int,
                                   tmp: Path) -> tuple[dict, int]:
    """Alerts = replay, every account's last health = batch, cascades = batch, no output record twice."""
    alerts = read_topic(kafka, prefix + "liqwatch.alerts")
    r = liqwatch("replay", "--state-dir", str(cluster.state_dir), "--topic-prefix", prefix, "--from",
                 "2025-10-10T20:00:00Z", "--to", str(last_ts + 1000), "-c", str(PRE), "--report",
                 str(tmp / "pm"), "--cascade-every-ms", str(CASCADE_EVERY_MS))
    assert r.returncode == 0, r.stderr
    replayed = [json.loads(x) for x in (tmp / "pm" / f"alerts-{PRE.stem}.jsonl").read_text().splitlines()]
    assert len(alerts) > 10 and compare_alerts(alerts, replayed) == ([], []) and len(alerts) == len(replayed)
    health, cascades = batch_results(PRE, clean)
    assert differences(kafka, prefix, health, cascades) == []
    counts = outputs_once(kafka, prefix)
    return counts, len(alerts)


def rebalances(ws) -> int:
    """Partition assignments the workers' logs show so far (Faust logs one per rebalance and worker)."""
    return sum((w.log_dir / f"{w.worker_id}.log").read_text(errors="replace").count("Executing _on_partitions_assigned")
               for w in ws)


def leader_of(kafka, topic: str) -> int:
    from confluent_kafka.admin import AdminClient

    md = AdminClient({**kafka.confluent(), "log_level": 0}).list_topics(topic, timeout=10)
    return md.topics[topic].partitions[0].leader


@pytest.mark.faults
def test_alerts_leader_killed_mid_stream(cluster, tmp_path):
    """kill -9 of the broker leading the alerts topic's partition while the evening streams in, then restarted."""
    from confluent_kafka.admin import AdminClient

    kafka = lwstack.connection(cluster)
    prefix = f"k{uuid.uuid4().hex[:8]}."
    clean = tmp_path / "clean.jsonl"
    valid, last_ts = evening(clean, ACCOUNTS)
    ws = start_workers(kafka, prefix, tmp_path, PRE)
    settled = rebalances(ws)
    admin = AdminClient({**kafka.confluent(), "log_level": 0})
    producer = None
    try:
        log = (tmp_path / "produce.log").open("wb")
        producer = subprocess.Popen([sys.executable, "-m", "liqwatch", "produce", str(clean), *kafka.options(),
                                     "--topic-prefix", prefix, "--partitions", "4", "--speed", "150"],
                                    stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **kafka.child_env()})
        time.sleep(20)
        topic = prefix + "liqwatch.alerts"
        victim = leader_of(kafka, topic)
        group = prefix.rstrip(".")  # the workers' app id: their consumer group
        coordinator = admin.describe_consumer_groups([group])[group].result(10).coordinator.id
        name = f"kafka-{victim}"
        pid = int(cluster.pid_file(name).read_text())
        leaderless: list[float] = []
        done = threading.Event()

        def watch() -> None:  # from the kill to the first metadata naming a live leader
            t_kill = time.monotonic()
            while not done.is_set():
                try:
                    leader = admin.list_topics(topic, timeout=2).topics[topic].partitions[0].leader
                except Exception:  # noqa: BLE001 - the cluster may not answer for a moment: still leaderless
                    leader = -1
                if leader not in (-1, victim):
                    leaderless.append(time.monotonic() - t_kill)
                    return
                time.sleep(0.05)

        os.kill(pid, signal.SIGKILL)
        watcher = threading.Thread(target=watch)
        watcher.start()
        watcher.join(60)
        done.set()
        assert leaderless, "no new leader within 60 s"
        time.sleep(15)
        t_up = time.monotonic()
        lwstack.up(cluster, services=[name])
        rejoined = time.monotonic() - t_up
        assert producer.wait(600) == 0, (tmp_path / "produce.log").read_text()[-3000:]
        wait_final_cascades(kafka, prefix, ws, last_ts)

        # nothing lost: the inputs hold the file's events once each; nothing dead-lettered
        kinds = Counter(json.loads(v)["type"] for v in valid)
        for kind, topic_name in (("tick", "ticks"), ("reference", "references"), ("account", "accounts")):
            got = read_topic(kafka, f"{prefix}liqwatch.{topic_name}")
            assert len(got) == kinds[kind], (kind, len(got), kinds[kind])
        assert read_topic(kafka, prefix + "liqwatch.deadletter") == []
        counts, n_alerts = outputs_equal_replay_and_batch(kafka, cluster, prefix, clean, last_ts, tmp_path)
        rebalanced = rebalances(ws) - settled
        print(f"\nalerts leader (node {victim}, group coordinator {coordinator}) killed: {leaderless[0]:.2f} s "
              f"without a leader, restarted in {rejoined:.1f} s; {rebalanced} partition assignment(s) in the workers "
              f"after it; alerts = replay ({n_alerts}), health = batch, no "
              f"record lost or twice ({', '.join(f'{k} {n:,}' for k, n in counts.items())})")
    finally:
        if producer is not None and producer.poll() is None:
            producer.kill()
        for w in ws:
            w.kill()
