"""`liqwatch bench kernels`: how fast and how small the margin kernels are, all measured in one run.

Figures, side by side on the same synthetic accounts (≈3 positions and ≈2 collateral assets per account, a third of
accounts borrowing), priced with the oct-2025 config at 20:00:
- health_ms: one full `margin_health` recompute (numba, one thread, best of `repeat`, after warm-up);
- stream_ms: one plain summing pass over the same input arrays — the memory-bandwidth floor;
- health_numpy_ms: the same formulas vectorised with NumPy (gathers + bincount);
- health_reference_ms: a plain-Python loop over the same data, timed on a sample and scaled;
- position_prices_ms: the liquidation and bankruptcy price of every position (`position_prices`: two exact roots
  per position; positions_priced_share: those with a liquidation price);
- cascade_ms: a 50-round runaway through the real shard path (`Shard.run`, pruned): every round prices the books
  (index + marks), liquidates whoever is liquidatable (committed: they fall, their flows are summed), and moves the
  liquidation venue's books by the round's impact and by a steady sell-off of 0.3% × the risk_off direction a round
  (BTC −0.3%, ETH −0.375%, SOL −0.45% …), so prices move every round and pruning has real work to do;
- cascade_full_scan_ms: the same 50 rounds with every live account evaluated every round (`Shard(prune=False)`,
  `liquidate_round`, the method before pruning); both runs must give the same fallen round for every account;
- cascade_evaluated_share: account evaluations of the pruned run / those of the full scan (the rest were skipped
  by the bound); cascade_liquidated: accounts fallen in the 50 rounds;
- cascade_stress_ms / cascade_policy_ms: one stress cascade through the coordinator (`run_cascade`, risk_off 10%,
  impact only), side by side: every liquidated account closed in full (pruned), and with the liquidation policy of
  a venue — partial liquidation (a fifth above $100k), a 0.5% fee and an empty insurance fund, so auto-deleveraging
  takes the deficits' share from the top of Binance's queue (full scan: accounts change over the rounds); with
  their rounds, accounts closed, partial steps and accounts deleveraged;
- admit_ticks_us / admit_ticks_decoder_us: what the market feed spends per tick to admit a batch of 20,000 tick
  records (bytes in, rows of columns out, every check of the door): the compiled scanner
  (liqwatch.kernels.ticks), and msgspec's decoder with the checks in arrays (the path before it, still the one
  for a batch the scanner declines), side by side;
- bytes_per_account: the account arrays plus the health outputs; cascade_state_bytes_per_account: what a pruned
  shard keeps per account besides (fallen round; the four one-sided exposures per unit of room as float32 and a
  word of the call of the last evaluation and the held-asset and held-instrument bits — 20 bytes —; a scratch row:
  28 bytes; the full scan keeps 20).
"""

from __future__ import annotations

import time

import msgspec
import numpy as np
from numba import njit

from liqwatch.kernels.cascade import RoundRequest, Shard, apply_impact, impact_factors, run_cascade
from liqwatch.kernels.stress import shock_books
from liqwatch.kernels.health import margin_health
from liqwatch.kernels.positions import ADL_BINANCE, position_prices
from liqwatch.kernels.prices import compute_index, compute_marks
from liqwatch.kernels.arrays import AccountArrays
from liqwatch.config import load_config
from liqwatch.core.columns import admit_rows
from liqwatch.core.engine import Engine
from liqwatch.core.ingest import PartitionDoor
from liqwatch.events import decode
from liqwatch.scenarios import T0, config_path, market_events


def _market_engine() -> Engine:
    """The oct-2025 venue priced by the first seconds of the calm scenario."""
    engine = Engine(load_config(config_path("oct-2025", "prefix")))
    for ts, ev in market_events("calm", 7):
        if ts > T0 + 2_000:
            break
        engine.apply(decode(msgspec.json.encode(ev)))
    return engine


def _tick_batch(engine: Engine, n: int = 20_000) -> list[bytes]:
    """n tick records over the venue's books as `bench pipeline`'s firehose writes them (prices with noise)."""
    rng = np.random.default_rng(4)
    books = [(venue, symbol, float(engine.market.quotes().mid[slot])) for (venue, symbol), slot in
             ((tuple(k.split(":", 1)), s) for k, s in engine.market.slot.items())]
    books = [b for b in books if np.isfinite(b[2]) and b[2] > 0]
    out = []
    for k, x in enumerate(rng.normal(0, 2e-4, n).tolist()):
        venue, symbol, mid = books[k % len(books)]
        m = mid * (1 + x)
        out.append(msgspec.json.encode({"type": "tick", "venue": venue, "symbol": symbol, "ts": T0 + 3_000 + k // 50,
                                        "bid": m * 0.9999, "ask": m * 1.0001}))
    return out


