"""Liquidation cascade (SPEC §5): shock, then rounds of liquidation and market impact until nobody new falls.

    result = run_cascade(t, s, direction, quotes, index_rules, mark_rules, base_index,
                         [book], risk, impact, liquidation_venue, max_rounds)

One round = recompute index and marks at the current books → every account newly liquidatable is closed at
those prices (`liquidate_round`: longs sell |qty|·mark of the underlying, shorts buy it, every non-settlement
collateral asset is sold in full) → the round's net sells per asset move the liquidation venue's books of that
asset once (`impact_factors`, `apply_impact`). Accounts already liquidatable before the shock fall in round 1.

Sharding: `run_cascade` takes a list of books. Each shard reports its round's liquidations and net flows; they
are summed and impact is applied once, so any split of the accounts gives the single-book result (up to float
summation order). The streaming coordinator does the same exchange over Kafka with `liquidate_round`.
"""

from dataclasses import dataclass, field

import numpy as np
from numba import njit

from kernels.health import margin_numbers
from kernels.prices import compute_index, compute_marks
from kernels.rules import IMPACT_LINEAR, IMPACT_SQRT
from kernels.stress import shock_books

MIN_PRICE_FACTOR = 0.01  # one round's impact never takes a book below 1% of its price


@njit(cache=True, error_model="numpy")
def liquidate_round(index, mark, book, risk, liquidated, round_no, commit, out_net_sold, work_equity,
                    work_maintenance):
    """Close every live account that is liquidatable at (index, mark). Adds each closed account's flows to
    `out_net_sold` (USD per asset, + sold) and returns (accounts closed, notional closed). With commit=False
    nothing is marked (the runaway check after the last allowed round). `work_*` are scratch arrays of the
    book's row count."""
    margin_numbers(index, mark, book, risk, work_equity, work_maintenance)
    count = 0
    for i in range(book.active.shape[0]):
        if book.active[i] and liquidated[i] == 0 and work_equity[i] < work_maintenance[i]:
            count += 1
            if commit:
                liquidated[i] = round_no
    notional = 0.0
    if not commit or count == 0:
        return count, notional
    for j in range(book.pos_owner.shape[0]):
        o = book.pos_owner[j]
        if o < 0 or liquidated[o] != round_no:
            continue
        ins = book.pos_instr[j]
        flow = book.pos_qty[j] * mark[ins]   # long: sell (+), short: buy (−)
        out_net_sold[risk.underlying[ins]] += flow
        notional += abs(flow)
    for j in range(book.coll_owner.shape[0]):
        o = book.coll_owner[j]
        if o < 0 or liquidated[o] != round_no:
            continue
        a = book.coll_asset[j]
        if a == risk.settlement:
            continue
        v = book.coll_qty[j] * index[a]
        out_net_sold[a] += v
        notional += v
    return count, notional


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


def run_cascade(t, severity, direction, quotes, index_rules, mark_rules, base_index, books, risk, impact,
                liquidation_venue, max_rounds) -> CascadeResult:
    n_assets = base_index.shape[0]
    n_cons = index_rules.cons_kind.shape[0]
    mid = np.empty_like(quotes.mid)
    last = np.empty_like(quotes.last)
    shock_books(quotes.mid, quotes.last, quotes.base, direction, severity, mid, last)
    index = np.empty(n_assets)
    prev = base_index.copy()
    stale = np.empty(n_assets, dtype=np.bool_)
    sprice = np.empty(n_cons)
    sstatus = np.empty(n_cons, dtype=np.int8)
    mark = np.empty(mark_rules.underlying.shape[0])
    factor = np.empty(n_assets)
    res = CascadeResult(net_sold=np.zeros(n_assets))
    res.liquidated_round = [np.zeros(b.active.shape[0], dtype=np.int32) for b in books]
    work = [(np.empty(b.active.shape[0]), np.empty(b.active.shape[0])) for b in books]
    for round_no in range(1, max_rounds + 2):
        compute_index(t, mid, quotes.ts, quotes.ref_rate, quotes.ref_ts, index_rules, prev,
                      index, stale, sprice, sstatus)
        compute_marks(t, last, quotes.funding_rate, quotes.next_funding_ts, quotes.basis_ma, index, mark_rules, mark)
        prev[:] = index
        commit = round_no <= max_rounds
        flows = np.zeros(n_assets)
        count = 0
        notional = 0.0
        for book, fallen, (we, wm) in zip(books, res.liquidated_round, work):
            c, n = liquidate_round(index, mark, book, risk, fallen, round_no, commit, flows, we, wm)
            count += c
            notional += n
        if count == 0:
            break
        if not commit:
            res.runaway = True
            break
        res.rounds += 1
        res.liquidated_accounts += count
        res.liquidated_notional += notional
        res.round_accounts.append(count)
        res.round_notional.append(notional)
        res.net_sold += flows
        impact_factors(flows, impact, factor)
        apply_impact(factor, quotes.base, quotes.venue, liquidation_venue, mid, last)
    res.final_index = index.copy()
    res.final_mid = mid
    if res.rounds > 1 and res.round_notional[0] > 0:
        res.amplification = res.liquidated_notional / res.round_notional[0]
    return res
