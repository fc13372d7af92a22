"""The market stage's records (liqwatch.core.staged): a tick partition staged in chunks, each chunk by a door
restored from the previous record's clock (a stage that restarts, or another stage taking the partition over),
gives the rows, merge times and dead letters of one door reading the partition whole; a record staged twice is
taken once."""

from __future__ import annotations

import random

import numpy as np
from hypothesis import given, settings, strategies as st

from liqwatch.core.columns import admit_rows
from liqwatch.core.engine import Engine
from liqwatch.core.ingest import Gate, PartitionDoor
from liqwatch.core.staged import Rejected, pack, restore_clock, rules_id, unpack
from tests.core.test_columns import CFG, Rec, stream

ENGINE = Engine(CFG)
SLOTS, ASSETS = ENGINE.market.slot, ENGINE.layout.asset_id
RULES = rules_id(CFG, ENGINE.gate, SLOTS, ASSETS)


def door() -> PartitionDoor:
    return PartitionDoor(Gate(CFG), CFG.ingest.max_ahead_ms, CFG.ingest.jump_keys)


def stage(raws: list[bytes], first: int, d: PartitionDoor) -> bytes:
    """What worker/stage.py publishes for raws[first:] read as offsets first.. (positions as records)."""
    batch, rejected, ignored = admit_rows(d, list(range(len(raws))), SLOTS, ASSETS, values=raws, topic="ticks")
    kept = batch.records
    dead = [Rejected(first + k, e.kind, e.reason, raws[k], None) for k, e in rejected]
    offsets = np.array([first + k for k in kept], np.int64)
    batch.records = None
    return pack(RULES, 3, first, first + len(raws) - 1, d.clock, batch, offsets, [raws[k] for k in kept], dead,
                ignored)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10**6), st.integers(2, 300), st.lists(st.integers(1, 299), max_size=4))
def test_staged_in_chunks_by_restored_doors_equals_one_door(seed, n, cuts):
    raws = stream(random.Random(seed), n)
    whole, rejected, _ = admit_rows(door(), [Rec(r, k) for k, r in enumerate(raws)], SLOTS, ASSETS)
    bounds = sorted({0, n, *(c for c in cuts if c < n)})
    rows, records, dead = [], [], []
    last = None
    for lo, hi in zip(bounds, bounds[1:]):
        d = door()
        if last is not None:  # a new stage: it knows only the last staged record
            restore_clock(d.clock, last.clock)
            assert last.last + 1 == lo
        last = unpack(stage(raws[lo:hi], lo, d))
        assert (last.partition, last.first, last.last, last.rules) == (3, lo, hi - 1, RULES)
        got = last.market_rows("ticks")
        rows.append(got.rows)
        records += [(r.topic, r.partition, r.offset, r.value) for r in got.records]
        dead += [(r.offset, r.kind, r.reason, r.value) for r in last.rejected]
    assert np.concatenate(rows).tobytes() == whole.rows.tobytes()
    assert records == [("ticks", 3, rec.offset, rec.value) for rec in whole.records]
    assert dead == [(rec.offset, e.kind, e.reason, rec.value) for rec, e in rejected]


def test_a_record_staged_again_gives_only_the_rows_not_taken():
    raws = stream(random.Random(1), 200, ahead=False, malformed=0.0)
    staged = unpack(stage(raws, 1000, door()))
    every = staged.market_rows("ticks")
    offsets = [r.offset for r in every.records]
    assert len(every) > 150 and offsets == sorted(offsets)
    k = int(np.searchsorted(offsets, 1099, "right"))
    later = staged.market_rows("ticks", after=1099)
    assert [r.offset for r in later.records] == offsets[k:]
    assert later.rows.tobytes() == every.rows[k:].tobytes()
    assert len(staged.market_rows("ticks", after=1199)) == 0
    sub = later[10:20]  # the merge slices runs: the records follow
    assert [r.offset for r in sub.records] == offsets[k + 10:k + 20]
    assert [r.value for r in sub.records] == [raws[o - 1000] for o in offsets[k + 10:k + 20]]


def test_rules_change_with_the_books_not_with_the_schedule():
    other = CFG.with_schedule(evaluate_every_ms=CFG.schedule.evaluate_every_ms + 1)
    eng = Engine(other)
    assert rules_id(other, eng.gate, eng.market.slot, eng.layout.asset_id) == RULES
    stricter = CFG.model_copy(update={"ingest": CFG.ingest.model_copy(update={"max_ahead_ms": 1})})
    eng = Engine(stricter)
    assert rules_id(stricter, eng.gate, eng.market.slot, eng.layout.asset_id) != RULES