def synthetic_accounts(engine: Engine, n: int, seed: int = 1) -> AccountArrays:
    rng = np.random.default_rng(seed)
    lay = engine.layout
    price = engine.prices()
    priced_assets = np.array([a for a, name in enumerate(lay.assets) if name in ("USDT", "BTC", "ETH", "SOL", "USDe",
                                                                               "WBETH", "BNSOL")], dtype=np.int32)
    n_instr = len(lay.instruments)
    coll_count = rng.integers(1, 4, n).astype(np.int32)          # mean 2
    pos_count = rng.integers(1, 6, n).astype(np.int32)           # mean 3
    debt_count = (rng.random(n) < 0.33).astype(np.int32)
    def starts(c):
        s = np.zeros(n, dtype=np.int32)
        s[1:] = np.cumsum(c[:-1])
        return s
    kc, kp, kd = int(coll_count.sum()), int(pos_count.sum()), int(debt_count.sum())
    coll_asset = rng.choice(priced_assets, kc).astype(np.int32)
    coll_value = np.exp(rng.normal(np.log(20_000), 1.2, kc))
    coll_qty = coll_value / price.index[coll_asset]
    pos_instr = rng.integers(0, n_instr, kp).astype(np.int32)
    marks = price.mark[pos_instr]
    pos_qty = rng.choice([-1.0, 1.0], kp, p=[0.3, 0.7]) * np.exp(rng.normal(np.log(30_000), 1.2, kp)) / marks
    pos_entry = marks * (1 + rng.normal(0, 0.02, kp))
    debt_asset = np.full(kd, lay.asset_id["USDT"], dtype=np.int32)
    debt_qty = np.exp(rng.normal(np.log(10_000), 1.0, kd))
    def owner(c):
        return np.repeat(np.arange(n, dtype=np.int32), c)
    return AccountArrays(active=np.ones(n, dtype=np.bool_), coll_start=starts(coll_count), coll_count=coll_count,
                coll_asset=coll_asset, coll_qty=coll_qty, coll_owner=owner(coll_count),
                debt_start=starts(debt_count), debt_count=debt_count, debt_asset=debt_asset, debt_qty=debt_qty,
                debt_owner=owner(debt_count), pos_start=starts(pos_count), pos_count=pos_count,
                pos_instr=pos_instr, pos_qty=pos_qty, pos_entry=pos_entry, pos_owner=owner(pos_count))


@njit(cache=True)
def _stream_pass(accounts):
    # touch every input byte the health kernel reads, once, in order: the bandwidth floor
    acc = 0.0
    for i in range(accounts.active.shape[0]):
        acc += accounts.active[i]
    for j in range(accounts.coll_asset.shape[0]):
        acc += accounts.coll_owner[j] + accounts.coll_asset[j] + accounts.coll_qty[j]
    for j in range(accounts.debt_asset.shape[0]):
        acc += accounts.debt_owner[j] + accounts.debt_asset[j] + accounts.debt_qty[j]
    for j in range(accounts.pos_instr.shape[0]):
        acc += accounts.pos_owner[j] + accounts.pos_instr[j] + accounts.pos_qty[j] + accounts.pos_entry[j]
    return acc


def _bracket_numpy(amount, owner, upto, rate, cum):
    k = (amount[:, None] > upto[owner, :-1]).sum(axis=1)
    return amount * rate[owner, k] - cum[owner, k]


def health_numpy(index, mark, accounts, risk):
    n = accounts.active.shape[0]
    v = accounts.coll_qty * index[accounts.coll_asset]
    haircut = _bracket_numpy(v, accounts.coll_asset, risk.haircut_upto, risk.haircut_rate, risk.haircut_cum)
    value = np.bincount(accounts.coll_owner, v - haircut, minlength=n)
    dv = accounts.debt_qty * index[accounts.debt_asset]
    value -= np.bincount(accounts.debt_owner, dv, minlength=n)
    maintenance = np.bincount(accounts.debt_owner, dv * risk.borrow_rate[accounts.debt_asset], minlength=n)
    m = mark[accounts.pos_instr]
    value += np.bincount(accounts.pos_owner, accounts.pos_qty * (m - accounts.pos_entry), minlength=n)
    charge = _bracket_numpy(np.abs(accounts.pos_qty) * m, accounts.pos_instr, risk.maint_upto, risk.maint_rate,
                            risk.maint_cum)
    maintenance += np.bincount(accounts.pos_owner, charge, minlength=n)
    with np.errstate(divide="ignore", invalid="ignore"):
        health = np.where(maintenance > 0, value / maintenance, np.nan)
    return value, maintenance, health, value < maintenance


