"""The shared implementation of SPEC §3–§5: events in, index/mark/health/cascade numbers out.

    engine = Engine(cfg)
    for raw in lines:
        engine.apply(decode(raw))            # BadEvent for anything the config does not know
    engine.health_rows()                     # [{"account", "equity", "maintenance", "health", ...}, ...]
    engine.cascade("risk_off", 0.10)         # the §5 result as a dict

The batch commands and the streaming workers both drive an Engine, so the same events give the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from liqwatch.kernels.cascade import run_cascade
from liqwatch.kernels.market import APPLIED, SUPERSEDED
from liqwatch.kernels.health import margin_health
from liqwatch.kernels.liqmap import liquidation_map
from liqwatch.kernels.positions import (ADL_BINANCE, ADL_HYPERLIQUID, adl_keys, adl_keys_of, position_prices,
                                        position_prices_of)
from liqwatch.kernels.stress import liquidation_severity
from liqwatch.config import Config
from liqwatch.events import Account, BadEvent, Event, Reference, Tick, number
from liqwatch.core.ingest import Gate
from liqwatch.core.layout import Layout
from liqwatch.core.state import Accounts, MarketState, PriceView

SEVERITY_GRID = 64  # coarse scan points before bisection (liqwatch.kernels.stress)



@dataclass
class Health:
    """Margin numbers of every account row at one event time."""

    t: int
    equity: np.ndarray
    maintenance: np.ndarray
    health: np.ndarray
    liquidatable: np.ndarray
    severity: np.ndarray | None


class Engine:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.layout = Layout(cfg)
        self.market = MarketState(self.layout)
        self.accounts = Accounts(self.layout)
        self.gate = Gate(cfg)  # the door for raw records (decode + config checks)
        self.max_ts = -1
        self.applied = 0
        self.superseded = 0

    def apply(self, event: Event) -> bool:
        """Apply one decoded event (raises BadEvent); False when it was superseded by a newer one."""
        if isinstance(event, Tick):
            ok = self.market.apply_tick(event)
        elif isinstance(event, Reference):
            ok = self.market.apply_reference(event)
        else:
            ok = self._apply_account(event)
        if ok:
            self.applied += 1
            self.max_ts = max(self.max_ts, event.ts)
        else:
            self.superseded += 1
        return ok

    def apply_many(self, events: list[Event]) -> list[bool | BadEvent]:
        """Apply events in order, runs of market events in one kernel call; per event: True applied, False
        superseded, or the BadEvent that rejected it (the others are applied regardless)."""
        out: list[bool | BadEvent] = []
        run: list[Tick | Reference] = []

        def flush_run() -> None:
            if run:
                results = self.market.apply_many(run)
                for ev, r in zip(run, results):
                    if r is True:
                        self.applied += 1
                        if ev.ts > self.max_ts:
                            self.max_ts = ev.ts
                    elif r is False:
                        self.superseded += 1
                out.extend(results)
                run.clear()

        for ev in events:
            if type(ev) is not Account:
                run.append(ev)
                continue
            flush_run()
            try:
                out.append(self._count(ev, self._apply_account(ev)))
            except BadEvent as e:
                out.append(e)
        flush_run()
        return out

    def apply_rows(self, rows: np.ndarray) -> tuple[np.ndarray, dict[int, BadEvent]]:
        """Apply market rows (liqwatch.core.columns) in order: codes per row and the rejected rows' BadEvents."""
        codes, rejected = self.market.apply_rows(rows)
        applied = codes == APPLIED
        n = int(applied.sum())
        self.applied += n
        self.superseded += int((codes == SUPERSEDED).sum())
        if n:
            self.max_ts = max(self.max_ts, int(rows["ts"][applied].max()))
        return codes, rejected

    def _apply_account(self, ev: Account) -> bool:
        clock = self.market.clock
        if ev.ts > clock.limit:  # a snapshot dated far past the market would set the evaluation time
            raise BadEvent("ahead_of_stream", f"ts: {ev.ts - clock.t} ms ahead of the market's event time "
                                              f"{clock.t} (ingest.max_ahead_ms {clock.max_ahead_ms})")
        return self.accounts.apply(ev) is not None

    def _count(self, ev: Event, result: bool | BadEvent) -> bool | BadEvent:
        if result is True:
            self.applied += 1
            self.max_ts = max(self.max_ts, ev.ts)
        elif result is False:
            self.superseded += 1
        return result

    # -- evaluation ------------------------------------------------------------------------------------------
    def eval_time(self, at: int | None = None) -> int:
        return self.max_ts if at is None else at

    def prices(self, at: int | None = None) -> PriceView:
        return self.market.prices_at(self.eval_time(at))

    def health(self, at: int | None = None, with_severity: bool = True) -> Health:
        pv = self.prices(at)
        t, index, mark = pv.t, pv.index, pv.mark
        accounts = self.accounts.view()
        n = accounts.active.shape[0]
        eq, mm, h = np.empty(n), np.empty(n), np.empty(n)
        liq = np.empty(n, dtype=np.bool_)
        margin_health(index, mark, accounts, self.layout.risk_params, eq, mm, h, liq)
        sev = None
        if with_severity:
            sev = np.empty(n)
            stress = self.cfg.stress
            liquidation_severity(
                float(t),
                float(stress.severities[-1]),
                SEVERITY_GRID,
                self.layout.scenario_direction(stress.primary_scenario),
                pv.quotes,
                self.layout.index_params,
                self.layout.mark_params,
                index,
                accounts,
                self.layout.risk_params,
                sev,
            )
        return Health(t, eq, mm, h, liq, sev)

    def health_rows(self, at: int | None = None) -> list[dict]:
        hs = self.health(at)
        rows = []
        for r in self.accounts.order():
            if not self.accounts.active[r]:
                continue
            rows.append(
                {
                    "account": self.accounts.ids[r],
                    "isolated": self.accounts.isolated_name(r),
                    "equity": number(hs.equity[r]),
                    "maintenance": number(hs.maintenance[r]),
                    "health": number(hs.health[r]),
                    "liquidatable": bool(hs.liquidatable[r]),
                    "liquidation_severity": number(hs.severity[r]) if hs.severity is not None else None,
                }
            )
        return rows

    def position_prices(self, at: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(mark, liquidation price, bankruptcy price) of every entry of the position pool (NaN where none)."""
        pv = self.prices(at)
        accounts = self.accounts.view()
        n = accounts.pos_qty.shape[0]
        liq, bank = np.empty(n), np.empty(n)
        position_prices(pv.index, pv.mark, accounts, self.layout.risk_params, self.layout.follows, liq, bank)
        return pv.mark[accounts.pos_instr] if n else np.empty(0), liq, bank

    def adl_ranks(self, bankruptcy: np.ndarray, at: int | None = None) -> np.ndarray:
        """Per position-pool entry, its ADL-risk rank as venues publish it: the share of the positions on the same
        instrument and side whose queue key (`liquidation.adl` rule, liqwatch.kernels.positions.adl_keys) is at
        most its own — 1: first to be auto-deleveraged; NaN where there is no key."""
        pv = self.prices(at)
        accounts = self.accounts.view()
        key = np.empty(accounts.pos_qty.shape[0])
        rule = adl_rule(self.cfg, queue_only=True)
        adl_keys(pv.mark, accounts, self.layout.risk_params, pv.index, bankruptcy, rule, key)
        rank = np.full(key.shape[0], np.nan)
        ok = ~np.isnan(key)
        group = accounts.pos_instr.astype(np.int64) * 2 + (accounts.pos_qty > 0)
        for g in np.unique(group[ok]):
            members = np.flatnonzero(ok & (group == g))
            k = key[members]
            # ties share the highest rank of their group (a venue shows them the same light)
            rank[members] = np.searchsorted(np.sort(k), k, side="right") / members.shape[0]
        return rank

    def position_rows(self, at: int | None = None) -> list[dict]:
        """One row per position, accounts sorted (cross positions first, then isolated ones), positions in snapshot
        order: `account`, `margin` (`cross` or `isolated`), `instrument`, `qty`,
        `mark`, `liquidation_price`, `bankruptcy_price` (null where no such price exists), `adl_rank`."""
        mark, liq, bank = self.position_prices(at)
        adl = self.adl_ranks(bank, at)
        accounts = self.accounts.view()
        names = self.layout.instruments
        rows = []
        for r in self.accounts.order():
            if not self.accounts.active[r]:
                continue
            margin = "cross" if self.accounts.isolated[r] < 0 else "isolated"
            for p in range(accounts.pos_start[r], accounts.pos_start[r] + accounts.pos_count[r]):
                rows.append({"account": self.accounts.ids[r], "margin": margin,
                             "instrument": names[accounts.pos_instr[p]],
                             "qty": float(accounts.pos_qty[p]), "mark": number(mark[p]),
                             "liquidation_price": number(liq[p]), "bankruptcy_price": number(bank[p]),
                             "adl_rank": number(adl[p])})
        return rows

    def position_numbers_of(self, rows: np.ndarray, pv, accounts) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(liquidation price, bankruptcy price, ADL queue key) of the position-pool entries of the accounts
        `rows` (the kernels only: no Python object per position, so a thread running it leaves the GIL free)."""
        n = accounts.pos_qty.shape[0]
        liq, bank, key = np.empty(n), np.empty(n), np.empty(n)
        rows = np.ascontiguousarray(rows, dtype=np.int64)
        risk = self.layout.risk_params
        position_prices_of(rows, pv.index, pv.mark, accounts, risk, self.layout.follows, liq, bank)
        adl_keys_of(rows, pv.mark, accounts, risk, pv.index, bank, adl_rule(self.cfg, queue_only=True), key)
        return liq, bank, key

    def position_entries(self, r: int, accounts, liq, bank, key) -> list[dict]:
        """Account row r's positions as the `health` events carry them: `instrument`, `qty`, `liquidation_price`,
        `bankruptcy_price` (null where none exists) and `adl_key`, its place in the venue's auto-deleveraging
        queue (`liquidation.adl`; higher: first) — comparable across shards, unlike a rank."""
        names = self.layout.instruments
        start = int(accounts.pos_start[r])
        return [{"instrument": names[int(accounts.pos_instr[p])], "qty": float(accounts.pos_qty[p]),
                 "liquidation_price": number(liq[p]), "bankruptcy_price": number(bank[p]), "adl_key": number(key[p])}
                for p in range(start, start + int(accounts.pos_count[r]))]

    def map_cells(self, asset: str, factors, pv, accounts) -> dict[str, np.ndarray]:
        """The liquidation map of `asset` on the snapshot `pv` and `accounts` (liqwatch.kernels.liqmap), as arrays
        per level: `levels` (the factors, ascending, 1 among them), `price`, `accounts`, `long`, `short`,
        `collateral`, `added`. One call for the batch command, the workers' metrics and the replay."""
        lay = self.layout
        levels = np.unique(np.append(np.asarray(factors, dtype=np.float64), 1.0))
        k = levels.shape[0]
        out = {"levels": levels, "price": np.empty(k), "accounts": np.empty(k, dtype=np.int64), "long": np.empty(k),
               "short": np.empty(k), "collateral": np.empty(k), "added": np.empty(k)}
        liquidation_map(float(pv.t), lay.asset_id[asset], levels, int(np.searchsorted(levels, 1.0)), pv.quotes,
                        lay.index_params, lay.mark_params, pv.index, accounts, lay.risk_params, out["price"],
                        out["accounts"], out["long"], out["short"], out["collateral"], out["added"])
        return out

    def liquidation_map(self, asset: str, factors, at: int | None = None) -> list[dict]:
        """Per level, a factor on every venue price of `asset` (ascending, with the current prices, move 0, among
        them): what round 1 of that shock liquidates (liqwatch.kernels.liqmap). `notional_usd` = long + short +
        collateral, the §5 round-1 notional; `added_usd`, the heatmap's cell: the notional of the accounts that
        fall at this level and not at the next level nearer to the current price."""
        c = self.map_cells(asset, factors, self.prices(at), self.accounts.view())
        return [{"asset": asset, "move": round(float(f) - 1.0, 12), "price": number(c["price"][g]),
                 "accounts": int(c["accounts"][g]), "long_usd": number(c["long"][g]),
                 "short_usd": number(c["short"][g]), "collateral_usd": number(c["collateral"][g]),
                 "notional_usd": number(c["long"][g] + c["short"][g] + c["collateral"][g]),
                 "added_usd": number(c["added"][g])} for g, f in enumerate(c["levels"])]

    def cascade(self, scenario: str, severity: float, at: int | None = None) -> dict:
        if scenario not in self.cfg.stress.scenarios:
            raise KeyError(scenario)
        pv = self.prices(at)
        t = pv.t
        res = run_cascade(
            float(t),
            float(severity),
            self.layout.scenario_direction(scenario),
            pv.quotes,
            self.layout.index_params,
            self.layout.mark_params,
            pv.index,
            [self.accounts.view()],
            self.layout.risk_params,
            self.layout.impact_params,
            self.layout.venue_id[self.cfg.liquidation.venue],
            self.cfg.stress.max_rounds,
            fee_rate=self.cfg.liquidation.fee_rate,
            insurance_fund=self.cfg.liquidation.insurance_fund,
            partial=self.cfg.liquidation.partial_step(),
            adl_rule=adl_rule(self.cfg),
        )
        return cascade_dict(self, t, scenario, severity, res)


def adl_rule(cfg: Config, queue_only: bool = False) -> int | None:
    """The kernels' number for the venue's ADL queue (`liquidation.adl`); None when the cascade is not to execute
    auto-deleveraging (`liquidation.auto_deleverage` off), unless only the queue is asked for."""
    if not (queue_only or cfg.liquidation.auto_deleverage):
        return None
    return ADL_HYPERLIQUID if cfg.liquidation.adl == "hyperliquid" else ADL_BINANCE


def cascade_dict(engine: Engine, t: int, scenario: str, severity: float, res) -> dict:
    lay = engine.layout
    books = engine.layout.books  # the config's books: the ones the snapshot's arrays were built for
    return {
        "type": "cascade",
        "ts": t,
        "scenario": scenario,
        "severity": severity,
        "rounds": res.rounds,
        "liquidated_accounts": res.liquidated_accounts,
        "liquidated_notional": float(res.liquidated_notional),
        "net_sold": {lay.assets[a]: float(v) for a, v in enumerate(res.net_sold) if v != 0.0},
        "final_index": {
            lay.assets[a]: number(v)
            for a, v in enumerate(res.final_index)
            if lay.assets[a] in engine.cfg.assets and not lay.index_params.fixed_one[a]
        },
        "final_prices": {
            f"{v}:{s}": float(res.final_mid[k]) for k, (v, s) in enumerate(books) if not np.isnan(res.final_mid[k])
        },
        "amplification": float(res.amplification),
        "runaway": bool(res.runaway),
        "round_accounts": list(res.round_accounts),
        "round_notional": [float(x) for x in res.round_notional],
        # with liquidation.partial: steps that closed a fraction of an account, which stayed in (per round)
        "partial_liquidations": int(res.partial_liquidations),
        "round_partial": list(res.round_partial),
        "fees_usd": float(res.liquidated_notional * engine.cfg.liquidation.fee_rate),
        # what the liquidated accounts' equity could pay of their fees, and the deficit of those that ended below 0
        "fees_paid_usd": float(res.fees),
        "deficit_usd": float(res.deficit),
        "insurance_fund": None if res.fund_start is None else {
            "start_usd": float(res.fund_start), "end_usd": float(res.fund_end),
            "drawdown_usd": float(res.fund_drawdown), "uncovered_usd": float(res.uncovered),
            "adl_notional_usd": float(res.adl_notional),
            "adl_notional_by_instrument_usd": {lay.instruments[k]: float(v) for k, v in
                                               enumerate(res.adl_by_instrument) if v > 0.0},
            "round_drawdown_usd": [float(x) for x in res.round_fund_drawdown],
            "round_uncovered_usd": [float(x) for x in res.round_uncovered],
            "round_adl_notional_usd": [float(x) for x in res.round_adl_notional],
            # executed (liquidation.auto_deleverage): the opposite positions taken, and the accounts that held them
            "adl_closed_notional_usd": float(res.adl_closed_notional),
            "deleveraged_accounts": int(res.deleveraged_accounts),
            "round_adl_closed_notional_usd": [float(x) for x in res.round_adl_closed_notional],
            "round_deleveraged_accounts": list(res.round_deleveraged_accounts)},
        # assets whose impact model took a round's price to the floor (1% of it): a depth to calibrate
        "impact_floor": [lay.assets[a] for a in sorted(res.floored)],
    }
