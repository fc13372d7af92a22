"""Compile the numba kernels before a worker joins its group.

numba caches compiled kernels on disk, but the first compile (a fresh install, a new cache dir, a changed
kernel) takes seconds, and it would happen on the event loop at the first market run, in the middle of the group's
first rebalance: a worker that blocked its loop that long while its table was recovering has been seen never to
fetch its account partitions again. Here they compile on a tiny market built from the config, before anything
connects."""

from __future__ import annotations

import asyncio
import logging
import time

import msgspec

from liqwatch.config import Config
from liqwatch.core.engine import Engine
from liqwatch.events import BadEvent, decode
from liqwatch.kernels.keys import partitions_of
from liqwatch.risk.stress import LocalStressRuns
from liqwatch.sinks.metrics import Metrics

log = logging.getLogger(__name__)


def warm_kernels(cfg: Config) -> float:
    """Run every kernel the worker uses once (market, index and marks, health, severity, cascade, exposure, key
    partitions); returns the seconds it took."""
    t0 = time.monotonic()
    eng = Engine(cfg)
    ts = 1_000_000
    for venue, symbol in eng.layout.books:
        tick = {"type": "tick", "venue": venue, "symbol": symbol, "ts": ts, "bid": 1.0, "ask": 1.0}
        try:
            eng.apply_many([decode(msgspec.json.encode(tick))])
        except BadEvent:  # a book whose sanity bounds exclude 1.0: another book compiles the same kernels
            continue
    eng.health(with_severity=True)
    pv = eng.prices()
    stress = LocalStressRuns(eng, cfg, Metrics(), cfg.config_id)
    asyncio.run(stress.run_one(pv, cfg.stress.primary_scenario, max(cfg.stress.severities), with_exposure=True))
    partitions_of(["warm"], 1)  # the accounts' partitions, after a rebalance
    return time.monotonic() - t0
