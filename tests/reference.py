"""Plain-Python reference of SPEC §3–§5, written from the spec, not from the liqwatch.kernels.

Dicts and floats, loops over bracket slices (no cumulative tables), one account at a time. Slow on purpose:
the kernels are compared against it on seeded random populations.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

from liqwatch.config import USD_LIKE, Config

NAN = float("nan")


def is_nan(x: float) -> bool:
    return x != x


def median(values: list[float]) -> float:
    v = sorted(values)
    n = len(v)
    return v[n // 2] if n % 2 else 0.5 * (v[n // 2 - 1] + v[n // 2])


def incremental(amount: float, brackets) -> float:
    """Σ over brackets of rate × the part of `amount` inside the bracket (like tax brackets)."""
    charge, lower = 0.0, 0.0
    for b in brackets:
        upper = math.inf if b.upto is None else b.upto
        if amount > lower:
            charge += b.rate * (min(amount, upper) - lower)
        lower = upper
    return charge


def dependency_order(cfg: Config) -> list[str]:
    order: list[str] = []

    def deps(a):
        spec = cfg.assets.get(a)
        if spec is None or spec.index is None:
            return []
        out = []
        for c in spec.index.constituents:
            d = c.in_ if c.is_redemption else c.quote if "/" in c.source else cfg.settlement
            if d in cfg.assets and cfg.assets[d].index is not None:
                out.append(d)
        return out

    def visit(a):
        if a in order:
            return
        for d in deps(a):
            visit(d)
        order.append(a)

    for a in cfg.assets:
        visit(a)
    return order


@dataclass
class Book:
    mid: float = NAN
    last: float = NAN
    ts: float = -math.inf
    funding_rate: float = NAN
    next_funding_ts: float = NAN


@dataclass
class Market:
    """Quotes per `venue:symbol`, references per asset, basis samples per instrument."""

    cfg: Config
    books: dict[str, Book] = field(default_factory=dict)
    refs: dict[str, tuple[float, float, str]] = field(default_factory=dict)  # asset -> (rate, ts, in)
    index: dict[str, float] = field(default_factory=dict)
    basis: dict[str, list[tuple[float, float]]] = field(default_factory=dict)

    def price_of(self, asset: str, index: dict[str, float]) -> float:
        spec = self.cfg.assets.get(asset)
        if spec is not None and spec.index is not None:
            return index.get(asset, NAN)
        if asset == self.cfg.settlement or asset in USD_LIKE:
            return 1.0
        return NAN

    def compute_index(self, t: float, mids: dict[str, float], prev: dict[str, float]):
        """(index, stale, {(asset, source): (price, status)}) — §3."""
        cfg = self.cfg
        index: dict[str, float] = {}
        stale: dict[str, bool] = {}
        detail = {}
        for a in dependency_order(cfg):
            ix = cfg.assets[a].index
            if ix is None:
                continue
            fresh = []
            anchor = NAN  # the first fresh redemption source
            for c in ix.constituents:
                if c.is_redemption:
                    rate, ts, _ = self.refs.get(a, (NAN, -math.inf, ""))
                    p = rate * self.price_of(c.in_, index)
                    limit = c.max_age_ms or ix.redemption_max_age_ms
                else:
                    symbol = c.source.split(":", 1)[1]
                    # a derivative's book (no BASE/QUOTE) is quoted in the settlement asset
                    quote = symbol.split("/")[1] if "/" in symbol else cfg.settlement
                    p = mids.get(c.source, NAN) * self.price_of(quote, index)
                    ts = self.books[c.source].ts if c.source in self.books else -math.inf
                    limit = c.max_age_ms or ix.max_age_ms
                if is_nan(p):
                    detail[(a, c.source)] = (p, "missing")
                elif t - ts > limit:
                    detail[(a, c.source)] = (p, "stale")
                else:
                    fresh.append((p, c.weight, c.source))
                    if c.is_redemption and is_nan(anchor):
                        anchor = p
            survivors = []
            if fresh:
                # three or more: the median; fewer: the anchor, or no filter at all without one
                med = median([p for p, _, _ in fresh]) if len(fresh) >= 3 else anchor
                for p, w, s in fresh:
                    if not is_nan(med) and abs(p - med) / med > ix.max_deviation:
                        detail[(a, s)] = (p, "deviation")
                    else:
                        detail[(a, s)] = (p, "used")
                        survivors.append((p, w))
            if not survivors:
                index[a] = prev.get(a, NAN)
                stale[a] = True
                continue
            total = sum(w for _, w in survivors)
            if ix.method == "weighted_mean":
                value = sum(p * w / total for p, w in survivors)
            else:
                cum = 0.0
                value = NAN
                for p, w in sorted(survivors):
                    cum += w / total
                    if cum >= 0.5 - 1e-12:
                        value = p
                        break
            if ix.floor is not None:
                value = max(value, ix.floor)
            if ix.cap is not None:
                value = min(value, ix.cap)
            index[a] = value
            stale[a] = False
        return index, stale, detail

    def basis_average(self, instrument: str, t: float) -> float:
        window = self.cfg.instruments[instrument].mark.basis_window_s * 1000.0
        kept = [v for ts, v in self.basis.get(instrument, []) if ts > t - window]
        return sum(kept) / len(kept) if kept else NAN

    def compute_marks(self, t: float, index: dict[str, float], lasts: dict[str, float], basis: dict[str, float]):
        marks = {}
        for name, ins in self.cfg.instruments.items():
            idx = index.get(ins.underlying, NAN)
            if ins.mark.method == "index" or is_nan(idx):
                marks[name] = idx
                continue
            src = self.cfg.mark_source(name)
            book = self.books.get(src, Book())
            inputs = []
            if not is_nan(book.funding_rate):
                to_funding = max(book.next_funding_ts - t, 0.0)
                inputs.append(idx * (1 + book.funding_rate * to_funding / (ins.mark.funding_interval_s * 1000.0)))
            else:
                inputs.append(idx)
            if not is_nan(basis[name]):
                inputs.append(idx + basis[name])
            lp = lasts.get(src, NAN)
            if not is_nan(lp):
                inputs.append(lp)
            marks[name] = median(inputs)
        return marks

    # -- events, evaluated after each market event (the schedule the spec's "last value" refers to) --------
    def tick(self, ev: dict) -> None:
        key = f"{ev['venue']}:{ev['symbol']}"
        b = self.books.setdefault(key, Book())
        b.mid = (ev["bid"] + ev["ask"]) / 2
        b.ts = ev["ts"]
        if ev.get("last") is not None:
            b.last = ev["last"]
        if ev.get("funding_rate") is not None:
            b.funding_rate = ev["funding_rate"]
            b.next_funding_ts = ev["next_funding_ts"]
        self.index, _, _ = self.compute_index(ev["ts"], self.mids(), self.index)
        for name, ins in self.cfg.instruments.items():
            if self.cfg.mark_source(name) == key:
                idx = self.index.get(ins.underlying, NAN)
                if not is_nan(idx):
                    self.basis.setdefault(name, []).append((ev["ts"], b.mid - idx))

    def reference(self, ev: dict) -> None:
        self.refs[ev["asset"]] = (ev["rate"], ev["ts"], ev["in"])
        self.index, _, _ = self.compute_index(ev["ts"], self.mids(), self.index)

    def mids(self) -> dict[str, float]:
        return {k: b.mid for k, b in self.books.items()}

    def lasts(self) -> dict[str, float]:
        return {k: b.last for k, b in self.books.items()}

    def prices(self, t: float, mids=None, lasts=None, prev=None):
        """(index, marks) at t for given (possibly shocked) books."""
        index, _, _ = self.compute_index(t, self.mids() if mids is None else mids, self.index if prev is None else prev)
        basis = {n: self.basis_average(n, t) for n in self.cfg.instruments}
        marks = self.compute_marks(t, index, self.lasts() if lasts is None else lasts, basis)
        return index, marks

    # -- stress ------------------------------------------------------------------------------------------------
    def book_asset(self, key: str) -> str | None:
        symbol = key.split(":", 1)[1]
        if "/" in symbol:
            return symbol.split("/")[0]
        ins = self.cfg.instruments.get(symbol)
        return ins.underlying if ins else None

    def shocked(self, scenario: str, s: float):
        moves = self.cfg.stress.scenarios[scenario]
        mids, lasts = {}, {}
        for k, b in self.books.items():
            f = max(1.0 + moves.get(self.book_asset(k), 0.0) * s, 0.0)
            mids[k] = b.mid * f
            lasts[k] = b.last * f
        return mids, lasts


def margin_units(cfg: Config, accounts: dict[str, dict]) -> dict[tuple[str, str | None], dict]:
    """Each account's cross margin, keyed (account, None): its collateral, debt and the positions without an
    `isolated_margin`; and each isolated position as a margin account of its own, keyed (account, instrument):
    its margin as settlement-asset collateral and that one position."""
    units: dict[tuple[str, str | None], dict] = {}
    for a, acct in accounts.items():
        cross = [p for p in acct.get("positions", []) if p.get("isolated_margin") is None]
        units[(a, None)] = {**acct, "positions": cross}
        for p in acct.get("positions", []):
            if p.get("isolated_margin") is not None:
                units[(a, p["instrument"])] = {"collateral": {cfg.settlement: p["isolated_margin"]}, "borrowed": {},
                                               "positions": [{k: v for k, v in p.items() if k != "isolated_margin"}]}
    return units


def account_numbers(cfg: Config, acct: dict, index: dict[str, float], marks: dict[str, float]):
    """(equity, maintenance) — §4."""
    collateral = 0.0
    for a, q in acct["collateral"].items():
        v = q * price(cfg, a, index)
        spec = cfg.assets.get(a)
        collateral += v - (incremental(v, spec.haircut) if spec is not None else 0.0)
    liabilities = 0.0
    borrow_maint = 0.0
    for a, q in acct["borrowed"].items():
        v = q * price(cfg, a, index)
        liabilities += v
        borrow_maint += v * (cfg.borrow[a].maintenance_rate if a in cfg.borrow else 0.0)
    upnl = 0.0
    maint = 0.0
    for p in acct["positions"]:
        m = marks[p["instrument"]]
        upnl += p["qty"] * (m - p["entry"])
        maint += incremental(abs(p["qty"]) * m, cfg.instruments[p["instrument"]].maintenance)
    return collateral - liabilities + upnl, maint + borrow_maint


def price(cfg: Config, asset: str, index: dict[str, float]) -> float:
    spec = cfg.assets.get(asset)
    if spec is not None and spec.index is not None:
        return index.get(asset, NAN)
    return 1.0


def health_row(cfg: Config, acct: dict, index, marks) -> dict:
    e, m = account_numbers(cfg, acct, index, marks)
    return {"equity": e, "maintenance": m, "health": e / m if m > 0 else None, "liquidatable": e < m}


def liquidation_severity(market: Market, acct: dict, t: float, scenario: str, grid: int = 64, tol: float = 1e-6):
    """Smallest s in [0, max severity] at which the account is liquidatable without cascade: a scan over
    `grid` evenly spaced severities, then bisection to `tol` (the method the issue asks for)."""
    cfg = market.cfg
    s_max = cfg.stress.severities[-1]
    base_index, _ = market.prices(t)

    def liquidatable(s):
        mids, lasts = market.shocked(scenario, s)
        index, marks = market.prices(t, mids, lasts, prev=base_index)
        e, m = account_numbers(cfg, acct, index, marks)
        return e < m

    step = s_max / (grid - 1)
    for g in range(grid):
        if liquidatable(g * step):
            if g == 0:
                return 0.0
            lo, hi = (g - 1) * step, g * step
            while hi - lo > tol:
                mid = 0.5 * (lo + hi)
                if liquidatable(mid):
                    hi = mid
                else:
                    lo = mid
            return hi
    return None


def cascade(market: Market, accounts: dict[str, dict], t: float, scenario: str, s: float) -> dict:
    """§5, round by round; with `liquidation.insurance_fund`, the fund's account of each round: the fallen
    accounts' fees (fee rate × position notional, out of what is left of their equity) come in, the deficits of
    those below zero go out as far as the fund goes, the rest is spread pro rata over the round's bankrupt
    accounts, whose positions in that share would be auto-deleveraged. With `liquidation.partial`, a liquidatable
    account not bankrupt with more than `above_usd` of positions loses `fraction` of every position (its PnL) and
    of every non-settlement collateral asset (sold at the index) into cash, pays the fee on what was closed out of
    it, and stays in."""
    cfg = market.cfg
    policy = cfg.liquidation.partial
    fund = cfg.liquidation.insurance_fund
    ledger = {"fees": 0.0, "deficit": 0.0, "drawdown": 0.0, "uncovered": 0.0, "adl": 0.0, "fund_start": fund,
              "round_drawdown": [], "round_uncovered": [], "round_adl": [], "adl_closed": 0.0, "deleveraged": 0,
              "round_adl_closed": [], "round_deleveraged": []}
    mids, lasts = market.shocked(scenario, s)
    prev, _ = market.prices(t)
    changing = policy or cfg.liquidation.auto_deleverage
    alive = {a: copy.deepcopy(acct) for a, acct in accounts.items()} if changing else dict(accounts)
    partial_steps = 0

    def numbers(acct):
        e, m = account_numbers(cfg, acct, index, marks)
        return e + acct.get("cash", 0.0), m

    rounds = 0
    total = 0.0
    count = 0
    first = 0.0
    net: dict[str, float] = {}
    runaway = False
    venue = cfg.liquidation.venue
    for r in range(1, cfg.stress.max_rounds + 2):
        index, marks = market.prices(t, mids, lasts, prev=prev)
        prev = index
        liquidatable = [a for a, acct in alive.items() if (lambda em: em[0] < em[1])(numbers(acct))]
        if not liquidatable:
            break
        fallen, partial = [], []
        for a in liquidatable:
            e, _ = numbers(alive[a])
            closed = sum(abs(p["qty"] * marks[p["instrument"]]) for p in alive[a]["positions"])
            (partial if policy and e >= 0 and closed > policy.above_usd else fallen).append(a)
        if r > cfg.stress.max_rounds:
            runaway = True
            break
        flows: dict[str, float] = {}
        notional = 0.0
        fees = deficit = bankrupt_notional = 0.0
        bankrupt_sides: dict[tuple[str, str], float] = {}
        share = 0.0
        for a in fallen:
            e, _ = numbers(alive[a])
            closed = sum(abs(p["qty"] * marks[p["instrument"]]) for p in alive[a]["positions"])
            if e < 0:
                deficit += -e
                bankrupt_notional += closed
                for p in alive[a]["positions"]:
                    side = ("long" if p["qty"] > 0 else "short", p["instrument"])
                    bankrupt_sides[side] = bankrupt_sides.get(side, 0.0) + abs(p["qty"] * marks[p["instrument"]])
            else:
                fees += min(cfg.liquidation.fee_rate * closed, e)
        for a in partial:
            acct = alive[a]
            e, _ = numbers(acct)
            f = policy.fraction
            closed = 0.0
            for p in acct["positions"]:
                u = cfg.instruments[p["instrument"]].underlying
                m = marks[p["instrument"]]
                flows[u] = flows.get(u, 0.0) + f * p["qty"] * m
                notional += abs(f * p["qty"] * m)
                closed += abs(f * p["qty"] * m)
                acct["cash"] = acct.get("cash", 0.0) + f * p["qty"] * (m - p["entry"])
                p["qty"] -= f * p["qty"]
            for asset, q in list(acct["collateral"].items()):
                if asset == cfg.settlement:
                    continue
                v = f * q * price(cfg, asset, index)
                flows[asset] = flows.get(asset, 0.0) + v
                notional += v
                acct["cash"] = acct.get("cash", 0.0) + v
                acct["collateral"][asset] = q - f * q
            fee = min(cfg.liquidation.fee_rate * closed, e)
            acct["cash"] -= fee
            fees += fee  # into the fund before this round's deficits, as the kernels' round does
        ledger["fees"] += fees
        ledger["deficit"] += deficit
        if fund is not None:
            covered = min(deficit, fund + fees)
            fund = fund + fees - covered
            uncovered = deficit - covered
            share = uncovered / deficit if uncovered > 0 else 0.0
            adl = bankrupt_notional * uncovered / deficit if uncovered > 0 else 0.0
            for key, v in (("drawdown", covered), ("uncovered", uncovered), ("adl", adl)):
                ledger[key] += v
                ledger["round_" + key].append(v)
        for a in fallen:
            acct = alive.pop(a)
            for p in acct["positions"]:
                u = cfg.instruments[p["instrument"]].underlying
                f = p["qty"] * marks[p["instrument"]]
                flows[u] = flows.get(u, 0.0) + f
                notional += abs(f)
            for asset, q in acct["collateral"].items():
                if asset == cfg.settlement:
                    continue
                v = q * price(cfg, asset, index)
                flows[asset] = flows.get(asset, 0.0) + v
                notional += v
        if cfg.liquidation.auto_deleverage and fund is not None:
            taken, who = deleverage(cfg, alive, index, marks, bankrupt_sides, share,
                                    deficit / bankrupt_notional if bankrupt_notional > 0 else 0.0, flows, numbers)
            for key, v in (("adl_closed", taken), ("deleveraged", who)):
                ledger[key] += v
                ledger["round_" + key].append(v)
        partial_steps += len(partial)
        rounds += 1
        count += len(fallen)
        total += notional
        if r == 1:
            first = notional
        for asset, f in flows.items():
            net[asset] = net.get(asset, 0.0) + f
        for k in mids:
            if not k.startswith(venue + ":"):
                continue
            asset = market.book_asset(k)
            if asset not in flows or flows[asset] == 0.0:
                continue
            imp = cfg.assets[asset].impact if asset in cfg.assets else None
            if imp is None:
                continue
            x = flows[asset]
            if imp.model == "linear":
                factor = 1 - 0.01 * x / imp.depth_usd_per_pct if x > 0 else 1 + 0.01 * (-x) / imp.depth_usd_per_pct
            else:
                move = imp.y * imp.daily_vol * math.sqrt(abs(x) / imp.daily_volume_usd)
                factor = 1 - move if x > 0 else 1 + move
            factor = max(factor, 0.01)
            mids[k] *= factor
            lasts[k] *= factor
    return {
        "rounds": rounds,
        "liquidated_accounts": count,
        "liquidated_notional": total,
        "net_sold": {a: v for a, v in net.items() if v != 0.0},
        "final_index": index,
        "final_prices": mids,
        "amplification": total / first if rounds > 1 and first > 0 else 1.0,
        "runaway": runaway,
        "fund": {**ledger, "fund_end": fund},
        "partial_liquidations": partial_steps,
    }


def adl_key(rule: str, q: float, m: float, entry: float, e: float, room: float) -> float:
    """The venue's ADL queue key of one position (Binance: PnL% × effective leverage, or PnL% ÷ it at a loss;
    Hyperliquid: mark/entry (entry/mark for a short) × notional / account value)."""
    value = q * m
    if rule == "hyperliquid":
        ratio = m / entry if q > 0 else entry / m
        return ratio * abs(value) / e if e > 0 else math.inf
    pnl = (value - q * entry) / abs(q * entry)
    lev = abs(value) / room if room > 0 else math.inf
    return pnl * lev if pnl > 0 else (pnl / lev if lev > 0 else pnl)


def deleverage(cfg: Config, alive: dict, index, marks, bankrupt_sides: dict, share: float, loss_rate: float,
               flows: dict, numbers) -> tuple[float, int]:
    """Auto-deleveraging of one round: the share of the bankrupt accounts' positions the fund could not cover is
    taken over, per instrument, by the opposite positions highest in the queue (the account's equity as the room
    of Binance's leverage); ties at the last key share the rest pro rata. Each closes at the mark and pays
    loss_rate × its closed notional; the notional taken leaves the round's market flows. Returns (notional
    taken, accounts deleveraged)."""
    wanted = {("short" if side == "long" else "long", ins): v * share for (side, ins), v in bankrupt_sides.items()
              if v * share > 0}
    if not wanted:
        return 0.0, 0
    queue: dict[tuple[str, str], list] = {}
    for name, acct in alive.items():
        e, _ = numbers(acct)
        for p in acct["positions"]:
            group = ("long" if p["qty"] > 0 else "short", p["instrument"])
            m = marks[p["instrument"]]
            if p["qty"] == 0 or group not in wanted or not (m > 0 and math.isfinite(m)) or not p["entry"] > 0:
                continue
            queue.setdefault(group, []).append((adl_key(cfg.liquidation.adl, p["qty"], m, p["entry"], e, e), p, name))
    taken, who = 0.0, set()
    for group, want in wanted.items():
        left = want
        by_key: dict[float, list] = {}
        for k, p, name in queue.get(group, []):
            by_key.setdefault(k, []).append((p, name))
        for k in sorted(by_key, reverse=True):
            if left <= 0:
                break
            ps = by_key[k]
            there = sum(abs(p["qty"] * marks[p["instrument"]]) for p, _ in ps)
            f = min(left / there, 1.0) if there > 0 else 0.0
            left -= there
            for p, owner in ps:
                m = marks[p["instrument"]]
                q = p["qty"] * f
                closed = abs(q * m)
                alive[owner]["cash"] = alive[owner].get("cash", 0.0) + q * (m - p["entry"]) - loss_rate * closed
                p["qty"] -= q
                taken += closed
                who.add(owner)
                u = cfg.instruments[p["instrument"]].underlying
                # a bankrupt long taken by this short was not sold on the books, nor a bankrupt short bought
                flows[u] = flows.get(u, 0.0) + (closed if group[0] == "long" else -closed)
    return taken, len(who)


def position_prices(cfg: Config, acct: dict, index: dict[str, float], marks: dict[str, float]) -> list[tuple]:
    """[(liquidation price, bankruptcy price)] of each position in order (None where none): the mark at which
    E − M (resp. E) reaches 0 when the position's underlying moves — its marks, its index and the assets that
    redeem into it, by one factor — found by a scan along the move from the current mark (nearest sign change
    first, on the side that hurts the position, or the other side when E − M is already below 0) and bisection."""
    follows = {a: c.in_ for a, s in cfg.assets.items() if s.index is not None
               for c in s.index.constituents if c.is_redemption}
    out = []
    for p in acct["positions"]:
        u = cfg.instruments[p["instrument"]].underlying
        m0 = marks[p["instrument"]]
        if p["qty"] == 0 or not (m0 > 0 and math.isfinite(m0)):
            out.append((None, None))
            continue
        assets = {a for a in index if a == u or follows.get(a) == u}
        instruments = {n for n, ins in cfg.instruments.items() if ins.underlying == u or follows.get(ins.underlying) == u}

        def gap(f: float, wm: float) -> float:
            e, m = account_numbers(cfg, acct, {a: v * f if a in assets else v for a, v in index.items()},
                                   {n: v * f if n in instruments else v for n, v in marks.items()})
            return e - wm * m

        out.append(tuple(None if (f := _first_root(lambda x: gap(x, wm), p["qty"] > 0)) is None else m0 * f
                         for wm in (1.0, 0.0)))
    return out


def _first_root(g, long: bool, steps: int = 4000) -> float | None:
    g1 = g(1.0)
    if is_nan(g1):
        return None
    if g1 == 0:
        return 1.0
    down = long if g1 > 0 else not long
    sign = 1.0 if g1 > 0 else -1.0
    grid = [1 - k / steps for k in range(1, steps)] + [1e-12] if down else [1 / (1 - k / steps) for k in range(1, steps)]
    a = 1.0
    for b in grid:
        if sign * g(b) <= 0:
            for _ in range(200):  # bisection to the last representable step
                mid = 0.5 * (a + b)
                if mid in (a, b):
                    break
                if sign * g(mid) <= 0:
                    b = mid
                else:
                    a = mid
            return b
        a = b
    return None
