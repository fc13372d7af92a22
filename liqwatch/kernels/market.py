"""Apply a run of market events (ticks and references) in order, re-evaluating prices after each one.

    done = apply_market_run(kind, ref, ts, bid, ask, last, funding_rate, next_funding_ts, book, params, basis,
                         index, stale, source_price, source_status, mark)

Per event, exactly what SPEC §3 and the per-event path define: update the book (or the reference rate),
recompute every index (`prev` = the index after the previous event), take a basis sample (instrument mid − index)
when the tick is on an instrument's own book, expire samples older than the basis window, recompute marks.
One compiled loop instead of a Python call per event: this is what lets a worker keep up with a crash-day feed.

Basis samples live in per-instrument ring buffers (`basis.ts[i, :]`, `basis.value[i, :]`); when one is full the
kernel stops *before* the event that needs room and returns its position, the caller doubles the rings and calls
again from there.
"""

from typing import NamedTuple

import numpy as np
from numba import njit

from liqwatch.kernels.prices import compute_index, compute_marks

EVENT_TICK = 0
EVENT_REFERENCE = 1


class BookArrays(NamedTuple):
    mid: np.ndarray
    bid: np.ndarray
    ask: np.ndarray
    last: np.ndarray
    ts: np.ndarray
    funding_rate: np.ndarray
    next_funding_ts: np.ndarray
    ref_rate: np.ndarray
    ref_ts: np.ndarray


class BasisRings(NamedTuple):
    ts: np.ndarray          # float64[I, C]
    value: np.ndarray       # float64[I, C]
    head: np.ndarray        # int64[I]
    count: np.ndarray       # int64[I]
    total: np.ndarray       # float64[I] running sum of the samples in the ring
    average: np.ndarray     # float64[I] NaN when empty
    window_ms: np.ndarray   # float64[I]
    instrument_of_slot: np.ndarray  # int32[S] -1 when the book is no instrument's own


@njit(cache=True)
def apply_market_run(kind, ref, ts, bid, ask, last, funding_rate, next_funding_ts, book, index_params, mark_params,
                  basis, index, stale, source_price, source_status, mark, start):
    cap = basis.ts.shape[1]
    n_instr = basis.head.shape[0]
    for k in range(start, kind.shape[0]):
        t = ts[k]
        r = ref[k]
        instr = -1
        if kind[k] == EVENT_TICK:
            if r < basis.instrument_of_slot.shape[0]:
                instr = basis.instrument_of_slot[r]
            if instr >= 0 and basis.count[instr] == cap:
                return k  # no room for this tick's basis sample: the caller grows the rings
            book.bid[r] = bid[k]
            book.ask[r] = ask[k]
            book.mid[r] = 0.5 * (bid[k] + ask[k])
            book.ts[r] = t
            if not np.isnan(last[k]):
                book.last[r] = last[k]
            if not np.isnan(funding_rate[k]):
                book.funding_rate[r] = funding_rate[k]
                book.next_funding_ts[r] = next_funding_ts[k]
        else:
            book.ref_rate[r] = bid[k]
            book.ref_ts[r] = t
        compute_index(t, book.mid, book.ts, book.ref_rate, book.ref_ts, index_params, index, index, stale,
                      source_price, source_status)
        if instr >= 0:
            idx = index[mark_params.underlying[instr]]
            if not np.isnan(idx):
                pos = (basis.head[instr] + basis.count[instr]) % cap
                sample = book.mid[r] - idx
                basis.ts[instr, pos] = t
                basis.value[instr, pos] = sample
                basis.count[instr] += 1
                basis.total[instr] += sample
        for i in range(n_instr):
            horizon = t - basis.window_ms[i]
            while basis.count[i] > 0 and basis.ts[i, basis.head[i]] <= horizon:
                basis.total[i] -= basis.value[i, basis.head[i]]
                basis.head[i] = (basis.head[i] + 1) % cap
                basis.count[i] -= 1
            if basis.count[i] == 0:
                basis.total[i] = 0.0
                basis.average[i] = np.nan
            else:
                basis.average[i] = basis.total[i] / basis.count[i]
        compute_marks(t, book.last, book.funding_rate, book.next_funding_ts, basis.average, index, mark_params, mark)
    return kind.shape[0]
