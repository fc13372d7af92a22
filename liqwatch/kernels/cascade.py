"""Liquidation cascade (SPEC §5): shock, then rounds of liquidation and market impact until nobody new falls.

    result = run_cascade(t, s, direction, quotes, index_params, mark_params, base_index,
                         [accounts], risk, impact, liquidation_venue, max_rounds)

One round = recompute index and marks at the current books → every account newly liquidatable is closed at
those prices (`liquidate_round`: longs sell |qty|·mark of the underlying, shorts buy it, every non-settlement
collateral asset is sold in full) → the round's net sells per asset move the liquidation venue's books of that
asset once (`impact_factors`, `apply_impact`). Accounts already liquidatable before the shock fall in round 1.

Sharding: `run_cascade` takes a list of books. Each shard reports its round's liquidations and net flows; they
are summed and impact is applied once, so any split of the accounts gives the single-process result (up to float
summation order). The streaming coordinator does the same exchange over Kafka with `Shard.run`.

Pruning (`Shard.run` → `liquidate_round_pruned`): a full scan re-evaluates every live account each round. After an
account is evaluated at the prices of call s, its slack S = E − M and four one-sided exposures bound how far later
prices can lower it. Every term T of E − M moves with one price p (an index for collateral and debt, a mark for a
position) and is continuous and piecewise linear in it with a slope dT/dp in a known range [α, β] (collateral:
qty·(1 − haircut rate) over the asset's brackets; debt: −qty·(1 + borrow rate); a position: qty − |qty|·rate over
the instrument's maintenance brackets). With p = p_s·(1 + r), a fall (r < 0) lowers T by at most |r|·max(0, α·p_s,
β·p_s) and a rise by at most r·max(0, −α·p_s, −β·p_s). Summed over the terms priced by indexes (marks), these are the
exposures F_I, R_I (F_M, R_M): what E − M loses per unit of relative fall, rise, so

    E − M ≥ S − (F_I·φ_I + F_M·φ_M + R_I·ρ_I + R_M·ρ_M)

with φ_I (ρ_I) the largest relative fall (rise) since call s of an index the account holds, φ_M, ρ_M of a mark.
(A long loses only when its mark falls, and by less than its notional — its charge falls too; a short, debt, only
on a rise: in a one-way market half the bound is zero.) What it holds is kept as bits (asset a → bit a % 12: assets
sharing a bit share the largest move, which only loosens the bound). An account with S − ε > that bound·(1 + 1e-9),
ε = 1e-9·(K·(gross exposure) + Σ|PnL terms|), K = max(max|1 − haircut rate|, 1 + max|maintenance rate|, 1 + max|borrow
rate|) (far above the float rounding of E, M and the bracket tables; the numbers are kept as float32 rounded the
safe way by 1e-6), cannot be liquidatable now and is not evaluated; the result is exactly the full scan's: the same
accounts fall in the same round, with the same flows summed in the same (pool) order. A price that is or becomes
non-finite, or a zero reference price, makes its fall and rise infinite (a price NaN at both calls is left out: an
account holding it has a NaN slack and is always evaluated); an account with a non-finite S or exposure (a NaN
rate makes its slope range infinite), or no room, is evaluated every round.
"""

from dataclasses import dataclass, field

import numpy as np
from llvmlite import ir
from numba import njit
from numba.core import cgutils, types
from numba.extending import intrinsic

from liqwatch.kernels.adl import adl_plan, adl_queue, deleverage
from liqwatch.kernels.health import bracket_charge, margin_numbers
from liqwatch.kernels.prices import compute_index, compute_marks
from liqwatch.kernels.arrays import IMPACT_LINEAR, IMPACT_SQRT, AccountArrays, RiskParams
from liqwatch.kernels.stress import shock_books

MIN_PRICE_FACTOR = 0.01  # one round's impact never takes a book below 1% of its price


@njit(cache=True)  # a call, not inlined: only fallen accounts take it, and the evaluation loop stays lean
def _losses(i, e, mark, accounts, fee_rate, out_losses, out_by_side):
    """What account i, liquidated with equity e at the round's marks, leaves to the insurance fund, added to
    out_losses = [fees paid, deficit, position notional of the bankrupt, bankrupt accounts] and, per side (1: long)
    and instrument, that notional to `out_by_side`. Closing at the round's prices leaves the account its equity: the
    liquidation fee (fee_rate × the position notional closed) is paid out of what is left of it; with e < 0 the
    account is bankrupt, and −e is the deficit the fund (or auto-deleveraging) must cover."""
    notional = 0.0
    for j in range(accounts.pos_start[i], accounts.pos_start[i] + accounts.pos_count[i]):
        notional += abs(accounts.pos_qty[j] * mark[accounts.pos_instr[j]])
    if e < 0.0:
        out_losses[1] -= e
        out_losses[2] += notional
        out_losses[3] += 1.0
        for j in range(accounts.pos_start[i], accounts.pos_start[i] + accounts.pos_count[i]):
            q = accounts.pos_qty[j]
            out_by_side[1 if q > 0.0 else 0, accounts.pos_instr[j]] += abs(q * mark[accounts.pos_instr[j]])
    else:
        out_losses[0] += min(fee_rate * notional, e)


