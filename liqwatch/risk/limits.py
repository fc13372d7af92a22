"""Liquidity-aware position limits: the largest collateral position the liquidation venue's depth supports.

After October 2025 venues proposed to "constrain the maximum position size by market liquidity". For a
collateral asset a the haircut is the cushion a lender keeps against the price it will sell at. Forcing a
position of value v onto the liquidation venue's books moves those books by the asset's impact model (SPEC §5)
and, through the index weights, the index itself. The position is covered while the index move stays within the
haircut charged on it:

    drop_a(v) = 1 − index_a(after selling v) / index_a(now)   ≤   haircut_a(v) / v

The limit is the largest v that satisfies it (found by a log-spaced scan, then bisection), computed with the same
index and impact kernels as the cascades — so a deviation check that drops the venue's book, or an index that
reads redemption rates, shows up as a higher (or unbounded) limit. Holdings above it are reported per account.

    limits = liquidity_limits(cfg, layout, pv, accounts)   # [{asset, limit_usd, limit_qty, largest_usd, ...}, ...]
"""

from __future__ import annotations

import math

import numpy as np

from liqwatch.kernels.cascade import apply_impact, impact_factors
from liqwatch.kernels.prices import compute_index
from liqwatch.kernels.arrays import IMPACT_NONE, AccountArrays
from liqwatch.config import Config
from liqwatch.core.layout import Layout

SEARCH_MAX_USD = 1e12   # beyond this the index does not feel the venue's depth: "unbounded"
SCAN_POINTS = 121       # log-spaced, $1k .. $1T


def haircut_fraction(brackets: list[tuple[float | None, float]], value: float) -> float:
    """Haircut charged on a position of `value`, by incremental brackets, as a fraction of it."""
    if value <= 0 or not brackets:
        return brackets[0][1] if brackets else 0.0
    charged, below = 0.0, 0.0
    for upto, rate in brackets:
        top = value if upto is None else min(value, upto)
        if top > below:
            charged += rate * (top - below)
        if upto is None or value <= upto:
            break
        below = upto
    return charged / value


def index_drop(layout: Layout, pv, asset: int, venue: int, sold_usd: float) -> float:
    """Relative fall of the asset's index when `sold_usd` of it is sold on the liquidation venue at once."""
    q = pv.quotes
    net = np.zeros(len(layout.assets))
    net[asset] = sold_usd
    factor = np.empty_like(net)
    impact_factors(net, layout.impact_params, factor)
    mid, last = q.mid.copy(), q.last.copy()
    apply_impact(factor, q.base, q.venue, venue, mid, last)
    n_cons = layout.index_params.cons_kind.shape[0]
    index = np.empty_like(pv.index)
    stale = np.empty(index.shape[0], dtype=np.bool_)
    compute_index(float(pv.t), mid, q.ts, q.ref_rate, q.ref_ts, layout.index_params, pv.index, index, stale,
                  np.empty(n_cons), np.empty(n_cons, dtype=np.int8))
    before = pv.index[asset]
    return 0.0 if not before > 0 else max(0.0, 1.0 - index[asset] / before)


def position_limit(cfg: Config, layout: Layout, pv, asset: int) -> tuple[float | None, float]:
    """(largest covered position in USD, or None when unbounded within $1T; the index's sensitivity: its
    relative fall per $1M sold, at small size)."""
    name = layout.assets[asset]
    brackets = [(b.upto, b.rate) for b in cfg.assets[name].haircut]
    venue = layout.venue_id[cfg.liquidation.venue]

    def covered(v: float) -> bool:
        return index_drop(layout, pv, asset, venue, v) <= haircut_fraction(brackets, v) + 1e-12

    sensitivity = index_drop(layout, pv, asset, venue, 1e6)
    grid = np.logspace(3, math.log10(SEARCH_MAX_USD), SCAN_POINTS)
    lo = 0.0
    for v in grid:
        if not covered(float(v)):
            hi = float(v)
            break
        lo = float(v)
    else:
        return None, sensitivity
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if covered(mid):
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-6 * hi:
            break
    return lo, sensitivity


def liquidity_limits(cfg: Config, layout: Layout, pv, accounts: AccountArrays) -> list[dict]:
    """For every collateral asset with an index and an impact model: the limit, and the accounts' holdings
    against it (largest single holding, how many accounts hold more, the total held)."""
    out = []
    cown = accounts.coll_owner
    live = cown >= 0
    live &= accounts.active[np.where(live, cown, 0)]
    for a, name in enumerate(layout.assets):
        spec = cfg.assets.get(name)
        if spec is None or spec.index is None or layout.index_params.fixed_one[a] or \
                layout.impact_params.model[a] == IMPACT_NONE or a == layout.settlement:
            continue
        price = float(pv.index[a])
        if not price > 0:
            continue
        limit, sensitivity = position_limit(cfg, layout, pv, a)
        held = live & (accounts.coll_asset == a)
        per_account = np.zeros(accounts.active.shape[0])
        np.add.at(per_account, cown[held], accounts.coll_qty[held] * price)
        largest = float(per_account.max()) if per_account.size else 0.0
        over = int((per_account > limit).sum()) if limit is not None else 0
        sources = [s for (asset, s) in layout.constituents if asset == name]
        out.append({
            "asset": name, "index": price, "limit_usd": limit,
            "limit_qty": None if limit is None else limit / price,
            "index_drop_per_1m_usd": sensitivity,
            "haircut_at_limit": None if limit is None else haircut_fraction(
                [(b.upto, b.rate) for b in spec.haircut], limit),
            "held_usd": float(per_account.sum()), "largest_usd": largest, "accounts_over_limit": over,
            "held_over_limit_usd": float(per_account[per_account > limit].sum()) if limit is not None else 0.0,
            "sources": sources,
        })
    return out
