"""Alert engine (SPEC §6): signals in, alert episodes out, evaluated on event time.

    engine = AlertEngine(cfg.alerts, cfg.config_id, metrics)
    events = engine.market(monitor.engine, t)            # depeg, venue_divergence, stale_source
    events += engine.accounts(exposure, t)                # liquidations, margin_cluster, collateral_concentration
    events += engine.cascades(results, critical, t)       # cascade_risk

One episode of one condition (kind, subject) has one `id` (`kind:subject:start`): it fires at warning or
critical, may escalate or de-escalate (another `firing` event with the same id and the new severity), and resolves
when the value falls below warning × `clear_ratio`. Every event carries the value, the threshold it crossed, a
one-line summary a risk engineer can act on, and the config id.

Example: USDe index 0.65 against a redemption value of 1.00 → value 0.35 ≥ critical 0.05 →
{"type":"alert","id":"depeg:USDe:1760130000000","kind":"depeg","severity":"critical","state":"firing",...}.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from liqwatch.kernels.arrays import MISSING
from liqwatch.config import AlertsSpec, Levels
from liqwatch.core.engine import Engine
from liqwatch.risk.stress import Exposure
from liqwatch.sinks.metrics import Metrics

SEVERITIES = ("warning", "critical")
# signals only the leader computes (from its stress runs over every shard); the market ones every worker can
STRESS_KINDS = frozenset({"liquidations", "margin_cluster", "collateral_concentration", "cascade_risk"})


@dataclass
class Episode:
    id: str
    severity: str
    since: int


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


class AlertEngine:
    def __init__(self, spec: AlertsSpec, config_id: str, metrics: Metrics):
        self.spec = spec
        self.config_id = config_id
        self.metrics = metrics
        self.open: dict[tuple[str, str], Episode] = {}
        self.publishing = True

    # -- the alerts topic is the episodes' changelog ---------------------------------------------------------
    @staticmethod
    def open_on_topic(events: list[dict], config_id: str) -> dict[tuple[str, str], Episode]:
        """The episodes a sequence of alert events (the alerts topic, in order) leaves open, for one config."""
        open_: dict[tuple[str, str], Episode] = {}
        for ev in events:
            if ev.get("type") != "alert" or ev.get("config_id") != config_id:
                continue
            key = (ev["kind"], ev["subject"])
            if ev["state"] == "resolved":
                open_.pop(key, None)
            else:
                open_[key] = Episode(ev["id"], ev["severity"], int(ev.get("since", ev["ts"])))
        return open_

    def restore(self, episodes: dict[tuple[str, str], Episode], kinds: set[str]) -> None:
        """Take the open episodes of `kinds` from the changelog (a new leader: those signals were the old
        leader's alone); the others stay as this engine computed them."""
        for key in [k for k in self.open if k[0] in kinds]:
            del self.open[key]
        for key, ep in episodes.items():
            if key[0] in kinds:
                self.open[key] = Episode(ep.id, ep.severity, ep.since)

    def publish_open(self) -> None:
        """Set the alert gauges to the open episodes (a worker that becomes leader starts publishing)."""
        for (kind, subject), ep in self.open.items():
            for sev in SEVERITIES:
                self.metrics.alert_active.labels(kind=kind, subject=subject, severity=sev).set(
                    1.0 if sev == ep.severity else 0.0)

    # -- the episode state machine ---------------------------------------------------------------------------
    def observe(self, kind: str, subject: str, value: float, levels: Levels, t: int, summary: str,
                lower_is_worse: bool = False) -> list[dict]:
        """One reading of one signal; returns the alert events it causes (usually none)."""
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return []
        # compare in "higher is worse" terms; hysteresis: clear below warning × clear_ratio (or above warning /
        # clear_ratio when lower is worse), step down from critical only past the same margin
        x, warn, crit = (1.0 / max(value, 1e-12), 1.0 / levels.warning, 1.0 / levels.critical) if lower_is_worse \
            else (value, levels.warning, levels.critical)
        severity = "critical" if x >= crit else "warning" if x >= warn else None
        key = (kind, subject)
        ep = self.open.get(key)
        if ep is not None and ep.severity == "critical" and severity == "warning" and x >= crit * self.spec.clear_ratio:
            severity = "critical"
        out = []
        if ep is None:
            if severity is None:
                return []
            ep = self.open[key] = Episode(f"{kind}:{subject}:{t}", severity, t)
            out.append(self._event(ep, kind, subject, "firing", value, levels, t, summary, lower_is_worse))
        elif severity is not None and severity != ep.severity:
            ep.severity = severity
            out.append(self._event(ep, kind, subject, "firing", value, levels, t, summary, lower_is_worse))
        elif severity is None and x < warn * self.spec.clear_ratio:
            del self.open[key]
            out.append(self._event(ep, kind, subject, "resolved", value, levels, t, summary, lower_is_worse))
        return out

    def _event(self, ep: Episode, kind: str, subject: str, state: str, value: float, levels: Levels, t: int,
               summary: str, lower_is_worse: bool = False) -> dict:
        threshold = levels.critical if ep.severity == "critical" else levels.warning
        if state == "resolved":
            threshold = levels.warning / self.spec.clear_ratio if lower_is_worse else levels.warning * self.spec.clear_ratio
        if self.publishing:  # a follower's engine shadows the leader's: its alerts are not (yet) anyone's
            for sev in SEVERITIES:
                self.metrics.alert_active.labels(kind=kind, subject=subject, severity=sev).set(
                    1.0 if state == "firing" and sev == ep.severity else 0.0)
            self.metrics.alerts_emitted.labels(kind=kind, state=state).inc()
        return {"type": "alert", "id": ep.id, "kind": kind, "severity": ep.severity, "subject": subject,
                "state": state, "ts": t, "since": ep.since, "value": float(value), "threshold": float(threshold),
                "summary": summary if state == "firing" else f"resolved: {summary}", "config_id": self.config_id}

    # -- signals ---------------------------------------------------------------------------------------------
    def market(self, engine: Engine, t: int) -> list[dict]:
        """depeg, venue_divergence and stale_source from the (global) market state."""
        m = engine.market
        lay = engine.layout
        out: list[dict] = []
        for a, asset in enumerate(lay.assets):
            if m.ref_in[a] < 0 or math.isnan(m.ref_rate[a]) or math.isnan(m.index[a]):
                continue
            reference = m.redemption_value(a)
            gap = abs(m.index[a] / reference - 1.0)
            self.metrics.depeg.labels(asset=asset).set(gap)
            direction = "below" if m.index[a] < reference else "above"
            out += self.observe("depeg", asset, gap, self.spec.depeg, t,
                                f"{asset} index {m.index[a]:.4g} is {_pct(gap)} {direction} its redemption value "
                                f"{reference:.4g}")
        # venue divergence: each spot book against the median of the other venues' books of the same asset
        prices: dict[int, list[tuple[str, float]]] = {}
        for k, (venue, symbol) in enumerate(m.books):
            if "/" not in symbol or math.isnan(m.mid[k]) or t - m.ts[k] > self.spec.stale_source.warning * 1000:
                continue
            price = m.venue_price(k)
            if not math.isnan(price):
                prices.setdefault(int(m.base[k]), []).append((f"{venue}:{symbol}", price))
        for a, books in prices.items():
            if len(books) < 2:
                continue
            for name, price in books:
                others = [p for n, p in books if n != name]
                med = float(np.median(others))
                gap = abs(price / med - 1.0)
                self.metrics.venue_divergence.labels(venue=name.split(":")[0], asset=lay.assets[a]).set(gap)
                out += self.observe("venue_divergence", name, gap, self.spec.venue_divergence, t,
                                    f"{name} at {price:.4g} is {_pct(gap)} off the other venues' median {med:.4g}")
        # stale sources: index constituents that quoted before but not lately
        for c, (asset, source) in enumerate(lay.constituents):
            kind = lay.index_params.cons_kind[c]
            ref = lay.index_params.cons_ref[c]
            seen = (m.ts[ref] if kind == 0 else m.ref_ts[ref])
            if not math.isfinite(seen) or m.source_status[c] == MISSING:
                continue
            age_s = (t - seen) / 1000.0
            self.metrics.source_age.labels(source=source).set(age_s)
            out += self.observe("stale_source", source, age_s, self.spec.stale_source, t,
                                f"{source} (in the {asset} index) has not quoted for {age_s:.0f} s")
        return out

    def accounts(self, x: Exposure, t: int) -> list[dict]:
        out = self.observe("liquidations", "all", x.liquidatable_usd, self.spec.liquidations, t,
                           f"${x.liquidatable_usd / 1e6:,.1f}M of positions and collateral is liquidatable now")
        self.metrics.margin_cluster_notional.set(x.cluster_usd)
        mc = self.spec.margin_cluster
        out += self.observe("margin_cluster", "all", x.cluster_usd, mc.notional_usd, t,
                            f"${x.cluster_usd / 1e6:,.1f}M sits in accounts with health below {mc.health_below}")
        total = sum(x.collateral_by_asset.values())
        for asset, value in x.collateral_by_asset.items():
            if total <= 0:
                break
            share = value / total
            self.metrics.collateral_share.labels(asset=asset).set(share)
            out += self.observe("collateral_concentration", asset, share, self.spec.collateral_concentration, t,
                                f"{_pct(share)} of all collateral value (${value / 1e6:,.0f}M) is {asset}")
        return out

    def cascades(self, results: list[dict], critical_severity: dict[str, float], t: int) -> list[dict]:
        """cascade_risk: the critical severity of each scenario it was computed for (lower is worse)."""
        cr = self.spec.cascade_risk
        out: list[dict] = []
        for scenario, s in critical_severity.items():
            self.metrics.critical_severity.labels(scenario=scenario).set(s)
            at = [r for r in results if r["scenario"] == scenario]
            worst = max(at, key=lambda r: r["liquidated_notional"], default=None)
            tail = "" if worst is None else (f"; at severity {worst['severity']}: ${worst['liquidated_notional'] / 1e9:,.1f}B "
                                             f"liquidated, amplification {worst['amplification']:.1f}")
            what = "no configured move" if s >= 1 else f"a {_pct(s)} {scenario} move"
            out += self.observe("cascade_risk", scenario, s, cr.critical_severity, t,
                                f"{what} would feed itself (critical severity {s:.3f}){tail}", lower_is_worse=True)
        return out
