"""The columnar market path (liqwatch.core.columns + the market kernel's ordering and event clock) judges every
record as the record-by-record rules do: a plain-Python reference of those rules beside it, on random streams
with malformed records, late ticks (superseded and out of order), records far ahead and jumps of the stream."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from liqwatch import scenarios
from liqwatch.config import load_config
from liqwatch.core.columns import admit_rows, decode_many
from liqwatch.core.engine import Engine
from liqwatch.core.ingest import EventClock, Gate, PartitionDoor
from liqwatch.events import BadEvent, Tick, decode
from liqwatch.kernels.market import APPLIED, OUT_OF_ORDER

CFG = load_config(scenarios.config_path("oct-2025"))
BASE = [e for _, e in zip(range(400), (e for e in scenarios.generate("oct-2025", 0, seed=3) if e["type"] != "account"))]


@dataclass
class Rec:
    value: bytes
    offset: int
    topic: str = "ticks"
    partition: int = 0
    key: bytes | None = None


TICKS = [e for e in BASE if e["type"] == "tick"]


def stream(rng: random.Random, n: int, ticks_only: bool = False, ahead: bool = True,
           malformed: float = 0.04) -> list[bytes]:
    """Market records around the scenario's first ones: most in order, some late by a little (superseded) or a
    lot (out of order), a few far ahead alone or as a jump of several books, some malformed or out of bounds."""
    t = BASE[0]["ts"]
    out = []
    base = TICKS if ticks_only else BASE
    for k in range(n):
        ev = dict(base[k % len(base)])
        t += rng.choice([0, 1, 5, 50])
        r = rng.random() if ahead else 1.0
        ts = t
        if r < 0.05:
            ts = t - rng.choice([10, 500, 5_000, 60_000])  # late: within or beyond the 1 s tolerance
        elif r < 0.08:
            ts = t + CFG.ingest.max_ahead_ms + rng.choice([1, 10_000])  # far ahead
        elif r < 0.09:
            t += CFG.ingest.max_ahead_ms * 2  # the whole stream jumps: several books in a row that far ahead
            ts = t
        ev["ts"] = ts
        if ev["type"] == "tick" and rng.random() < 0.05:  # numbers the checks refuse, or fields they look at
            ev.update(rng.choice([{"bid": ev["ask"] * 2}, {"ask": 1e12}, {"last": -1.0}, {"last": ev["bid"]},
                                  {"funding_rate": 0.0001, "next_funding_ts": ts + 1000}, {"funding_rate": 2.0,
                                  "next_funding_ts": ts}, {"funding_rate": 0.0001}, {"next_funding_ts": -3},
                                  {"venue": ""}, {"ts": -1}]))
        raw = json.dumps(ev).encode()
        if rng.random() < malformed:
            raw = rng.choice([raw[:-3], raw.replace(b'"bid"', b'"bdi"'), b"[1,2]", b"", raw + b",{}",
                              json.dumps({**ev, "venue": "fake"}).encode()])
        out.append(raw)
    return out


# -- the reference: the record-by-record rules as they were written before the columnar path ---------------
class ReferenceMarket:
    def __init__(self, engine: Engine):
        self.engine = engine  # its market state applies one event at a time: kernel state stays comparable
        self.last: dict[str, int] = {}
        self.clock = EventClock(CFG.ingest.max_ahead_ms, CFG.ingest.jump_keys)
        self.tol = CFG.ingest.out_of_order_ms

    def apply(self, ev) -> bool | BadEvent:
        key = ev.key
        try:
            if ev.ts > self.clock.limit:
                self.clock.ahead(key, ev.ts)
            okey = ("tick:" if type(ev) is Tick else "reference:") + key
            prev = self.last.get(okey)
            if prev is not None and ev.ts < prev:
                if prev - ev.ts > self.tol:
                    raise BadEvent("out_of_order", f"ts: {prev - ev.ts} ms older than the last event of '{key}' "
                                                   f"(tolerance {self.tol} ms)")
                return False
            self.last[okey] = ev.ts
        except BadEvent as e:
            return e
        self.clock.advance(ev.ts)
        return True


def reference_door(raws: list[bytes]) -> list[tuple[int, object, int]]:
    """(position, event or BadEvent, merge time) per record, through PartitionDoor.admit one at a time."""
    door = PartitionDoor(Gate(CFG), CFG.ingest.max_ahead_ms, CFG.ingest.jump_keys)
    out = []
    for k, raw in enumerate(raws):
        try:
            ev, t = door.admit(raw)
        except BadEvent as e:
            out.append((k, e, -1))
            continue
        if ev is not None:
            out.append((k, ev, t))
    return out


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10**6), st.integers(1, 300), st.booleans(), st.booleans(), st.sampled_from([0.0, 0.04]),
       st.booleans())
def test_the_door_judges_a_batch_as_it_judges_each_record(seed, n, ticks_only, ahead, malformed, scanner):
    """Batches of ticks only, in order, parseable as a whole take the array path (read by the tick scanner, or
    by the decoder); the others the per-record one."""
    raws = stream(random.Random(seed), n, ticks_only, ahead, malformed)
    want = reference_door(raws)
    door = PartitionDoor(Gate(CFG), CFG.ingest.max_ahead_ms, CFG.ingest.jump_keys)
    eng = Engine(CFG)
    batch, rejected, ignored = admit_rows(door, [Rec(r, k) for k, r in enumerate(raws)], eng.market.slot,
                                          eng.layout.asset_id, scanner=scanner)
    got = {rec.offset: ("bad", e.kind, e.reason) for rec, e in rejected}
    for rec, row in zip(batch.records, batch.rows):
        got[rec.offset] = ("ok", int(row["ts"]), int(row["merge_ts"]))
    expect = {k: ("bad", ev.kind, ev.reason) if isinstance(ev, BadEvent) else ("ok", ev.ts, t) for k, ev, t in want}
    assert got == expect
    assert ignored == 0


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10**6), st.integers(1, 300))
def test_the_kernel_applies_orders_and_clocks_as_the_per_record_rules(seed, n):
    raws = stream(random.Random(seed), n)
    events = [ev for _, ev, _ in reference_door(raws) if not isinstance(ev, BadEvent)]
    # the prices the accepted events give, applied one at a time by a market whose own rules never reject
    lenient = CFG.model_copy(update={"ingest": CFG.ingest.model_copy(update={"max_ahead_ms": 10**15})})
    ref_engine = Engine(lenient)
    ref = ReferenceMarket(ref_engine)
    want = []
    for ev in events:
        r = ref.apply(ev)
        want.append(("bad", r.kind, r.reason) if isinstance(r, BadEvent) else r)
        if r is True:
            ref_engine.market.apply_many([ev])  # alone: its own ordering sees an in-order stream
    eng = Engine(CFG)
    got = eng.market.apply_many(events)
    got = [("bad", r.kind, r.reason) if isinstance(r, BadEvent) else r for r in got]
    assert got == want
    m, rm = eng.market, ref_engine.market
    for name in ("mid", "last", "ts", "ref_rate", "index", "mark", "source_price"):
        np.testing.assert_array_equal(getattr(m, name), getattr(rm, name), err_msg=name)
    np.testing.assert_array_equal(m.basis.average, rm.basis.average)
    assert (m.clock.t, m.clock.limit) == (ref.clock.t, ref.clock.limit)
    assert m.superseded == sum(r is False for r in want)


def test_a_batch_with_one_bad_record_is_decoded_one_by_one_with_the_same_results():
    good = [json.dumps(e).encode() for e in BASE[:50]]
    for bad in (b"{", b'{"type":"tick"},{"type":"tick"}', b"", b"  ", good[0] + b"]", b"[" + good[1]):
        raws = good[:20] + [bad] + good[20:]
        one_by_one = []
        for raw in raws:
            try:
                one_by_one.append(decode(raw))
            except BadEvent as e:
                one_by_one.append((e.kind, e.reason))
        got = [(r.kind, r.reason) if isinstance(r, BadEvent) else r for r in decode_many(raws)]
        assert got == one_by_one


def test_two_records_that_join_into_valid_json_are_not_taken_as_one_batch():
    a, b = json.dumps(BASE[0]).encode(), json.dumps(BASE[1]).encode()
    # "a,b" as one record and nothing as the next would join into the same text as two good records
    got = decode_many([a + b"," + b, b"1"])
    assert all(isinstance(r, BadEvent) for r in got)


def test_rows_rejected_after_the_merge_name_their_record():
    eng = Engine(CFG)
    door = PartitionDoor(eng.gate, CFG.ingest.max_ahead_ms, CFG.ingest.jump_keys)
    ev = dict(BASE[0])
    late = dict(ev, ts=ev["ts"] - 10 * CFG.ingest.out_of_order_ms)
    batch, rejected, _ = admit_rows(door, [Rec(json.dumps(ev).encode(), 7), Rec(json.dumps(late).encode(), 8)],
                                    eng.market.slot, eng.layout.asset_id)
    assert not rejected  # the partition's door passes a late record (it merges at the partition's time) ...
    codes, bad = eng.apply_rows(batch.rows)
    assert codes.tolist() == [APPLIED, OUT_OF_ORDER]  # ... the market state rejects it, by position
    assert batch.records[1].offset == 8 and bad[1].kind == "out_of_order"


@pytest.mark.parametrize("jump_keys", [2, 3])
def test_a_jump_of_the_whole_stream_goes_through_once_enough_books_confirm_it(jump_keys):
    cfg = CFG.model_copy(update={"ingest": CFG.ingest.model_copy(update={"jump_keys": jump_keys})})
    eng = Engine(cfg)
    books = [e for e in BASE if e["type"] == "tick"]
    keys = []
    for e in books:
        if (e["venue"], e["symbol"]) not in keys:
            keys.append((e["venue"], e["symbol"]))
    first = {k: next(e for e in books if (e["venue"], e["symbol"]) == k) for k in keys}
    t0 = books[0]["ts"]
    later = t0 + 10 * cfg.ingest.max_ahead_ms
    evs = [decode(json.dumps(first[keys[0]]))] + [decode(json.dumps(dict(first[k], ts=later))) for k in keys[:4]]
    got = eng.market.apply_many(evs)
    kinds = [r.kind if isinstance(r, BadEvent) else r for r in got]
    assert kinds == [True] + ["ahead_of_stream"] * (jump_keys - 1) + [True] * (5 - jump_keys)
    assert eng.market.clock.t == later
