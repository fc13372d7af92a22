"""What the monitor knows at a moment: the market (books, reference rates, basis samples) and the accounts.

    market = MarketState(layout)
    market.apply_tick(tick)          # validates against the config, updates the book, re-evaluates prices
    market.index, market.mark        # after the last market event
    accounts = Accounts(layout)
    accounts.apply(account_event)    # a snapshot replaces the previous one; closed=true removes it
    accounts.view()                  # liqwatch.kernels.arrays.AccountArrays over the live arrays

Prices are re-evaluated after every market event, in event order: "the index keeps its last value" when a source
set goes stale and the perpetual's basis samples (mid − index at each of its ticks) are defined by that schedule,
so a live worker and a batch run that see the same events in the same order give the same numbers.

An event older than the last one of its key by more than `ingest.out_of_order_ms` is rejected (BadEvent
`out_of_order`); an older one within the tolerance is counted as superseded and not applied.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from liqwatch.kernels.market import (APPLIED, EVENT_TICK, OUT_OF_ORDER, REJECTED, STOP_AHEAD, STOP_BASIS_FULL,
                                     SUPERSEDED, BasisRings, BookArrays, apply_market_run)
from liqwatch.kernels.prices import compute_index, compute_marks
from liqwatch.kernels.arrays import AccountArrays, Quotes
from liqwatch.events import Account, BadEvent, Reference, Tick
from liqwatch.core.columns import MarketRows
from liqwatch.core.ingest import EventClock
from liqwatch.core.layout import Layout



def _grow(a: np.ndarray, n: int, fill) -> np.ndarray:
    if n <= a.shape[0]:
        return a
    out = np.full(max(n, 2 * a.shape[0], 16), fill, dtype=a.dtype)
    out[: a.shape[0]] = a
    return out


class _Ordering:
    """Last event time per key, and the out-of-order rule."""

    def __init__(self, tolerance_ms: int):
        self.tolerance_ms = tolerance_ms
        self.last: dict[str, int] = {}
        self.superseded = 0

    def admit(self, key: str, ts: int) -> bool:
        prev = self.last.get(key)
        if prev is not None and ts < prev:
            if prev - ts > self.tolerance_ms:
                raise BadEvent(
                    "out_of_order",
                    f"ts: {prev - ts} ms older than the last event of '{key}' (tolerance {self.tolerance_ms} ms)",
                )
            self.superseded += 1
            return False
        self.last[key] = ts
        return True


class MarketState:
    def __init__(self, layout: Layout):
        self.layout = layout
        n_books = len(layout.books)
        n_assets = len(layout.assets)
        n_instr = len(layout.instruments)
        self.books = list(layout.books)
        self.slot = {f"{v}:{s}": i for i, (v, s) in enumerate(self.books)}
        self.mid = np.full(n_books, np.nan)
        self.bid = np.full(n_books, np.nan)
        self.ask = np.full(n_books, np.nan)
        self.last = np.full(n_books, np.nan)
        self.ts = np.full(n_books, -np.inf)
        self.funding_rate = np.full(n_books, np.nan)
        self.next_funding_ts = np.full(n_books, np.nan)
        self.base = np.zeros(n_books, dtype=np.int32)
        self.quote = np.zeros(n_books, dtype=np.int32)
        self.venue = np.zeros(n_books, dtype=np.int32)
        for i, (v, s) in enumerate(self.books):
            self.base[i], self.quote[i] = layout.book_base(s)  # type: ignore[misc]
            self.venue[i] = layout.venue(v)
        self.ref_rate = np.full(n_assets, np.nan)
        self.ref_ts = np.full(n_assets, -np.inf)
        self.ref_in = np.full(n_assets, -1, dtype=np.int32)  # reference values also feed depeg alerts
        instrument_of_slot = np.full(n_books, -1, dtype=np.int32)
        for i, s in enumerate(layout.mark_params.slot):
            instrument_of_slot[s] = i
        cap = 256
        self.basis = BasisRings(ts=np.zeros((n_instr, cap)), value=np.zeros((n_instr, cap)),
                                head=np.zeros(n_instr, dtype=np.int64), count=np.zeros(n_instr, dtype=np.int64),
                                total=np.zeros(n_instr), average=np.full(n_instr, np.nan),
                                window_ms=np.array([layout.basis_window_ms(i) for i in range(n_instr)], dtype=float),
                                instrument_of_slot=instrument_of_slot)
        self.index = np.full(n_assets, np.nan)
        self.index_stale = np.zeros(n_assets, dtype=np.bool_)
        self.source_price = np.full(len(layout.constituents), np.nan)
        self.source_status = np.zeros(len(layout.constituents), dtype=np.int8)
        self.mark = np.full(n_instr, np.nan)
        self.t = -1  # event time of the last evaluation
        # out-of-order rule: the last event time of each book and of each asset's reference
        self.tolerance_ms = layout.cfg.ingest.out_of_order_ms
        self.tick_last_ts = np.full(n_books, -np.inf)
        self.ref_last_ts = np.full(n_assets, -np.inf)
        self.superseded = 0
        self.keys = [f"{v}:{s}" for v, s in self.books]
        self.redeems_into = {a: c.in_ for a, spec in layout.cfg.assets.items() if spec.index is not None
                             for c in spec.index.constituents if c.is_redemption}
        self.clock = EventClock(layout.cfg.ingest.max_ahead_ms, layout.cfg.ingest.jump_keys)

    def venue_price(self, k: int) -> float:
        """Book k's mid in the settlement unit: quoted in another asset, times that asset's index (NaN without
        a mid or without that index)."""
        q = self.quote[k]
        return self.mid[k] * (1.0 if q < 0 else self.index[q])

    def redemption_value(self, a: int) -> float:
        """What one unit of asset a redeems for, in the settlement unit (NaN without a reference rate)."""
        into = self.ref_in[a]
        return self.ref_rate[a] * self.index[into] if into >= 0 else np.nan

    @property
    def basis_ma(self) -> np.ndarray:
        return self.basis.average

    # -- events ----------------------------------------------------------------------------------------------
    def apply_tick(self, tick: Tick) -> bool:
        """Apply a tick and re-evaluate prices; False when superseded (older, within tolerance)."""
        out = self.apply_many([tick])[0]
        if isinstance(out, BadEvent):
            raise out
        return out

    def apply_reference(self, ref: Reference) -> bool:
        out = self.apply_many([ref])[0]
        if isinstance(out, BadEvent):
            raise out
        return out

    def apply_many(self, events: list[Tick | Reference]) -> list[bool | BadEvent]:
        """Apply market events in order (one kernel call for the run); per event: True applied, False superseded
        (older than the last of its key, within tolerance), or the BadEvent that rejected it."""
        batch, bad = MarketRows.of(events, self.slot, self.layout.asset_id, self.redeems_into)
        out: list[bool | BadEvent] = [False] * len(events)
        for k, e in bad:
            out[k] = e
        codes, rejected = self.apply_rows(batch.rows)
        for j, k in enumerate(batch.records):
            out[k] = rejected[j] if j in rejected else bool(codes[j] == APPLIED)
        return out

    def apply_rows(self, rows: np.ndarray) -> tuple[np.ndarray, dict[int, BadEvent]]:
        """Apply rows of liqwatch.core.columns.ROW in order: per row its code (kernels.market APPLIED,
        SUPERSEDED, OUT_OF_ORDER, REJECTED), and the BadEvent of each rejected row by position."""
        n = rows.shape[0]
        codes = np.full(n, SUPERSEDED, dtype=np.int8)
        if n == 0:
            return codes, {}
        prev = np.zeros(n)
        rejected: dict[int, BadEvent] = {}
        nb = len(self.books)
        if self.basis.instrument_of_slot.shape[0] < nb:
            self.basis = self.basis._replace(instrument_of_slot=_grow(self.basis.instrument_of_slot, nb, -1)[:nb])
        # contiguous columns: one compiled signature whatever the batch (a field of a structured array is strided,
        # except in a batch of one row, and each layout would compile its own kernel on the event loop)
        kind, ref, aux, ts, bid, ask, last, fr, nft = (np.ascontiguousarray(rows[f]) for f in (
            "kind", "ref", "aux", "ts", "bid", "ask", "last", "funding_rate", "next_funding_ts"))
        clock = self.clock
        state = np.array([float(clock.t), float(clock.limit)])
        start, force = 0, -1
        while start < n:
            book = BookArrays(mid=self.mid[:nb], bid=self.bid[:nb], ask=self.ask[:nb], last=self.last[:nb],
                              ts=self.ts[:nb], funding_rate=self.funding_rate[:nb],
                              next_funding_ts=self.next_funding_ts[:nb], ref_rate=self.ref_rate, ref_ts=self.ref_ts)
            at, stop, applied = apply_market_run(
                kind, ref, aux, ts, bid, ask, last, fr, nft, book, self.layout.index_params,
                self.layout.mark_params, self.basis, self.index, self.index_stale, self.source_price,
                self.source_status, self.mark, self.ref_in, self.tick_last_ts, self.ref_last_ts,
                float(self.tolerance_ms), float(clock.max_ahead_ms), state, codes, prev, start, force)
            if applied:
                clock.run.clear()  # what EventClock.advance does on every applied event
                clock.t, clock.limit = int(state[0]), state[1]
            force = -1
            if stop == STOP_BASIS_FULL:
                self._grow_basis()
            elif stop == STOP_AHEAD:
                key = self.keys[ref[at]] if kind[at] == EVENT_TICK else self.layout.assets[ref[at]]
                try:
                    clock.ahead(key, int(ts[at]))
                    force = at  # a jump of the stream: this event goes through
                except BadEvent as e:
                    codes[at] = REJECTED
                    rejected[at] = e
                    at += 1
            start = at
        for j in np.flatnonzero(codes == OUT_OF_ORDER).tolist():
            key = self.keys[ref[j]] if kind[j] == EVENT_TICK else self.layout.assets[ref[j]]
            gap = int(prev[j] - ts[j])
            rejected[j] = BadEvent("out_of_order", f"ts: {gap} ms older than the last event of '{key}' "
                                                   f"(tolerance {self.tolerance_ms} ms)")
        self.superseded += int((codes == SUPERSEDED).sum())
        applied_ts = ts[codes == APPLIED]
        if applied_ts.size:
            self.t = int(applied_ts[-1])
        return codes, rejected

    def _grow_basis(self) -> None:
        b = self.basis
        n_instr, cap = b.ts.shape
        new_ts, new_v = np.zeros((n_instr, 2 * cap)), np.zeros((n_instr, 2 * cap))
        for i in range(n_instr):  # unroll each ring so that it starts at 0
            order = (b.head[i] + np.arange(b.count[i])) % cap
            new_ts[i, : b.count[i]] = b.ts[i, order]
            new_v[i, : b.count[i]] = b.value[i, order]
        self.basis = b._replace(ts=new_ts, value=new_v, head=np.zeros(n_instr, dtype=np.int64))

    # -- prices ----------------------------------------------------------------------------------------------
    def quotes(self) -> Quotes:
        n = len(self.books)
        return Quotes(mid=self.mid[:n], last=self.last[:n], ts=self.ts[:n], funding_rate=self.funding_rate[:n],
                      next_funding_ts=self.next_funding_ts[:n], base=self.base[:n], venue=self.venue[:n],
                      ref_rate=self.ref_rate, ref_ts=self.ref_ts, basis_ma=self.basis.average)

    def basis_at(self, t: int) -> np.ndarray:
        """Basis averages as of t (later than the last event) without changing the rings."""
        b = self.basis
        cap = b.ts.shape[1]
        out = np.full(b.head.shape[0], np.nan)
        for i in range(b.head.shape[0]):
            order = (b.head[i] + np.arange(b.count[i])) % cap
            kept = b.value[i, order][b.ts[i, order] > t - b.window_ms[i]]
            if kept.size:
                out[i] = kept.sum() / kept.size
        return out

    def prices_at(self, t: int) -> "PriceView":
        """Index, staleness, marks and the quotes (with the basis average as of t) at time t ≥ the last event,
        without changing the state (batch `--at`)."""
        q = self.quotes()
        if t == self.t:
            return PriceView(t, self.index.copy(), self.index_stale.copy(), self.mark.copy(), q)
        index = np.empty_like(self.index)
        stale = np.empty_like(self.index_stale)
        sp = np.empty_like(self.source_price)
        ss = np.empty_like(self.source_status)
        compute_index(float(t), q.mid, q.ts, q.ref_rate, q.ref_ts, self.layout.index_params, self.index,
                      index, stale, sp, ss)
        basis = self.basis_at(t)
        q = q._replace(basis_ma=basis)
        mark = np.empty_like(self.mark)
        compute_marks(float(t), q.last, q.funding_rate, q.next_funding_ts, basis, index, self.layout.mark_params, mark)
        return PriceView(t, index, stale, mark, q)


@dataclass
class PriceView:
    t: int
    index: np.ndarray
    stale: np.ndarray
    mark: np.ndarray
    quotes: Quotes


class Accounts:
    """Accounts as struct-of-arrays with append-only entry pools (see liqwatch.kernels.arrays.AccountArrays).

    A row is a margin account: an account's cross margin (its collateral, debt and cross positions), or one of its
    isolated positions with that position's own margin as its only collateral (settlement asset). Every kernel
    then treats an isolated position as venues do, without knowing of it: its own health, liquidated alone, its
    loss bounded by its margin (the rest a deficit for the insurance fund). `ids[r]` is the account that owns row
    r (its Kafka key: the rows of one account stay on one shard); `isolated[r]` the instrument of an isolated row,
    −1 for the cross row."""

    def __init__(self, layout: Layout, capacity: int = 1024):
        self.layout = layout
        self.ids: list[str] = []
        self.row: dict[str | tuple[str, int], int] = {}  # account → cross row; (account, instrument) → isolated
        self.isolated_rows: dict[str, list[int]] = {}   # account → its isolated rows of the last snapshot
        self.n = 0
        self.active = np.zeros(capacity, dtype=np.bool_)
        self.ts = np.zeros(capacity, dtype=np.int64)
        self.isolated = np.full(capacity, -1, dtype=np.int32)
        self.coll = _Pool(capacity, signed=False)
        self.debt = _Pool(capacity, signed=False)
        self.pos = _Pool(capacity, signed=True)
        self.ordering = _Ordering(layout.cfg.ingest.out_of_order_ms)

    def check(self, ev: Account) -> tuple[list, list, list, list]:
        aid = self.layout.asset_id
        coll, debt, pos, isolated = [], [], [], []
        for asset, qty in ev.collateral.items():
            if asset not in aid:
                raise BadEvent("unknown_asset", f"collateral.{asset}: unknown asset '{asset}'")
            coll.append((aid[asset], qty, 0.0))
        for asset, qty in ev.borrowed.items():
            if asset not in aid:
                raise BadEvent("unknown_asset", f"borrowed.{asset}: unknown asset '{asset}'")
            debt.append((aid[asset], qty, 0.0))
        iid = self.layout.instrument_id
        for i, p in enumerate(ev.positions):
            if p.instrument not in iid:
                raise BadEvent("unknown_instrument", f"positions[{i}].instrument: unknown instrument '{p.instrument}'")
            if p.isolated_margin is None:
                pos.append((iid[p.instrument], p.qty, p.entry))
                continue
            if any(ins == iid[p.instrument] for ins, *_ in isolated):
                raise BadEvent("bad_field", f"positions[{i}].instrument: a second isolated position on "
                                            f"'{p.instrument}' (one per instrument)")
            isolated.append((iid[p.instrument], p.qty, p.entry, p.isolated_margin))
        return coll, debt, pos, isolated

    def apply(self, ev: Account) -> int | None:
        """Apply a snapshot or a close; returns the account's (cross) row, or None when superseded."""
        entries = None if ev.closed else self.check(ev)
        if not self.ordering.admit(ev.account, ev.ts):
            return None
        r = self.row.get(ev.account)
        if r is None:
            if ev.closed:
                return None
            r = self._new_row(ev.account, ev.account, -1)
        self.ts[r] = ev.ts
        if ev.closed:
            self.drop(r)
            for s in self.isolated_rows.pop(ev.account, []):
                self.ts[s] = ev.ts
                self.drop(s)
            return r
        coll, debt, pos, isolated = entries  # type: ignore[misc]
        self._put(r, coll, debt, pos)
        kept = []
        for instr, qty, entry, margin in isolated:
            s = self.row.get((ev.account, instr))
            if s is None:
                s = self._new_row(ev.account, (ev.account, instr), instr)
            self.ts[s] = ev.ts
            self._put(s, [(self.layout.settlement, margin, 0.0)], [], [(instr, qty, entry)])
            kept.append(s)
        for s in self.isolated_rows.get(ev.account, []):
            if s not in kept:  # closed since, or moved to cross margin
                self.ts[s] = ev.ts
                self.drop(s)
        if kept or ev.account in self.isolated_rows:
            self.isolated_rows[ev.account] = kept
        return r

    def _put(self, r: int, coll: list, debt: list, pos: list) -> None:
        self.coll.put(r, coll)
        self.debt.put(r, debt)
        self.pos.put(r, pos)
        self.active[r] = True

    def drop(self, r: int) -> None:
        """Remove row r (its account closed, or moved to another worker's shard)."""
        self.active[r] = False
        for pool in (self.coll, self.debt, self.pos):
            pool.clear(r)

    def _new_row(self, account: str, key: str | tuple[str, int], instrument: int) -> int:
        r = self.n
        self.n += 1
        self.ids.append(account)
        self.row[key] = r
        if r >= self.active.shape[0]:
            cap = 2 * self.active.shape[0]
            self.active = _grow(self.active, cap, False)
            self.ts = _grow(self.ts, cap, 0)
            self.isolated = _grow(self.isolated, cap, -1)
            for pool in (self.coll, self.debt, self.pos):
                pool.grow_rows(cap)
        self.isolated[r] = instrument
        return r

    def isolated_name(self, r: int) -> str | None:
        """The instrument of isolated row r; None for a cross row."""
        i = int(self.isolated[r])
        return None if i < 0 else self.layout.instruments[i]

    def order(self) -> list[int]:
        """Rows by account, each account's cross row first, then its isolated ones by instrument (the order of
        batch outputs)."""
        names = self.layout.instruments
        return sorted(range(self.n), key=lambda r: (self.ids[r], -1 if self.isolated[r] < 0 else 0,
                                                    names[self.isolated[r]] if self.isolated[r] >= 0 else ""))

    def view(self) -> AccountArrays:
        n = self.n
        for pool in (self.coll, self.debt, self.pos):
            pool.compact_if_sparse(n)
        c, d, p = self.coll, self.debt, self.pos
        return AccountArrays(
            active=self.active[:n],
            coll_start=c.start[:n],
            coll_count=c.count[:n],
            coll_asset=c.key[: c.used],
            coll_qty=c.qty[: c.used],
            coll_owner=c.owner[: c.used],
            debt_start=d.start[:n],
            debt_count=d.count[:n],
            debt_asset=d.key[: d.used],
            debt_qty=d.qty[: d.used],
            debt_owner=d.owner[: d.used],
            pos_start=p.start[:n],
            pos_count=p.count[:n],
            pos_instr=p.key[: p.used],
            pos_qty=p.qty[: p.used],
            pos_entry=p.entry[: p.used],
            pos_owner=p.owner[: p.used],
        )