@njit(cache=True, error_model="numpy", nogil=True)
def liquidate_round(index, mark, accounts, risk, liquidated, round_no, commit, out_net_sold, work_equity,
                    work_maintenance, fee_rate, out_losses, out_by_side, partial_fraction, partial_above, cash,
                    closing):
    """Close every live account that is liquidatable at (index, mark). Adds each closed account's flows to
    `out_net_sold` (USD per asset, + sold) and its losses to `out_losses`, `out_by_side` (`_losses`), and
    returns (accounts closed, notional closed, partial liquidations). With commit=False nothing is marked (the
    runaway check after the last allowed round). `work_*` are scratch arrays of the row count of `accounts`.

    Partial liquidation (partial_fraction < 1; `cash` and `closing` of the row count, the accounts' pools this
    shard's own): a liquidatable account not bankrupt with more than `partial_above` of position notional loses
    that fraction of every position (its realised PnL) and of every non-settlement collateral asset (sold at the
    index) into `cash` (USD, part of its equity from then on), pays the fee on the notional closed out of it, and
    stays in; the flows are the fraction's."""
    margin_numbers(index, mark, accounts, risk, work_equity, work_maintenance)
    partial = cash.shape[0] > 0
    if partial:
        for i in range(accounts.active.shape[0]):
            work_equity[i] += cash[i]
            closing[i] = 0.0
    count = 0
    steps = 0
    for i in range(accounts.active.shape[0]):
        if accounts.active[i] and liquidated[i] == 0 and work_equity[i] < work_maintenance[i]:
            e = work_equity[i]
            if partial and e >= 0.0 and _notional(i, mark, accounts) > partial_above:
                steps += 1
                if commit:
                    closing[i] = partial_fraction
                continue
            count += 1
            if commit:
                liquidated[i] = round_no
                _losses(i, e, mark, accounts, fee_rate, out_losses, out_by_side)
                if partial:
                    closing[i] = 1.0
    notional = 0.0
    if not commit or count + steps == 0:
        return count, notional, steps
    for j in range(accounts.pos_owner.shape[0]):
        o = accounts.pos_owner[j]
        if o < 0 or (closing[o] == 0.0 if partial else liquidated[o] != round_no):
            continue
        ins = accounts.pos_instr[j]
        flow = accounts.pos_qty[j] * mark[ins]   # long: sell (+), short: buy (−)
        if partial:
            flow *= closing[o]
        out_net_sold[risk.underlying[ins]] += flow
        notional += abs(flow)
    for j in range(accounts.coll_owner.shape[0]):
        o = accounts.coll_owner[j]
        if o < 0 or (closing[o] == 0.0 if partial else liquidated[o] != round_no):
            continue
        a = accounts.coll_asset[j]
        if a == risk.settlement:
            continue
        v = accounts.coll_qty[j] * index[a]
        if partial:
            v *= closing[o]
        out_net_sold[a] += v
        notional += v
    if steps:
        _close_fraction(index, mark, accounts, risk, work_equity, closing, fee_rate, cash, out_losses)
    return count, notional, steps


@njit(cache=True, inline="always")
def _notional(i, mark, accounts):
    n = 0.0
    for j in range(accounts.pos_start[i], accounts.pos_start[i] + accounts.pos_count[i]):
        n += abs(accounts.pos_qty[j] * mark[accounts.pos_instr[j]])
    return n


@njit(cache=True)
def _close_fraction(index, mark, accounts, risk, equity, closing, fee_rate, cash, out_losses):
    """The partial liquidations of a round (`closing` < 1): the fraction of each position closed at its mark (the
    realised PnL into cash), of each non-settlement collateral asset sold at its index (into cash), the fee on the
    closed notional out of cash (at most the equity)."""
    for i in range(accounts.active.shape[0]):
        f = closing[i]
        if not (0.0 < f < 1.0):
            continue
        closed = 0.0
        for j in range(accounts.pos_start[i], accounts.pos_start[i] + accounts.pos_count[i]):
            m = mark[accounts.pos_instr[j]]
            q = accounts.pos_qty[j] * f
            closed += abs(q * m)
            cash[i] += q * (m - accounts.pos_entry[j])
            accounts.pos_qty[j] -= q
        for j in range(accounts.coll_start[i], accounts.coll_start[i] + accounts.coll_count[i]):
            a = accounts.coll_asset[j]
            if a == risk.settlement:
                continue
            q = accounts.coll_qty[j] * f
            cash[i] += q * index[a]
            accounts.coll_qty[j] -= q
        fee = min(fee_rate * closed, equity[i])
        cash[i] -= fee
        out_losses[0] += fee


MASK_BITS = 12  # held assets (instruments) as 12 bits: asset a is bit a % 12, so bits may alias (safely)


@njit(cache=True, inline="always")
def _pos(x):
    """max(x, 0) as a select (NaN: 0 — the caller counts NaNs apart and makes the exposure inf)."""
    return x if x > 0.0 else 0.0


@njit(cache=True, inline="always")
def account_numbers_bounded(i, index, mark, accounts, risk, coll_slope_lo, coll_slope_hi, maint_lo, maint_hi):
    """Equity and maintenance of account i, summed exactly as `margin_numbers` sums them (collateral, debt,
    positions, each in pool order), and what the pruning bound needs: the gross exposure (Σ|collateral value| +
    Σ|debt value| + Σ|qty·mark|) and Σ|qty·(mark − entry)| for ε, the bits of the assets and of the instruments
    held, and the four one-sided exposures (module docstring): what E − M loses per unit of relative fall of an
    index (FI) or a mark (FM), and per unit of relative rise (RI, RM)."""
    value = 0.0
    gross = 0.0
    pnl = 0.0
    assets = 0
    instruments = 0
    fi = 0.0
    fm = 0.0
    ri = 0.0
    rm = 0.0
    nan = 0
    for j in range(accounts.coll_start[i], accounts.coll_start[i] + accounts.coll_count[i]):
        a = accounts.coll_asset[j]
        v = accounts.coll_qty[j] * index[a]
        value += v - bracket_charge(v, a, risk.haircut_upto, risk.haircut_rate, risk.haircut_cum)
        gross += abs(v)
        assets |= 1 << (a % MASK_BITS)
        x1 = v * coll_slope_lo[a]
        x2 = v * coll_slope_hi[a]
        fi += max(_pos(x1), _pos(x2))
        ri += max(_pos(-x1), _pos(-x2))
        nan += (x1 != x1) | (x2 != x2)
    maintenance = 0.0
    for j in range(accounts.debt_start[i], accounts.debt_start[i] + accounts.debt_count[i]):
        a = accounts.debt_asset[j]
        v = accounts.debt_qty[j] * index[a]
        value -= v
        maintenance += v * risk.borrow_rate[a]
        gross += abs(v)
        assets |= 1 << (a % MASK_BITS)
        x = -v * (1.0 + risk.borrow_rate[a])
        fi += _pos(x)
        ri += _pos(-x)
        nan += x != x
    for j in range(accounts.pos_start[i], accounts.pos_start[i] + accounts.pos_count[i]):
        ins = accounts.pos_instr[j]
        m = mark[ins]
        q = accounts.pos_qty[j]
        u = q * (m - accounts.pos_entry[j])
        value += u
        amount = abs(q) * m
        maintenance += bracket_charge(amount, ins, risk.maint_upto, risk.maint_rate, risk.maint_cum)
        gross += abs(amount)
        pnl += abs(u)
        instruments |= 1 << (ins % MASK_BITS)
        w = q * m
        x1 = w - amount * maint_lo[ins]
        x2 = w - amount * maint_hi[ins]
        fm += max(_pos(x1), _pos(x2))
        rm += max(_pos(-x1), _pos(-x2))
        nan += (x1 != x1) | (x2 != x2)
    if nan:  # a NaN term bounds nothing
        fi = fm = ri = rm = np.inf
    return value, maintenance, gross, pnl, assets, instruments, fi, fm, ri, rm


