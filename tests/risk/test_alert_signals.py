"""The alert signals on a market or an exposure, one small case each: who venue_divergence blames, which
collateral counts for concentration, when a slow reference is stale, what cascade_risk says."""

from __future__ import annotations

import yaml

from liqwatch.config import parse_config
from liqwatch.risk.alerts import AlertEngine
from liqwatch.risk.stress import CriticalMove, Exposure
from liqwatch.sinks.metrics import Metrics
from tests.conftest import DATA, run_engine

T = 1_000_000


def tick(venue, symbol, mid, ts=T):
    return {"type": "tick", "venue": venue, "symbol": symbol, "ts": ts, "bid": mid, "ask": mid}


def usde_reference(ts=T):
    return {"type": "reference", "asset": "USDe", "ts": ts, "in": "USD", "rate": 1.0}


def config(edit=None):
    data = yaml.safe_load((DATA / "small.yaml").read_text())
    data["assets"]["USDe"] = {"index": {"constituents": [{"source": "binance:USDe/USDT", "weight": 0.5},
                                                         {"source": "redemption:USDe", "in": "USD", "weight": 0.5}]},
                              "books": ["uniswap:USDe/USDT"]}
    data["alerts"] = {"venue_divergence": {"warning": 0.03, "critical": 0.10, "for_s": 0}}  # one reading decides
    if edit:
        edit(data)
    return parse_config(data)


def alerts_of(cfg, events, t=T):
    engine = run_engine(cfg, events)
    return AlertEngine(cfg.alerts, cfg.config_id, Metrics(), cfg.settlement).market(engine, t)


def test_two_books_only_the_one_off_the_redemption_value_is_blamed():
    # Binance 0.89, the pool 0.9998, redemption 1.00: compared with "the other book" alone both are ≥ 11% off
    got = alerts_of(config(), [usde_reference(), tick("binance", "USDe/USDT", 0.89),
                               tick("uniswap", "USDe/USDT", 0.9998)])
    divergence = {a["subject"]: a["severity"] for a in got if a["kind"] == "venue_divergence"}
    assert divergence == {"binance:USDe/USDT": "critical"}


def test_two_books_without_a_reference_are_both_off_each_other():
    cfg = config()
    got = alerts_of(cfg, [tick("binance", "USDe/USDT", 0.90), tick("uniswap", "USDe/USDT", 0.9998)])
    assert {a["subject"] for a in got if a["kind"] == "venue_divergence"} == {"binance:USDe/USDT",
                                                                              "uniswap:USDe/USDT"}


def test_books_that_fall_together_are_not_a_divergence():
    got = alerts_of(config(), [usde_reference(), tick("binance", "USDe/USDT", 0.80), tick("uniswap", "USDe/USDT", 0.81)])
    assert not [a for a in got if a["kind"] == "venue_divergence"]


def test_a_reference_published_an_hour_ago_is_not_a_stale_source():
    cfg = config()
    hour = 3_600_000
    clock = [tick("binance", "USDe/USDT", 1.0, ts) for ts in range(T, T + hour + 1, 60_000)]
    got = alerts_of(cfg, [usde_reference(), *clock], T + hour)
    assert not [a for a in got if a["kind"] == "stale_source"]


def exposure(collateral: dict[str, float]) -> Exposure:
    return Exposure(0.0, 0.0, collateral, sum(collateral.values()))


def concentration(cfg, collateral):
    e = AlertEngine(cfg.alerts, cfg.config_id, Metrics(), cfg.settlement)
    return {a["subject"]: a["severity"] for a in e.accounts(exposure(collateral), T)
            if a["kind"] == "collateral_concentration"}


def test_collateral_in_the_settlement_asset_is_not_a_concentration():
    assert concentration(config(), {"USDT": 9e9}) == {}
    # of the rest, WBETH is 75%: critical, whatever the USDT beside it
    assert concentration(config(), {"USDT": 9e9, "WBETH": 3e8, "BTC": 1e8}) == {"WBETH": "critical"}


def test_assets_configured_as_cash_are_left_out_too():
    cfg = config(lambda d: d["alerts"].update(collateral_concentration={"warning": 0.4, "critical": 0.6,
                                                                        "cash": ["USDe"]}))
    assert concentration(cfg, {"USDe": 9e9, "BTC": 5e8, "ETH": 5e8}) == {"BTC": "warning", "ETH": "warning"}


def test_cascade_risk_says_move_notional_share_and_amplification():
    cfg = config()
    e = AlertEngine(cfg.alerts, cfg.config_id, Metrics(), cfg.settlement)
    cascade = {"liquidated_notional": 2.5e9, "rounds": 1, "amplification": 1.0, "runaway": False}
    [ev] = e.cascades({"risk_off": CriticalMove(0.0125, cascade, 1e10)}, T)
    assert (ev["severity"], ev["value"]) == ("critical", 0.0125)
    assert ev["summary"] == ("a 1.2% risk_off move would liquidate $2,500M (25.0% of all accounts' notional): "
                             "1 round, amplification 1.0×")


def _fund_result(severity: float, uncovered: float, by_instrument: dict[str, float]) -> dict:
    return {"scenario": "risk_off", "severity": severity,
            "insurance_fund": {"uncovered_usd": uncovered, "adl_notional_by_instrument_usd": by_instrument}}


def test_insurance_fund_and_adl_risk_take_the_smallest_move_that_exhausts_the_fund():
    from liqwatch.config import AlertsSpec
    from liqwatch.risk.stress import solvency

    results = [_fund_result(0.02, 0.0, {}), _fund_result(0.12, 5e7, {"BTCUSDT-PERP": 1e8, "ETHUSDT-PERP": 2e7}),
               _fund_result(0.04, 1e6, {"ETHUSDT-PERP": 3e6}), _fund_result(0.04, 0.0, {})]
    results[3]["scenario"] = "squeeze"  # another scenario: not read
    s = solvency("risk_off", results, ["BTCUSDT-PERP", "ETHUSDT-PERP", "SOLUSDT-PERP"])
    assert s.fund_exhausted == 0.04 and s.tested == [0.02, 0.04, 0.12]
    assert s.adl_starts == {"BTCUSDT-PERP": 0.12, "ETHUSDT-PERP": 0.04, "SOLUSDT-PERP": 1.0}
    assert solvency("risk_off", [{"scenario": "risk_off", "severity": 0.1, "insurance_fund": None}], []) is None
    metrics = Metrics()
    events = AlertEngine(AlertsSpec(), "cfg", metrics, "USDT").cascades({}, T, s)
    got = {(e["kind"], e["subject"]): (e["severity"], e["summary"]) for e in events}
    # defaults: warning at a 10% move, critical at 5%; lower is worse
    assert got[("insurance_fund", "risk_off")] == ("critical", "a 4.0% risk_off move would exhaust the insurance "
                                                   "fund: the rest of the bankrupt accounts' deficit goes to "
                                                   "auto-deleveraging")
    assert got[("adl_risk", "ETHUSDT-PERP")][0] == "critical"
    assert ("adl_risk", "BTCUSDT-PERP") not in got and ("adl_risk", "SOLUSDT-PERP") not in got  # 12%, none
    page = metrics.exposition().decode() if isinstance(metrics.exposition(), bytes) else metrics.exposition()
    assert 'liqwatch_adl_move_ratio{instrument="SOLUSDT-PERP"} 1.0' in page
    assert 'liqwatch_insurance_fund_exhausted_move_ratio{scenario="risk_off"} 0.04' in page
