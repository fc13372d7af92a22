"""The report's data: `summary.json`, every figure the plots and the page show, as plain JSON-safe values.

    summary = build_summary(window, runs, limits)     # deterministic: same window → same bytes of dumps(summary)

The first run is the config under review ("as it was"); every further run is a `--compare` config, set side by
side and against the first: liquidated notional avoided, and alerts that would have fired earlier, later or not
at all. No matplotlib and no HTML here.
"""

from __future__ import annotations

import json
import math

from liqwatch.sinks.metrics import HEALTH_BANDS
from liqwatch.replay.replayer import Run, Window, iso

FORMAT = 1
WAVE_KIND = "liquidations"   # the first forced-liquidation wave: the first critical `liquidations` alert
WARNING_KIND = "cascade_risk"


def _clean(x):
    """JSON-safe and stable: NaN/inf → null, floats as they are (repr is exact and deterministic)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def _first(alerts: list[dict], kind: str | None = None, severity: str | None = None) -> dict | None:
    for a in alerts:
        if a["state"] == "firing" and (kind is None or a["kind"] == kind) and \
                (severity is None or a["severity"] == severity):
            return a
    return None


def _episodes(alerts: list[dict]) -> list[dict]:
    """One row per alert episode: subject, worst severity, when it fired, escalated and resolved."""
    eps: dict[str, dict] = {}
    for a in alerts:
        ep = eps.setdefault(a["id"], {"id": a["id"], "kind": a["kind"], "subject": a["subject"], "fired": a["ts"],
                                      "severity": a["severity"], "critical_at": None, "resolved": None,
                                      "peak_value": a["value"], "summary": a["summary"]})
        if a["state"] == "firing":
            if a["severity"] == "critical":
                ep["severity"] = "critical"
                if ep["critical_at"] is None:
                    ep["critical_at"] = a["ts"]
                ep["summary"] = a["summary"]
            worse = min if a["kind"] == "cascade_risk" else max  # critical severity: lower is worse
            ep["peak_value"] = worse(ep["peak_value"], a["value"])
        else:
            ep["resolved"] = a["ts"]
    return sorted(eps.values(), key=lambda e: (e["fired"], e["id"]))


def _series(run: Run) -> dict:
    s = run.samples
    assets = sorted({a for x in s for a in x["index"]})
    refs = sorted({a for x in s for a in x["reference"]})
    venues = sorted({v for x in s for v in x["venues"]})
    return {
        "t": [x["t"] for x in s],
        "index": {a: [x["index"].get(a) for x in s] for a in assets},
        "reference": {a: [x["reference"].get(a) for x in s] for a in refs},
        "venues": {v: [x["venues"].get(v) for x in s] for v in venues},
        "bands": {b: [x["bands"][b] for x in s] for b, _, _ in HEALTH_BANDS},
        "accounts": [x["accounts"] for x in s],
        "liquidatable_accounts": [x["liquidatable_accounts"] for x in s],
        "liquidatable_usd": [x["liquidatable_usd"] for x in s],
        "liquidated_usd": [x["liquidated_usd"] for x in s],
    }


def _cascade_series(run: Run) -> dict:
    cs = run.cascade_samples
    primary = run.config.stress.primary_scenario
    sev = sorted({c["severity"] for x in cs for c in x["cascades"] if c["scenario"] == primary})
    def at(x, s, f):
        return next((c[f] for c in x["cascades"] if c["scenario"] == primary and c["severity"] == s), None)
    return {
        "scenario": primary,
        "t": [x["t"] for x in cs],
        "critical_severity": [x["critical_severity"] for x in cs],
        "amplification": {str(s): [at(x, s, "amplification") for x in cs] for s in sev},
        "liquidated_usd": {str(s): [at(x, s, "liquidated_usd") for x in cs] for s in sev},
        "runaway": {str(s): [at(x, s, "runaway") for x in cs] for s in sev},
    }


def _config_summary(run: Run, limits: list[dict]) -> dict:
    alerts = run.alerts
    wave = _first(alerts, WAVE_KIND, "critical")
    warn = _first(alerts, WARNING_KIND, "critical")
    lead = None
    if wave is not None and warn is not None and warn["ts"] <= wave["ts"]:
        lead = (wave["ts"] - warn["ts"]) / 1000.0
    s = run.samples
    peak = max(s, key=lambda x: x["liquidatable_usd"], default=None)
    cs = run.cascade_samples
    crit = min((x for x in cs if x["critical_severity"] is not None), key=lambda x: x["critical_severity"],
               default=None)
    amp = max(((c["amplification"], x["t"], c["severity"]) for x in cs for c in x["cascades"]
               if c["scenario"] == run.config.stress.primary_scenario), default=None)
    primary = [c for x in cs for c in x["cascades"] if c["scenario"] == run.config.stress.primary_scenario]
    drawdown = max((c.get("fund_drawdown_usd") or 0.0 for c in primary), default=None)
    adl = max((c.get("adl_notional_usd") or 0.0 for c in primary), default=None)
    kinds = sorted({a["kind"] for a in alerts})
    dead_by: dict[str, int] = {}
    for d in run.dead_letters:
        dead_by[d["kind"]] = dead_by.get(d["kind"], 0) + 1
    return {
        "name": run.name,
        "config_id": run.config.config_id,
        "liquidation_venue": run.config.liquidation.venue,
        "cascade_risk_levels": {"warning": run.config.alerts.cascade_risk.critical_severity.warning,
                                "critical": run.config.alerts.cascade_risk.critical_severity.critical,
                                "grid": list(run.config.alerts.cascade_risk.grid),
                                "amplification_limit": run.config.alerts.cascade_risk.amplification_limit,
                                "min_notional_usd": run.config.alerts.cascade_risk.min_notional_usd},
        "totals": {
            "liquidated_usd": run.liquidated_usd,
            "liquidated_accounts": run.liquidated_accounts,
            "peak_liquidatable_usd": None if peak is None else peak["liquidatable_usd"],
            "peak_liquidatable_at": None if peak is None else peak["t"],
            "lowest_critical_severity": None if crit is None else crit["critical_severity"],
            "lowest_critical_severity_at": None if crit is None else crit["t"],
            "max_amplification": None if amp is None else amp[0],
            "max_amplification_at": None if amp is None else amp[1],
            "max_amplification_severity": None if amp is None else amp[2],
            # the worst stress cascade of the window for the venue's insurance fund (config liquidation.insurance_fund)
            "insurance_fund_usd": run.config.liquidation.insurance_fund,
            "max_fund_drawdown_usd": drawdown if run.config.liquidation.insurance_fund is not None else None,
            "max_adl_notional_usd": adl if run.config.liquidation.insurance_fund is not None else None,
            "alert_events": len(alerts),
            "episodes": len({a["id"] for a in alerts}),
            "critical_episodes": len({a["id"] for a in alerts if a["severity"] == "critical"}),
            "dead_letters": len(run.dead_letters),
        },
        # the liquidation map (config liqmap) at the window's first cascade evaluation with every price known
        "liqmap": None if run.liqmap is None else {
            "t": run.liqmap["t"],
            "assets": {a: {f: [r[f] for r in rows] for f in ("move", "price", "long_usd", "short_usd",
                                                               "collateral_usd", "added_usd")}
                       for a, rows in run.liqmap["assets"].items()}},
        # at the same time: the positions nearest their liquidation price (liqwatch health --positions)
        "nearest_liquidation": run.nearest,
        "first_wave": None if wave is None else wave["ts"],
        "first_critical_cascade_risk": None if warn is None else warn["ts"],
        "lead_time_s": lead,
        "first_alert": {k: _first(alerts, k)["ts"] for k in kinds},
        "first_critical": {k: a["ts"] for k in kinds if (a := _first(alerts, k, "critical")) is not None},
        "episodes": _episodes(alerts),
        "alerts": alerts,
        "dropped_sources": run.dropped_sources,
        "dead_letters_by_kind": dead_by,
        "limits": limits,
        "series": _series(run),
        "cascade_series": _cascade_series(run),
    }


def _compare(base: dict, other: dict) -> dict:
    """What `other` would have changed against `base`."""
    def firsts(c: dict) -> dict[tuple[str, str, str], int]:
        out: dict = {}
        for a in c["alerts"]:
            if a["state"] == "firing":
                for sev in ("warning", "critical"):
                    if sev == "warning" or a["severity"] == "critical":
                        out.setdefault((a["kind"], a["subject"], sev), a["ts"])
        return out
    fb, fo = firsts(base), firsts(other)
    rows = []
    for key in sorted(set(fb) | set(fo)):
        b, o = fb.get(key), fo.get(key)
        if b is not None and o is None:
            change = "not at all"
        elif b is None:
            change = "only with this config"
        elif o < b:
            change = "earlier"
        elif o > b:
            change = "later"
        else:
            change = "same time"
        rows.append({"kind": key[0], "subject": key[1], "severity": key[2], "base": b, "other": o,
                     "change": change, "shift_s": None if b is None or o is None else (o - b) / 1000.0})
    tb, to = base["totals"], other["totals"]
    return {
        "config": other["name"], "against": base["name"],
        "liquidated_usd_avoided": tb["liquidated_usd"] - to["liquidated_usd"],
        "liquidated_accounts_avoided": tb["liquidated_accounts"] - to["liquidated_accounts"],
        "peak_liquidatable_usd_change": (None if tb["peak_liquidatable_usd"] is None or to["peak_liquidatable_usd"]
                                         is None else to["peak_liquidatable_usd"] - tb["peak_liquidatable_usd"]),
        "alerts": rows,
    }


def build_summary(window: Window, runs: list[Run], limits: list[list[dict]]) -> dict:
    configs = [_config_summary(r, lim) for r, lim in zip(runs, limits)]
    source = {k: v for k, v in window.source.items()}
    summary = {
        "format": FORMAT,
        "window": {"from": window.t_from, "to": window.t_to, "from_iso": iso(window.t_from),
                   "to_iso": iso(window.t_to), "warmup_ms": window.warmup_ms, "ends_input": window.complete,
                   "evaluate_every_ms": runs[0].every_ms.get("evaluate") if runs else None,
                   "cascade_every_ms": runs[0].every_ms.get("cascade") if runs else None},
        "input": {**source, "market_events": len(window.market),
                  "market_events_in_window": sum(1 for r in window.market if r.timestamp >= window.t_from),
                  "account_snapshots": len(window.accounts), "left_out_before": window.skipped_before,
                  "left_out_after": window.skipped_after, "unreadable_lines": len(window.unreadable)},
        "configs": configs,
        "comparisons": [_compare(configs[0], c) for c in configs[1:]],
    }
    return _clean(summary)


def dumps(summary: dict) -> str:
    return json.dumps(summary, sort_keys=True, indent=1, ensure_ascii=False, allow_nan=False) + "\n"
