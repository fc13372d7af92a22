"""Market records as columns: what the feed, the replay and the batch commands hand to the market kernel.

    rows = MarketRows.of(events, slots, assets)      # decoded ticks/references -> one array of ROW
    batch, rejected, ignored = admit_rows(door, records, slots, assets)   # a partition's raw records, admitted

A tick costs a few microseconds of Python when it travels as an object through the merge and the market state;
as a row of one array per batch, the merge cuts runs with a binary search and the kernel
(`liqwatch.kernels.market.apply_market_run`) does the per-event work, ordering and event clock included.
`MarketRows.records` keeps the source records beside the rows (the dead letter of a row rejected later carries
its original bytes).
"""

from __future__ import annotations

import msgspec
import numpy as np

from liqwatch.events import Account, BadEvent, Event, Tick, check

from liqwatch.kernels.market import EVENT_REFERENCE, EVENT_TICK

ROW = np.dtype([("kind", np.int8), ("ref", np.int32), ("aux", np.int32), ("ts", np.float64),
                ("merge_ts", np.int64), ("bid", np.float64), ("ask", np.float64), ("last", np.float64),
                ("funding_rate", np.float64), ("next_funding_ts", np.float64)])
# kind: EVENT_TICK or EVENT_REFERENCE; ref: book slot (tick) or asset (reference); aux: a reference's `in` asset;
# bid: a reference's rate; merge_ts: the partition's merge time (liqwatch.core.ingest.PartitionDoor)

_batch = msgspec.json.Decoder(list[Event])
_NAN = float("nan")


class MarketRows:
    """Rows of ROW with their source records (any objects; None when there are none)."""

    __slots__ = ("rows", "records")

    def __init__(self, rows: np.ndarray, records: list | None = None):
        self.rows = rows
        self.records = records

    def __len__(self) -> int:
        return self.rows.shape[0]

    def __getitem__(self, s: slice) -> "MarketRows":
        return MarketRows(self.rows[s], None if self.records is None else self.records[s])

    @property
    def merge_ts(self) -> np.ndarray:
        return self.rows["merge_ts"]

    @staticmethod
    def concat(parts: list["MarketRows"]) -> "MarketRows":
        parts = [p for p in parts if len(p)]
        if len(parts) == 1:
            return parts[0]
        rows = np.concatenate([p.rows for p in parts]) if parts else np.empty(0, ROW)
        records = None if any(p.records is None for p in parts) else [r for p in parts for r in p.records]
        return MarketRows(rows, records)

    @staticmethod
    def empty() -> "MarketRows":
        return MarketRows(np.empty(0, ROW), [])

    @staticmethod
    def of(events: list, slots: dict[str, int], assets: dict[str, int],
           redeems_into: dict[str, str]) -> tuple["MarketRows", list]:
        """Rows of decoded ticks and references, with `records` = each row's position in `events`; and the
        [(position, BadEvent)] of events whose book or asset the market does not have (or a reference into
        another asset than the config's)."""
        cols = _Columns()
        kept, bad = [], []
        for k, ev in enumerate(events):
            try:
                if type(ev) is not Tick and redeems_into.get(ev.asset, ev.in_) != ev.in_:
                    raise BadEvent("unknown_asset", f"in: config says {ev.asset} redeems into "
                                                    f"{redeems_into[ev.asset]}, got '{ev.in_}'")
                cols.add(ev, slots, assets)
            except BadEvent as e:
                bad.append((k, e))
                continue
            kept.append(k)
        return cols.rows(cols.ts, kept), bad


