"""Margin health of every account in one pass (SPEC §4).

    margin_health(index, mark, accounts, risk, out_equity, out_maintenance, out_health, out_liquidatable)

Per account i:
    collateral value  = Σ q·index_a − haircut(q·index_a)          (haircut by incremental brackets of USD value)
    liabilities       = Σ borrowed q·index_a
    unrealised PnL    = Σ qty·(mark − entry)
    equity E          = collateral value − liabilities + unrealised PnL
    maintenance M     = Σ bracket charge on |qty|·mark  +  Σ borrowed value × maintenance_rate_a
    health            = E / M (NaN when M = 0), liquidatable when E < M.

Example: 1 BTC collateral at index 100,000 with haircut brackets [{upto: 10M, rate: 5%}] → collateral value
95,000; a long of 2 BTCUSDT-PERP entered at 110,000, mark 100,000 → U = −20,000; notional 200,000 over brackets
[50k @ 0.4%, 250k @ 0.5%] → M = 200,000 × 0.005 − 50 = 950; E = 75,000; health 78.9.
"""

import numpy as np
from numba import njit


@njit(cache=True, inline="always")
def bracket_charge(amount, owner, upto, rate, cum):
    k = 0
    for j in range(upto.shape[1] - 1):
        k += amount > upto[owner, j]
    return amount * rate[owner, k] - cum[owner, k]


@njit(cache=True, inline="always")
def account_numbers(i, index, mark, accounts, risk):
    """(equity, maintenance) of account i at the given index and mark prices."""
    value = 0.0
    for j in range(accounts.coll_start[i], accounts.coll_start[i] + accounts.coll_count[i]):
        a = accounts.coll_asset[j]
        v = accounts.coll_qty[j] * index[a]
        value += v - bracket_charge(v, a, risk.haircut_upto, risk.haircut_rate, risk.haircut_cum)
    maintenance = 0.0
    for j in range(accounts.debt_start[i], accounts.debt_start[i] + accounts.debt_count[i]):
        a = accounts.debt_asset[j]
        v = accounts.debt_qty[j] * index[a]
        value -= v
        maintenance += v * risk.borrow_rate[a]
    for j in range(accounts.pos_start[i], accounts.pos_start[i] + accounts.pos_count[i]):
        ins = accounts.pos_instr[j]
        m = mark[ins]
        q = accounts.pos_qty[j]
        value += q * (m - accounts.pos_entry[j])
        maintenance += bracket_charge(abs(q) * m, ins, risk.maint_upto, risk.maint_rate, risk.maint_cum)
    return value, maintenance


@njit(cache=True, inline="always")
def _charge(amount, base, upto, rate, cum, width):
    """`bracket_charge` on tables flattened to 1-D, with `base` = owner × width as an unsigned index (no
    negative-index wraparound to compute) and the width a compile-time constant where `margin_numbers` passes one
    (the compares unrolled)."""
    k = 0
    for j in range(width - 1):
        k += amount > upto[base + np.uint64(j)]
    kk = base + np.uint64(k)
    return amount * rate[kk] - cum[kk]


@njit(cache=True, inline="always")
def _coll_pass(index, owner, asset, qty, upto, rate, cum, out_equity, width):
    w = np.uint64(width)
    for j in range(owner.shape[0]):
        o = owner[j]
        if o < 0:
            continue
        a = np.uint64(asset[j])
        v = qty[j] * index[a]
        out_equity[np.uint64(o)] += v - _charge(v, a * w, upto, rate, cum, width)


@njit(cache=True, inline="always")
def _pos_pass(mark, owner, instr, qty, entry, upto, rate, cum, out_equity, out_maintenance, width):
    w = np.uint64(width)
    for j in range(owner.shape[0]):
        o = owner[j]
        if o < 0:
            continue
        ins = np.uint64(instr[j])
        m = mark[ins]
        q = qty[j]
        uo = np.uint64(o)
        out_equity[uo] += q * (m - entry[j])
        out_maintenance[uo] += _charge(abs(q) * m, ins * w, upto, rate, cum, width)


