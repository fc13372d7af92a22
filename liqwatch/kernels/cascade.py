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
account is evaluated at the prices of call s, its slack S = E − M and its gross exposure
G = Σ|collateral value| + Σ|debt value| + Σ|qty·mark| bound how far later prices can move it. Every term of E − M is
linear in one price or a continuous piecewise-linear bracket function of it, so with δ the largest relative move
of any index or mark since call s,

    |Δ(E − M)| ≤ K · G · δ,   K = max(max|1 − haircut rate|, 1 + max|maintenance rate|, 1 + max|borrow rate|)

(collateral moves with slope 1 − haircut rate, a position's PnL with slope 1 and its charge with slope ≤ its rate,
debt with 1 + its maintenance rate). An account with S − ε > K·G·δ·(1 + 1e-9), ε = 1e-9·(K·G + Σ|PnL terms|) (a
margin far above the float rounding of E, M and the bracket tables), cannot be liquidatable now and is not
evaluated; the result is exactly the full scan's: the same accounts fall in the same round, with the same flows
summed in the same (pool) order. A price that is or becomes non-finite, or a zero reference price, makes δ infinite
(a price NaN at both calls is left out: an account holding it has a NaN slack and is always evaluated); a
non-finite S, G or PnL sum is never skipped.
"""

from dataclasses import dataclass, field

import numpy as np
from numba import njit

from liqwatch.kernels.health import bracket_charge, margin_numbers
from liqwatch.kernels.prices import compute_index, compute_marks
from liqwatch.kernels.arrays import IMPACT_LINEAR, IMPACT_SQRT, AccountArrays, RiskParams
from liqwatch.kernels.stress import shock_books

MIN_PRICE_FACTOR = 0.01  # one round's impact never takes a book below 1% of its price


@njit(cache=True, error_model="numpy")
def liquidate_round(index, mark, accounts, risk, liquidated, round_no, commit, out_net_sold, work_equity,
                    work_maintenance):
    """Close every live account that is liquidatable at (index, mark). Adds each closed account's flows to
    `out_net_sold` (USD per asset, + sold) and returns (accounts closed, notional closed). With commit=False
    nothing is marked (the runaway check after the last allowed round). `work_*` are scratch arrays of the
    row count of `accounts`."""
    margin_numbers(index, mark, accounts, risk, work_equity, work_maintenance)
    count = 0
    for i in range(accounts.active.shape[0]):
        if accounts.active[i] and liquidated[i] == 0 and work_equity[i] < work_maintenance[i]:
            count += 1
            if commit:
                liquidated[i] = round_no
    notional = 0.0
    if not commit or count == 0:
        return count, notional
    for j in range(accounts.pos_owner.shape[0]):
        o = accounts.pos_owner[j]
        if o < 0 or liquidated[o] != round_no:
            continue
        ins = accounts.pos_instr[j]
        flow = accounts.pos_qty[j] * mark[ins]   # long: sell (+), short: buy (−)
        out_net_sold[risk.underlying[ins]] += flow
        notional += abs(flow)
    for j in range(accounts.coll_owner.shape[0]):
        o = accounts.coll_owner[j]
        if o < 0 or liquidated[o] != round_no:
            continue
        a = accounts.coll_asset[j]
        if a == risk.settlement:
            continue
        v = accounts.coll_qty[j] * index[a]
        out_net_sold[a] += v
        notional += v
    return count, notional


@njit(cache=True, inline="always")
def account_numbers_bounded(i, index, mark, accounts, risk):
    """(equity, maintenance, gross exposure G, Σ|qty·(mark − entry)|) of account i: equity and maintenance summed
    exactly as `margin_numbers` sums them (collateral, debt, positions, each in pool order)."""
    value = 0.0
    gross = 0.0
    pnl = 0.0
    for j in range(accounts.coll_start[i], accounts.coll_start[i] + accounts.coll_count[i]):
        a = accounts.coll_asset[j]
        v = accounts.coll_qty[j] * index[a]
        value += v - bracket_charge(v, a, risk.haircut_upto, risk.haircut_rate, risk.haircut_cum)
        gross += abs(v)
    maintenance = 0.0
    for j in range(accounts.debt_start[i], accounts.debt_start[i] + accounts.debt_count[i]):
        a = accounts.debt_asset[j]
        v = accounts.debt_qty[j] * index[a]
        value -= v
        maintenance += v * risk.borrow_rate[a]
        gross += abs(v)
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
    return value, maintenance, gross, pnl


PRUNE_EPS = 1e-9  # relative margin of the pruning bound: far above float rounding, far below any price move


@njit(cache=True)
def _move(ref, now):
    """Largest |now/ref − 1| over the entries; inf when a reference is zero or non-finite or a price becomes
    non-finite (entries NaN at both ends are left out: whoever holds them has a NaN slack and is evaluated)."""
    worst = 0.0
    for a in range(ref.shape[0]):
        r = ref[a]
        p = now[a]
        if r != r and p != p:
            continue
        if r == p and abs(r) < np.inf:
            continue
        if not (abs(r) < np.inf) or r == 0.0:
            return np.inf
        m = abs(p / r - 1.0)
        if not (m < np.inf):  # NaN or inf now
            return np.inf
        worst = max(worst, m)
    return worst


@njit(cache=True)
def price_moves(history_index, history_mark, index, mark, out):
    """out[s] = the largest relative move of any index or mark between call s (rows of the history) and now."""
    for s in range(out.shape[0]):
        out[s] = max(_move(history_index[s], index), _move(history_mark[s], mark))


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


@njit(cache=True)
def _in_pool_order(rows, start):
    """`rows` ordered by their slices' position in a pool (each account's slice is contiguous, so walking the
    slices in this order visits the entries in pool order); no sort when they are already (compact pools)."""
    for k in range(1, rows.shape[0]):
        if start[rows[k]] < start[rows[k - 1]]:
            return rows[np.argsort(start[rows], kind="mergesort")]
    return rows


@njit(cache=True)
def _round_flows(index, mark, accounts, risk, rows, out_net_sold):
    """Flows of the accounts `rows` (those that fell this round), summed in pool order — positions, then
    collateral — exactly as `liquidate_round`'s flat passes sum them."""
    notional = 0.0
    for i in _in_pool_order(rows, accounts.pos_start):
        for j in range(accounts.pos_start[i], accounts.pos_start[i] + accounts.pos_count[i]):
            ins = accounts.pos_instr[j]
            flow = accounts.pos_qty[j] * mark[ins]   # long: sell (+), short: buy (−)
            out_net_sold[risk.underlying[ins]] += flow
            notional += abs(flow)
    for i in _in_pool_order(rows, accounts.coll_start):
        for j in range(accounts.coll_start[i], accounts.coll_start[i] + accounts.coll_count[i]):
            a = accounts.coll_asset[j]
            if a == risk.settlement:
                continue
            v = accounts.coll_qty[j] * index[a]
            out_net_sold[a] += v
            notional += v
    return notional


