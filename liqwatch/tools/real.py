"""Real-market scenarios: the recorded prices of an evening (liqwatch/data/real, see its SOURCES.md) with a
synthetic population of accounts opened at those prices.

    for event in generate("real-2025-10-10", accounts=5000, seed=7): ...
    config_path("real-2025-10-10", "prefix")   # USDe indexed from Binance's book alone, as it was

`real-2025-10-10` is the crash (18:30–00:30 UTC; BTC −13% and SOL −32% around 21:20, USDe to 0.65 on Binance's
book while the Uniswap pool held 0.9995); `real-2025-10-07` the same hours of a calm evening. What is recorded:
Binance BTCUSDT and SOLUSDT perpetual minute bars (the only minute data of BTC and SOL that evening: the BTC and
SOL indices read the perpetual's own book), Binance spot USDe/USDT minute bars, the Uniswap v3 USDe/USDT pool per
block (10 October only). What is stated, not recorded: USDe redeems for 1.00 USD (Ethena's redemption held; no
public series of it exists), every 30 s. What is synthetic: the accounts — the `oct-2025` population's kinds
and leverage (perpetual traders with USDT or USDe margin, USDe loops, spot-margin borrowers, hedged market
makers) over BTC, SOL and USDe, opened at the first recorded prices. Minute bars become four ticks each
(liqwatch import's intra-bar path: open, the extreme against the bar, the other extreme, close).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Iterator

from liqwatch.scenarios import Assets, accounts
from liqwatch.tools.importer import ImportSpec, Mapping, ReferenceSeries, import_files

DATA = Path(__file__).resolve().parent.parent / "data" / "real"
CONFIGS = Path(__file__).resolve().parent.parent / "scenarios"
DAYS = {"real-2025-10-10": "2025-10-10", "real-2025-10-07": "2025-10-07"}


def config_path(name: str, variant: str = "prefix") -> Path:
    """`prefix`: USDe indexed from Binance's book alone (as it was); `fixed`: anchored on its redemption value."""
    if name not in DAYS:
        raise KeyError(name)
    if variant not in ("prefix", "fixed"):
        raise KeyError(variant)
    return CONFIGS / f"real-{variant}.yaml"


def market_lines(name: str) -> list[bytes]:
    """The recorded market of an evening as tick and reference lines, in event-time order."""
    day = DAYS[name]
    sources = [
        ([DATA / f"BTCUSDT-1m-{day}.csv"], ImportSpec("binance", "BTCUSDT-PERP")),
        ([DATA / f"SOLUSDT-1m-{day}.csv"], ImportSpec("binance", "SOLUSDT-PERP")),
        ([DATA / f"usde_minute_binance-{day}.parquet"],
         ImportSpec("binance", "USDe/USDT", references=(ReferenceSeries("USDe", "USD", 1.0),))),
    ]
    uniswap = DATA / f"uniswap_usde-{day}.parquet"
    if uniswap.exists():
        sources.append(([uniswap], ImportSpec("uniswap", "USDe/USDT", layout="generic",
                                              mapping=Mapping(ts="timestamp", time_unit="s", price="token1Price"))))
    lines: list[bytes] = []
    for paths, spec in sources:
        buf = io.BytesIO()
        import_files(paths, spec, buf)
        lines.extend(buf.getvalue().splitlines())
    # one order for all: by event time, references before ticks at the same time (as the importer merges)
    return sorted(lines, key=lambda b: (json.loads(b)["ts"], b'"reference"' not in b[:30]))


def population(price: dict[str, float]) -> Assets:
    """The oct-2025 population's kinds over the assets of the real scenario: perpetual traders and spot-margin
    borrowers on BTC and SOL, makers long BTC and short SOL; no staking-token loops (no minute data of WBETH or
    BNSOL exists): those accounts borrow against BTC or SOL instead."""
    return Assets({**price, "USDe": 1.0, "USDT": 1.0}, (("BTC", 0.65), ("SOL", 0.35)), (("BTC", 0.6), ("SOL", 0.4)),
                  ("BTC", "SOL"), staking=False)


def generate(name: str, accounts_n: int = 5000, seed: int = 7) -> Iterator[dict]:
    """All events of a real-market scenario in event-time order: the first minute of the market, the accounts
    (opened at the first recorded prices), then the rest of the evening."""
    market = [json.loads(b) for b in market_lines(name)]
    first: dict[str, float] = {}
    for ev in market:
        if ev["type"] == "tick" and ev["symbol"] in ("BTCUSDT-PERP", "SOLUSDT-PERP"):
            first.setdefault(ev["symbol"][:3], (ev["bid"] + ev["ask"]) / 2)
        if len(first) == 2:
            break
    start = market[0]["ts"]
    head = [ev for ev in market if ev["ts"] <= start + 60_000]
    yield from head
    yield from accounts(accounts_n, seed, population(first), start + 60_000)
    yield from market[len(head):]