@njit(cache=True, error_model="numpy", nogil=True)
def margin_numbers(index, mark, accounts, risk, out_equity, out_maintenance):
    """Equity and maintenance of every account row (closed rows: 0, 0).

    Flat passes over the entry pools rather than a loop per account: per-account loops with 1–5 entries
    mispredict their trip counts, and that cost more than the arithmetic (see `liqwatch bench kernels`). The
    passes are bound by instruction count, so the bracket tables are read flattened with unsigned indices and the
    common table widths get a pass of their own with the compares unrolled. Per account the sums run in the same
    order as `account_numbers` (collateral, debt, positions, each in pool order): the numbers are identical."""
    for i in range(accounts.active.shape[0]):
        out_equity[i] = 0.0
        out_maintenance[i] = 0.0
    hu, hr, hc = risk.haircut_upto.ravel(), risk.haircut_rate.ravel(), risk.haircut_cum.ravel()
    co, ca, cq = accounts.coll_owner, accounts.coll_asset, accounts.coll_qty
    hw = risk.haircut_upto.shape[1]
    if hw == 1:
        _coll_pass(index, co, ca, cq, hu, hr, hc, out_equity, 1)
    elif hw == 2:
        _coll_pass(index, co, ca, cq, hu, hr, hc, out_equity, 2)
    elif hw == 3:
        _coll_pass(index, co, ca, cq, hu, hr, hc, out_equity, 3)
    elif hw == 4:
        _coll_pass(index, co, ca, cq, hu, hr, hc, out_equity, 4)
    else:
        _coll_pass(index, co, ca, cq, hu, hr, hc, out_equity, hw)
    for j in range(accounts.debt_owner.shape[0]):
        o = accounts.debt_owner[j]
        if o < 0:
            continue
        a = np.uint64(accounts.debt_asset[j])
        uo = np.uint64(o)
        v = accounts.debt_qty[j] * index[a]
        out_equity[uo] -= v
        out_maintenance[uo] += v * risk.borrow_rate[a]
    mu, mr, mc = risk.maint_upto.ravel(), risk.maint_rate.ravel(), risk.maint_cum.ravel()
    po, pi, pq, pe = accounts.pos_owner, accounts.pos_instr, accounts.pos_qty, accounts.pos_entry
    mw = risk.maint_upto.shape[1]
    if mw == 1:
        _pos_pass(mark, po, pi, pq, pe, mu, mr, mc, out_equity, out_maintenance, 1)
    elif mw == 2:
        _pos_pass(mark, po, pi, pq, pe, mu, mr, mc, out_equity, out_maintenance, 2)
    elif mw == 3:
        _pos_pass(mark, po, pi, pq, pe, mu, mr, mc, out_equity, out_maintenance, 3)
    elif mw == 4:
        _pos_pass(mark, po, pi, pq, pe, mu, mr, mc, out_equity, out_maintenance, 4)
    elif mw == 5:
        _pos_pass(mark, po, pi, pq, pe, mu, mr, mc, out_equity, out_maintenance, 5)
    elif mw == 6:
        _pos_pass(mark, po, pi, pq, pe, mu, mr, mc, out_equity, out_maintenance, 6)
    else:
        _pos_pass(mark, po, pi, pq, pe, mu, mr, mc, out_equity, out_maintenance, mw)


@njit(cache=True, error_model="numpy", nogil=True)
def margin_health(index, mark, accounts, risk, out_equity, out_maintenance, out_health, out_liquidatable):
    margin_numbers(index, mark, accounts, risk, out_equity, out_maintenance)
    for i in range(accounts.active.shape[0]):  # branch-free, so that it vectorises
        e = out_equity[i]
        m = out_maintenance[i]
        live = accounts.active[i]
        h = e / m
        out_health[i] = h if live and m > 0.0 else np.nan
        out_equity[i] = e if live else np.nan
        out_maintenance[i] = m if live else np.nan
        out_liquidatable[i] = live and e < m


@njit(cache=True, error_model="numpy", nogil=True)
def exposure_summary(index, mark, accounts, risk, cluster_health, out_collateral_by_asset, work_equity,
                     work_maintenance):
    """What alerts watch across the accounts: (liquidatable notional, notional of the margin cluster — accounts with
    1 ≤ health < cluster_health —, notional of all active accounts), and the collateral value held per asset
    (added to `out_collateral_by_asset`). An account's notional is its positions' |qty|·mark plus its collateral
    value."""
    margin_numbers(index, mark, accounts, risk, work_equity, work_maintenance)
    n = accounts.active.shape[0]
    state = np.zeros(n, dtype=np.int8)  # 1 liquidatable, 2 in the cluster
    for i in range(n):
        if not accounts.active[i]:
            continue
        e = work_equity[i]
        m = work_maintenance[i]
        if e < m:
            state[i] = 1
        elif m > 0.0 and e < cluster_health * m:
            state[i] = 2
    liquidatable = 0.0
    cluster = 0.0
    total = 0.0
    for j in range(accounts.pos_owner.shape[0]):
        o = accounts.pos_owner[j]
        if o < 0 or not accounts.active[o]:
            continue
        v = abs(accounts.pos_qty[j]) * mark[accounts.pos_instr[j]]
        total += v
        if state[o] == 1:
            liquidatable += v
        elif state[o] == 2:
            cluster += v
    for j in range(accounts.coll_owner.shape[0]):
        o = accounts.coll_owner[j]
        if o < 0 or not accounts.active[o]:
            continue
        a = accounts.coll_asset[j]
        v = accounts.coll_qty[j] * index[a]
        out_collateral_by_asset[a] += v
        total += v
        if state[o] == 1:
            liquidatable += v
        elif state[o] == 2:
            cluster += v
    return liquidatable, cluster, total
