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
from llvmlite import ir
from numba import njit
from numba.core import types
from numba.extending import intrinsic


def _above(lanes):
    """An intrinsic `above(amount, table, base)`: how many of table[base : base + lanes] the amount is above (`>`,
    so NaN is above none), as one vector compare + movemask + popcount instead of `lanes` scalar compares each
    with its setcc and add. The same predicate (fcmp ogt) lane by lane as the scalar `amount > upper`."""
    @intrinsic
    def above(typingctx, amount, table, base):
        sig = types.int64(types.float64, table, types.uint64)

        def codegen(context, builder, signature, args):
            amount, table_v, base = args
            data = context.make_array(signature.args[1])(context, builder, value=table_v).data
            vt = ir.VectorType(ir.DoubleType(), lanes)
            row = builder.load(builder.bitcast(builder.gep(data, [base]), vt.as_pointer()), align=8, typ=vt)
            one = builder.insert_element(ir.Constant(vt, ir.Undefined), amount, ir.Constant(ir.IntType(32), 0))
            splat = builder.shuffle_vector(one, ir.Constant(vt, ir.Undefined),
                                           ir.Constant(ir.VectorType(ir.IntType(32), lanes), [0] * lanes))
            bits = builder.bitcast(builder.fcmp_ordered(">", splat, row), ir.IntType(lanes))
            return builder.zext(builder.ctpop(bits), ir.IntType(64))

        return sig, codegen
    return above


_above4 = _above(4)
_above8 = _above(8)


@njit(cache=True, inline="always")
def _rows(upto, rate, cum, price, lanes):
    """The bracket tables and the prices as one row of 4 × `lanes` floats per owner (asset or instrument): the
    uppers compared (padded with inf, which no amount is above: the last upper, never compared, is padding too),
    the (rate, cum) pairs of brackets 0..lanes, the price last. One base pointer for all a pass reads per entry
    besides the entry itself (fewer registers: no spills in the loops)."""
    rows, width = upto.shape
    size = 4 * lanes
    t = np.full(rows * size, np.inf)
    for r in range(rows):
        b = r * size
        for j in range(width - 1):
            t[b + j] = upto[r, j]
        for k in range(lanes + 1):
            kk = min(k, width - 1)
            t[b + lanes + 2 * k] = rate[r, kk]
            t[b + lanes + 2 * k + 1] = cum[r, kk]
        if r < price.shape[0]:
            t[b + size - 1] = price[r]
    return t


@njit(cache=True, inline="always")
def _row_charge(amount, t, base, lanes, compares):
    """`bracket_charge` on a `_rows` row: the bracket is the count of uppers below the amount (one vector
    compare, or `compares` scalar ones when there are few)."""
    if compares > 2:
        if lanes == 4:
            k = _above4(amount, t, base)
        else:
            k = _above8(amount, t, base)
    else:
        k = 0
        for j in range(compares):
            k += amount > t[base + np.uint64(j)]
    p = base + np.uint64(lanes) + np.uint64(2 * k)
    return amount * t[p] - t[p + np.uint64(1)]


@njit(cache=True, inline="always")
def _coll_rows(owner, asset, qty, t, out_equity, lanes, compares):
    size = np.uint64(4 * lanes)
    for j in range(owner.shape[0]):
        o = owner[j]
        if o < 0:
            continue
        base = np.uint64(asset[j]) * size
        v = qty[j] * t[base + size - np.uint64(1)]
        out_equity[np.uint64(o)] += v - _row_charge(v, t, base, lanes, compares)


@njit(cache=True, inline="always")
def _pos_rows(owner, instr, qty, entry, t, out_equity, out_maintenance, lanes, compares):
    size = np.uint64(4 * lanes)
    for j in range(owner.shape[0]):
        o = owner[j]
        if o < 0:
            continue
        base = np.uint64(instr[j]) * size
        m = t[base + size - np.uint64(1)]
        q = qty[j]
        uo = np.uint64(o)
        out_equity[uo] += q * (m - entry[j])
        out_maintenance[uo] += _row_charge(abs(q) * m, t, base, lanes, compares)


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
    passes are bound by instruction count, so the bracket tables and prices are copied once per call into one row
    per owner (`_rows`), indexed unsigned, and a bracket is found by one vector compare when it takes more than two
    scalar ones; the table widths up to 9 get passes of their own (widths beyond: the generic 2-D passes). Per
    account the sums run in the same order as `account_numbers` (collateral, debt, positions, each in pool order),
    through `out_*[o] += …` in memory: the numbers are identical. (Keeping a run's sums in registers instead, with
    branch-free blends at run ends, measured slower: the passes are bound by instructions, not by that chain.)"""
    n = accounts.active.shape[0]
    for i in range(n):
        out_equity[i] = 0.0
        out_maintenance[i] = 0.0
    co, ca, cq = accounts.coll_owner, accounts.coll_asset, accounts.coll_qty
    hw = risk.haircut_upto.shape[1]
    if hw <= 5:
        t = _rows(risk.haircut_upto, risk.haircut_rate, risk.haircut_cum, index, 4)
        if hw == 1:
            _coll_rows(co, ca, cq, t, out_equity, 4, 0)
        elif hw == 2:
            _coll_rows(co, ca, cq, t, out_equity, 4, 1)
        elif hw == 3:
            _coll_rows(co, ca, cq, t, out_equity, 4, 2)
        else:
            _coll_rows(co, ca, cq, t, out_equity, 4, 4)
    elif hw <= 9:
        t = _rows(risk.haircut_upto, risk.haircut_rate, risk.haircut_cum, index, 8)
        _coll_rows(co, ca, cq, t, out_equity, 8, 8)
    else:
        hu, hr, hc = risk.haircut_upto.ravel(), risk.haircut_rate.ravel(), risk.haircut_cum.ravel()
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
    po, pi, pq, pe = accounts.pos_owner, accounts.pos_instr, accounts.pos_qty, accounts.pos_entry
    mw = risk.maint_upto.shape[1]
    if mw <= 5:
        t = _rows(risk.maint_upto, risk.maint_rate, risk.maint_cum, mark, 4)
        if mw == 1:
            _pos_rows(po, pi, pq, pe, t, out_equity, out_maintenance, 4, 0)
        elif mw == 2:
            _pos_rows(po, pi, pq, pe, t, out_equity, out_maintenance, 4, 1)
        elif mw == 3:
            _pos_rows(po, pi, pq, pe, t, out_equity, out_maintenance, 4, 2)
        else:
            _pos_rows(po, pi, pq, pe, t, out_equity, out_maintenance, 4, 4)
    elif mw <= 9:
        t = _rows(risk.maint_upto, risk.maint_rate, risk.maint_cum, mark, 8)
        _pos_rows(po, pi, pq, pe, t, out_equity, out_maintenance, 8, 8)
    else:
        mu, mr, mc = risk.maint_upto.ravel(), risk.maint_rate.ravel(), risk.maint_cum.ravel()
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
