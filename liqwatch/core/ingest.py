"""The one door every input record passes: decode, check the shape, then check it against the config.

    gate = Gate(cfg)
    gate.admit(b'{"type":"tick","venue":"binance","symbol":"BTC/USDT","ts":1760130000000,"bid":1,"ask":2}')
    # -> Tick(...), or BadEvent("unknown_source", "venue: 'fake:BTC/USDT' is not a source of this config ...")
    gate.admit(b'{"type":"tick","venue":"fake",...}')   # None when `ingest.unknown_sources: ignore`

Used by the workers (market feed and accounts), the batch commands, `replay` and the accounts table rebuild,
so that a record is judged the same way everywhere. What needs no config is `liqwatch.events.decode`; this adds:
- `ts` within `ingest.min_ts`..`ingest.max_ts` (`bad_ts`);
- ticks only from books the config names, as an index constituent, a mark source or a watched book
  (`assets.X.books`) (`unknown_source`, or ignored and counted by rule): a feed of other venues never enters an index or a `venue_divergence` alert;
- assets and instruments the config knows (`unknown_asset`, `unknown_instrument`);
- prices and quantities within the asset's sanity bounds (`out_of_bounds`): a USDe quote of 1e308 is a broken
  feed, and it would turn equities into NaN.
What depends on the order of records (out of order, ahead of the stream) is judged where the order lives
(`liqwatch.core.state`).
"""

from __future__ import annotations

import logging

import numpy as np

from liqwatch.config import Config, SanitySpec

from liqwatch.events import Account, BadEvent, Event, Reference, Tick, decode

log = logging.getLogger(__name__)


