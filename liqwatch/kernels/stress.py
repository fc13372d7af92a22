"""Stress: shocked prices, and each account's liquidation severity (SPEC §4, §5 step 1).

    stressed_prices(t, s, direction, quotes, index_params, mark_params, base_index, work...)
    liquidation_severity(t, s_max, n_grid, direction, quotes, index_params, mark_params, base_index, accounts,
                         risk, out)

A shock of severity s moves every venue price of asset a by (1 + d_a·s) (d from the scenario); an instrument's
own book moves with its underlying; reference rates stay. Indices and marks are then recomputed by the same
kernels as live prices, so a redemption-weighted index moves only with its `in` asset.

Liquidation severity of an account: the smallest s in [0, s_max] at which it is liquidatable without any cascade.
Health is not monotone in s for every account (a short gains), so a coarse scan over `n_grid` evenly spaced
severities finds the first liquidatable one, then bisection narrows the step below it to 1e-6. 0 means
liquidatable already; NaN means not within s_max.

The bisection midpoints of an account depend only on its grid cell and its left/right path, so the accounts of one
cell walk one binary tree together: each visited node's stressed prices are computed once for all accounts at it
(about 0.4M evaluations of the market for 1M accounts instead of 3M), and the result is the per-account
bisection's, bit for bit. Example: two accounts in cell 5 share the midpoint of cell 5 and every later midpoint
until their decisions differ.
"""

import numpy as np
from numba import njit

from liqwatch.kernels.arrays import AccountArrays
from liqwatch.kernels.health import account_numbers
from liqwatch.kernels.prices import compute_index, compute_marks, index_into, index_scratch, marks_into

SEVERITY_TOLERANCE = 1e-6
BISECT_BATCH = 8192  # accounts bisected together: their entries, copied together, stay in cache (~1 MB)


@njit(cache=True)
def shock_books(mid, last, base, direction, s, out_mid, out_last):
    for k in range(mid.shape[0]):
        b = base[k]
        f = 1.0
        if b >= 0:
            f = max(1.0 + direction[b] * s, 0.0)
        out_mid[k] = mid[k] * f
        out_last[k] = last[k] * f


@njit(cache=True)
def stressed_prices(t, s, direction, quotes, index_params, mark_params, base_index,
                    work_mid, work_last, out_index, out_stale, out_source_price, out_source_status, out_mark):
    """Index and mark after a shock of severity s; `base_index` (the unshocked index) is the fallback of an
    index left without survivors."""
    shock_books(quotes.mid, quotes.last, quotes.base, direction, s, work_mid, work_last)
    compute_index(t, work_mid, quotes.ts, quotes.ref_rate, quotes.ref_ts, index_params, base_index,
                  out_index, out_stale, out_source_price, out_source_status)
    compute_marks(t, work_last, quotes.funding_rate, quotes.next_funding_ts, quotes.basis_ma, out_index,
                  mark_params, out_mark)


@njit(cache=True, inline="always")
def _stressed_into(t, s, direction, quotes, index_params, mark_params, base_index, work_mid, work_last,
                   out_index, stale, sprice, sstatus, out_mark, sp, sw, v):
    """`stressed_prices` with the index and mark scratch given: the same numbers, no allocation per call."""
    shock_books(quotes.mid, quotes.last, quotes.base, direction, s, work_mid, work_last)
    index_into(t, work_mid, quotes.ts, quotes.ref_rate, quotes.ref_ts, index_params, base_index,
               out_index, stale, sprice, sstatus, sp, sw)
    marks_into(t, work_last, quotes.funding_rate, quotes.next_funding_ts, quotes.basis_ma, out_index,
               mark_params, out_mark, v)


@njit(cache=True, inline="always")
def _charge(amount, o, upto, rate, cum, width):
    """`bracket_charge`: the same count of uppers below the amount, the same amount·rate − cum; the rate and cum
    picked by selects rather than a lookup, so that a loop over grid points around it vectorises when `width` is a
    constant (the bracket loops unrolled)."""
    k = 0
    for j in range(width - 1):
        k += amount > upto[o, j]
    r = rate[o, 0]
    c = cum[o, 0]
    for j in range(1, width):
        rj = rate[o, j]
        cj = cum[o, j]
        r = rj if k == j else r
        c = cj if k == j else c
    return amount * r - c


@njit(cache=True, inline="always")
def _coll_lanes(q, px, a, risk, eq, width):
    for g in range(eq.shape[0]):
        v = q * px[g]
        eq[g] += v - _charge(v, a, risk.haircut_upto, risk.haircut_rate, risk.haircut_cum, width)