PRUNE_EPS = 1e-9  # relative margin of the pruning bound: far above float rounding, far below any price move
STORE_EPS = 1e-6  # the bound's numbers are kept as float32, rounded by this much the safe way (float32 rounding: 6e-8)


@njit(cache=True, inline="always")
def _fall_rise(r, p):
    """(relative fall, relative rise) of one price from r to p; 0 for a price NaN at both ends (whoever holds it has
    a NaN slack and is evaluated every round); inf when the reference is zero or non-finite or the price becomes
    non-finite."""
    if r != r and p != p:
        return 0.0, 0.0
    if r == p and abs(r) < np.inf:
        return 0.0, 0.0
    if not (abs(r) < np.inf) or r == 0.0:
        return np.inf, np.inf
    rel = p / r - 1.0
    if not (abs(rel) < np.inf):  # NaN or inf now
        return np.inf, np.inf
    return max(-rel, 0.0), max(rel, 0.0)


FALL_INDEX, RISE_INDEX, FALL_MARK, RISE_MARK = range(4)  # the four move classes (and the four exposures)
PLANE_BITS = 6
PLANES = MASK_BITS // PLANE_BITS  # a mask's move: the max of PLANES lookups in tables of 2**PLANE_BITS


@njit(cache=True)
def price_moves(history_index, history_mark, index, mark, out_top, out_lut):
    """For every earlier call s (rows of the history) and move class c (FALL_INDEX … RISE_MARK): the largest
    relative fall / rise since then of any index / mark (`out_top[s, c]`), and lookup tables of the largest one of
    the held assets (instruments) by PLANE_BITS of their bits: out_lut[s, c // 2, p, v, c % 2] = the largest over the
    bits set in v << (PLANE_BITS·p) (so the move of a mask is the max of PLANES lookups, no loop over its bits; a
    fall and a rise of the same items side by side, one line)."""
    bits = np.zeros((4, MASK_BITS))
    for s in range(out_top.shape[0]):
        bits[:] = 0.0
        for a in range(index.shape[0]):
            f, r = _fall_rise(history_index[s, a], index[a])
            b = a % MASK_BITS
            bits[FALL_INDEX, b] = max(bits[FALL_INDEX, b], f)
            bits[RISE_INDEX, b] = max(bits[RISE_INDEX, b], r)
        for k in range(mark.shape[0]):
            f, r = _fall_rise(history_mark[s, k], mark[k])
            b = k % MASK_BITS
            bits[FALL_MARK, b] = max(bits[FALL_MARK, b], f)
            bits[RISE_MARK, b] = max(bits[RISE_MARK, b], r)
        for c in range(4):
            out_top[s, c] = np.max(bits[c])
            for p in range(PLANES):
                out_lut[s, c // 2, p, 0, c % 2] = 0.0
                for v in range(1, 1 << PLANE_BITS):
                    top = PLANE_BITS - 1
                    while not (v >> top) & 1:
                        top -= 1
                    out_lut[s, c // 2, p, v, c % 2] = max(out_lut[s, c // 2, p, v ^ (1 << top), c % 2],
                                                          bits[c, PLANE_BITS * p + top])


def move_factor(risk: RiskParams) -> float:
    """K of the pruning bound: the largest slope of E − M per unit of gross exposure moved (see module docstring)."""
    k = 1.0
    if risk.haircut_rate.size:
        k = max(k, float(np.max(np.abs(1.0 - risk.haircut_rate))))
    if risk.maint_rate.size:
        k = max(k, 1.0 + float(np.max(np.abs(risk.maint_rate))))
    if risk.borrow_rate.size:
        k = max(k, 1.0 + float(np.max(np.abs(risk.borrow_rate))))
    return k  # NaN rates make K NaN: nothing is ever skipped


def bracket_slopes(risk: RiskParams):
    """Per asset, the smallest and largest slope of collateral value − haircut in the value (1 − rate over its
    brackets); per instrument, the smallest and largest maintenance rate. NaN anywhere in an owner's rates: ±inf
    (its holders' exposures become inf: evaluated every round)."""
    def lo_hi(x):
        if x.shape[1] == 0:
            return np.zeros(x.shape[0]), np.zeros(x.shape[0])
        bad = np.isnan(x).any(axis=1)
        lo = np.where(bad, -np.inf, np.min(np.where(np.isnan(x), 0.0, x), axis=1))
        hi = np.where(bad, np.inf, np.max(np.where(np.isnan(x), 0.0, x), axis=1))
        return lo.astype(np.float64), hi.astype(np.float64)
    hc_lo, hc_hi = lo_hi(1.0 - risk.haircut_rate)
    m_lo, m_hi = lo_hi(risk.maint_rate)
    return hc_lo, hc_hi, m_lo, m_hi


@intrinsic
def _prefetch(typingctx, array, i):
    """Ask for the cache line of array.flat[i] (llvm.prefetch: never faults, so i may be out of range)."""
    sig = types.void(array, types.intp)

    def codegen(context, builder, signature, args):
        data, j = args
        ptr = builder.bitcast(builder.gep(context.make_array(signature.args[0])(context, builder, value=data).data, [j]),
                              ir.IntType(8).as_pointer())
        i32 = ir.IntType(32)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [ptr.type, i32, i32, i32]),
                                            "llvm.prefetch.p0")
        builder.call(fn, [ptr, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])  # read, keep, data
        return context.get_dummy_value()
    return sig, codegen


@njit(cache=True, inline="always")
def _prefetch_account(accounts, r):
    """The slice bounds of account r."""
    _prefetch(accounts.coll_start, r)
    _prefetch(accounts.coll_count, r)
    _prefetch(accounts.debt_start, r)
    _prefetch(accounts.debt_count, r)
    _prefetch(accounts.pos_start, r)
    _prefetch(accounts.pos_count, r)
    _prefetch(accounts.active, r)


@njit(cache=True, inline="always")
def _prefetch_entries(accounts, r):
    """The first and last entry of account r's slices (their bounds are in cache by now)."""
    c = accounts.coll_start[r]
    _prefetch(accounts.coll_asset, c)
    _prefetch(accounts.coll_qty, c)
    c += accounts.coll_count[r] - 1
    _prefetch(accounts.coll_asset, c)
    _prefetch(accounts.coll_qty, c)
    d = accounts.debt_start[r] if accounts.debt_count[r] > 0 else 0  # most borrow nothing: their line is no use
    _prefetch(accounts.debt_asset, d)
    _prefetch(accounts.debt_qty, d)
    p = accounts.pos_start[r]
    _prefetch(accounts.pos_instr, p)
    _prefetch(accounts.pos_qty, p)
    _prefetch(accounts.pos_entry, p)
    p += accounts.pos_count[r] - 1
    _prefetch(accounts.pos_instr, p)
    _prefetch(accounts.pos_qty, p)
    _prefetch(accounts.pos_entry, p)