def health_python(index, mark, accounts, risk, rows):
    """Plain Python over lists: one account at a time, brackets walked slice by slice."""
    idx, mk = index.tolist(), mark.tolist()
    cs, cc, ca, cq = (a.tolist() for a in (accounts.coll_start, accounts.coll_count, accounts.coll_asset,
                                           accounts.coll_qty))
    ds, dc, da, dq = (a.tolist() for a in (accounts.debt_start, accounts.debt_count, accounts.debt_asset,
                                           accounts.debt_qty))
    ps, pc, pi, pq, pe = (a.tolist() for a in (accounts.pos_start, accounts.pos_count, accounts.pos_instr,
                                               accounts.pos_qty, accounts.pos_entry))
    hu, hr = risk.haircut_upto.tolist(), risk.haircut_rate.tolist()
    mu, mr = risk.maint_upto.tolist(), risk.maint_rate.tolist()
    br = risk.borrow_rate.tolist()

    def brackets(amount, upto, rate):
        charge, below = 0.0, 0.0
        for u, r in zip(upto, rate):
            if amount > below:
                charge += r * (min(amount, u) - below)
            below = u
        return charge

    out = []
    for i in range(rows):
        value = maint = 0.0
        for j in range(cs[i], cs[i] + cc[i]):
            v = cq[j] * idx[ca[j]]
            value -= brackets(v, hu[ca[j]], hr[ca[j]]) - v
        for j in range(ds[i], ds[i] + dc[i]):
            v = dq[j] * idx[da[j]]
            value -= v
            maint += v * br[da[j]]
        for j in range(ps[i], ps[i] + pc[i]):
            m = mk[pi[j]]
            value += pq[j] * (m - pe[j])
            maint += brackets(abs(pq[j]) * m, mu[pi[j]], mr[pi[j]])
        out.append((value, maint))
    return out


CASCADE_ROUNDS = 50
POLICY_SEVERITY = 0.1
POLICY = {"partial": (0.2, 100_000.0), "fee_rate": 0.005, "insurance_fund": 0.0, "adl_rule": ADL_BINANCE}
CASCADE_DRIFT = 0.003  # the sell-off of the cascade bench: books move by 0.3% × the risk_off direction a round


