"""Liquidation and bankruptcy price of every position (liqwatch.kernels.positions).

- the venues' own formulas on their worked examples: Binance's USDⓈ-M one-way-mode example (ETHUSDT and
  BTCUSDT in one cross account) and Hyperliquid's documented formula;
- exact: at the reported price, with the underlying's prices moved there, the health kernel says health 1 and
  equity 0 (1e-9 relative), on random books with cross collateral (WBETH moving with ETH, debt, brackets);
- equal to a plain-Python reference (tests/reference.py: a scan of E − M along the move and bisection).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import yaml

from liqwatch.config import parse_config
from liqwatch.kernels.health import account_numbers
from tests import reference as ref
from tests.conftest import close, run_engine, run_reference
from tests.populations import population

T = 1_700_000_000_000

# Binance's USDⓈ-M maintenance tiers of the example's time (rate, maintenance amount = our cumulative deduction):
# BTCUSDT 0.4% / 0.5% (50) / 1% (1,300) / 2.5% (16,300) / 5% (266,300); ETHUSDT 0.5% / 0.65% (15) / 1% (365) /
# 2% (5,365) / 5% (35,365) / 10% (135,365) / 12.5% (260,365)
VENUE_CONFIG = """
settlement: USDT
assets:
  USDT: {}
  USDC: {}
  BTC:
    index: {constituents: [{source: "binance:BTC/USDT", weight: 1}], max_deviation: 1}
  ETH:
    index: {constituents: [{source: "binance:ETH/USDT", weight: 1}], max_deviation: 1}
instruments:
  BTCUSDT-PERP:
    underlying: BTC
    mark: {method: index}
    maintenance: [{upto: 50000, rate: 0.004}, {upto: 250000, rate: 0.005}, {upto: 1000000, rate: 0.01},
                  {upto: 10000000, rate: 0.025}, {upto: 20000000, rate: 0.05}, {upto: null, rate: 0.10}]
  ETHUSDT-PERP:
    underlying: ETH
    mark: {method: index}
    maintenance: [{upto: 10000, rate: 0.005}, {upto: 100000, rate: 0.0065}, {upto: 500000, rate: 0.01},
                  {upto: 1000000, rate: 0.02}, {upto: 2000000, rate: 0.05}, {upto: 5000000, rate: 0.10},
                  {upto: null, rate: 0.125}]
  BTC-HL:
    underlying: BTC
    mark: {method: index}
    maintenance: [{upto: null, rate: 0.0125}]     # Hyperliquid: half the initial margin at 40x
liquidation: {venue: binance, fee_rate: 0.0125}
stress:
  scenarios: {risk_off: {BTC: -1.0, ETH: -1.0}}
  severities: [0.1]