class Gate:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        ing = cfg.ingest
        self.min_ts, self.max_ts = ing.min_ts, ing.max_ts
        self.ignore_unknown = ing.unknown_sources == "ignore"
        self.ignored = 0
        # book key → (min price, max price) of the asset it prices
        self.books: dict[str, tuple[float, float]] = {}
        for asset, spec in cfg.assets.items():
            if spec.index is not None:
                for c in spec.index.constituents:
                    if not c.is_redemption:  # a spot book prices BASE = asset, a derivative its underlying
                        self.books[c.source] = self._prices(cfg.sanity(asset))
        for name, ins in cfg.instruments.items():
            self.books[cfg.mark_source(name)] = self._prices(cfg.sanity(ins.underlying))
        for asset, spec in cfg.assets.items():
            for src in spec.books:
                self.books[src] = self._prices(cfg.sanity(asset))
        self.redeems_into = {a: c.in_ for a, s in cfg.assets.items() if s.index is not None
                             for c in s.index.constituents if c.is_redemption}

    def slot_bounds(self, slots: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
        """The price bounds of each book slot as arrays (the columnar door checks a batch at once); a slot
        the gate does not know gets bounds nothing passes."""
        cached = getattr(self, "_slot_bounds", None)
        if cached is not None and cached[0] is slots:
            return cached[1]
        lo = np.full(max(slots.values(), default=-1) + 1, np.inf)
        hi = np.full(lo.shape[0], -np.inf)
        for key, k in slots.items():
            if key in self.books:
                lo[k], hi[k] = self.books[key]
        self._slot_bounds = (slots, (lo, hi))
        return lo, hi

    @staticmethod
    def _prices(s: SanitySpec) -> tuple[float, float]:
        return s.min_price, s.max_price

    def admit(self, raw: bytes | str) -> Event | None:
        """The checked event; None when ignored by rule; raises BadEvent (and only BadEvent) otherwise."""
        ev = decode(raw)
        try:
            return self.check(ev)
        except BadEvent:
            raise
        except Exception as e:  # noqa: BLE001 - a check that breaks on a record is that record's problem
            raise BadEvent("bad_field", f"(event): {type(e).__name__}: {e}"[:200]) from None

    def check(self, ev: Event) -> Event | None:
        if not self.min_ts <= ev.ts <= self.max_ts:
            raise BadEvent("bad_ts", f"ts: {ev.ts} is outside ingest.min_ts..max_ts "
                                     f"({self.min_ts}..{self.max_ts} ms since the epoch)")
        t = type(ev)
        if t is Tick:
            key = ev.venue + ":" + ev.symbol
            bounds = self.books.get(key)
            if bounds is None:
                if self.ignore_unknown:
                    self.ignored += 1
                    return None
                raise BadEvent("unknown_source", f"venue: '{key}' is not a book of this config (an index "
                                                 "constituent, a mark source or assets.X.books; "
                                                 "ingest.unknown_sources)")
            lo, hi = bounds
            if not (lo <= ev.bid and ev.ask <= hi):
                name, bad = ("bid", ev.bid) if ev.bid < lo else ("ask", ev.ask)
                raise BadEvent("out_of_bounds", f"{name}: {bad!r} is outside the sanity bounds {lo:g}..{hi:g}")
            if ev.last is not None and not lo <= ev.last <= hi:
                raise BadEvent("out_of_bounds", f"last: {ev.last!r} is outside the sanity bounds {lo:g}..{hi:g}")
            if ev.funding_rate is not None and not -1.0 <= ev.funding_rate <= 1.0:
                raise BadEvent("out_of_bounds", f"funding_rate: {ev.funding_rate!r} is outside -1..1")
            return ev
        if t is Reference:
            if not self.cfg.is_known_asset(ev.asset) or ev.asset not in self.cfg.assets:
                raise BadEvent("unknown_asset", f"asset: unknown asset '{ev.asset}'")
            if not self.cfg.is_known_asset(ev.in_):
                raise BadEvent("unknown_asset", f"in: unknown asset '{ev.in_}'")
            expected = self.redeems_into.get(ev.asset)
            if expected is not None and ev.in_ != expected:
                raise BadEvent("unknown_asset", f"in: config says {ev.asset} redeems into {expected}, got '{ev.in_}'")
            s = self.cfg.sanity(ev.asset)
            if not s.min_price <= ev.rate <= s.max_price:
                raise BadEvent("out_of_bounds", f"rate: {ev.rate!r} is outside the sanity bounds "
                                                f"{s.min_price:g}..{s.max_price:g}")
            return ev
        return self._check_account(ev)

    def _check_account(self, ev: Account) -> Account:
        cfg = self.cfg
        for field, held in (("collateral", ev.collateral), ("borrowed", ev.borrowed)):
            for asset, qty in held.items():
                if not cfg.is_known_asset(asset):
                    raise BadEvent("unknown_asset", f"{field}.{asset}: unknown asset '{asset}'")
                cap = cfg.sanity(asset).max_qty
                if qty > cap:
                    raise BadEvent("out_of_bounds", f"{field}.{asset}: {qty!r} is above the sanity bound {cap:g}")
        for i, p in enumerate(ev.positions):
            ins = cfg.instruments.get(p.instrument)
            if ins is None:
                raise BadEvent("unknown_instrument", f"positions[{i}].instrument: unknown instrument "
                                                     f"'{p.instrument}'")
            s = cfg.sanity(ins.underlying)
            if abs(p.qty) > s.max_qty:
                raise BadEvent("out_of_bounds", f"positions[{i}].qty: {p.qty!r} is beyond the sanity bound "
                                                f"±{s.max_qty:g}")
            if not s.min_price <= p.entry <= s.max_price:
                raise BadEvent("out_of_bounds", f"positions[{i}].entry: {p.entry!r} is outside the sanity bounds "
                                                f"{s.min_price:g}..{s.max_price:g}")
        return ev


class EventClock:
    """The event time of a stream (the market, or one input partition), and the rule for records too far ahead.

    A record more than `max_ahead_ms` ahead is rejected (`ahead_of_stream`): one tick dated a day ahead would
    otherwise become its key's last event, and every later tick of that key would be out of order. A gap in the
    whole stream (a feed down for hours) is not an error: when records of `jump_keys` distinct keys in a row are
    all that far ahead, the clock jumps to them (those before the jump-confirming one were already rejected: the
    log says how many)."""

    def __init__(self, max_ahead_ms: int, jump_keys: int):
        self.max_ahead_ms = max_ahead_ms
        self.jump_keys = jump_keys
        self.t = -1
        self.limit = float("inf")  # records with ts above this are ahead
        self.run: dict[str, int] = {}  # distinct keys of the current run of ahead records → their ts

    def ahead(self, key: str, ts: int) -> None:
        """Judge a record ahead of the limit: raise, or accept it as a jump of the stream."""
        self.run[key] = ts
        if len(self.run) < self.jump_keys:
            raise BadEvent("ahead_of_stream", f"ts: {ts - self.t} ms ahead of the market's event time {self.t} "
                                              f"(ingest.max_ahead_ms {self.max_ahead_ms})")
        log.warning("market event time jumps from %d to %d (%d distinct keys that far ahead in a row; the %d "
                    "before this one were dead-lettered as ahead_of_stream)", self.t, ts, len(self.run),
                    len(self.run) - 1)

    def advance(self, ts: int) -> None:
        self.run.clear()
        if ts > self.t:
            self.t = ts
            self.limit = ts + self.max_ahead_ms


class PartitionDoor:
    """The door of one market input partition, in offset order, as records arrive (the live feed) or are read
    (the replay): the Gate, then the partition's own clock (a record far ahead of the partition is
    `ahead_of_stream`), and the record's merge time: the largest event time the partition has admitted so far.

    The merge of the input topics takes, among the partitions' next records, the one with the smallest time; it
    is an event-time order only if every partition's times never go down. Kafka's timestamps don't promise that
    (a malformed record stamped with any time, a tick dated an hour ahead): judged here, before the merge, a
    rejected record has no time at all and a late one merges at its partition's time, so the live feed and the
    replay merge in one order however the records were stamped.

        door = PartitionDoor(gate, cfg.ingest)
        event, merge_ts = door.admit(raw)      # raises BadEvent; (None, -1) when ignored by rule
    """

    def __init__(self, gate: Gate, max_ahead_ms: int, jump_keys: int):
        self.gate = gate
        self.clock = EventClock(max_ahead_ms, jump_keys)

    def admit(self, raw: bytes) -> tuple[Event | None, int]:
        ev = self.gate.admit(raw)
        if ev is None:
            return None, -1
        clock = self.clock
        if ev.ts > clock.limit:
            clock.ahead(ev.key, ev.ts)
        clock.advance(ev.ts)
        return ev, clock.t
