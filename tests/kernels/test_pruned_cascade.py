"""The pruned cascade (`Shard.run`, `liquidate_round_pruned`) equals the full scan (`liquidate_round` on every live
account every round) exactly: the same accounts fall in the same round, with the same counts, notional and net
sold, bit for bit — on random books with garbage entries, empty accounts, zero quantities, unsorted pools, NaN,
zero and infinite prices, and price paths long enough for many rounds."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from liqwatch.config import load_config
from liqwatch.core.layout import Layout
from liqwatch.kernels.arrays import AccountArrays
from liqwatch.kernels.cascade import SEEN_LIMIT, SEEN_SHIFT, WORD, RoundRequest, Shard, run_cascade
from liqwatch.scenarios import config_path
from tests.conftest import run_engine
from tests.populations import population

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                     HealthCheck.function_scoped_fixture])


def _risk():
    return Layout(load_config(config_path("oct-2025", "prefix"))).risk_params


RISK = None


def risk():
    global RISK
    if RISK is None:
        RISK = _risk()
    return RISK


def random_book(rng: np.random.Generator, n: int, n_assets: int, n_instr: int, base_index, base_mark,
                shuffled: bool = True) -> AccountArrays:
    """n accounts whose slices sit in random order (`shuffled`; else in account order) in pools strewn with garbage
    (owner −1), some accounts empty or closed, some quantities zero; collateral worth 2–60% of the positions' notional
    so that prices that move a few percent per round liquidate accounts round after round."""
    def pool(counts, make):
        rows = [(i, c) for i, c in enumerate(counts)]
        if shuffled:
            rng.shuffle(rows)
        start = np.zeros(n, dtype=np.int32)
        owner, fields = [], []
        for i, c in rows:
            for _ in range(int(rng.integers(0, 3)) if rng.random() < 0.3 else 0):  # garbage before the slice
                owner.append(-1)
                fields.append(make(i, garbage=True))
            start[i] = len(owner)
            for _ in range(c):
                owner.append(i)
                fields.append(make(i, garbage=False))
        cols = list(zip(*fields)) if fields else []
        return start, np.array(owner, dtype=np.int32), cols

    pos_count = rng.integers(0, 5, n)
    coll_count = rng.integers(0, 4, n)
    debt_count = (rng.random(n) < 0.3).astype(np.int64) * rng.integers(1, 3, n)
    notional = np.exp(rng.normal(np.log(20_000), 1.0, n))

    def make_pos(i, garbage):
        ins = int(rng.integers(0, n_instr))
        m = base_mark[ins] if np.isfinite(base_mark[ins]) and base_mark[ins] > 0 else 100.0
        q = rng.choice([-1.0, 1.0], p=[0.3, 0.7]) * notional[i] / m * rng.random()
        if rng.random() < 0.05:
            q = 0.0
        return ins, q, m * (1 + rng.normal(0, 0.02))

    lev = rng.uniform(0.02, 0.6, n)

    def make_coll(i, garbage):
        a = int(rng.integers(0, n_assets))
        p = base_index[a] if np.isfinite(base_index[a]) and base_index[a] > 0 else 1.0
        q = notional[i] * lev[i] / p * rng.random()
        if rng.random() < 0.05:
            q = 0.0
        return a, q

    def make_debt(i, garbage):
        a = int(rng.integers(0, n_assets))
        p = base_index[a] if np.isfinite(base_index[a]) and base_index[a] > 0 else 1.0
        return a, notional[i] * 0.1 * rng.random() / p

    ps, po, pcols = pool(pos_count, make_pos)
    cs, co, ccols = pool(coll_count, make_coll)
    ds, do, dcols = pool(debt_count, make_debt)
    active = rng.random(n) < 0.95
    # a closed account keeps no entries: its slices became garbage
    for owner in (po, co, do):
        owner[(owner >= 0) & ~active[np.maximum(owner, 0)]] = -1
    pc, cc, dc = (np.where(active, c, 0).astype(np.int32) for c in (pos_count, coll_count, debt_count))

    def col(cols, k, dtype):
        return np.array(cols[k], dtype=dtype) if cols else np.zeros(0, dtype=dtype)

    return AccountArrays(
        active=active, coll_start=cs, coll_count=cc, coll_asset=col(ccols, 0, np.int32),
        coll_qty=col(ccols, 1, np.float64), coll_owner=co,
        debt_start=ds, debt_count=dc, debt_asset=col(dcols, 0, np.int32), debt_qty=col(dcols, 1, np.float64),
        debt_owner=do,
        pos_start=ps, pos_count=pc, pos_instr=col(pcols, 0, np.int32), pos_qty=col(pcols, 1, np.float64),
        pos_entry=col(pcols, 2, np.float64), pos_owner=po)


def price_path(rng, rounds, base_index, base_mark, drift, vol, specials):
    """(index, mark) per round: a random walk with a downward drift; `specials` sets NaN, 0 or inf prices."""
    out = []
    index, mark = base_index.copy(), base_mark.copy()
    for r in range(rounds):
        index = index * (1 + rng.normal(-drift, vol, index.shape[0]))
        mark = mark * (1 + rng.normal(-drift, vol, mark.shape[0]))
        if rng.random() < 0.3:  # some rounds leave prices untouched
            index, mark = out[-1] if out else (index, mark)
            index, mark = index.copy(), mark.copy()
        ix, mk = index.copy(), mark.copy()
        if specials and rng.random() < 0.25:
            which = rng.choice([np.nan, 0.0, np.inf, -np.inf])
            if rng.random() < 0.5:
                ix[int(rng.integers(0, ix.shape[0]))] = which
            else:
                mk[int(rng.integers(0, mk.shape[0]))] = which
        out.append((ix, mk))
    return out


def bits(x) -> bytes:
    """The float64 bits, every NaN as the one NaN (a NaN's sign is no number; see test_health_identical)."""
    x = np.array(x, dtype=np.float64, ndmin=1)
    x[np.isnan(x)] = np.nan
    return x.tobytes()


def assert_same_rounds(book, rsk, path, n_assets):
    pruned, full = Shard(book, rsk), Shard(book, rsk, prune=False)
    last = len(path) - 1
    for r, (ix, mk) in enumerate(path):
        req = RoundRequest(r + 1, r < last, ix, mk)  # the last round is a runaway check (commit=False)
        a, b = pruned.run(req, n_assets), full.run(req, n_assets)
        assert a.count == b.count, r
        assert bits(a.notional) == bits(b.notional), r
        assert bits(a.net_sold) == bits(b.net_sold), r
        assert np.array_equal(pruned.fallen, full.fallen), r
    return pruned, full


@FAST
@given(seed=st.integers(0, 2**31), n=st.integers(1, 300), drift=st.floats(0.0, 0.08), vol=st.floats(0.0, 0.05),
       rounds=st.integers(1, 40), specials=st.booleans())
def test_pruned_rounds_equal_the_full_scan(seed, n, drift, vol, rounds, specials):
    rsk = risk()
    rng = np.random.default_rng(seed)
    n_assets, n_instr = rsk.haircut_upto.shape[0], rsk.maint_upto.shape[0]
    base_index = np.exp(rng.normal(3, 2, n_assets))
    base_mark = np.exp(rng.normal(5, 2, n_instr))
    if specials and rng.random() < 0.3:
        base_index[int(rng.integers(0, n_assets))] = rng.choice([np.nan, 0.0, np.inf])
    book = random_book(rng, n, n_assets, n_instr, base_index, base_mark)
    path = price_path(rng, rounds, base_index, base_mark, drift, vol, specials)
    assert_same_rounds(book, rsk, path, n_assets)


def _slow_drift():
    """3,000 random accounts and 50 rounds of prices falling 0.3% a round."""
    rsk = risk()
    rng = np.random.default_rng(7)
    n_assets, n_instr = rsk.haircut_upto.shape[0], rsk.maint_upto.shape[0]
    base_index, base_mark = np.exp(rng.normal(3, 2, n_assets)), np.exp(rng.normal(5, 2, n_instr))
    book = random_book(rng, 3000, n_assets, n_instr, base_index, base_mark)
    path = price_path(rng, 50, base_index, base_mark, 0.003, 0.0, False)
    return rsk, book, path, n_assets


def test_pruning_skips_most_evaluations_on_a_slow_drift():
    """The point of it: with prices moving 0.3% a round, most accounts are far from their bound."""
    rsk, book, path, n_assets = _slow_drift()
    pruned, full = assert_same_rounds(book, rsk, path, n_assets)
    assert pruned.candidates == full.candidates == full.evaluated
    assert pruned.fallen.any() and pruned.evaluated < 0.35 * full.evaluated


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), s=st.floats(0.0, 0.6), scenario=st.sampled_from(["risk_off", "squeeze"]))
def test_run_cascade_pruned_equals_full_scan(rich_config, seed, s, scenario):
    """Through the real generator with impact (the path cascades take), including shocks deep enough for many
    rounds and runaways."""
    e = run_engine(rich_config, population(seed, 400, steps=12))
    lay = e.layout
    pv = e.prices()
    args = (float(pv.t), s, lay.scenario_direction(scenario), pv.quotes, lay.index_params, lay.mark_params, pv.index,
            [e.accounts.view()], lay.risk_params, lay.impact_params, lay.venue_id[rich_config.liquidation.venue],
            rich_config.stress.max_rounds)
    a, b = run_cascade(*args, True, 0.01, 2e6), run_cascade(*args, False, 0.01, 2e6)
    # the insurance fund's ledger too (summed in the order each path meets the fallen accounts: to rounding)
    for f in ("fees", "deficit", "fund_drawdown", "uncovered", "adl_notional"):
        assert getattr(a, f) == pytest.approx(getattr(b, f), rel=1e-12, abs=1e-9), f
    assert (a.rounds, a.liquidated_accounts, a.runaway, a.round_accounts) == (b.rounds, b.liquidated_accounts,
                                                                             b.runaway, b.round_accounts)
    assert bits(a.round_notional) == bits(b.round_notional) and bits(a.net_sold) == bits(b.net_sold)
    assert bits(a.final_index) == bits(b.final_index)
    assert all(np.array_equal(x, y) for x, y in zip(a.liquidated_round, b.liquidated_round))