def _best(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1000.0


def kernels(accounts: int, repeat: int = 5, reference_sample: int = 20_000) -> dict:
    import numba

    numba.set_num_threads(1)
    engine = _market_engine()
    lay = engine.layout
    pv = engine.prices()
    n = accounts
    accounts = synthetic_accounts(engine, n)  # the count becomes the arrays
    risk = lay.risk_params
    eq, mm, h = np.empty(n), np.empty(n), np.empty(n)
    liq = np.empty(n, dtype=np.bool_)
    margin_health(pv.index, pv.mark, accounts, risk, eq, mm, h, liq)  # warm-up (and compile, if not cached)
    _stream_pass(accounts)
    health_ms = _best(lambda: margin_health(pv.index, pv.mark, accounts, risk, eq, mm, h, liq), repeat)
    stream_ms = _best(lambda: _stream_pass(accounts), repeat)

    np_out = health_numpy(pv.index, pv.mark, accounts, risk)
    assert np.allclose(np_out[0], eq, rtol=1e-9) and np.allclose(np_out[1], mm, rtol=1e-9)
    numpy_ms = _best(lambda: health_numpy(pv.index, pv.mark, accounts, risk), max(1, repeat // 2))

    sample = min(reference_sample, n)
    t0 = time.perf_counter()
    py = health_python(pv.index, pv.mark, accounts, risk, sample)
    ref_ms = (time.perf_counter() - t0) * 1000.0 * n / sample
    assert np.allclose([v for v, _ in py], eq[:sample], rtol=1e-9)

    liq_price, bankrupt_price = np.empty(accounts.pos_qty.shape[0]), np.empty(accounts.pos_qty.shape[0])

    def prices_of_positions():
        position_prices(pv.index, pv.mark, accounts, risk, lay.follows, liq_price, bankrupt_price)

    prices_of_positions()
    position_prices_ms = _best(prices_of_positions, max(1, repeat // 2))

    # a 50-round runaway: index + marks, a liquidation round on the shard, impact, and a steady sell-off
    q = pv.quotes
    stale = np.empty(pv.index.shape[0], dtype=np.bool_)
    sp = np.empty(lay.index_params.cons_kind.shape[0])
    ss = np.empty(sp.shape[0], dtype=np.int8)
    factor = np.empty(pv.index.shape[0])
    venue = lay.venue_id[engine.cfg.liquidation.venue]
    direction = lay.scenario_direction("risk_off")
    n_assets = pv.index.shape[0]

    def rounds(prune: bool) -> Shard:
        shard = Shard(accounts, risk, prune)
        index, mark = pv.index.copy(), pv.mark.copy()
        mid, last = q.mid.copy(), q.last.copy()
        for r in range(CASCADE_ROUNDS):
            compute_index(float(pv.t), mid, q.ts, q.ref_rate, q.ref_ts, lay.index_params, index, index, stale, sp, ss)
            compute_marks(float(pv.t), last, q.funding_rate, q.next_funding_ts, q.basis_ma, index, lay.mark_params,
                          mark)
            got = shard.run(RoundRequest(r + 1, True, index, mark), n_assets)
            impact_factors(got.net_sold, lay.impact_params, factor)
            apply_impact(factor, q.base, q.venue, venue, mid, last)
            shock_books(mid, last, q.base, direction, CASCADE_DRIFT, mid, last)
        return shard

    pruned, full = rounds(True), rounds(False)  # warm-up, and the check that pruning changes nothing
    assert np.array_equal(pruned.fallen, full.fallen)
    cascade_ms = _best(lambda: rounds(True), max(1, repeat // 2))
    full_ms = _best(lambda: rounds(False), max(1, repeat // 2))
    shard_bytes = pruned.state_bytes()

    def stress(policy: dict):
        return run_cascade(float(pv.t), POLICY_SEVERITY, lay.scenario_direction("risk_off"), q, lay.index_params,
                           lay.mark_params, pv.index, [accounts], risk, lay.impact_params, venue, CASCADE_ROUNDS,
                           **policy)

    stressed, policed = stress({}), stress(POLICY)
    stress_ms = _best(lambda: stress({}), max(1, repeat // 2))
    policy_ms = _best(lambda: stress(POLICY), max(1, repeat // 2))
    batch = _tick_batch(engine)

    def admit(scanner: bool):
        door = PartitionDoor(engine.gate, engine.cfg.ingest.max_ahead_ms, engine.cfg.ingest.jump_keys)
        rows, rejected, _ = admit_rows(door, batch, engine.market.slot, lay.asset_id, values=batch, scanner=scanner)
        assert len(rows) == len(batch) and not rejected
        return rows.rows

    assert admit(True).tobytes() == admit(False).tobytes()  # the two paths give the same rows, bit for bit
    admit_us = _best(lambda: admit(True), repeat) * 1000.0 / len(batch)
    admit_decoder_us = _best(lambda: admit(False), repeat) * 1000.0 / len(batch)
    account_bytes = sum(a.nbytes for a in accounts)
    out_bytes = eq.nbytes + mm.nbytes + h.nbytes + liq.nbytes
    return {
        "accounts": n,
        "positions_per_account": round(accounts.pos_instr.shape[0] / n, 3),
        "collateral_per_account": round(accounts.coll_asset.shape[0] / n, 3),
        "health_ms": round(health_ms, 3),
        "stream_ms": round(stream_ms, 3),
        "health_vs_stream": round(health_ms / stream_ms, 2),
        "health_numpy_ms": round(numpy_ms, 3),
        "health_reference_ms": round(ref_ms, 1),
        "reference_sample": sample,
        "speedup_vs_reference": round(ref_ms / health_ms, 1),
        "speedup_vs_numpy": round(numpy_ms / health_ms, 1),
        "position_prices_ms": round(position_prices_ms, 3),
        "positions_priced_share": round(float(np.isfinite(liq_price).mean()), 3),
        "cascade_ms": round(cascade_ms, 3),
        "cascade_full_scan_ms": round(full_ms, 3),
        "cascade_rounds": CASCADE_ROUNDS,
        "cascade_evaluated_share": round(pruned.evaluated / full.evaluated, 4),
        "cascade_liquidated": int(np.count_nonzero(pruned.fallen)),
        "cascade_stress_ms": round(stress_ms, 3),
        "cascade_policy_ms": round(policy_ms, 3),
        "cascade_stress": {"rounds": stressed.rounds, "liquidated": stressed.liquidated_accounts},
        "cascade_policy": {"rounds": policed.rounds, "liquidated": policed.liquidated_accounts,
                           "partial": policed.partial_liquidations, "deleveraged": policed.deleveraged_accounts},
        "admit_ticks_us": round(admit_us, 3),
        "admit_ticks_decoder_us": round(admit_decoder_us, 3),
        "bytes_per_account": round((account_bytes + out_bytes) / n, 1),
        "cascade_state_bytes_per_account": round(shard_bytes / n, 1),
        "threads": 1,
    }
