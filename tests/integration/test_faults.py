"""The fault suite: the live pipeline on the real broker while things break.

Each test runs two workers on the October evening (1,500 accounts, cascades every 5 min of event time) and
asserts, after the fault, what a clean run gives: the alerts topic equals `liqwatch replay` of the same topics
(ids, states, severities, event times), every account's last `health` equals the batch command on the valid
events, and nothing was dead-lettered that was valid or lost that was not.
"""

from __future__ import annotations

import base64
import signal
import json
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from liqwatch import scenarios
from liqwatch.tools import stack as lwstack
from liqwatch.replay.replayer import compare_alerts
from liqwatch.scenarios import T0
from tests import fuzz
from tests.integration.conftest import free_ports
from tests.integration.pipeline import (Worker, batch_results, differences, metric_sum, outputs_once, produce,
                                        produce_paced, read_topic, settle)

pytestmark = [pytest.mark.integration, pytest.mark.faults]
PARTITIONS = 4
PRE = scenarios.config_path("oct-2025", "prefix")
CASCADE_EVERY_MS = 300_000
MIN = 60_000


def liqwatch(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "liqwatch", *args], capture_output=True, text=True, timeout=600)


def evening(path: Path, accounts: int = 1500) -> tuple[list[bytes], int]:
    valid = [json.dumps(ev).encode() for ev in scenarios.generate("oct-2025", accounts, seed=7)]
    path.write_bytes(b"\n".join(valid) + b"\n")
    return valid, max(json.loads(v)["ts"] for v in valid)


class Webhook:
    """A real `liqwatch webhook-receiver` on a free port, and the config whose workers send to it."""

    def __init__(self, tmp: Path):
        (self.port,) = free_ports(1)
        self.out = tmp / "received.jsonl"
        self.config = tmp / "oct-2025-prefix-webhook.yaml"
        self.config.write_text(PRE.read_text() + f"\n  webhooks:\n    - {{name: oncall, url: "
                               f"\"http://127.0.0.1:{self.port}/alerts\", secret_env: LIQWATCH_WEBHOOK_SECRET}}\n")
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "liqwatch", "webhook-receiver", "--port",
                                      str(self.port), "--secret-env", "LIQWATCH_WEBHOOK_SECRET", "--out",
                                      str(self.out), "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def received(self) -> Counter:
        got: Counter = Counter()
        if self.out.exists():
            for line in self.out.read_text().splitlines():
                a = json.loads(line)
                got[(a["id"], a["state"], a["severity"], a["ts"])] += 1
        return got

    def assert_has(self, alerts: list[dict], timeout: float = 120) -> int:
        """Every alert event of the topic reached the receiver, each recorded once (it dedups retries)."""
        want = {(a["id"], a["state"], a["severity"], a["ts"]) for a in alerts}
        deadline = time.monotonic() + timeout
        while (got := self.received()).keys() != want:
            assert time.monotonic() < deadline, (sorted(want - set(got))[:5], sorted(set(got) - want)[:5])
            time.sleep(2)
        assert all(n == 1 for n in got.values()), [k for k, n in got.items() if n > 1][:5]
        return len(got)


@pytest.fixture
def webhook(tmp_path, monkeypatch):
    monkeypatch.setenv("LIQWATCH_WEBHOOK_SECRET", "fault-suite-secret")
    hook = Webhook(tmp_path)
    yield hook
    hook.stop()


def start_workers(bootstrap: str, prefix: str, tmp: Path, config: Path, n: int = 2) -> list[Worker]:
    extra = ("--cascade-every-ms", str(CASCADE_EVERY_MS), "--idle-s", "5")
    ws = [Worker(config, bootstrap, prefix, f"w{i + 1}", PARTITIONS, tmp, extra_args=extra).start()
          for i in range(n)]
    settle(ws, PARTITIONS)  # the group settled (partitions shared, one leader) before any data
    time.sleep(3)
    return ws


def wait_final_cascades(bootstrap: str, prefix: str, ws: list[Worker], last_ts: int, timeout: float = 240) -> None:
    """The leader's cascades at the last event's time (its idle flush; seconds after the input stops). Failing, it
    says what each worker was doing (its readiness and its story), well before the test's own timeout."""
    deadline = time.monotonic() + timeout
    while True:
        for w in ws:
            assert w.proc.poll() is None, w.log_tail()
        final = [c for c in read_topic(bootstrap, prefix + "liqwatch.cascades") if c["ts"] == last_ts]
        if len(final) >= 10:  # 2 scenarios × 5 severities
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(final)} of 10 cascades at the last event time {last_ts} after {timeout:.0f} s; "
                                 f"workers: {[w.status() for w in ws]}\n{story(ws)}\n"
                                 + "\n".join(w.log_tail(30) for w in ws))
        time.sleep(3)


