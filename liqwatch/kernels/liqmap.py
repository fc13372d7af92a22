"""Liquidation map: for one underlying, what would be force-liquidated if its prices moved to each level.

    liquidation_map(t, u, factors, now, quotes, index_params, mark_params, base_index, accounts, risk,
                    out_index, out_accounts, out_long, out_short, out_collateral, out_added)

Level k moves every venue price of asset u by factors[k] (the shock of SPEC §5 step 1 with the direction 1 on u
alone: books in u, its perpetuals' books, and through the index the assets priced from them), recomputes the
indices and marks, and takes the accounts liquidatable there (E < M, those already liquidatable included): exactly
round 1 of the cascade of that shock, without impact. Per level: those accounts, the notional of their longs
(sold) and of their shorts (bought) at the level's marks, and their non-settlement collateral at the level's
indices (sold) — and u's index there; the §5 `liquidated_notional` of round 1 is the sum of the three. From the real accounts in
cross margin, not from leverage guesses: a long is in the map at the level where its account falls, whatever
else the account holds.

`factors` ascending, factors[now] = 1 (the current prices). The heatmap's cell, `out_added[k]`: the notional (at
level k's prices) of the accounts liquidatable at level k but not at the level next nearer to the current price
(k + 1 below it, k − 1 above it); at `now`, of the accounts liquidatable already.
"""

import numpy as np
from numba import njit

from liqwatch.kernels.prices import index_scratch
from liqwatch.kernels.stress import _grid_numbers, _stressed_into


@njit(cache=True, nogil=True)  # nogil: the worker runs it in a thread beside the feed
def liquidation_map(t, u, factors, now, quotes, index_params, mark_params, base_index, accounts, risk,
                    out_index, out_accounts, out_long, out_short, out_collateral, out_added):
    n_assets = base_index.shape[0]
    n_instr = mark_params.underlying.shape[0]
    k = factors.shape[0]
    direction = np.zeros(n_assets)
    direction[u] = 1.0
    work_mid = np.empty(quotes.mid.shape[0])
    work_last = np.empty(quotes.mid.shape[0])
    stale = np.empty(n_assets, dtype=np.bool_)
    sprice = np.empty(index_params.cons_kind.shape[0])
    sstatus = np.empty(index_params.cons_kind.shape[0], dtype=np.int8)
    sp, sw = index_scratch(index_params)
    v3 = np.empty(3)
    index = np.empty(n_assets)
    mark = np.empty(n_instr)
    grid_index = np.empty((n_assets, k))  # asset × level, as the severity scan reads them
    grid_mark = np.empty((n_instr, k))
    for g in range(k):
        _stressed_into(t, factors[g] - 1.0, direction, quotes, index_params, mark_params, base_index, work_mid,
                       work_last, index, stale, sprice, sstatus, mark, sp, sw, v3)
        grid_index[:, g] = index
        grid_mark[:, g] = mark
        out_index[g] = index[u]
    out_accounts[:] = 0
    out_long[:] = 0.0
    out_short[:] = 0.0
    out_collateral[:] = 0.0
    out_added[:] = 0.0
    eq = np.empty(k)
    mt = np.empty(k)
    for i in range(accounts.active.shape[0]):
        if not accounts.active[i]:
            continue
        _grid_numbers(i, grid_index, grid_mark, accounts, risk, eq, mt)
        for g in range(k):
            if not eq[g] < mt[g]:
                continue
            out_accounts[g] += 1
            notional = 0.0
            for j in range(accounts.pos_start[i], accounts.pos_start[i] + accounts.pos_count[i]):
                flow = accounts.pos_qty[j] * grid_mark[accounts.pos_instr[j], g]
                if flow > 0.0:
                    out_long[g] += flow
                else:
                    out_short[g] -= flow
                notional += abs(flow)
            for j in range(accounts.coll_start[i], accounts.coll_start[i] + accounts.coll_count[i]):
                a = accounts.coll_asset[j]
                if a != risk.settlement:
                    v = accounts.coll_qty[j] * grid_index[a, g]
                    out_collateral[g] += v
                    notional += v
            nearer = g + 1 if g < now else g - 1
            if g == now or not eq[nearer] < mt[nearer]:
                out_added[g] += notional
