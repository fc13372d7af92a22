"""Index and mark prices (SPEC §3) for every asset and instrument in one call.

    compute_index(t, mid, ts, ref_rate, ref_ts, params, prev_index,
                  out_index, out_stale, out_source_price, out_source_status)
    compute_marks(t, last, funding_rate, next_funding_ts, basis_ma, index, mark_params, out_mark)

Example: BTC from three books, max_deviation 5%, weighted mean with weights .4/.3/.3 and mids
100, 101, 130 (all fresh): the median of fresh prices is 101; 130 deviates by 28.7% and is dropped
(status DROPPED_DEVIATION); the survivors' weights renormalise to .571/.429, index = 100.43.

Assets are evaluated in `params.order`, so a source quoted in ETH (WBETH/ETH) or redeeming into ETH reads
ETH's index of this same evaluation. No survivor: the index keeps `prev_index` and is flagged stale.

The anchor rule (a liqwatch extension of SPEC §3): the median of one or two prices cannot say which one is wrong.
With fewer than three fresh sources, the deviation filter is centred on the first fresh reference (`redemption:`)
source of the index, which always survives; with none, every fresh source is kept. So two sources that diverge
in a crash (USDe: Binance's book at 0.65, redemption at 1.00) give the anchored value instead of freezing the
index at its pre-crash value, and an index only keeps its last value when no source at all is fresh.
"""

import numpy as np
from numba import njit

from liqwatch.kernels.arrays import (
    DROPPED_DEVIATION,
    DROPPED_STALE,
    MARK_INDEX,
    METHOD_WEIGHTED_MEDIAN,
    MISSING,
    SOURCE_BOOK,
    USED,
    IndexParams,
    MarkParams,
)


@njit(cache=True, inline="always")
def _sort_pairs(p, w, n):
    # insertion sort: an index has a handful of constituents
    for i in range(1, n):
        kp = p[i]
        kw = w[i]
        j = i - 1
        while j >= 0 and p[j] > kp:
            p[j + 1] = p[j]
            w[j + 1] = w[j]
            j -= 1
        p[j + 1] = kp
        w[j + 1] = kw


@njit(cache=True)
def compute_index(t, mid, ts, ref_rate, ref_ts, params, prev_index,
                  out_index, out_stale, out_source_price, out_source_status):
    sp, sw = index_scratch(params)
    index_into(t, mid, ts, ref_rate, ref_ts, params, prev_index, out_index, out_stale, out_source_price,
               out_source_status, sp, sw)


@njit(cache=True)
def index_scratch(params):
    """Scratch for `index_into`: room for the constituents of the largest index."""
    n_max = 1
    for a in range(params.cons_ptr.shape[0] - 1):
        n_max = max(n_max, params.cons_ptr[a + 1] - params.cons_ptr[a])
    return np.empty(n_max), np.empty(n_max)


