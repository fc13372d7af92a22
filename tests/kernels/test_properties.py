"""Hypothesis properties of the kernels: monotone health, zero-impact cascades, order and shard independence."""

from __future__ import annotations

import json

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from liqwatch.kernels.positions import ADL_BINANCE, ADL_HYPERLIQUID
from liqwatch.kernels.cascade import run_cascade
from liqwatch.kernels.stress import stressed_prices
from liqwatch.config import parse_config
from liqwatch.core.engine import Engine
from liqwatch.events import decode
from liqwatch.core.state import Accounts
from tests.conftest import close, run_engine
from tests.populations import population

FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def stressed(engine: Engine, scenario: str, s: float):
    lay = engine.layout
    pv = engine.prices()
    n_a, n_c = len(lay.assets), len(lay.constituents)
    index, stale = np.empty(n_a), np.empty(n_a, dtype=np.bool_)
    sp, ss = np.empty(n_c), np.empty(n_c, dtype=np.int8)
    mark = np.empty(len(lay.instruments))
    wm, wl = np.empty_like(pv.quotes.mid), np.empty_like(pv.quotes.mid)
    stressed_prices(float(pv.t), s, lay.scenario_direction(scenario), pv.quotes, lay.index_params, lay.mark_params,
                    pv.index, wm, wl, index, stale, sp, ss, mark)
    return index, mark


@FAST
@given(qty=st.floats(0.01, 50), entry=st.floats(50_000, 150_000), usdt=st.floats(1_000, 1e6),
       s1=st.floats(0, 0.5), s2=st.floats(0, 0.5))
def test_equity_and_margin_surplus_of_a_long_fall_as_its_underlying_falls(small_config, qty, entry, usdt, s1, s2):
    from liqwatch.kernels.health import account_numbers

    t = 1_000
    evs = [{"type": "tick", "venue": v, "symbol": sym, "ts": t, "bid": 100_000, "ask": 100_000}
           for v, sym in (("binance", "BTC/USDT"), ("okx", "BTC/USDT"), ("coinbase", "BTC/USD"))]
    evs.append({"type": "account", "account": "a", "ts": t, "collateral": {"USDT": usdt}, "borrowed": {},
                "positions": [{"instrument": "BTCUSDT-PERP", "qty": qty, "entry": entry}]})
    e = run_engine(small_config, evs)
    lo, hi = sorted((s1, s2))
    accounts, risk = e.accounts.view(), e.layout.risk_params
    e_lo, m_lo = account_numbers(0, *stressed(e, "risk_off", lo), accounts, risk)
    e_hi, m_hi = account_numbers(0, *stressed(e, "risk_off", hi), accounts, risk)
    assert e_hi <= e_lo + 1e-9 * abs(e_lo)
    # the margin surplus E − M falls too (every bracket rate < 1), so liquidatable is monotone in the shock;
    # the ratio E / M itself need not fall: M shrinks with the notional
    assert e_hi - m_hi <= e_lo - m_lo + 1e-9 * max(abs(e_lo), 1.0)


def _no_impact(cfg):
    data = cfg.model_dump(mode="json", by_alias=True, exclude_none=True)
    for spec in data["assets"].values():
        spec.pop("impact", None)
    return parse_config(data)


@FAST
@given(seed=st.integers(0, 10_000), s=st.floats(0.0, 0.3))
def test_cascade_without_impact_has_at_most_one_round(rich_config, seed, s):
    cfg = _no_impact(rich_config)
    e = run_engine(cfg, population(seed, 300, steps=12))
    r = e.cascade("risk_off", s)
    assert r["rounds"] <= 1 and r["amplification"] == 1.0 and not r["runaway"]


@FAST
@given(seed=st.integers(0, 10_000), perm_seed=st.integers(0, 10_000), s=st.floats(0.0, 0.3))
def test_results_do_not_depend_on_account_order(rich_config, seed, perm_seed, s):
    evs = population(seed, 300, steps=12)
    market = [x for x in evs if x["type"] != "account"]
    accts = [x for x in evs if x["type"] == "account"]
    shuffled = [accts[i] for i in np.random.default_rng(perm_seed).permutation(len(accts))]
    a, b = run_engine(rich_config, market + accts), run_engine(rich_config, market + shuffled)
    assert a.health_rows() == b.health_rows()
    ra, rb = a.cascade("risk_off", s), b.cascade("risk_off", s)
    for f in ("rounds", "liquidated_accounts", "runaway"):
        assert ra[f] == rb[f]
    assert close(ra["liquidated_notional"], rb["liquidated_notional"], rel=1e-12)


@FAST
@given(seed=st.integers(0, 10_000), shards=st.integers(2, 5), s=st.floats(0.0, 0.3),
       scenario=st.sampled_from(["risk_off", "squeeze"]), partial=st.sampled_from([None, (0.25, 20_000.0)]),
       adl=st.sampled_from([None, ADL_BINANCE, ADL_HYPERLIQUID]))
def test_sharded_cascade_equals_single_run(rich_config, seed, shards, s, scenario, partial, adl):
    evs = population(seed, 400, steps=12)
    e = run_engine(rich_config, evs)
    lay = e.layout
    # split the accounts by hash of id, as Kafka partitions would
    parts = [Accounts(lay) for _ in range(shards)]
    for x in evs:
        if x["type"] == "account":
            parts[hash(x["account"]) % shards].apply(decode(json.dumps(x)))
    pv = e.prices()
    args = (float(pv.t), s, lay.scenario_direction(scenario), pv.quotes, lay.index_params, lay.mark_params, pv.index)
    venue = lay.venue_id[rich_config.liquidation.venue]
    tail = (lay.risk_params, lay.impact_params, venue, rich_config.stress.max_rounds, True, 0.0125, 2e5)
    single = run_cascade(*args, [e.accounts.view()], *tail, partial=partial, adl_rule=adl)
    split = run_cascade(*args, [p.view() for p in parts], *tail, partial=partial, adl_rule=adl)
    # auto-deleveraging ranks the queue over every shard: the same positions taken
    assert split.deleveraged_accounts == single.deleveraged_accounts
    assert close(split.adl_closed_notional, single.adl_closed_notional, rel=1e-9, abs_=1e-6)
    assert split.partial_liquidations == single.partial_liquidations
    assert split.round_partial == single.round_partial
    # the insurance fund's account is summed over shards like the flows
    for f in ("fees", "deficit", "fund_drawdown", "uncovered", "adl_notional", "fund_end"):
        assert close(getattr(split, f), getattr(single, f), rel=1e-9), f
    assert np.allclose(split.round_adl_notional, single.round_adl_notional, rtol=1e-9, atol=1e-6)
    assert split.rounds == single.rounds and split.liquidated_accounts == single.liquidated_accounts
    assert split.runaway == single.runaway
    assert close(split.liquidated_notional, single.liquidated_notional, rel=1e-9)
    assert np.allclose(split.final_index, single.final_index, rtol=1e-9, equal_nan=True)
    assert np.allclose(split.net_sold, single.net_sold, rtol=1e-9, atol=1e-6)