class _Pool:
    """Entries of one kind (collateral, debt or positions) for all accounts: account r owns
    key/qty/entry[start[r] : start[r] + count[r]]."""

    def __init__(self, rows: int, signed: bool):
        self.start = np.zeros(rows, dtype=np.int32)
        self.count = np.zeros(rows, dtype=np.int32)
        self.key = np.zeros(rows, dtype=np.int32)
        self.owner = np.full(rows, -1, dtype=np.int32)
        self.qty = np.zeros(rows)
        self.entry = np.zeros(rows) if signed else np.zeros(0)
        self.signed = signed
        self.used = 0
        self.live = 0

    def grow_rows(self, rows: int) -> None:
        self.start = _grow(self.start, rows, 0)
        self.count = _grow(self.count, rows, 0)

    def clear(self, r: int) -> None:
        c = int(self.count[r])
        self.live -= c
        self.owner[self.start[r]: self.start[r] + c] = -1
        self.count[r] = 0

    def put(self, r: int, items: list[tuple[int, float, float]]) -> None:
        self.clear(r)
        n = len(items)
        end = self.used + n
        if end > self.key.shape[0]:
            self.key = _grow(self.key, end, 0)
            self.owner = _grow(self.owner, end, -1)
            self.qty = _grow(self.qty, end, 0.0)
            if self.signed:
                self.entry = _grow(self.entry, end, 0.0)
        for j, (k, q, e) in enumerate(items):
            self.key[self.used + j] = k
            self.owner[self.used + j] = r
            self.qty[self.used + j] = q
            if self.signed:
                self.entry[self.used + j] = e
        self.start[r] = self.used
        self.count[r] = n
        self.used = end
        self.live += n

    def compact_if_sparse(self, n_rows: int) -> None:
        # replaced snapshots leave garbage behind; rewrite the pool when more than half of it is garbage
        if self.used <= 1024 or self.live * 2 >= self.used:
            return
        order = np.repeat(self.start[:n_rows], self.count[:n_rows]) + _ranges(self.count[:n_rows])
        self.key = np.ascontiguousarray(self.key[order])
        self.owner = np.ascontiguousarray(self.owner[order])
        self.qty = np.ascontiguousarray(self.qty[order])
        if self.signed:
            self.entry = np.ascontiguousarray(self.entry[order])
        self.start[:n_rows] = 0
        if n_rows > 1:
            self.start[1:n_rows] = np.cumsum(self.count[: n_rows - 1])
        self.used = self.live = int(order.shape[0])


def _ranges(counts: np.ndarray) -> np.ndarray:
    """[0..c0-1, 0..c1-1, ...] for counts c."""
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    ends = np.cumsum(counts)
    return np.arange(total) - np.repeat(ends - counts, counts)