@njit(cache=True, inline="always")
def index_into(t, mid, ts, ref_rate, ref_ts, params, prev_index,
               out_index, out_stale, out_source_price, out_source_status, sp, sw):
    """`compute_index` with its scratch given (`index_scratch`): the per-tick path allocates nothing."""
    for k in range(params.order.shape[0]):
        a = params.order[k]
        if params.fixed_one[a]:
            out_index[a] = 1.0
            out_stale[a] = False
            continue
        lo = params.cons_ptr[a]
        hi = params.cons_ptr[a + 1]
        n = 0
        for c in range(lo, hi):
            ref = params.cons_ref[c]
            q = params.cons_quote[c]
            quote_price = 1.0 if q < 0 else out_index[q]
            if params.cons_kind[c] == SOURCE_BOOK:
                raw = mid[ref]
                seen = ts[ref]
            else:
                raw = ref_rate[ref]
                seen = ref_ts[ref]
            price = raw * quote_price
            out_source_price[c] = price
            if np.isnan(price):
                out_source_status[c] = MISSING
            elif t - seen > params.cons_max_age_ms[c]:
                out_source_status[c] = DROPPED_STALE
            else:
                out_source_status[c] = USED
                sp[n] = price
                sw[n] = params.cons_weight[c]
                n += 1
        if n == 0:
            out_index[a] = prev_index[a]
            out_stale[a] = True
            continue
        # the centre of the deviation filter: the median of three or more fresh sources, else the anchor
        center = np.nan
        if n >= 3:
            _sort_pairs(sp, sw, n)
            if n % 2 == 1:
                center = sp[n // 2]
            else:
                center = 0.5 * (sp[n // 2 - 1] + sp[n // 2])
        else:
            for c in range(lo, hi):
                if params.cons_kind[c] != SOURCE_BOOK and out_source_status[c] == USED:
                    center = out_source_price[c]
                    break
        # second pass: deviation filter (none without a centre), then combine the survivors
        m = 0
        for c in range(lo, hi):
            if out_source_status[c] != USED:
                continue
            price = out_source_price[c]
            if not np.isnan(center) and abs(price - center) > params.max_deviation[a] * center:
                out_source_status[c] = DROPPED_DEVIATION
            else:
                sp[m] = price
                sw[m] = params.cons_weight[c]
                m += 1
        if m == 0:
            out_index[a] = prev_index[a]
            out_stale[a] = True
            continue
        total = 0.0
        for j in range(m):
            total += sw[j]
        if params.method[a] == METHOD_WEIGHTED_MEDIAN:
            _sort_pairs(sp, sw, m)
            # smallest price whose cumulative weight reaches half; the tolerance makes an exact tie (.5) count
            half = 0.5 * total * (1.0 - 1e-12)
            cum = 0.0
            value = sp[m - 1]
            for j in range(m):
                cum += sw[j]
                if cum >= half:
                    value = sp[j]
                    break
        else:
            acc = 0.0
            for j in range(m):
                acc += sw[j] * sp[j]
            value = acc / total
        if not np.isnan(params.floor[a]) and value < params.floor[a]:
            value = params.floor[a]
        if not np.isnan(params.cap[a]) and value > params.cap[a]:
            value = params.cap[a]
        out_index[a] = value
        out_stale[a] = False


@njit(cache=True)
def compute_marks(t, last, funding_rate, next_funding_ts, basis_ma, index, params, out_mark):
    """median3: median of (a) index × (1 + funding × time-to-funding / interval) — or index without a funding
    rate —, (b) index + moving average of (mid − index), (c) last traded price; those present."""
    marks_into(t, last, funding_rate, next_funding_ts, basis_ma, index, params, out_mark, np.empty(3))


@njit(cache=True, inline="always")
def marks_into(t, last, funding_rate, next_funding_ts, basis_ma, index, params, out_mark, v):
    """`compute_marks` with its scratch `v` (3 floats) given."""
    for i in range(params.underlying.shape[0]):
        idx = index[params.underlying[i]]
        if params.method[i] == MARK_INDEX or np.isnan(idx):
            out_mark[i] = idx
            continue
        slot = params.slot[i]
        n = 0
        fr = funding_rate[slot] if slot >= 0 else np.nan
        if not np.isnan(fr):
            to_funding = max(next_funding_ts[slot] - t, 0.0)
            v[n] = idx * (1.0 + fr * to_funding / params.funding_interval_ms[i])
        else:
            v[n] = idx
        n += 1
        if not np.isnan(basis_ma[i]):
            v[n] = idx + basis_ma[i]
            n += 1
        lp = last[slot] if slot >= 0 else np.nan
        if not np.isnan(lp):
            v[n] = lp
            n += 1
        if n == 1:
            out_mark[i] = v[0]
        elif n == 2:
            out_mark[i] = 0.5 * (v[0] + v[1])
        else:
            lo = min(v[0], v[1])
            hi = max(v[0], v[1])
            out_mark[i] = max(lo, min(hi, v[2]))


def empty_outputs(params: IndexParams, n_instruments: int):
    """Allocate the outputs of one index + mark evaluation."""
    n_assets = params.fixed_one.shape[0]
    n_cons = params.cons_kind.shape[0]
    return (np.full(n_assets, np.nan), np.zeros(n_assets, dtype=np.bool_),
            np.full(n_cons, np.nan), np.full(n_cons, MISSING, dtype=np.int8), np.full(n_instruments, np.nan))


__all__ = ["compute_index", "compute_marks", "empty_outputs", "IndexParams", "MarkParams"]
