"""Partial liquidation in the cascade (liquidation.partial; liqwatch.kernels.cascade: liquidate_round,
_close_fraction): checked by hand on one account, and against the plain-Python reference on seeded books.

By hand: BTC falls 10% to 90,000 and stays there (no impact model: nothing moves after the shock). `big` is long
10 BTCUSDT-PERP entered at 100,000 with 105,000 USDT (maintenance 1%, fee 1%), partial 20% above $500,000:
- round 1: notional 900,000, E = 105,000 − 100,000 = 5,000 < M = 9,000 → 2 BTC closed (PnL −20,000 into cash, fee
  1% × 180,000 = 1,800): E = 3,200, M = 7,200 with 8 BTC;
- round 2: 720,000 > 500,000 → 1.6 BTC (PnL −16,000, fee 1,440): E = 1,760, M = 5,760 with 6.4 BTC;
- round 3: 576,000 → 1.28 BTC (PnL −12,800, fee 1,152): E = 608, M = 4,608 with 5.12 BTC;
- round 4: 460,800 ≤ 500,000 → closed in full, its fee 4,608 capped at the 608 it has left.
Fees 1,800 + 1,440 + 1,152 + 608 = 5,000: every dollar of its equity at 90,000; 900,000 of notional closed in all.
"""

from __future__ import annotations

import pytest

from tests import reference as ref
from tests.conftest import close, one_book_config, run_engine, run_reference
from tests.populations import population

PARTIAL = "{venue: binance, fee_rate: 0.01, insurance_fund: 0, partial: {fraction: 0.2, above_usd: 500000}}"
T = 1_700_000_000_000


def _cascade(liquidation: str, accounts: dict[str, tuple[float, float]]) -> dict:
    """accounts: name → (USDT held, BTC long)."""
    evs = [{"type": "tick", "venue": "binance", "symbol": "BTC/USDT", "ts": T, "bid": 100_000, "ask": 100_000}]
    for name, (usdt, qty) in accounts.items():
        evs.append({"type": "account", "account": name, "ts": T, "collateral": {"USDT": usdt}, "borrowed": {},
                    "positions": [{"instrument": "BTCUSDT-PERP", "qty": qty, "entry": 100_000}]})
    return run_engine(one_book_config(liquidation), evs).cascade("risk_off", 0.1)


def test_a_large_account_is_liquidated_a_fifth_at_a_time_until_it_is_small():
    got = _cascade(PARTIAL, {"big": (105_000.0, 10.0)})
    assert got["rounds"] == 4
    assert got["round_partial"] == [1, 1, 1, 0] and got["partial_liquidations"] == 3
    assert got["round_accounts"] == [0, 0, 0, 1] and got["liquidated_accounts"] == 1
    assert got["round_notional"] == [pytest.approx(x) for x in (180_000, 144_000, 115_200, 460_800)]
    assert got["liquidated_notional"] == pytest.approx(900_000)
    assert got["net_sold"] == {"BTC": pytest.approx(900_000)}
    assert got["fees_paid_usd"] == pytest.approx(5_000)
    assert got["insurance_fund"]["end_usd"] == pytest.approx(5_000) and got["deficit_usd"] == 0
    # closed in full, it pays the fee once, capped by the same 5,000
    whole = _cascade("{venue: binance, fee_rate: 0.01, insurance_fund: 0}", {"big": (105_000.0, 10.0)})
    assert (whole["rounds"], whole["partial_liquidations"], whole["liquidated_accounts"]) == (1, 0, 1)
    assert whole["fees_paid_usd"] == pytest.approx(5_000)


def test_small_and_bankrupt_accounts_are_closed_in_full():
    got = _cascade(PARTIAL, {"small": (10_500.0, 1.0),        # 90,000 of notional: under the threshold
                             "broke": (50_000.0, 10.0)})      # E = −50,000: bankrupt, whatever its size
    assert got["rounds"] == 1 and got["partial_liquidations"] == 0 and got["liquidated_accounts"] == 2
    assert got["deficit_usd"] == pytest.approx(50_000)
    assert got["insurance_fund"]["uncovered_usd"] == pytest.approx(50_000 - 500)  # small's fee, 500 it had left


def _with(cfg, partial):
    return cfg.model_copy(update={"liquidation": cfg.liquidation.model_copy(update={"partial": partial})})


@pytest.mark.parametrize("seed,fraction,above", [(7, 0.25, 20_000.0), (8, 0.5, 0.0), (9, 0.1, 100_000.0)])
def test_partial_liquidation_matches_the_reference(rich_config, seed, fraction, above):
    from liqwatch.config import PartialSpec

    cfg = _with(rich_config, PartialSpec(fraction=fraction, above_usd=above))
    events = population(seed, 3000)
    engine = run_engine(cfg, events)
    market, accounts, t = run_reference(cfg, events)
    got = engine.cascade("risk_off", 0.3)
    want = ref.cascade(market, accounts, t, "risk_off", 0.3)
    assert got["partial_liquidations"] == want["partial_liquidations"] > 0  # the test exercises partial steps
    assert (got["rounds"], got["liquidated_accounts"], got["runaway"]) == \
        (want["rounds"], want["liquidated_accounts"], want["runaway"])
    assert close(got["liquidated_notional"], want["liquidated_notional"], rel=1e-9)
    for asset, v in want["net_sold"].items():
        assert close(got["net_sold"].get(asset, 0.0), v, rel=1e-9, abs_=1e-4), asset
    ledger, book = got["insurance_fund"], want["fund"]
    assert close(got["fees_paid_usd"], book["fees"]) and close(got["deficit_usd"], book["deficit"])
    assert close(ledger["end_usd"], book["fund_end"]) and close(ledger["adl_notional_usd"], book["adl"])
    # and it changes the cascade: the same books closed in full
    whole = run_engine(_with(rich_config, None), events).cascade("risk_off", 0.3)
    assert whole["partial_liquidations"] == 0
    assert (whole["rounds"], whole["liquidated_notional"]) != (got["rounds"], got["liquidated_notional"])
