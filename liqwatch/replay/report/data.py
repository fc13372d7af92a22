"""The post-mortem report of `liqwatch replay`: `summary.json` (every figure shown), PNG plots and `index.html`.

    summary = build_summary(window, runs, limits)     # plain data, deterministic: same window → same bytes
    write_report(out_dir, summary, command)          # summary.json, *.png, index.html

The first run is the config under review ("as it was"); every further run is a `--compare` config, set side by
side and against the first: liquidated notional avoided, and alerts that would have fired earlier, later or not
at all.
"""

from __future__ import annotations

import html
import json
import math
from datetime import datetime, timezone
from pathlib import Path

from liqwatch.sinks.metrics import HEALTH_BANDS
from liqwatch.replay.replayer import Run, Window, iso

FORMAT = 1
WAVE_KIND = "liquidations"   # the first forced-liquidation wave: the first critical `liquidations` alert
WARNING_KIND = "cascade_risk"
COLORS = ["#1f4e9c", "#e0771b", "#2a9d55", "#a3307e", "#6b6b6b"]
VENUE_COLORS = ["#8c564b", "#17becf", "#bcbd22", "#7f7f7f", "#e377c2"]
BAND_COLORS = {"liquidatable": "#b2182b", "below_1.1": "#ef8a62", "1.1_to_1.5": "#fddbc7", "1.5_to_3": "#d1e5f0",
               "above_3": "#67a9cf"}


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
            "alert_events": len(alerts),
            "episodes": len({a["id"] for a in alerts}),
            "critical_episodes": len({a["id"] for a in alerts if a["severity"] == "critical"}),
            "dead_letters": len(run.dead_letters),
        },
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


# -- plots --------------------------------------------------------------------------------------------------------
def _times(ts: list[int]):
    return [datetime.fromtimestamp(t / 1000, timezone.utc) for t in ts]


def _axes_time(ax) -> None:
    import matplotlib.dates as mdates

    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M", tz=timezone.utc))
    ax.grid(True, alpha=0.3)


def _nan(v):
    return [math.nan if x is None else x for x in v]


def _mark_events(ax, c: dict) -> None:
    if c["first_critical_cascade_risk"] is not None:
        ax.axvline(_times([c["first_critical_cascade_risk"]])[0], color="#a3307e", ls=":", lw=1.2,
                   label="first critical cascade_risk")
    if c["first_wave"] is not None:
        ax.axvline(_times([c["first_wave"]])[0], color="#b2182b", ls="--", lw=1.2, label="first liquidation wave")


def plot_prices(summary: dict, asset: str, path: Path) -> bool:
    import matplotlib.pyplot as plt

    base = summary["configs"][0]
    s = base["series"]
    if asset not in s["index"]:
        return False
    fig, ax = plt.subplots(figsize=(10, 4.2))
    t = _times(s["t"])
    venues = [v for v in s["venues"] if _venue_asset(v) == asset]
    for k, c in enumerate(summary["configs"]):
        cs = c["series"]
        ax.plot(_times(cs["t"]), _nan(cs["index"].get(asset, [])), color=COLORS[k % len(COLORS)], lw=2.4 if k == 0
                else 1.9, ls="-" if k == 0 else (0, (5, 2)), label=f"index — {c['name']}", zorder=2)
    for k, v in enumerate(venues):  # on top, thin: a venue the index follows shows as a line inside it
        ax.plot(t, _nan(s["venues"][v]), lw=0.9, color=VENUE_COLORS[k % len(VENUE_COLORS)], label=f"venue {v}",
                zorder=3)
    if asset in s["reference"]:
        ax.plot(t, _nan(s["reference"][asset]), color="black", ls="--", lw=1.3, label="redemption value", zorder=4)
    # where the first config left a source out: a band along the bottom per episode
    for ep in base["dropped_sources"]:
        if ep["asset"] != asset or ep["reason"] == "missing":
            continue
        end = ep["until"] if ep["until"] is not None else s["t"][-1]
        ax.axvspan(*_times([ep["from"], end]), color="#999999", alpha=0.15, lw=0)
    _mark_events(ax, base)
    ax.set_title(f"{asset}: index vs venue prices vs redemption value (shaded: a source left out of "
                 f"'{base['name']}')", fontsize=10)
    ax.set_ylabel("USD")
    _axes_time(ax)
    ax.legend(fontsize=7, loc="best", ncol=2)
    _save(fig, path)
    return True