@njit(cache=True, inline="always")
def _pos_lanes(q, entry, px, ins, risk, eq, mt, width):
    for g in range(eq.shape[0]):
        m = px[g]
        eq[g] += q * (m - entry)
        mt[g] += _charge(abs(q) * m, ins, risk.maint_upto, risk.maint_rate, risk.maint_cum, width)


@njit(cache=True)
def _grid_numbers(i, grid_index, grid_mark, accounts, risk, eq, mt):
    """`account_numbers` of account i at every grid point at once (`grid_index` is asset × grid, `grid_mark`
    instrument × grid): per grid point the same operations in the same order. The account's entries are read once
    and the loops run over the grid, with a fixed trip count (per grid point, the entry loops' varying counts are
    mispredicted) and the bracket widths up to 5 as constants, so that they vectorise."""
    for g in range(eq.shape[0]):
        eq[g] = 0.0
        mt[g] = 0.0
    hw = risk.haircut_upto.shape[1]
    for j in range(accounts.coll_start[i], accounts.coll_start[i] + accounts.coll_count[i]):
        a = accounts.coll_asset[j]
        q = accounts.coll_qty[j]
        px = grid_index[a]
        if hw == 1:
            _coll_lanes(q, px, a, risk, eq, 1)
        elif hw == 2:
            _coll_lanes(q, px, a, risk, eq, 2)
        elif hw == 3:
            _coll_lanes(q, px, a, risk, eq, 3)
        elif hw == 4:
            _coll_lanes(q, px, a, risk, eq, 4)
        elif hw == 5:
            _coll_lanes(q, px, a, risk, eq, 5)
        else:
            _coll_lanes(q, px, a, risk, eq, hw)
    for j in range(accounts.debt_start[i], accounts.debt_start[i] + accounts.debt_count[i]):
        a = accounts.debt_asset[j]
        q = accounts.debt_qty[j]
        rate = risk.borrow_rate[a]
        px = grid_index[a]
        for g in range(eq.shape[0]):
            v = q * px[g]
            eq[g] -= v
            mt[g] += v * rate
    mw = risk.maint_upto.shape[1]
    for j in range(accounts.pos_start[i], accounts.pos_start[i] + accounts.pos_count[i]):
        ins = accounts.pos_instr[j]
        q = accounts.pos_qty[j]
        entry = accounts.pos_entry[j]
        px = grid_mark[ins]
        if mw == 1:
            _pos_lanes(q, entry, px, ins, risk, eq, mt, 1)
        elif mw == 2:
            _pos_lanes(q, entry, px, ins, risk, eq, mt, 2)
        elif mw == 3:
            _pos_lanes(q, entry, px, ins, risk, eq, mt, 3)
        elif mw == 4:
            _pos_lanes(q, entry, px, ins, risk, eq, mt, 4)
        elif mw == 5:
            _pos_lanes(q, entry, px, ins, risk, eq, mt, 5)
        else:
            _pos_lanes(q, entry, px, ins, risk, eq, mt, mw)


@njit(cache=True)
def _gather(accounts, rows):
    """The accounts `rows` as a compact AccountArrays of their own (row j = account rows[j]), entries in the same
    order: the batch bisected together is read from a few contiguous arrays instead of all over the pools."""
    m = rows.shape[0]
    coll_start = np.empty(m, dtype=np.int32)
    debt_start = np.empty(m, dtype=np.int32)
    pos_start = np.empty(m, dtype=np.int32)
    coll_count = np.empty(m, dtype=np.int32)
    debt_count = np.empty(m, dtype=np.int32)
    pos_count = np.empty(m, dtype=np.int32)
    nc = 0
    nd = 0
    npos = 0
    for j in range(m):
        i = rows[j]
        coll_start[j] = nc
        debt_start[j] = nd
        pos_start[j] = npos
        coll_count[j] = accounts.coll_count[i]
        debt_count[j] = accounts.debt_count[i]
        pos_count[j] = accounts.pos_count[i]
        nc += coll_count[j]
        nd += debt_count[j]
        npos += pos_count[j]
    coll_asset = np.empty(nc, dtype=np.int32)
    coll_qty = np.empty(nc)
    coll_owner = np.empty(nc, dtype=np.int32)
    debt_asset = np.empty(nd, dtype=np.int32)
    debt_qty = np.empty(nd)
    debt_owner = np.empty(nd, dtype=np.int32)
    pos_instr = np.empty(npos, dtype=np.int32)
    pos_qty = np.empty(npos)
    pos_entry = np.empty(npos)
    pos_owner = np.empty(npos, dtype=np.int32)
    for j in range(m):
        i = rows[j]
        for k in range(coll_count[j]):
            src = accounts.coll_start[i] + k
            dst = coll_start[j] + k
            coll_asset[dst] = accounts.coll_asset[src]
            coll_qty[dst] = accounts.coll_qty[src]
            coll_owner[dst] = j
        for k in range(debt_count[j]):
            src = accounts.debt_start[i] + k
            dst = debt_start[j] + k
            debt_asset[dst] = accounts.debt_asset[src]
            debt_qty[dst] = accounts.debt_qty[src]
            debt_owner[dst] = j
        for k in range(pos_count[j]):
            src = accounts.pos_start[i] + k
            dst = pos_start[j] + k
            pos_instr[dst] = accounts.pos_instr[src]
            pos_qty[dst] = accounts.pos_qty[src]
            pos_entry[dst] = accounts.pos_entry[src]
            pos_owner[dst] = j
    return AccountArrays(np.ones(m, dtype=np.bool_), coll_start, coll_count, coll_asset, coll_qty, coll_owner,
                         debt_start, debt_count, debt_asset, debt_qty, debt_owner,
                         pos_start, pos_count, pos_instr, pos_qty, pos_entry, pos_owner)


