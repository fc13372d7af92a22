"""Auto-deleveraging executed in the cascade (liquidation.auto_deleverage; liqwatch.kernels.adl): checked by hand
on one book, against the plain-Python reference on seeded books, sharded = single process.

By hand: BTC falls 10% to 90,000 and stays there; the fund is empty and there is no fee. `broke` is long 1 BTC
entered at 100,000 with 5,000 USDT: E = −5,000, a deficit of 5,000 on 90,000 of notional, none of it covered — so
90,000 of BTC shorts must take its position over, and each pays 5,000 / 90,000 per dollar taken (closing at
`broke`'s bankruptcy price, 95,000, instead of the mark). The shorts, with Binance's key PnL% × |value| / equity:
- `b`: 0.6 BTC short entered at 110,000 with 5,000 USDT: PnL 12,000 (18.2%), equity 17,000, leverage 3.18 → 0.578;
- `a`: 0.5 short at 120,000 with 10,000 USDT: PnL 15,000 (25%), equity 25,000, leverage 1.8 → 0.45;
- `c`: 1 short at 95,000 with 50,000 USDT: PnL 5,000 (5.3%), equity 55,000, leverage 1.64 → 0.086.
`b` goes first in full (54,000, paying 3,000), then 36,000 of `a`'s 45,000 (0.8 of it, paying 2,000); `c` keeps
its position. Hyperliquid's key (entry/mark × notional / account value) queues them the same way here
(b 3.88, a 2.4, c 1.73).
"""

from __future__ import annotations

import pytest

from liqwatch.kernels.cascade import Shard, cascade_rounds, combine
from liqwatch.kernels.positions import ADL_BINANCE, ADL_HYPERLIQUID
from tests import reference as ref
from tests.conftest import close, one_book_config, run_engine, run_reference
from tests.populations import population

T = 1_700_000_000_000
BOOK = {"broke": (5_000.0, 1.0, 100_000.0), "b": (5_000.0, -0.6, 110_000.0), "a": (10_000.0, -0.5, 120_000.0),
        "c": (50_000.0, -1.0, 95_000.0)}


def _engine(liquidation: str, book=BOOK):
    evs = [{"type": "tick", "venue": "binance", "symbol": "BTC/USDT", "ts": T, "bid": 100_000, "ask": 100_000}]
    for name, (usdt, qty, entry) in book.items():
        evs.append({"type": "account", "account": name, "ts": T, "collateral": {"USDT": usdt}, "borrowed": {},
                    "positions": [{"instrument": "BTCUSDT-PERP", "qty": qty, "entry": entry}]})
    return run_engine(one_book_config(liquidation), evs)


def _by_hand(rule: int):
    """The cascade through one Shard, to read what it did to each account."""
    engine = _engine("{venue: binance, insurance_fund: 0, auto_deleverage: true}")
    lay, pv = engine.layout, engine.prices()
    shard = Shard(engine.accounts.view(), lay.risk_params, adl_rule=rule)
    gen = cascade_rounds(float(pv.t), 0.1, lay.scenario_direction("risk_off"), pv.quotes, lay.index_params,
                         lay.mark_params, pv.index, lay.impact_params, lay.venue_id["binance"], 50, 0.0, rule)
    req = next(gen)
    try:
        while True:
            req = gen.send(combine([shard.answer(req, pv.index.shape[0])]))
    except StopIteration as done:
        res = done.value
    row = engine.accounts.row
    qty = {a: float(shard.accounts.pos_qty[shard.accounts.pos_start[row[a]]]) for a in BOOK}
    cash = {a: float(shard.cash[row[a]]) for a in BOOK}
    return res, qty, cash


