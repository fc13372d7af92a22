"""Isolated margin: a position with its own margin, liquidated alone (liqwatch.core.state.Accounts rows).

- by hand: the cross row leaves the isolated position out, the isolated row is its margin and that position;
- Binance's isolated-mode liquidation price on the FAQ's worked example, both positions isolated in one account;
- a cascade liquidates an isolated position alone: the account's cross collateral is not sold, and what the
  position loses beyond its margin is a deficit for the insurance fund;
- snapshots that move a position between cross and isolated, close the account, or isolate one instrument twice;
- against the plain-Python reference (tests/reference.py `margin_units`) on random books with isolated positions:
  health of every margin account, liquidation prices, cascades; sharded = single process.
"""

from __future__ import annotations

import json

import pytest

from liqwatch.core.state import Accounts
from liqwatch.events import BadEvent, decode
from liqwatch.kernels.cascade import run_cascade
from tests import reference as ref
from tests.conftest import close, run_engine, run_reference
from tests.kernels.test_positions import _prices, _venue_engine
from tests.populations import population

T = 1_700_000_000_000


def account(positions, collateral=None, ts=T, name="a"):
    return {"type": "account", "account": name, "ts": ts, "collateral": collateral or {"USDT": 10_000.0},
            "borrowed": {}, "positions": positions}


def test_the_cross_row_leaves_the_isolated_position_out(small_config):
    ticks = [{"type": "tick", "venue": v, "symbol": s, "ts": T, "bid": 100_000, "ask": 100_000}
             for v, s in (("binance", "BTC/USDT"), ("okx", "BTC/USDT"), ("coinbase", "BTC/USD"))]
    iso = {"instrument": "BTCUSDT-PERP", "qty": 0.5, "entry": 104_000.0, "isolated_margin": 3_000.0}
    e = run_engine(small_config, ticks + [account([iso])])
    rows = {r["isolated"]: r for r in e.health_rows()}
    assert set(rows) == {None, "BTCUSDT-PERP"} and {r["account"] for r in rows.values()} == {"a"}
    # cross: 10,000 USDT and no position
    assert rows[None]["equity"] == pytest.approx(10_000.0) and rows[None]["maintenance"] == 0.0
    # isolated: 3,000 margin + 0.5 × (100,000 − 104,000) = 1,000; maintenance on 50,000 notional by the config's
    # brackets (the same charge a cross position of that size pays)
    cross_twin = run_engine(small_config, ticks + [account([{**iso, "isolated_margin": None}], {"USDT": 3_000.0})])
    twin = cross_twin.health_rows()[0]
    assert rows["BTCUSDT-PERP"]["equity"] == pytest.approx(1_000.0)
    assert twin["maintenance"] > 0 and rows["BTCUSDT-PERP"]["maintenance"] == pytest.approx(twin["maintenance"])
    assert rows["BTCUSDT-PERP"]["health"] == pytest.approx(twin["health"])
    # the position's row in --positions says which margin it is in
    assert [(p["margin"], p["instrument"]) for p in e.position_rows()] == [("isolated", "BTCUSDT-PERP")]


def test_binance_isolated_mode_example():
    # Binance FAQ "How to Calculate Liquidation Price of USDⓈ-M Futures Contracts", isolated mode (TMM = UPNL = 0,
    # WB the position's isolated wallet balance, 1,535,443.01 USDT each): ETHUSDT 1,114.78, BTCUSDT 18,778.73 —
    # here both in one account, beside a cross wallet that does not count for either
    e = _venue_engine({"BTC": 31_967.27, "ETH": 1_335.18}, {"USDT": 5.0},
                      [{"instrument": "BTCUSDT-PERP", "qty": 109.488, "entry": 32_481.98,
                        "isolated_margin": 1_535_443.01},
                       {"instrument": "ETHUSDT-PERP", "qty": 3_683.979, "entry": 1_456.84,
                        "isolated_margin": 1_535_443.01}])
    got = _prices(e)
    assert round(got["ETHUSDT-PERP"][0], 2) == 1_114.78
    assert round(got["BTCUSDT-PERP"][0], 2) == 18_778.73


def test_a_cascade_liquidates_the_isolated_position_alone(rich_config):
    """A 5x isolated BTC long of an account with plenty of cross collateral (BTC among it): a 30% fall takes the
    isolated position — not the account; what it loses beyond its margin is a deficit."""
    cfg = rich_config.model_copy(update={"liquidation": rich_config.liquidation.model_copy(
        update={"insurance_fund": 1e9})})
    evs = [e for e in population(1, 0) if e["type"] != "account"]
    from tests.populations import BASE
    btc = BASE["BTC"]
    iso = {"instrument": "BTCUSDT-PERP", "qty": 2.0, "entry": btc, "isolated_margin": 2.0 * btc / 5}
    evs.append(account([iso], {"USDT": 1e6, "BTC": 1.0}, ts=evs[-1]["ts"]))
    e = run_engine(cfg, evs)
    rows = {r["isolated"]: r for r in e.health_rows()}
    assert not rows[None]["liquidatable"] and not rows["BTCUSDT-PERP"]["liquidatable"]
    got = e.cascade("risk_off", 0.3)
    assert got["liquidated_accounts"] == 1
    # only the position was sold: no BTC collateral, so BTC's net sale is the long's notional alone
    long_notional = got["liquidated_notional"]
    assert close(got["net_sold"]["BTC"], long_notional)
    # 2 BTC bought at ~100k with 40k margin: a 30% fall loses ~60k, ~20k beyond the margin → a deficit
    assert got["deficit_usd"] > 10_000


