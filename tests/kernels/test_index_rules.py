"""The index rules liqwatch adds to SPEC §3 (README "Index rules"), one small case each: a freshness limit per
source (a slow reference is not stale), derivative books as sources, and the anchor rule for fewer than three
fresh sources."""

from __future__ import annotations

import pytest
import yaml

from liqwatch.config import ConfigError, parse_config
from liqwatch.kernels.arrays import DROPPED_DEVIATION, DROPPED_STALE, USED
from tests.conftest import DATA, run_engine

T = 1_000_000
HOUR = 3_600_000


def tick(symbol, mid, venue="binance", ts=T):
    return {"type": "tick", "venue": venue, "symbol": symbol, "ts": ts, "bid": mid, "ask": mid}


def wbeth_rate(ts=T):
    return {"type": "reference", "asset": "WBETH", "ts": ts, "in": "ETH", "rate": 1.08}


def eth_every_minute(until):
    """The market's clock: ETH books every minute from T (a stream never jumps hours at once)."""
    return [tick("ETH/USDT", 4000, venue, ts) for ts in range(T, until + 1, 60_000) for venue in ("binance", "okx")]


def status(e, asset):
    """{source: status} of an asset's constituents after the last evaluation."""
    return {src: int(e.market.source_status[c]) for c, (a, src) in enumerate(e.layout.constituents) if a == asset}


def small(edit=None):
    data = yaml.safe_load((DATA / "small.yaml").read_text())
    if edit:
        edit(data)
    return parse_config(data)


def test_two_sources_that_diverge_take_the_anchor_not_the_last_value(small_config):
    # WBETH = .2 × binance 3000 + .8 × redemption (1.08 × ETH 4000 = 4320). The median of two cannot say which is
    # wrong (SPEC alone drops both and keeps the last value); anchored on the reference, the book 30.6% away is
    # dropped and the index is the reference's 4320.
    e = run_engine(small_config, [tick("ETH/USDT", 4000), tick("ETH/USDT", 4000, "okx"), wbeth_rate(),
                                  tick("WBETH/USDT", 3000)])
    assert e.prices().index[e.layout.asset_id["WBETH"]] == pytest.approx(4320.0, rel=1e-12)
    assert status(e, "WBETH") == {"binance:WBETH/USDT": DROPPED_DEVIATION, "redemption:WBETH": USED}


def test_two_books_without_an_anchor_are_both_kept(small_config):
    # ETH from binance 4000 and okx 3000 (weighted median, .5/.5): no reference to say which is wrong, so neither
    # is dropped; the weighted median of the two takes the smaller at the tie: 3000
    e = run_engine(small_config, [tick("ETH/USDT", 4000), tick("ETH/USDT", 3000, "okx")])
    assert e.prices().index[e.layout.asset_id["ETH"]] == 3000.0
    assert set(status(e, "ETH").values()) == {USED}
    assert not e.market.index_stale[e.layout.asset_id["ETH"]]


def test_a_reference_published_hours_ago_is_fresh_by_default(small_config):
    # the rate was published at T; at T + 2 h the books (10 s limit) are fresh again, the reference too (26 h)
    later = T + 2 * HOUR
    e = run_engine(small_config, [wbeth_rate(), *eth_every_minute(later), tick("WBETH/USDT", 4300, ts=later)])
    assert status(e, "WBETH") == {"binance:WBETH/USDT": USED, "redemption:WBETH": USED}
    assert e.prices().index[e.layout.asset_id["WBETH"]] == pytest.approx(0.2 * 4300 + 0.8 * 4320, rel=1e-12)


def test_a_source_can_have_its_own_freshness_limit():
    cfg = small(lambda d: d["assets"]["WBETH"]["index"]["constituents"][1].update(max_age_ms=HOUR))
    later = T + 2 * HOUR
    e = run_engine(cfg, [wbeth_rate(), *eth_every_minute(later), tick("WBETH/USDT", 4300, ts=later)])
    assert status(e, "WBETH") == {"binance:WBETH/USDT": USED, "redemption:WBETH": DROPPED_STALE}
    assert e.prices().index[e.layout.asset_id["WBETH"]] == 4300.0  # the book alone


def perp_indexed(data):
    # BTC from the perpetual's own book (the only minute data of BTC on 10 Oct 2025) and one spot book
    data["assets"]["BTC"]["index"]["constituents"] = [{"source": "binance:BTCUSDT-PERP", "weight": 0.5},
                                                      {"source": "okx:BTC/USDT", "weight": 0.5}]


def test_a_perpetual_book_is_an_index_source():
    cfg = small(perp_indexed)
    e = run_engine(cfg, [tick("BTCUSDT-PERP", 100_400), tick("BTC/USDT", 100_000, "okx")])
    assert e.prices().index[e.layout.asset_id["BTC"]] == pytest.approx(100_200.0, rel=1e-12)


@pytest.mark.parametrize("source, problem", [
    ("binance:SOLUSDT-PERP", "is neither a spot book venue:BASE/QUOTE nor a book of a configured instrument"),
    ("binance:ETHUSDT-PERP", "'binance:ETHUSDT-PERP' prices ETH, not BTC"),
])
def test_a_derivative_source_must_be_an_instrument_of_the_asset(source, problem):
    with pytest.raises(ConfigError) as e:
        small(lambda d: d["assets"]["BTC"]["index"]["constituents"].__setitem__(0, {"source": source, "weight": 1}))
    assert f"assets.BTC.index.constituents[0].source: '{source}'" in str(e.value)
    assert problem in str(e.value)
