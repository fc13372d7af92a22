"""Liquidation and bankruptcy price of every position (cross margin).

    position_prices(index, mark, accounts, risk, follows, out_liquidation, out_bankruptcy)

A position's liquidation price is the mark of its instrument at which its account's health reaches 1 (E = M),
its bankruptcy price the mark at which the account's equity reaches 0, when the position's underlying u moves and
everything else is held. What moves with u, by the same factor f = price / mark:
- the mark of every instrument on u (a BTCUSDT and a BTCUSDC perpetual move together);
- the index of u and of every asset that redeems into u (`follows[a] == u`: WBETH collateral moves with an ETH
  short, one for one), as collateral and as debt.
Held: every other index and mark (the settlement asset, other underlyings), the entries, the haircut and
maintenance tables.

E(f) − M(f) is piecewise linear in f: each moving entry's amount is its amount now × f, and a bracketed charge
is linear inside a bracket. So the root is exact: walk the brackets' breakpoints from f = 1 in the direction
that hurts the position (down for a long, up for a short) and solve the segment's line where the sign changes.
An account already below (E < M) gets the price at which it would be back at 1, the other way. NaN where no such
price exists (a long whose account survives any fall; a short hedged by collateral that rises with it).

Binance's one-way-mode formula and Hyperliquid's are this root for an account whose only exposure to the
underlying is the position (`tests/kernels/test_positions.py`); they hold other positions on the same underlying
fixed, this moves them.
"""

import numpy as np
from numba import njit

from liqwatch.kernels.health import account_numbers, bracket_charge


@njit(cache=True, inline="always")
def _moves(a, u, follows):
    return a == u or follows[a] == u


@njit(cache=True, inline="always")
def _bracket(amount, owner, upto):
    k = 0
    for j in range(upto.shape[1] - 1):
        k += amount > upto[owner, j]
    return k


@njit(cache=True)
def _held(i, u, index, mark, accounts, risk, follows, wm):
    """The part of E − wm·M that does not move with u (its value now)."""
    held = 0.0
    for j in range(accounts.coll_start[i], accounts.coll_start[i] + accounts.coll_count[i]):
        a = accounts.coll_asset[j]
        if not _moves(a, u, follows):
            v = accounts.coll_qty[j] * index[a]
            held += v - bracket_charge(v, a, risk.haircut_upto, risk.haircut_rate, risk.haircut_cum)
    for j in range(accounts.debt_start[i], accounts.debt_start[i] + accounts.debt_count[i]):
        a = accounts.debt_asset[j]
        if not _moves(a, u, follows):
            v = accounts.debt_qty[j] * index[a]
            held -= v + wm * v * risk.borrow_rate[a]
    for j in range(accounts.pos_start[i], accounts.pos_start[i] + accounts.pos_count[i]):
        ins = accounts.pos_instr[j]
        if not _moves(risk.underlying[ins], u, follows):
            m = mark[ins]
            q = accounts.pos_qty[j]
            held += q * (m - accounts.pos_entry[j])
            held -= wm * bracket_charge(abs(q) * m, ins, risk.maint_upto, risk.maint_rate, risk.maint_cum)
    return held


@njit(cache=True)
def _line(i, u, f, held, index, mark, accounts, risk, follows, wm):
    """E − wm·M as alpha + gamma·f on the segment holding f (brackets taken at f)."""
    alpha, gamma = held, 0.0
    for j in range(accounts.coll_start[i], accounts.coll_start[i] + accounts.coll_count[i]):
        a = accounts.coll_asset[j]
        if _moves(a, u, follows):
            amount = accounts.coll_qty[j] * index[a]
            k = _bracket(amount * f, a, risk.haircut_upto)
            gamma += amount * (1.0 - risk.haircut_rate[a, k])  # v − (v·rate − cum)
            alpha += risk.haircut_cum[a, k]
    for j in range(accounts.debt_start[i], accounts.debt_start[i] + accounts.debt_count[i]):
        a = accounts.debt_asset[j]
        if _moves(a, u, follows):
            gamma -= accounts.debt_qty[j] * index[a] * (1.0 + wm * risk.borrow_rate[a])
    for j in range(accounts.pos_start[i], accounts.pos_start[i] + accounts.pos_count[i]):
        ins = accounts.pos_instr[j]
        if _moves(risk.underlying[ins], u, follows):
            q = accounts.pos_qty[j]
            m = mark[ins]
            gamma += q * m
            alpha -= q * accounts.pos_entry[j]
            if wm != 0.0:
                notional = abs(q) * m
                k = _bracket(notional * f, ins, risk.maint_upto)
                gamma -= notional * risk.maint_rate[ins, k]
                alpha += risk.maint_cum[ins, k]
    return alpha, gamma


