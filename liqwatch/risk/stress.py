"""Stress cascades on one market snapshot, the way the alerts read them: every configured scenario × severity,
the critical severity of the primary scenario (bisected), and the account-level exposure. `StressRuns` holds
that logic once; how a single cascade runs is the subclass's: `LocalStressRuns` on the engine's own accounts (replay,
tests), `liqwatch.worker.cascades.Coordinator` over Kafka shards (the live leader). A replay therefore computes
its cascade alerts with the very code the live leader uses."""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from liqwatch.core.engine import adl_rule, cascade_dict
from liqwatch.kernels.cascade import run_cascade
from liqwatch.kernels.health import exposure_summary

log = logging.getLogger(__name__)


@dataclass
class Exposure:
    """Account-level aggregates over all shards at one event time."""

    liquidatable_usd: float
    cluster_usd: float
    collateral_by_asset: dict[str, float]
    total_usd: float = 0.0  # all active accounts' notional (positions and collateral)


@dataclass
class Solvency:
    """The smallest tested move of the primary scenario whose cascade exhausts the insurance fund, and per
    instrument the one at which auto-deleveraging starts on it (1.0: none among the moves tested)."""

    scenario: str
    fund_exhausted: float
    adl_starts: dict[str, float]
    tested: list[float]


def solvency(scenario: str, results: list[dict], instruments: list[str]) -> Solvency | None:
    """From cascade results of one scenario at several severities (None without an insurance fund)."""
    runs = sorted((r for r in results if r["scenario"] == scenario and r.get("insurance_fund") is not None),
                  key=lambda r: r["severity"])
    if not runs:
        return None
    fund = next((r["severity"] for r in runs if r["insurance_fund"]["uncovered_usd"] > 0), 1.0)
    adl = {}
    for name in instruments:
        adl[name] = next((r["severity"] for r in runs
                          if r["insurance_fund"]["adl_notional_by_instrument_usd"].get(name, 0.0) > 0), 1.0)
    return Solvency(scenario, fund, adl, [r["severity"] for r in runs])


@dataclass
class CriticalMove:
    """The smallest shock of a scenario whose cascade is critical (CascadeRiskAlert), and that cascade."""

    severity: float        # 1.0: no critical move up to the end of the alert's grid
    cascade: dict | None   # the cascade result at `severity` (None with no critical move)
    total_usd: float       # all active accounts' notional at the snapshot, the base of the share



