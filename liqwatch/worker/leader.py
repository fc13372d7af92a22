"""The leader's duties: publish the alerts, run the stress cascades, and take over when the last leader died.

Every worker evaluates the market alerts at every boundary; the leader publishes them and the others keep what they
computed (the shadow), so that a worker that takes over publishes what a dead leader did not. The alerts topic is
the episodes' changelog: a new leader restores the open stress episodes from it and runs the cascades again from
the last boundary the old leader completed (market snapshots of the last boundaries are kept for that), so the
alerts topic ends as a replay of the same events would.

Leadership can also move between live workers (any rebalance may give Faust's leader partition to another member).
A leader whose partitions are being taken back steps down before it rejoins the group (`step_down`): it stops
publishing, drops its cascade run in flight and flushes, so that the new leader, which reads the topics only once
it is assigned, finds everything the old one published. What the old leader published for boundaries the new one
has not reached yet is not published again (`_fresh`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable

import msgspec

from liqwatch.config import Config
from liqwatch.core.monitor import Monitor
from liqwatch.kafka import Connection
from liqwatch.risk.alerts import STRESS_KINDS, AlertEngine
from liqwatch.sinks.topics import TopicNames, read_latest, read_to_end
from liqwatch.worker.cascades import CascadeAborted, Coordinator

log = logging.getLogger(__name__)
SHADOW_HORIZON_MS = 6 * 3_600_000  # event time of market alerts a follower keeps: longer than any takeover


def same(a, b) -> bool:
    """Two events alike up to the order of float additions (a cascade's sums over shards follow the assignment)."""
    if isinstance(a, float) and isinstance(b, (int, float)) or isinstance(b, float) and isinstance(a, (int, float)):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9) or (math.isnan(a) and math.isnan(b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def _json(raw: bytes):
    try:
        return msgspec.json.decode(raw)
    except Exception:  # noqa: BLE001 - not ours to judge here: skipped
        return None


class Leadership:
    def __init__(self, cfg: Config, names: TopicNames, monitor: Monitor, alerts: AlertEngine,
                 coordinator: Coordinator, is_leader: Callable[[], bool], kafka: Connection, worker_id: str,
                 cascade_retry_s: float, keep_boundaries: int):
        self.cfg = cfg
        self.names = names
        self.monitor = monitor
        self.sink = monitor.sink
        self.alerts = alerts
        self.coordinator = coordinator
        self.is_leader = is_leader
        self.kafka = kafka
        self.worker_id = worker_id
        self.cascade_retry_s = cascade_retry_s
        self.keep_boundaries = keep_boundaries
        self.leading = False
        self.shadow: list[dict] = []
        self.snapshots: dict[int, object] = {}  # market snapshots of the last cascade boundaries
        self.cascading = asyncio.Lock()  # one run at a time, first come first served: no boundary is skipped
        self.cascade_task: asyncio.Task | None = None  # the last run started (the lock orders them)
        self.cascade_tasks: set[asyncio.Task] = set()   # every run started and not done
        self.publishing = asyncio.Lock()  # a boundary's outputs leave whole, never across a step-down
        self.on_topic: set[tuple] = set()  # the alerts the last leader published, as a takeover read them
        self.runs_on_topic: dict[tuple, list[dict]] = {}  # and its cascades, by (scenario, severity, ts)
        self.on_topic_upto = -1            # ... up to this event time
        self.runs_published: dict[tuple, list[dict]] = {}  # this leader's own cascades at the last time it published
        self.stress_upto = -1  # the last leader ran the cascades of every boundary up to this one (its state's)
        self._aborted_logged = False

    def keep_snapshot(self, t: int, prices=None) -> None:
        """Keep the market snapshot of boundary t (`prices`, or the monitor's now) for a takeover."""
        if t < 0:
            return  # no event yet: nothing to run a cascade on
        self.snapshots[t] = prices if prices is not None else self.monitor.snapshot()
        for old in sorted(self.snapshots)[:-self.keep_boundaries]:
            del self.snapshots[old]

    async def market_alerts(self, t: int) -> None:
        events = self.alerts.market(self.monitor.engine, t)
        async with self.publishing:
            if self.leading:
                await self.emit_alerts(events)
                return
        self.shadow.extend(events)
        horizon = t - SHADOW_HORIZON_MS
        if self.shadow and self.shadow[0]["ts"] < horizon:
            self.shadow[:] = [e for e in self.shadow if e["ts"] >= horizon]

    async def follow(self, t: int) -> None:
        """Follow leadership at a boundary: a worker that becomes leader takes over first."""
        leader = self.is_leader()
        if leader and not self.leading:
            await self.take_over(t)
        self.leading = leader
        self.alerts.publishing = leader

    async def step_down(self) -> None:
        """Faust takes the partitions back (a rebalance starts): stop publishing before rejoining the group. A
        boundary's outputs being published are finished first (the lock); a cascade run in flight is dropped (the
        next leader runs its boundary again); what was sent is flushed to the topics."""
        if not self.leading:
            return
        async with self.publishing:
            self.leading = False
            self.alerts.publishing = False
            await self._cancel_cascades()
            await self.sink.flush()
        log.info("%s: stepped down as leader for the rebalance (outputs flushed)", self.worker_id)

    async def _cancel_cascades(self) -> int:
        """Cancel every cascade run started and not done; how many there were."""
        tasks = [t for t in self.cascade_tasks if not t.done()]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks)  # never raises: the runs' own cancellation stays theirs
        return len(tasks)

    def _fresh(self, key: tuple, ts: int) -> bool:
        """An alert the last leader (which may have been ahead of this worker's feed) did not publish."""
        return ts > self.on_topic_upto or key not in self.on_topic

    def _fresh_run(self, result: dict) -> bool:
        """A cascade neither the last leader nor this one published: a run at the same time on other accounts (an
        account event after the input went idle) is published, it supersedes. (An idle flush can run the cascades of
        one time twice: a rebalance after it makes the shard dirty again.)"""
        key = (result["scenario"], result["severity"], result["ts"])
        mine = self.runs_published.get(key, [])
        if result["ts"] > self.on_topic_upto and not mine:
            return True
        doc = _json(msgspec.json.encode(result))
        return not any(same(doc, c) for c in self.runs_on_topic.get(key, []) + mine)

    def _published_run(self, result: dict) -> None:
        if self.runs_published and next(iter(self.runs_published))[2] != result["ts"]:
            self.runs_published = {}  # only the last time's: an idle flush runs again at the time of the last one
        key = (result["scenario"], result["severity"], result["ts"])
        self.runs_published.setdefault(key, []).append(_json(msgspec.json.encode(result)))

    async def take_over(self, t: int) -> None:
        """Become the leader at event time t: what the last leader did not publish is published now, with its
        own event times; cascades run again from the last boundary the last leader completed."""
        cfg = self.cfg
        t0 = time.monotonic()
        try:
            published = [_json(v) for v in await read_to_end(self.kafka, self.names.ALERTS,
                                                             f"{self.worker_id}-takeover")]
            ran = [_json(v) for v in await read_to_end(self.kafka, self.names.CASCADES,
                                                       f"{self.worker_id}-takeover")]
            states = [_json(v) for v in await read_to_end(self.kafka, self.names.LEADER,
                                                          f"{self.worker_id}-takeover")]
            marks = await read_latest(self.kafka, self.names.MARKS, None, f"{self.worker_id}-takeover")
            self.monitor.marks_upto = max((t for t, _ in marks.values()), default=-1)
        except Exception as e:  # noqa: BLE001 - lead anyway; say what could not be restored
            log.error("%s: takeover could not read the alerts changelog (%s): episodes start afresh",
                      self.worker_id, e)
            published, ran, states = [], [], []
        mine = [e for e in published if isinstance(e, dict) and e.get("config_id") == cfg.config_id]
        on_topic = {(e["id"], e["state"], e["severity"], e["ts"]) for e in mine}
        runs = [c for c in ran if isinstance(c, dict) and c.get("config_id") == cfg.config_id]
        self.on_topic = on_topic
        self.runs_on_topic, self.runs_published = {}, {}  # its own are on the topic now (flushed at the step-down)
        for c in runs:
            self.runs_on_topic.setdefault((c["scenario"], c["severity"], c["ts"]), []).append(c)
        self.on_topic_upto = max([e["ts"] for e in mine] + [c["ts"] for c in runs], default=-1)
        state = next((s for s in reversed(states) if isinstance(s, dict) and s.get("config_id") == cfg.config_id),
                     None)
        if state is not None:  # the last leader's stress episodes after the last boundary it published, exactly
            self.alerts.load(state["stress"], STRESS_KINDS)
            self.stress_upto = int(state["ts"])
        else:  # a topic written before liqwatch.leader existed: the open episodes (pending timers start afresh)
            self.alerts.restore(AlertEngine.open_on_topic(mine, cfg.config_id), STRESS_KINDS)
        missed = [e for e in self.shadow if (e["id"], e["state"], e["severity"], e["ts"]) not in on_topic]
        self.shadow.clear()
        self.alerts.publishing = True
        self.alerts.publish_open()
        async with self.publishing:
            self.leading = True
            await self.emit_alerts(missed)
        # cascades again from the boundary after the state's (the boundary of the last run on the topic, again,
        # without a state: its publication may have been cut short; what was published is not published twice)
        last_run = state["ts"] if state is not None else max((c["ts"] for c in runs), default=-1)
        snapshots = self.snapshots
        again = sorted(b for b in snapshots if (last_run < b if state is not None else last_run <= b) and b < t)
        if last_run >= 0 and snapshots and min(snapshots) > last_run + cfg.schedule.cascade_every_ms:
            log.error("%s: takeover at event time %d: cascade boundaries after %d and before %d are older than the "
                      "%d kept (takeover_boundaries): their cascade alerts are not computed", self.worker_id, t,
                      last_run, min(snapshots), self.keep_boundaries)
        for b in again:  # beside the feed, in order (the cascades' lock is first come, first served)
            self.start_cascades(snapshots[b])
        if published or missed or again:
            log.warning("%s: took over as leader at event time %d in %.1f s: %d open episodes restored from %s, %d "
                        "alerts the last leader did not publish sent, cascades to run again for %d boundaries%s",
                        self.worker_id, t, time.monotonic() - t0, len(self.alerts.open),
                        f"the leader state of {state['ts']}" if state is not None else "the alerts topic",
                        len(missed), len(again), f" ({', '.join(map(str, again))})" if again else "")

    async def emit_alerts(self, events: list[dict]) -> None:
        """The leader's alerts (the caller holds `publishing`), but none the last leader published already."""
        for ev in events:
            if not self._fresh((ev["id"], ev["state"], ev["severity"], ev["ts"]), ev["ts"]):
                continue
            await self.sink.emit(self.names.ALERTS, ev)
            log.info("alert %s %s %s on %s: %s", ev["state"], ev["severity"], ev["kind"], ev["subject"], ev["summary"])
        if events:
            await self.sink.flush()  # on the topic now: webhook delivery reads it from there (TopicDelivery)

    def start_cascades(self, pv) -> None:
        """Cascades on the snapshot `pv` beside the feed, after any run in flight (the lock orders them)."""
        task = self.cascade_task = asyncio.get_running_loop().create_task(self.run_cascades(pv))
        self.cascade_tasks.add(task)
        task.add_done_callback(self.cascade_tasks.discard)

    def idle(self) -> bool:
        """No cascade run in progress or waiting."""
        return not self.cascading.locked() and not self.cascade_tasks

    async def stop(self) -> None:
        """At shutdown: a boundary's cascades still running are cancelled before the output sink closes (the
        next leader runs that boundary again: takeover)."""
        if await self._cancel_cascades():
            log.info("%s: cascades at shutdown cancelled; the next leader runs them again", self.worker_id)

    async def run_cascades(self, pv) -> None:
        """Stress cascades on the market snapshot `pv`, then the alerts that read them. A boundary waits for a
        run in progress rather than being skipped: every boundary's alerts happen."""
        async with self.cascading:
            if pv.t < self.stress_upto:
                # the last leader, ahead of this worker's feed, ran this boundary: its episodes are loaded. Its last
                # boundary runs again: accounts may have come since at that same time (what is the same is not
                # published twice; the episodes, observed again at one time, stay as they were)
                return
            await self._run_cascades(pv)

    async def _run_cascades(self, pv) -> None:
        """A boundary's cascades are run again until every partition answered (a worker died: its partitions
        move after the session timeout), so that its alerts are those of the boundary, not of later accounts.
        Given up after `cascade_retry_s`, said once."""
        started = time.monotonic()
        try:
            while True:
                try:
                    _, critical, exposure = await self.coordinator.run_all(pv)
                    break
                except CascadeAborted as e:
                    if time.monotonic() - started > self.cascade_retry_s:
                        raise
                    if not self._aborted_logged:
                        log.warning("%s: cascades at event time %d wait for the shards (%s); running them again",
                                    self.worker_id, pv.t, e)
                        self._aborted_logged = True
                    await asyncio.sleep(1.0)
            self._aborted_logged = False
            results = self.coordinator.take_results()
            async with self.publishing:
                if not self.leading:  # stepped down meanwhile: the next leader runs this boundary again
                    return
                events = self.alerts.cascades(critical, pv.t, self.coordinator.solvency)
                if exposure is not None:
                    events += self.alerts.accounts(exposure, pv.t)
                for r in results:  # the boundary's cascades, then the alerts that read them
                    if self._fresh_run(r):
                        await self.sink.emit(self.names.CASCADES, r)
                        self._published_run(r)
                await self.emit_alerts(events)
                # and the stress episodes as they now are: a next leader goes on from here, timers included
                await self.sink.emit(self.names.LEADER, {
                    "type": "leader", "ts": pv.t, "config_id": self.cfg.config_id, "worker": self.worker_id,
                    "stress": self.alerts.state(STRESS_KINDS)}, key=self.cfg.config_id.encode())
                await self.sink.flush()
        except CascadeAborted as e:
            log.error("%s: cascades at event time %d given up after %.0f s: %s", self.worker_id, pv.t,
                      time.monotonic() - started, e)
            self.coordinator.provisional = True
        except Exception:  # the market feed must go on; say loudly what broke
            log.exception("stress cascades at event time %d failed", pv.t)
            self.coordinator.provisional = True
