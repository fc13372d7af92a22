"""Synthetic, deterministic scenarios: the evening of 10 October 2025 (`oct-2025`) and a calm day (`calm`).

    for event in generate("oct-2025", accounts=100_000, seed=7): ...
    config_path("oct-2025", "prefix")   # the index as it was; "fixed" for the post-12-October index

Calibration (../shared/scenarios/oct-2025.md): 20:00–23:00 UTC, tariff post at 20:50, cascade 21:10–21:30
with Binance BTC at ~$101.5k, ETH ~$3,500, SOL ~$150 (perp ~$137); Binance's own USDe book slides to $0.65
around 21:40 and spends ~90 minutes between $0.75 and $0.98 while Bybit dips to ~$0.94 and the redemption
rate stays 1.0; WBETH trades near $430 on Binance and BNSOL near $34.90 while their redemption values hold.
One okx book stalls for six minutes at 21:18 (stale resting orders). `calm` keeps the same population and
venues with a quiet random walk and no depeg.

The account population (shares by count): perp traders on USDT or USDe, 1–50× and mostly long (55%); USDe
loopers borrowing USDT at 2–9× for the carry (18%); WBETH/BNSOL loopers, half with a short perp hedge (10%);
market makers with hedged books (4%); spot-margin borrowers (13%). Total equity is fixed (≈ $3B), so `--accounts`
changes granularity, not the size of the market: the cascade dynamics are similar at 5,000 and at 1,000,000.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
T0 = 1_760_126_400_000  # 2025-10-10T20:00:00Z
MINUTE = 60_000
DURATION_MIN = 180
TICK_MS = 1_000
REFERENCE_MS = 10_000
NEXT_FUNDING = 1_760_140_800_000  # 2025-10-11T00:00:00Z
TOTAL_EQUITY_USD = 3.0e9

SCENARIOS = ("oct-2025", "calm")
EVENING_SEVERITY = 0.12  # risk_off severity of the evening's move (BTC −12%, ETH −15%, SOL −18% at the lows)

BASE = {"BTC": 112_000.0, "ETH": 4_350.0, "SOL": 187.0, "USDe": 1.0}
REDEMPTION = {"USDe": ("USD", 1.0), "WBETH": ("ETH", 1.08), "BNSOL": ("SOL", 1.05)}
SPOT_VENUES = ("binance", "okx", "bybit", "coinbase")
PERPS = {"BTCUSDT-PERP": "BTC", "ETHUSDT-PERP": "ETH", "SOLUSDT-PERP": "SOL"}

# keyframes (minutes after 20:00, level relative to 20:00) of the October evening
MARKET_PATH = {
    "BTC": [
        (0, 1.0),
        (50, 1.0),
        (60, 0.985),
        (70, 0.965),
        (75, 0.935),
        (80, 0.915),
        (90, 0.93),
        (120, 0.95),
        (180, 0.975),
    ],
    "ETH": [(0, 1.0), (50, 1.0), (60, 0.98), (70, 0.95), (75, 0.88), (80, 0.81), (90, 0.84), (120, 0.87), (180, 0.9)],
    "SOL": [(0, 1.0), (50, 1.0), (60, 0.975), (70, 0.94), (75, 0.86), (80, 0.80), (90, 0.82), (120, 0.85), (180, 0.88)],
}
# extra move of Binance's own books on top of the market (its forced selling)
BINANCE_EXTRA = {
    "BTC": [(0, 1.0), (74, 1.0), (80, 0.99), (86, 1.0), (180, 1.0)],
    "ETH": [(0, 1.0), (74, 1.0), (80, 0.99), (86, 1.0), (180, 1.0)],
    "SOL": [(0, 1.0), (74, 1.0), (80, 0.985), (86, 1.0), (180, 1.0)],
}
PERP_EXTRA = {"SOL": [(0, 1.0), (76, 1.0), (80, 0.92), (84, 1.0), (180, 1.0)]}
# USDe spot per venue, and the staking tokens on Binance relative to their redemption value
USDE_PATH = {
    "binance": [
        (0, 1.0),
        (62, 1.0),
        (66, 0.995),
        (70, 0.985),
        (75, 0.94),
        (85, 0.82),
        (100, 0.65),
        (110, 0.75),
        (130, 0.86),
        (160, 0.96),
        (180, 0.995),
    ],
    "bybit": [(0, 1.0), (68, 1.0), (75, 0.99), (100, 0.94), (130, 0.985), (180, 1.0)],
}
LST_PATH = {
    "WBETH": [
        (0, 1.0),
        (64, 1.0),
        (70, 0.985),
        (80, 0.80),
        (95, 0.115),
        (105, 0.3),
        (130, 0.8),
        (160, 0.97),
        (180, 1.0),
    ],
    "BNSOL": [
        (0, 1.0),
        (64, 1.0),
        (70, 0.985),
        (80, 0.85),
        (95, 0.23),
        (105, 0.4),
        (130, 0.85),
        (160, 0.97),
        (180, 1.0),
    ],
}
STALL = ("okx", "SOL/USDT", 78, 84)  # venue, symbol, from, to (minutes): no ticks


def config_path(scenario: str, variant: str = "prefix") -> Path:
    """The shipped config of a scenario; `calm` uses the October venue as it was."""
    if scenario not in SCENARIOS:
        raise KeyError(scenario)
    if variant not in ("prefix", "fixed"):
        raise KeyError(variant)
    return HERE / f"oct-2025-{variant}.yaml"


def _interp(keys: list[tuple[float, float]], minutes: np.ndarray) -> np.ndarray:
    xs, ys = zip(*keys)
    return np.interp(minutes, xs, ys)


def _noise(rng: np.random.Generator, n: int, sd: float, revert: float = 0.02) -> np.ndarray:
    """Mean-reverting multiplicative noise around 1 (per-second steps)."""
    steps = rng.normal(0.0, sd, n)
    out = np.empty(n)
    x = 0.0
    for i in range(n):
        x = (1.0 - revert) * x + steps[i]
        out[i] = x
    return 1.0 + out


def _book_paths(scenario: str, rng: np.random.Generator, minutes: np.ndarray) -> dict[str, np.ndarray]:
    """Mid price per book (`venue:symbol`) at each second."""
    n = minutes.shape[0]
    crash = scenario == "oct-2025"
    mids: dict[str, np.ndarray] = {}
    market = {}
    for asset in ("BTC", "ETH", "SOL"):
        level = _interp(MARKET_PATH[asset], minutes) if crash else np.ones(n)
        market[asset] = BASE[asset] * level * _noise(rng, n, 2e-4)
        for venue in SPOT_VENUES:
            quote = "USD" if venue == "coinbase" else "USDT"
            extra = _interp(BINANCE_EXTRA[asset], minutes) if (crash and venue == "binance") else 1.0
            mids[f"{venue}:{asset}/{quote}"] = market[asset] * extra * _noise(rng, n, 5e-5, 0.2)
    for perp, asset in PERPS.items():
        extra = _interp(PERP_EXTRA[asset], minutes) if (crash and asset in PERP_EXTRA) else 1.0
        mids[f"binance:{perp}"] = mids[f"binance:{asset}/USDT"] * 1.0002 * extra * _noise(rng, n, 5e-5, 0.2)
    for venue in ("binance", "bybit"):
        path = _interp(USDE_PATH[venue], minutes) if crash else np.ones(n)
        mids[f"{venue}:USDe/USDT"] = path * _noise(rng, n, 2e-5, 0.3)
    for lst, (under, rate) in REDEMPTION.items():
        if lst == "USDe":
            continue
        path = _interp(LST_PATH[lst], minutes) if crash else np.ones(n)
        # the staking token trades near redemption value × the Binance price of what it redeems into
        mids[f"binance:{lst}/USDT"] = rate * mids[f"binance:{under}/USDT"] * path * 0.999 * _noise(rng, n, 5e-5, 0.3)
    return mids


def _spread(key: str) -> float:
    """Half-spread, relative: thin books quote wider."""
    if "USDe" in key:
        return 1e-4
    if "WBETH" in key or "BNSOL" in key:
        return 5e-4
    return 5e-5


def market_events(scenario: str, seed: int) -> Iterator[tuple[int, dict]]:
    rng = np.random.default_rng(seed)
    seconds = np.arange(0, DURATION_MIN * 60 + 1)
    minutes = seconds / 60.0
    mids = _book_paths(scenario, rng, minutes)
    stall_key = f"{STALL[0]}:{STALL[1]}"
    keys = sorted(mids)
    for k, sec in enumerate(seconds):
        ts = T0 + int(sec) * TICK_MS
        if sec * 1000 % REFERENCE_MS == 0:
            for asset, (into, rate) in REDEMPTION.items():
                yield ts, {"type": "reference", "asset": asset, "ts": ts, "in": into, "rate": rate}
        for key in keys:
            if scenario == "oct-2025" and key == stall_key and STALL[2] <= minutes[k] < STALL[3]:
                continue
            venue, symbol = key.split(":", 1)
            mid = float(mids[key][k])
            h = _spread(key) * mid
            ev = {
                "type": "tick",
                "venue": venue,
                "symbol": symbol,
                "ts": ts + 1,
                "bid": round(mid - h, 8),
                "ask": round(mid + h, 8),
            }
            if symbol in PERPS:
                ev["last"] = round(mid, 8)
                ev["funding_rate"] = 0.0001
                ev["next_funding_ts"] = NEXT_FUNDING
            yield ts + 1, ev


# -- the account population ------------------------------------------------------------------------------------
KINDS = ("perp", "usde_loop", "lst_loop", "market_maker", "spot_margin")
SHARES = (0.55, 0.18, 0.10, 0.04, 0.13)
PRICE = {
    "BTC": BASE["BTC"],
    "ETH": BASE["ETH"],
    "SOL": BASE["SOL"],
    "USDe": 1.0,
    "USDT": 1.0,
    "WBETH": 1.08 * BASE["ETH"] * 0.999,
    "BNSOL": 1.05 * BASE["SOL"] * 0.999,
}
PERP_OF = {"BTC": "BTCUSDT-PERP", "ETH": "ETHUSDT-PERP", "SOL": "SOLUSDT-PERP"}


@dataclass(frozen=True)
class Assets:
    """What a population is built over: prices at opening, which underlyings perpetual traders and spot-margin
    borrowers pick (with probabilities), the pair market makers hedge, and whether staking-token loops exist
    (without them, those accounts borrow against BTC/SOL-like collateral like the spot-margin kind)."""

    price: dict[str, float]
    perp_mix: tuple[tuple[str, float], ...]
    spot_mix: tuple[tuple[str, float], ...]
    hedge: tuple[str, str]
    staking: bool = True


OCT_2025 = Assets(PRICE, (("BTC", 0.5), ("ETH", 0.3), ("SOL", 0.2)), (("BTC", 0.5), ("ETH", 0.35), ("SOL", 0.15)),
                  ("BTC", "ETH"))


def _pick(rng: np.random.Generator, mix: tuple[tuple[str, float], ...]) -> str:
    return mix[rng.choice(len(mix), p=[p for _, p in mix])][0]


def _loop_leverage_cap(
    equity: np.ndarray,
    leverage: np.ndarray,
    haircut: float,
    big_haircut: float,
    bracket: float,
    min_health: float = 1.25,
) -> np.ndarray:
    """Largest leverage ≤ requested at which a borrow loop starts with health ≥ min_health (5% borrow rate)."""
    out = leverage.copy()
    for _ in range(40):
        coll = equity * out
        hc = np.where(coll <= bracket, coll * haircut, bracket * haircut + (coll - bracket) * big_haircut)
        debt = equity * (out - 1.0)
        health = (coll - hc - debt) / np.maximum(0.05 * debt, 1e-9)
        bad = health < min_health
        if not bad.any():
            break
        out = np.where(bad, 1.0 + (out - 1.0) * 0.9, out)
    return out


def _maintenance_rate(notional: float) -> float:
    """Marginal maintenance rate of the shipped perpetual brackets (the widest of BTC, ETH and SOL) at a notional."""
    for upto, rate in ((50_000, 0.01), (500_000, 0.02), (3_000_000, 0.02), (float("inf"), 0.05)):
        if notional <= upto:
            return rate
    return 0.05


def accounts(n: int, seed: int, assets: Assets = OCT_2025, ts: int = T0 + 500) -> Iterator[dict]:
    """The population: `n` accounts sharing TOTAL_EQUITY_USD (lognormal sizes), of the KINDS in SHARES, opened
    at `assets.price` and dated `ts`."""
    rng = np.random.default_rng(seed + 1)
    kind = rng.choice(len(KINDS), size=n, p=SHARES)
    raw = rng.lognormal(0.0, 1.4, n)
    equity = raw / raw.sum() * TOTAL_EQUITY_USD
    width = len(str(n - 1))
    price = assets.price
    for i in range(n):
        e = float(equity[i])
        k = KINDS[kind[i]]
        coll: dict[str, float] = {}
        debt: dict[str, float] = {}
        pos: list[dict] = []
        if k == "perp":
            asset = "USDe" if rng.random() < 0.35 else "USDT"
            coll[asset] = e
            lev = float(np.clip(rng.lognormal(np.log(4.0), 0.7), 1.0, 50.0))
            npos = 1 if rng.random() < 0.6 else 2
            # a trader opens no position the venue would liquidate on the spot: notional stays below what the
            # equity supports at 1.5× the maintenance rate of its bracket (the top brackets bind whales)
            for _ in range(10):
                rate = _maintenance_rate(e * lev / npos)
                if e >= 1.5 * rate * e * lev:
                    break
                lev = max(1.0, lev * 0.7)
            for _ in range(npos):
                u = _pick(rng, assets.perp_mix)
                side = 1.0 if rng.random() < 0.8 else -1.0
                notional = e * lev / npos
                entry = price[u] * (1.0 - side * abs(rng.normal(0.0, 0.002)))  # opened a little in the money
                pos.append({"instrument": PERP_OF[u], "qty": side * notional / price[u], "entry": entry})
        elif k == "usde_loop":
            lev = 2.0 + 7.0 * rng.beta(2.0, 1.5)
            lev = float(_loop_leverage_cap(np.array([e]), np.array([lev]), 0.05, 0.10, 1e7)[0])
            coll["USDe"] = e * lev
            debt["USDT"] = e * (lev - 1.0)
        elif k == "lst_loop" and assets.staking:
            lst = "WBETH" if rng.random() < 0.6 else "BNSOL"
            hc, big, bracket = (0.05, 0.10, 5e6) if lst == "WBETH" else (0.08, 0.15, 5e6)
            lev = float(_loop_leverage_cap(np.array([e]), np.array([rng.uniform(1.5, 4.0)]), hc, big, bracket)[0])
            coll[lst] = e * lev / price[lst]
            debt["USDT"] = e * (lev - 1.0)
            if rng.random() < 0.5:
                u = "ETH" if lst == "WBETH" else "SOL"
                pos.append({"instrument": PERP_OF[u], "qty": -0.5 * e * lev / price[u], "entry": price[u]})
        elif k == "market_maker":
            coll["USDT"] = e
            gross = e * rng.uniform(3.0, 8.0)
            for u, sign in zip(assets.hedge, (0.5, -0.5)):  # long the first, short the second
                pos.append({"instrument": PERP_OF[u], "qty": sign * gross / price[u],
                            "entry": price[u] * (1 + rng.normal(0, 0.001))})
        else:  # spot-margin borrowers (and the staking loops of a population without staking tokens)
            u = _pick(rng, assets.spot_mix)
            lev = rng.uniform(1.2, 3.0)
            coll[u] = e * lev / price[u]
            debt["USDT"] = e * (lev - 1.0)
        yield {
            "type": "account",
            "account": f"acct-{i:0{width}d}",
            "ts": ts,
            "collateral": {a: round(q, 10) for a, q in coll.items()},
            "borrowed": {a: round(q, 6) for a, q in debt.items()},
            "positions": [
                {"instrument": p["instrument"], "qty": round(p["qty"], 10), "entry": round(p["entry"], 6)} for p in pos
            ],
        }


def generate(scenario: str, accounts_n: int = 100_000, seed: int = 7) -> Iterator[dict]:
    """All events of a scenario in event-time order: prices and references at 20:00, the account snapshots,
    then one tick per book per second until 23:00."""
    if scenario not in SCENARIOS:
        raise KeyError(scenario)
    market = market_events(scenario, seed)
    first_ts = T0 + 1
    pending = []
    for ts, ev in market:
        if ts > first_ts:
            pending.append(ev)
            break
        yield ev
    yield from accounts(accounts_n, seed)
    yield from pending
    for _, ev in market:
        yield ev


def event_count(accounts_n: int) -> int:
    """Approximate number of events (for progress bars)."""
    books = len(SPOT_VENUES) * 3 + len(PERPS) + 2 + 2
    seconds = DURATION_MIN * 60 + 1
    return accounts_n + books * seconds + 3 * (seconds // (REFERENCE_MS // 1000) + 1)