"""


def _venue_engine(marks: dict[str, float], collateral: dict[str, float], positions: list[dict]):
    cfg = parse_config(yaml.safe_load(VENUE_CONFIG))
    evs = [{"type": "tick", "venue": "binance", "symbol": f"{a}/USDT", "ts": T, "bid": m, "ask": m}
           for a, m in marks.items()]
    evs.append({"type": "account", "account": "a", "ts": T, "collateral": collateral, "borrowed": {},
                "positions": positions})
    return run_engine(cfg, evs)


def _prices(engine) -> dict[str, tuple[float, float]]:
    return {r["instrument"]: (r["liquidation_price"], r["bankruptcy_price"]) for r in engine.position_rows()}


def test_binance_usdm_one_way_example():
    # Binance FAQ "How to Calculate Liquidation Price of USDⓈ-M Futures Contracts" (cross margin, one-way mode):
    # wallet balance 1,535,443.01 USDT; long 109.488 BTCUSDT at 32,481.98 (mark 31,967.27) and long 3,683.979
    # ETHUSDT at 1,456.84 (mark 1,335.18); LP = (WB − TMM1 + UPNL1 + cumB − Side·Pos·EP) / (Pos·MMR − Side·Pos):
    # ETHUSDT 1,153.26, BTCUSDT 26,316.89 (the same figures in freqtrade's tests/exchange/test_binance.py).
    e = _venue_engine({"BTC": 31_967.27, "ETH": 1_335.18}, {"USDT": 1_535_443.01},
                      [{"instrument": "BTCUSDT-PERP", "qty": 109.488, "entry": 32_481.98},
                       {"instrument": "ETHUSDT-PERP", "qty": 3_683.979, "entry": 1_456.84}])
    got = _prices(e)
    assert round(got["ETHUSDT-PERP"][0], 2) == 1_153.26
    assert round(got["BTCUSDT-PERP"][0], 2) == 26_316.89


@pytest.mark.parametrize("instrument, asset, qty, entry, mark, expected", [
    # the same example in isolated mode (TMM = UPNL = 0, the wallet balance the position's own): 1,114.78, 18,778.73
    ("ETHUSDT-PERP", "ETH", 3_683.979, 1_456.84, 1_335.18, 1_114.78),
    ("BTCUSDT-PERP", "BTC", 109.488, 32_481.98, 31_967.27, 18_778.73),
])
def test_binance_single_position_examples(instrument, asset, qty, entry, mark, expected):
    e = _venue_engine({asset: mark}, {"USDT": 1_535_443.01}, [{"instrument": instrument, "qty": qty, "entry": entry}])
    assert round(_prices(e)[instrument][0], 2) == expected


@pytest.mark.parametrize("side", [1, -1])
def test_hyperliquid_formula(side):
    # Hyperliquid docs, Trading › Liquidations: liq_price = price − side · margin_available / position_size /
    # (1 − l · side), l = 1 / maintenance leverage (maintenance margin = half the initial margin at max leverage,
    # 40x: l = 1.25%), margin_available = account value − maintenance margin (cross).
    usdc, size, entry, price, l = 10_000.0, 1.0, 100_000.0, 98_000.0, 0.0125
    e = _venue_engine({"BTC": price}, {"USDC": usdc}, [{"instrument": "BTC-HL", "qty": side * size, "entry": entry}])
    account_value = usdc + side * size * (price - entry)
    margin_available = account_value - l * size * price
    expected = price - side * margin_available / size / (1 - l * side)
    liq, bankrupt = _prices(e)["BTC-HL"]
    assert liq == pytest.approx(expected, rel=1e-12)
    # and equity 0: the whole account value lost
    assert bankrupt == pytest.approx(price - side * account_value / size, rel=1e-12)


def test_no_price_where_none_exists():
    # a long 1x against stable collateral survives any fall; a short hedged by more of the same asset never
    # reaches health 1 going up
    e = _venue_engine({"BTC": 100_000.0}, {"USDT": 200_000.0},
                      [{"instrument": "BTC-HL", "qty": 1.0, "entry": 100_000.0}])
    assert _prices(e)["BTC-HL"] == (None, None)
    e = _venue_engine({"BTC": 100_000.0}, {"USDT": 1_000.0, "BTC": 2.0},
                      [{"instrument": "BTC-HL", "qty": -1.0, "entry": 100_000.0}])
    assert _prices(e)["BTC-HL"] == (None, None)


def _moved(engine, p: int, price: float):
    """Index and mark with the position's underlying (and what follows it) moved so that its mark is `price`."""
    pv = engine.prices()
    lay = engine.layout
    acc = engine.accounts.view()
    ins = acc.pos_instr[p]
    u = lay.risk_params.underlying[ins]
    f = price / pv.mark[ins]
    index, mark = pv.index.copy(), pv.mark.copy()
    for a in range(index.shape[0]):
        if a == u or lay.follows[a] == u:
            index[a] *= f
    for j in range(mark.shape[0]):
        und = lay.risk_params.underlying[j]
        if und == u or lay.follows[und] == u:
            mark[j] = price if j == ins else mark[j] * f
    return index, mark


def _owner(acc, p: int) -> int:
    return int(acc.pos_owner[p])


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_health_is_one_at_the_liquidation_price_and_equity_zero_at_bankruptcy(rich_config, seed):
    e = run_engine(rich_config, population(seed, 400))
    mark, liq, bank = e.position_prices()
    acc = e.accounts.view()
    risk = e.layout.risk_params
    found = {"liq": 0, "bank": 0, "cross": 0}
    for p in range(acc.pos_qty.shape[0]):
        i = _owner(acc, p)
        if i < 0 or not acc.active[i]:
            continue
        u = risk.underlying[acc.pos_instr[p]]
        held = [acc.coll_asset[j] for j in range(acc.coll_start[i], acc.coll_start[i] + acc.coll_count[i])]
        if math.isfinite(liq[p]):
            eq, mm = account_numbers(i, *_moved(e, p, liq[p]), acc, risk)
            assert abs(eq / mm - 1.0) <= 1e-9, (p, liq[p], eq, mm)
            found["liq"] += 1
            found["cross"] += any(a == u or e.layout.follows[a] == u for a in held)
        if math.isfinite(bank[p]):
            eq, mm = account_numbers(i, *_moved(e, p, bank[p]), acc, risk)
            gross = sum(abs(acc.coll_qty[j]) for j in range(acc.coll_start[i], acc.coll_start[i] + acc.coll_count[i]))
            scale = max(mm, abs(acc.pos_qty[p]) * mark[p], 1.0) + gross
            assert abs(eq) <= 1e-9 * scale, (p, bank[p], eq)
            found["bank"] += 1
    # the test proves something only if it met prices, and collateral that moves with the position
    assert found["liq"] > 100 and found["bank"] > 100 and found["cross"] > 20, found