async def _together(coros: list) -> list:
    """Run coroutines concurrently; if one fails the others are cancelled (no orphan rounds on the topics)."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


class StressRuns(ABC):
    """Every configured scenario × severity on one market snapshot, the critical severity of the primary scenario
    and the account-level exposure, the way the alerts read them. Subclasses say how one cascade runs: over
    Kafka shards (Coordinator, live) or on local accounts (LocalStressRuns, replay) — so a replay computes its
    alerts with the very code the live leader uses."""

    def __init__(self, engine, cfg, metrics, config_id: str, emit=None):
        self.engine = engine
        self.cfg = cfg
        self.metrics = metrics
        self.config_id = config_id
        self.emit = emit  # async (result dict) -> None, or None
        self.exposures: list[dict] = []
        self.last_results: dict[tuple[str, float], dict] = {}
        self.total_usd = 0.0
        self._floor_warned: set[str] = set()
        self.solvency: Solvency | None = None  # of the last run_all

    @abstractmethod
    async def run_one(self, pv, scenario: str, severity: float, with_exposure: bool = False) -> dict:
        """One cascade of `scenario` at `severity` on the snapshot `pv` (with the exposure when asked)."""

    def _is_critical(self, r: dict) -> bool:
        """Runs away, amplifies past the limit, or liquidates a large share of all notional — on at least
        min_notional_usd. The share keeps the signal on through a crash: once most of what a shock liquidates is
        liquidatable already, amplification falls towards 1 while a small move still clears out the book."""
        cr = self.cfg.alerts.cascade_risk
        big = self.total_usd > 0 and r["liquidated_notional"] >= cr.share_limit * self.total_usd
        return (r["runaway"] or r["amplification"] > cr.amplification_limit or big) and \
            r["liquidated_notional"] >= cr.min_notional_usd

    async def run_all(self, pv) -> tuple[list[dict], dict[str, CriticalMove], Exposure | None]:
        """Every scenario × severity of the config on one market snapshot, the critical severity of each
        scenario (bisected between the last calm and the first critical configured severity), and the
        account-level exposure the shards reported; emits cascade events and metrics."""
        self.exposures = []
        critical: dict[str, CriticalMove] = {}
        stress = self.cfg.stress
        m = self.metrics

        async def timed(scenario: str, severity: float, with_exposure: bool) -> dict:
            t0 = time.perf_counter()
            result = await self.run_one(pv, scenario, severity, with_exposure=with_exposure)
            m.kernel_seconds.labels(kernel="cascade").observe(time.perf_counter() - t0)
            return result

        # independent runs go together: over Kafka their round trips overlap (a shard answers each in turn)
        runs = [(scenario, severity) for scenario in stress.scenarios for severity in stress.severities]
        out = await _together([timed(sc, sv, k == 0) for k, (sc, sv) in enumerate(runs)])
        for result in out:
            result["config_id"] = self.config_id
            labels = {"scenario": result["scenario"], "severity": str(result["severity"])}
            m.cascade_notional.labels(**labels).set(result["liquidated_notional"])
            m.cascade_amplification.labels(**labels).set(result["amplification"])
            m.cascade_rounds.labels(**labels).set(result["rounds"])
            m.cascade_runaway.labels(**labels).set(float(result["runaway"]))
            self.last_results[(result["scenario"], result["severity"])] = result
            for asset in result.get("impact_floor", ()):
                if asset not in self._floor_warned:  # once per asset and process, not at every boundary
                    self._floor_warned.add(asset)
                    log.warning("the impact model of %s takes its price to the floor (1%% of it in one round) in the "
                                "%s cascade at severity %g: its depth is probably not calibrated (liqwatch "
                                "calibrate derives it from recorded volume and volatility)", asset,
                                result["scenario"], result["severity"])
            if self.emit is not None:
                await self.emit(result)
        exposure = None
        if self.exposures:
            lay = self.engine.layout
            by_asset = np.nansum([np.asarray(e["collateral"], dtype=np.float64) for e in self.exposures], axis=0)
            exposure = Exposure(sum(e["liquidatable"] for e in self.exposures),
                                sum(e["cluster"] for e in self.exposures),
                                {lay.assets[a]: float(v) for a, v in enumerate(by_asset) if v > 0},
                                sum(e.get("total", 0.0) for e in self.exposures))
            self.total_usd = exposure.total_usd
        # the critical severity of the primary scenario: first critical point of the alert's grid, then bisection
        primary = stress.primary_scenario
        grid = list(self.cfg.alerts.cascade_risk.grid)
        scan = await _together([self.run_one(pv, primary, s) for s in grid])
        calm, bad = 0.0, None
        for s, r in zip(grid, scan):
            if self._is_critical(r):
                bad = (s, r)
                break
            calm = s
        if bad is None:
            critical[primary] = CriticalMove(1.0, None, self.total_usd)
        else:
            critical[primary] = CriticalMove(*await self._bisect(pv, primary, calm, *bad), self.total_usd)
        self.solvency = solvency(primary, list(out) + list(scan), list(self.engine.layout.instruments))
        return out, critical, exposure

    async def _bisect(self, pv, scenario: str, calm: float, bad: float, at_bad: dict,
                      steps: int = 3) -> tuple[float, dict]:
        """Narrow [calm, bad] to the smallest critical severity (3 steps: 1/8 of the configured gap); returns it
        with its cascade."""
        lo, hi, at_hi = calm, bad, at_bad
        for _ in range(steps):
            mid = 0.5 * (lo + hi)
            r = await self.run_one(pv, scenario, mid)
            if self._is_critical(r):
                hi, at_hi = mid, r
            else:
                lo = mid
        return hi, at_hi


class LocalStressRuns(StressRuns):
    """Cascades on the engine's own accounts (one process: replay, tests): `run_cascade` with one shard."""

    async def run_one(self, pv, scenario: str, severity: float, with_exposure: bool = False) -> dict:
        eng = self.engine
        lay = eng.layout
        accounts = eng.accounts.view()
        if with_exposure:
            by_asset = np.zeros(len(lay.assets))
            n = accounts.active.shape[0]
            liq, cluster, total = exposure_summary(pv.index, pv.mark, accounts, lay.risk_params,
                                                   float(self.cfg.alerts.margin_cluster.health_below), by_asset,
                                                   np.empty(n), np.empty(n))
            self.exposures = [{"liquidatable": liq, "cluster": cluster, "total": total,
                               "collateral": by_asset.tolist()}]
        res = run_cascade(float(pv.t), float(severity), lay.scenario_direction(scenario), pv.quotes, lay.index_params,
                          lay.mark_params, pv.index, [accounts], lay.risk_params, lay.impact_params,
                          lay.venue_id[self.cfg.liquidation.venue], self.cfg.stress.max_rounds,
                          fee_rate=self.cfg.liquidation.fee_rate, insurance_fund=self.cfg.liquidation.insurance_fund,
                          partial=self.cfg.liquidation.partial_step(), adl_rule=adl_rule(self.cfg))
        return cascade_dict(eng, pv.t, scenario, severity, res)