def story(ws: list[Worker]) -> str:
    """What the workers said about the fault (takeovers, rebuilds, retries, errors): printed when a test fails."""
    words = ("took over", "stepped down", "idle flush", "rebuilt", "cascades at", "WARNING", "ERROR", "stopped",
             "restart")
    out = []
    for w in ws:
        lines = (w.log_dir / f"{w.worker_id}.log").read_text(errors="replace").splitlines()
        out += [f"{w.worker_id}| {x[:300]}" for x in lines if any(k in x for k in words) and " alert " not in x]
    return "\n".join(out[-80:])


def assert_equals_replay_and_batch(bootstrap: str, prefix: str, clean: Path, last_ts: int, tmp: Path,
                                   config: Path = PRE, ws: list[Worker] = ()) -> list:
    alerts = read_topic(bootstrap, prefix + "liqwatch.alerts")
    r = liqwatch("replay", "--bootstrap", bootstrap, "--topic-prefix", prefix, "--from", "2025-10-10T20:00:00Z",
                 "--to", str(last_ts + 1000), "-c", str(config), "--report", str(tmp / "pm"),
                 "--cascade-every-ms", str(CASCADE_EVERY_MS))
    assert r.returncode == 0, r.stderr
    replayed = [json.loads(x) for x in (tmp / "pm" / f"alerts-{config.stem}.jsonl").read_text().splitlines()]
    assert len(alerts) > 10
    only_live, only_replay = compare_alerts(alerts, replayed)
    assert (only_live, only_replay) == ([], []), (only_live[:8], only_replay[:8], story(ws))
    health, cascades = batch_results(config, clean)
    diff = differences(bootstrap, prefix, health, cascades)
    assert diff == [], (diff[:10], story(ws))
    return alerts


def test_poison_in_every_input_topic(stack, tmp_path, webhook):
    bootstrap = lwstack.bootstrap_servers(stack)
    prefix = f"f{uuid.uuid4().hex[:8]}."
    clean = tmp_path / "clean.jsonl"
    valid, last_ts = evening(clean)
    poison = [raw for _, raw in fuzz.corpus(per_kind=210, t0=T0, t1=last_ts)]  # 10,080 lines
    mixed = fuzz.interleave(valid, poison)
    ts = [json.loads(v)["ts"] for v in valid]
    ahead = fuzz.ahead_of_stream(ts, n=10)
    for i, raw in sorted(ahead, reverse=True):
        mixed.insert(mixed.index(valid[i]) + 1, raw)
    dirty = tmp_path / "dirty.jsonl"
    dirty.write_bytes(b"\n".join(mixed) + b"\n")
    n_poison = len(mixed) - len(valid)

    webhook.start()
    ws = start_workers(bootstrap, prefix, tmp_path, webhook.config)
    try:
        rep = produce(dirty, bootstrap, prefix, PARTITIONS)
        assert rep.events == len(mixed)
        per_topic = {t: n for t, n in rep.by_type.items()}
        assert per_topic["tick"] > 0 and per_topic["reference"] > 0 and rep.unroutable > 0
        wait_final_cascades(bootstrap, prefix, ws, last_ts)
        for w in ws:
            st = w.status()
            assert st is not None and st["ok"], st  # /healthz 200: every service running
        alerts = assert_equals_replay_and_batch(bootstrap, prefix, clean, last_ts, tmp_path, webhook.config, ws)
        webhook.assert_has(alerts)

        # every poison record dead-lettered with a reason; none of the valid ones
        dead = read_topic(bootstrap, prefix + "liqwatch.deadletter")
        assert all(d["reason"] and d["kind"] for d in dead)
        where = Counter((d["topic"], d["partition"], d["offset"]) for d in dead)
        originals = {(d["topic"], d["partition"], d["offset"]): base64.b64decode(d["original"]) for d in dead}
        valid_set = set(valid)
        assert Counter(originals.values()) == Counter(x for x in mixed if x not in valid_set), \
            "dead letters are not exactly the poison records"
        assert len(where) == n_poison
        # market records are read by every worker, each dead-letters them: duplicates by (topic, partition,
        # offset), documented; account records only by their owner
        dup = sum(n - 1 for n in where.values())
        market_poison = sum(1 for (t, _, _) in where if not t.endswith("liqwatch.accounts"))
        assert dup == market_poison * (len(ws) - 1)
        counted = sum(metric_sum(w.metrics(), "liqwatch_deadletter_total") for w in ws)
        assert counted == len(dead)
        print(f"\npoison in every topic: {len(mixed):,} records, {n_poison:,} poison, {len(where):,} dead-lettered "
              f"(+{dup:,} duplicate market dead letters from the second worker), 0 lost, 0 valid rejected")
    finally:
        for w in ws:
            w.kill()


