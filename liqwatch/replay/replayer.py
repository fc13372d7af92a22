"""`liqwatch replay`: a post-mortem of an event-time window, from Kafka or a JSONL file, under one or more configs.

    window = read_kafka(kafka, names, t_from, t_to, warmup_ms)      # or read_file(path, t_from, t_to, warmup_ms)
    run = replay(cfg, window)                                          # the live leader's evaluation, in one process
    run.alerts, run.samples, run.cascade_samples, run.liquidated_usd ...

What is read. Ticks and references with event time in [from − warm-up, to] (the warm-up rebuilds the prices and
basis averages a live worker would have had at `from`; it is the config's longest look-back unless given), and
every account snapshot up to `to` (an account at `from` is its latest snapshot of each account before it). Nothing
after `to` is read. Kafka: offsets are found by time (Kafka timestamp = event time), every partition is read up
to the first offset past the window with a consumer that has no group: the live workers' offsets are untouched.

How it runs. The same Monitor, AlertEngine and stress runs the live leader uses, on the same boundaries: market
events in (timestamp, references-before-ticks, offset) order; an account joins the engine once the market reaches
its event time; at every evaluation boundary of the config's schedule (liqwatch.core.schedule: 10 s of event time
by default) the market alerts and a sample of prices and account health; at every cascade boundary (60 s) the
stress cascades with the alerts that read them. When the window reaches the end of the recorded input, one
final evaluation at the last event time — what a live worker does when its input goes idle. So replaying what the
live workers processed gives the alerts they emitted: the same ids and event times.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from liqwatch.kernels.health import margin_health
from liqwatch.kernels.arrays import STATUS_NAMES, AccountArrays
from liqwatch.risk.alerts import AlertEngine
from liqwatch.risk.stress import LocalStressRuns
from liqwatch.config import Config
from liqwatch.events import BadEvent, number, peek
from liqwatch.kafka import Connection
from liqwatch.core.ingest import Gate, PartitionDoor
from liqwatch.core.columns import MarketRows
from liqwatch.core.merge import Merge, next_step
from liqwatch.core.schedule import Boundary, Schedule
from liqwatch.sinks.metrics import Metrics
from liqwatch.core.monitor import Monitor, Where, band_counts, account_notional
from liqwatch.sinks.topics import TopicNames

REFERENCES, TICKS, ACCOUNTS = 0, 1, 2  # ties at one timestamp: references first, as the live market feed
TOPIC_NAME = {REFERENCES: "references", TICKS: "ticks", ACCOUNTS: "accounts"}


class EmptyWindow(ValueError):
    """No tick or reference in the window: nothing to report."""


@dataclass
class Record:
    """One input record, as the live workers see it (the Monitor reads these attributes)."""

    kind: int
    timestamp: int
    value: bytes
    topic: str
    partition: int
    offset: int
    key: bytes | None = None
    event: object = None  # set by the door (liqwatch.core.ingest.PartitionDoor)


@dataclass
class Window:
    t_from: int
    t_to: int
    warmup_ms: int
    market: list[Record]             # ticks and references as recorded: each partition in offset order
    accounts: list[Record]           # account snapshots up to t_to, in event-time order
    complete: bool                   # nothing recorded after t_to: end with the live idle evaluation
    source: dict                     # where it came from (topics and offset ranges, or the file)
    skipped_before: int = 0          # market records before the warm-up (not used)
    skipped_after: int = 0           # records after t_to that were read and left out
    unreadable: list[dict] = field(default_factory=list)  # file lines without a usable event time

    def check(self) -> None:
        if not any(self.t_from <= r.timestamp <= self.t_to for r in self.market):
            raise EmptyWindow(
                f"no tick or reference between {iso(self.t_from)} and {iso(self.t_to)} in {describe(self.source)}"
                + (f" (its market events span {iso(self.source['first_ts'])} to {iso(self.source['last_ts'])})"
                   if self.source.get("first_ts") is not None else " (it holds no market events at all)"))


def iso(ts: int | None) -> str:
    from datetime import datetime, timezone

    if ts is None:
        return "—"
    return datetime.fromtimestamp(ts / 1000, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S") + \
        (f".{ts % 1000:03d}Z" if ts % 1000 else "Z")


def describe(source: dict) -> str:
    if source.get("kind") == "file":
        return f"the file {source['path']}"
    return f"the topics {', '.join(source['topics'])} on {source['bootstrap']}"


def default_warmup_ms(cfg: Config) -> int:
    """The longest look-back of the config: basis windows of the marks and the books' max age. (Reference rates
    may be older: a window needs `--warmup` back to the last reference before it.)"""
    basis = [ins.mark.basis_window_s * 1000 for ins in cfg.instruments.values()
             if getattr(ins.mark, "basis_window_s", None)]
    ages = [cfg.source_max_age_ms(a.index, c) for a in cfg.assets.values() if a.index is not None
            for c in a.index.constituents if not c.is_redemption]
    return int(max(basis + ages + [0]))


# -- input ------------------------------------------------------------------------------------------------------
def _order(records: list[Record]) -> list[Record]:
    """The live merge's order: by merge time (market records carry theirs: liqwatch.core.ingest.PartitionDoor), topic,
    partition, offset."""
    return sorted(records, key=lambda r: (r.timestamp, r.kind, r.partition, r.offset))


def _door(cfg: Config) -> Callable[[], PartitionDoor]:
    gate = Gate(cfg)
    return lambda: PartitionDoor(gate, cfg.ingest.max_ahead_ms, cfg.ingest.jump_keys)


def read_file(path: Path, t_from: int, t_to: int, warmup_ms: int, cfg: Config | None = None) -> Window:
    """A JSONL file of input events (as `liqwatch scenario` writes them): the same window as from Kafka, with
    line numbers for offsets; ticks and references each as one partition. The window's edges are found on the
    merge times `cfg`'s door gives (the first config under review; each config's replay applies its own)."""
    accounts, unreadable = [], []
    parts: dict[int, list[Record]] = {REFERENCES: [], TICKS: []}
    after = 0
    kinds = {"reference": REFERENCES, "tick": TICKS, "account": ACCOUNTS}
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            etype, ts = peek(raw)
            kind = kinds.get(etype)
            if kind is None or ts is None:
                # without a type and an event time a line has no place in the window: counted, reported
                why = "no input type" if kind is None else "no valid ts"
                unreadable.append({"line": lineno, "reason": why})
                continue
            rec = Record(kind, ts, raw.rstrip(b"\n"), f"{path}:{TOPIC_NAME[kind]}", 0, lineno)
            if kind == ACCOUNTS:
                if ts > t_to:
                    after += 1
                else:
                    accounts.append(rec)
                continue
            parts[kind].append(rec)
    market: list[Record] = []
    before = 0
    first = last = None
    door = _door(cfg) if cfg is not None else None
    for recs in parts.values():
        d = door() if door is not None else None
        for rec in recs:
            t = rec.timestamp
            if d is not None:
                try:
                    ev, t = d.admit(rec.value)
                except BadEvent:
                    if d.clock.t >= t_from - warmup_ms:
                        market.append(rec)  # among the window's records: each config's replay dead-letters it
                    continue
                if ev is None:
                    continue
            first = t if first is None else min(first, t)
            last = t if last is None else max(last, t)
            if t > t_to:
                after += 1
                if d is not None:
                    break  # merge times never go down: the rest of this partition is later still
                continue
            if t < t_from - warmup_ms:
                before += 1
                continue
            market.append(rec)
    source = {"kind": "file", "path": str(path), "first_ts": first, "last_ts": last}
    return Window(t_from, t_to, warmup_ms, market, _order(accounts), complete=after == 0, source=source,
                  skipped_before=before, skipped_after=after, unreadable=unreadable)


async def read_kafka(kafka: Connection, names: TopicNames, t_from: int, t_to: int, warmup_ms: int,
                     progress: Callable[[int, int], None] | None = None, cfg: Config | None = None) -> Window:
    """Read the window from the input topics without a consumer group (no offsets committed, no rebalance of
    the live workers): per partition from the first offset at `from − warm-up` (accounts: from the beginning) to
    the first record whose merge time is past `to` (not Kafka's time index: one record dated a day ahead would
    end the window there, where the live workers dead-letter it and go on)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(**kafka.aiokafka(), group_id=None, enable_auto_commit=False,
                                client_id="liqwatch-replay", max_partition_fetch_bytes=8 << 20)
    await consumer.start()
    try:
        topics = {REFERENCES: names.REFERENCES, TICKS: names.TICKS, ACCOUNTS: names.ACCOUNTS}
        cluster = await consumer._client.fetch_all_metadata()  # a group-less consumer has no metadata yet
        missing = [t for t in topics.values() if not cluster.partitions_for_topic(t)]
        if missing:
            raise EmptyWindow(f"the topics {', '.join(missing)} do not exist on {kafka.bootstrap} (is --topic-prefix "
                              f"right? `liqwatch produce` or the live producers create them)")
        kind_of: dict = {}
        for kind, topic in topics.items():
            for p in sorted(cluster.partitions_for_topic(topic)):
                kind_of[TopicPartition(topic, p)] = kind
        tps = list(kind_of)
        begin = await consumer.beginning_offsets(tps)
        end = await consumer.end_offsets(tps)
        # the first offset at or after a time; None: nothing that late
        at_start = await consumer.offsets_for_times({tp: max(t_from - warmup_ms, 0) for tp in tps})
        start, stop = {}, {}
        for tp in tps:
            stop[tp] = end[tp]  # at most; the read ends at the first plausible record past `to`
            if kind_of[tp] == ACCOUNTS:
                start[tp] = begin[tp]
            else:
                start[tp] = end[tp] if at_start[tp] is None else at_start[tp].offset
            start[tp] = min(start[tp], stop[tp])
        # the span of market event times on record, for the message of an empty window
        first_ts = last_ts = None
        for tp in tps:
            if kind_of[tp] != ACCOUNTS and end[tp] > begin[tp]:
                first_ts = await _timestamp_at(consumer, tp, begin[tp], first_ts, min)
                last_ts = await _timestamp_at(consumer, tp, end[tp] - 1, last_ts, max)
        total = sum(stop[tp] - start[tp] for tp in tps)
        market, accounts = [], []
        skipped_after = skipped_before = 0
        todo = [tp for tp in tps if stop[tp] > start[tp]]
        if todo:
            consumer.assign(todo)
            for tp in todo:
                consumer.seek(tp, start[tp])
        done = 0
        # the window's edges on merge times (liqwatch.core.ingest.PartitionDoor, of the first config under review), not
        # on Kafka's timestamps: one record stamped a day ahead would end the window there, where the live
        # workers dead-letter it and go on
        make_door = _door(cfg) if cfg is not None else None
        doors = {tp: make_door() for tp in tps if kind_of[tp] != ACCOUNTS} if make_door else {}
        while todo:
            batch = await consumer.getmany(*todo, timeout_ms=500, max_records=50_000)
            for tp, msgs in batch.items():
                kind = kind_of[tp]
                d = doors.get(tp)
                for m in msgs:
                    if m.offset >= stop[tp]:
                        break
                    done += 1
                    t = m.timestamp
                    if d is not None:
                        try:
                            ev, t = d.admit(m.value)
                        except BadEvent:
                            if d.clock.t >= t_from - warmup_ms:  # among the window's records: dead-lettered
                                market.append(Record(kind, m.timestamp, m.value, tp.topic, tp.partition, m.offset,
                                                     m.key))
                            continue
                        if ev is None:
                            continue
                    if t > t_to:
                        skipped_after += 1
                        if kind == ACCOUNTS:
                            continue  # snapshots dated ahead are judged by the market's clock: read on
                        stop[tp] = m.offset  # merge times never go down: the window ends here
                        break
                    if kind != ACCOUNTS and t < t_from - warmup_ms:
                        skipped_before += 1
                        continue
                    rec = Record(kind, m.timestamp, m.value, tp.topic, tp.partition, m.offset, m.key)
                    (accounts if kind == ACCOUNTS else market).append(rec)
            finished = [tp for tp in todo if stop[tp] < end[tp] or await consumer.position(tp) >= stop[tp]]
            if finished:
                consumer.pause(*finished)
                todo = [tp for tp in todo if tp not in finished]
            if progress:
                progress(done, total)
        complete = all(stop[tp] == end[tp] for tp in tps)
        source = {"kind": "kafka", "bootstrap": kafka.bootstrap, "topics": sorted({tp.topic for tp in tps}),
                  "offsets": {f"{tp.topic}[{tp.partition}]": [start[tp], stop[tp]] for tp in
                              sorted(tps, key=lambda tp: (tp.topic, tp.partition))},
                  "first_ts": first_ts, "last_ts": last_ts}
        return Window(t_from, t_to, warmup_ms, market, _order(accounts), complete=complete, source=source,
                      skipped_before=skipped_before, skipped_after=skipped_after)
    finally:
        await consumer.stop()


