"""Every class of config error names its field path."""

from __future__ import annotations

import copy

import pytest
import yaml

from liqwatch.config import ConfigError, load_config, parse_config
from tests.conftest import DATA

BASE = yaml.safe_load((DATA / "small.yaml").read_text())


def problems(mutate) -> list[str]:
    data = copy.deepcopy(BASE)
    mutate(data)
    with pytest.raises(ConfigError) as e:
        parse_config(data)
    return e.value.problems


def test_valid_config_loads_with_stable_id():
    a = parse_config(copy.deepcopy(BASE))
    b = parse_config(copy.deepcopy(BASE))
    assert a.config_id == b.config_id and len(a.config_id) == 12
    changed = copy.deepcopy(BASE)
    changed["liquidation"]["fee_rate"] = 0.01
    assert parse_config(changed).config_id != a.config_id


@pytest.mark.parametrize("mutate,expected", [
    (lambda d: d["assets"]["WBETH"]["index"]["constituents"][1].update(weight=0),
     "assets.WBETH.index.constituents[1].weight: must be > 0"),
    (lambda d: d["instruments"]["BTCUSDT-PERP"].update(underlying="BTX"),
     "instruments.BTCUSDT-PERP.underlying: unknown asset 'BTX'"),
    (lambda d: d["assets"]["BTC"].update(haircuts=[]),
     "assets.BTC.haircuts: unknown key"),
    (lambda d: d.update(settlment="USDT"), "settlment: unknown key"),
    (lambda d: d["assets"]["BTC"].update(haircut=[{"upto": 100, "rate": 0.1}, {"upto": 50, "rate": 0.2},
                                                  {"upto": None, "rate": 0.3}]),
     "assets.BTC.haircut: brackets out of order"),
    (lambda d: d["assets"]["BTC"].update(haircut=[{"upto": 100, "rate": 0.1}]),
     "assets.BTC.haircut: the last bracket must have upto: null"),
    (lambda d: d["instruments"]["BTCUSDT-PERP"].update(maintenance=[{"upto": None, "rate": 0.1},
                                                                   {"upto": None, "rate": 0.2}]),
     "instruments.BTCUSDT-PERP.maintenance: bracket [0] has upto: null but is not the last"),
    (lambda d: d["assets"]["BTC"]["haircut"][0].update(rate=1.5), "assets.BTC.haircut[0].rate: must be <= 1"),
    (lambda d: d["assets"]["BTC"]["index"].update(method="average"), "assets.BTC.index.method:"),
    (lambda d: d["assets"]["BTC"]["index"]["constituents"][0].update(source="binance-BTC"),
     "assets.BTC.index.constituents[0].source: 'binance-BTC' is not of the form"),
    (lambda d: d["assets"]["BTC"]["index"]["constituents"][0].update(source="binance:ETH/USDT"),
     "assets.BTC.index.constituents[0].source: 'binance:ETH/USDT' prices ETH, not BTC"),
    (lambda d: d["assets"]["BTC"]["index"]["constituents"][0].update(source="binance:BTC/EUR"),
     "assets.BTC.index.constituents[0].source: unknown quote asset 'EUR'"),
    (lambda d: d["assets"]["WBETH"]["index"]["constituents"][1].pop("in"),
     "assets.WBETH.index.constituents[1].in: required for a redemption source"),
    (lambda d: d["assets"]["BTC"]["index"].update(floor=200, cap=100), "assets.BTC.index.floor: 200.0 is above cap"),
    (lambda d: d["assets"]["BTC"].update(impact={"model": "linear"}),
     "assets.BTC.impact.depth_usd_per_pct: required"),
    (lambda d: d["assets"]["BTC"].update(impact={"model": "cubic"}), "assets.BTC.impact:"),
    (lambda d: d["assets"].update(DOGE={"haircut": []}), "assets.DOGE.index: required"),
    (lambda d: d["borrow"].update(XRP={"maintenance_rate": 0.1}), "borrow.XRP: unknown asset 'XRP'"),
    (lambda d: d["stress"]["scenarios"]["risk_off"].update(DOGE=-1), "stress.scenarios.risk_off.DOGE: unknown asset"),
    (lambda d: d["stress"].update(severities=[0.1, 0.05]), "stress.severities: severities must be strictly ascending"),
    (lambda d: d["stress"].update(primary="nope"), "stress.primary: unknown scenario 'nope'"),
    (lambda d: d.pop("liquidation"), "liquidation: required"),
    (lambda d: d["assets"]["BTC"]["index"].update(max_age_ms="soon"), "assets.BTC.index.max_age_ms:"),
    # settlement must be priced: an asset of the config or USD, USDT, USDC
    (lambda d: d.update(settlement="EUR"), "settlement: unknown asset 'EUR'"),
    # forced sales go to the liquidation venue's books: a venue no constituent or mark source names moves nothing
    (lambda d: d["liquidation"].update(venue="kraken"), "liquidation.venue: unknown venue 'kraken'"),
    # numbers are strict: YAML `true` is not 1, quoted or YAML-1.1 "5e7" is text, 10000.5 ms is not an int
    (lambda d: d["assets"]["BTC"]["index"].update(max_age_ms=True),
     "assets.BTC.index.max_age_ms: must be a whole number, not a boolean"),
    (lambda d: d["assets"]["BTC"]["index"].update(max_age_ms=10000.5),
     "assets.BTC.index.max_age_ms: must be a whole number (got 10000.5)"),
    (lambda d: d["liquidation"].update(fee_rate=True), "liquidation.fee_rate: must be a number, not a boolean"),
    # partial liquidation closes a fraction strictly between nothing and everything, above a notional ≥ 0
    (lambda d: d["liquidation"].update(partial={"fraction": 1.0, "above_usd": 0}),
     "liquidation.partial.fraction: must be < 1.0 (got 1.0)"),
    (lambda d: d["liquidation"].update(partial={"fraction": 0.2}), "liquidation.partial.above_usd: required"),
    (lambda d: d["stress"]["scenarios"]["risk_off"].update(BTC=False),
     "stress.scenarios.risk_off.BTC: must be a number, not a boolean"),
    (lambda d: d["stress"].update(severities=[True]), "stress.severities[0]: must be a number, not a boolean"),
    (lambda d: d["stress"].update(max_rounds=True), "stress.max_rounds: must be a whole number, not a boolean"),
    (lambda d: d["assets"]["BTC"]["impact"].update(depth_usd_per_pct="5e7"),
     "assets.BTC.impact.depth_usd_per_pct: must be a number, not text (got '5e7'"),
    (lambda d: d["assets"]["BTC"]["haircut"][0].update(upto=True), "assets.BTC.haircut[0].upto: must be a number"),
    (lambda d: d.update(alerts={"depeg": {"warning": True, "critical": 0.05}}),
     "alerts.depeg.warning: must be a number, not a boolean"),
    (lambda d: d.update(ingest={"out_of_order_ms": True}), "ingest.out_of_order_ms: must be a whole number"),
    # a severity is a fraction of a move, and no configured move may take a price to zero or below
    (lambda d: d["stress"].update(severities=[0.5, 1.5]), "stress.severities[1]: must be <= 1"),
    (lambda d: d["stress"].update(severities=[0.1, 0.9]),
     "stress.scenarios.risk_off.ETH: direction -1.25 × the largest severity 0.9 moves the price by -112%"),
    (lambda d: d["stress"]["scenarios"].update(crash={"BTC": -10.0}),
     "stress.scenarios.crash.BTC: direction -10 × the largest severity 0.2"),
    (lambda d: d["stress"]["scenarios"].update(calm={}), "stress.scenarios.calm: moves no asset"),
    (lambda d: d.update(alerts={"cascade_risk": {"grid": [0.5, 0.9]}}),
     "alerts.cascade_risk.grid: severity 0.9 × direction -1.25 of stress.scenarios.risk_off.ETH"),
    (lambda d: d.update(alerts={"cascade_risk": {"grid": [0.03, 0.02]}}),
     "alerts.cascade_risk.grid: must be strictly ascending"),
    (lambda d: d.update(alerts={"cascade_risk": {"grid": [0.5, 1.2]}}), "alerts.cascade_risk.grid[1]: must be <= 1"),
    (lambda d: d.update(alerts={"margin_cluster": {"notional_usd": {"warning": 5e8, "critical": 1e8}}}),
     "alerts.margin_cluster.notional_usd.critical: 100000000.0 is below warning"),
    (lambda d: d.update(alerts={"webhooks": [{"name": "ops", "url": "http://a/x", "secret_env": "A"},
                                             {"name": "ops", "url": "http://b/x", "secret_env": "B"}]}),
     "alerts.webhooks[1].name: 'ops' is also the name of alerts.webhooks[0]"),
    (lambda d: d.update(alerts={"webhooks": [{"name": "ops", "url": "http://:8099/x", "secret_env": "A"}]}),
     "alerts.webhooks[0].url: 'http://:8099/x' names no host"),
    # the admission bounds of the ingest must leave room for an event
    (lambda d: d.update(ingest={"min_ts": 5, "max_ts": 5}), "ingest.min_ts: 5 is not below max_ts 5"),
    (lambda d: d.update(ingest={"sanity": {"min_price": 10, "max_price": 1}}),
     "ingest.sanity.min_price: 10 is not below max_price 1"),
    (lambda d: d["assets"]["BTC"].update(sanity={"min_price": 2e5, "max_price": 1e5}),
     "assets.BTC.sanity.min_price: 200000 is not below max_price 100000"),
])
def test_error_names_the_field(mutate, expected):
    found = problems(mutate)
    assert any(p.startswith(expected) for p in found), found