class _WeakenedShard(Shard):
    """A shard whose bound is cut to a quarter after every round: it skips accounts it must not."""

    def run(self, req, n_assets):
        got = super().run(req, n_assets)
        self.reach *= 0.25
        return got


class _ForgetfulShard(Shard):
    """A shard whose rows forget what they hold after every round (the word keeps only the call): the held items'
    largest move becomes 0, so every row the first tests leave is cleared by the second."""

    def run(self, req, n_assets):
        got = super().run(req, n_assets)
        self.state[WORD] &= np.uint32(0xFF << SEEN_SHIFT)
        return got


@pytest.mark.parametrize("broken", [_WeakenedShard, _ForgetfulShard], ids=["weakened_bound", "forgotten_holdings"])
def test_a_broken_bound_is_caught(broken):
    """The comparison has teeth: with the exposures cut to a quarter, or the held items forgotten (the test with the
    moves of what an account holds), the pruned rounds differ from the full scan."""
    rsk, book, path, n_assets = _slow_drift()
    weak, full = broken(book, rsk), Shard(book, rsk, prune=False)
    differs = False
    for r, (ix, mk) in enumerate(path):
        req = RoundRequest(r + 1, True, ix, mk)
        a, b = weak.run(req, n_assets), full.run(req, n_assets)
        differs |= a.count != b.count or not np.array_equal(weak.fallen, full.fallen)
    assert differs