def test_snapshots_move_positions_between_cross_and_isolated(rich_config):
    lay = run_engine(rich_config, []).layout
    acc = Accounts(lay)
    iso = {"instrument": "BTCUSDT-PERP", "qty": 1.0, "entry": 100_000.0, "isolated_margin": 5_000.0}
    acc.apply(decode(json.dumps(account([iso, {**iso, "instrument": "ETHUSDT-PERP", "qty": 10.0}]))))
    assert acc.n == 3 and acc.active[:3].all()
    assert [acc.isolated_name(r) for r in acc.order()] == [None, "BTCUSDT-PERP", "ETHUSDT-PERP"]
    # BTC back to cross: its isolated row closes, ETH's stays (the same row)
    acc.apply(decode(json.dumps(account([{**iso, "isolated_margin": None},
                                         {**iso, "instrument": "ETHUSDT-PERP", "qty": 10.0}], ts=T + 1))))
    assert list(acc.active[:3]) == [True, False, True] and acc.n == 3
    view = acc.view()
    assert view.pos_count[0] == 1 and view.pos_count[2] == 1
    # closed: every row of the account
    acc.apply(decode(json.dumps({"type": "account", "account": "a", "ts": T + 2, "closed": True})))
    assert not acc.active[:3].any()
    # one instrument isolated twice is a bad snapshot, named
    with pytest.raises(BadEvent, match=r"positions\[1\]\.instrument: a second isolated position"):
        acc.apply(decode(json.dumps(account([iso, iso], ts=T + 3))))
    with pytest.raises(BadEvent, match=r"positions\[0\]\.isolated_margin"):
        decode(json.dumps(account([{**iso, "isolated_margin": -1.0}])))


@pytest.fixture(scope="module", params=[4, 5])
def world(request, rich_config):
    events = population(request.param, 1500, isolated=0.5)
    engine = run_engine(rich_config, events)
    market, accounts, t = run_reference(rich_config, events)
    return rich_config, engine, market, ref.margin_units(rich_config, accounts), t


def test_health_of_every_margin_account_equals_the_reference(world):
    cfg, engine, market, units, t = world
    index, marks = market.prices(t)
    rows = {(r["account"], r["isolated"]): r for r in engine.health_rows()}
    assert set(rows) == set(units) and sum(k[1] is not None for k in units) > 300
    for key, unit in units.items():
        want = ref.health_row(cfg, unit, index, marks)
        for f in ("equity", "maintenance", "health"):
            assert close(rows[key][f], want[f]), (key, f)
        assert rows[key]["liquidatable"] == want["liquidatable"], key


def test_liquidation_prices_equal_the_reference(world):
    cfg, engine, market, units, t = world
    index, marks = market.prices(t)
    got = {}
    for r in engine.position_rows():
        got.setdefault((r["account"], r["instrument"] if r["margin"] == "isolated" else None), []).append(r)
    checked = 0
    for key, unit in sorted(units.items(), key=lambda kv: (kv[0][0], kv[0][1] or ""))[:600]:
        want = ref.position_prices(cfg, unit, index, marks)
        assert len(got.get(key, [])) == len(want), key
        for row, (liq, bank) in zip(got.get(key, []), want):
            for mine, theirs in ((row["liquidation_price"], liq), (row["bankruptcy_price"], bank)):
                assert (mine is None) == (theirs is None), key
                if mine is not None:
                    assert close(mine, theirs, rel=1e-9, abs_=0), key
                    checked += 1
    assert checked > 200


@pytest.mark.parametrize("severity", [0.1, 0.3])
def test_cascade_equals_the_reference(world, severity):
    cfg, engine, market, units, t = world
    got = engine.cascade("risk_off", severity)
    want = ref.cascade(market, units, t, "risk_off", severity)
    for f in ("rounds", "liquidated_accounts", "runaway"):
        assert got[f] == want[f], f
    assert close(got["liquidated_notional"], want["liquidated_notional"])
    for a, v in want["net_sold"].items():
        assert close(got["net_sold"][a], v), a


def test_sharded_equals_single_with_isolated_positions(rich_config):
    evs = population(6, 800, isolated=0.5)
    e = run_engine(rich_config, evs)
    lay = e.layout
    parts = [Accounts(lay) for _ in range(3)]
    for x in evs:
        if x["type"] == "account":
            parts[hash(x["account"]) % 3].apply(decode(json.dumps(x)))
    pv = e.prices()
    args = (float(pv.t), 0.25, lay.scenario_direction("risk_off"), pv.quotes, lay.index_params, lay.mark_params,
            pv.index)
    tail = (lay.risk_params, lay.impact_params, lay.venue_id[rich_config.liquidation.venue],
            rich_config.stress.max_rounds, True, 0.0125, 0.0)
    single = run_cascade(*args, [e.accounts.view()], *tail)
    split = run_cascade(*args, [p.view() for p in parts], *tail)
    assert split.rounds == single.rounds and split.liquidated_accounts == single.liquidated_accounts > 0
    assert close(split.liquidated_notional, single.liquidated_notional, rel=1e-9)
    assert close(split.deficit, single.deficit, rel=1e-9)
