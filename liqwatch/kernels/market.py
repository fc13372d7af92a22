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

The rules that depend on the order of events are applied here too, so that no Python runs per event:
- out of order: an event older than the last of its key (book slot, or asset for references) by more than
  `tolerance_ms` is rejected (`codes[k] = OUT_OF_ORDER`, the last time in `prev_ts[k]`); older within the
  tolerance it is superseded (`SUPERSEDED`); otherwise applied (`APPLIED`);
- the market's event clock (`clock = [t, limit]`): an event past `limit` stops the run at its position with
  `AHEAD` (the caller judges it: a rejected record, or a jump of the stream; `force` then lets it through).
"""

from typing import NamedTuple

import numpy as np
from numba import njit

from liqwatch.kernels.prices import index_into, index_scratch, marks_into

EVENT_TICK = 0
EVENT_REFERENCE = 1

# per-event outcome (codes) and why a run stopped early
SUPERSEDED = 0
APPLIED = 1
OUT_OF_ORDER = 2
REJECTED = 3       # set by the caller (ahead of the stream)
STOP_DONE = 0
STOP_BASIS_FULL = 1
STOP_AHEAD = 2


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


@njit(cache=True, nogil=True)
def apply_market_run(kind, ref, aux, ts, bid, ask, last, funding_rate, next_funding_ts, book, index_params,
                     mark_params, basis, index, stale, source_price, source_status, mark, ref_in,
                     tick_last_ts, ref_last_ts, tolerance_ms, max_ahead_ms, clock, codes, prev_ts, start, force):
    """Apply events start.. in order; returns (position, STOP_*, events applied). `aux` is a reference's `in`
    asset."""
    cap = basis.ts.shape[1]
    n_instr = basis.head.shape[0]
    sp, sw = index_scratch(index_params)
    v = np.empty(3)
    applied = 0
    for k in range(start, kind.shape[0]):
        t = ts[k]
        r = ref[k]
        if t > clock[1] and k != force:
            return k, STOP_AHEAD, applied
        is_tick = kind[k] == EVENT_TICK
        seen = tick_last_ts[r] if is_tick else ref_last_ts[r]
        if t < seen:
            if seen - t > tolerance_ms:
                codes[k] = OUT_OF_ORDER
                prev_ts[k] = seen
            else:
                codes[k] = SUPERSEDED
            continue
        instr = -1
        if is_tick:
            if r < basis.instrument_of_slot.shape[0]:
                instr = basis.instrument_of_slot[r]
            if instr >= 0 and basis.count[instr] == cap:
                return k, STOP_BASIS_FULL, applied  # no room for this tick's basis sample: the caller grows the rings
            tick_last_ts[r] = t
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
            ref_last_ts[r] = t
            ref_in[r] = aux[k]
            book.ref_rate[r] = bid[k]
            book.ref_ts[r] = t
        codes[k] = APPLIED
        applied += 1
        if t > clock[0]:
            clock[0] = t
            clock[1] = t + max_ahead_ms
        index_into(t, book.mid, book.ts, book.ref_rate, book.ref_ts, index_params, index, index, stale,
                   source_price, source_status, sp, sw)
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
        marks_into(t, book.last, book.funding_rate, book.next_funding_ts, basis.average, index, mark_params, mark, v)
    return kind.shape[0], STOP_DONE, applied
