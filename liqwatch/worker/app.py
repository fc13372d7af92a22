"""The Faust worker of liqwatch: topics in, the shared Engine, results out. Start several to scale out.

    liqwatch worker --config cfg.yaml --web-port 6066        # one worker
    liqwatch worker --config cfg.yaml --web-port 6067        # a second one takes half the account partitions

Data flow of one worker:
    liqwatch.ticks + liqwatch.references ─▶ market feed (every worker reads all of it, merged in event-time order)
    liqwatch.accounts (its partitions)   ─▶ `accounts` agent ─▶ `accounts` table (changelog: survives restarts)
    every second of event time          ─▶ margin_health ─▶ liqwatch.health (changed accounts), metrics
    input idle                          ─▶ exact health + severities, cascades (leader) ─▶ liqwatch.cascades
    bad records                         ─▶ liqwatch.deadletter, liqwatch_deadletter_total{reason}
    GET http://127.0.0.1:<web-port>/metrics
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import faust
import msgspec
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from liqwatch.risk.alerts import STRESS_KINDS, AlertEngine
from liqwatch.worker.cascades import CascadeAborted, Coordinator, ShardService
from liqwatch.config import Config
from liqwatch.sinks.metrics import CONTENT_TYPE, Metrics
from liqwatch.core.monitor import Monitor, Where
from aiokafka.errors import KafkaError

from liqwatch.core.ingest import PartitionDoor
from liqwatch.core.merge import Arrivals, Merge
from liqwatch.core.schedule import Boundary, Schedule
from liqwatch.sinks.kafka import OutputSink
from liqwatch.worker.supervise import Quieter, Supervisor
from liqwatch.sinks.topics import TopicNames, create_topics, read_to_end
from liqwatch.sinks.webhooks import TopicDelivery, WebhookSender

log = logging.getLogger(__name__)


def _json(raw: bytes):
    try:
        return msgspec.json.decode(raw)
    except Exception:  # noqa: BLE001 - not ours to judge here: skipped
        return None


@dataclass
class WorkerSettings:
    bootstrap: str = "127.0.0.1:9092"
    web_port: int = 6066
    app_id: str = "liqwatch"
    topic_prefix: str = ""
    partitions: int = 8
    worker_id: str = field(default_factory=lambda: f"worker-{int(time.time() * 1000) % 10**8}")
    idle_s: float = 1.0                 # wall time without input before the exact flush
    merge_grace_s: float = 0.25         # a caught-up input topic with records this recent still bounds the merge
    resume_pause_s: float = 1.0         # input silent this long, then records again (start, broker restart):
    resume_grace_s: float = 3.0         # every topic bounds the merge this long, whatever it delivered
    session_timeout_s: float = 6.0      # a worker silent this long is out of the group (a dead leader is replaced)
    heartbeat_s: float = 1.5
    cascade_retry_s: float = 60.0       # a boundary's cascades are retried this long for shards to answer
    takeover_boundaries: int = 8        # cascade boundaries a new leader can still run for (market snapshots and
                                        # shards' frozen books kept per worker)
    data_dir: Path = Path("~/.cache/liqwatch/workers").expanduser()


def build_app(cfg: Config, settings: WorkerSettings) -> tuple[faust.App, Monitor]:
    names = TopicNames(settings.topic_prefix)
    # loopback unless a container runtime says otherwise (docker-compose.yml sets LIQWATCH_WEB_BIND)
    web_bind = os.environ.get("LIQWATCH_WEB_BIND", "127.0.0.1")
    (settings.data_dir / settings.worker_id).mkdir(parents=True, exist_ok=True)
    metrics = Metrics()
    services = Supervisor(metrics, settings.worker_id)
    sink = OutputSink(settings.bootstrap, names, metrics, client_id=settings.worker_id)
    monitor = Monitor(cfg, sink, metrics, names)
    app = faust.App(
        settings.app_id,
        broker=f"kafka://{settings.bootstrap}",
        store="memory://",
        web_host=web_bind,
        web_bind=web_bind,
        web_port=settings.web_port,
        datadir=str(settings.data_dir / settings.worker_id),
        topic_partitions=settings.partitions,
        topic_replication_factor=1,
        consumer_auto_offset_reset="earliest",
        table_standby_replicas=0,
        producer_linger_ms=5,
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=settings.heartbeat_s,
    )
    accounts_topic = app.topic(names.ACCOUNTS, key_type=bytes, value_type=bytes, key_serializer="raw",
                               value_serializer="raw", partitions=settings.partitions)
    table = app.Table("accounts", key_type=str, value_type=bytes,
                      partitions=settings.partitions, help="Latest valid snapshot of each account of this shard.")

    # partitions whose accounts are in the shard's book: one just assigned is not until the table's recovery
    # ends (a taken-over partition's accounts come from its changelog), and no cascade may read the book before
    in_book: set[int] = set()

    async def rebuild_book() -> None:
        snapshots = [v for _, v in table.items()]
        monitor.reset_accounts(snapshots)
        in_book.clear()
        in_book.update(owned_partitions())
        log.info("%s: shard rebuilt from the accounts table: %d accounts", settings.worker_id, len(snapshots))

    table.on_recover(rebuild_book)

    @app.agent(accounts_topic)
    async def accounts(stream):
        """Decode → validate → table + shard book. One bad record is dead-lettered, never fatal."""
        async for event in stream.events():
            msg = event.message
            got = await monitor.on_account(event.value, Where(msg.topic, msg.partition, msg.offset, msg.key))
            if got is None:
                continue
            ev, applied = got
            if not applied:
                continue
            if ev.closed:
                table.pop(ev.account, None)
            else:
                table[ev.account] = event.value

    def owned_partitions() -> list[int]:
        return [tp.partition for tp in app.assignor.assigned_actives() if tp.topic == names.ACCOUNTS]

    def accounts_caught_up(t: int) -> bool:
        """Has this shard applied every account event up to event time t? Either a partition already delivered a
        later event, or its consumer reached the end of it."""
        if monitor.market_t < t and not state["market_caught_up"]:
            return False  # accounts join the book by market event time: this shard's market must reach t first
        for p in owned_partitions():
            if p not in in_book:
                return False  # assigned, its table not recovered yet
            if monitor.account_ts.get(p, -1) >= t:
                continue
            hw = app.consumer.highwater(TopicPartition(names.ACCOUNTS, p))
            if hw is None or monitor.account_offsets.get(p, -1) + 1 < hw:
                return False
        return True

    def retain() -> None:
        if app.assignor.assigned_actives():
            monitor.retain_partitions(set(owned_partitions()), settings.partitions)

    shard = ShardService(monitor, names, settings.bootstrap, settings.worker_id, owned_partitions, accounts_caught_up,
                         retain, lambda: refresh_offsets())
    coordinator = Coordinator(monitor, names, settings.bootstrap, settings.partitions, settings.worker_id, services)
    alerts = AlertEngine(cfg.alerts, cfg.config_id, metrics)
    webhooks = WebhookSender(list(cfg.alerts.webhooks), metrics) if cfg.alerts.webhooks else None

    def keep_snapshot(t: int) -> None:
        if t < 0:
            return  # no event yet: nothing to run a cascade on
        snapshots[t] = monitor.snapshot()
        for old in sorted(snapshots)[:-settings.takeover_boundaries]:
            del snapshots[old]

    async def refresh_offsets() -> None:
        """Partitions taken over from a dead worker may deliver nothing (it had consumed them to the end): their
        consumed offset is the group's committed offset. Asked of the broker with an admin client, never of
        Faust's consumer (its position() waits on the consumer thread while partitions are being assigned), at
        most once a second."""
        missing = [p for p in owned_partitions() if p not in monitor.account_offsets]
        if not missing or time.monotonic() - state["offsets_asked"] < 1.0:
            return
        state["offsets_asked"] = time.monotonic()
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap, client_id=f"{settings.worker_id}-offsets")
        try:
            await asyncio.wait_for(admin.start(), 5)
            committed = await asyncio.wait_for(admin.list_consumer_group_offsets(
                settings.app_id, partitions=[TopicPartition(names.ACCOUNTS, p) for p in missing]), 5)
        except Exception as e:  # noqa: BLE001 - asked again at the next boundary
            log.debug("committed offsets not read: %s", e)
            return
        finally:
            with contextlib.suppress(Exception):
                await admin.close()
        for tp, meta in committed.items():
            if meta is not None and meta.offset >= 0 and tp.partition not in monitor.account_offsets:
                monitor.account_offsets[tp.partition] = meta.offset - 1

    state = {"leading": False, "offsets_asked": 0.0, "market_caught_up": False, "cascading": False,
             "cascade_task": None, "flushed": True, "leader_flushed": False}

    # every worker evaluates the market alerts at every boundary; the leader publishes them, the others keep
    # what they computed (the shadow) so that a worker that takes over publishes what a dead leader did not
    shadow: list[dict] = []
    snapshots: dict[int, object] = {}  # market snapshots of the last cascade boundaries (a takeover runs them)

    async def market_alerts(t: int) -> None:
        events = alerts.market(monitor.engine, t)
        if state["leading"]:
            await emit_alerts(events)
        else:
            shadow.extend(events)
            horizon = t - 6 * 3_600_000  # six hours of event time: longer than any takeover
            if shadow and shadow[0]["ts"] < horizon:
                shadow[:] = [e for e in shadow if e["ts"] >= horizon]

    async def lead(t: int) -> None:
        """Follow leadership at a boundary: a worker that becomes leader takes over first."""
        leader = app.is_leader()
        if leader and not state["leading"]:
            await take_over(t)
        state["leading"] = leader
        alerts.publishing = leader

    async def take_over(t: int) -> None:
        """Become the leader at event time t: the alerts topic is the episodes' changelog; what the last leader
        did not publish is published now, with its own event times; cascades run again from the last boundary
        the last leader completed, so the alerts topic ends as a replay of the same events would."""
        t0 = time.monotonic()
        try:
            published = [_json(v) for v in await read_to_end(settings.bootstrap, names.ALERTS,
                                                             f"{settings.worker_id}-takeover")]
            ran = [_json(v) for v in await read_to_end(settings.bootstrap, names.CASCADES,
                                                       f"{settings.worker_id}-takeover")]
        except Exception as e:  # noqa: BLE001 - lead anyway; say what could not be restored
            log.error("%s: takeover could not read the alerts changelog (%s): episodes start afresh",
                      settings.worker_id, e)
            published, ran = [], []
        mine = [e for e in published if isinstance(e, dict) and e.get("config_id") == cfg.config_id]
        on_topic = {(e["id"], e["state"], e["severity"], e["ts"]) for e in mine}
        alerts.restore(AlertEngine.open_on_topic(mine, cfg.config_id), STRESS_KINDS)
        missed = [e for e in shadow if (e["id"], e["state"], e["severity"], e["ts"]) not in on_topic]
        shadow.clear()
        alerts.publishing = True
        alerts.publish_open()
        await emit_alerts(missed)
        last_run = max((c["ts"] for c in ran if isinstance(c, dict) and c.get("config_id") == cfg.config_id),
                       default=-1)
        again = sorted(b for b in snapshots if last_run <= b < t)
        if last_run >= 0 and snapshots and min(snapshots) > last_run + cfg.schedule.cascade_every_ms:
            log.error("%s: takeover at event time %d: cascade boundaries after %d and before %d are older than the "
                      "%d kept (takeover_boundaries): their cascade alerts are not computed", settings.worker_id, t,
                      last_run, min(snapshots), settings.takeover_boundaries)
        for b in again:  # beside the feed, in order (the cascades' lock is first come, first served)
            state["cascade_task"] = asyncio.get_running_loop().create_task(run_cascades(snapshots[b]))
        if published or missed or again:
            log.warning("%s: took over as leader at event time %d in %.1f s: %d open episodes restored from the "
                        "alerts topic, %d alerts the last leader did not publish sent, cascades to run again for %d "
                        "boundaries", settings.worker_id, t, time.monotonic() - t0, len(alerts.open), len(missed),
                        len(again))

    async def emit_alerts(events: list[dict]) -> None:
        for ev in events:
            await sink.emit(names.ALERTS, ev)
            log.info("alert %s %s %s on %s: %s", ev["state"], ev["severity"], ev["kind"], ev["subject"], ev["summary"])
        if events:
            await sink.flush()  # on the topic now: webhook delivery reads it from there (TopicDelivery)

    cascading = asyncio.Lock()

    async def run_cascades(pv) -> None:
        """Stress cascades on the market snapshot `pv`, then the alerts that read them (leader). A boundary
        waits for a run in progress rather than being skipped: every boundary's alerts happen."""
        async with cascading:
            await _run_cascades(pv)

    async def _run_cascades(pv) -> None:
        """A boundary's cascades are run again until every partition answered (a worker died: its partitions
        move after the session timeout), so that its alerts are those of the boundary, not of a later book.
        Given up after `cascade_retry_s`, said once."""
        state["cascading"] = True
        started = time.monotonic()
        try:
            while True:
                try:
                    results, critical, exposure = await coordinator.run_all(pv)
                    break
                except CascadeAborted as e:
                    if time.monotonic() - started > settings.cascade_retry_s:
                        raise
                    if not state.get("aborted_logged"):
                        log.warning("%s: cascades at event time %d wait for the shards (%s); running them again",
                                    settings.worker_id, pv.t, e)
                        state["aborted_logged"] = True
                    await asyncio.sleep(1.0)
            state["aborted_logged"] = False
            events = alerts.cascades(results, critical, pv.t)
            if exposure is not None:
                events += alerts.accounts(exposure, pv.t)
            await emit_alerts(events)
            await sink.flush()
        except CascadeAborted as e:
            log.error("%s: cascades at event time %d given up after %.0f s: %s", settings.worker_id, pv.t,
                      time.monotonic() - started, e)
            coordinator.provisional = True
        except Exception:  # the market feed must go on; say loudly what broke
            log.exception("stress cascades at event time %d failed", pv.t)
            coordinator.provisional = True
        finally:
            state["cascading"] = False

    @app.task
    async def start_services() -> None:
        Quieter.install()  # logging is configured by now (Faust's worker)
        await sink.start()
        if webhooks is not None:
            await webhooks.start()
            delivery = TopicDelivery(webhooks, settings.bootstrap, names.ALERTS, f"{settings.app_id}-webhooks",
                                     f"{settings.worker_id}-webhooks", int(settings.session_timeout_s * 1000))
            services.start("webhook delivery", delivery.run)
        await coordinator.start()
        services.start("cascade shard", shard.run)
        services.start("market feed", market_feed, heartbeat=True)

    # the feed's place in its topics survives a restart of the feed (a broker restart, an error): it resumes
    # where it was instead of applying the market again from the beginning
    tps = [TopicPartition(names.REFERENCES, 0), TopicPartition(names.TICKS, 0)]  # ties: references first
    merge = Merge(tps)  # the event-time core the replay runs too: merge order and boundaries
    schedule = Schedule(cfg.schedule)
    arrivals = Arrivals(tps, settings.merge_grace_s, settings.resume_pause_s, settings.resume_grace_s)
    resume_at: dict[TopicPartition, int] = {}  # next offset to fetch
    doors = {tp: PartitionDoor(monitor.engine.gate, cfg.ingest.max_ahead_ms, cfg.ingest.jump_keys) for tp in tps}
    lag: dict[str, int] = {}

    async def market_feed() -> None:
        """Every tick and reference, merged by event time (Kafka timestamp = event ts), into the monitor."""
        # a worker started on recorded data must know whether it leads before its first boundary: alerts and
        # cascades of boundaries passed before the first assignment would be lost (and a replay would differ)
        waited = time.monotonic()
        while (app.rebalancing or not app.assignor.assigned_actives()) and time.monotonic() - waited < 60:
            services.beat("market feed")
            await asyncio.sleep(0.1)
        log.info("%s: market feed %s (leader: %s, after %.1f s)", settings.worker_id,
                 "resumes" if resume_at else "starts", app.is_leader(), time.monotonic() - waited)
        consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap, group_id=None, enable_auto_commit=False,
                                    client_id=f"{settings.worker_id}-market", max_partition_fetch_bytes=8 << 20)
        await consumer.start()
        try:
            consumer.assign(tps)
            for tp in tps:
                if tp in resume_at:
                    consumer.seek(tp, resume_at[tp])
                else:
                    await consumer.seek_to_beginning(tp)
            while True:
                services.beat("market feed")
                batch = await consumer.getmany(*tps, timeout_ms=100, max_records=20_000)
                arrivals.arrived([tp for tp, recs in batch.items() if recs])
                for tp, recs in batch.items():
                    resume_at[tp] = recs[-1].offset + 1
                    merge.push(tp, await monitor.admit_market(doors[tp], recs))  # bad ones dead-lettered
                try:
                    end = await consumer.end_offsets(tps) if not batch else None
                except KafkaError:  # the broker is away: not caught up, say so, try again
                    end = {tp: None for tp in tps}
                at_end = {}
                for tp in tps:
                    hw = consumer.highwater(tp) if end is None else end[tp]
                    at = resume_at.get(tp, 0)
                    at_end[tp] = hw is not None and at >= hw
                    lag[tp.topic] = max((hw or 0) - at, 0)
                    monitor.metrics.lag.labels(topic=tp.topic).set(lag[tp.topic])
                state["market_caught_up"] = all(at_end.values()) and merge.buffered() == 0
                await release(arrivals.caught(at_end))
        finally:
            with contextlib.suppress(Exception):
                await consumer.stop()

    async def release(caught: dict) -> None:
        """Hand the merge's runs to the monitor and evaluate at each boundary the schedule says is crossed
        (liqwatch.core: the replay runs the same merge and schedule)."""
        released = 0
        while (run := merge.next_run(caught, schedule.next_eval)) is not None:
            await monitor.on_market(run)
            await monitor.release_accounts(monitor.market_t)
            released += len(run)
            boundary = schedule.cross(monitor.market_t)
            if boundary is not None:
                await monitor.emit_marks(app.is_leader())
                released = 0
                await evaluate_at(boundary)
        if released:
            await monitor.emit_marks(app.is_leader())

    evaluating = asyncio.Lock()

    async def evaluate_at(b: Boundary) -> None:
        """One boundary of the schedule: shard health, market alerts, and at cascade boundaries the shards' frozen
        books and (leader) the cascades. It waits for an idle flush in progress: no boundary is skipped."""
        async with evaluating:
            retain()
            await monitor.evaluate(full=False, with_severity=b.severity)
            if b.cascade:  # every worker: the shards keep their book as of this boundary, and the market snapshot
                await refresh_offsets()
                shard.freeze(b.t, keep=settings.takeover_boundaries)
                keep_snapshot(b.t)
            await lead(b.t)
            await market_alerts(b.t)
            if state["leading"] and b.cascade:
                # on a snapshot of the boundary, beside the feed (shards answer from their frozen books); one run
                # in flight: the next boundary waits for it, so a slow run slows the feed instead of piling up
                if state["cascade_task"] is not None:
                    await state["cascade_task"]
                state["cascade_task"] = asyncio.get_running_loop().create_task(run_cascades(monitor.snapshot()))
            state["flushed"] = False
            state["leader_flushed"] = False

    @app.timer(interval=0.25)
    async def idle_flush() -> None:
        """When input stops: exact health with severities, marks and cascades, so the last events are final."""
        idle = time.monotonic() - monitor.last_input_wall >= settings.idle_s and state["market_caught_up"]
        if not idle:
            return
        retain()
        # a worker elected leader after its last flush still owes the leader's part (marks, alerts, cascades)
        if monitor.dirty or not state["flushed"] or (app.is_leader() and not state["leader_flushed"]):
            monitor.dirty = False
            state["flushed"] = True
            await monitor.release_accounts(None)  # the market is caught up: every held account joins
            async with evaluating:
                n = await monitor.evaluate(full=True, with_severity=True)
            await monitor.emit_marks(app.is_leader())
            await sink.flush()
            log.info("%s: idle flush at event time %d: %d health events", settings.worker_id, monitor.t, n)
            await refresh_offsets()
            keep_snapshot(monitor.t)
            await lead(monitor.t)
            await market_alerts(monitor.t)
            if state["leading"] and monitor.t >= 0:
                state["leader_flushed"] = True
                # beside the timer, after any boundary's run (the lock orders them): a boundary still waiting for
                # its shards must not hold the idle evaluation of every worker's health
                state["cascade_task"] = asyncio.get_running_loop().create_task(run_cascades(monitor.snapshot()))
        elif coordinator.provisional and app.is_leader() and monitor.t >= 0 and not state["cascading"] and (
                state["cascade_task"] is None or state["cascade_task"].done()):
            state["cascade_task"] = asyncio.get_running_loop().create_task(run_cascades(monitor.snapshot()))

    @app.page("/metrics")
    async def metrics_page(web, request):
        return web.bytes(metrics.exposition(), content_type=CONTENT_TYPE.split(";")[0] + "; version=0.0.4")

    def readiness() -> dict:
        """What this worker is doing and what it is behind on."""
        owned = sorted(owned_partitions())
        return {"worker": settings.worker_id, "leader": app.is_leader(), "event_time": monitor.t,
                "market_caught_up": state["market_caught_up"], "lag": dict(lag),
                "accounts": int(monitor.engine.accounts.active[: monitor.engine.accounts.n].sum()),
                "pending_accounts": len(monitor.pending_accounts), "partitions": owned,
                "accounts_caught_up": accounts_caught_up(monitor.t) if monitor.t >= 0 else False,
                "services": services.status()}

    @app.page("/healthz")
    async def healthz(web, request):
        """200 while every service runs and the feed moves; 503 with the problems otherwise."""
        body = readiness()
        problems = services.problems()
        body["ok"] = not problems
        body["problems"] = problems
        return web.json(body, status=200 if not problems else 503)

    @app.page("/ready")
    async def ready(web, request):
        """200 once this worker has caught up with its inputs; 503 with what it is behind on otherwise."""
        body = readiness()
        behind = [f"{t}: {n} records behind" for t, n in body["lag"].items() if n] + services.problems()
        if not body["market_caught_up"]:
            behind.append("market feed: not caught up")
        body["ready"] = not behind
        body["behind"] = behind
        return web.json(body, status=200 if not behind else 503)

    @app.on_before_shutdown.connect
    async def shutdown(app_, **kwargs) -> None:
        """A clean stop: the feed and the cascade services first, then what is queued is delivered (the output
        topics, then the webhooks, whose offsets are committed as they are delivered), then every client."""
        await services.stop([n for n in services.services if n != "webhook delivery"])
        try:
            await asyncio.wait_for(sink.flush(), timeout=30)
        except Exception as e:  # noqa: BLE001 - say what could not be delivered, stop anyway
            log.error("%s: output not fully delivered at shutdown: %s", settings.worker_id, e)
        if webhooks is not None:
            left = await webhooks.drain(5.0)
            await asyncio.sleep(0.5)  # the delivery service commits what was delivered
            await services.stop()
            await webhooks.stop(drain_timeout=0)
            if left:
                log.warning("%s: %d webhook deliveries left to the next worker of the group (not committed)",
                            settings.worker_id, left)
        await services.stop()
        await sink.stop()
        log.info("%s: stopped cleanly", settings.worker_id)

    return app, monitor


def run_worker(cfg: Config, settings: WorkerSettings, loglevel: str = "info") -> None:
    # our topics first, with our settings (Faust would declare the accounts topic with the broker's defaults)
    asyncio.run(create_topics(settings.bootstrap, settings.partitions, settings.topic_prefix))
    app, _ = build_app(cfg, settings)
    worker = faust.Worker(app, loglevel=loglevel, quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()