async def _timestamp_at(consumer, tp, offset: int, current, pick):
    consumer.assign([tp])
    consumer.seek(tp, offset)
    got = await consumer.getmany(tp, timeout_ms=2000, max_records=1)
    recs = got.get(tp, [])
    if not recs:
        return current
    return recs[0].timestamp if current is None else pick(current, recs[0].timestamp)


# -- the run ------------------------------------------------------------------------------------------------------
class CollectingSink:
    """The Monitor's sink during a replay: dead letters are collected (the live topics are not written)."""

    def __init__(self):
        self.dead: list[dict] = []

    async def emit(self, topic, value, key=None) -> None:
        pass

    async def dead_letter(self, e: BadEvent, topic: str, partition: int, offset: int, raw, key=None) -> None:
        self.dead.append({"reason": e.reason, "kind": e.kind, "topic": topic, "partition": partition,
                          "offset": offset})

    async def flush(self) -> None:
        pass


NEAREST = 15  # positions in the report's table of those nearest their liquidation price


def nearest_liquidation(rows: list[dict], n: int = NEAREST) -> list[dict]:
    """The n positions (`Engine.position_rows`) whose mark is nearest their liquidation price, with `distance`:
    the relative move of the mark that liquidates the account (negative: a fall)."""
    priced = [dict(r, distance=r["liquidation_price"] / r["mark"] - 1.0) for r in rows
              if r["liquidation_price"] is not None and r["mark"]]
    return sorted(priced, key=lambda r: (abs(r["distance"]), r["account"], r["instrument"]))[:n]


