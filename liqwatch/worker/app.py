"""The Faust worker of liqwatch, wiring only: the app, the accounts topic and table (`on_recover` rebuilds the
shard's accounts), the accounts agent, the idle timer and the web pages; the feed (worker/feed.py), the shard's
accounts (worker/accounts.py), the evaluations (worker/evaluations.py), the leader's duties (worker/leader.py) and
the cascade exchange (worker/cascades.py) are their own modules. Start several workers to scale out.

    liqwatch worker --config cfg.yaml --web-port 6066        # one worker
    liqwatch worker --config cfg.yaml --web-port 6067        # a second one takes half the account partitions

Data flow of one worker:
    liqwatch.ticks + liqwatch.references ─▶ market feed (every worker reads all of it, merged in event-time order)
    liqwatch.accounts (its partitions)   ─▶ `accounts` agent ─▶ `accounts` table (changelog: survives restarts)
    each boundary of cfg.schedule        ─▶ (queued, in threads) margin_health ─▶ liqwatch.health (changed
                                            accounts), metrics; frozen accounts, cascades (leader)
    input idle                          ─▶ exact health + severities, cascades (leader) ─▶ liqwatch.cascades
    bad records                         ─▶ liqwatch.deadletter, liqwatch_deadletter_total{reason}
    GET http://127.0.0.1:<web-port>/metrics
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import faust

from liqwatch.config import Config
from liqwatch.core.monitor import Monitor, Where
from liqwatch.kafka import Connection
from liqwatch.risk.alerts import AlertEngine
from liqwatch.sinks.kafka import OutputSink
from liqwatch.sinks.metrics import CONTENT_TYPE, Metrics
from liqwatch.sinks.topics import TopicNames, TopicSpec, create_topics
from liqwatch.sinks.webhooks import TopicDelivery, WebhookSender
from liqwatch.worker.accounts import AccountShard
from liqwatch.worker.cascades import Coordinator, ShardService
from liqwatch.worker.evaluations import Evaluations
from liqwatch.worker.feed import MarketFeed
from liqwatch.worker.leader import Leadership
from liqwatch.worker.stage import StageChild
from liqwatch.worker.stall import StallWatch
from liqwatch.worker.supervise import Quieter, Supervisor
from liqwatch.worker.warm import settle_heap, warm_kernels

log = logging.getLogger(__name__)
BACKGROUND_NICE = 10  # the account work's threads, below the feed's event loop


@dataclass
class WorkerSettings:
    kafka: Connection = Connection.plain("127.0.0.1:9092")
    replicas: int = 1                   # of Faust's own topics (the table's changelog): liqwatch.sinks.topics
    web_port: int = 6066
    app_id: str = "liqwatch"
    topic_prefix: str = ""
    partitions: int = 8
    worker_id: str = field(default_factory=lambda: f"worker-{int(time.time() * 1000) % 10**8}")
    idle_s: float = 1.0                 # wall time without input before the exact flush
    merge_grace_s: float = 0.25         # a caught-up input topic with records this recent still bounds the merge
    boundary_wait_s: float = 1.0        # at the live edge a boundary waits this long for records before it: the
                                        # brokers of different partitions make records visible out of step (seen
                                        # on three brokers: a reference 1 ms before a boundary arrived after the
                                        # tick that reached it, and every later boundary moved by 1 ms)
    resume_pause_s: float = 1.0         # input silent this long, then records again (start, broker restart):
    resume_grace_s: float = 10.0        # every topic bounds the merge this long, whatever it delivered (3 s was
                                        # too short once: after a broker restart on a loaded machine a producer
                                        # resumed one partition later, and every book of it looked stale)
    session_timeout_s: float = 6.0      # a worker silent this long is out of the group (a dead leader is replaced)
    heartbeat_s: float = 1.5
    cascade_retry_s: float = 60.0       # a boundary's cascades are retried this long for shards to answer
    takeover_boundaries: int = 8        # cascade boundaries a new leader can still run for (market snapshots and
                                        # shards' frozen accounts kept per worker)
    data_dir: Path = Path("~/.cache/liqwatch/workers").expanduser()
    account_queue: int = 32             # boundaries of account work that may wait behind the feed (worker/evaluations.py)
    market_stage: bool = False          # run a market stage child (worker/stage.py) and read its staged rows
    config_path: Path | None = None     # the config the stage child loads


def build_app(cfg: Config, settings: WorkerSettings) -> tuple[faust.App, Monitor]:
    names = TopicNames(settings.topic_prefix)
    # loopback unless a container runtime says otherwise (docker-compose.yml sets LIQWATCH_WEB_BIND)
    web_bind = os.environ.get("LIQWATCH_WEB_BIND", "127.0.0.1")
    (settings.data_dir / settings.worker_id).mkdir(parents=True, exist_ok=True)
    metrics = Metrics()
    services = Supervisor(metrics, settings.worker_id)
    sink = OutputSink(settings.kafka, names, metrics, client_id=settings.worker_id)
    monitor = Monitor(cfg, sink, metrics, names)
    app = faust.App(
        settings.app_id,
        **settings.kafka.faust(),
        store="memory://",
        web_host=web_bind,
        web_bind=web_bind,
        web_port=settings.web_port,
        datadir=str(settings.data_dir / settings.worker_id),
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replicas,
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

    # the pieces, each in its own module; this function only wires them to Faust and to each other
    account_shard = AccountShard(app, table, names, monitor, settings.kafka, settings.app_id, settings.worker_id,
                                 settings.partitions, lambda: feed.caught_up)
    shard = ShardService(monitor, names, settings.kafka, settings.worker_id, account_shard.owned_partitions,
                         account_shard.caught_up, account_shard.retain, account_shard.refresh_offsets)
    coordinator = Coordinator(monitor, names, settings.kafka, settings.partitions, settings.worker_id, services)

    def leading() -> bool:  # Faust's leader, not while a rebalance may be giving the role to another worker
        return app.is_leader() and not app.rebalancing

    leadership = Leadership(cfg, names, monitor, AlertEngine(cfg.alerts, cfg.config_id, metrics, cfg.settlement), coordinator,
                            leading, settings.kafka, settings.worker_id, settings.cascade_retry_s,
                            settings.takeover_boundaries)
    evaluations = Evaluations(monitor, account_shard, shard, leadership, leading, lambda: feed.caught_up,
                              settings.idle_s, settings.takeover_boundaries, settings.worker_id,
                              settings.account_queue)
    feed = MarketFeed(cfg, names, monitor, services, settings.kafka, settings.worker_id, settings.merge_grace_s,
                      settings.resume_pause_s, settings.resume_grace_s, settings.boundary_wait_s,
                      lambda: not app.rebalancing and bool(app.assignor.assigned_actives()), leading,
                      evaluations.at, evaluations.release, staged=settings.market_stage)
    shard.lock = evaluations.lock  # one lock for the shard's accounts
    webhooks = WebhookSender(list(cfg.alerts.webhooks), metrics) if cfg.alerts.webhooks else None

    async def reload() -> None:
        await evaluations.apply_account(account_shard.reload)

    table.on_recover(reload)

    @app.on_partitions_revoked.connect
    async def on_revoked(sender, revoked, **kwargs) -> None:
        # Faust waits for this before the worker rejoins the group: this worker's outputs are on the topics before
        # any other can be assigned its leadership or its partitions (and read what was published)
        await leadership.step_down()
        await evaluations.pause()

    @app.on_partitions_assigned.connect
    async def on_assigned(sender, assigned, **kwargs) -> None:
        evaluations.resume()

    @app.agent(accounts_topic)
    async def accounts(stream):
        """Decode → validate → table + shard accounts. One bad record is dead-lettered, never fatal. Applied
        between the boundaries' account work (worker/evaluations.py), never while it reads the accounts."""
        async for event in stream.events():
            msg = event.message
            got = None

            async def apply() -> None:
                nonlocal got
                got = await monitor.on_account(event.value, Where(msg.topic, msg.partition, msg.offset, msg.key))

            await evaluations.apply_account(apply)
            if got is None:
                continue
            ev, applied = got
            if not applied:
                continue
            if ev.closed:
                table.pop(ev.account, None)
            else:
                table[ev.account] = event.value

    @app.task
    async def start_services() -> None:
        Quieter.install()  # logging is configured by now (Faust's worker)
        StallWatch(metrics.loop_stall_seconds.observe, worker_id=settings.worker_id).start(asyncio.get_running_loop())
        # the threads that compute the account work (health, severities, frozen copies, shard rounds) run at a
        # lower CPU priority than the event loop: on a busy machine the feed gets the cores first
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(
            max_workers=2, thread_name_prefix="liqwatch-account-work", initializer=_background_priority))
        await sink.start()
        if webhooks is not None:
            await webhooks.start()
            delivery = TopicDelivery(webhooks, settings.kafka, names.ALERTS, f"{settings.app_id}-webhooks",
                                     f"{settings.worker_id}-webhooks", int(settings.session_timeout_s * 1000))
            services.start("webhook delivery", delivery.run)
        await coordinator.start()
        services.start("cascade shard", shard.run)
        services.start("account work", evaluations.run)
        services.start("market feed", feed.run, heartbeat=True)

    @app.timer(interval=0.25)
    async def idle_flush() -> None:
        await evaluations.idle()

    @app.timer(interval=1.0)
    async def watch_accounts() -> None:
        await account_shard.unstick()

    @app.page("/metrics")
    async def metrics_page(web, request):
        return web.bytes(metrics.exposition(), content_type=CONTENT_TYPE.split(";")[0] + "; version=0.0.4")

    def readiness() -> dict:
        """What this worker is doing and what it is behind on."""
        owned = sorted(account_shard.owned_partitions())
        return {"worker": settings.worker_id, "leader": app.is_leader(), "event_time": monitor.t,
                # what a stalled worker is waiting for: a rebalance that has not ended here, account work
                # paused for it or queued behind the feed, a leader's cascade run in progress or failed
                "rebalancing": bool(app.rebalancing), "leading": leadership.leading,
                "account_work": {"paused": not evaluations.assigned.is_set(), "queued": len(evaluations.work)},
                "cascades": {"running": not leadership.idle(), "provisional": coordinator.provisional},
                "market_caught_up": feed.caught_up, "lag": dict(feed.lag),
                "accounts": int(monitor.engine.accounts.active[: monitor.engine.accounts.n].sum()),
                "pending_accounts": len(monitor.pending_accounts), "partitions": owned,
                "accounts_caught_up": account_shard.caught_up(monitor.t) if monitor.t >= 0 else False,
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
        await leadership.stop()
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
        await account_shard.stop()
        await sink.stop()
        log.info("%s: stopped cleanly", settings.worker_id)

    return app, monitor


def _background_priority() -> None:
    """Lower this thread's CPU priority (Linux: each thread has its own nice value); elsewhere a no-op."""
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BACKGROUND_NICE)


