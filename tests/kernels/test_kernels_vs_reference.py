"""The numba kernels against the plain-Python reference (tests/reference.py) on seeded random populations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tests import reference as ref
from tests.conftest import close, run_engine, run_reference
from tests.populations import population

SEEDS = [1, 2, 3]


@pytest.fixture(scope="module", params=SEEDS)
def world(request, rich_config):
    events = population(request.param, 3000)
    engine = run_engine(rich_config, events)
    market, accounts, t = run_reference(rich_config, events)
    return rich_config, engine, market, accounts, t


def test_index_and_marks_match(world):
    cfg, engine, market, _, t = world
    pv = engine.prices()
    index, marks = market.prices(t)
    lay = engine.layout
    checked = 0
    for asset, value in index.items():
        assert close(pv.index[lay.asset_id[asset]], value), (asset, pv.index[lay.asset_id[asset]], value)
        checked += not math.isnan(value)
    for name, value in marks.items():
        assert close(pv.mark[lay.instrument_id[name]], value), (name, pv.mark[lay.instrument_id[name]], value)
    assert checked >= 4  # the population prices most assets


def test_source_status_matches(world):
    cfg, engine, market, _, t = world
    _, _, detail = market.compute_index(t, market.mids(), market.index)
    names = {0: "used", 1: "stale", 2: "deviation", 3: "missing"}
    statuses = {names[int(s)] for s in engine.market.source_status}
    for k, (asset, source) in enumerate(engine.layout.constituents):
        assert names[int(engine.market.source_status[k])] == detail[(asset, source)][1], (asset, source)
    assert {"used", "deviation"} <= statuses or {"used", "stale"} <= statuses


def test_health_matches(world):
    cfg, engine, market, accounts, t = world
    index, marks = market.prices(t)
    rows = {r["account"]: r for r in engine.health_rows()}
    assert len(rows) == len(accounts)
    liquidatable = 0
    for aid, acct in accounts.items():
        want = ref.health_row(cfg, acct, index, marks)
        got = rows[aid]
        for f in ("equity", "maintenance", "health"):
            assert close(got[f], want[f]), (aid, f, got[f], want[f])
        assert got["liquidatable"] == want["liquidatable"], aid
        liquidatable += want["liquidatable"]
    assert 0 < liquidatable < len(accounts)  # the population straddles the boundary


def test_liquidation_severity_matches(world):
    cfg, engine, market, accounts, t = world
    rows = {r["account"]: r for r in engine.health_rows()}
    sample = sorted(accounts)[:400]
    found = 0
    for aid in sample:
        want = ref.liquidation_severity(market, accounts[aid], t, cfg.stress.primary_scenario)
        got = rows[aid]["liquidation_severity"]
        assert (got is None) == (want is None), (aid, got, want)
        if want is not None:
            assert abs(got - want) <= 2e-6, (aid, got, want)
            found += 0 < want
    assert found > 10


@pytest.mark.parametrize("scenario,severity", [("risk_off", 0.0), ("risk_off", 0.1), ("risk_off", 0.3),
                                               ("squeeze", 0.2)])
def test_cascade_matches(world, scenario, severity):
    cfg, engine, market, accounts, t = world
    got = engine.cascade(scenario, severity)
    want = ref.cascade(market, accounts, t, scenario, severity)
    for f in ("rounds", "liquidated_accounts", "runaway"):
        assert got[f] == want[f], (f, got[f], want[f])
    for f in ("liquidated_notional", "amplification"):
        assert close(got[f], want[f]), (f, got[f], want[f])
    assert set(got["net_sold"]) == set(want["net_sold"])
    for a, v in want["net_sold"].items():
        assert close(got["net_sold"][a], v), a
    for a, v in want["final_index"].items():
        assert close(got["final_index"][a], v), a
    for k, v in want["final_prices"].items():
        assert close(got["final_prices"][k], v), k
    if severity > 0 and scenario == "risk_off":
        assert got["liquidated_accounts"] > 0


def test_replaced_and_closed_snapshots_match_reference(rich_config):
    """Snapshots replace earlier ones and closes remove accounts; the pools' garbage (and its compaction) never
    leaks into the numbers."""
    rng = np.random.default_rng(11)
    events = population(5, 1500)
    market = [e for e in events if e["type"] != "account"]
    accts = [e for e in events if e["type"] == "account"]
    t = market[-1]["ts"]
    stream = list(accts)
    for round_ in range(3):  # every account re-sent with another account's book, some closed
        for i in rng.permutation(len(accts))[:900]:
            donor = accts[int(rng.integers(len(accts)))]
            stream.append({**donor, "account": accts[i]["account"], "ts": t})
        for i in rng.permutation(len(accts))[:100]:
            stream.append({"type": "account", "account": accts[i]["account"], "ts": t, "closed": True})
    engine = run_engine(rich_config, market + stream)
    ref_market, ref_accounts, _ = run_reference(rich_config, market + stream)
    index, marks = ref_market.prices(t)
    rows = {r["account"]: r for r in engine.health_rows()}
    assert set(rows) == set(ref_accounts) and len(rows) < len(accts)
    for aid, acct in ref_accounts.items():
        want = ref.health_row(rich_config, acct, index, marks)
        for f in ("equity", "maintenance", "health"):
            assert close(rows[aid][f], want[f]), (aid, f)
    assert engine.accounts.pos.used < 3 * engine.accounts.pos.live + 1024  # compaction ran


def test_exposure_summary_matches(world):
    """What the alerts read across the accounts (liquidatable, margin cluster, total notional, collateral per
    asset), summed account by account from the reference's health rows."""
    from liqwatch.kernels.health import exposure_summary

    cfg, engine, market, accounts, t = world
    index, marks = market.prices(t)
    want = {"liquidatable": 0.0, "cluster": 0.0, "total": 0.0}
    by_asset: dict[str, float] = {}
    for acct in accounts.values():
        row = ref.health_row(cfg, acct, index, marks)
        notional = sum(abs(p["qty"]) * marks[p["instrument"]] for p in acct.get("positions", []))
        for asset, qty in acct.get("collateral", {}).items():
            v = qty * ref.price(cfg, asset, index)
            notional += v
            by_asset[asset] = by_asset.get(asset, 0.0) + v
        want["total"] += notional
        if row["liquidatable"]:
            want["liquidatable"] += notional
        elif row["health"] is not None and 1.0 <= row["health"] < 1.2:
            want["cluster"] += notional
    pv = engine.prices()
    lay = engine.layout
    view = engine.accounts.view()
    n = view.active.shape[0]
    got_by_asset = np.zeros(len(lay.assets))
    liq, cluster, total = exposure_summary(pv.index, pv.mark, view, lay.risk_params, 1.2, got_by_asset,
                                           np.empty(n), np.empty(n))
    assert 0 < want["cluster"] < want["total"] and 0 < want["liquidatable"] < want["total"]
    for name, got in (("liquidatable", liq), ("cluster", cluster), ("total", total)):
        assert math.isclose(got, want[name], rel_tol=1e-9), (name, got, want[name])
    for asset, v in by_asset.items():
        assert math.isclose(got_by_asset[lay.asset_id[asset]], v, rel_tol=1e-9, abs_tol=1e-6), asset


