"""One shard's monitor without Kafka: records in through the doors, accounts joining by event time, bad records
dead-lettered, health events out to an in-memory sink."""

from __future__ import annotations

import asyncio
import json

from liqwatch import scenarios
from liqwatch.config import load_config
from liqwatch.core.ingest import PartitionDoor
from liqwatch.core.monitor import Monitor, Where
from liqwatch.replay.replayer import CollectingSink, Record
from liqwatch.sinks.metrics import Metrics
from liqwatch.sinks.topics import TopicNames

CFG = load_config(scenarios.config_path("oct-2025"))
EVENTS = [e for e in scenarios.generate("oct-2025", 20, seed=3)]
MARKET = [e for e in EVENTS if e["type"] != "account"]
ACCOUNTS = [e for e in EVENTS if e["type"] == "account"]


class RecordingSink(CollectingSink):
    """The replay's sink, keeping what is emitted as well."""

    def __init__(self):
        super().__init__()
        self.emitted: list[tuple[str, dict]] = []

    async def emit(self, topic, value, key=None) -> None:
        self.emitted.append((topic, value))


def monitor() -> tuple[Monitor, RecordingSink]:
    sink = RecordingSink()
    return Monitor(CFG, sink, Metrics(), TopicNames()), sink


async def feed_market(mon: Monitor, events: list[dict]) -> None:
    door = PartitionDoor(mon.engine.gate, CFG.ingest.max_ahead_ms, CFG.ingest.jump_keys)
    recs = [Record(0, e["ts"], json.dumps(e).encode(), "ticks", 0, k) for k, e in enumerate(events)]
    await mon.on_market(await mon.admit_market(door, recs))


def test_an_account_ahead_of_the_market_waits_for_it():
    async def go():
        mon, _ = monitor()
        acct = ACCOUNTS[0]
        await feed_market(mon, [e for e in MARKET if e["ts"] < acct["ts"]])
        await mon.on_account(json.dumps(acct).encode(), Where("accounts", 0, 0))
        held = mon.engine.accounts.n
        await feed_market(mon, [e for e in MARKET if acct["ts"] <= e["ts"] <= acct["ts"] + 1000])
        await mon.release_accounts(mon.market_t)
        return held, mon.engine.accounts.n
    assert asyncio.run(go()) == (0, 1)


def test_a_malformed_account_is_dead_lettered_with_its_reason():
    async def go():
        mon, sink = monitor()
        got = await mon.on_account(b'{"type":"account","account":"a1","ts":"soon"}', Where("accounts", 2, 7))
        return got, sink.dead
    got, dead = asyncio.run(go())
    assert got is None
    assert [(d["topic"], d["partition"], d["offset"]) for d in dead] == [("accounts", 2, 7)]
    assert "ts" in dead[0]["reason"]


def test_a_tick_of_a_book_the_config_does_not_name_never_enters_the_market():
    async def go():
        mon, sink = monitor()
        await feed_market(mon, MARKET[:10] + [{"type": "tick", "venue": "nowhere", "symbol": "BTC/USDT",
                                                 "ts": MARKET[9]["ts"], "bid": 1.0, "ask": 1.1}])
        return len(mon.engine.market.books), len(mon.engine.layout.books), sink.dead
    books, configured, dead = asyncio.run(go())
    assert books == configured
    assert CFG.ingest.unknown_sources == "deadletter"
    assert [(d["kind"], d["offset"]) for d in dead] == [("unknown_source", 10)]


def evaluated(with_severity: bool) -> tuple[Monitor, list[dict]]:
    """The scenario's market and accounts through the monitor, one exact evaluation: the monitor and its health
    events."""
    async def go():
        mon, sink = monitor()
        await feed_market(mon, MARKET)
        for k, a in enumerate(ACCOUNTS):
            await mon.on_account(json.dumps(a).encode(), Where("accounts", 0, k))
        await mon.release_accounts(None)
        await mon.evaluate(full=True, with_severity=with_severity)
        return mon, [v for topic, v in sink.emitted if topic == TopicNames().HEALTH]
    return asyncio.run(go())


def test_evaluation_emits_one_health_event_per_account():
    _, health = evaluated(with_severity=True)
    assert sorted(h["account"] for h in health) == sorted(a["account"] for a in ACCOUNTS)


def test_health_events_carry_each_position_s_liquidation_and_bankruptcy_price_and_queue_key():
    mon, health = evaluated(with_severity=False)
    mon.engine.max_ts = mon.t
    # the batch command's rows (`liqwatch health --positions`) at the same prices: the same numbers
    batch = {}
    for row in mon.engine.position_rows():
        batch.setdefault(row["account"], []).append(row)
    priced = 0
    for h in health:
        want = batch.get(h["account"], [])
        assert [(p["instrument"], p["qty"]) for p in h["positions"]] == [(p["instrument"], p["qty"]) for p in want]
        for got, row in zip(h["positions"], want):
            assert (got["liquidation_price"], got["bankruptcy_price"]) == \
                (row["liquidation_price"], row["bankruptcy_price"])
            priced += got["liquidation_price"] is not None
    assert priced > 10
    # the queue key orders each instrument's side as the batch rank does (the rank is its quantile over the book)
    keyed: dict = {}
    for h in health:
        for got, row in zip(h["positions"], batch.get(h["account"], [])):
            if got["adl_key"] is not None:
                keyed.setdefault((got["instrument"], got["qty"] > 0), []).append((got["adl_key"], row["adl_rank"]))
    assert any(len(v) > 3 for v in keyed.values())
    for pairs in keyed.values():
        pairs.sort()
        assert [r for _, r in pairs] == sorted(r for _, r in pairs)


def test_a_rebuilt_shard_drops_the_accounts_of_partitions_it_no_longer_owns_every_time():
    """Faust's memory table keeps the accounts of partitions taken away: each rebuild must drop them again, even
    when it has as many rows for the same partitions as the last check (they were counted twice in cascades)."""
    from liqwatch.kernels.keys import partitions_of

    async def go():
        mon, _ = monitor()
        await feed_market(mon, [e for e in MARKET if e["ts"] <= ACCOUNTS[-1]["ts"] + 1000])
        await mon.release_accounts(mon.market_t)  # the accounts' time is reached: a rebuild applies them
        table = [json.dumps(a).encode() for a in ACCOUNTS]
        ids = [a["account"] for a in ACCOUNTS]
        owned = {0, 1}
        kept = []
        for _ in range(3):  # a rebalance, then another with the same assignment
            mon.reset_accounts(table)
            await mon.retain_partitions(owned, 4)
            acc = mon.engine.accounts
            kept.append(sorted(acc.ids[r] for r in range(acc.n) if acc.active[r]))
        return kept, sorted(i for i, p in zip(ids, partitions_of(ids, 4)) if int(p) in owned)
    kept, want = asyncio.run(go())
    assert kept == [want, want, want] and 0 < len(want) < len(ACCOUNTS)