def _save(fig, path: Path, rect=None) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout(rect=rect)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _venue_asset(v: str) -> str:
    return v.split(":", 1)[1].split("/")[0]


def plot_health(summary: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    n = len(summary["configs"])
    fig, axes = plt.subplots(1, n, figsize=(6.5 * n, 4.2), sharey=True, squeeze=False)
    for ax, c in zip(axes[0], summary["configs"]):
        s = c["series"]
        bands = [b for b, _, _ in HEALTH_BANDS]
        ax.stackplot(_times(s["t"]), *[s["bands"][b] for b in bands], labels=bands,
                     colors=[BAND_COLORS[b] for b in bands])
        _mark_events(ax, c)
        ax.set_title(f"accounts by health band — {c['name']}", fontsize=10)
        ax.set_ylabel("accounts")
        _axes_time(ax)
    axes[0][0].legend(fontsize=7, loc="lower left")
    _save(fig, path)


def plot_liquidatable(summary: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4.2))
    for k, c in enumerate(summary["configs"]):
        s = c["series"]
        t = _times(s["t"])
        col = COLORS[k % len(COLORS)]
        ax.plot(t, [x / 1e9 for x in s["liquidatable_usd"]], color=col, lw=1.8, label=f"liquidatable now — {c['name']}")
        ax.plot(t, [x / 1e9 for x in s["liquidated_usd"]], color=col, lw=1.2, ls="--",
                label=f"liquidated so far — {c['name']}")
    _mark_events(ax, summary["configs"][0])
    ax.set_ylabel("USD billions")
    ax.set_title("liquidatable notional (positions + collateral) and forced liquidations on the recorded prices",
                 fontsize=10)
    _axes_time(ax)
    ax.legend(fontsize=7)
    _save(fig, path)