def test_dependency_cycle_is_named():
    def cycle(d):
        d["assets"]["ETH"]["index"]["constituents"].append({"source": "binance:ETH/WBETH", "weight": 0.1})
    found = problems(cycle)
    assert any("dependency cycle" in p and ("ETH -> WBETH -> ETH" in p or "WBETH -> ETH -> WBETH" in p)
               for p in found), found


def test_all_problems_reported_at_once():
    def two(d):
        d["assets"]["BTC"]["index"]["constituents"][0]["weight"] = -1
        d["instruments"]["BTCUSDT-PERP"]["underlying"] = "BTX"
    found = problems(two)
    # pydantic errors come first; semantic checks run only on a structurally valid file
    assert any("weight" in p for p in found)


def test_yaml_syntax_error_names_line(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("settlement: USDT\nassets: [\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert "line" in str(e.value)


def test_shipped_configs_load():
    from liqwatch.scenarios import config_path

    pre = load_config(config_path("oct-2025", "prefix"))
    fixed = load_config(config_path("oct-2025", "fixed"))
    assert pre.config_id != fixed.config_id
    assert [c.source for c in pre.assets["USDe"].index.constituents] == ["binance:USDe/USDT"]
    assert pre.assets["WBETH"].index.constituents[0].weight == 0.2
    assert pre.assets["BNSOL"].index.constituents[0].weight == 0.3
    assert all(c.is_redemption for c in fixed.assets["WBETH"].index.constituents)
    assert fixed.assets["USDe"].index.floor is not None


def test_numbers_may_be_ints_where_floats_are_expected():
    data = copy.deepcopy(BASE)
    data["liquidation"]["fee_rate"] = 0
    data["stress"]["severities"] = [0.05, 0.5]
    data["stress"]["scenarios"]["risk_off"] = {"BTC": -1, "ETH": 1}
    data["assets"]["BTC"]["impact"]["depth_usd_per_pct"] = 50_000_000
    cfg = parse_config(data)
    assert cfg.liquidation.fee_rate == 0.0 and cfg.stress.scenarios["risk_off"]["BTC"] == -1.0


def test_a_rise_may_exceed_100_percent():
    """Only a fall is bounded (|d| × s < 1): a squeeze direction of +3 at severity 0.5 is a 150% rise."""
    data = copy.deepcopy(BASE)
    data["stress"]["scenarios"]["squeeze"] = {"BTC": 3.0}
    data["stress"]["severities"] = [0.1, 0.5]
    data["stress"]["scenarios"]["risk_off"] = {"BTC": -1.0, "ETH": -1.25}
    assert parse_config(data).stress.scenarios["squeeze"]["BTC"] == 3.0


def test_config_that_is_not_utf8_is_named(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_bytes(b"\xff\xfe settlement: USDT\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert e.value.problems == [f"(file): {p} is not UTF-8 text (byte 0xff at offset 0)"]