@pytest.mark.parametrize("rule", [ADL_BINANCE, ADL_HYPERLIQUID])
def test_the_queue_takes_the_bankrupt_position_from_the_top(rule):
    res, qty, cash = _by_hand(rule)
    assert res.liquidated_accounts == 1 and res.uncovered == pytest.approx(5_000)
    assert res.adl_closed_notional == pytest.approx(90_000) and res.deleveraged_accounts == 2
    assert qty["b"] == 0.0                                 # first, in full
    assert qty["a"] == pytest.approx(-0.5 * 0.2)           # 0.8 of it
    assert qty["c"] == -1.0                                # never reached
    # each realised its PnL at the mark, less its share of the deficit (the bankruptcy price)
    assert cash["b"] == pytest.approx(12_000 - 3_000)
    assert cash["a"] == pytest.approx(0.8 * 15_000 - 2_000)
    assert cash["c"] == 0.0
    # taken over off the books: the bankrupt long was not sold on the market
    assert res.net_sold[res.net_sold != 0].size == 0


def test_what_the_fund_covers_deleverages_nobody_and_the_switch_off_only_accounts():
    got = _engine("{venue: binance, insurance_fund: 1.0e+6, auto_deleverage: true}").cascade("risk_off", 0.1)
    fund = got["insurance_fund"]
    assert fund["drawdown_usd"] == pytest.approx(5_000) and fund["deleveraged_accounts"] == 0
    assert fund["adl_closed_notional_usd"] == 0
    got = _engine("{venue: binance, insurance_fund: 0}").cascade("risk_off", 0.1)
    fund = got["insurance_fund"]
    assert fund["adl_notional_usd"] == pytest.approx(90_000)  # accounted …
    assert fund["adl_closed_notional_usd"] == 0 and fund["deleveraged_accounts"] == 0  # … not executed
    assert got["net_sold"] == {"BTC": pytest.approx(90_000)}  # and sold on the books


def test_too_few_counterparties_are_all_taken():
    book = {"broke": (5_000.0, 2.0, 100_000.0), "c": (50_000.0, -1.0, 95_000.0)}  # 180,000 wanted, 90,000 there
    got = _engine("{venue: binance, insurance_fund: 0, auto_deleverage: true}", book).cascade("risk_off", 0.1)
    fund = got["insurance_fund"]
    assert fund["adl_closed_notional_usd"] == pytest.approx(90_000) and fund["deleveraged_accounts"] == 1
    assert got["net_sold"] == {"BTC": pytest.approx(90_000)}  # the rest went to the books


def _config(rich_config, fund, rule):
    return rich_config.model_copy(update={"liquidation": rich_config.liquidation.model_copy(
        update={"insurance_fund": fund, "auto_deleverage": True, "adl": rule})})


@pytest.mark.parametrize("seed,fund,rule", [(7, 0.0, "binance"), (8, 2e5, "binance"), (9, 1e5, "hyperliquid")])
def test_auto_deleveraging_matches_the_reference(rich_config, seed, fund, rule):
    cfg = _config(rich_config, fund, rule)
    events = population(seed, 3000)
    engine = run_engine(cfg, events)
    market, accounts, t = run_reference(cfg, events)
    got = engine.cascade("risk_off", 0.3)
    want = ref.cascade(market, accounts, t, "risk_off", 0.3)
    ledger, book = got["insurance_fund"], want["fund"]
    assert ledger["deleveraged_accounts"] == book["deleveraged"] > 0  # the test exercises ADL
    assert ledger["round_deleveraged_accounts"] == book["round_deleveraged"]
    assert close(ledger["adl_closed_notional_usd"], book["adl_closed"])
    assert all(close(a, b) for a, b in zip(ledger["round_adl_closed_notional_usd"], book["round_adl_closed"]))
    assert (got["rounds"], got["liquidated_accounts"], got["runaway"]) == \
        (want["rounds"], want["liquidated_accounts"], want["runaway"])
    assert close(got["liquidated_notional"], want["liquidated_notional"], rel=1e-9)
    for asset, v in want["net_sold"].items():
        assert close(got["net_sold"].get(asset, 0.0), v, rel=1e-9, abs_=1e-4), asset
    for mine, theirs in (("drawdown_usd", "drawdown"), ("uncovered_usd", "uncovered"), ("end_usd", "fund_end")):
        assert close(ledger[mine], book[theirs]), mine
    assert close(got["deficit_usd"], book["deficit"])
