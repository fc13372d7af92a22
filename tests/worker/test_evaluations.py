"""The account work (worker/evaluations.py): its queue (the feed waits only when `queue` boundaries are queued, and
that wait is counted and said once), and the idle flush across a rebalance's pause."""

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


class _Leadership:
    """The leader's side as the idle flush sees it: follows `leader`, counts the cascade runs started; a step-down
    drops the run in flight (worker/leader.py)."""

    def __init__(self, leader):
        self.leader, self.leading, self.runs = leader, False, []
        self.coordinator = SimpleNamespace(provisional=False)

    def keep_snapshot(self, t, prices=None):
        pass

    async def follow(self, t):
        self.leading = self.leader()

    async def market_alerts(self, t):
        pass

    def start_cascades(self, pv):
        self.runs.append(pv)

    async def step_down(self):
        self.leading = False

    def idle(self):
        return True


def test_a_leader_that_stepped_down_after_its_idle_flush_owes_the_final_cascades_again():
    """The input is idle and the leader has flushed (its final cascades started); a rebalance then takes the
    partitions back — the leader steps down, dropping that run — and gives this worker the same partitions and the
    leadership again. Nothing is dirty and no boundary will come: the idle flush must start the final cascades again,
    once."""
    async def none(*a, **k):
        return 0

    leader = [True]
    lead = _Leadership(lambda: leader[0])
    mon = SimpleNamespace(metrics=Metrics(), market_t=5, t=5, last_input_wall=0.0, dirty=True,
                          sink=SimpleNamespace(flush=none), release_accounts=none, evaluate=none, emit_marks=none,
                          engine=SimpleNamespace(max_ts=0), snapshot=lambda: "prices at 5")
    ev = Evaluations(mon, accounts=SimpleNamespace(retain=none, refresh_offsets=none), shard=None, leadership=lead,
                     is_leader=lambda: leader[0], market_caught_up=lambda: True, idle_s=1.0, keep_boundaries=8,
                     worker_id="w1")

    async def main() -> list[int]:
        await ev.idle()
        runs = [len(lead.runs)]
        await ev.idle()
        runs.append(len(lead.runs))  # flushed: nothing again
        leader[0] = False  # the rebalance starts (Faust's leader is not trusted while it runs)
        await lead.step_down()
        await ev.pause()
        await ev.idle()
        runs.append(len(lead.runs))  # paused: nothing
        ev.resume()
        leader[0] = True  # the same assignment and the leadership again
        await ev.idle()
        await ev.idle()
        runs.append(len(lead.runs))
        return runs

    assert asyncio.run(main()) == [1, 1, 1, 2]
