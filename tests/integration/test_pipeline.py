"""The live pipeline on the real broker: workers' last health and cascade events equal the batch commands."""

from __future__ import annotations

import json
import random
import signal
import time
import uuid
from pathlib import Path

import pytest
import yaml

from liqwatch.tools import stack as lwstack
from tests.conftest import DATA
from tests.integration.pipeline import (Worker, batch_results, metric_sum, produce, read_topic, settle,
                                        wait_converged)
from tests.populations import population

pytestmark = pytest.mark.integration
CONFIG = DATA / "rich.yaml"
PARTITIONS = 4


def write(path: Path, events: list) -> Path:
    path.write_text("".join((e if isinstance(e, str) else json.dumps(e)) + "\n" for e in events))
    return path


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:8]}."


def workers(n, bootstrap, prefix, tmp_path, config: Path = CONFIG) -> list[Worker]:
    return [Worker(config, bootstrap, prefix, f"w{i + 1}", PARTITIONS, tmp_path).start() for i in range(n)]


def with_policy(tmp_path: Path) -> Path:
    """rich.yaml with partial liquidation (a quarter at a time above $20,000 of positions) and auto-deleveraging
    executed from an empty insurance fund."""
    doc = yaml.safe_load(CONFIG.read_text())
    doc["liquidation"].update(partial={"fraction": 0.25, "above_usd": 20_000.0}, insurance_fund=0.0,
                              auto_deleverage=True)
    path = tmp_path / "partial.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.mark.parametrize("n_workers,policy", [(1, False), (2, False), (2, True)])
def test_workers_equal_batch(stack, prefix, tmp_path, n_workers, policy):
    bootstrap = lwstack.bootstrap_servers(stack)
    # with the policy, a third of the accounts hold isolated positions too (rows of their own on the shards)
    events = write(tmp_path / "ev.jsonl", population(21, 1500, steps=60, isolated=0.3 if policy else 0.0))
    config = with_policy(tmp_path) if policy else CONFIG
    health, cascades = batch_results(config, events)
    if policy:  # the distributed cascade's shards liquidate part of accounts and keep them over rounds, and rank
        # and take auto-deleveraged positions across both workers' shards
        assert any(c["partial_liquidations"] > 0 for c in cascades.values())
        assert any(c["insurance_fund"]["deleveraged_accounts"] > 0 for c in cascades.values())
        assert sum(k[1] is not None for k in health) > 300
    ws = workers(n_workers, bootstrap, prefix, tmp_path, config)
    try:
        # let the group settle first, so that the workers really share the partitions while the data flows
        deadline = time.monotonic() + 90
        while not all((s := w.status()) and s["partitions"] for w in ws) or sum(
                len(w.status()["partitions"]) for w in ws) != PARTITIONS:
            assert time.monotonic() < deadline, [w.log_tail() for w in ws]
            time.sleep(0.5)
        produce(events, bootstrap, prefix, PARTITIONS)
        diff = wait_converged(bootstrap, prefix, health, cascades, ws)
        assert diff == [], diff[:10]
        status = [w.status() for w in ws]
        assert sum(s["accounts"] for s in status) == len(health)
        owned = [p for s in status for p in s["partitions"]]
        assert sorted(owned) == list(range(PARTITIONS))  # every partition owned exactly once
        assert all(s["partitions"] for s in status)       # and each worker owns some
    finally:
        for w in ws:
            w.kill()


