"""The account work's queue: the feed waits only when `queue` boundaries are queued, and that wait is counted and
said once (worker/evaluations.py)."""

import asyncio
import logging
from types import SimpleNamespace

from liqwatch.core.schedule import Boundary
from liqwatch.sinks.metrics import Metrics
from liqwatch.worker.evaluations import Evaluations


def _evaluations(queue: int) -> Evaluations:
    monitor = SimpleNamespace(metrics=Metrics(), market_t=0)
    return Evaluations(monitor, accounts=None, shard=None, leadership=None, is_leader=lambda: False,
                       market_caught_up=lambda: True, idle_s=1.0, keep_boundaries=8, worker_id="w1", queue=queue)


def test_the_feed_waits_only_with_the_queue_full(caplog):
    ev = _evaluations(queue=3)

    async def main() -> float:
        for t in range(3):  # three boundaries queued: the feed is not held
            await asyncio.wait_for(ev._put(["boundary", Boundary(t, False, False), None]), 0.5)
        fourth = asyncio.create_task(ev._put(["boundary", Boundary(3, False, False), None]))
        await asyncio.sleep(0.3)
        assert not fourth.done()  # held: the account work is three boundaries behind
        async with ev.queued:  # the account work takes one
            ev.work.popleft()
            ev.queued.notify_all()
        await asyncio.wait_for(fourth, 1.0)
        return ev.monitor.metrics.feed_held_seconds._value.get()

    with caplog.at_level(logging.WARNING, logger="liqwatch.worker.evaluations"):
        held = asyncio.run(main())
    assert 0.25 < held < 1.0, held
    assert [w[1].t for w in ev.work] == [1, 2, 3]
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "w1: the market feed waited 0.3 s" in lines[0], lines


def test_a_pause_whose_assignment_never_comes_ends_on_the_idle_timer(caplog, monkeypatch):
    """A rebalance took the partitions back and no assignment followed: with no account work queued, only the idle
    timer sees it; after PAUSE_LIMIT_S it resumes the account work (and with it the idle flush), said once."""
    from liqwatch.worker import evaluations

    monkeypatch.setattr(evaluations, "PAUSE_LIMIT_S", 0.2)

    async def flush() -> None:
        pass

    ev = _evaluations(queue=3)
    ev.monitor = SimpleNamespace(metrics=Metrics(), market_t=5, t=5, last_input_wall=0.0, dirty=False,
                                 sink=SimpleNamespace(flush=flush))
    ev.leadership = SimpleNamespace(coordinator=SimpleNamespace(provisional=False))

    async def main() -> list[bool]:
        await ev.pause()
        seen = [ev.assigned.is_set()]
        await ev.idle()
        seen.append(ev.assigned.is_set())  # within the limit: still paused (a rebalance may take that long)
        await asyncio.sleep(0.25)
        await ev.idle()
        await ev.idle()
        seen.append(ev.assigned.is_set())
        return seen

    with caplog.at_level(logging.WARNING, logger="liqwatch.worker.evaluations"):
        assert asyncio.run(main()) == [False, False, True]
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "w1: no partition assignment 0 s after a rebalance began" in lines[0], lines
