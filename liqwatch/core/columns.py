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

from liqwatch.events import Account, BadEvent, Event, Tick, check, decode
from liqwatch.kernels.market import EVENT_REFERENCE, EVENT_TICK
from liqwatch.kernels.ticks import scan_ticks

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
        records = None if any(p.records is None for p in parts) else PickedRecords.chained([p.records for p in parts])
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


class PickedRecords:
    """The records of rows picked from several batches (a run the merge sorts from several partitions), found
    only when one is asked for: row j is `parts[which[j]][at[j]]` (its records are read only for the rare dead
    letter)."""

    __slots__ = ("parts", "which", "at")

    def __init__(self, parts: list, which: np.ndarray, at: np.ndarray):
        self.parts, self.which, self.at = parts, which, at

    @staticmethod
    def chained(parts: list) -> "PickedRecords":
        lens = [len(p) for p in parts]
        which = np.repeat(np.arange(len(parts)), lens)
        at = np.concatenate([np.arange(n) for n in lens]) if parts else np.empty(0, np.int64)
        return PickedRecords(parts, which, at)

    def __len__(self) -> int:
        return self.which.shape[0]

    def __getitem__(self, k):
        if isinstance(k, slice):
            return PickedRecords(self.parts, self.which[k], self.at[k])
        return self.parts[int(self.which[k])][int(self.at[k])]

    def __iter__(self):
        return (self[j] for j in range(len(self)))


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


def _parse_joined(values: list[bytes]) -> list | None:
    """One parse of the whole batch, or None when some record is not one valid event (the joined text is used
    only when it yields exactly one event per record: "a,b" in one record cannot pass for two)."""
    if not values:
        return None
    try:
        events = _batch.decode(b"[" + b",".join(values) + b"]")
    except Exception:  # noqa: BLE001 - some record is bad: judged one at a time by the caller
        return None
    return events if len(events) == len(values) else None


def decode_many(values: list[bytes]) -> list[Event | BadEvent]:
    """Decode a batch of records: one parse of the whole batch when every record is a valid event (the common
    case), else each record on its own (`liqwatch.events.decode`, which names the bad field). Same results as
    decoding one by one."""
    events = _parse_joined(values)
    if events is None:
        out: list[Event | BadEvent] = []
        for raw in values:
            try:
                out.append(decode(raw))
            except BadEvent as e:
                out.append(e)
        return out
    return _checked(events)


def admit_rows(door, records: list, slots: dict[str, int], assets: dict[str, int], values: list | None = None,
               topic: str | None = None, scanner: bool = True):
    """A market partition's records (offset order) through its door, as rows with their merge times:
    (MarketRows, [(record, BadEvent)], ignored). The same judgement as `door.admit` record by record
    (tests/core/test_columns.py): a batch of ticks is judged by array operations, anything else (a reference, a
    record that fails a check, one far ahead) record by record. Records are Kafka records, or any objects with
    their `values` and `topic` given apart (the market stage passes positions in its batch). `scanner=False`: the
    decoder's path only (the benchmark's and the tests' comparison)."""
    if values is None:
        values = [r.value for r in records]
    cols = scan(values, slots) if scanner else None
    if cols is not None:  # every record a plain tick: read in one compiled pass, judged in arrays
        got = _admit_ticks(door, records, slots, cols, lambda k: decode(values[k]))
        if got is not None:
            return got
    events = _parse_joined(values)
    if events is not None and cols is None:  # (scanned, the arrays' judgement would be the same)
        got = _admit_ticks(door, records, slots, _columns(events, slots), lambda k: check(events[k]))
        if got is not None:
            return got
    return _admit_each(door, records, decode_many(values) if events is None else _checked(events), slots, assets,
                       topic)


def _checked(events: list) -> list:
    out = []
    for ev in events:
        try:
            out.append(check(ev))
        except BadEvent as e:
            out.append(e)
    return out


_MAX_TS = float((1 << 53) - 1)


def scan(values: list[bytes], slots: dict[str, int]) -> tuple | None:
    """The batch's columns (slot, ts, bid, ask, last, funding_rate, next_funding_ts) read by the tick scanner
    (liqwatch.kernels.ticks), or None when it declines some record (then msgspec decodes the batch)."""
    n = len(values)
    if not n:
        return None
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(np.fromiter(map(len, values), np.int64, n), out=offsets[1:])
    buf = np.frombuffer(b"".join(values), np.uint8)
    keys = [k.encode() for k in slots]
    key_offsets = np.zeros(len(keys) + 1, np.int64)
    np.cumsum([len(k) for k in keys], out=key_offsets[1:])
    key_buf = np.frombuffer(b"".join(keys), np.uint8) if keys else np.zeros(0, np.uint8)
    cols = (np.empty(n, np.int32), np.empty(n, np.int64), np.empty(n), np.empty(n), np.empty(n), np.empty(n),
            np.empty(n))
    if scan_ticks(buf, offsets, key_buf, key_offsets, np.fromiter(slots.values(), np.int32, len(keys)), *cols) >= 0:
        return None
    return cols