PREFETCH_AHEAD = 8  # evaluation: rows ahead whose entries are requested (their bounds: twice as far)


@njit(cache=True)
def _in_pool_order(rows, start):
    """`rows` ordered by their slices' position in a pool (each account's slice is contiguous, so walking the
    slices in this order visits the entries in pool order); no sort when they are already (compact pools)."""
    for k in range(1, rows.shape[0]):
        if start[rows[k]] < start[rows[k - 1]]:
            return rows[np.argsort(start[rows], kind="mergesort")]
    return rows


@njit(cache=True)
def _round_flows(index, mark, accounts, risk, rows, out_net_sold, positions=True, notional=0.0):
    """Flows of the accounts `rows` (those that fell this round), summed in pool order — positions, then
    collateral — exactly as `liquidate_round`'s flat passes sum them; with positions=False only the collateral's,
    added to the positions' already summed (`out_net_sold`, `notional`). (Their lines were evicted by the later
    evaluations of the round: requested PREFETCH_AHEAD accounts on.)"""
    order = _in_pool_order(rows, accounts.pos_start) if positions else rows[:0]
    for k in range(order.shape[0]):
        _prefetch(accounts.pos_start, order[min(k + 2 * PREFETCH_AHEAD, order.shape[0] - 1)])
        _prefetch(accounts.pos_count, order[min(k + 2 * PREFETCH_AHEAD, order.shape[0] - 1)])
        p = accounts.pos_start[order[min(k + PREFETCH_AHEAD, order.shape[0] - 1)]]
        _prefetch(accounts.pos_instr, p)
        _prefetch(accounts.pos_qty, p)
        _prefetch(accounts.pos_qty, p + 4)
        i = order[k]
        for j in range(accounts.pos_start[i], accounts.pos_start[i] + accounts.pos_count[i]):
            ins = accounts.pos_instr[j]
            flow = accounts.pos_qty[j] * mark[ins]   # long: sell (+), short: buy (−)
            out_net_sold[risk.underlying[ins]] += flow
            notional += abs(flow)
    order = _in_pool_order(rows, accounts.coll_start)
    for k in range(order.shape[0]):
        _prefetch(accounts.coll_start, order[min(k + 2 * PREFETCH_AHEAD, order.shape[0] - 1)])
        _prefetch(accounts.coll_count, order[min(k + 2 * PREFETCH_AHEAD, order.shape[0] - 1)])
        c = accounts.coll_start[order[min(k + PREFETCH_AHEAD, order.shape[0] - 1)]]
        _prefetch(accounts.coll_asset, c)
        _prefetch(accounts.coll_qty, c)
        _prefetch(accounts.coll_qty, c + 2)
        i = order[k]
        for j in range(accounts.coll_start[i], accounts.coll_start[i] + accounts.coll_count[i]):
            a = accounts.coll_asset[j]
            if a == risk.settlement:
                continue
            v = accounts.coll_qty[j] * index[a]
            out_net_sold[a] += v
            notional += v
    return notional


@njit(cache=True, inline="always")
def _masked_moves(mask, lut, s, kind):
    """The largest fall and rise since call s of the indexes (kind 0) or marks (1) on the bits of `mask`
    (`price_moves`)."""
    low = (1 << PLANE_BITS) - 1
    a, b = mask & low, (mask >> PLANE_BITS) & low
    return max(lut[s, kind, 0, a, 0], lut[s, kind, 1, b, 0]), max(lut[s, kind, 0, a, 1], lut[s, kind, 1, b, 1])


@njit(cache=True, inline="always")
def _up32(x):
    """An exposure kept as float32, rounded up; non-finite or too large: inf (never skipped)."""
    y = x * (1.0 + STORE_EPS)
    if not (y < 1e38):
        return np.inf
    return max(y, 1e-30) if y > 0.0 else 0.0


WORD = 4  # state rows: the four reaches (float32) FALL_INDEX … RISE_MARK, then the word (uint32) below
SEEN_SHIFT = 2 * MASK_BITS  # the word: call of the last evaluation << 24 | held-asset bits << 12 | instrument bits
SEEN_LIMIT = 255  # calls are numbered in the word's 8 bits; the shard starts over (call 0: everyone evaluated) after
STATE_COLUMNS = 5
SEEN_CALL_1 = np.uint32(1 << SEEN_SHIFT)  # a word at or above: evaluated since call 0


@njit(cache=True, inline="always")
def _out(state, reach, i):
    """Row i leaves the cascade (closed, or fallen): no reach, a valid call — the first test of every round skips it
    with no branch of its own (an infinite move makes the test NaN: the second test checks)."""
    state[WORD, i] = 0
    for c in range(4):
        reach[c, i] = 0.0


@njit(cache=True, inline="always")
def _per_room(slack):
    """What an exposure is multiplied by to become a reach: 1 / room, with the room S − ε (`slack`) rounded down
    (one division per account, not four; its rounding is far below STORE_EPS); no room (or under float32 precision)
    or non-finite: inf (reach inf or NaN: evaluated every round)."""
    if not (slack > 1e-30 and slack < 1e38):
        return np.inf
    return (1.0 + PRUNE_EPS) / (slack * (1.0 - STORE_EPS))


SCAN_CHUNK = 2048  # the scan's first test appends the rows it cannot clear to a buffer of this many


@njit(cache=True, inline="always")
def _up32_move(x):
    """A move as float32 rounded up (inf stays inf)."""
    return np.float32(x * (1.0 + STORE_EPS))


def _byte_tables():
    """For a byte of eight row flags (row k → bit 7 − k, as `_flag_byte` packs them): the rows flagged, in order, and
    how many."""
    rows = np.zeros((256, 8), dtype=np.int32)
    count = np.zeros(256, dtype=np.int32)
    for m in range(256):
        flagged = [k for k in range(8) if m >> (7 - k) & 1]
        rows[m, :len(flagged)] = flagged
        count[m] = len(flagged)
    return rows, count


FLAGGED_ROWS, FLAGGED_COUNT = _byte_tables()


@njit(cache=True, inline="always")
def _flag_byte(x):
    """Eight 0/1 bytes (little-endian in x) as the bits of one byte, row k at bit 7 − k (one multiply)."""
    return (x * np.uint64(0x8040201008040201)) >> np.uint64(56)