def test_sigkill_mid_stream_and_restart(stack, prefix, tmp_path):
    bootstrap = lwstack.bootstrap_servers(stack)
    all_events = population(22, 2000, steps=60)
    market = [e for e in all_events if e["type"] != "account"]
    accounts = [e for e in all_events if e["type"] == "account"]
    first = write(tmp_path / "first.jsonl", market + accounts[:1000])
    second = write(tmp_path / "second.jsonl", accounts[1000:])
    produce(first, bootstrap, prefix, PARTITIONS)
    (w,) = workers(1, bootstrap, prefix, tmp_path)
    try:
        deadline = time.monotonic() + 90
        while (s := w.status()) is None or s["accounts"] < 1000:
            assert time.monotonic() < deadline, w.log_tail()
            time.sleep(0.5)
        time.sleep(2)  # let the table changelog and the offset commit happen (Faust commits every few seconds)
        w.kill(signal.SIGKILL)
        produce(second, bootstrap, prefix, PARTITIONS)
        health, cascades = batch_results(CONFIG, write(tmp_path / "all.jsonl", market + accounts))
        w.start()
        diff = wait_converged(bootstrap, prefix, health, cascades, [w])
        assert diff == [], diff[:10]
        assert w.status()["accounts"] == len(accounts)  # none lost, none counted twice
    finally:
        w.kill()


def test_malformed_records_are_dead_lettered(stack, prefix, tmp_path):
    bootstrap = lwstack.bootstrap_servers(stack)
    rng = random.Random(5)
    good = population(23, 800, steps=40)
    t_mid = good[len(good) // 2]["ts"]
    bad: list = []
    for i in range(250):
        bad.append('{"type": "tick", "venue": "binance", "symbol": "BTC/USDT", "ts": ' + str(t_mid) + ', "bid": ')
        bad.append({"type": "tick", "venue": "okx", "symbol": "BTC/USDT", "ts": t_mid, "bid": -1.0, "ask": 2.0})
        bad.append({"type": "account", "account": f"bad-{i}", "ts": t_mid, "collateral": {"DOGE": 1.0},
                    "borrowed": {}, "positions": []})
        bad.append({"type": "reference", "asset": "WBETH", "ts": t_mid, "in": "BTC", "rate": 1.0})
    mixed = list(good)
    for b in bad:
        mixed.insert(rng.randrange(len(mixed) + 1), b)
    events = write(tmp_path / "mixed.jsonl", mixed)
    produce(events, bootstrap, prefix, PARTITIONS)
    health, cascades = batch_results(CONFIG, events)
    ws = workers(1, bootstrap, prefix, tmp_path)
    try:
        diff = wait_converged(bootstrap, prefix, health, cascades, ws)
        assert diff == [], diff[:10]
        dead = read_topic(bootstrap, prefix + "liqwatch.deadletter")
        assert len(dead) == 1000
        assert {d["kind"] for d in dead} == {"invalid_json", "bad_number", "unknown_asset"}
        assert all(d["reason"] and d["topic"].startswith(prefix) and d["offset"] >= 0 and d["original"]
                   for d in dead)
        assert metric_sum(ws[0].metrics(), "liqwatch_deadletter_total") == 1000
        assert ws[0].proc.poll() is None  # still running
    finally:
        for w in ws:
            w.kill()


def test_a_worker_joining_while_the_first_recovers_loses_nothing(stack, prefix, tmp_path):
    """Scale-out: one worker holds every partition, a second joins, and the records are produced as soon as both
    have partitions (the first may still be recovering its table): both shards end complete."""
    bootstrap = lwstack.bootstrap_servers(stack)
    events = write(tmp_path / "ev.jsonl", population(21, 1500, steps=60))
    health, cascades = batch_results(CONFIG, events)
    first = Worker(CONFIG, bootstrap, prefix, "w1", PARTITIONS, tmp_path).start()
    ws = [first]
    try:
        settle(ws, PARTITIONS)  # the first one alone holds every partition
        time.sleep(1.5)
        ws.append(Worker(CONFIG, bootstrap, prefix, "w2", PARTITIONS, tmp_path).start())
        settle(ws, PARTITIONS)  # both have partitions: the first may still be recovering its table
        produce(events, bootstrap, prefix, PARTITIONS)
        diff = wait_converged(bootstrap, prefix, health, cascades, ws)
        assert diff == [], (diff[:10], [w.log_tail(20) for w in ws])
    finally:
        for w in ws:
            w.kill()
