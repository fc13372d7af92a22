"""The liquidation map (liqwatch.kernels.liqmap) agrees with the cascade: the notional it puts at a price is what
round 1 of a shock to that price liquidates (no impact), on random books; and on a hand-made book each account
lands in the cell of its liquidation price."""

from __future__ import annotations

import numpy as np
import pytest

from liqwatch.kernels.cascade import run_cascade
from tests.conftest import one_book_config, run_engine
from tests.populations import population


def _round_one(engine, asset: str, factor: float) -> tuple[int, float]:
    lay = engine.layout
    pv = engine.prices()
    direction = np.zeros(len(lay.assets))
    direction[lay.asset_id[asset]] = 1.0
    res = run_cascade(float(pv.t), factor - 1.0, direction, pv.quotes, lay.index_params, lay.mark_params, pv.index,
                      [engine.accounts.view()], lay.risk_params, lay.impact_params,
                      lay.venue_id[engine.cfg.liquidation.venue], 1)
    return (res.round_accounts[0], res.round_notional[0]) if res.round_accounts else (0, 0.0)


@pytest.mark.parametrize("seed, asset", [(1, "BTC"), (2, "ETH"), (3, "WBETH")])
def test_the_map_is_round_one_of_the_shock_to_each_level(rich_config, seed, asset):
    e = run_engine(rich_config, population(seed, 300))
    factors = np.linspace(0.6, 1.4, 17)
    rows = e.liquidation_map(asset, factors)
    assert [r["move"] for r in rows] == pytest.approx(list(np.unique(np.append(factors, 1.0)) - 1.0))
    changed = set()
    for r in rows:
        accounts, notional = _round_one(e, asset, 1.0 + r["move"])
        assert r["accounts"] == accounts, r
        assert r["notional_usd"] == pytest.approx(notional, rel=1e-9, abs=1e-6), r
        assert r["notional_usd"] == pytest.approx(r["long_usd"] + r["short_usd"] + r["collateral_usd"], rel=1e-12)
        changed.add(r["accounts"])
    assert len(changed) > 3  # the levels differ: the test compares more than one number



def test_each_account_lands_in_the_cell_of_its_liquidation_price():
    cfg = one_book_config("{venue: binance, fee_rate: 0.0125}")
    t = 1_700_000_000_000
    evs = [{"type": "tick", "venue": "binance", "symbol": "BTC/USDT", "ts": t, "bid": 100_000, "ask": 100_000}]
    # longs of 1 BTC with more or less USDT and a 2 BTC short: their liquidation prices (the position kernel) and
    # the map's cells, 5% apart, must agree: each account adds its notional to the first level past its price
    for k, usdt in enumerate((2_000, 12_000, 26_000, 300_000)):
        evs.append({"type": "account", "account": f"long{k}", "ts": t, "collateral": {"USDT": usdt},
                    "borrowed": {}, "positions": [{"instrument": "BTCUSDT-PERP", "qty": 1.0, "entry": 100_000}]})
    evs.append({"type": "account", "account": "short", "ts": t, "collateral": {"USDT": 15_000}, "borrowed": {},
                "positions": [{"instrument": "BTCUSDT-PERP", "qty": -2.0, "entry": 100_000}]})
    e = run_engine(cfg, evs)
    liq = {r["account"]: r["liquidation_price"] for r in e.position_rows()}
    assert liq["long3"] is None  # 3x overcollateralised: never
    factors = np.round(np.arange(0.5, 1.5001, 0.05), 10)
    rows = {round(r["move"], 6): r for r in e.liquidation_map("BTC", factors)}
    for name, price in liq.items():
        if price is None:
            continue
        f = price / 100_000
        # the cell: the first level at or beyond the liquidation price, going away from the current price
        if f < 1:
            cell = max(m for m in rows if 1 + m <= f)
        else:
            cell = min(m for m in rows if 1 + m >= f)
        qty = 2.0 if name == "short" else 1.0
        assert rows[cell]["added_usd"] >= qty * 100_000 * (1 + cell) * (1 - 1e-12), (name, price, cell)
    total_added = sum(r["added_usd"] for r in rows.values())
    want = sum((2.0 if n == "short" else 1.0) * 100_000 * (1 + max(m for m in rows if 1 + m <= p / 1e5))
               if p < 1e5 else 2.0 * 100_000 * (1 + min(m for m in rows if 1 + m >= p / 1e5))
               for n, p in liq.items() if p is not None)
    assert total_added == pytest.approx(want, rel=1e-12)
