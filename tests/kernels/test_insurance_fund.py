"""The insurance fund in the cascade, checked by hand on two accounts (liqwatch.kernels.cascade: _losses and
the fund's account in cascade_rounds).

BTC falls 10% to 90,000 (no impact: the cascade stops after round 1). Both accounts are long 1 BTCUSDT-PERP
entered at 100,000 (maintenance 1%, so M = 900 at 90,000):
- `broke` holds 5,000 USDT: E = 5,000 − 10,000 = −5,000: bankrupt, a deficit of 5,000 on a notional of 90,000;
- `thin` holds 10,500 USDT: E = 500 < M: liquidated, and its fee, 1% × 90,000 = 900, is paid out of the 500 left.
"""

from __future__ import annotations

import pytest

from tests.conftest import one_book_config, run_engine


def _cascade(fund: str, accounts: dict[str, float]) -> dict:
    cfg = one_book_config(f"{{venue: binance, fee_rate: 0.01, insurance_fund: {fund}}}")
    t = 1_700_000_000_000
    evs = [{"type": "tick", "venue": "binance", "symbol": "BTC/USDT", "ts": t, "bid": 100_000, "ask": 100_000}]
    for name, usdt in accounts.items():
        evs.append({"type": "account", "account": name, "ts": t, "collateral": {"USDT": usdt}, "borrowed": {},
                    "positions": [{"instrument": "BTCUSDT-PERP", "qty": 1.0, "entry": 100_000}]})
    return run_engine(cfg, evs).cascade("risk_off", 0.1)


BOTH = {"broke": 5_000.0, "thin": 10_500.0}


def test_the_fund_covers():
    got = _cascade("10000", BOTH)
    assert got["liquidated_accounts"] == 2 and got["rounds"] == 1
    assert got["fees_paid_usd"] == pytest.approx(500)      # thin's fee, capped by what it had left
    assert got["deficit_usd"] == pytest.approx(5_000)      # broke's
    fund = got["insurance_fund"]
    assert fund["start_usd"] == 10_000
    assert fund["drawdown_usd"] == pytest.approx(5_000)
    assert fund["end_usd"] == pytest.approx(10_000 + 500 - 5_000)
    assert fund["uncovered_usd"] == 0 and fund["adl_notional_usd"] == 0


def test_the_fund_exhausted_leaves_the_rest_to_auto_deleveraging():
    got = _cascade("1000", BOTH)
    fund = got["insurance_fund"]
    assert fund["drawdown_usd"] == pytest.approx(1_500)    # all it had, with the round's fee
    assert fund["end_usd"] == 0
    assert fund["uncovered_usd"] == pytest.approx(3_500)
    # 3,500 of broke's 5,000 uncovered: that share of its 90,000 position would be auto-deleveraged
    assert fund["adl_notional_usd"] == pytest.approx(90_000 * 3_500 / 5_000)
    assert fund["round_adl_notional_usd"] == [pytest.approx(63_000)]


def test_the_fee_comes_out_of_what_is_left_and_without_a_fund_nothing_is_accounted():
    got = _cascade("0", {"rich": 10_950.0})  # E = 950 > M = 900: not liquidatable at 90,000
    assert got["liquidated_accounts"] == 0
    got = _cascade("0", {"ok": 10_800.0})    # E = 800: liquidated, the fee 900 capped at 800
    assert got["fees_paid_usd"] == pytest.approx(800) and got["insurance_fund"]["end_usd"] == pytest.approx(800)
    got = _cascade("null", BOTH)
    assert got["insurance_fund"] is None and got["deficit_usd"] == pytest.approx(5_000)
