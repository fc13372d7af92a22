"""Every class of config error names its field path."""

from __future__ import annotations

import copy

import pytest
import yaml

from streams.config import ConfigError, load_config, parse_config
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
    from streams.scenarios import config_path

    pre = load_config(config_path("oct-2025", "prefix"))
    fixed = load_config(config_path("oct-2025", "fixed"))
    assert pre.config_id != fixed.config_id
    assert [c.source for c in pre.assets["USDe"].index.constituents] == ["binance:USDe/USDT"]
    assert pre.assets["WBETH"].index.constituents[0].weight == 0.2
    assert pre.assets["BNSOL"].index.constituents[0].weight == 0.3
    assert all(c.is_redemption for c in fixed.assets["WBETH"].index.constituents)
    assert fixed.assets["USDe"].index.floor is not None