@njit(cache=True, error_model="numpy")
def liquidate_round_pruned(index, mark, accounts, risk, liquidated, round_no, commit, out_net_sold, call, moves,
                           k_factor, seen, slack, scale, work_rows):
    """`liquidate_round` with pruning (module docstring): returns (accounts closed, notional closed, accounts
    evaluated, live accounts offered to the round). `call` numbers this evaluation (0, 1, …), `moves[s]` is the
    price move since call s, and per account `seen` (call of its last evaluation, −1 = none), `slack` (S − ε) and
    `scale` (K·G·(1 + 1e-9)) carry the bound from call to call. `work_rows`: int32 scratch of the row count."""
    count = 0
    evaluated = 0
    live = 0
    for i in range(accounts.active.shape[0]):
        if not accounts.active[i] or liquidated[i] != 0:
            continue
        live += 1
        s = seen[i]
        if s >= 0 and slack[i] > scale[i] * moves[s]:
            continue
        evaluated += 1
        e, m, g, u = account_numbers_bounded(i, index, mark, accounts, risk)
        seen[i] = call
        kg = k_factor * g
        room = (e - m) - PRUNE_EPS * (kg + u)
        if abs(room) < np.inf and abs(kg) < np.inf:
            slack[i] = room
            scale[i] = kg * (1.0 + PRUNE_EPS)
        else:
            slack[i] = np.nan  # never skipped
            scale[i] = np.nan
        if e < m:
            work_rows[count] = i
            count += 1
            if commit:
                liquidated[i] = round_no
    notional = 0.0
    if not commit or count == 0:
        return count, notional, evaluated, live
    notional = _round_flows(index, mark, accounts, risk, work_rows[:count], out_net_sold)
    return count, notional, evaluated, live


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


