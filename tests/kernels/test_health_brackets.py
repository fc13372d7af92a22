"""The bracket lookups of `margin_health` (one vector compare on padded rows for wide tables, scalar compares for
narrow ones, the generic 2-D pass beyond width 9) at the edges: amounts exactly on an upper bound, one ulp either
side, zero, NaN and infinite, for every table width — bit for bit the numbers of the previous kernel."""

from __future__ import annotations

import numpy as np
import pytest

from liqwatch.kernels.arrays import AccountArrays, RiskParams
from liqwatch.kernels.health import margin_health
from tests.kernels.test_health_identical import old_margin_health, outputs, random_brackets


def edge_book(amounts: np.ndarray, n_assets: int, n_instr: int) -> AccountArrays:
    """One account per amount: a position of that notional at mark 1 on instrument i % n_instr, and collateral of
    that value at index 1 on asset i % n_assets."""
    n = amounts.shape[0]
    ids = np.arange(n, dtype=np.int32)
    one = np.ones(n, dtype=np.int32)
    return AccountArrays(active=np.ones(n, dtype=np.bool_), coll_start=ids.copy(), coll_count=one.copy(),
                         coll_asset=(ids % n_assets).astype(np.int32), coll_qty=amounts.copy(), coll_owner=ids.copy(),
                         debt_start=np.zeros(n, dtype=np.int32), debt_count=np.zeros(n, dtype=np.int32),
                         debt_asset=np.zeros(0, dtype=np.int32), debt_qty=np.zeros(0),
                         debt_owner=np.zeros(0, dtype=np.int32), pos_start=ids.copy(), pos_count=one.copy(),
                         pos_instr=(ids % n_instr).astype(np.int32), pos_qty=amounts.copy(),
                         pos_entry=np.full(n, 0.9), pos_owner=ids.copy())


@pytest.mark.parametrize("width", range(1, 13))
def test_amounts_on_the_bracket_bounds(width):
    rng = np.random.default_rng(width)
    n_owners = 3
    hu, hr, hc = random_brackets(rng, n_owners, width)
    mu, mr, mc = random_brackets(rng, n_owners, width)
    if hu.shape[1] != width or mu.shape[1] != width:  # random_brackets may make every owner narrower
        hu, hr, hc = (np.pad(a, ((0, 0), (0, width - a.shape[1])), mode="edge") for a in (hu, hr, hc))
        mu, mr, mc = (np.pad(a, ((0, 0), (0, width - a.shape[1])), mode="edge") for a in (mu, mr, mc))
    risk = RiskParams(haircut_upto=hu, haircut_rate=hr, haircut_cum=hc, borrow_rate=np.full(n_owners, 0.01),
                      maint_upto=mu, maint_rate=mr, maint_cum=mc, underlying=np.zeros(n_owners, dtype=np.int32),
                      settlement=0)
    bounds = np.unique(np.concatenate([hu.ravel(), mu.ravel()]))
    bounds = bounds[np.isfinite(bounds)]
    amounts = np.concatenate([bounds, np.nextafter(bounds, np.inf), np.nextafter(bounds, -np.inf), -bounds,
                              [0.0, -0.0, 1.0, 1e12, np.inf, -np.inf, np.nan]])
    amounts = np.repeat(amounts, n_owners)  # every amount on every owner's row
    book = edge_book(amounts, n_owners, n_owners)
    index, mark = np.ones(n_owners), np.ones(n_owners)
    assert outputs(margin_health, index, mark, book, risk) == outputs(old_margin_health, index, mark, book, risk)