@njit(cache=True, inline="always")
def _nearer(best, f, top, down):
    """f if it lies between `top` and the best breakpoint so far, in the direction searched; else best."""
    if down:
        return f if best < f < top else best
    return f if top < f < best else best


@njit(cache=True)
def _next_break(i, u, top, down, index, mark, accounts, risk, follows, wm):
    """The nearest factor beyond `top` (below it going down, above going up) at which a moving entry crosses a
    bracket upper; 0 or inf when there is none."""
    best = 0.0 if down else np.inf
    for j in range(accounts.coll_start[i], accounts.coll_start[i] + accounts.coll_count[i]):
        a = accounts.coll_asset[j]
        if _moves(a, u, follows):
            amount = accounts.coll_qty[j] * index[a]
            if amount > 0.0:
                for b in range(risk.haircut_upto.shape[1] - 1):
                    best = _nearer(best, risk.haircut_upto[a, b] / amount, top, down)
    if wm != 0.0:
        for j in range(accounts.pos_start[i], accounts.pos_start[i] + accounts.pos_count[i]):
            ins = accounts.pos_instr[j]
            if _moves(risk.underlying[ins], u, follows):
                notional = abs(accounts.pos_qty[j]) * mark[ins]
                if notional > 0.0:
                    for b in range(risk.maint_upto.shape[1] - 1):
                        best = _nearer(best, risk.maint_upto[ins, b] / notional, top, down)
    return best


@njit(cache=True)
def root_factor(i, u, long, g1, index, mark, accounts, risk, follows, wm):
    """The factor f of u's prices at which E − wm·M of account i reaches 0 (wm = 1: health 1; wm = 0: equity 0;
    g1 its value now), nearest 1 on the side that hurts a long (down) or a short (up), or on the other side when it
    is already below; NaN when there is none at a positive price."""
    if not np.isfinite(g1):
        return np.nan
    if g1 == 0.0:
        return 1.0
    down = long if g1 > 0.0 else not long
    sign = 1.0 if g1 > 0.0 else -1.0
    held = _held(i, u, index, mark, accounts, risk, follows, wm)
    top = 1.0
    while True:  # segment by segment: between two breakpoints E − wm·M is one line
        end = _next_break(i, u, top, down, index, mark, accounts, risk, follows, wm)
        last = end == 0.0 or end == np.inf
        inside = 2.0 * top if end == np.inf else 0.5 * (top + end)
        alpha, gamma = _line(i, u, inside, held, index, mark, accounts, risk, follows, wm)
        if end == np.inf:
            crossed = sign * gamma < 0.0  # the last segment goes on forever: crossed when it heads to the root
        else:
            crossed = sign * (alpha + gamma * end) <= 0.0
        if crossed and gamma != 0.0:
            f = -alpha / gamma
            lo, hi = (end, top) if down else (top, end)
            f = min(max(f, lo), hi)  # rounding may put the line's root a hair outside its segment
            return f if f > 0.0 else np.nan
        if last:
            return np.nan
        top = end


@njit(cache=True, nogil=True)
def position_prices(index, mark, accounts, risk, follows, out_liquidation, out_bankruptcy):
    """Liquidation and bankruptcy price of every position-pool entry (NaN for garbage entries, closed accounts,
    a position without a mark, and where no such price exists)."""
    out_liquidation[:] = np.nan
    out_bankruptcy[:] = np.nan
    for i in range(accounts.active.shape[0]):
        _account_prices(i, index, mark, accounts, risk, follows, out_liquidation, out_bankruptcy)


@njit(cache=True, nogil=True)
def position_prices_of(rows, index, mark, accounts, risk, follows, out_liquidation, out_bankruptcy):
    """`position_prices` of the accounts `rows` only (the entries of the others are left as they are)."""
    for i in rows:
        for p in range(accounts.pos_start[i], accounts.pos_start[i] + accounts.pos_count[i]):
            out_liquidation[p] = np.nan
            out_bankruptcy[p] = np.nan
        _account_prices(i, index, mark, accounts, risk, follows, out_liquidation, out_bankruptcy)


