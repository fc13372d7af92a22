"""The optimised `margin_numbers` / `margin_health` give, bit for bit, the numbers of the implementation they
replaced (kept below as the reference: flat passes with 2-D bracket tables), on random books and random bracket
tables of every width the kernels specialise (and wider), with NaN, zero and infinite prices.

NaN is compared as NaN: its sign bit is not a number and not stable anyway — x86 makes inf − inf a negative NaN,
an add of two NaNs returns its first operand's, and LLVM may swap the operands of an add (the old kernel and
`account_numbers` already disagreed on it)."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numba import njit

from liqwatch.kernels.arrays import RiskParams, bracket_table
from liqwatch.kernels.health import account_numbers, margin_health, margin_numbers
from tests.kernels.test_pruned_cascade import random_book


@njit(inline="always")
def _old_bracket_charge(amount, owner, upto, rate, cum):
    k = 0
    for j in range(upto.shape[1] - 1):
        k += amount > upto[owner, j]
    return amount * rate[owner, k] - cum[owner, k]


@njit(error_model="numpy")
def old_margin_numbers(index, mark, accounts, risk, out_equity, out_maintenance):
    for i in range(accounts.active.shape[0]):
        out_equity[i] = 0.0
        out_maintenance[i] = 0.0
    for j in range(accounts.coll_owner.shape[0]):
        o = accounts.coll_owner[j]
        if o < 0:
            continue
        a = accounts.coll_asset[j]
        v = accounts.coll_qty[j] * index[a]
        out_equity[o] += v - _old_bracket_charge(v, a, risk.haircut_upto, risk.haircut_rate, risk.haircut_cum)
    for j in range(accounts.debt_owner.shape[0]):
        o = accounts.debt_owner[j]
        if o < 0:
            continue
        a = accounts.debt_asset[j]
        v = accounts.debt_qty[j] * index[a]
        out_equity[o] -= v
        out_maintenance[o] += v * risk.borrow_rate[a]
    for j in range(accounts.pos_owner.shape[0]):
        o = accounts.pos_owner[j]
        if o < 0:
            continue
        ins = accounts.pos_instr[j]
        m = mark[ins]
        q = accounts.pos_qty[j]
        out_equity[o] += q * (m - accounts.pos_entry[j])
        out_maintenance[o] += _old_bracket_charge(abs(q) * m, ins, risk.maint_upto, risk.maint_rate, risk.maint_cum)


@njit(error_model="numpy")
def old_margin_health(index, mark, accounts, risk, out_equity, out_maintenance, out_health, out_liquidatable):
    old_margin_numbers(index, mark, accounts, risk, out_equity, out_maintenance)
    for i in range(accounts.active.shape[0]):
        e = out_equity[i]
        m = out_maintenance[i]
        if not accounts.active[i]:
            out_equity[i] = np.nan
            out_maintenance[i] = np.nan
            out_health[i] = np.nan
            out_liquidatable[i] = False
            continue
        out_health[i] = e / m if m > 0.0 else np.nan
        out_liquidatable[i] = e < m


def random_brackets(rng, owners: int, width: int):
    rows = []
    for _ in range(owners):
        k = int(rng.integers(0, width + 1))  # some owners have none, some fewer than the widest
        uppers = np.sort(np.exp(rng.uniform(np.log(1e3), np.log(1e8), k)))
        rows.append([(float(u) if i < k - 1 else None, float(r))
                     for i, (u, r) in enumerate(zip(uppers, np.sort(rng.uniform(0, 0.3, k))))])
    return bracket_table(rows)


def random_risk(rng, n_assets, n_instr, haircut_width, maint_width) -> RiskParams:
    hu, hr, hc = random_brackets(rng, n_assets, haircut_width)
    mu, mr, mc = random_brackets(rng, n_instr, maint_width)
    return RiskParams(haircut_upto=hu, haircut_rate=hr, haircut_cum=hc, borrow_rate=rng.uniform(0, 0.1, n_assets),
                      maint_upto=mu, maint_rate=mr, maint_cum=mc,
                      underlying=rng.integers(0, n_assets, n_instr).astype(np.int32), settlement=0)


def bits(x) -> np.ndarray:
    """float64 bits, every NaN as the one NaN."""
    x = np.array(x, dtype=np.float64, ndmin=1)
    x[np.isnan(x)] = np.nan
    return x.view(np.int64)


def outputs(fn, index, mark, book, risk):
    n = book.active.shape[0]
    out = [np.empty(n), np.empty(n), np.empty(n), np.empty(n, dtype=np.bool_)]
    fn(index, mark, book, risk, *out)
    return [bits(o).tolist() for o in out[:3]] + [out[3].tolist()]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31), n=st.integers(1, 400), haircut_width=st.integers(1, 11),
       maint_width=st.integers(1, 11), specials=st.booleans())
def test_margin_health_is_bit_identical_to_the_previous_kernel(seed, n, haircut_width, maint_width, specials):
    rng = np.random.default_rng(seed)
    n_assets, n_instr = int(rng.integers(1, 12)), int(rng.integers(1, 6))
    risk = random_risk(rng, n_assets, n_instr, haircut_width, maint_width)
    index = np.exp(rng.normal(3, 3, n_assets))
    mark = np.exp(rng.normal(5, 3, n_instr))
    book = random_book(rng, n, n_assets, n_instr, index, mark)
    if specials:
        for prices in (index, mark):
            for _ in range(int(rng.integers(1, 3))):
                prices[int(rng.integers(0, prices.shape[0]))] = rng.choice([np.nan, 0.0, np.inf, -np.inf])
    assert outputs(margin_health, index, mark, book, risk) == outputs(old_margin_health, index, mark, book, risk)
    got, want = (np.empty(n), np.empty(n)), (np.empty(n), np.empty(n))
    margin_numbers(index, mark, book, risk, *got)
    old_margin_numbers(index, mark, book, risk, *want)
    assert np.array_equal(bits(got[0]), bits(want[0])) and np.array_equal(bits(got[1]), bits(want[1]))
    for i in range(0, n, max(1, n // 20)):  # and the per-account function the cascade and stress use
        e, m = account_numbers(i, index, mark, book, risk)
        assert bits(e) == bits(got[0][i]) and bits(m) == bits(got[1][i])
