"""Auto-deleveraging in the cascade: when the insurance fund cannot cover a round's deficits, the bankrupt
accounts' positions in the uncovered share are taken over by opposite positions, highest in the venue's ADL
queue first, at the bankruptcy price — off the books, so with no market impact.

    adl_queue(index, mark, accounts, risk, fallen, cash, rule, need, out_key)      # per shard: the queue keys
    cutoff, tie = adl_plan(groups, keys, notionals, wanted)                        # the coordinator: who is taken
    deleverage(mark, accounts, key, cutoff, tie, loss_rate, cash, out)             # per shard: close them

A group is (side, instrument), side 1 long. Per group the coordinator takes the queue from the top until the notional
wanted: every key above the cutoff closes in full, the keys equal to it close by a common fraction (ties are split
pro rata, so any sharding of the accounts takes the same positions). Each closed position realises its PnL at the
mark and pays `loss_rate` × its closed notional: the bankrupt side's price is worse than the mark by exactly the
uncovered deficit per unit of notional (deficit / bankrupt notional of the round), which is what closing at the
bankruptcy price costs the counterparty.

The queue key is the venue's (`positions.adl_key`), with the account's equity (its settlement cash included) as the
room of Binance's effective leverage — a cross account's distance to bankruptcy; the exact per-position bankruptcy
price would cost a root search per position per round.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from liqwatch.kernels.health import account_numbers
from liqwatch.kernels.positions import adl_key


@njit(cache=True, nogil=True)
def adl_queue(index, mark, accounts, risk, fallen, cash, rule, need, out_key):
    """Per position-pool entry: its queue key when its group is wanted (need[side, instrument]) and its account is
    live, else NaN."""
    out_key[:] = np.nan
    for i in range(accounts.active.shape[0]):
        if not accounts.active[i] or fallen[i] != 0:
            continue
        start, stop = accounts.pos_start[i], accounts.pos_start[i] + accounts.pos_count[i]
        wanted = False
        for p in range(start, stop):
            q = accounts.pos_qty[p]
            wanted |= q != 0.0 and need[1 if q > 0.0 else 0, accounts.pos_instr[p]]
        if not wanted:
            continue
        e, _ = account_numbers(i, index, mark, accounts, risk)
        if cash.shape[0]:
            e += cash[i]
        for p in range(start, stop):
            q = accounts.pos_qty[p]
            ins = accounts.pos_instr[p]
            m = mark[ins]
            entry = accounts.pos_entry[p]
            if q == 0.0 or not need[1 if q > 0.0 else 0, ins] or not (m > 0.0 and np.isfinite(m)) or not entry > 0.0:
                continue
            out_key[p] = adl_key(rule, q, m, entry, e, e)


def adl_plan(groups: np.ndarray, keys: np.ndarray, notionals: np.ndarray, wanted: np.ndarray):
    """(cutoff, tie) per group, shape of `wanted` (notional to take per group): positions with a key above the
    cutoff close in full, those equal to it by the fraction `tie`; NaN cutoff: none. A group whose queue holds less
    than wanted is taken whole (cutoff −inf)."""
    cutoff = np.full(wanted.shape, np.nan)
    tie = np.zeros(wanted.shape)
    flat_cut, flat_tie = cutoff.reshape(-1), tie.reshape(-1)
    for g in np.flatnonzero(wanted.reshape(-1) > 0.0):
        mine = groups == g
        k, v = keys[mine], notionals[mine]
        if k.shape[0] == 0:
            continue
        distinct, at = np.unique(-k, return_inverse=True)  # descending keys
        by_key = np.bincount(at, weights=v, minlength=distinct.shape[0])
        through = np.cumsum(by_key)
        want = float(wanted.reshape(-1)[g])
        j = int(np.searchsorted(through, want, side="left"))
        if j >= distinct.shape[0]:
            flat_cut[g] = -np.inf
            continue
        above = through[j - 1] if j > 0 else 0.0
        flat_cut[g] = -distinct[j]
        flat_tie[g] = min((want - above) / by_key[j], 1.0) if by_key[j] > 0.0 else 0.0
    return cutoff, tie


@njit(cache=True, nogil=True)
def deleverage(mark, accounts, key, cutoff, tie, loss_rate, cash, out_closed, out):
    """Close the planned part of every queued position (`adl_plan`): at the mark, its PnL into cash, less
    loss_rate × the closed notional; its closed notional added to out_closed[side, instrument]; out = [accounts
    deleveraged, notional closed]."""
    for i in range(accounts.active.shape[0]):
        hit = False
        for p in range(accounts.pos_start[i], accounts.pos_start[i] + accounts.pos_count[i]):
            k = key[p]
            if k != k:
                continue
            q = accounts.pos_qty[p]
            side = 1 if q > 0.0 else 0
            ins = accounts.pos_instr[p]
            c = cutoff[side, ins]
            f = 1.0 if k > c else (tie[side, ins] if k == c else 0.0)
            if f <= 0.0:
                continue
            m = mark[ins]
            closing = q * f
            closed = abs(closing * m)
            cash[i] += closing * (m - accounts.pos_entry[p]) - loss_rate * closed
            accounts.pos_qty[p] = q - closing
            out_closed[side, ins] += closed
            out[1] += closed
            hit = True
        if hit:
            out[0] += 1.0