def _columns(events: list, slots: dict[str, int]) -> tuple | None:
    """The same columns from decoded events; None when the batch is not ticks only (or has a time past int64)."""
    if any(type(ev) is not Tick for ev in events):
        return None
    n = len(events)
    slot = np.fromiter((slots.get(ev.venue + ":" + ev.symbol, -1) for ev in events), np.int32, n)
    try:
        ts = np.fromiter((ev.ts for ev in events), np.int64, n)
        nft = np.array([_NAN if ev.next_funding_ts is None else float(ev.next_funding_ts) for ev in events],
                       np.float64)
    except OverflowError:  # a time beyond int64: the slow path says which
        return None
    bid = np.fromiter((ev.bid for ev in events), np.float64, n)
    ask = np.fromiter((ev.ask for ev in events), np.float64, n)
    last = np.fromiter((_NAN if ev.last is None else ev.last for ev in events), np.float64, n)
    fr = np.fromiter((_NAN if ev.funding_rate is None else ev.funding_rate for ev in events), np.float64, n)
    return slot, ts, bid, ask, last, fr, nft


def _admit_ticks(door, records: list, slots: dict[str, int], cols: tuple | None, event_of):
    """The fast path: every record a tick, its columns judged in arrays. Rows failing a check are judged one by
    one (their exact reason; `event_of(k)`: record k decoded and checked, or raising its BadEvent); None when the
    batch needs the record-by-record path (a reference or account in it, a record far ahead of the partition)."""
    if cols is None:
        return None
    gate, clock = door.gate, door.clock
    slot, ts, bid, ask, last, fr, nft = cols
    lo, hi = gate.slot_bounds(slots)
    s = np.maximum(slot, 0)
    with np.errstate(invalid="ignore"):
        ok = ((slot >= 0) & (bid > 0) & (bid <= ask) & (ask < np.inf)
              & (ts >= max(gate.min_ts, 0)) & (ts <= min(gate.max_ts, (1 << 53) - 1))
              & (lo[s] <= bid) & (ask <= hi[s])
              & (np.isnan(last) | ((last > 0) & (last < np.inf) & (lo[s] <= last) & (last <= hi[s])))
              & (np.isnan(fr) | ((fr >= -1.0) & (fr <= 1.0) & ~np.isnan(nft) & (nft >= 0) & (nft <= _MAX_TS)))
              & (~np.isnan(fr) | np.isnan(nft) | ((nft >= 0) & (nft <= _MAX_TS))))
    rejected: list = []
    ignored = 0
    keep = ok
    if not ok.all():
        keep = ok.copy()
        for k in np.flatnonzero(~ok).tolist():  # rare: the exact judgement of each, as the door gives it
            try:
                ev = gate.check(event_of(k))
            except BadEvent as e:
                rejected.append((records[k], e))
                continue
            except Exception as e:  # noqa: BLE001 - as Gate.admit: a check that breaks is the record's problem
                rejected.append((records[k], BadEvent("bad_field", f"(event): {type(e).__name__}: {e}"[:200])))
                continue
            if ev is None:
                ignored += 1
                continue
            return None  # the arrays were stricter than the checks: judge the batch record by record
    idx = np.flatnonzero(keep)
    t = ts[idx]
    # the partition's clock: no kept record may be past its limit (else the slow path judges the jump)
    if t.size:
        before = np.maximum.accumulate(np.concatenate(([clock.t], t[:-1])))
        limit = np.where(before > clock.t, before + clock.max_ahead_ms, clock.limit)
        if (t > limit).any():
            return None
        merge_ts = np.maximum.accumulate(np.maximum(t, clock.t))
        clock.run.clear()
        if merge_ts[-1] > clock.t:
            clock.t = int(merge_ts[-1])
            clock.limit = clock.t + clock.max_ahead_ms
    else:
        merge_ts = t
    rows = np.empty(idx.size, ROW)
    rows["kind"] = EVENT_TICK
    rows["ref"] = slot[idx]
    rows["aux"] = -1
    rows["ts"] = t
    rows["merge_ts"] = merge_ts
    rows["bid"], rows["ask"], rows["last"] = bid[idx], ask[idx], last[idx]
    rows["funding_rate"], rows["next_funding_ts"] = fr[idx], nft[idx]
    # fields the kernel ignores stay as the record said (a tick without funding: NaN next funding time)
    rows["next_funding_ts"] = np.where(np.isnan(rows["funding_rate"]), np.nan, rows["next_funding_ts"])
    # the kept rows' records, found only when one is asked for (a dead letter)
    return MarketRows(rows, PickedRecords([records], np.zeros(idx.size, np.int64), idx)), rejected, ignored


def _admit_each(door, records: list, events: list, slots: dict[str, int], assets: dict[str, int],
                topic: str | None = None):
    gate, clock = door.gate, door.clock
    cols = _Columns()
    merge_ts: list[int] = []
    kept: list = []
    rejected: list = []
    ignored = 0
    for rec, ev in zip(records, events):
        try:
            if type(ev) is BadEvent:
                raise ev
            ev = gate.check(ev)
            if ev is None:
                ignored += 1
                continue
            if type(ev) is Account:
                raise BadEvent("unknown_type", f"type: 'account' on the {topic or rec.topic} topic")
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