def cascade_rounds(t, severity, direction, quotes, index_params, mark_params, base_index, impact, liquidation_venue,
                   max_rounds):
    """The coordinator's side of §5 as a generator: yields a RoundRequest, receives the RoundResult summed over
    all shards, applies impact, and returns the CascadeResult. `run_cascade` drives it with local books; the
    streaming coordinator drives the same generator with shards answering over Kafka."""
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
    res = CascadeResult(net_sold=np.zeros(n_assets))
    for round_no in range(1, max_rounds + 2):
        compute_index(t, mid, quotes.ts, quotes.ref_rate, quotes.ref_ts, index_params, prev,
                      index, stale, sprice, sstatus)
        compute_marks(t, last, quotes.funding_rate, quotes.next_funding_ts, quotes.basis_ma, index, mark_params, mark)
        prev[:] = index
        commit = round_no <= max_rounds
        got: RoundResult = yield RoundRequest(round_no, commit, index.copy(), mark.copy())
        if got.count == 0:
            break
        if not commit:
            res.runaway = True
            break
        res.rounds += 1
        res.liquidated_accounts += got.count
        res.liquidated_notional += got.notional
        res.round_accounts.append(got.count)
        res.round_notional.append(got.notional)
        res.net_sold += got.net_sold
        impact_factors(got.net_sold, impact, factor)
        # the floor binding is the impact model speaking, not the market: an uncalibrated depth
        res.floored.extend(a for a in np.flatnonzero(factor <= MIN_PRICE_FACTOR).tolist() if a not in res.floored)
        apply_impact(factor, quotes.base, quotes.venue, liquidation_venue, mid, last)
    res.final_index = index.copy()
    res.final_mid = mid
    if res.rounds > 1 and res.round_notional[0] > 0:
        res.amplification = res.liquidated_notional / res.round_notional[0]
    return res


class Shard:
    """One shard's side: a frozen copy of its accounts and the round each one fell in (`fallen`, 0 = not fallen).

    Rounds are pruned (module docstring): the shard remembers the prices of each call to `run` and, per account,
    the call of its last evaluation, its slack and its bound's scale. The accounts must not change between calls.
    `prune=False` evaluates every live account every round (`liquidate_round`, the full scan) — same results."""

    def __init__(self, accounts: AccountArrays, risk: RiskParams, prune: bool = True):
        self.accounts = accounts
        self.risk = risk
        self.prune = prune
        n = accounts.active.shape[0]
        self.fallen = np.zeros(n, dtype=np.int32)
        self.work_equity = np.empty(n)       # full scan: equity; pruned: slack S − ε at the last evaluation
        self.work_maintenance = np.empty(n)  # full scan: maintenance; pruned: K·G·(1 + 1e-9) at the last evaluation
        self.seen = np.full(n, -1, dtype=np.int32) if prune else np.zeros(0, dtype=np.int32)
        self.work_rows = np.empty(n if prune else 0, dtype=np.int32)
        self.k_factor = move_factor(risk)
        self.history_index: list[np.ndarray] = []
        self.history_mark: list[np.ndarray] = []
        self.evaluated = 0  # account evaluations so far
        self.candidates = 0  # live accounts offered to a round so far (what a full scan evaluates)

    def run(self, req: RoundRequest, n_assets: int) -> RoundResult:
        flows = np.zeros(n_assets)
        if not self.prune:
            live = int(np.count_nonzero(self.accounts.active & (self.fallen == 0)))
            c, n = liquidate_round(req.index, req.mark, self.accounts, self.risk, self.fallen, req.round_no,
                                   req.commit, flows, self.work_equity, self.work_maintenance)
            self.evaluated += live
            self.candidates += live
            return RoundResult(int(c), float(n), flows)
        index = np.ascontiguousarray(req.index, dtype=np.float64)
        mark = np.ascontiguousarray(req.mark, dtype=np.float64)
        call = len(self.history_index)
        moves = np.empty(call)
        if call:
            price_moves(np.array(self.history_index), np.array(self.history_mark), index, mark, moves)
        c, n, ev, live = liquidate_round_pruned(index, mark, self.accounts, self.risk, self.fallen, req.round_no,
                                          req.commit, flows, call, moves, self.k_factor, self.seen,
                                          self.work_equity, self.work_maintenance, self.work_rows)
        self.history_index.append(index.copy())
        self.history_mark.append(mark.copy())
        self.evaluated += int(ev)
        self.candidates += int(live)
        return RoundResult(int(c), float(n), flows)


def run_cascade(t, severity, direction, quotes, index_params, mark_params, base_index, books, risk, impact,
                liquidation_venue, max_rounds, prune: bool = True) -> CascadeResult:
    shards = [Shard(b, risk, prune) for b in books]
    n_assets = base_index.shape[0]
    rounds = cascade_rounds(t, severity, direction, quotes, index_params, mark_params, base_index, impact,
                            liquidation_venue, max_rounds)
    req = next(rounds)
    try:
        while True:
            results = [s.run(req, n_assets) for s in shards]
            total = RoundResult(sum(r.count for r in results), sum(r.notional for r in results),
                                np.sum([r.net_sold for r in results], axis=0))
            req = rounds.send(total)
    except StopIteration as done:
        res = done.value
    res.liquidated_round = [s.fallen for s in shards]
    return res