@njit(cache=True, inline="always")
def _account_prices(i, index, mark, accounts, risk, follows, out_liquidation, out_bankruptcy):
    if accounts.active[i] and accounts.pos_count[i] > 0:
        e, m = account_numbers(i, index, mark, accounts, risk)
        start = accounts.pos_start[i]
        for p in range(start, start + accounts.pos_count[i]):
            q = accounts.pos_qty[p]
            ins = accounts.pos_instr[p]
            mp = mark[ins]
            if q == 0.0 or not (mp > 0.0 and np.isfinite(mp)):
                continue
            u = risk.underlying[ins]
            same = -1  # an earlier position on the same underlying and side has the same factors
            for r in range(start, p):
                if risk.underlying[accounts.pos_instr[r]] == u and (accounts.pos_qty[r] > 0.0) == (q > 0.0) \
                        and np.isfinite(mark[accounts.pos_instr[r]]) and mark[accounts.pos_instr[r]] > 0.0:
                    same = r
                    break
            if same >= 0:
                ms = mark[accounts.pos_instr[same]]
                out_liquidation[p] = mp * (out_liquidation[same] / ms)
                out_bankruptcy[p] = mp * (out_bankruptcy[same] / ms)
                continue
            out_liquidation[p] = mp * root_factor(i, u, q > 0.0, e - m, index, mark, accounts, risk, follows, 1.0)
            out_bankruptcy[p] = mp * root_factor(i, u, q > 0.0, e, index, mark, accounts, risk, follows, 0.0)


ADL_BINANCE = 0
ADL_HYPERLIQUID = 1


@njit(cache=True, inline="always")
def adl_key(rule, q, m, entry, e, room):
    """One position's ADL queue key (`adl_keys`): qty q at mark m entered at `entry`, in an account of equity e,
    with `room` = its mark value − its bankruptcy value (Binance's effective-leverage denominator)."""
    value = q * m
    if rule == ADL_HYPERLIQUID:
        ratio = m / entry if q > 0.0 else entry / m
        return ratio * abs(value) / e if e > 0.0 else np.inf  # no account value left: first
    pnl = (value - q * entry) / abs(q * entry)
    lev = abs(value) / room if room > 0.0 else np.inf
    return pnl * lev if pnl > 0.0 else (pnl / lev if lev > 0.0 else pnl)


@njit(cache=True, nogil=True)
def adl_keys(mark, accounts, risk, index, bankruptcy, rule, out_key):
    """Each position's place in its venue's auto-deleveraging queue, as a number to sort by (higher: deleveraged
    first; NaN for garbage entries and positions without a mark):

    - Binance: PnL% × effective leverage when PnL% > 0, else PnL% / effective leverage, with PnL% = (mark value −
      entry value) / |entry value| and effective leverage = |mark value| / (mark value − bankruptcy value), the
      values qty × price. A position that no price bankrupts (`bankruptcy` NaN) has |mark value| / equity.
    - Hyperliquid: (mark / entry) × (notional / account value) for a long; its mirror (entry / mark) for a short,
      so that, as the docs say, more profit and more leverage come first.
    """
    out_key[:] = np.nan
    for i in range(accounts.active.shape[0]):
        _account_keys(i, mark, accounts, risk, index, bankruptcy, rule, out_key)


@njit(cache=True, nogil=True)
def adl_keys_of(rows, mark, accounts, risk, index, bankruptcy, rule, out_key):
    """`adl_keys` of the accounts `rows` only."""
    for i in rows:
        out_key[accounts.pos_start[i]:accounts.pos_start[i] + accounts.pos_count[i]] = np.nan
        _account_keys(i, mark, accounts, risk, index, bankruptcy, rule, out_key)


@njit(cache=True, inline="always")
def _account_keys(i, mark, accounts, risk, index, bankruptcy, rule, out_key):
    if accounts.active[i] and accounts.pos_count[i] > 0:
        e, _ = account_numbers(i, index, mark, accounts, risk)
        for p in range(accounts.pos_start[i], accounts.pos_start[i] + accounts.pos_count[i]):
            q = accounts.pos_qty[p]
            m = mark[accounts.pos_instr[p]]
            entry = accounts.pos_entry[p]
            if q == 0.0 or not (m > 0.0 and np.isfinite(m)) or not entry > 0.0:
                continue
            b = bankruptcy[p]
            out_key[p] = adl_key(rule, q, m, entry, e, q * m - q * b if np.isfinite(b) else e)
