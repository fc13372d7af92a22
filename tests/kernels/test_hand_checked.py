"""Small cases with the arithmetic written out."""

from __future__ import annotations


import pytest
import yaml

from liqwatch.config import parse_config
from tests.conftest import DATA, run_engine

T = 1_000_000


def tick(symbol, mid, venue="binance", ts=T, **kw):
    return {"type": "tick", "venue": venue, "symbol": symbol, "ts": ts, "bid": mid, "ask": mid, **kw}


def prices(small_config):
    return [tick("BTC/USDT", 100_000), tick("BTC/USDT", 100_000, "okx"), tick("BTC/USD", 100_000, "coinbase"),
            tick("ETH/USDT", 4_000), tick("ETH/USDT", 4_010, "okx"), tick("WBETH/USDT", 4_300),
            {"type": "reference", "asset": "WBETH", "ts": T, "in": "ETH", "rate": 1.08}]


def test_weighted_median_tie_takes_the_smaller_price(small_config):
    # ETH: weighted_median of binance 4000 (w .5) and okx 4010 (w .5): cumulative weight reaches .5 at 4000
    e = run_engine(small_config, prices(small_config))
    assert e.prices().index[e.layout.asset_id["ETH"]] == 4000.0


def test_redemption_source_reads_the_index_of_its_in_asset(small_config):
    # WBETH = .2 × spot 4300 + .8 × (1.08 × ETH index 4000 = 4320) = 860 + 3456 = 4316
    e = run_engine(small_config, prices(small_config))
    assert e.prices().index[e.layout.asset_id["WBETH"]] == pytest.approx(4316.0, rel=1e-12)


def test_floor_binds():
    data = yaml.safe_load((DATA / "small.yaml").read_text())
    data["assets"]["USDe"] = {"index": {"constituents": [{"source": "binance:USDe/USDT", "weight": 1}],
                                        "floor": 0.97}}
    cfg = parse_config(data)
    e = run_engine(cfg, [tick("USDe/USDT", 0.65)])
    assert e.prices().index[e.layout.asset_id["USDe"]] == 0.97  # 0.65 clamped up to the floor


def test_deviation_drop_then_mean(small_config):
    # BTC: 100,000 (w .4), 101,000 (w .3), 130,000 (w .3); median 101,000; 130,000 deviates 28.7% > 5%: dropped;
    # (.4 × 100,000 + .3 × 101,000) / .7 = 100,428.571…
    e = run_engine(small_config, [tick("BTC/USDT", 100_000), tick("BTC/USDT", 101_000, "okx"),
                                  tick("BTC/USD", 130_000, "coinbase")])
    assert e.prices().index[e.layout.asset_id["BTC"]] == pytest.approx(70_300_000 / 700, rel=1e-12)
    assert list(e.market.source_status[:3]) == [0, 0, 2]


def test_stale_sources_dropped_and_index_keeps_last_value(small_config):
    # all three BTC books quoted at T; at T + 10,001 ms they are older than max_age_ms = 10,000
    evs = [tick("BTC/USDT", 100_000), tick("BTC/USDT", 100_000, "okx"), tick("BTC/USD", 100_000, "coinbase"),
           tick("ETH/USDT", 4_000, ts=T + 10_001)]
    e = run_engine(small_config, evs)
    btc = e.layout.asset_id["BTC"]
    assert e.prices().index[btc] == 100_000.0 and e.prices().stale[btc]


def test_maintenance_bracket_straddle(small_config):
    # 3 BTCUSDT-PERP long at mark 100,000 (no perp book: mark = index): notional 300,000 straddles three brackets:
    #   50,000 × 0.4% = 200  +  200,000 × 0.5% = 1,000  +  50,000 × 1% = 500  →  maintenance 1,700
    # collateral 10,000 USDT (no haircut); entry 100,000 → U = 0; equity 10,000; health 10,000 / 1,700
    acct = {"type": "account", "account": "a", "ts": T, "collateral": {"USDT": 10_000}, "borrowed": {},
            "positions": [{"instrument": "BTCUSDT-PERP", "qty": 3, "entry": 100_000}]}
    e = run_engine(small_config, [tick("BTC/USDT", 100_000), tick("BTC/USDT", 100_000, "okx"),
                                  tick("BTC/USD", 100_000, "coinbase"), acct])
    row = e.health_rows()[0]
    assert row["maintenance"] == pytest.approx(1_700.0, rel=1e-12)
    assert row["equity"] == pytest.approx(10_000.0, rel=1e-12)
    assert row["health"] == pytest.approx(10_000 / 1_700, rel=1e-12)


