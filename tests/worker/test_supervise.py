"""Supervised services and quiet logs (liqwatch/worker/supervise.py), on a real event loop."""

from __future__ import annotations

import asyncio
import logging

from liqwatch.sinks.metrics import Metrics
from liqwatch.worker.supervise import Quieter, Supervisor


def test_quieter_passes_a_library_error_once_a_minute_with_a_count():
    q = Quieter(window_s=60)

    def rec(name, msg, *args):
        return logging.LogRecord(name, logging.ERROR, __file__, 1, msg, args, None)

    assert q.filter(rec("aiokafka.conn", "Unable connect to node with id %s", 1))
    assert not any(q.filter(rec("aiokafka.conn", "Unable connect to node with id %s", 1)) for _ in range(500))
    assert q.filter(rec("aiokafka.cluster", "Unable to update metadata from %s", 1))   # another kind: passes
    assert q.filter(rec("liqwatch.sinks.kafka", "dead letter %s", "x"))                       # ours: always passes
    assert q.filter(rec("liqwatch.sinks.kafka", "dead letter %s", "y"))
    q.seen[("aiokafka.conn", "Unable connect to node with id %s")] = (-1e9, 500)       # a minute later
    r = rec("aiokafka.conn", "Unable connect to node with id %s", 1)
    assert q.filter(r) and "500 more like this" in r.getMessage()


def test_a_failing_service_is_restarted_counted_and_reported(monkeypatch, caplog):
    monkeypatch.setattr("liqwatch.worker.supervise.BACKOFF_S", (0.01, 0.05))
    metrics = Metrics()
    runs = []

    async def flaky() -> None:
        runs.append(1)
        if len(runs) <= 3:
            raise ConnectionError("broker away")
        await asyncio.sleep(3600)

    async def main():
        sup = Supervisor(metrics, "w1")
        sup.start("market feed", flaky, heartbeat=True)
        await asyncio.sleep(0.5)
        status = sup.status()
        problems_now = sup.problems()
        stuck = sup.problems(stuck_after_s=0.1)
        await sup.stop()
        return status, problems_now, stuck, sup.problems()

    with caplog.at_level(logging.ERROR, logger="liqwatch.worker.supervise"):
        status, problems_now, stuck, after_stop = asyncio.run(main())
    assert len(runs) == 4 and status["market feed"]["restarts"] == 3
    assert status["market feed"]["state"] == "running" and problems_now == []
    assert len(stuck) == 1 and stuck[0].startswith("market feed: stuck (no progress for")
    assert after_stop == ["market feed: stopped after ConnectionError: broker away"]
    # logged once (with the traceback), not three times
    lines = [r for r in caplog.records if "market feed" in r.getMessage()]
    assert len(lines) == 1 and "broker away" in lines[0].getMessage()
    text = metrics.exposition().decode()
    assert 'liqwatch_service_restarts_total{service="market feed"} 3.0' in text
