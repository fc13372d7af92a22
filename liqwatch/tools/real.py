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

import numpy as np

from liqwatch.scenarios import KINDS, SHARES, TOTAL_EQUITY_USD, _loop_leverage_cap, _maintenance_rate
from liqwatch.tools.importer import ImportSpec, Mapping, ReferenceSeries, import_files

DATA = Path(__file__).resolve().parent.parent / "data" / "real"
CONFIGS = Path(__file__).resolve().parent.parent / "scenarios"
DAYS = {"real-2025-10-10": "2025-10-10", "real-2025-10-07": "2025-10-07"}
PERP_OF = {"BTC": "BTCUSDT-PERP", "SOL": "SOLUSDT-PERP"}


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


def accounts(n: int, seed: int, price: dict[str, float], ts: int) -> Iterator[dict]:
    """The oct-2025 population's kinds over the assets of the real scenario (the staking-token loops of the
    synthetic evening become BTC and SOL spot-margin loops: no minute data of WBETH or BNSOL exists)."""
    rng = np.random.default_rng(seed + 1)
    kind = rng.choice(len(KINDS), size=n, p=SHARES)
    raw = rng.lognormal(0.0, 1.4, n)
    equity = raw / raw.sum() * TOTAL_EQUITY_USD
    width = len(str(n - 1))
    for i in range(n):
        e = float(equity[i])
        k = KINDS[kind[i]]
        coll: dict[str, float] = {}
        debt: dict[str, float] = {}
        pos: list[dict] = []
        if k == "perp":
            coll["USDe" if rng.random() < 0.35 else "USDT"] = e
            lev = float(np.clip(rng.lognormal(np.log(4.0), 0.7), 1.0, 50.0))
            npos = 1 if rng.random() < 0.6 else 2
            for _ in range(10):  # no position the venue would liquidate on the spot (see scenarios.accounts)
                if e >= 1.5 * _maintenance_rate(e * lev / npos) * e * lev:
                    break
                lev = max(1.0, lev * 0.7)
            for _ in range(npos):
                u = "BTC" if rng.random() < 0.65 else "SOL"
                side = 1.0 if rng.random() < 0.8 else -1.0
                entry = price[u] * (1.0 - side * abs(rng.normal(0.0, 0.002)))
                pos.append({"instrument": PERP_OF[u], "qty": side * e * lev / npos / price[u], "entry": entry})
        elif k == "usde_loop":
            lev = 2.0 + 7.0 * rng.beta(2.0, 1.5)
            lev = float(_loop_leverage_cap(np.array([e]), np.array([lev]), 0.05, 0.10, 1e7)[0])
            coll["USDe"] = e * lev
            debt["USDT"] = e * (lev - 1.0)
        elif k == "market_maker":
            coll["USDT"] = e
            gross = e * rng.uniform(3.0, 8.0)
            pos.append({"instrument": "BTCUSDT-PERP", "qty": 0.5 * gross / price["BTC"],
                        "entry": price["BTC"] * (1 + rng.normal(0, 0.001))})
            pos.append({"instrument": "SOLUSDT-PERP", "qty": -0.5 * gross / price["SOL"],
                        "entry": price["SOL"] * (1 + rng.normal(0, 0.001))})
        else:  # spot-margin borrowers, and the staking-token loops of the synthetic evening (no WBETH or BNSOL
            # minute data exists): collateral in the token's underlying instead
            u = "BTC" if rng.random() < 0.6 else "SOL"
            lev = rng.uniform(1.2, 3.0)
            coll[u] = e * lev / price[u]
            debt["USDT"] = e * (lev - 1.0)
        yield {"type": "account", "account": f"acct-{i:0{width}d}", "ts": ts,
               "collateral": {a: round(q, 10) for a, q in coll.items()},
               "borrowed": {a: round(q, 6) for a, q in debt.items()},
               "positions": [{"instrument": p["instrument"], "qty": round(p["qty"], 10),
                              "entry": round(p["entry"], 6)} for p in pos]}


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
    yield from accounts(accounts_n, seed, first, start + 60_000)
    yield from market[len(head):]