@pytest.mark.parametrize("seed", [4, 5])
def test_equal_to_the_plain_python_reference(rich_config, seed):
    events = population(seed, 150)
    e = run_engine(rich_config, events)
    market, accounts, t = run_reference(rich_config, events)
    index, marks = market.prices(t)
    got = {(r["account"], k): r for k, r in enumerate(e.position_rows())}
    want = []
    for name in sorted(accounts):
        for liq, bank in ref.position_prices(rich_config, accounts[name], index, marks):
            want.append((liq, bank))
    assert len(want) == len(got)
    met = 0
    for (row, (liq, bank)) in zip(got.values(), want):
        assert close(row["liquidation_price"], liq, rel=1e-9, abs_=0), (row, liq)
        assert close(row["bankruptcy_price"], bank, rel=1e-9, abs_=0), (row, bank)
        met += liq is not None
    assert met > 50


ADL_CONFIG = VENUE_CONFIG.replace("liquidation: {venue: binance, fee_rate: 0.0125}",
                                  "liquidation: {venue: binance, fee_rate: 0.0125, adl: RULE}")


def _adl_engine(rule: str, accounts: dict[str, tuple[float, float, float]]):
    """Accounts of USDT and one BTC-HL position each: name → (usdt, qty, entry); BTC marked at 110,000."""
    cfg = parse_config(yaml.safe_load(ADL_CONFIG.replace("RULE", rule)))
    evs = [{"type": "tick", "venue": "binance", "symbol": "BTC/USDT", "ts": T, "bid": 110_000, "ask": 110_000}]
    for name, (usdt, qty, entry) in accounts.items():
        evs.append({"type": "account", "account": name, "ts": T, "collateral": {"USDT": usdt}, "borrowed": {},
                    "positions": [{"instrument": "BTC-HL", "qty": qty, "entry": entry}]})
    return run_engine(cfg, evs)


def _keys(engine):
    from liqwatch.kernels.positions import ADL_BINANCE, ADL_HYPERLIQUID, adl_keys

    pv = engine.prices()
    acc = engine.accounts.view()
    _, _, bank = engine.position_prices()
    key = np.empty(acc.pos_qty.shape[0])
    rule = ADL_HYPERLIQUID if engine.cfg.liquidation.adl == "hyperliquid" else ADL_BINANCE
    adl_keys(pv.mark, acc, engine.layout.risk_params, pv.index, bank, rule, key)
    return {engine.accounts.ids[acc.pos_owner[p]]: key[p] for p in range(key.shape[0])}


def test_adl_keys_as_the_venues_define_them():
    # long 1 BTC from 100,000, marked at 110,000, with 20,000 USDT: equity 30,000, bankrupt at 80,000.
    # Binance: PnL% = 10,000 / 100,000; effective leverage = |mark value| / (mark value − bankrupt value)
    # = 110,000 / 30,000 ("ADL ranking" in Binance's Futures FAQ: PnL% × effective leverage when in profit)
    e = _adl_engine("binance", {"a": (20_000, 1.0, 100_000), "loser": (50_000, 1.0, 120_000)})
    k = _keys(e)
    assert k["a"] == pytest.approx(0.1 * 110_000 / 30_000, rel=1e-12)
    # in loss: PnL% / effective leverage (equity 40,000, bankrupt at 70,000)
    assert k["loser"] == pytest.approx((-10_000 / 120_000) / (110_000 / 40_000), rel=1e-12)
    # Hyperliquid docs (Trading › Auto-deleveraging): (mark / entry) × (notional / account value)
    e = _adl_engine("hyperliquid", {"a": (20_000, 1.0, 100_000), "s": (20_000, -1.0, 120_000)})
    k = _keys(e)
    assert k["a"] == pytest.approx(1.1 * 110_000 / 30_000, rel=1e-12)
    assert k["s"] == pytest.approx((120_000 / 110_000) * 110_000 / 30_000, rel=1e-12)  # a short's mirror


def test_adl_rank_is_the_quantile_within_instrument_and_side():
    # three longs in profit at 1x..5x-ish and a short: the short is ranked among shorts alone
    e = _adl_engine("binance", {"low": (100_000, 1.0, 100_000), "mid": (20_000, 1.0, 100_000),
                                "high": (5_000, 1.0, 100_000), "short": (50_000, -1.0, 100_000)})
    ranks = {r["account"]: r["adl_rank"] for r in e.position_rows()}
    assert ranks == {"low": pytest.approx(1 / 3), "mid": pytest.approx(2 / 3), "high": 1.0, "short": 1.0}