@dataclass
class Run:
    """Everything one config's replay produced."""

    config: Config
    name: str
    alerts: list[dict] = field(default_factory=list)
    samples: list[dict] = field(default_factory=list)          # every 10 s of event time in the window
    cascade_samples: list[dict] = field(default_factory=list)  # every 60 s
    dropped_sources: list[dict] = field(default_factory=list)  # episodes of an index constituent left out
    dead_letters: list[dict] = field(default_factory=list)
    liquidated_usd: float = 0.0      # accounts that became liquidatable in the window, each once, at that time
    liquidated_accounts: int = 0
    first_priced: dict | None = None  # market and accounts at the first fully priced boundary (liquidity limits)
    liqmap: dict | None = None        # the liquidation map at the first cascade boundary with every price known
    nearest: list[dict] | None = None  # at the same time, the positions nearest their liquidation price
    last_t: int = -1
    every_ms: dict = field(default_factory=dict)   # evaluation and cascade intervals of event time



class Replayer:
    def __init__(self, cfg: Config, name: str, window: Window):
        self.cfg = cfg
        self.window = window
        self.metrics = Metrics()
        self.sink = CollectingSink()
        self.monitor = Monitor(cfg, self.sink, self.metrics, TopicNames())
        self.alerting = AlertEngine(cfg.alerts, cfg.config_id, self.metrics, cfg.settlement)
        self.stress = LocalStressRuns(self.monitor.engine, cfg, self.metrics, cfg.config_id)
        self.run = Run(cfg, name, every_ms={"evaluate": cfg.schedule.evaluate_every_ms,
                                            "cascade": cfg.schedule.cascade_every_ms})
        self.fallen = np.zeros(0, dtype=np.bool_)
        self._dropping: dict[tuple[str, str], dict] = {}

    async def replay(self, progress: Callable[[int], None] | None = None) -> Run:
        w = self.window
        mon = self.monitor
        accounts = w.accounts
        a = 0

        async def join_accounts(upto: int | None) -> None:
            nonlocal a
            while a < len(accounts) and (upto is None or accounts[a].timestamp <= upto):
                rec = accounts[a]
                a += 1
                # ts > market_t only at the end (upto None): then held, and released just after, like live
                await mon.on_account(rec.value, Where(rec.topic, rec.partition, rec.offset, rec.key))

        # the live feed's merge and schedule, with the whole window buffered: every partition is caught up
        parts = await self._admit(w)
        merge = Merge(sorted(parts))
        for key, recs in parts.items():
            merge.push(key, recs)
        caught = {key: True for key in parts}
        schedule = Schedule(self.cfg.schedule)
        while (step := next_step(merge, schedule, mon.market_t, caught)) is not None:
            if isinstance(step, Boundary):
                if step.t >= w.t_from:  # the warm-up keeps the live schedule but evaluates nothing
                    await self.boundary(step.t, step.cascade)
                if progress:
                    progress(step.t)
                continue
            await mon.on_market(step)
            await join_accounts(mon.market_t)
            await mon.release_accounts(mon.market_t)
        if w.complete:
            # the input ends here: what a live worker does once its input goes idle
            await join_accounts(None)
            await mon.release_accounts(None)
            if mon.t >= w.t_from:
                await self.boundary(mon.t, True, final=True)
        self._close_dropped(mon.t)
        self.run.dead_letters = self.sink.dead + [{"reason": u["reason"], "kind": "unreadable", "topic": "file",
                                                   "partition": 0, "offset": u["line"]} for u in w.unreadable]
        self.run.last_t = mon.t
        return self.run

    async def _admit(self, w: Window) -> dict[tuple[int, int], MarketRows]:
        """The window's market records through this config's doors, one per partition as in the live feed
        (rejected ones dead-lettered), within the window by merge time: per (topic, partition), in offset
        order; references sort before ticks (the merge's order for ties)."""
        cfg, mon = self.cfg, self.monitor
        parts: dict[tuple[int, int], list[Record]] = {}
        for rec in w.market:
            parts.setdefault((rec.kind, rec.partition), []).append(dataclasses.replace(rec))
        admitted = {}
        for key, recs in parts.items():
            door = PartitionDoor(mon.engine.gate, cfg.ingest.max_ahead_ms, cfg.ingest.jump_keys)
            batch = await mon.admit_market(door, recs)
            inside = np.flatnonzero((batch.merge_ts >= w.t_from - w.warmup_ms) & (batch.merge_ts <= w.t_to))
            admitted[key] = MarketRows(batch.rows[inside], [batch.records[i] for i in inside.tolist()])
        return admitted

    async def boundary(self, t: int, cascades: bool, final: bool = False) -> None:
        mon = self.monitor
        eng = mon.engine
        eng.max_ts = mon.t
        alerts = self.alerting.market(eng, t)
        self._sample(t, final)
        if cascades:
            pv = mon.snapshot()
            if self.run.liqmap is None and self.run.first_priced is not None:
                levels = self.cfg.liqmap.levels()
                self.run.liqmap = {"t": pv.t, "assets": {a: eng.liquidation_map(a, levels)
                                                         for a in self.cfg.liqmap_assets()}}
                self.run.nearest = nearest_liquidation(eng.position_rows())
            results, critical, exposure = await self.stress.run_all(pv)
            alerts += self.alerting.cascades(critical, pv.t, self.stress.solvency)
            if exposure is not None:
                alerts += self.alerting.accounts(exposure, pv.t)
            primary = self.cfg.stress.primary_scenario
            self.run.cascade_samples.append({
                "t": pv.t, "critical_severity": critical[primary].severity if primary in critical else None,
                "cascades": [{"scenario": r["scenario"], "severity": r["severity"],
                              "liquidated_usd": r["liquidated_notional"], "amplification": r["amplification"],
                              "rounds": r["rounds"], "runaway": r["runaway"], "deficit_usd": r["deficit_usd"],
                              "fund_drawdown_usd": (r["insurance_fund"] or {}).get("drawdown_usd"),
                              "adl_notional_usd": (r["insurance_fund"] or {}).get("adl_notional_usd")}
                             for r in results]})
        self.run.alerts += alerts

    def _sample(self, t: int, final: bool) -> None:
        """Prices, sources left out of each index, accounts by health band and liquidatable notional at t."""
        mon = self.monitor
        eng = mon.engine
        m = eng.market
        lay = eng.layout
        index = {}
        for a, name in enumerate(lay.assets):
            if name in self.cfg.assets and not lay.index_params.fixed_one[a]:
                index[name] = number(m.index[a])
        reference = {}
        for a, name in enumerate(lay.assets):
            if m.ref_in[a] >= 0 and not math.isnan(m.ref_rate[a]):
                reference[name] = number(m.redemption_value(a))
        venues = {}
        for k, (venue, symbol) in enumerate(m.books):
            base = m.base[k]
            if base >= 0 and not math.isnan(m.mid[k]) and "/" in symbol:
                venues[f"{venue}:{symbol}"] = number(m.venue_price(k))
        dropped = {}
        for c, (asset, source) in enumerate(lay.constituents):
            status = int(m.source_status[c])
            if status in STATUS_NAMES:
                dropped.setdefault(asset, {})[source] = STATUS_NAMES[status]
        self._track_dropped(t, dropped)
        # health of every account at t (the live shards' view, all shards together)
        pv = eng.prices(t)
        accounts = eng.accounts.view()
        n = accounts.active.shape[0]
        eq, mm, h = np.empty(n), np.empty(n), np.empty(n)
        liq = np.empty(n, dtype=np.bool_)
        margin_health(pv.index, pv.mark, accounts, lay.risk_params, eq, mm, h, liq)
        active = accounts.active
        bands = band_counts(h, liq, active)
        liquidatable = liq & active
        notional = self._notional(liquidatable, accounts, pv)
        # forced liquidations on the recorded prices: each account counted once, when it first falls
        if self.fallen.shape[0] < n:
            self.fallen = np.concatenate([self.fallen, np.zeros(n - self.fallen.shape[0], dtype=np.bool_)])
        new = liquidatable & ~self.fallen[:n]
        if new.any():
            self.run.liquidated_usd += self._notional(new, accounts, pv)
            self.run.liquidated_accounts += int(new.sum())
            self.fallen[:n] |= new
        sample = {"t": t, "index": index, "reference": reference, "venues": venues, "dropped": dropped,
                  "bands": bands, "accounts": int(active.sum()), "liquidatable_accounts": int(liquidatable.sum()),
                  "liquidatable_usd": notional, "liquidated_usd": self.run.liquidated_usd,
                  "liquidated_accounts": self.run.liquidated_accounts}
        if self.run.first_priced is None and active.any() and all(v is not None for v in index.values()):
            # the state the liquidity limits are read at: the first with every index priced and an active account
            frozen = AccountArrays(*(np.array(x) for x in accounts))
            self.run.first_priced = {"t": t, "pv": mon.snapshot(), "accounts": frozen}
        if final and self.run.samples and self.run.samples[-1]["t"] == t:
            self.run.samples[-1] = sample  # the idle evaluation at the last boundary's time: one point
        else:
            self.run.samples.append(sample)

    def _notional(self, mask: np.ndarray, accounts, pv) -> float:
        return account_notional(mask, accounts, pv.index, pv.mark)

    def _track_dropped(self, t: int, dropped: dict[str, dict[str, str]]) -> None:
        now = {(asset, source): reason for asset, d in dropped.items() for source, reason in d.items()}
        for key, ep in list(self._dropping.items()):
            if now.get(key) != ep["reason"]:
                ep["until"] = t
                self.run.dropped_sources.append(ep)
                del self._dropping[key]
        for (asset, source), reason in now.items():
            if (asset, source) not in self._dropping:
                self._dropping[(asset, source)] = {"asset": asset, "source": source, "reason": reason, "from": t,
                                                   "until": None}

    def _close_dropped(self, t: int) -> None:
        for ep in self._dropping.values():
            self.run.dropped_sources.append(ep)  # still left out at the end of the window (until: null)
        self._dropping.clear()
        self.run.dropped_sources.sort(key=lambda e: (e["from"], e["asset"], e["source"]))


def replay(cfg: Config, window: Window, name: str = "config", progress: Callable[[int], None] | None = None) -> Run:
    return asyncio.run(Replayer(cfg, name, window).replay(progress))


def live_alert_key(a: dict) -> tuple:
    """What must agree between a live alert and its replay: the episode, its transition and event time."""
    return (a["id"], a["state"], a["severity"], a["ts"])


def compare_alerts(live: Iterable[dict], replayed: Iterable[dict]) -> tuple[list, list]:
    """(in live only, in replay only), by live_alert_key."""
    lk = [live_alert_key(a) for a in live]
    rk = [live_alert_key(a) for a in replayed]
    return sorted(set(lk) - set(rk)), sorted(set(rk) - set(lk))