def test_broker_restart_mid_stream(stack, tmp_path, webhook):
    bootstrap = lwstack.bootstrap_servers(stack)
    prefix = f"b{uuid.uuid4().hex[:8]}."
    clean = tmp_path / "clean.jsonl"
    valid, last_ts = evening(clean)
    webhook.start()
    ws = start_workers(bootstrap, prefix, tmp_path, webhook.config)
    producer = None
    try:
        # 3 h of event time in ~75 s: the broker goes away in the middle of it
        producer = produce_paced(clean, bootstrap, prefix, PARTITIONS, 150)
        time.sleep(20)
        t_down = time.monotonic()
        lwstack.down(stack, services=["kafka"])
        time.sleep(30)
        lwstack.up(stack, services=["kafka"])
        outage = time.monotonic() - t_down
        assert producer.wait(600) == 0, producer.log.read_text()[-3000:]
        wait_final_cascades(bootstrap, prefix, ws, last_ts)
        alerts = assert_equals_replay_and_batch(bootstrap, prefix, clean, last_ts, tmp_path, webhook.config, ws)
        webhook.assert_has(alerts)
        for w in ws:
            st = w.status()
            assert st is not None and st["ok"], st
            log = (tmp_path / f"{w.worker_id}.log").read_text(errors="replace")
            errors = [x for x in log.splitlines() if "[ERROR]" in x]
            assert len(errors) < 60, errors[-20:]  # no error loop (~10 lines a second before)
        print(f"\nbroker restart: down {outage:.0f} s; produce resumed; alerts = replay, health = batch")
    finally:
        if producer is not None and producer.poll() is None:
            producer.kill()
        for w in ws:
            w.kill()


@pytest.mark.parametrize("victim", ["leader", "follower"])
def test_worker_killed_mid_stream(stack, tmp_path, victim, webhook):
    """kill -9 of one of two workers in the middle of the evening: the other takes its partitions (and the
    leadership: the alerts topic is the episodes' changelog) and the outputs end as if nothing happened."""
    bootstrap = lwstack.bootstrap_servers(stack)
    prefix = f"k{uuid.uuid4().hex[:8]}."
    clean = tmp_path / "clean.jsonl"
    valid, last_ts = evening(clean)
    webhook.start()
    ws = start_workers(bootstrap, prefix, tmp_path, webhook.config)
    producer = None
    try:
        producer = produce_paced(clean, bootstrap, prefix, PARTITIONS, 150)
        time.sleep(25)
        leader = next(w for w in ws if w.status()["leader"])
        dead = leader if victim == "leader" else next(w for w in ws if w is not leader)
        alive = next(w for w in ws if w is not dead)
        t_kill = time.monotonic()
        dead.kill(signal.SIGKILL)
        while True:  # the survivor owns every partition and leads
            st = alive.status()
            if st and st["leader"] and len(st["partitions"]) == PARTITIONS:
                break
            assert time.monotonic() - t_kill < 120, alive.log_tail()
            time.sleep(0.2)
        takeover = time.monotonic() - t_kill
        assert producer.wait(600) == 0, producer.log.read_text()[-3000:]
        wait_final_cascades(bootstrap, prefix, [alive], last_ts)
        alerts = assert_equals_replay_and_batch(bootstrap, prefix, clean, last_ts, tmp_path, webhook.config, ws)
        webhook.assert_has(alerts)
        keys = Counter((a["id"], a["state"], a["severity"], a["ts"]) for a in alerts)
        dup = sum(n - 1 for n in keys.values())
        print(f"\nkill -9 of the {victim}: the survivor led every partition after {takeover:.1f} s; "
              f"{len(alerts)} alert events on the topic ({dup} repeated), alerts = replay, health = batch")
    finally:
        if producer is not None and producer.poll() is None:
            producer.kill()
        for w in ws:
            w.kill()