@pytest.mark.parametrize("fund", [0.0, 2e6, 1e12])
def test_insurance_fund_matches(rich_config, fund):
    # exhausted at once, drawn down over the rounds, never touched: the kernels' ledger equals the reference's
    cfg = rich_config.model_copy(update={"liquidation": rich_config.liquidation.model_copy(
        update={"insurance_fund": fund})})
    events = population(7, 3000)
    engine = run_engine(cfg, events)
    market, accounts, t = run_reference(cfg, events)
    got = engine.cascade("risk_off", 0.3)
    want = ref.cascade(market, accounts, t, "risk_off", 0.3)
    assert got["rounds"] == want["rounds"] > 1
    ledger, book = got["insurance_fund"], want["fund"]
    assert close(got["fees_paid_usd"], book["fees"]) and close(got["deficit_usd"], book["deficit"])
    assert book["deficit"] > 0  # bankrupt accounts: the test exercises the deficit side
    for mine, theirs in (("drawdown_usd", "drawdown"), ("uncovered_usd", "uncovered"),
                         ("adl_notional_usd", "adl"), ("end_usd", "fund_end")):
        assert close(ledger[mine], book[theirs]), (mine, ledger[mine], book[theirs])
    for mine, theirs in (("round_drawdown_usd", "round_drawdown"), ("round_uncovered_usd", "round_uncovered"),
                         ("round_adl_notional_usd", "round_adl")):
        assert len(ledger[mine]) == len(book[theirs]) == got["rounds"]
        assert all(close(a, b) for a, b in zip(ledger[mine], book[theirs])), mine
    if fund == 1e12:
        assert ledger["uncovered_usd"] == 0 and ledger["adl_notional_usd"] == 0
    else:
        assert ledger["uncovered_usd"] > 0 and ledger["adl_notional_usd"] > 0
