"""Alert engine (SPEC §6): signals in, alert episodes out, evaluated on event time.

    engine = AlertEngine(cfg.alerts, cfg.config_id, metrics, cfg.settlement)
    events = engine.market(monitor.engine, t)            # depeg, venue_divergence, stale_source
    events += engine.accounts(exposure, t)                # liquidations, margin_cluster, collateral_concentration
    events += engine.cascades(critical, t, solvency)      # cascade_risk, insurance_fund, adl_risk (StressRuns)

One episode of one condition (kind, subject) has one `id` (`kind:subject:start`): it fires at warning or
critical once the signal has held for the kind's `for_s`, may escalate or de-escalate (another `firing` event with
the same id and the new severity), and resolves when the value has stayed below warning × `clear_ratio` for
`keep_firing_for_s` (event time, so a replay gives the same alerts). Every event carries the value, the threshold
it crossed, a one-line summary a risk engineer can act on, and the config id.

Example: USDe index 0.65 against a redemption value of 1.00 → value 0.35 ≥ critical 0.05 →
{"type":"alert","id":"depeg:USDe:1760130000000","kind":"depeg","severity":"critical","state":"firing",...}.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from liqwatch.kernels.arrays import MISSING, SOURCE_BOOK
from liqwatch.config import AlertsSpec, Levels, Timing
from liqwatch.core.engine import Engine
from liqwatch.risk.stress import CriticalMove, Exposure, Solvency
from liqwatch.sinks.metrics import Metrics

SEVERITIES = ("warning", "critical")
# signals only the leader computes (from its stress runs over every shard); the market ones every worker can
STRESS_KINDS = frozenset({"liquidations", "margin_cluster", "collateral_concentration", "cascade_risk",
                          "insurance_fund", "adl_risk"})


@dataclass
class Episode:
    id: str
    severity: str
    since: int
    clearing: int | None = None  # event time since which the signal is under its clear level
    calming: int | None = None   # event time since which a critical episode's signal is under critical's margin


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


class AlertEngine:
    def __init__(self, spec: AlertsSpec, config_id: str, metrics: Metrics, settlement: str):
        self.spec = spec
        self.settlement = settlement
        self.config_id = config_id
        self.metrics = metrics
        self.open: dict[tuple[str, str], Episode] = {}
        self.pending: dict[tuple[str, str], int] = {}  # over warning since (not yet for `for_s`)
        self.publishing = True
        self._stale_levels: dict[float, Levels] = {}

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

    def state(self, kinds: set[str]) -> dict:
        """The episodes of `kinds` as they are, pending and clearing timers included (the changelog of alerts holds
        only their transitions): what a next leader needs to go on exactly (worker/leader.py)."""
        return {"open": [[k, s, ep.id, ep.severity, ep.since, ep.clearing, ep.calming]
                         for (k, s), ep in self.open.items() if k in kinds],
                "pending": [[k, s, t] for (k, s), t in self.pending.items() if k in kinds]}

    def load(self, state: dict, kinds: set[str]) -> None:
        """The episodes of `kinds` as `state` (from `state`) has them; the others stay as this engine computed them."""
        for key in [k for k in self.open if k[0] in kinds]:
            del self.open[key]
        for key in [k for k in self.pending if k[0] in kinds]:
            del self.pending[key]
        for kind, subject, eid, severity, since, clearing, calming in state.get("open", []):
            if kind in kinds:
                self.open[(kind, subject)] = Episode(eid, severity, int(since), clearing, calming)
        for kind, subject, t in state.get("pending", []):
            if kind in kinds:
                self.pending[(kind, subject)] = int(t)

    def publish_open(self) -> None:
        """Set the alert gauges to the open episodes (a worker that becomes leader starts publishing)."""
        for (kind, subject), ep in self.open.items():
            for sev in SEVERITIES:
                self.metrics.alert_active.labels(kind=kind, subject=subject, severity=sev).set(
                    1.0 if sev == ep.severity else 0.0)

    # -- the episode state machine ---------------------------------------------------------------------------
    def observe(self, kind: str, subject: str, value: float, levels: Levels, t: int, summary: str,
                lower_is_worse: bool = False, timing: Timing | None = None) -> list[dict]:
        """One reading of one signal; returns the alert events it causes (usually none). `timing` (default: the
        levels') says how long the signal must hold before the episode fires and after it clears."""
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return []
        timing = levels if timing is None else timing
        # compare in "higher is worse" terms; hysteresis: clear below warning × clear_ratio (or above warning /
        # clear_ratio when lower is worse), step down from critical only past the same margin
        x, warn, crit = (1.0 / max(value, 1e-12), 1.0 / levels.warning, 1.0 / levels.critical) if lower_is_worse \
            else (value, levels.warning, levels.critical)
        severity = "critical" if x >= crit else "warning" if x >= warn else None
        key = (kind, subject)
        ep = self.open.get(key)
        if ep is not None and ep.severity == "critical" and severity == "warning":
            if x >= crit * self.spec.clear_ratio:
                severity, ep.calming = "critical", None  # inside critical's hysteresis margin
            else:  # steps down only once calm for keep_firing_for (a crash's minute bars swing back and forth)
                ep.calming = t if ep.calming is None else ep.calming
                if t - ep.calming < timing.keep_firing_for_s * 1000.0:
                    severity = "critical"
        elif ep is not None and severity == "critical":
            ep.calming = None
        out = []
        if ep is None:
            if severity is None:
                self.pending.pop(key, None)
                return []
            start = self.pending.setdefault(key, t)
            if t - start < timing.for_s * 1000.0:
                return []  # pending: not yet held for `for_s`
            del self.pending[key]
            # the id is the condition's start (`since`), not the moment its pending time ran out
            ep = self.open[key] = Episode(f"{kind}:{subject}:{start}", severity, start)
            out.append(self._event(ep, kind, subject, "firing", value, levels, t, summary, lower_is_worse))
        elif severity is not None:
            ep.clearing = None  # back over warning within keep_firing_for: the same episode goes on
            if severity != ep.severity:
                ep.severity = severity
                out.append(self._event(ep, kind, subject, "firing", value, levels, t, summary, lower_is_worse))
        elif x < warn * self.spec.clear_ratio:
            if ep.clearing is None:
                ep.clearing = t
            if t - ep.clearing >= timing.keep_firing_for_s * 1000.0:
                del self.open[key]
                out.append(self._event(ep, kind, subject, "resolved", value, levels, t, summary, lower_is_worse))
        else:
            ep.clearing = None  # in the hysteresis band: neither over warning nor clear
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
        out += self._divergence(engine, t)
        # stale sources: index constituents that quoted before but not lately, each against its own limit
        ip = lay.index_params
        for c, (asset, source) in enumerate(lay.constituents):
            ref = ip.cons_ref[c]
            seen = (m.ts[ref] if ip.cons_kind[c] == SOURCE_BOOK else m.ref_ts[ref])
            if not math.isfinite(seen) or m.source_status[c] == MISSING:
                continue
            age_s = (t - seen) / 1000.0
            self.metrics.source_age.labels(source=source).set(age_s)
            out += self.observe("stale_source", source, age_s, self._stale_levels_for(ip.cons_max_age_ms[c]), t,
                                f"{source} (in the {asset} index) has not quoted for {_duration(age_s)}")
        return out

    def _stale_levels_for(self, max_age_ms: float) -> Levels:
        """A source is stale for the alert past the larger of the alert's level and its own freshness limit (a
        reference published hourly is not stale after 30 s); critical at twice that."""
        lv = self._stale_levels.get(max_age_ms)
        if lv is None:
            base, limit_s = self.spec.stale_source, max_age_ms / 1000.0
            if limit_s > base.warning:
                lv = base.model_copy(update={"warning": limit_s, "critical": max(base.critical, 2.0 * limit_s)})
            else:
                lv = base
            self._stale_levels[max_age_ms] = lv
        return lv

    def _divergence(self, engine: Engine, t: int) -> list[dict]:
        """venue_divergence: each spot book against two voices, the median of the asset's other books and its
        redemption value where it has one; the gap is to the nearer voice. A book near the redemption value is
        never blamed, so with two books (Binance at 0.90, a pool at 0.9998, redemption 1.00) only the outlier is;
        books that fall together stay near each other (that is a depeg, not a divergence)."""
        m = engine.market
        lay = engine.layout
        spec = self.spec.venue_divergence
        prices: dict[int, list[tuple[str, float]]] = {}
        for k, (venue, symbol) in enumerate(m.books):
            if "/" not in symbol or math.isnan(m.mid[k]) or t - m.ts[k] > self.spec.stale_source.warning * 1000:
                continue
            price = m.venue_price(k)
            if not math.isnan(price):
                prices.setdefault(int(m.base[k]), []).append((f"{venue}:{symbol}", price))
        out: list[dict] = []
        for a, books in prices.items():
            reference = m.redemption_value(a) if m.ref_in[a] >= 0 and not math.isnan(m.ref_rate[a]) else math.nan
            has_reference = math.isfinite(reference) and reference > 0
            if len(books) + has_reference < 2:
                continue
            for name, price in books:
                others = [p for n, p in books if n != name]
                voices = ([("the other books' median", float(np.median(others)))] if others else []) + \
                    ([("the redemption value", reference)] if has_reference else [])
                gap, (what, value) = min((abs(price / v - 1.0), (w, v)) for w, v in voices)
                self.metrics.venue_divergence.labels(venue=name.split(":")[0], asset=lay.assets[a]).set(gap)
                out += self.observe("venue_divergence", name, gap, spec, t,
                                    f"{name} at {price:.4g} is {_pct(gap)} off {what} {value:.4g}" +
                                    ("" if len(voices) < 2 else " (and further off the other)"))
        return out

    def accounts(self, x: Exposure, t: int) -> list[dict]:
        out = self.observe("liquidations", "all", x.liquidatable_usd, self.spec.liquidations, t,
                           f"${x.liquidatable_usd / 1e6:,.1f}M of positions and collateral is liquidatable now")
        self.metrics.margin_cluster_notional.set(x.cluster_usd)
        mc = self.spec.margin_cluster
        out += self.observe("margin_cluster", "all", x.cluster_usd, mc.notional_usd, t,
                            f"${x.cluster_usd / 1e6:,.1f}M sits in accounts with health below {mc.health_below}",
                            timing=mc)
        cc = self.spec.collateral_concentration
        cash = {self.settlement, *cc.cash}
        held = {a: v for a, v in x.collateral_by_asset.items() if a not in cash}
        total = sum(held.values())
        for asset, value in held.items():
            if total <= 0:
                break
            share = value / total
            self.metrics.collateral_share.labels(asset=asset).set(share)
            out += self.observe("collateral_concentration", asset, share, cc, t,
                                f"{_pct(share)} of the non-cash collateral value (${value / 1e6:,.0f}M of "
                                f"${total / 1e6:,.0f}M) is {asset}")
        return out

    def cascades(self, critical: dict[str, CriticalMove], t: int, solvency: Solvency | None = None) -> list[dict]:
        """cascade_risk: the critical severity of each scenario it was computed for (lower is worse), with what
        its cascade does: the move, the notional, its share of all accounts' notional, rounds, amplification.
        With an insurance fund (`solvency`): insurance_fund, the move that exhausts it, and adl_risk per
        instrument, the move at which auto-deleveraging starts on it."""
        cr = self.spec.cascade_risk
        out: list[dict] = []
        for scenario, c in critical.items():
            s = c.severity
            self.metrics.critical_severity.labels(scenario=scenario).set(s)
            out += self.observe("cascade_risk", scenario, s, cr.critical_severity, t, _cascade_summary(scenario, c, cr),
                                lower_is_worse=True, timing=cr)
        if solvency is not None:
            most = _pct(max(solvency.tested))
            f = solvency.fund_exhausted
            self.metrics.fund_exhausted_move.labels(scenario=solvency.scenario).set(f)
            out += self.observe("insurance_fund", solvency.scenario, f, self.spec.insurance_fund, t,
                                f"a {_pct(f)} {solvency.scenario} move would exhaust the insurance fund: the rest of the "
                                "bankrupt accounts' deficit goes to auto-deleveraging" if f < 1 else
                                f"no {solvency.scenario} move up to {most} exhausts the insurance fund",
                                lower_is_worse=True)
            for name, a in solvency.adl_starts.items():
                self.metrics.adl_move.labels(instrument=name).set(a)
                out += self.observe("adl_risk", name, a, self.spec.adl_risk, t,
                                    f"a {_pct(a)} {solvency.scenario} move would auto-deleverage {name} positions "
                                    "on the other side of bankrupt accounts" if a < 1 else
                                    f"no {solvency.scenario} move up to {most} auto-deleverages {name}",
                                    lower_is_worse=True)
        return out


def _cascade_summary(scenario: str, c: CriticalMove, cr) -> str:
    r = c.cascade
    if r is None or c.severity >= 1:
        return (f"no {scenario} move up to {_pct(max(cr.grid))} runs away, amplifies past {cr.amplification_limit:g}× "
                f"or liquidates {_pct(cr.share_limit)} of all accounts' notional")
    usd = r["liquidated_notional"]
    share = f" ({_pct(usd / c.total_usd)} of all accounts' notional)" if c.total_usd > 0 else ""
    rounds = f"{r['rounds']} round" + ("s" if r["rounds"] != 1 else "")
    how = "runs away" if r["runaway"] else f"{rounds}, amplification {r['amplification']:.1f}×"
    return f"a {_pct(c.severity)} {scenario} move would liquidate ${usd / 1e6:,.0f}M{share}: {how}"