@njit(cache=True, nogil=True)  # nogil: workers run it in a thread while the event loop keeps consuming
def liquidation_severity(t, s_max, n_grid, direction, quotes, index_params, mark_params, base_index,
                         accounts, risk, out_severity):
    n = accounts.active.shape[0]
    n_assets = base_index.shape[0]
    n_instr = mark_params.underlying.shape[0]
    n_slots = quotes.mid.shape[0]
    n_cons = index_params.cons_kind.shape[0]
    work_mid = np.empty(n_slots)
    work_last = np.empty(n_slots)
    stale = np.empty(n_assets, dtype=np.bool_)
    sprice = np.empty(n_cons)
    sstatus = np.empty(n_cons, dtype=np.int8)
    sp, sw = index_scratch(index_params)
    v3 = np.empty(3)
    index = np.empty(n_assets)
    mark = np.empty(n_instr)
    # the grid transposed (asset × grid point), so that an account's scan reads one row per entry
    grid_index = np.empty((n_assets, n_grid))
    grid_mark = np.empty((n_instr, n_grid))
    step = s_max / (n_grid - 1)
    for g in range(n_grid):
        _stressed_into(t, g * step, direction, quotes, index_params, mark_params, base_index, work_mid, work_last,
                       index, stale, sprice, sstatus, mark, sp, sw, v3)
        grid_index[:, g] = index
        grid_mark[:, g] = mark

    # scan: each account's first liquidatable grid point
    first = np.full(n, -1, dtype=np.int32)
    count = np.zeros(n_grid + 1, dtype=np.int64)
    eq = np.empty(n_grid)
    mt = np.empty(n_grid)
    for i in range(n):
        out_severity[i] = np.nan
        if not accounts.active[i]:
            continue
        _grid_numbers(i, grid_index, grid_mark, accounts, risk, eq, mt)
        for g in range(n_grid):
            if eq[g] < mt[g]:
                first[i] = g
                count[g + 1] += 1
                break
        if first[i] == 0:
            out_severity[i] = 0.0

    # the accounts of each cell (first ≥ 1) together, cell by cell
    for g in range(n_grid):
        count[g + 1] += count[g]
    fill = count[:n_grid].copy()
    cell = np.empty(count[n_grid], dtype=np.int32)
    for i in range(n):
        g = first[i]
        if g >= 1:
            cell[fill[g]] = i
            fill[g] += 1

    # bisection, one tree per cell (per batch of a cell's accounts): a node holds the accounts whose path leads
    # to it (batch rows order[a:b]); its midpoint's prices are computed once, the liquidatable accounts go left
    # (hi = s), the others right (lo = s)
    stack = [(0.0, 0.0, 0, 0)]
    stack.pop()
    for g in range(1, n_grid):
        for start in range(count[g], count[g + 1], BISECT_BATCH):
            rows = cell[start:min(start + BISECT_BATCH, count[g + 1])]
            batch = _gather(accounts, rows)
            order = np.arange(rows.shape[0])
            stack.append(((g - 1) * step, g * step, 0, rows.shape[0]))
            while len(stack) > 0:
                lo, hi, a, b = stack.pop()
                if not hi - lo > SEVERITY_TOLERANCE:
                    for p in range(a, b):
                        out_severity[rows[order[p]]] = hi
                    continue
                s = 0.5 * (lo + hi)
                _stressed_into(t, s, direction, quotes, index_params, mark_params, base_index, work_mid, work_last,
                               index, stale, sprice, sstatus, mark, sp, sw, v3)
                left = a
                for p in range(a, b):
                    j = order[p]
                    e, m = account_numbers(j, index, mark, batch, risk)
                    if e < m:
                        order[p] = order[left]
                        order[left] = j
                        left += 1
                if left > a:
                    stack.append((lo, s, a, left))
                if b > left:
                    stack.append((s, hi, left, b))