def run_worker(cfg: Config, settings: WorkerSettings, loglevel: str = "info") -> None:
    log.info("%s: kernels ready in %.1f s", settings.worker_id, warm_kernels(cfg))
    # our topics first, with our settings (Faust would declare the accounts topic with the broker's defaults)
    # Faust's own topics too (the table's changelog, the leader election's), created and seen by the cluster
    # before Faust looks for them
    faust_topics = [TopicSpec(f"{settings.app_id}-accounts-changelog", settings.partitions, compacted=True),
                    TopicSpec(f"{settings.app_id}-__assignor-__leader", 1)]
    asyncio.run(create_topics(settings.kafka, settings.partitions, settings.topic_prefix, extra=faust_topics))
    app, _ = build_app(cfg, settings)
    worker = faust.Worker(app, loglevel=loglevel, quiet=True, redirect_stdouts=False)
    settle_heap()
    stage = None
    if settings.market_stage:
        stage = StageChild([sys.executable, "-m", "liqwatch", "market-stage", "--config", str(settings.config_path),
                            *settings.kafka.options(), "--topic-prefix", settings.topic_prefix,
                            "--group", f"{settings.app_id}-market-stage", "--stage-id",
                            f"{settings.worker_id}-stage"], f"{settings.worker_id}: market stage",
                           env={**os.environ, **settings.kafka.child_env()})
        stage.start()
    try:
        worker.execute_from_commandline()
    finally:
        if stage is not None:
            stage.stop()