class _Columns:
    """Python lists per column while a batch is read (appends are the cheapest per-record step)."""

    def __init__(self):
        self.kind, self.ref, self.aux, self.ts = [], [], [], []
        self.bid, self.ask, self.last, self.fr, self.nft = [], [], [], [], []

    def add(self, ev, slots, assets) -> None:
        """Append one event; BadEvent (nothing appended) for a book or asset the market does not have."""
        if type(ev) is Tick:
            slot = slots.get(ev.venue + ":" + ev.symbol)
            if slot is None:
                raise BadEvent("unknown_source", f"venue: '{ev.key}' is not a source of this config")
            self.kind.append(EVENT_TICK)
            self.ref.append(slot)
            self.aux.append(-1)
            self.bid.append(ev.bid)
            self.ask.append(ev.ask)
            self.last.append(_NAN if ev.last is None else ev.last)
            if ev.funding_rate is None:
                self.fr.append(_NAN)
                self.nft.append(_NAN)
            else:
                self.fr.append(ev.funding_rate)
                self.nft.append(ev.next_funding_ts)
        else:
            a, into = assets.get(ev.asset), assets.get(ev.in_)
            if a is None or into is None:
                bad = ("asset", ev.asset) if a is None else ("in", ev.in_)
                raise BadEvent("unknown_asset", f"{bad[0]}: unknown asset '{bad[1]}'")
            self.kind.append(EVENT_REFERENCE)
            self.ref.append(a)
            self.aux.append(into)
            self.bid.append(ev.rate)
            self.ask.append(_NAN)
            self.last.append(_NAN)
            self.fr.append(_NAN)
            self.nft.append(_NAN)
        self.ts.append(ev.ts)

    def rows(self, merge_ts: list[int], records: list | None) -> MarketRows:
        rows = np.empty(len(self.kind), ROW)
        rows["kind"], rows["ref"], rows["aux"], rows["ts"] = self.kind, self.ref, self.aux, self.ts
        rows["merge_ts"] = merge_ts
        rows["bid"], rows["ask"], rows["last"] = self.bid, self.ask, self.last
        rows["funding_rate"], rows["next_funding_ts"] = self.fr, self.nft
        return MarketRows(rows, records)


def decode_many(values: list[bytes]) -> list[Event | BadEvent]:
    """Decode a batch of records: one parse of the whole batch when every record is a valid event (the common
    case), else each record on its own (`liqwatch.events.decode`, which names the bad field). Same results as
    decoding one by one: a joined parse is only used when it yields exactly one event per record."""
    from liqwatch.events import decode

    events = None
    if values:
        try:
            events = _batch.decode(b"[" + b",".join(values) + b"]")
        except Exception:  # noqa: BLE001 - some record is bad: find it below, one at a time
            events = None
        if events is not None and len(events) != len(values):
            events = None
    if events is None:
        out: list[Event | BadEvent] = []
        for raw in values:
            try:
                out.append(decode(raw))
            except BadEvent as e:
                out.append(e)
        return out
    out = []
    for ev in events:
        try:
            out.append(check(ev))
        except BadEvent as e:
            out.append(e)
    return out


def admit_rows(door, records: list, slots: dict[str, int], assets: dict[str, int]):
    """A market partition's records (offset order) through its door, as rows with their merge times:
    (MarketRows, [(record, BadEvent)], ignored). The same judgement as `door.admit` record by record."""
    gate, clock = door.gate, door.clock
    cols = _Columns()
    merge_ts: list[int] = []
    kept: list = []
    rejected: list = []
    ignored = 0
    for rec, ev in zip(records, decode_many([r.value for r in records])):
        try:
            if type(ev) is BadEvent:
                raise ev
            ev = gate.check(ev)
            if ev is None:
                ignored += 1
                continue
            if type(ev) is Account:
                raise BadEvent("unknown_type", f"type: 'account' on the {rec.topic} topic")
            if ev.ts > clock.limit:
                clock.ahead(ev.key, ev.ts)
            cols.add(ev, slots, assets)
            clock.advance(ev.ts)
        except BadEvent as e:
            rejected.append((rec, e))
            continue
        except Exception as e:  # noqa: BLE001 - a check that breaks on a record is that record's problem
            rejected.append((rec, BadEvent("bad_field", f"(event): {type(e).__name__}: {e}"[:200])))
            continue
        merge_ts.append(clock.t)
        kept.append(rec)
    return cols.rows(merge_ts, kept), rejected, ignored
