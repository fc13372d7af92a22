"""Every class of bad event is rejected with a reason naming the field; the batch run goes on."""

from __future__ import annotations

import json

import pytest

from liqwatch.replay.batch import load_events
from liqwatch.core.engine import Engine
from liqwatch.events import BadEvent, decode

TICK = {"type": "tick", "venue": "binance", "symbol": "BTC/USDT", "ts": 1000, "bid": 1.0, "ask": 2.0}
ACCT = {"type": "account", "account": "a1", "ts": 1000, "collateral": {"USDT": 1.0}, "borrowed": {},
        "positions": [{"instrument": "BTCUSDT-PERP", "qty": 1, "entry": 100}]}


def bad(raw: str | dict, engine: Engine | None = None) -> BadEvent:
    text = raw if isinstance(raw, str) else json.dumps(raw)
    with pytest.raises(BadEvent) as e:
        ev = decode(text)
        if engine is not None:
            engine.apply(ev)
    return e.value


@pytest.mark.parametrize("raw,kind,reason", [
    ("{not json", "invalid_json", "(json): not valid JSON"),
    ("[1,2]", "bad_field", "(event):"),
    ({**TICK, "type": "trade"}, "unknown_type", "type: must be one of tick, reference, account"),
    ({**TICK, "type": "health"}, "unknown_type", "type: 'health' is an output of liqwatch"),
    ({k: v for k, v in TICK.items() if k != "bid"}, "missing_field", "bid: required"),
    ({**TICK, "bid": "1.0"}, "bad_field", "bid: expected `float`, got `str`"),
    ({**TICK, "bid": -1.0}, "bad_number", "bid: must be a finite number > 0"),
    (json.dumps(TICK).replace('"ask": 2.0', '"ask": 1e400'), "bad_number", "ask: must be a finite number"),
    (json.dumps(TICK).replace('"ask": 2.0', '"ask": NaN'), "invalid_json", "(json): not valid JSON"),
    ({**TICK, "bid": 3.0}, "crossed_book", "bid: 3.0 is above ask 2.0"),
    ({**TICK, "ts": -5}, "bad_ts", "ts: must be milliseconds"),
    ({**TICK, "ts": 1.5}, "bad_field", "ts: expected `int`"),
    ({**TICK, "funding_rate": 0.001}, "missing_field", "next_funding_ts: required with funding_rate"),
    ({**ACCT, "collateral": {"USDT": -3}}, "bad_number", "collateral.USDT: must be a finite number >= 0"),
    ({**ACCT, "positions": [{"instrument": "X", "qty": 1}]}, "missing_field", "positions[0].entry: required"),
    ({**ACCT, "positions": [{"instrument": "BTCUSDT-PERP", "qty": 1, "entry": 0}]}, "bad_number",
     "positions[0].entry: must be a finite number > 0"),
    ({"type": "reference", "asset": "WBETH", "ts": 1, "in": "ETH", "rate": 0}, "bad_number", "rate: must be"),
])
def test_shape_errors(raw, kind, reason):
    e = bad(raw)
    assert e.kind == kind and e.reason.startswith(reason), (e.kind, e.reason)


@pytest.mark.parametrize("raw,kind,reason", [
    ({**TICK, "symbol": "DOGE/USDT"}, "unknown_source", "venue: 'binance:DOGE/USDT' is not a source"),
    ({**TICK, "symbol": "XRPUSDT-PERP"}, "unknown_source", "venue: 'binance:XRPUSDT-PERP' is not a source"),
    ({**ACCT, "collateral": {"DOGE": 1}}, "unknown_asset", "collateral.DOGE: unknown asset 'DOGE'"),
    ({**ACCT, "borrowed": {"DOGE": 1}}, "unknown_asset", "borrowed.DOGE: unknown asset 'DOGE'"),
    ({**ACCT, "positions": [{"instrument": "X-PERP", "qty": 1, "entry": 1}]}, "unknown_instrument",
     "positions[0].instrument: unknown instrument 'X-PERP'"),
    ({"type": "reference", "asset": "DOGE", "ts": 1, "in": "USD", "rate": 1}, "unknown_asset", "asset: unknown"),
    ({"type": "reference", "asset": "WBETH", "ts": 1, "in": "BTC", "rate": 1}, "unknown_asset",
     "in: config says WBETH redeems into ETH"),
])
def test_config_errors(small_config, raw, kind, reason):
    e = bad(raw, Engine(small_config))
    assert e.kind == kind and e.reason.startswith(reason), (e.kind, e.reason)


