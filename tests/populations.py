"""Seeded random markets and account populations for comparing kernels with the reference."""

from __future__ import annotations

import numpy as np

BASE = {"USDC": 1.0, "BTC": 100_000.0, "ETH": 4_000.0, "WBETH": 4_300.0, "USDe": 1.0}
BOOKS = {
    "binance:USDC/USDT": "USDC", "okx:USDC/USDT": "USDC", "bybit:USDC/USDT": "USDC",
    "binance:BTC/USDT": "BTC", "okx:BTC/USDT": "BTC", "coinbase:BTC/USD": "BTC",
    "binance:ETH/USDT": "ETH", "okx:ETH/USDT": "ETH", "coinbase:ETH/USDC": "ETH",
    "binance:WBETH/USDT": "WBETH", "binance:WBETH/ETH": "WBETH",
    "binance:USDe/USDT": "USDe",
}
PERPS = {"binance:BTCUSDT-PERP": "BTC", "binance:ETHUSDT-PERP": "ETH", "binance:WBETHUSDT-PERP": "WBETH"}
INSTRUMENTS = {"BTCUSDT-PERP": "BTC", "ETHUSDT-PERP": "ETH", "WBETHUSDT-PERP": "WBETH"}
REFS = {"WBETH": ("ETH", 1.075), "USDe": ("USD", 1.0)}
T0 = 1_700_000_000_000


def market_events(rng: np.random.Generator, steps: int = 40) -> list[dict]:
    """Ticks for every book over `steps` seconds with outliers, gaps (stale books) and funding, plus references."""
    out: list[dict] = []
    level = {a: p * rng.uniform(0.97, 1.03) for a, p in BASE.items()}
    silent_from = {k: (rng.integers(steps // 2, steps) if rng.random() < 0.25 else steps + 1) for k in (*BOOKS, *PERPS)}
    for step in range(steps):
        ts = T0 + step * 1000
        for a in level:
            level[a] *= 1 + rng.normal(0, 0.003)
        if step % 5 == 0:
            for asset, (into, rate) in REFS.items():
                if rng.random() < 0.9:
                    out.append({"type": "reference", "asset": asset, "ts": ts, "in": into,
                                "rate": rate * (1 + rng.normal(0, 0.001))})
        for key, asset in {**BOOKS, **PERPS}.items():
            if step >= silent_from[key] or rng.random() < 0.1:
                continue
            symbol = key.split(":", 1)[1]
            mid = level[asset]
            if symbol.endswith("/ETH"):
                mid = level[asset] / level["ETH"]
            if rng.random() < 0.05:
                mid *= 1 + rng.choice([-1, 1]) * rng.uniform(0.05, 0.3)  # an outlier
            mid *= 1 + rng.normal(0, 0.001)
            half = mid * rng.uniform(0, 0.0005)
            ev = {"type": "tick", "venue": key.split(":")[0], "symbol": symbol, "ts": ts + int(rng.integers(0, 900)),
                  "bid": mid - half, "ask": mid + half}
            if key in PERPS:
                if rng.random() < 0.8:
                    ev["last"] = mid * (1 + rng.normal(0, 0.002))
                if rng.random() < 0.5:
                    ev["funding_rate"] = float(rng.normal(0, 0.0003))
                    ev["next_funding_ts"] = ts + int(rng.integers(0, 3_600_000))
            out.append(ev)
    out.sort(key=lambda e: e["ts"])
    return out


def account_events(rng: np.random.Generator, n: int, ts: int, isolated: float = 0.0) -> list[dict]:
    """Mixed collateral, borrow, long and short perps, sized so that health spreads around 1; with `isolated`,
    that share of the accounts hold one position per instrument in isolated margin too (margin for 2–50×)."""
    out = []
    collateral_assets = ["USDT", "USDC", "BTC", "ETH", "WBETH", "USDe"]
    for i in range(n):
        equity = float(np.exp(rng.normal(np.log(50_000), 1.5)))
        coll: dict[str, float] = {}
        for a in rng.choice(collateral_assets, size=int(rng.integers(1, 4)), replace=False):
            coll[str(a)] = equity * rng.uniform(0.2, 1.0) / BASE.get(str(a), 1.0)
        debt: dict[str, float] = {}
        if rng.random() < 0.4:
            for a in rng.choice(["USDT", "USDC", "ETH"], size=int(rng.integers(1, 3)), replace=False):
                debt[str(a)] = equity * rng.uniform(0.1, 1.5) / BASE.get(str(a), 1.0)
        positions = []
        for _ in range(int(rng.integers(0, 5))):
            ins = str(rng.choice(list(INSTRUMENTS)))
            lev = float(np.exp(rng.uniform(0, np.log(40))))
            qty = rng.choice([-1, 1]) * equity * lev / BASE[INSTRUMENTS[ins]] / 2
            positions.append({"instrument": ins, "qty": float(qty),
                              "entry": BASE[INSTRUMENTS[ins]] * (1 + rng.normal(0, 0.03))})
        if isolated and rng.random() < isolated:
            for ins in rng.choice(list(INSTRUMENTS), size=int(rng.integers(1, 3)), replace=False):
                lev = float(np.exp(rng.uniform(np.log(2), np.log(50))))
                notional = equity * rng.uniform(0.1, 2.0)
                price = BASE[INSTRUMENTS[str(ins)]]
                positions.append({"instrument": str(ins), "qty": float(rng.choice([-1, 1]) * notional / price),
                                  "entry": price * (1 + rng.normal(0, 0.03)), "isolated_margin": notional / lev})
        out.append({"type": "account", "account": f"a{i:05d}", "ts": ts, "collateral": coll, "borrowed": debt,
                    "positions": positions})
    return out


def population(seed: int, n_accounts: int, steps: int = 40, isolated: float = 0.0) -> list[dict]:
    rng = np.random.default_rng(seed)
    events = market_events(rng, steps)
    accounts = account_events(rng, n_accounts, events[-1]["ts"], isolated)
    return events + accounts