def test_haircut_borrow_and_pnl(small_config):
    # collateral 1 BTC at 100,000 with haircut 5% below 10M → 95,000; borrowed 20,000 USDT (5% maintenance = 1,000);
    # long 2 BTCUSDT-PERP entered at 110,000, mark 100,000 → U = −20,000; notional 200,000 →
    #   50,000 × 0.4% + 150,000 × 0.5% = 200 + 750 = 950. E = 95,000 − 20,000 − 20,000 = 55,000; M = 1,950
    acct = {"type": "account", "account": "a", "ts": T, "collateral": {"BTC": 1}, "borrowed": {"USDT": 20_000},
            "positions": [{"instrument": "BTCUSDT-PERP", "qty": 2, "entry": 110_000}]}
    e = run_engine(small_config, [tick("BTC/USDT", 100_000), tick("BTC/USDT", 100_000, "okx"),
                                  tick("BTC/USD", 100_000, "coinbase"), acct])
    row = e.health_rows()[0]
    assert row["equity"] == pytest.approx(55_000.0, rel=1e-12)
    assert row["maintenance"] == pytest.approx(1_950.0, rel=1e-12)
    assert row["liquidatable"] is False
    # BTC falls by s: E(s) = 95,000(1−s) − 20,000 − 2·(110,000 − 100,000(1−s)) ... liquidatable when E < M(s);
    # E(s) = 55,000 − 295,000 s, M(s) = 1,000 + 0.005·200,000(1−s) − 50 = 1,950 − 1,000 s → s* = 53,050 / 294,000
    assert row["liquidation_severity"] == pytest.approx(53_050 / 294_000, abs=2e-6)


def test_median3_mark(small_config):
    # index 100,000; funding .0001 with 4h of an 8h interval left → (a) 100,005; basis sample: mid 100,050 −
    # index → (b) 100,050; last 100,020 → (c). Median = 100,020.
    evs = [tick("BTC/USDT", 100_000), tick("BTC/USDT", 100_000, "okx"), tick("BTC/USD", 100_000, "coinbase"),
           tick("BTCUSDT-PERP", 100_050, last=100_020, funding_rate=0.0001, next_funding_ts=T + 4 * 3_600_000)]
    e = run_engine(small_config, evs)
    assert e.prices().mark[e.layout.instrument_id["BTCUSDT-PERP"]] == pytest.approx(100_020.0, rel=1e-12)


def test_cascade_one_account_linear_impact(small_config):
    # One account: E = 1 BTC × 90,000 × .95 + 10,000 − 10 × 10,000 = −4,500 < M after a 10% BTC shock; it sells 1 BTC of collateral (index 90,000) and closes a
    # 10 BTC long at mark 90,000: net BTC sold 90,000 + 900,000 = 990,000 USD; linear impact on binance books of
    # BTC: × (1 − 0.01 × 990,000 / 50,000,000) = × 0.9998020
    acct = {"type": "account", "account": "a", "ts": T, "collateral": {"BTC": 1, "USDT": 10_000}, "borrowed": {},
            "positions": [{"instrument": "BTCUSDT-PERP", "qty": 10, "entry": 100_000}]}
    e = run_engine(small_config, [tick("BTC/USDT", 100_000), tick("BTC/USDT", 100_000, "okx"),
                                  tick("BTC/USD", 100_000, "coinbase"), acct])
    r = e.cascade("risk_off", 0.10)
    assert r["rounds"] == 1 and r["liquidated_accounts"] == 1
    assert r["liquidated_notional"] == pytest.approx(990_000.0, rel=1e-12)
    assert r["net_sold"] == {"BTC": pytest.approx(990_000.0, rel=1e-12)}
    assert r["final_prices"]["binance:BTC/USDT"] == pytest.approx(90_000 * (1 - 0.01 * 990_000 / 50e6), rel=1e-12)
    assert r["final_prices"]["okx:BTC/USDT"] == pytest.approx(90_000.0, rel=1e-12)  # only the liquidation venue
    assert r["amplification"] == 1.0 and r["runaway"] is False
    assert r["impact_floor"] == []


def test_an_uncalibrated_depth_is_reported_when_impact_hits_the_floor():
    # the same account and cascade with a BTC depth of $5k per 1%: 1 − 0.01 × 990,000 / 5,000 = −0.98, so the
    # round's factor is the floor 0.01 and the binance books end at 1% of the shocked 90,000
    data = yaml.safe_load((DATA / "small.yaml").read_text())
    data["assets"]["BTC"]["impact"] = {"model": "linear", "depth_usd_per_pct": 5_000}
    acct = {"type": "account", "account": "a", "ts": T, "collateral": {"BTC": 1, "USDT": 10_000}, "borrowed": {},
            "positions": [{"instrument": "BTCUSDT-PERP", "qty": 10, "entry": 100_000}]}
    e = run_engine(parse_config(data), [tick("BTC/USDT", 100_000), tick("BTC/USDT", 100_000, "okx"),
                                        tick("BTC/USD", 100_000, "coinbase"), acct])
    r = e.cascade("risk_off", 0.10)
    assert r["impact_floor"] == ["BTC"]
    assert r["final_prices"]["binance:BTC/USDT"] == pytest.approx(900.0, rel=1e-12)
