"""One worker's monitor state and what it emits: the glue between topics and the shared Engine.

    mon = Monitor(cfg, sink, metrics, names)
    await mon.on_market(record)         # a tick or reference, in the merged event-time order
    await mon.on_account(raw, where)    # from this worker's account partitions
    await mon.evaluate(full=True)       # health of this shard (+ severities), metrics, marks

Every worker holds the whole market (it reads every tick and reference) and the accounts of the partitions it
owns. Health events are emitted when an account's numbers change: during the stream only changes above
a health band (or a liquidatable flip), and when the input goes idle every exact change, so the last health
event of each account equals `liqwatch health` on the same events.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
from dataclasses import dataclass

import msgspec
import numpy as np

from liqwatch.kernels.health import margin_health
from liqwatch.kernels.keys import partitions_of
from liqwatch.kernels.market import APPLIED, EVENT_TICK, REJECTED, SUPERSEDED
from liqwatch.core.columns import MarketRows, admit_rows
from liqwatch.core.staged import Staged, rules_id
from liqwatch.kernels.arrays import STATUS_NAMES
from liqwatch.kernels.stress import liquidation_severity
from liqwatch.config import Config
from liqwatch.core.engine import SEVERITY_GRID, Engine
from liqwatch.events import Account, BadEvent, number
from liqwatch.sinks.metrics import HEALTH_BANDS, Metrics
from liqwatch.sinks.kafka import OutputSink
from liqwatch.sinks.topics import TopicNames

log = logging.getLogger(__name__)
_BAND_EDGES = np.array([hi for _, _, hi in HEALTH_BANDS if hi is not None])


def _band(health: np.ndarray) -> np.ndarray:
    """Index of the health band (NaN health: its own band)."""
    return np.where(np.isnan(health), -1, np.searchsorted(_BAND_EDGES, health, side="right"))


def band_counts(health: np.ndarray, liquidatable: np.ndarray, active: np.ndarray) -> dict[str, int]:
    """Active accounts per health band (metrics.HEALTH_BANDS; the first band is 'liquidatable')."""
    out = {}
    for band, lo, hi in HEALTH_BANDS:
        sel = active & ~np.isnan(health)
        if lo is None:
            sel &= liquidatable
        else:
            sel &= health >= lo
            if hi is not None:
                sel &= health < hi
        out[band] = int(sel.sum())
    return out


def account_notional(mask: np.ndarray, accounts, index: np.ndarray, mark: np.ndarray) -> float:
    """Positions' |qty|·mark plus collateral value of the accounts in `mask`."""
    own = accounts.pos_owner
    live = own >= 0
    pos = np.abs(accounts.pos_qty[live]) * mark[accounts.pos_instr[live]]
    cown = accounts.coll_owner
    clive = cown >= 0
    coll = accounts.coll_qty[clive] * index[accounts.coll_asset[clive]]
    return float(np.nansum(pos[mask[own[live]]]) + np.nansum(coll[mask[cown[clive]]]))


@dataclass
class Where:
    topic: str
    partition: int
    offset: int
    key: bytes | None = None
    raw: bytes | None = None  # the original bytes, kept while an event waits (a later dead letter carries them)



_OLDER = object()  # a health event of a time its partition's last owner published past


class StageMismatch(RuntimeError):
    """A staged record of another config than this worker's (its book slots are not this config's)."""


