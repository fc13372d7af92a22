"""Array bundles the kernels read: config turned into numbers, and accounts as struct-of-arrays.

Kernels take these NamedTuples (numba types them like structs) so a signature reads `(index, mark, accounts, risk)`
instead of thirty loose arrays. The params are built once per config by `liqwatch.core.layout`; the
`AccountArrays` are kept up to date by `liqwatch.core.state.Accounts`.

Conventions shared by every kernel:
- assets, instruments and venue books (tick "slots") are small integers; -1 means "none";
- a missing number is NaN (no price yet, no funding rate, health of an account with no maintenance);
- brackets are fixed-width tables, one row per owner (asset or instrument), padded with open-ended brackets
  (`upto = inf`), with the cumulative deduction `cum`: a bracketed charge is `amount × rate_k − cum_k` for the
  bracket k holding the amount (the way exchanges publish their tables). k is found by counting the uppers
  below the amount — a fixed number of compares with no data-dependent branch, which matters: a loop with a
  per-owner trip count costs more than all the arithmetic of an account.
"""

from typing import NamedTuple

import numpy as np

# constituent kinds
SOURCE_BOOK = 0        # venue:BASE/QUOTE spot book, priced at mid × price of QUOTE
SOURCE_REDEMPTION = 1  # redemption:A, priced at the reference rate × price of its `in` asset

# constituent status after an index evaluation
USED = 0
DROPPED_STALE = 1
DROPPED_DEVIATION = 2
MISSING = 3            # never quoted, or its quote asset has no price yet
STATUS_NAMES = {DROPPED_STALE: "stale", DROPPED_DEVIATION: "deviation", MISSING: "missing"}  # in events, metrics

METHOD_WEIGHTED_MEAN = 0
METHOD_WEIGHTED_MEDIAN = 1

MARK_MEDIAN3 = 0
MARK_INDEX = 1

IMPACT_NONE = 0
IMPACT_LINEAR = 1
IMPACT_SQRT = 2


class IndexParams(NamedTuple):
    order: np.ndarray          # int32[A]   assets in dependency order
    fixed_one: np.ndarray      # bool[A]    settlement / USD-like assets without an index: price 1
    method: np.ndarray         # int8[A]
    max_deviation: np.ndarray  # float64[A]
    floor: np.ndarray          # float64[A] NaN = none
    cap: np.ndarray            # float64[A] NaN = none
    cons_ptr: np.ndarray       # int32[A+1]
    cons_kind: np.ndarray      # int8[C]
    cons_ref: np.ndarray       # int32[C]   book slot (SOURCE_BOOK: spot or derivative) or asset of the reference
                               #            (SOURCE_REDEMPTION)
    cons_quote: np.ndarray     # int32[C]   asset the source is quoted in; -1 = priced at 1 (USD-like)
    cons_weight: np.ndarray    # float64[C]
    cons_max_age_ms: np.ndarray  # float64[C] a source older than this is stale


class MarkParams(NamedTuple):
    underlying: np.ndarray           # int32[I]
    method: np.ndarray               # int8[I]
    slot: np.ndarray                 # int32[I] the instrument's own book (last price, funding), -1 = none yet
    funding_interval_ms: np.ndarray  # float64[I]


class RiskParams(NamedTuple):
    haircut_upto: np.ndarray    # float64[A, W]
    haircut_rate: np.ndarray    # float64[A, W]
    haircut_cum: np.ndarray     # float64[A, W]
    borrow_rate: np.ndarray     # float64[A] maintenance rate on borrowed value
    maint_upto: np.ndarray      # float64[I, W]
    maint_rate: np.ndarray      # float64[I, W]
    maint_cum: np.ndarray       # float64[I, W]
    underlying: np.ndarray      # int32[I]
    settlement: int             # asset never sold in a liquidation


class ImpactParams(NamedTuple):
    model: np.ndarray             # int8[A]
    depth_usd_per_pct: np.ndarray  # float64[A]
    daily_volume_usd: np.ndarray   # float64[A]
    daily_vol: np.ndarray          # float64[A]
    y: np.ndarray                  # float64[A]


