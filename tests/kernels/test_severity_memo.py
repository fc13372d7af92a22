"""`liquidation_severity` (accounts of a grid cell bisected together, one stressed market per tree node) against a
plain per-account scan and bisection that recomputes the market at every step: equal bit for bit."""

from __future__ import annotations

import math

import numpy as np
import pytest

from liqwatch.core.engine import SEVERITY_GRID
from liqwatch.kernels.health import account_numbers
from liqwatch.kernels.stress import SEVERITY_TOLERANCE, liquidation_severity, stressed_prices
from liqwatch.tools.bench import _market_engine, synthetic_accounts
from tests.conftest import run_engine
from tests.populations import population


def severity_args(engine, accounts):
    pv = engine.prices()
    lay, stress = engine.layout, engine.cfg.stress
    return (float(pv.t), float(stress.severities[-1]), SEVERITY_GRID, lay.scenario_direction(stress.primary_scenario),
            pv.quotes, lay.index_params, lay.mark_params, pv.index, accounts, lay.risk_params)


def reference_severities(t, s_max, n_grid, direction, quotes, index_params, mark_params, base_index, accounts, risk):
    """The kernel before batching, in Python: per account, scan the grid, then bisect with a fresh market per step.
    Also returns each account's first liquidatable grid point (−1: none)."""
    n_assets, n_slots = base_index.shape[0], quotes.mid.shape[0]
    n_cons = index_params.cons_kind.shape[0]

    def prices(s):
        index, mark = np.empty(n_assets), np.empty(mark_params.underlying.shape[0])
        stressed_prices(t, s, direction, quotes, index_params, mark_params, base_index, np.empty(n_slots),
                        np.empty(n_slots), index, np.empty(n_assets, dtype=np.bool_), np.empty(n_cons),
                        np.empty(n_cons, dtype=np.int8), mark)
        return index, mark

    def liquidatable(i, index, mark):
        e, m = account_numbers(i, index, mark, accounts, risk)
        return e < m

    step = s_max / (n_grid - 1)
    grid = [prices(g * step) for g in range(n_grid)]
    n = accounts.active.shape[0]
    out, first = np.full(n, np.nan), np.full(n, -1)
    for i in range(n):
        if not accounts.active[i]:
            continue
        first[i] = next((g for g in range(n_grid) if liquidatable(i, *grid[g])), -1)
        if first[i] <= 0:
            out[i] = 0.0 if first[i] == 0 else np.nan
            continue
        lo, hi = (first[i] - 1) * step, first[i] * step
        while hi - lo > SEVERITY_TOLERANCE:
            s = 0.5 * (lo + hi)
            if liquidatable(i, *prices(s)):
                hi = s
            else:
                lo = s
        out[i] = hi
    return out, first


def check_identical(args):
    n = args[8].active.shape[0]
    got = np.empty(n)
    liquidation_severity(*args, got)
    want, first = reference_severities(*args)
    assert np.array_equal(got.view(np.int64), want.view(np.int64)), np.flatnonzero(got.view(np.int64) != want.view(np.int64))
    cells = np.bincount(first[first > 0])
    assert (first == 0).any() and (first < 0).any() and cells.max() >= 3  # already, never, and shared cells
    return first


@pytest.mark.parametrize("seed", [1, 2])
def test_severity_of_a_population_equals_per_account_bisection(rich_config, seed):
    engine = run_engine(rich_config, population(seed, 400))
    check_identical(severity_args(engine, engine.accounts.view()))


@pytest.fixture(scope="module")
def market_engine():
    return _market_engine()


@pytest.mark.parametrize("seed", [3, 4])
def test_severity_of_twins_and_near_twins_equals_per_account_bisection(market_engine, seed):
    """Copies of bisected accounts walk one path to the end; a copy scaled by a hair shares the top of its cell's
    tree and splits deep in it; an inactive row stays NaN."""
    acc = synthetic_accounts(market_engine, 300, seed=seed)
    _, first = reference_severities(*severity_args(market_engine, acc))
    pairs = []
    for src in np.flatnonzero(first > 0)[:20]:
        dst = next(d for d in range(300) if d != src and d not in np.ravel(pairs) and roomy(acc, d, src))
        twin(acc, src, dst)
        pairs.append((src, dst))
    near = pairs[-1][1]
    acc.coll_qty[acc.coll_start[near]] *= 1 + 1e-9
    acc.active[pairs[0][0]] = False
    out = np.empty(300)
    liquidation_severity(*severity_args(market_engine, acc), out)
    first = check_identical(severity_args(market_engine, acc))
    for src, dst in pairs[1:-1]:
        assert first[dst] == first[src] > 0 and out[dst] == out[src]
    assert math.isnan(out[pairs[0][0]])


POOLS = (("coll", ("asset", "qty")), ("debt", ("asset", "qty")), ("pos", ("instr", "qty", "entry")))


def roomy(acc, dst, src):
    return all(getattr(acc, f"{pool}_count")[dst] >= getattr(acc, f"{pool}_count")[src] for pool, _ in POOLS)


def twin(acc, src, dst):
    """Account dst holds what src holds (dst has room: `roomy`)."""
    for pool, fields in POOLS:
        start, count = getattr(acc, f"{pool}_start"), getattr(acc, f"{pool}_count")
        count[dst] = count[src]
        for f in fields:
            col = getattr(acc, f"{pool}_{f}")
            col[start[dst]:start[dst] + count[src]] = col[start[src]:start[src] + count[src]]