class Monitor:
    def __init__(self, cfg: Config, sink: OutputSink, metrics: Metrics, names: TopicNames):
        self.cfg = cfg
        self.config_id = cfg.config_id
        self.engine = Engine(cfg)
        self.rules = rules_id(cfg, self.engine.gate, self.engine.market.slot, self.engine.layout.asset_id)
        self.sink = sink
        self.metrics = metrics
        self.names = names
        self.market_t = -1
        # event time up to which held account snapshots have joined (`release_accounts`): a snapshot later than
        # this waits, so that work queued for an earlier boundary still sees the accounts of its time
        self.accounts_upto = -1
        self.accounts_t = -1
        self.dirty = False
        self.last_input_wall = time.monotonic()
        self.last_account_wall = 0.0
        self.account_offsets: dict[int, int] = {}  # per account partition: last offset consumed
        self.account_ts: dict[int, int] = {}       # and the largest event time applied from it
        self.pending_accounts: list = []            # account events ahead of the market's event time
        self._last_marks: dict[str, float] = {}
        self.marks_upto = -1  # marks up to this event time were published by the last leader (worker/leader.py)
        self._forget_sent()
        self.row_partition = np.zeros(0, dtype=np.int32)
        self.partition_count = 0
        # per account partition taken over (or kept) in a rebalance: the event time of the last health event its
        # owner published and its events at that time by (account, isolated). Evaluations before that time, and
        # these very events at it, were published already (worker/accounts.py reads them at the new assignment)
        self.published: dict[int, tuple[int, dict[tuple, bytes]]] = {}
        self._retained_for: set[int] = set()
        self._retained_rows = -1

    # -- input ---------------------------------------------------------------------------------------------
    async def admit_market(self, door, records: list, values: list | None = None) -> MarketRows:
        """Records of one market partition in offset order through its door (liqwatch.core.ingest.PartitionDoor),
        as rows with their merge times (liqwatch.core.columns); the rejected ones dead-lettered. `values`: the
        records' values, when the reader has them apart."""
        m = self.engine.market
        batch, rejected, ignored = admit_rows(door, records, m.slot, self.engine.layout.asset_id, values=values)
        if ignored:  # books the config does not name, ignored by rule
            self.metrics.ignored.labels(reason="unknown_source").inc(ignored)
        for rec, e in rejected:
            await self.sink.dead_letter(e, rec.topic, rec.partition, rec.offset, rec.value, rec.key)
        return batch

    async def admit_staged(self, staged: Staged, topic: str, after: int) -> MarketRows:
        """A market stage's record of a tick partition (liqwatch.core.staged): its rows and the dead letters of
        the records its door rejected, only those with an offset above `after` (a record staged twice)."""
        if staged.rules != self.rules:
            raise StageMismatch(f"{topic}[{staged.partition}] was staged under other market rules ({staged.rules}; "
                                f"this worker: {self.rules}): books, assets and ingest must be the same in the "
                                "market stages' and the workers' configs")
        if staged.last <= after:
            return MarketRows.empty()
        if staged.ignored and after < staged.first:
            self.metrics.ignored.labels(reason="unknown_source").inc(staged.ignored)
        for r in staged.rejected:
            if r.offset > after:
                await self.sink.dead_letter(BadEvent(r.kind, r.reason), topic, staged.partition, r.offset, r.value,
                                            r.key)
        return staged.market_rows(topic, after)

    async def on_market(self, batch: MarketRows) -> None:
        """A run of admitted rows (`admit_market`) in merged event-time order: applied in one kernel call; what
        the market state rejects (out of order, ahead of the market) dead-lettered with its record."""
        if not len(batch):
            return
        rows = batch.rows
        try:
            codes, rejected = self.engine.apply_rows(rows)
        except Exception as e:  # a bug must not stop the stream: keep the records, say what happened
            log.exception("unexpected error applying %d market events", len(batch))
            codes = np.full(len(batch), REJECTED, dtype=np.int8)
            rejected = dict.fromkeys(range(len(batch)), BadEvent("internal", f"(internal): {type(e).__name__}: {e}"))
        for j, err in rejected.items():
            rec = batch.records[j]
            await self.sink.dead_letter(err, rec.topic, rec.partition, rec.offset, rec.value, rec.key)
        applied = codes == APPLIED
        ticks = int((applied & (rows["kind"] == EVENT_TICK)).sum())
        self.metrics.events.labels(topic="ticks").inc(ticks)
        self.metrics.events.labels(topic="references").inc(int(applied.sum()) - ticks)
        superseded = int((codes == SUPERSEDED).sum())
        if superseded:
            self.metrics.superseded.labels(topic="ticks/references").inc(superseded)
        if applied.any():
            self.market_t = max(self.market_t, int(rows["ts"][applied].max()))
        self.dirty = True
        self.last_input_wall = time.monotonic()

    async def on_account(self, raw: bytes, where: Where) -> tuple[Account, bool] | None:
        """Apply one account record; (event, applied) or None when dead-lettered."""
        self.last_account_wall = time.monotonic()
        self.account_offsets[where.partition] = where.offset
        try:
            ev = self.engine.gate.admit(raw)
            if not isinstance(ev, Account):
                kind = "an ignored tick" if ev is None else f"type: '{type(ev).__name__.lower()}'"
                raise BadEvent("unknown_type", f"{kind} on the {where.topic} topic")
            if ev.ts > self.accounts_upto:
                # by event time: an account snapshot joins the shard once the market has reached its ts (and the
                # work of the boundaries before it is done), so that cascades and alerts at event time t see exactly
                # the accounts of t, however fast each consumer ran
                if not ev.closed:
                    self.engine.accounts.check(ev)  # reject now, while the original bytes are at hand
                self.pending_accounts.append((ev, dataclasses.replace(where, raw=raw)))
                self.account_ts[where.partition] = max(self.account_ts.get(where.partition, -1), ev.ts)
                self.dirty = True
                self.last_input_wall = time.monotonic()
                return ev, True
            applied = self.engine.apply(ev)
        except BadEvent as e:
            await self.sink.dead_letter(e, where.topic, where.partition, where.offset, raw, where.key)
            return None
        except Exception as e:
            log.exception("unexpected error on %s[%d]@%d", where.topic, where.partition, where.offset)
            await self.sink.dead_letter(BadEvent("internal", f"(internal): {type(e).__name__}: {e}"),
                                        where.topic, where.partition, where.offset, raw, where.key)
            return None
        (self.metrics.events if applied else self.metrics.superseded).labels(topic="accounts").inc()
        self.accounts_t = max(self.accounts_t, ev.ts)
        self.account_ts[where.partition] = max(self.account_ts.get(where.partition, -1), ev.ts)
        self.dirty = True
        self.last_input_wall = time.monotonic()
        return ev, applied

    async def release_accounts(self, upto: int | None = None) -> int:
        """Apply the held account events with ts <= upto (all of them when upto is None), in arrival order; later
        ones up to `upto` join directly."""
        self.accounts_upto = max(self.accounts_upto, self.market_t if upto is None else upto)
        if not self.pending_accounts:
            return 0
        keep, n = [], 0
        for ev, where in self.pending_accounts:
            if upto is not None and ev.ts > upto:
                keep.append((ev, where))
                continue
            try:
                applied = self.engine.apply(ev)
            except BadEvent as e:  # e.g. out of order against a snapshot applied meanwhile
                await self.sink.dead_letter(e, where.topic, where.partition, where.offset, where.raw, where.key)
                continue
            except Exception as e:  # noqa: BLE001 - one account must not stop the feed that released it
                log.exception("unexpected error applying %s[%d]@%d", where.topic, where.partition, where.offset)
                await self.sink.dead_letter(BadEvent("internal", f"(internal): {type(e).__name__}: {e}"),
                                            where.topic, where.partition, where.offset, where.raw, where.key)
                continue
            (self.metrics.events if applied else self.metrics.superseded).labels(topic="accounts").inc()
            self.accounts_t = max(self.accounts_t, ev.ts)
            n += 1
        self.pending_accounts = keep
        return n

    async def retain_partitions(self, owned: set[int], partitions: int) -> int:
        """Drop accounts of partitions this worker no longer owns (after a rebalance); returns how many.
        An account's partition is the one Kafka's default partitioner gives its key."""
        accounts = self.engine.accounts
        self.partition_count = partitions
        if owned == self._retained_for and accounts.n == self._retained_rows:
            return 0  # nothing moved since the last check
        known, n = self.row_partition.shape[0], accounts.n
        if known < n:  # rows are never reused, so each row's partition is computed once
            # in a thread: encoding a million fresh keys is Python work of 0.3-2 s, which stood the event loop
            # (and the ticks behind it) once the accounts had loaded; with the switch interval the loop runs
            fresh = await asyncio.to_thread(partitions_of, accounts.ids[known:n], partitions)
            if self.engine.accounts is not accounts or self.row_partition.shape[0] != known:
                return 0  # the shard was rebuilt, or another call got there first: the next check retains
            self.row_partition = np.concatenate([self.row_partition, fresh])
        self._retained_for, self._retained_rows = set(owned), n
        foreign = accounts.active[: accounts.n] & ~np.isin(self.row_partition[: accounts.n], list(owned))
        rows = np.flatnonzero(foreign)
        for r in rows:
            accounts.drop(int(r))
        if rows.size:
            log.info("dropped %d accounts of partitions no longer owned (owned: %s)", rows.size, sorted(owned))
            self.dirty = True
        return int(rows.size)

    def reset_accounts(self, snapshots: list[bytes]) -> None:
        """Rebuild this shard's accounts (after recovery or a rebalance) from the accounts table."""
        from liqwatch.core.state import Accounts

        severities = self._severities()
        self.engine.accounts = Accounts(self.engine.layout)
        self.row_partition = np.zeros(0, dtype=np.int32)
        # retained for nothing yet: Faust's memory table keeps the accounts of partitions taken away, and a rebuild
        # of as many rows for the same partitions as the last check was taken for "nothing moved" (they were
        # counted twice in every cascade after a second rebalance)
        self._retained_for, self._retained_rows = set(), -1
        self.pending_accounts = []
        rejected: dict[str, int] = {}
        for raw in snapshots:  # the table holds snapshots that were valid, under the config of their time
            where = Where("accounts-table", -1, -1, raw=raw)
            try:
                ev = self.engine.gate.admit(raw)
                if not isinstance(ev, Account):
                    raise BadEvent("unknown_type", "(table): not an account snapshot")
                if ev.ts > self.accounts_upto:
                    self.pending_accounts.append((ev, where))
                else:
                    self.engine.accounts.apply(ev)
            except BadEvent as e:  # e.g. a config changed since: keep the rest, say how many and why (once)
                rejected[e.reason] = rejected.get(e.reason, 0) + 1
                self.metrics.ignored.labels(reason=f"table_{e.kind}").inc()
        if rejected:
            log.warning("accounts table: %d snapshots not restored under this config: %s", sum(rejected.values()),
                        "; ".join(f"{n}× {r}" for r, n in list(rejected.items())[:5]))
        self._forget_sent()
        self.seed_severities(severities)
        self.dirty = True

    def _severities(self) -> dict[tuple, float]:
        """The liquidation severity last computed for each row, by (account, isolated)."""
        acc = self.engine.accounts
        sev = self.severity
        return {(acc.ids[r], acc.isolated_name(r)): float(sev[r]) for r in range(min(acc.n, sev.shape[0]))
                if acc.active[r] and not math.isnan(sev[r])}

    def seed_severities(self, by_key: dict[tuple, float]) -> None:
        """Severities are recomputed at severity boundaries only: rebuilt rows take the ones last computed for
        their account (here, or by their partition's last owner), not NaN, and not another row's."""
        acc = self.engine.accounts
        self._grow(acc.view().active.shape[0])
        for r in range(acc.n):
            v = by_key.get((acc.ids[r], acc.isolated_name(r)))
            if v is not None:
                self.severity[r] = v

    # -- evaluation ------------------------------------------------------------------------------------------
    def snapshot(self):
        """Prices at the current event time with copies of every quote array: cascades run on it while the
        market feed moves on."""
        pv = self.engine.prices(self.t)
        return dataclasses.replace(pv, quotes=pv.quotes._replace(
            **{f: np.array(getattr(pv.quotes, f)) for f in pv.quotes._fields}))

    @property
    def t(self) -> int:
        return max(self.market_t, self.accounts_t)

    async def evaluate(self, full: bool, with_severity: bool, prices=None, in_thread: bool = False) -> int:
        """Health of this shard at the current event time (or at the snapshot `prices`, liqwatch.core.state
        PriceView); emits health events, returns how many. `in_thread`: the numbers are computed in a thread (the
        kernels release the GIL) so that the event loop, and the market feed on it, keep running meanwhile; the
        caller makes sure that the accounts do not change until it returns (worker/evaluations.py)."""
        if self.t < 0:
            return 0
        eng = self.engine
        if prices is None:
            eng.max_ts = self.t
            prices = eng.prices()
        if in_thread:
            out = await asyncio.to_thread(self._numbers, prices, full, with_severity)
        else:
            out = self._numbers(prices, full, with_severity)
        rows, eq, mm, h, liq, sev, positions = out
        ids = eng.accounts.ids
        isolated = eng.accounts.isolated_name
        accounts = eng.accounts.view()  # unchanged until this returns (the caller's promise, above)
        prior = self._published_before(rows, prices.t)
        sent = 0
        for k, r in enumerate(rows.tolist()):
            before = None if prior is None else prior[k]
            if before is _OLDER:
                continue
            event = {
                "type": "health", "account": ids[r], "isolated": isolated(r), "ts": prices.t, "equity": number(eq[r]),
                "maintenance": number(mm[r]), "health": number(h[r]), "liquidatable": bool(liq[r]),
                "liquidation_severity": number(sev[r]),
                # built here, between the loop's other work, not in the thread: a dict per position holds the GIL
                "positions": eng.position_entries(r, accounts, *positions), "config_id": self.config_id}
            if before is not None and msgspec.json.encode(event) == before:
                continue  # this very event is on the topic already
            await self.sink.emit(self.names.HEALTH, event)
            sent += 1
            if in_thread and k % 2000 == 1999:
                await asyncio.sleep(0)  # a crash moves many accounts across bands: let the feed run between
        return sent

    def _published_before(self, rows: np.ndarray, t: int) -> list | None:
        """Per row, what the last owner of its partition published (`published`): _OLDER when it published
        evaluations after t (this one among them), the bytes of its event at t when t is its last evaluation, or
        None; None for all when nothing can have been published."""
        pub = self.published
        if not pub:
            return None
        if all(t > upto for upto, _ in pub.values()):
            pub.clear()  # this shard is past every partition's last owner: from now on it publishes everything
            return None
        n, known = self.engine.accounts.n, self.row_partition.shape[0]
        if known < n and self.partition_count:
            self.row_partition = np.concatenate([self.row_partition, partitions_of(
                self.engine.accounts.ids[known:n], self.partition_count)])
        ids, isolated = self.engine.accounts.ids, self.engine.accounts.isolated_name
        out: list = [None] * rows.shape[0]
        for k, r in enumerate(rows.tolist()):
            entry = pub.get(int(self.row_partition[r])) if r < self.row_partition.shape[0] else None
            if entry is not None:
                upto, events = entry
                out[k] = _OLDER if t < upto else events.get((ids[r], isolated(r))) if t == upto else None
        return out

    def _numbers(self, pv, full: bool, with_severity: bool):
        """The numeric part of `evaluate`: margin health, severities, which rows changed, the account metrics."""
        eng = self.engine
        t0 = time.perf_counter()
        accounts = eng.accounts.view()
        n = accounts.active.shape[0]
        eq, mm, h = np.empty(n), np.empty(n), np.empty(n)
        liq = np.empty(n, dtype=np.bool_)
        margin_health(pv.index, pv.mark, accounts, eng.layout.risk_params, eq, mm, h, liq)
        self.metrics.kernel_seconds.labels(kernel="margin_health").observe(time.perf_counter() - t0)
        self._grow(n)
        if with_severity:
            t1 = time.perf_counter()
            stress = self.cfg.stress
            out = np.empty(n)
            liquidation_severity(
                float(pv.t), float(stress.severities[-1]), SEVERITY_GRID,
                eng.layout.scenario_direction(stress.primary_scenario), pv.quotes, eng.layout.index_params,
                eng.layout.mark_params, pv.index, accounts, eng.layout.risk_params, out)
            self.severity[:n] = out
            self.metrics.kernel_seconds.labels(kernel="liquidation_severity").observe(time.perf_counter() - t1)
            t2 = time.perf_counter()
            self._liquidation_map(pv, accounts)
            self.metrics.kernel_seconds.labels(kernel="liquidation_map").observe(time.perf_counter() - t2)
        sev = self.severity[:n]
        changed = self._changed(n, eq, mm, sev, liq, accounts.active, exact=full)
        self.sent_equity[:n] = np.where(changed, eq, self.sent_equity[:n])
        self.sent_maintenance[:n] = np.where(changed, mm, self.sent_maintenance[:n])
        self.sent_severity[:n] = np.where(changed, sev, self.sent_severity[:n])
        self.sent_liquidatable[:n] = np.where(changed, liq, self.sent_liquidatable[:n])
        self.sent_active[:n] = np.where(changed, accounts.active, self.sent_active[:n])
        self._account_metrics(eq, mm, h, liq, accounts, pv)
        rows = np.flatnonzero(changed & accounts.active)
        t3 = time.perf_counter()
        positions = eng.position_numbers_of(rows, pv, accounts)
        self.metrics.kernel_seconds.labels(kernel="position_prices").observe(time.perf_counter() - t3)
        return rows, eq, mm, h, liq, sev.copy(), positions

    def _liquidation_map(self, pv, accounts) -> None:
        """This shard's cells of the liquidation map (config `liqmap`), one gauge per underlying and level."""
        for asset in self.cfg.liqmap_assets():
            c = self.engine.map_cells(asset, self.cfg.liqmap.levels(), pv, accounts)
            for f, added in zip(c["levels"].tolist(), c["added"].tolist()):
                self.metrics.liquidation_map.labels(underlying=asset, move=f"{f - 1.0:+.4f}").set(
                    added if math.isfinite(added) else 0.0)

    def _forget_sent(self) -> None:
        """What was emitted per row: nothing (new rows; a rebuilt shard numbers its rows afresh, fewer or more)."""
        self.sent_equity = np.zeros(0)
        self.sent_maintenance = np.zeros(0)
        self.sent_severity = np.zeros(0)
        self.sent_liquidatable = np.zeros(0, dtype=np.bool_)
        self.sent_active = np.zeros(0, dtype=np.bool_)
        self.severity = np.zeros(0)

    def _grow(self, n: int) -> None:
        if self.sent_active.shape[0] >= n:
            return
        def grow(a, fill):
            out = np.full(n, fill, dtype=a.dtype)
            out[: a.shape[0]] = a
            return out
        self.sent_equity = grow(self.sent_equity, np.nan)
        self.sent_maintenance = grow(self.sent_maintenance, np.nan)
        self.sent_severity = grow(self.sent_severity, np.nan)
        self.sent_liquidatable = grow(self.sent_liquidatable, False)
        self.sent_active = grow(self.sent_active, False)
        self.severity = grow(self.severity, np.nan)

    def _changed(self, n, eq, mm, sev, liq, active, exact: bool) -> np.ndarray:
        """Rows to emit. Exact: any change at all (the idle flush, so the last event is final). Otherwise only
        what a risk engineer acts on: a liquidatable flip, health crossing a band (metrics.HEALTH_BANDS), or the
        liquidation severity moving by more than half a percentage point."""
        was_active = self.sent_active[:n]
        flips = (active != was_active) | (liq != self.sent_liquidatable[:n])
        if exact:
            def differs(a, b):
                return ~(np.isnan(a) & np.isnan(b)) & (a != b)
            moved = differs(eq, self.sent_equity[:n]) | differs(mm, self.sent_maintenance[:n]) | differs(
                sev, self.sent_severity[:n])
        else:
            with np.errstate(divide="ignore", invalid="ignore"):
                moved = _band(eq / mm) != _band(self.sent_equity[:n] / self.sent_maintenance[:n])
            s_old = self.sent_severity[:n]
            moved |= (np.isnan(sev) != np.isnan(s_old)) | (np.abs(sev - s_old) > 0.005)
        return flips | (active & moved)

    def _account_metrics(self, eq, mm, h, liq, accounts, pv) -> None:
        active = accounts.active
        for band, count in band_counts(h, liq, active).items():
            self.metrics.accounts.labels(band=band).set(count)
        self.metrics.liquidatable_accounts.set(int((liq & active).sum()))
        self.metrics.equity_total.set(float(np.nansum(np.where(active, eq, 0.0))))
        self.metrics.liquidatable_notional.set(account_notional(liq & active, accounts, pv.index, pv.mark))

    async def emit_marks(self, leader: bool) -> None:
        """Price metrics (every worker: each is scraped on its own) and, on the leader, index and mark events
        for what changed since the last emission."""
        eng = self.engine
        m = eng.market
        lay = eng.layout
        t = m.t
        for k, (venue, symbol) in enumerate(m.books):
            base = m.base[k]
            if base >= 0 and not math.isnan(m.mid[k]):
                price = m.venue_price(k)
                self.metrics.venue_price.labels(venue=venue, symbol=symbol, asset=lay.assets[base]).set(price)
        for a, name in enumerate(lay.assets):
            if m.ref_in[a] >= 0 and not math.isnan(m.ref_rate[a]):
                self.metrics.reference_value.labels(asset=name).set(m.redemption_value(a))
        for a, name in enumerate(lay.assets):
            if name not in self.cfg.assets or lay.index_params.fixed_one[a]:
                continue
            lo, hi = lay.index_params.cons_ptr[a], lay.index_params.cons_ptr[a + 1]
            for status, reason in STATUS_NAMES.items():
                self.metrics.sources_dropped.labels(asset=name, reason=reason).set(
                    int((m.source_status[lo:hi] == status).sum()))
            value = float(m.index[a])
            self.metrics.index.labels(asset=name).set(value)
            self.metrics.index_stale.labels(asset=name).set(float(m.index_stale[a]))
            if not leader or self._last_marks.get(name) == value or math.isnan(value):
                continue
            self._last_marks[name] = value
            if t <= self.marks_upto:
                continue  # the last leader, ahead of this worker, published the marks of this time
            used, dropped = [], []
            for c in range(lo, hi):
                src = lay.constituents[c][1]
                status = int(m.source_status[c])
                price = number(m.source_price[c])
                (used if status == 0 else dropped).append(
                    {"source": src, "price": price} | ({} if status == 0 else {"reason": STATUS_NAMES[status]}))
            await self.sink.emit(self.names.MARKS, {"type": "mark", "asset": name, "ts": t, "index": value,
                                                    "stale": bool(m.index_stale[a]), "used": used,
                                                    "dropped": dropped})
        for i, name in enumerate(lay.instruments):
            value = float(m.mark[i])
            self.metrics.mark.labels(instrument=name).set(value)
            if not leader or self._last_marks.get(name) == value or math.isnan(value):
                continue
            self._last_marks[name] = value
            if t <= self.marks_upto:
                continue
            await self.sink.emit(self.names.MARKS, {"type": "mark", "instrument": name, "ts": t, "mark": value,
                                                    "stale": bool(m.index_stale[lay.mark_params.underlying[i]])})
        self.metrics.event_time.set(t / 1000.0)