def test_out_of_order_beyond_tolerance(small_config):
    engine = Engine(small_config)  # tolerance 1000 ms
    engine.apply(decode(json.dumps({**TICK, "ts": 10_000})))
    assert engine.apply(decode(json.dumps({**TICK, "ts": 9_500}))) is False  # within tolerance: superseded
    e = bad({**TICK, "ts": 8_000}, engine)
    assert e.kind == "out_of_order" and e.reason.startswith("ts: 2000 ms older than the last event of")
    assert engine.market.mid[engine.market.slot["binance:BTC/USDT"]] == 1.5  # the newest tick stands


def test_batch_dead_letters_and_goes_on(small_config, tmp_path):
    lines = [json.dumps(TICK), "garbage", json.dumps({**TICK, "bid": -1}), json.dumps(ACCT),
             json.dumps({**ACCT, "account": "a2", "collateral": {"DOGE": 1}})]
    src = tmp_path / "ev.jsonl"
    src.write_text("\n".join(lines) + "\n")
    dead = tmp_path / "dead.jsonl"
    engine, rep = load_events(small_config, src, dead)
    assert rep.rejected == 3 and rep.applied == 2
    rows = [json.loads(x) for x in dead.read_text().splitlines()]
    assert [r["line"] for r in rows] == [2, 3, 5]
    assert rows[0]["original"] == "garbage" and rows[1]["reason"].startswith("bid:")
    assert rows[2]["kind"] == "unknown_asset"
    assert engine.accounts.ids == ["a1"]


def test_partition_door_rejects_what_is_far_ahead_and_keeps_merge_times_monotone(small_config):
    """One tick an hour ahead of its partition is dead-lettered, not its partition's time; later ticks merge at
    the partition's time; a gap in the whole stream (several keys that far ahead in a row) moves the clock."""
    from liqwatch.core.ingest import Gate, PartitionDoor

    door = PartitionDoor(Gate(small_config), max_ahead_ms=60_000, jump_keys=3)

    def tick(ts, venue="binance", symbol="BTC/USDT"):
        return json.dumps({**TICK, "venue": venue, "symbol": symbol, "ts": ts}).encode()

    assert door.admit(tick(1_000))[1] == 1_000
    assert door.admit(tick(2_000))[1] == 2_000
    with pytest.raises(BadEvent) as e:
        door.admit(tick(3_600_000))
    assert e.value.kind == "ahead_of_stream"
    assert door.admit(tick(1_500))[1] == 2_000     # a late record merges at its partition's time
    for venue, symbol in (("okx", "BTC/USDT"), ("coinbase", "BTC/USD")):  # two keys that far ahead: rejected
        with pytest.raises(BadEvent):
            door.admit(tick(5_000_000, venue, symbol))
    ev, t = door.admit(tick(5_000_100, "binance", "ETH/USDT"))  # a third distinct key in a row: the stream jumped
    assert t == 5_000_100 and ev.ts == 5_000_100
    assert door.admit(tick(5_000_200))[1] == 5_000_200



def test_output_lines_are_json_without_nan_or_infinity():
    from liqwatch.events import json_line

    line = json_line({"amplification": float("inf"), "net_sold": {"USDe": float("nan")}, "rounds": [1, 2.5]})
    assert line == '{"amplification": null, "net_sold": {"USDe": null}, "rounds": [1, 2.5]}'
    assert json.loads(line)["amplification"] is None
