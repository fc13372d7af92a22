"""The distributed cascade without Kafka: the leader's Coordinator and two ShardServices talk through an in-memory
exchange that carries exactly what the two cascade topics would (msgspec JSON), and the result equals the
single-process cascade (LocalStressRuns) on the same accounts."""

from __future__ import annotations

import asyncio

import msgspec
import numpy as np
import pytest

from liqwatch import scenarios
from liqwatch.config import PartialSpec, load_config
from liqwatch.core.monitor import Monitor
from liqwatch.events import decode
from liqwatch.risk.stress import LocalStressRuns
from liqwatch.sinks.metrics import Metrics
from liqwatch.sinks.topics import TopicNames
from liqwatch.worker.cascades import Coordinator, ShardService

CFG = load_config(scenarios.config_path("oct-2025"))
# partial liquidation and auto-deleveraging executed from an empty fund: the shards' quantities change over the
# rounds, and ADL's queue is ranked across both shards (two more exchanges a round)
POLICY = CFG.model_copy(update={"liquidation": CFG.liquidation.model_copy(update={
    "insurance_fund": 0.0, "auto_deleverage": True,
    "partial": PartialSpec(fraction=0.25, above_usd=50_000.0)})})
NAMES = TopicNames()
EVENTS = [decode(msgspec.json.encode(e)) for e in scenarios.generate("oct-2025", 300, seed=11)]
T_CRASH = scenarios.T0 + 75 * 60_000  # 21:15, inside the wave: cascades that do something


class Exchange:
    """The cascade-rounds and cascade-flows topics in memory: a round request reaches every shard, a reply the
    coordinator; everything else is kept."""

    def __init__(self):
        self.shards: list[ShardService] = []
        self.coordinator: Coordinator | None = None
        self.other: list[tuple[str, dict]] = []

    async def emit(self, topic: str, value: dict, key: bytes | None = None) -> None:
        msg = msgspec.json.decode(msgspec.json.encode(value))
        if topic == NAMES.CASCADE_ROUNDS:
            for shard in self.shards:
                await shard._answer(msg)
        elif topic == NAMES.CASCADE_FLOWS:
            c = self.coordinator
            c.replies.setdefault((msg["cascade"], msg["round"], msg.get("step", "")), []).append(msg)
            arrived, c.arrived = c.arrived, asyncio.Event()
            arrived.set()
        else:
            self.other.append((topic, value))

    async def flush(self) -> None:
        pass

    async def dead_letter(self, *args, **kwargs) -> None:
        raise AssertionError("no record of the scenario is bad")


def loaded(sink, keep_account, cfg=CFG) -> Monitor:
    mon = Monitor(cfg, sink, Metrics(), NAMES)
    k = 0
    for ev in EVENTS:
        if ev.ts > T_CRASH:
            break
        if type(ev).__name__ == "Account":
            k += 1
            if not keep_account(k):
                continue
        mon.engine.apply(ev)
    mon.market_t = T_CRASH
    return mon


async def nothing() -> None:  # the shard's retain: no partition moves here
    return None


@pytest.mark.parametrize("cfg", [CFG, POLICY], ids=["closed-in-full", "partial-and-adl"])
def test_the_distributed_cascade_equals_the_single_process_one(cfg):
    async def go():
        exchange = Exchange()
        shards = [loaded(exchange, lambda k, p=p: k % 2 == p, cfg) for p in (0, 1)]
        for p, mon in enumerate(shards):
            exchange.shards.append(ShardService(mon, NAMES, "", f"w{p}", lambda p=p: [p], lambda t: True,
                                                nothing))
        leader = loaded(exchange, lambda k: False, cfg)
        exchange.coordinator = Coordinator(leader, NAMES, "", partitions=2, worker_id="w0")
        whole = loaded(exchange, lambda k: True, cfg)
        pv = whole.snapshot()
        distributed = await exchange.coordinator.run_all(pv)
        results = exchange.coordinator.take_results(), exchange.coordinator.take_results()
        local = await LocalStressRuns(whole.engine, cfg, Metrics(), whole.config_id).run_all(pv)
        return distributed, local, exchange.other, results

    (d_out, d_crit, d_exp), (l_out, l_crit, l_exp), emitted, (results, again) = asyncio.run(go())
    assert sum(r["liquidated_notional"] for r in l_out) > 0  # the wave: something to compare
    assert len(d_out) == len(l_out) == len(CFG.stress.scenarios) * len(CFG.stress.severities)
    for d, l in zip(d_out, l_out):
        assert (d["scenario"], d["severity"], d["rounds"], d["liquidated_accounts"], d["round_accounts"]) == \
            (l["scenario"], l["severity"], l["rounds"], l["liquidated_accounts"], l["round_accounts"])
        # sums over two shards vs one book: equal up to the order of float additions
        assert np.isclose(d["liquidated_notional"], l["liquidated_notional"], rtol=1e-12)
        assert (d["partial_liquidations"], d["round_partial"]) == (l["partial_liquidations"], l["round_partial"])
        df, lf = d["insurance_fund"], l["insurance_fund"]
        assert df["deleveraged_accounts"] == lf["deleveraged_accounts"]
        assert np.isclose(df["adl_closed_notional_usd"], lf["adl_closed_notional_usd"], rtol=1e-9)
    if cfg is POLICY:
        assert sum(r["partial_liquidations"] for r in l_out) > 0
        assert sum(r["insurance_fund"]["deleveraged_accounts"] for r in l_out) > 0
    assert {k: c.severity for k, c in d_crit.items()} == {k: c.severity for k, c in l_crit.items()}
    assert np.isclose(d_exp.total_usd, l_exp.total_usd, rtol=1e-12) and d_exp.total_usd > 0
    assert np.isclose(d_exp.cluster_usd, l_exp.cluster_usd, rtol=1e-12)
    assert np.isclose(d_exp.liquidatable_usd, l_exp.liquidatable_usd, rtol=1e-12)
    # the results go to the leadership, which publishes them with the alerts on them (worker/leader.py), once
    assert [t for t, _ in emitted if t == NAMES.CASCADES] == [] and results == d_out and again == []