class Quotes(NamedTuple):
    """Market state at one moment: the last quote of each venue book (slot) and each asset's reference rate."""

    mid: np.ndarray              # float64[S] (bid + ask) / 2, NaN = never quoted
    last: np.ndarray             # float64[S] last traded price, NaN = unknown
    ts: np.ndarray               # float64[S] event time of the quote, ms
    funding_rate: np.ndarray     # float64[S] perpetual books only, NaN = unknown
    next_funding_ts: np.ndarray  # float64[S]
    base: np.ndarray             # int32[S] asset the book prices (the underlying for an instrument's book)
    venue: np.ndarray            # int32[S]
    ref_rate: np.ndarray         # float64[A] redemption rate, NaN = none yet
    ref_ts: np.ndarray           # float64[A]
    basis_ma: np.ndarray         # float64[I] moving average of (instrument mid − index), NaN = no sample


class AccountArrays(NamedTuple):
    """Accounts as struct-of-arrays. Each account's entries are the slice `start[i] : start[i] + count[i]` of the
    entry pools, and every entry names its `owner` (−1 for garbage: a replaced snapshot's entries stay in the
    pool until compaction). Per-account kernels walk slices; the full recompute walks the pools flat."""

    active: np.ndarray       # bool[N]
    coll_start: np.ndarray   # int32[N]
    coll_count: np.ndarray   # int32[N]
    coll_asset: np.ndarray   # int32[K]
    coll_qty: np.ndarray     # float64[K]
    coll_owner: np.ndarray   # int32[K]
    debt_start: np.ndarray   # int32[N]
    debt_count: np.ndarray   # int32[N]
    debt_asset: np.ndarray   # int32[B]
    debt_qty: np.ndarray     # float64[B]
    debt_owner: np.ndarray   # int32[B]
    pos_start: np.ndarray    # int32[N]
    pos_count: np.ndarray    # int32[N]
    pos_instr: np.ndarray    # int32[P]
    pos_qty: np.ndarray      # float64[P]  signed, + long
    pos_entry: np.ndarray    # float64[P]
    pos_owner: np.ndarray    # int32[P]


def bracket_table(owners: list[list[tuple[float | None, float]]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One row per owner, padded to the widest table with open-ended brackets; an owner without brackets is
    charged nothing (rate 0)."""
    width = max([len(b) for b in owners] + [1])
    upto = np.full((len(owners), width), np.inf)
    rate = np.zeros((len(owners), width))
    cum = np.zeros((len(owners), width))
    for o, brackets in enumerate(owners):
        if not brackets:
            continue
        u, r, c = bracket_tables(brackets)
        n = len(brackets)
        upto[o, :n], rate[o, :n], cum[o, :n] = u, r, c
        rate[o, n:], cum[o, n:] = r[-1], c[-1]
    return upto, rate, cum


def bracket_tables(brackets: list[tuple[float | None, float]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(upto, rate) brackets → (upto with inf for open end, rate, cumulative deduction).

    For an amount v in bracket k (upto[k-1] < v <= upto[k]) the incremental charge
    Σ_{j<k} rate_j (upto_j − upto_{j−1}) + rate_k (v − upto_{k−1}) equals v·rate_k − cum_k with
    cum_k = rate_k·upto_{k−1} − Σ_{j<k} rate_j (upto_j − upto_{j−1}).
    """
    upto = np.array([np.inf if u is None else float(u) for u, _ in brackets], dtype=np.float64)
    rate = np.array([float(r) for _, r in brackets], dtype=np.float64)
    cum = np.zeros(len(brackets), dtype=np.float64)
    below = 0.0      # upto of the previous bracket
    charged = 0.0    # charge of every full bracket below
    for k in range(len(brackets)):
        cum[k] = rate[k] * below - charged
        if np.isfinite(upto[k]):
            charged += rate[k] * (upto[k] - below)
            below = upto[k]
    return upto, rate, cum
