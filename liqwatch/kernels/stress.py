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
"""

import numpy as np
from numba import njit

from liqwatch.kernels.health import account_numbers
from liqwatch.kernels.prices import compute_index, compute_marks

SEVERITY_TOLERANCE = 1e-6


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


@njit(cache=True, nogil=True)  # nogil: workers run it in a thread while the event loop keeps consuming
def liquidation_severity(t, s_max, n_grid, direction, quotes, index_params, mark_params, base_index,
                         accounts, risk, out_severity):
    n_assets = base_index.shape[0]
    n_instr = mark_params.underlying.shape[0]
    n_slots = quotes.mid.shape[0]
    n_cons = index_params.cons_kind.shape[0]
    work_mid = np.empty(n_slots)
    work_last = np.empty(n_slots)
    stale = np.empty(n_assets, dtype=np.bool_)
    sprice = np.empty(n_cons)
    sstatus = np.empty(n_cons, dtype=np.int8)
    grid_index = np.empty((n_grid, n_assets))
    grid_mark = np.empty((n_grid, n_instr))
    step = s_max / (n_grid - 1)
    for g in range(n_grid):
        stressed_prices(t, g * step, direction, quotes, index_params, mark_params, base_index,
                        work_mid, work_last, grid_index[g], stale, sprice, sstatus, grid_mark[g])
    index = np.empty(n_assets)
    mark = np.empty(n_instr)
    for i in range(accounts.active.shape[0]):
        out_severity[i] = np.nan
        if not accounts.active[i]:
            continue
        first = -1
        for g in range(n_grid):
            e, m = account_numbers(i, grid_index[g], grid_mark[g], accounts, risk)
            if e < m:
                first = g
                break
        if first < 0:
            continue
        if first == 0:
            out_severity[i] = 0.0
            continue
        lo = (first - 1) * step
        hi = first * step
        while hi - lo > SEVERITY_TOLERANCE:
            s = 0.5 * (lo + hi)
            stressed_prices(t, s, direction, quotes, index_params, mark_params, base_index,
                            work_mid, work_last, index, stale, sprice, sstatus, mark)
            e, m = account_numbers(i, index, mark, accounts, risk)
            if e < m:
                hi = s
            else:
                lo = s
        out_severity[i] = hi
