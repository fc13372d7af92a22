from __future__ import annotations

import json
from pathlib import Path

import pytest

import yaml

from liqwatch.config import Config, load_config, parse_config
from liqwatch.core.engine import Engine
from liqwatch.events import decode
from tests import reference as ref

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def rich_config() -> Config:
    return load_config(DATA / "rich.yaml")


@pytest.fixture(scope="session")
def small_config() -> Config:
    return load_config(DATA / "small.yaml")


def run_engine(cfg: Config, events: list[dict]) -> Engine:
    engine = Engine(cfg)
    for ev in events:
        engine.apply(decode(json.dumps(ev)))
    return engine


def run_reference(cfg: Config, events: list[dict]) -> tuple[ref.Market, dict[str, dict], int]:
    market = ref.Market(cfg)
    accounts: dict[str, dict] = {}
    t = -1
    for ev in events:
        t = max(t, ev["ts"])
        if ev["type"] == "tick":
            market.tick(ev)
        elif ev["type"] == "reference":
            market.reference(ev)
        elif ev.get("closed"):
            accounts.pop(ev["account"], None)
        else:
            accounts[ev["account"]] = ev
    return market, accounts, t


ONE_BOOK = """
settlement: USDT
assets:
  USDT: {}
  BTC:
    index: {constituents: [{source: "binance:BTC/USDT", weight: 1}], max_deviation: 1}
instruments:
  BTCUSDT-PERP:
    underlying: BTC
    mark: {method: index}
    maintenance: [{upto: null, rate: 0.01}]
liquidation: LIQUIDATION
stress:
  scenarios: {risk_off: {BTC: -1.0}}
  severities: [0.1]
"""


def one_book_config(liquidation: str) -> Config:
    """BTC priced by one Binance book, one perpetual on it (1% maintenance, marked at the index): hand-checked
    cases. `liquidation`: the config's liquidation block, inline YAML."""
    return parse_config(yaml.safe_load(ONE_BOOK.replace("LIQUIDATION", liquidation)))


def close(a, b, rel: float = 1e-9, abs_: float = 1e-6) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if a != a or b != b:
        return a != a and b != b
    return abs(a - b) <= max(rel * max(abs(a), abs(b)), abs_)
