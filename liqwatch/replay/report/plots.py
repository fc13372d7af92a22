"""The report's PNG plots, drawn from the summary alone (matplotlib, Agg backend): prices per asset, accounts by
health band, liquidatable notional, stress cascades, the alert timeline and liquidity-aware limits."""

from __future__ import annotations

import math
from datetime import datetime, timezone
from pathlib import Path

from liqwatch.sinks.metrics import HEALTH_BANDS

COLORS = ["#1f4e9c", "#e0771b", "#2a9d55", "#a3307e", "#6b6b6b"]
VENUE_COLORS = ["#8c564b", "#17becf", "#bcbd22", "#7f7f7f", "#e377c2"]
BAND_COLORS = {"liquidatable": "#b2182b", "below_1.1": "#ef8a62", "1.1_to_1.5": "#fddbc7", "1.5_to_3": "#d1e5f0",
               "above_3": "#67a9cf"}
ASSET_ORDER = ["USDe", "WBETH", "BNSOL", "BTC", "ETH", "SOL"]  # the depegged collateral first, then the majors


def write_plots(out: Path, summary: dict) -> dict[str, str]:
    """Every plot into `out`; returns plot key → file name (`prices-<asset>`, then health ... limits), in page order."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display: the replay runs headless
    plots: dict[str, str] = {}
    assets = list(summary["configs"][0]["series"]["index"])
    assets.sort(key=lambda a: (ASSET_ORDER.index(a) if a in ASSET_ORDER else len(ASSET_ORDER), a))
    for a in assets:
        name = f"prices-{a}.png"
        if plot_prices(summary, a, out / name):
            plots[f"prices-{a}"] = name
    for key, fn in (("health", plot_health), ("liquidatable", plot_liquidatable), ("cascades", plot_cascades),
                    ("alerts", plot_alerts), ("limits", plot_limits)):
        name = f"{key}.png"
        fn(summary, out / name)
        plots[key] = name
    if plot_liqmap(summary, out / "liqmap.png"):
        plots["liqmap"] = "liqmap.png"
    return plots


def plot_liqmap(summary: dict, path: Path) -> bool:
    """Per underlying, the notional that falls at each level of its move (the map's cells), one bar per config:
    below the price longs sold, above it shorts bought. False when no config has a map."""
    import matplotlib.pyplot as plt

    maps = [(c["name"], c["liqmap"]) for c in summary["configs"] if c.get("liqmap")]
    if not maps:
        return False
    assets = list(maps[0][1]["assets"])
    fig, axes = plt.subplots(1, len(assets), figsize=(4.2 * len(assets), 4.6), squeeze=False)
    width = 0.8 / len(maps)
    for ax, a in zip(axes[0], assets):
        for k, (name, m) in enumerate(maps):
            cells = m["assets"].get(a)
            if cells is None:
                continue
            moves = cells["move"]
            step = min((abs(y - x) for x, y in zip(moves, moves[1:])), default=0.01) or 0.01
            ys = [100 * (x + (k - (len(maps) - 1) / 2) * width * step) for x in moves]
            ax.barh(ys, [(v or 0.0) / 1e6 for v in cells["added_usd"]], height=100 * width * step,
                    color=COLORS[k % len(COLORS)], label=name)
        ax.axhline(0, color="black", lw=0.8)
        ax.set_title(f"{a} at {_times([maps[0][1]['t']])[0]:%H:%M} UTC", fontsize=10)
        ax.set_xlabel("USD millions falling at the level")
        ax.set_ylabel("move of its prices, %")
    axes[0][0].legend(fontsize=7)
    fig.suptitle("liquidation map: who is liquidated at which move (round 1, no impact; below 0: longs sold, "
                 "above: shorts bought)", fontsize=10)
    _save(fig, path, rect=(0, 0, 1, 0.94))
    return True


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
