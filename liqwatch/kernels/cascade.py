"""Liquidation cascade (SPEC §5): shock, then rounds of liquidation and market impact until nobody new falls.

    result = run_cascade(t, s, direction, quotes, index_params, mark_params, base_index,
                         [accounts], risk, impact, liquidation_venue, max_rounds)

One round = recompute index and marks at the current books → every account newly liquidatable is closed at
those prices (`liquidate_round`: longs sell |qty|·mark of the underlying, shorts buy it, every non-settlement
collateral asset is sold in full) → the round's net sells per asset move the liquidation venue's books of that
asset once (`impact_factors`, `apply_impact`). Accounts already liquidatable before the shock fall in round 1.

Sharding: `run_cascade` takes a list of books. Each shard reports its round's liquidations and net flows; they
are summed and impact is applied once, so any split of the accounts gives the single-process result (up to float
summation order). The streaming coordinator does the same exchange over Kafka with `liquidate_round`.
"""

from dataclasses import dataclass, field

import numpy as np
from numba import njit

from liqwatch.kernels.health import margin_numbers
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
    """One shard's side: a frozen copy of its accounts and the round each one fell in."""

    def __init__(self, accounts: AccountArrays, risk: RiskParams):
        self.accounts = accounts
        self.risk = risk
        n = accounts.active.shape[0]
        self.fallen = np.zeros(n, dtype=np.int32)
        self.work_equity = np.empty(n)
        self.work_maintenance = np.empty(n)

    def run(self, req: RoundRequest, n_assets: int) -> RoundResult:
        flows = np.zeros(n_assets)
        c, n = liquidate_round(req.index, req.mark, self.accounts, self.risk, self.fallen, req.round_no, req.commit,
                               flows, self.work_equity, self.work_maintenance)
        return RoundResult(int(c), float(n), flows)


def run_cascade(t, severity, direction, quotes, index_params, mark_params, base_index, books, risk, impact,
                liquidation_venue, max_rounds) -> CascadeResult:
    shards = [Shard(b, risk) for b in books]
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