def test_calls_beyond_the_word_start_over():
    """More calls than the word's 8 bits can number: the shard starts over (everyone evaluated), still exact."""
    rsk = risk()
    rng = np.random.default_rng(11)
    n_assets, n_instr = rsk.haircut_upto.shape[0], rsk.maint_upto.shape[0]
    base_index, base_mark = np.exp(rng.normal(3, 2, n_assets)), np.exp(rng.normal(5, 2, n_instr))
    book = random_book(rng, 200, n_assets, n_instr, base_index, base_mark)
    path = price_path(rng, SEEN_LIMIT + 40, base_index, base_mark, 0.0005, 0.002, False)
    pruned, full = assert_same_rounds(book, rsk, path, n_assets)
    assert len(pruned.history_index) < SEEN_LIMIT + 1 and pruned.evaluated < full.evaluated


@FAST
@given(seed=st.integers(0, 2**31), n=st.integers(1, 300), drift=st.floats(0.0, 0.08), rounds=st.integers(1, 30))
def test_pruned_rounds_equal_the_full_scan_on_pools_in_account_order(seed, n, drift, rounds):
    """Slices in account order (the positions' flows are then summed as their accounts fall, not in a later pass)."""
    rsk = risk()
    rng = np.random.default_rng(seed)
    n_assets, n_instr = rsk.haircut_upto.shape[0], rsk.maint_upto.shape[0]
    base_index, base_mark = np.exp(rng.normal(3, 2, n_assets)), np.exp(rng.normal(5, 2, n_instr))
    book = random_book(rng, n, n_assets, n_instr, base_index, base_mark, shuffled=False)
    path = price_path(rng, rounds, base_index, base_mark, drift, 0.02, False)
    assert_same_rounds(book, rsk, path, n_assets)