FIRST_TEST_BELOW = np.float32(1.0 - 1e-6)  # float32 sums of four products err by < 4e-7: an exact sum < 1 below this


@njit(cache=True, error_model="numpy", nogil=True)
def liquidate_round_pruned(index, mark, accounts, risk, liquidated, round_no, commit, out_net_sold, call, move_top,
                           move_lut, k_factor, slopes, state, reach, work_rows, fee_rate, out_losses,
                           out_by_side):
    """`liquidate_round` with pruning (module docstring): returns (accounts closed, notional closed, accounts
    evaluated).

    `call` numbers this evaluation (0, 1, …); `move_top[s]`, `move_lut[s]` are the price moves since call s
    (`price_moves`). The state is five uint32 rows of one entry per account (float32 `reach` is a view of the first
    four): the four one-sided exposures FALL_INDEX … RISE_MARK divided by the room S − ε, rounded up (inf when there
    is no room), then the word: the call of its last evaluation (call 0 evaluates every active row not fallen; a row
    out of the cascade, closed or fallen, is `_out`: never evaluated again — and an active row not fallen must have
    been evaluated at call 0), the bits of the assets and of the instruments it holds. An account is skipped when
    Σ_c reach_c · (largest move of class c among what it holds) < 1.
    `work_rows`: int32 scratch of the row count."""
    # 1: the accounts the bound cannot clear: first with the largest moves of all (what most accounts clear),
    # then with the moves of what the account holds
    n = accounts.active.shape[0]
    kept = 0
    for i in range(n if call == 0 else 0):
        work_rows[kept] = i
        kept += accounts.active[i] and liquidated[i] == 0
    flags = np.zeros(SCAN_CHUNK, dtype=np.uint8)
    flag_words = flags.view(np.uint64)
    left = np.empty(SCAN_CHUNK + 8, dtype=np.int32)
    mask = (1 << MASK_BITS) - 1
    # the first test: float32 over contiguous rows with no gather (it vectorises), so with the moves since call 0;
    # a row evaluated since is left to the second (a blend with the largest moves since later calls paid nothing)
    fi0, fm0 = _up32_move(move_top[0, FALL_INDEX]), _up32_move(move_top[0, FALL_MARK])
    ri0, rm0 = _up32_move(move_top[0, RISE_INDEX]), _up32_move(move_top[0, RISE_MARK])
    fi_reach, fm_reach, ri_reach, rm_reach = reach[FALL_INDEX], reach[FALL_MARK], reach[RISE_INDEX], reach[RISE_MARK]
    word = state[WORD]
    for i0 in range(0, n if call > 0 else 0, SCAN_CHUNK):
        i1 = min(i0 + SCAN_CHUNK, n)
        # over the chunk's slices, indexed from 0: so it vectorises (indexed i − i0 it did not: 4.3 ms → 0.9 a
        # million rows)
        fi_c, fm_c, ri_c, rm_c, word_c = (fi_reach[i0:i1], fm_reach[i0:i1], ri_reach[i0:i1], rm_reach[i0:i1],
                                          word[i0:i1])
        for k in range(i1 - i0):
            t = (fi_c[k] * fi0 + fm_c[k] * fm0) + (ri_c[k] * ri0 + rm_c[k] * rm0)
            flags[k] = np.uint8(not (t < FIRST_TEST_BELOW)) | np.uint8(word_c[k] >= SEEN_CALL_1)
        flags[i1 - i0:] = 0
        # the rows it leaves, appended eight at a time with no branch (a mispredicted branch per row left cost more,
        # and one append a row 40% more) …
        n_left = 0
        for g in range((i1 - i0 + 7) // 8):
            m = _flag_byte(flag_words[g])
            for k in range(8):
                left[n_left + k] = i0 + 8 * g + FLAGGED_ROWS[m, k]
            n_left += FLAGGED_COUNT[m]
        # … tested with the moves since their call of what they hold (a test with the largest moves since their call
        # in between paid less than it cost)
        for k in range(n_left):
            i = left[k]
            w = word[i]
            s = w >> SEEN_SHIFT
            assets = (w >> MASK_BITS) & mask
            instruments = w & mask
            fall_i, rise_i = _masked_moves(assets, move_lut, s, 0)
            fall_m, rise_m = _masked_moves(instruments, move_lut, s, 1)
            bound = ((fi_reach[i] * fall_i + fm_reach[i] * fall_m) + (ri_reach[i] * rise_i + rm_reach[i] * rise_m))
            work_rows[kept] = i  # kept ≤ i: no row still to test is overwritten
            kept += not (bound < 1.0)
    # 2: evaluate them, the lines of the account PREFETCH_AHEAD rows on requested now, those of its slices' entries
    # when their bounds have come (rows are far apart: every account is a few cache misses)
    coll_lo, coll_hi, maint_lo, maint_hi = slopes
    count = 0
    evaluated = 0
    # the positions' flows are summed as their accounts fall (lines in cache), valid if the slices come in pool order
    pos_net_sold = out_net_sold.copy()
    pos_notional = 0.0
    pos_in_order = True
    last_start = -1
    ahead = PREFETCH_AHEAD if call > 0 else kept  # call 0: every row in order, which the hardware prefetches
    for k in range(kept):
        if k + 2 * ahead < kept:
            _prefetch_account(accounts, work_rows[k + 2 * ahead])
            _prefetch(liquidated, work_rows[k + 2 * ahead])
        if k + ahead < kept:
            r = work_rows[k + ahead]
            _prefetch_entries(accounts, r)
            for c in range(STATE_COLUMNS):
                _prefetch(state, c * n + r)
        i = work_rows[k]
        if liquidated[i] != 0 or not accounts.active[i]:  # out, and an infinite move (a NaN bound)
            continue
        evaluated += 1
        e, m, gross, u, assets, instruments, fi, fm, ri, rm = account_numbers_bounded(
            i, index, mark, accounts, risk, coll_lo, coll_hi, maint_lo, maint_hi)
        state[WORD, i] = (call << SEEN_SHIFT) | (assets << MASK_BITS) | instruments
        slack = (e - m) - PRUNE_EPS * (k_factor * gross + u)
        per_room = _per_room(slack)
        reach[FALL_INDEX, i] = _up32(fi * per_room)
        reach[FALL_MARK, i] = _up32(fm * per_room)
        reach[RISE_INDEX, i] = _up32(ri * per_room)
        reach[RISE_MARK, i] = _up32(rm * per_room)
        if e < m:
            work_rows[count] = i  # count ≤ k: rows still to evaluate are not overwritten
            count += 1
            if commit:
                liquidated[i] = round_no
                _out(state, reach, i)
                _losses(i, e, mark, accounts, fee_rate, out_losses, out_by_side)
                start = accounts.pos_start[i]
                pos_in_order &= start >= last_start
                last_start = start
                for j in range(start, start + accounts.pos_count[i]):
                    ins = accounts.pos_instr[j]
                    flow = accounts.pos_qty[j] * mark[ins]   # long: sell (+), short: buy (−)
                    pos_net_sold[risk.underlying[ins]] += flow
                    pos_notional += abs(flow)
    notional = 0.0
    if not commit or count == 0:
        return count, notional, evaluated
    if pos_in_order:
        out_net_sold[:] = pos_net_sold
        notional = _round_flows(index, mark, accounts, risk, work_rows[:count], out_net_sold, False, pos_notional)
    else:
        notional = _round_flows(index, mark, accounts, risk, work_rows[:count], out_net_sold)
    return count, notional, evaluated


@njit(cache=True)
def impact_factors(net_sold, impact, out_factor):
    for a in range(net_sold.shape[0]):
        net = net_sold[a]
        f = 1.0
        if net != 0.0:
            sign = 1.0 if net > 0.0 else -1.0
            if impact.model[a] == IMPACT_LINEAR:
                f = 1.0 - sign * 0.01 * abs(net) / impact.depth_usd_per_pct[a]
            elif impact.model[a] == IMPACT_SQRT:
                f = 1.0 - sign * impact.y[a] * impact.daily_vol[a] * np.sqrt(abs(net) / impact.daily_volume_usd[a])
        out_factor[a] = max(f, MIN_PRICE_FACTOR)


@njit(cache=True)
def apply_impact(factor, base, venue, liquidation_venue, mid, last):
    for k in range(mid.shape[0]):
        b = base[k]
        if b >= 0 and venue[k] == liquidation_venue:
            mid[k] *= factor[b]
            last[k] *= factor[b]


@dataclass
class CascadeResult:
    rounds: int = 0
    liquidated_accounts: int = 0
    liquidated_notional: float = 0.0
    net_sold: np.ndarray = field(default_factory=lambda: np.zeros(0))
    final_index: np.ndarray = field(default_factory=lambda: np.zeros(0))
    final_mid: np.ndarray = field(default_factory=lambda: np.zeros(0))
    amplification: float = 1.0
    runaway: bool = False
    round_accounts: list[int] = field(default_factory=list)
    round_notional: list[float] = field(default_factory=list)
    liquidated_round: list[np.ndarray] = field(default_factory=list)  # per shard: round each account fell (0 = no)
    floored: list[int] = field(default_factory=list)  # assets whose impact hit MIN_PRICE_FACTOR in some round
    # the insurance fund (cascade_rounds): None when not accounted
    fees: float = 0.0            # liquidation fees paid by the liquidated accounts
    deficit: float = 0.0         # −equity of the accounts that fell below zero
    fund_start: float | None = None
    fund_end: float | None = None
    fund_drawdown: float = 0.0   # deficits the fund covered
    uncovered: float = 0.0       # deficits it could not
    adl_notional: float = 0.0    # bankrupt positions in the uncovered share: what auto-deleveraging would close
    adl_by_instrument: np.ndarray = field(default_factory=lambda: np.zeros(0))  # that, per instrument
    round_fund_drawdown: list[float] = field(default_factory=list)
    round_uncovered: list[float] = field(default_factory=list)
    round_adl_notional: list[float] = field(default_factory=list)
    partial_liquidations: int = 0  # partial steps (`Shard` partial): accounts that lost a fraction and stayed in
    round_partial: list[int] = field(default_factory=list)
    # auto-deleveraging executed (`adl_rule`): positions taken over from the bankrupt, accounts that gave them
    deleveraged_accounts: int = 0
    adl_closed_notional: float = 0.0
    round_deleveraged_accounts: list[int] = field(default_factory=list)
    round_adl_closed_notional: list[float] = field(default_factory=list)


@dataclass
class RoundRequest:
    """What every shard needs to run one round: this round's prices, and whether to commit liquidations."""

    round_no: int
    commit: bool
    index: np.ndarray
    mark: np.ndarray


@dataclass
class RoundResult:
    count: int
    notional: float
    net_sold: np.ndarray
    # the round's losses (`_losses`), summed over shards like the rest
    fees: float = 0.0               # liquidation fees paid into the insurance fund
    deficit: float = 0.0            # −equity of the accounts that fell below zero
    bankrupt_notional: float = 0.0  # position notional of those accounts
    bankrupt: int = 0               # those accounts
    bankrupt_by_instrument: np.ndarray | None = None  # their position notional per instrument
    partial: int = 0                # partial liquidations (accounts that lost a fraction and stay in)
    bankrupt_by_side: np.ndarray | None = None  # their position notional per side (0 short, 1 long) and instrument


@dataclass
class AdlQueue:
    """Auto-deleveraging, first step: every shard's queue keys of the groups `need[side, instrument]`."""

    round_no: int
    index: np.ndarray
    mark: np.ndarray
    need: np.ndarray


@dataclass
class AdlQueueResult:
    groups: np.ndarray     # side × instruments + instrument, per queued position
    keys: np.ndarray
    notionals: np.ndarray


@dataclass
class AdlClose:
    """Second step: close what `adl_plan` took (kernels/adl.py)."""

    round_no: int
    mark: np.ndarray
    cutoff: np.ndarray
    tie: np.ndarray
    loss_rate: float


@dataclass
class AdlCloseResult:
    accounts: int
    closed: np.ndarray     # notional closed per side and instrument (the counterparties' side)


def cascade_rounds(t, severity, direction, quotes, index_params, mark_params, base_index, impact, liquidation_venue,
                   max_rounds, insurance_fund=None, adl_rule=None):
    """The coordinator's side of §5 as a generator: yields a RoundRequest, receives the RoundResult summed over
    all shards, applies impact, and returns the CascadeResult. `run_cascade` drives it with local books; the
    streaming coordinator drives the same generator with shards answering over Kafka.

    The insurance fund (`insurance_fund` USD at the start; None: not accounted): each round its fees come in, then
    it covers the round's deficits as far as it goes; what it cannot cover is spread over the round's bankrupt
    accounts pro rata (the same whatever the shards), and their positions in that share would go to
    auto-deleveraging: `adl_notional`. With `adl_rule` (positions.ADL_BINANCE / ADL_HYPERLIQUID) it is executed:
    two more exchanges with the shards (`AdlQueue`, `AdlClose`; kernels/adl.py) take that notional from the opposite
    positions highest in the queue, at the bankruptcy price and off the books — the share taken over leaves the
    round's market flows."""
    n_assets = base_index.shape[0]
    n_cons = index_params.cons_kind.shape[0]
    mid = np.empty_like(quotes.mid)
    last = np.empty_like(quotes.last)
    shock_books(quotes.mid, quotes.last, quotes.base, direction, severity, mid, last)
    index = np.empty(n_assets)
    prev = base_index.copy()
    stale = np.empty(n_assets, dtype=np.bool_)
    sprice = np.empty(n_cons)
    sstatus = np.empty(n_cons, dtype=np.int8)
    mark = np.empty(mark_params.underlying.shape[0])
    factor = np.empty(n_assets)
    res = CascadeResult(net_sold=np.zeros(n_assets), adl_by_instrument=np.zeros(mark_params.underlying.shape[0]))
    fund = None if insurance_fund is None else float(insurance_fund)
    res.fund_start = fund
    for round_no in range(1, max_rounds + 2):
        compute_index(t, mid, quotes.ts, quotes.ref_rate, quotes.ref_ts, index_params, prev,
                      index, stale, sprice, sstatus)
        compute_marks(t, last, quotes.funding_rate, quotes.next_funding_ts, quotes.basis_ma, index, mark_params, mark)
        prev[:] = index
        commit = round_no <= max_rounds
        got: RoundResult = yield RoundRequest(round_no, commit, index.copy(), mark.copy())
        if got.count == 0 and got.partial == 0:
            break
        if not commit:
            res.runaway = True
            break
        res.rounds += 1
        res.liquidated_accounts += got.count
        res.partial_liquidations += got.partial
        res.round_partial.append(got.partial)
        res.liquidated_notional += got.notional
        res.round_accounts.append(got.count)
        res.round_notional.append(got.notional)
        flows = got.net_sold
        res.fees += got.fees
        res.deficit += got.deficit
        if fund is not None:
            available = fund + got.fees
            covered = min(got.deficit, available)
            fund = available - covered
            uncovered = got.deficit - covered
            share = uncovered / got.deficit if uncovered > 0.0 else 0.0
            adl = got.bankrupt_notional * share
            if got.bankrupt_by_instrument is not None:
                res.adl_by_instrument += got.bankrupt_by_instrument * share
            res.round_fund_drawdown.append(covered)
            res.round_uncovered.append(uncovered)
            res.round_adl_notional.append(adl)
            res.fund_drawdown += covered
            res.uncovered += uncovered
            res.adl_notional += adl
            if adl_rule is not None:
                taken, accounts = 0.0, 0
                if share > 0.0 and got.bankrupt_notional > 0.0 and got.bankrupt_by_side is not None:
                    wanted = got.bankrupt_by_side[::-1] * share  # bankrupt longs are taken by shorts, and back
                    queue: AdlQueueResult = yield AdlQueue(round_no, index.copy(), mark.copy(), wanted > 0.0)
                    cutoff, tie = adl_plan(queue.groups, queue.keys, queue.notionals, wanted)
                    done: AdlCloseResult = yield AdlClose(round_no, mark.copy(), cutoff, tie,
                                                          got.deficit / got.bankrupt_notional)
                    taken, accounts = float(done.closed.sum()), done.accounts
                    # taken over off the books: out of the flows (a bankrupt long's sale, a short's purchase)
                    flows = flows.copy()
                    np.add.at(flows, mark_params.underlying, done.closed[1] - done.closed[0])
                res.deleveraged_accounts += accounts
                res.adl_closed_notional += taken
                res.round_deleveraged_accounts.append(accounts)
                res.round_adl_closed_notional.append(taken)
        res.net_sold += flows
        impact_factors(flows, impact, factor)
        # the floor binding is the impact model speaking, not the market: an uncalibrated depth
        res.floored.extend(a for a in np.flatnonzero(factor <= MIN_PRICE_FACTOR).tolist() if a not in res.floored)
        apply_impact(factor, quotes.base, quotes.venue, liquidation_venue, mid, last)
    res.final_index = index.copy()
    res.final_mid = mid
    res.fund_end = fund
    if res.rounds > 1 and res.round_notional[0] > 0:
        res.amplification = res.liquidated_notional / res.round_notional[0]
    return res


class Shard:
    """One shard's side: a frozen copy of its accounts and the round each one fell in (`fallen`, 0 = not fallen).

    Rounds are pruned (module docstring): the shard remembers the prices of each call to `run` and, per account,
    the call of its last evaluation, its slack and its bound's scale. The accounts must not change between calls.
    `prune=False` evaluates every live account every round (`liquidate_round`, the full scan) — same results.

    `partial` = (fraction, above USD): partial liquidation (`liquidate_round`); `adl_rule`: auto-deleveraging
    executed (kernels/adl.py). Accounts then change between rounds, which the pruning bound does not follow: the
    full scan, on the shard's own copy of the positions' and collateral's quantities, with each account's
    settlement cash beside them."""

    def __init__(self, accounts: AccountArrays, risk: RiskParams, prune: bool = True, fee_rate: float = 0.0,
                 partial: tuple[float, float] | None = None, adl_rule: int | None = None):
        n = accounts.active.shape[0]
        self.partial = (1.0, np.inf) if partial is None else (float(partial[0]), float(partial[1]))
        self.adl_rule = adl_rule
        changing = partial is not None or adl_rule is not None
        if changing:
            prune = False
            accounts = accounts._replace(pos_qty=accounts.pos_qty.copy(), coll_qty=accounts.coll_qty.copy())
        self.cash = np.zeros(n if changing else 0)
        self.adl_key = np.empty(0)
        self.closing = np.zeros(self.cash.shape[0])
        self.accounts = accounts
        self.risk = risk
        self.prune = prune
        self.fee_rate = float(fee_rate)
        self.fallen = np.zeros(n, dtype=np.int32)
        m = 0 if prune else n
        self.work_equity = np.empty(m)  # the full scan's scratch
        self.work_maintenance = np.empty(m)
        m = n if prune else 0
        self.state = np.zeros((STATE_COLUMNS, m), dtype=np.uint32)  # all 0: out (`liquidate_round_pruned`)
        self.reach = self.state.view(np.float32)[:4]  # the four exposures per unit of room
        self.work_rows = np.empty(m, dtype=np.int32)
        self.k_factor = move_factor(risk)
        self.slopes = bracket_slopes(risk)
        self.history_index: list[np.ndarray] = []
        self.history_mark: list[np.ndarray] = []
        self.live = int(np.count_nonzero(accounts.active))  # active rows not fallen
        self.evaluated = 0  # account evaluations so far
        self.candidates = 0  # live accounts offered to a round so far (what a full scan evaluates)

    def state_bytes(self) -> int:
        """What the shard keeps besides the accounts (fallen rounds, pruning state, scratch)."""
        return sum(a.nbytes for a in (self.fallen, self.work_equity, self.work_maintenance, self.state,
                                      self.work_rows, self.cash, self.closing))

    def answer(self, req, n_assets: int):
        """The shard's answer to any request of `cascade_rounds`."""
        if isinstance(req, AdlQueue):
            return self.queue(req)
        if isinstance(req, AdlClose):
            return self.deleverage(req)
        return self.run(req, n_assets)

    def queue(self, req: AdlQueue) -> AdlQueueResult:
        acc = self.accounts
        self.adl_key = np.empty(acc.pos_qty.shape[0])
        adl_queue(np.asarray(req.index, dtype=np.float64), np.asarray(req.mark, dtype=np.float64), acc, self.risk,
                  self.fallen, self.cash, self.adl_rule, np.asarray(req.need, dtype=np.bool_), self.adl_key)
        at = np.flatnonzero(~np.isnan(self.adl_key))
        n_instr = req.need.shape[1]
        groups = (acc.pos_qty[at] > 0.0) * n_instr + acc.pos_instr[at]
        return AdlQueueResult(groups.astype(np.int64), self.adl_key[at],
                              np.abs(acc.pos_qty[at] * np.asarray(req.mark)[acc.pos_instr[at]]))

    def deleverage(self, req: AdlClose) -> AdlCloseResult:
        closed, out = np.zeros(np.asarray(req.cutoff).shape), np.zeros(2)
        deleverage(np.asarray(req.mark, dtype=np.float64), self.accounts, self.adl_key,
                   np.asarray(req.cutoff, dtype=np.float64), np.asarray(req.tie, dtype=np.float64),
                   float(req.loss_rate), self.cash, closed, out)
        return AdlCloseResult(int(out[0]), closed)

    def run(self, req: RoundRequest, n_assets: int) -> RoundResult:
        flows = np.zeros(n_assets)
        losses, by_side = np.zeros(4), np.zeros((2, np.asarray(req.mark).shape[0]))
        if not self.prune:
            live = int(np.count_nonzero(self.accounts.active & (self.fallen == 0)))
            c, n, steps = liquidate_round(req.index, req.mark, self.accounts, self.risk, self.fallen, req.round_no,
                                          req.commit, flows, self.work_equity, self.work_maintenance, self.fee_rate,
                                          losses, by_side, *self.partial, self.cash, self.closing)
            self.evaluated += live
            self.candidates += live
            return _result(c, n, flows, losses, by_side, steps)
        index = np.ascontiguousarray(req.index, dtype=np.float64)
        mark = np.ascontiguousarray(req.mark, dtype=np.float64)
        if len(self.history_index) > SEEN_LIMIT:  # calls no longer fit `seen`: start over, everyone evaluated
            self.history_index.clear()
            self.history_mark.clear()
        call = len(self.history_index)
        c = max(call, 1)
        moves = (np.zeros((c, 4)), np.zeros((c, 2, PLANES, 1 << PLANE_BITS, 2)))
        if call:
            price_moves(np.array(self.history_index), np.array(self.history_mark), index, mark, *moves)
        c, n, ev = liquidate_round_pruned(
            index, mark, self.accounts, self.risk, self.fallen, req.round_no, req.commit, flows, call, *moves,
            self.k_factor, self.slopes, self.state, self.state.view(np.float32), self.work_rows, self.fee_rate,
            losses, by_side)
        self.history_index.append(index.copy())
        self.history_mark.append(mark.copy())
        self.evaluated += int(ev)
        self.candidates += self.live
        if req.commit:
            self.live -= int(c)
        return _result(c, n, flows, losses, by_side)


def _result(count, notional, flows, losses, by_side, partial=0) -> RoundResult:
    return RoundResult(int(count), float(notional), flows, float(losses[0]), float(losses[1]), float(losses[2]),
                       int(losses[3]), by_side[0] + by_side[1], int(partial), by_side)


def sum_results(results: list[RoundResult]) -> RoundResult:
    """One round's answer of every shard as one (what the coordinator hands `cascade_rounds`)."""
    by_instrument = [r.bankrupt_by_instrument for r in results if r.bankrupt_by_instrument is not None]
    by_side = [r.bankrupt_by_side for r in results if r.bankrupt_by_side is not None]
    return RoundResult(sum(r.count for r in results), sum(r.notional for r in results),
                       np.sum([r.net_sold for r in results], axis=0), sum(r.fees for r in results),
                       sum(r.deficit for r in results), sum(r.bankrupt_notional for r in results),
                       sum(r.bankrupt for r in results), np.sum(by_instrument, axis=0) if by_instrument else None,
                       sum(r.partial for r in results), np.sum(by_side, axis=0) if by_side else None)


def combine(results: list):
    """Every shard's answer to one request of `cascade_rounds` as one (what the coordinator sends back to it)."""
    if isinstance(results[0], AdlQueueResult):
        return AdlQueueResult(*(np.concatenate([getattr(r, f) for r in results])
                                for f in ("groups", "keys", "notionals")))
    if isinstance(results[0], AdlCloseResult):
        return AdlCloseResult(sum(r.accounts for r in results), np.sum([r.closed for r in results], axis=0))
    return sum_results(results)


def run_cascade(t, severity, direction, quotes, index_params, mark_params, base_index, books, risk, impact,
                liquidation_venue, max_rounds, prune: bool = True, fee_rate: float = 0.0,
                insurance_fund: float | None = None, partial: tuple[float, float] | None = None,
                adl_rule: int | None = None) -> CascadeResult:
    shards = [Shard(b, risk, prune, fee_rate, partial, adl_rule) for b in books]
    n_assets = base_index.shape[0]
    rounds = cascade_rounds(t, severity, direction, quotes, index_params, mark_params, base_index, impact,
                            liquidation_venue, max_rounds, insurance_fund, adl_rule)
    req = next(rounds)
    try:
        while True:
            req = rounds.send(combine([s.answer(req, n_assets) for s in shards]))
    except StopIteration as done:
        res = done.value
    res.liquidated_round = [s.fallen for s in shards]
    return res