def plot_cascades(summary: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    n = len(summary["configs"])
    fig, axes = plt.subplots(2, n, figsize=(6.5 * n, 6.5), sharex=True, squeeze=False)
    for k, c in enumerate(summary["configs"]):
        cs = c["cascade_series"]
        t = _times(cs["t"])
        ax = axes[0][k]
        for j, (sev, amp) in enumerate(cs["amplification"].items()):
            ax.plot(t, _nan(amp), lw=1.3, color=f"C{j}", label=f"{cs['scenario']} {float(sev):.0%}")
        ax.axhline(c["cascade_risk_levels"]["amplification_limit"], color="gray", ls=":", lw=1)
        ax.set_title(f"stress cascade amplification — {c['name']}", fontsize=10)
        ax.set_ylabel("total / round-1 liquidations")
        _axes_time(ax)
        ax.legend(fontsize=7, ncol=2)
        ax2 = axes[1][k]
        grid = c["cascade_risk_levels"]
        top = max(grid["grid"] + [0.05]) * 1.15
        # 1.0 = no move within the alert's grid feeds itself: drawn at the top of the axis
        ax2.plot(t, [math.nan if x is None else min(x, top) for x in cs["critical_severity"]],
                 color=COLORS[k % len(COLORS)], lw=1.8, drawstyle="steps-post", label="critical severity")
        ax2.axhline(grid["warning"], color="#f4a742", ls=":", lw=1.2, label=f"warning below {grid['warning']:g}")
        ax2.axhline(grid["critical"], color="#c0262d", ls=":", lw=1.2, label=f"critical below {grid['critical']:g}")
        ax2.set_ylim(0, top * 1.02)
        ax2.set_title(f"critical severity — {c['name']} (smallest {cs['scenario']} move that feeds itself; "
                      f"top: none within {max(grid['grid']):g})", fontsize=9)
        ax2.set_ylabel("severity")
        _mark_events(ax2, c)
        _axes_time(ax2)
        ax2.legend(fontsize=7)
    _save(fig, path)


def plot_alerts(summary: dict, path: Path) -> None:
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    rows = sorted({(e["kind"], e["subject"]) for c in summary["configs"] for e in c["episodes"]})
    n = len(summary["configs"])
    fig, axes = plt.subplots(n, 1, figsize=(11, 0.9 + 0.3 * max(len(rows), 1) * n), sharex=True, squeeze=False)
    end = max([summary["window"]["to"]] + [c["series"]["t"][-1] for c in summary["configs"] if c["series"]["t"]])
    start = min([c["series"]["t"][0] for c in summary["configs"] if c["series"]["t"]] + [summary["window"]["from"]])
    for ax, c in zip(axes[:, 0], summary["configs"]):
        for e in c["episodes"]:
            y = rows.index((e["kind"], e["subject"]))
            stop = e["resolved"] if e["resolved"] is not None else end
            crit = e["critical_at"]
            t0, t1 = _times([e["fired"], stop])
            ax.barh(y, mdates.date2num(t1) - mdates.date2num(t0), left=mdates.date2num(t0), height=0.6,
                    color="#f4a742")
            if crit is not None:
                c0 = _times([crit])[0]
                ax.barh(y, mdates.date2num(t1) - mdates.date2num(c0), left=mdates.date2num(c0), height=0.6,
                        color="#c0262d")
        ax.set_yticks(range(len(rows)))
        ax.set_yticklabels([f"{k}: {s}" for k, s in rows], fontsize=7)
        ax.set_ylim(-0.7, len(rows) - 0.3)
        ax.invert_yaxis()
        ax.set_xlim(*_times([start, end]))
        ax.set_title(f"alert episodes — {c['name']} (orange: warning, red: critical)", fontsize=10)
        _axes_time(ax)
    _save(fig, path)


def plot_limits(summary: dict, path: Path) -> None:
    import matplotlib.pyplot as plt
    import numpy as np

    assets = [x["asset"] for x in summary["configs"][0]["limits"]]
    n = len(summary["configs"])
    fig, ax = plt.subplots(figsize=(10, 0.6 + 0.55 * len(assets) * max(n, 1)))
    cap = 1e12
    h = 0.8 / max(n, 1)
    for k, c in enumerate(summary["configs"]):
        lim = {x["asset"]: x for x in c["limits"]}
        ys = np.arange(len(assets)) + k * h
        vals = [lim[a]["limit_usd"] if a in lim and lim[a]["limit_usd"] is not None else cap for a in assets]
        bars = ax.barh(ys, vals, height=h * 0.9, color=COLORS[k % len(COLORS)], label=f"limit — {c['name']}")
        for b, a in zip(bars, assets):
            if a in lim and lim[a]["limit_usd"] is None:
                b.set_hatch("//")
                b.set_alpha(0.4)
    first = {x["asset"]: x for x in summary["configs"][0]["limits"]}
    ys = np.arange(len(assets)) + 0.4 - h / 2
    ax.scatter([first[a]["largest_usd"] or 1 for a in assets], ys, marker="D", color="black", zorder=3,
               label="largest single holding")
    ax.scatter([first[a]["held_usd"] or 1 for a in assets], ys, marker="|", s=300, color="#b2182b", zorder=3,
               label="held by all accounts")
    ax.set_xscale("log")
    ax.set_xlim(1e5, cap * 1.5)
    ax.set_yticks(ys)
    ax.set_yticklabels(assets)
    ax.invert_yaxis()
    ax.set_xlabel("USD (hatched: unbounded — the index does not fall past the haircut within $1T)")
    ax.set_title("liquidity-aware limit: largest collateral position the liquidation venue's depth covers",
                 fontsize=10)
    ax.grid(True, axis="x", alpha=0.3)
    fig.legend(fontsize=8, loc="lower center", ncol=2 + n, frameon=False)
    _save(fig, path, rect=(0, 0.06, 1, 1))


# -- html ---------------------------------------------------------------------------------------------------------
def _usd(x) -> str:
    if x is None:
        return "—"
    if x < 0:
        return "−" + _usd(-x)
    a = abs(x)
    if a >= 1e9:
        return f"${x / 1e9:,.2f}B"
    if a >= 1e6:
        return f"${x / 1e6:,.1f}M"
    return f"${x:,.0f}"


def _hm(ts) -> str:
    return "—" if ts is None else datetime.fromtimestamp(ts / 1000, timezone.utc).strftime("%H:%M:%S")


def _table(head: list[str], rows: list[list], cls: str = "") -> str:
    e = html.escape
    out = [f'<table class="{cls}"><thead><tr>' + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr></thead><tbody>"]
    for r in rows:
        out.append("<tr>" + "".join(f"<td>{e(str(x))}</td>" for x in r) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1150px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}h1{font-size:1.6em;margin-bottom:.2em}h2{margin-top:1.8em;border-bottom:1px
solid #ddd;padding-bottom:.2em}table{border-collapse:collapse;margin:.6em 0;font-size:.9em}th,td{border:1px solid
#ddd;padding:.25em .6em;text-align:right}th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
img{max-width:100%;border:1px solid #eee;margin:.4em 0}.lead{font-size:1.1em;background:#f7f7f2;padding:.8em 1em;
border-left:4px solid #1f4e9c}.note{color:#666;font-size:.9em}code{background:#f3f3f3;padding:0 .25em}"""


def render_html(summary: dict, plots: dict[str, str], command: str) -> str:
    e = html.escape
    w = summary["window"]
    cs = summary["configs"]
    base = cs[0]
    names = [c["name"] for c in cs]
    p = [f"<!doctype html><html><head><meta charset='utf-8'><title>liqwatch post-mortem {e(w['from_iso'])} – "
         f"{e(w['to_iso'])}</title><style>{CSS}</style></head><body>"]
    p.append(f"<h1>Post-mortem: {e(w['from_iso'])} to {e(w['to_iso'])}</h1>")
    src = summary["input"]
    where = f"file {src['path']}" if src.get("kind") == "file" else f"Kafka {src.get('bootstrap')}"
    warm = src["market_events"] - src["market_events_in_window"]
    warmup = (f"plus {warm:,} from the {w['warmup_ms'] / 60000:g} min before it to rebuild prices" if warm else
              "no earlier market records were needed")
    p.append(f"<p class='note'>Replayed by liqwatch from {e(where)}: {src['market_events_in_window']:,} ticks and "
             f"references in the window ({warmup}), {src['account_snapshots']:,} account snapshots (each account's "
             f"latest before the window, and every one inside it). Everything is computed on event time with the "
             f"code of the live workers: every {w['evaluate_every_ms'] / 1000:g} s of event time the prices, health and "
             f"market alerts, every {w['cascade_every_ms'] / 1000:g} s the stress cascades and the alerts that read "
             f"them.</p>")
    # the story in three sentences
    lines = []
    for c in cs:
        t = c["totals"]
        lead = (f"a critical <b>cascade_risk</b> warning at {_hm(c['first_critical_cascade_risk'])}, "
                f"{c['lead_time_s'] / 60:.1f} min before the first liquidation wave at {_hm(c['first_wave'])}"
                if c["lead_time_s"] is not None else
                (f"the first liquidation wave at {_hm(c['first_wave'])} without an earlier critical cascade_risk"
                 if c["first_wave"] is not None else "no liquidation wave (no critical <b>liquidations</b> alert)"))
        lines.append(f"<li><b>{e(c['name'])}</b>: {_usd(t['liquidated_usd'])} force-liquidated across "
                     f"{t['liquidated_accounts']:,} accounts on the recorded prices; {lead}; "
                     f"{t['critical_episodes']} critical alert episodes.</li>")
    p.append("<div class='lead'><ul>" + "".join(lines) + "</ul>")
    for cmp in summary["comparisons"]:
        p.append(f"<p><b>{e(cmp['config'])}</b> instead of <b>{e(cmp['against'])}</b>: "
                 f"{_usd(cmp['liquidated_usd_avoided'])} of forced liquidations avoided "
                 f"({cmp['liquidated_accounts_avoided']:,} accounts).</p>")
    p.append("</div>")
    # key figures side by side
    p.append("<h2>Key figures</h2>")
    rows = [
        ["forced liquidations on the recorded prices"] + [_usd(c["totals"]["liquidated_usd"]) for c in cs],
        ["accounts force-liquidated"] + [f"{c['totals']['liquidated_accounts']:,}" for c in cs],
        ["peak liquidatable notional"] + [f"{_usd(c['totals']['peak_liquidatable_usd'])} at "
                                          f"{_hm(c['totals']['peak_liquidatable_at'])}" for c in cs],
        ["first critical cascade_risk"] + [_hm(c["first_critical_cascade_risk"]) for c in cs],
        ["first liquidation wave (critical liquidations)"] + [_hm(c["first_wave"]) for c in cs],
        ["lead time"] + ["—" if c["lead_time_s"] is None else f"{c['lead_time_s'] / 60:.1f} min" for c in cs],
        ["lowest critical severity"] + [
            "—" if c["totals"]["lowest_critical_severity"] is None or c["totals"]["lowest_critical_severity"] >= 1
            else f"{c['totals']['lowest_critical_severity']:.3f} at {_hm(c['totals']['lowest_critical_severity_at'])}"
            for c in cs],
        ["highest stress amplification"] + [
            "—" if c["totals"]["max_amplification"] is None else
            f"{c['totals']['max_amplification']:.2f} at {_hm(c['totals']['max_amplification_at'])}" for c in cs],
        ["alert episodes (critical)"] + [f"{c['totals']['episodes']} ({c['totals']['critical_episodes']})" for c in cs],
        ["dead letters"] + [str(c["totals"]["dead_letters"]) for c in cs],
        ["config id"] + [c["config_id"] for c in cs],
    ]
    p.append(_table(["", *names], rows))
    p.append("<p class='note'>Forced liquidations on the recorded prices: each account counted once, at the first "
             "10-second evaluation where its equity is below maintenance, at that moment's marks and indices. The "
             "recorded venue prices already carry the selling that happened; a different index changes who is "
             "liquidated, not those prices, so the avoided amount is a first-order estimate. The stress cascades "
             "below simulate the feedback.</p>")
    for cmp in summary["comparisons"]:
        p.append(f"<h2>What {e(cmp['config'])} would have changed</h2>")
        changed = [r for r in cmp["alerts"] if r["change"] != "same time"]
        rows = [[r["kind"], r["subject"], r["severity"], _hm(r["base"]), _hm(r["other"]), r["change"] +
                 ("" if r["shift_s"] in (None, 0) else f" ({r['shift_s'] / 60:+.1f} min)")] for r in changed]
        p.append(_table(["alert", "subject", "first at severity", e(cmp["against"]), e(cmp["config"]), "change"],
                        rows) if rows else "<p>No alert would have fired at another time.</p>")
        same = len(cmp["alerts"]) - len(changed)
        p.append(f"<p class='note'>{same} alert(s) fire at the same time under both. Liquidated notional avoided: "
                 f"{_usd(cmp['liquidated_usd_avoided'])}; peak liquidatable notional changes by "
                 f"{_usd(cmp['peak_liquidatable_usd_change'])}.</p>")
    # plots with how to read them
    p.append("<h2>Prices: index vs venues vs redemption value</h2><p>Each asset's index under every config (bold "
             "line: the config under review, dashed: compared), the venue books it could read (thin), and what one "
             "unit redeems for (black dashed). A collateral index that follows one thin book away from its "
             "redemption value is what fed the cascade. Grey shading: a source left out of the index (stale or too "
             "far from the median).</p>")
    for asset, img in plots.items():
        if asset.startswith("prices-"):
            p.append(f"<img src='{e(img)}' alt='{e(asset)}'>")
    p.append("<h2>Accounts by health band</h2><p>Health = equity / maintenance; below 1 an account is "
             "liquidatable. The red band growing is the cascade.</p>")
    p.append(f"<img src='{e(plots['health'])}' alt='health bands'>")
    p.append("<h2>Liquidatable notional</h2>")
    p.append(f"<img src='{e(plots['liquidatable'])}' alt='liquidatable notional'>")
    p.append("<h2>Stress cascades and critical severity</h2><p>At every cascade evaluation the monitor shocks the "
             "market along its primary scenario and runs the liquidation cascade (SPEC §5). Amplification above 2 "
             "means forced sales liquidate more than the shock itself; the critical severity is the smallest move "
             "at which that happens on at least the configured notional. It falling towards zero is the warning.</p>")
    p.append(f"<img src='{e(plots['cascades'])}' alt='cascades'>")
    p.append("<h2>Alert timeline</h2>")
    p.append(f"<img src='{e(plots['alerts'])}' alt='alert timeline'>")
    for c in cs:
        rows = [[ep["kind"], ep["subject"], _hm(ep["fired"]), _hm(ep["critical_at"]), _hm(ep["resolved"]),
                 ep["summary"]] for ep in c["episodes"]]
        p.append(f"<h3>{e(c['name'])}</h3>")
        p.append(_table(["alert", "subject", "fired", "critical", "resolved", "last summary"], rows, "alerts")
                 if rows else "<p>No alert fired.</p>")
    p.append("<h2>Sources left out of the index</h2>")
    for c in cs:
        rows = [[ep["asset"], ep["source"], ep["reason"], _hm(ep["from"]), _hm(ep["until"])]
                for ep in c["dropped_sources"] if not _startup_gap(ep, c)]
        p.append(f"<h3>{e(c['name'])}</h3>")
        p.append(_table(["asset", "source", "why", "from", "until"], rows) if rows else
                 "<p>Every source was used throughout.</p>")
    p.append("<h2>Liquidity-aware position limits</h2><p>For each collateral asset: the largest position whose "
             "forced sale on the liquidation venue ("
             f"{e(str(base.get('liquidation_venue', 'the configured venue')))}) moves the index by no more than the "
             "haircut charged on it, read with the venue depth of the config's impact model at the first evaluation "
             "of the window. Holdings above it are not covered by their haircut if they must be sold at once.</p>")
    p.append(f"<img src='{e(plots['limits'])}' alt='limits'>")
    for c in cs:
        rows = [[x["asset"], "unbounded" if x["limit_usd"] is None else _usd(x["limit_usd"]),
                 "—" if x["limit_qty"] is None else f"{x['limit_qty']:,.0f}",
                 f"{100 * x['index_drop_per_1m_usd']:.3f}%", _usd(x["largest_usd"]), str(x["accounts_over_limit"]),
                 _usd(x["held_usd"]), ", ".join(x["sources"])] for x in c["limits"]]
        p.append(f"<h3>{e(c['name'])}</h3>")
        p.append(_table(["asset", "limit", "units", "index move per $1M sold", "largest holding",
                         "accounts over", "held in total", "index sources"], rows))
    p.append(f"<h2>Reproduce</h2><p><code>{e(command)}</code></p><p class='note'>Every figure on this page is in "
             "<a href='summary.json'>summary.json</a>; the replay's alerts in the same format as the live "
             "<code>liqwatch.alerts</code> topic are in <code>alerts-&lt;config&gt;.jsonl</code>.</p>")
    p.append("</body></html>")
    return "\n".join(p)


def _startup_gap(ep: dict, c: dict) -> bool:
    """A source with no quote yet at the very first evaluation (the first record of the window): not news."""
    t = c["series"]["t"]
    return ep["reason"] == "missing" and bool(t) and ep["from"] == t[0] and ep["until"] is not None and \
        len(t) > 1 and ep["until"] <= t[1]


def write_report(out: Path, summary: dict, command: str) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    plots: dict[str, str] = {}
    assets = list(summary["configs"][0]["series"]["index"])
    order = ["USDe", "WBETH", "BNSOL", "BTC", "ETH", "SOL"]
    assets.sort(key=lambda a: (order.index(a) if a in order else len(order), a))
    for a in assets:
        name = f"prices-{a}.png"
        if plot_prices(summary, a, out / name):
            plots[f"prices-{a}"] = name
    for key, fn in (("health", plot_health), ("liquidatable", plot_liquidatable), ("cascades", plot_cascades),
                    ("alerts", plot_alerts), ("limits", plot_limits)):
        name = f"{key}.png"
        fn(summary, out / name)
        plots[key] = name
    for k, v in plots.items():
        files[k] = out / v
    for c in summary["configs"]:
        path = out / f"alerts-{_slug(c['name'])}.jsonl"
        path.write_text("".join(json.dumps(a, sort_keys=True) + "\n" for a in c["alerts"]))
        files[f"alerts-{c['name']}"] = path
    (out / "summary.json").write_text(dumps(summary))
    files["summary"] = out / "summary.json"
    (out / "index.html").write_text(render_html(summary, plots, command))
    files["html"] = out / "index.html"
    return files


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in name)
