"""Compile the numba kernels before a worker joins its group.

numba caches compiled kernels on disk, but the first compile (a fresh install, a new cache dir, a changed
kernel) takes seconds, and it would happen on the event loop at the first market run, in the middle of the group's
first rebalance: a worker that blocked its loop that long while its table was recovering has been seen never to
fetch its account partitions again. Here they compile on a tiny market built from the config, before anything
connects."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time

import msgspec
import numpy as np

from liqwatch.config import Config
from liqwatch.core.columns import scan
from liqwatch.core.engine import Engine
from liqwatch.events import BadEvent, decode
from liqwatch.kernels.adl import adl_queue, deleverage
from liqwatch.kernels.cascade import RoundResult, Shard, cascade_rounds
from liqwatch.kernels.keys import partitions_of
from liqwatch.risk.stress import LocalStressRuns
from liqwatch.sinks.metrics import Metrics

log = logging.getLogger(__name__)


def warm_kernels(cfg: Config) -> float:
    """Run every kernel the worker uses once (tick reader, market, index and marks, health, severity, liquidation
    map, positions' prices and ADL keys, cascade, auto-deleveraging, exposure, key partitions); returns the
    seconds it took."""
    t0 = time.monotonic()
    eng = Engine(cfg)
    ts = 1_000_000
    for venue, symbol in eng.layout.books:
        tick = {"type": "tick", "venue": venue, "symbol": symbol, "ts": ts, "bid": 1.0, "ask": 1.0}
        try:
            eng.apply_many([decode(msgspec.json.encode(tick))])
        except BadEvent:  # a book whose sanity bounds exclude 1.0: another book compiles the same kernels
            continue
    if eng.layout.books:  # the feed's reader of tick records (liqwatch.core.columns)
        venue, symbol = eng.layout.books[0]
        scan([msgspec.json.encode({"type": "tick", "venue": venue, "symbol": symbol, "ts": ts, "bid": 1.5,
                                   "ask": 1.50000000000000011})], eng.market.slot)
    eng.health(with_severity=True)
    for asset in cfg.liqmap_assets()[:1]:
        eng.liquidation_map(asset, cfg.liqmap.levels())
    pv = eng.prices()
    view = eng.accounts.view()
    eng.position_rows()  # the replay report's positions nearest liquidation
    eng.position_numbers_of(np.zeros(0, dtype=np.int64), pv, view)  # the health events' positions
    n_instr = pv.mark.shape[0]
    key = np.empty(view.pos_qty.shape[0])
    adl_queue(pv.index, pv.mark, view, eng.layout.risk_params, np.zeros(view.active.shape[0], dtype=np.int32),
              np.zeros(0), 0, np.zeros((2, n_instr), dtype=np.bool_), key)  # auto-deleveraging's two steps
    deleverage(pv.mark, view, key, np.full((2, n_instr), np.nan), np.zeros((2, n_instr)), 0.0, np.zeros(0),
               np.zeros((2, n_instr)), np.zeros(2))
    stress = LocalStressRuns(eng, cfg, Metrics(), cfg.config_id)
    asyncio.run(stress.run_one(pv, cfg.stress.primary_scenario, max(cfg.stress.severities), with_exposure=True))
    _drive_cascade(eng, cfg, pv)
    partitions_of(["warm"], 1)  # the accounts' partitions, after a rebalance
    return time.monotonic() - t0


# The feed holds a batch of up to 20,000 librdkafka messages while it works on it; with CPython's default
# thresholds (700, 10, 10) the batch is promoted generation by generation and a full collection of the heap ran
# every ~0.5 s of ingest, ~160 ms each (bench pipeline, gc.callbacks): a fifth of the feed's time and the latency
# tail's maximum. A young generation larger than a batch lets a batch die young; the heap built at start-up
# (modules, Faust, the config) is frozen out of every collection.
GC_THRESHOLDS = (50_000, 20, 10)


def settle_heap() -> None:
    """Collect once, freeze what start-up built, and raise the young generation above a feed batch."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def _drive_cascade(eng: Engine, cfg: Config, pv) -> None:
    """The tiny market liquidates nobody, so its cascade stops after round 1: drive the rounds of the distributed
    cascade with a pretend liquidation each round, so that the impact and the later rounds' kernels compile too."""
    lay = eng.layout
    n_assets = len(lay.assets)
    rounds = cascade_rounds(float(pv.t), 0.1, lay.scenario_direction(cfg.stress.primary_scenario), pv.quotes,
                            lay.index_params, lay.mark_params, pv.index, lay.impact_params,
                            lay.venue_id[cfg.liquidation.venue], 2)
    shard = Shard(eng.accounts.view(), lay.risk_params)
    req = next(rounds)
    with contextlib.suppress(StopIteration):
        while True:
            shard.run(req, n_assets)
            req = rounds.send(RoundResult(1, 1.0, np.zeros(n_assets)))