@pytest.mark.timeout(900)  # its phases' own deadlines say what failed first
def test_leadership_and_partitions_move_between_live_workers(stack, tmp_path):
    """A third worker joins in the middle of the evening and leaves again, three times, and once more as the input
    goes idle (the idle flush and the final cascades meet a rebalance). Each join and leave is a
    rebalance in which Faust may give the leadership and any account partition to another member, while the one
    that had them is alive and working: the old leader steps down before it rejoins (its outputs flushed), an
    old owner's account work waits for the new assignment, and the new leader and owners publish only what was
    not published. Then: alerts = replay, health = batch, no output record twice, health included."""
    bootstrap = lwstack.bootstrap_servers(stack)
    prefix = f"m{uuid.uuid4().hex[:8]}."
    clean = tmp_path / "clean.jsonl"
    valid, last_ts = evening(clean)
    ws = start_workers(bootstrap, prefix, tmp_path, PRE)
    extra = ("--cascade-every-ms", str(CASCADE_EVERY_MS), "--idle-s", "5")
    joined: list[Worker] = []
    producer = None
    try:
        producer = produce_paced(clean, bootstrap, prefix, PARTITIONS, 60)  # the evening in 3 minutes

        def join_and_leave(worker_id: str) -> None:  # two rebalances: a third worker joins, then leaves (SIGTERM)
            third = Worker(PRE, bootstrap, prefix, worker_id, PARTITIONS, tmp_path, extra_args=extra).start()
            joined.append(third)
            settle(ws + [third], PARTITIONS)
            time.sleep(4)
            third.kill(signal.SIGTERM)
            assert third.proc.returncode == 0, third.log_tail()
            settle(ws, PARTITIONS)

        for cycle in range(3):
            time.sleep(8)
            join_and_leave(f"w3-{cycle + 1}")
        assert producer.poll() is None, "the evening ended before the last rebalance: slow the producer"
        assert producer.wait(600) == 0, producer.log.read_text()[-3000:]
        # once more as the input goes idle: these rebalances meet the idle flush (idle after 5 s) and the leader's
        # final cascades, which no later boundary would run again
        join_and_leave("w3-4")
        wait_final_cascades(bootstrap, prefix, ws, last_ts)
        for out in ("alerts", "cascades"):  # kept beside the logs: what to look at when this fails
            (tmp_path / f"{out}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in
                                                           read_topic(bootstrap, f"{prefix}liqwatch.{out}")))
        assert_equals_replay_and_batch(bootstrap, prefix, clean, last_ts, tmp_path, PRE, ws + joined)
        counts = outputs_once(bootstrap, prefix)
        assert read_topic(bootstrap, prefix + "liqwatch.deadletter") == []
        logs = {w.worker_id: (tmp_path / f"{w.worker_id}.log").read_text(errors="replace") for w in ws + joined}
        handovers = sum(log.count("stepped down as leader") for log in logs.values())
        takeovers = {wid: n for wid, log in logs.items() if (n := log.count("took over as leader"))}
        print(f"\neight rebalances with every worker alive (two as the input went idle): {handovers} step-downs, "
              f"takeovers {takeovers}; alerts = replay, health = batch, no record twice "
              f"({', '.join(f'{k} {n:,}' for k, n in counts.items())})")
    finally:
        if producer is not None and producer.poll() is None:
            producer.kill()
        for w in ws + joined:
            w.kill()


def test_sigterm_with_webhooks_queued_and_the_receiver_down(stack, tmp_path, webhook):
    """The webhook receiver is down for the first 60 s; the worker delivering webhooks is stopped (SIGTERM) with
    alerts queued. It stops cleanly; the other worker's delivery takes over what was not acknowledged; once the
    receiver is up it has every alert of the topic, none twice after dedup."""
    bootstrap = lwstack.bootstrap_servers(stack)
    prefix = f"w{uuid.uuid4().hex[:8]}."
    clean = tmp_path / "clean.jsonl"
    valid, last_ts = evening(clean)
    t0 = time.monotonic()
    ws = start_workers(bootstrap, prefix, tmp_path, webhook.config)
    producer = None
    try:
        producer = produce_paced(clean, bootstrap, prefix, PARTITIONS, 150)
        # the worker holding alerts to deliver (the receiver is down): stop it with SIGTERM
        victim = None
        while victim is None:
            assert time.monotonic() - t0 < 55, "no webhook queued before the receiver came up"
            for w in ws:
                if metric_sum(w.metrics(), "liqwatch_webhook_queue") > 0:
                    victim = w
            time.sleep(0.5)
        victim.kill(signal.SIGTERM)
        assert victim.proc.returncode == 0, victim.log_tail()
        assert "stopped cleanly" in victim.log_tail(80)
        survivor = next(w for w in ws if w is not victim)
        time.sleep(max(0.0, 60 - (time.monotonic() - t0)))
        webhook.start()
        assert producer.wait(600) == 0, producer.log.read_text()[-3000:]
        wait_final_cascades(bootstrap, prefix, [survivor], last_ts)
        alerts = assert_equals_replay_and_batch(bootstrap, prefix, clean, last_ts, tmp_path, webhook.config, ws)
        n = webhook.assert_has(alerts)
        print(f"\nSIGTERM with webhooks queued, receiver down 60 s: {len(alerts)} alert events on the topic, "
              f"{n} received once each")
    finally:
        if producer is not None and producer.poll() is None:
            producer.kill()
        for w in ws:
            w.kill()
