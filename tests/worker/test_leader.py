"""The leader's cascade publication (worker/leader.py): a run at a time the topic already has is not published
again, whoever published it; a run that differs supersedes."""

import asyncio
from types import SimpleNamespace

from liqwatch.sinks.topics import TopicNames
from liqwatch.worker.leader import Leadership


class _Sink:
    def __init__(self):
        self.sent: list[tuple[str, dict]] = []

    async def emit(self, topic, value, key=None):
        self.sent.append((topic, value))

    async def flush(self):
        pass


class _Coordinator:
    """Gives the cascade results it is told to, as Coordinator.run_all and take_results do."""

    def __init__(self):
        self.results: list[dict] = []
        self.solvency = None
        self.provisional = False

    async def run_all(self, pv):
        return None, {}, None

    def take_results(self):
        out, self.results = self.results, []
        return out


def _run(t: int, notional: float) -> list[dict]:
    return [{"type": "cascade", "ts": t, "scenario": s, "severity": 0.02, "liquidated_notional": notional * k}
            for k, s in enumerate(("risk_off", "collateral_depeg"), 1)]


def test_an_idle_flush_run_again_at_the_same_time_publishes_only_what_differs():
    names, sink, coordinator = TopicNames("t."), _Sink(), _Coordinator()
    alerts = SimpleNamespace(cascades=lambda critical, t, solvency: [], state=lambda kinds: {})
    lead = Leadership(SimpleNamespace(config_id="c"), names, SimpleNamespace(sink=sink), alerts, coordinator,
                      lambda: True, None, "w1", 1.0, 8)
    lead.leading = True

    async def boundary(t: int, notional: float) -> list[dict]:
        coordinator.results = _run(t, notional)
        before = len(sink.sent)
        await lead._run_cascades(SimpleNamespace(t=t))
        return [v for topic, v in sink.sent[before:] if topic == names.CASCADES]

    async def main():
        return [await boundary(5, 1.0),            # the idle flush's run
                await boundary(5, 1.0 + 1e-13),    # again after a rebalance made the shard dirty: the same run
                await boundary(5, 2.0),            # an account event after the input went idle: it supersedes
                await boundary(5, 2.0),
                await boundary(6, 2.0)]            # a later time

    got = asyncio.run(main())
    assert [len(g) for g in got] == [2, 0, 2, 0, 2]
    assert [c["liquidated_notional"] for c in got[2]] == [2.0, 4.0]
    assert list(lead.runs_published) == [("risk_off", 0.02, 6), ("collateral_depeg", 0.02, 6)]  # the last time's only
