"""The Grafana dashboards of liqwatch, built from code (grafanalib). Edit this file, never the JSON:

    python -m liqwatch.tools.dashboards          # rewrites liqwatch/data/dashboards/grafana/overview.json and operations.json

tests/tools/test_dashboards.py checks that the committed JSON equals a fresh build and that every query only uses
metrics that liqwatch/sinks/metrics.py exports. Queries aggregate over workers: prices, cascades and alerts are the same
on every worker (max), account numbers are per shard (sum).
"""

from __future__ import annotations

import json
from pathlib import Path

from grafanalib._gen import DashboardEncoder
from grafanalib.core import (Dashboard, GridPos, Heatmap, Repeat, RowPanel, StateTimeline, Table, Target,
                             Template, Templating, Time, TimeSeries)

OUT_DIR = Path(__file__).resolve().parents[1] / "data" / "dashboards" / "grafana"
DATASOURCE = {"type": "prometheus", "uid": "prometheus"}  # provisioned in grafana/provisioning/datasources
FIRING = [{"type": "value", "options": {"0": {"text": "ok", "color": "green"},
                                        "1": {"text": "firing", "color": "red"}}}]
UP = [{"type": "value", "options": {"0": {"text": "down", "color": "red"}, "1": {"text": "up", "color": "green"}}}]


def target(expr: str, legend: str = "", ref: str = "A", **kw) -> Target:
    return Target(expr=expr, legendFormat=legend, refId=ref, datasource=DATASOURCE, **kw)


def series(title: str, description: str, *targets: Target, unit: str = "short", width: int = 12,
           stack: bool = False, **kw) -> TimeSeries:
    return TimeSeries(title=title, description=description, dataSource=DATASOURCE, targets=list(targets),
                      unit=unit, gridPos=GridPos(h=8, w=width, x=0, y=0), maxDataPoints=500,
                      stacking={"mode": "normal", "group": "A"} if stack else {}, fillOpacity=30 if stack else 0,
                      legendDisplayMode="table" if len(targets) > 1 else "list", **kw)


def timeline(title: str, description: str, *targets: Target, mappings: list, width: int = 12) -> StateTimeline:
    return StateTimeline(title=title, description=description, dataSource=DATASOURCE, targets=list(targets),
                         mappings=mappings, gridPos=GridPos(h=8, w=width, x=0, y=0), maxDataPoints=500)


def layout(rows: list[tuple[str, list]]) -> list:
    """Rows of panels, left to right, wrapping at Grafana's 24 columns."""
    out, y = [], 0
    for title, panels in rows:
        out.append(RowPanel(title=title, gridPos=GridPos(h=1, w=24, x=0, y=y)))
        y += 1
        x = 0
        for p in panels:
            w, h = p.gridPos.w, p.gridPos.h
            if x + w > 24:
                x, y = 0, y + h
            p.gridPos = GridPos(h=h, w=w, x=x, y=y)
            x += w
        y += 8
    return out + [p for _, panels in rows for p in panels]


def variable(name: str, query: str, label: str) -> Template:
    return Template(name=name, label=label, query=query, dataSource=DATASOURCE, type="query", refresh=2,
                    includeAll=True, multi=True, allValue=".*")


def dashboard(uid: str, title: str, description: str, rows: list, variables: list[Template]) -> dict:
    panels = layout(rows)
    # Row panels first in grafana's order (by y), so the JSON reads top to bottom.
    panels.sort(key=lambda p: (p.gridPos.y, p.gridPos.x))
    d = Dashboard(uid=uid, title=title, description=description, tags=["liqwatch"], panels=panels,
                  templating=Templating(variables), time=Time("now-1h", "now"), refresh="10s", timezone="utc",
                  editable=False).auto_panel_ids()
    data = json.loads(json.dumps(d.to_json_data(), cls=DashboardEncoder))
    for var in data["templating"]["list"]:
        # grafanalib writes "All" as the value; Grafana's value for "All" is "$__all".
        var["current"] = {"selected": True, "text": ["All"], "value": ["$__all"]}
    return data


def overview() -> dict:
    a = '{asset=~"$asset"}'
    s = '{scenario=~"$scenario"}'
    prices = series(
        "Prices: $asset", "Index price (what margins are computed on), each venue's mid price, and the redemption "
        "value (reference rate × price of what the asset redeems into). On 10 Oct 2025 Binance's USDe index followed "
        "its own spot book to 0.65 while redemption held at 1.00: an index far below redemption liquidates accounts "
        "at a price nobody could redeem at.",
        target(f"max by (asset) (liqwatch_index_price_usd{a})", "index"),
        target(f"max by (venue, symbol, asset) (liqwatch_venue_price_usd{a})", "{{venue}} {{symbol}}", "B"),
        target(f"max by (asset) (liqwatch_reference_value_usd{a})", "redemption value", "C"),
        unit="currencyUSD", width=24, repeat=Repeat("h", "asset", 3))
    return dashboard("liqwatch-overview", "liqwatch: overview",
                     "Prices and indices, margin health, stress cascades and alerts (SPEC §3–§6).", [
        ("Prices: do the indices still measure what the collateral is worth?", [
            prices,
            series("Depeg", "|index ÷ redemption value − 1| per asset with a redemption rate. A few percent means the "
                   "index has left what the asset redeems for; the depeg alert fires past its configured threshold.",
                   target(f"max by (asset) (liqwatch_depeg_ratio{a})", "{{asset}}"), unit="percentunit"),
            series("Venue divergence", "|venue price ÷ median of the other venues − 1|. One venue far from the others "
                   "is usually a thin or dislocated book; if that venue feeds an index, the index moves with it.",
                   target(f"max by (venue, asset) (liqwatch_venue_divergence_ratio{a})", "{{venue}} {{asset}}"),
                   unit="percentunit"),
        ]),
        ("Accounts: who is close to liquidation", [
            series("Accounts by health band", "Accounts by health = equity ÷ maintenance margin, over all workers' "
                   "shards. Below 1 is liquidatable; a crowd moving into below_1.1 is the next wave.",
                   target("sum by (band) (liqwatch_accounts)", "{{band}}"), stack=True),
            series("Liquidatable accounts", "Accounts whose equity is below maintenance margin now, at current index "
                   "and mark prices.", target("sum(liqwatch_liquidatable_accounts)", "accounts"), width=6),
            series("Liquidatable notional", "Position notional plus collateral value of the liquidatable accounts: "
                   "roughly what the liquidation engine has to sell now.",
                   target("sum(liqwatch_liquidatable_notional_usd)", "notional"), unit="currencyUSD", width=6),
            series("Margin cluster notional", "Notional of accounts close to liquidation (health below the "
                   "margin_cluster warning level, not yet liquidatable): what the next small move would liquidate.",
                   target("sum(liqwatch_margin_cluster_notional_usd)", "notional"), unit="currencyUSD"),
            series("Collateral share", "Share of all collateral value held in each asset. A large share in an asset "
                   "whose index comes from the venue's own book is the Oct-2025 structure: liquidating it moves the "
                   "price of the collateral itself.",
                   target("max by (asset) (liqwatch_collateral_share_ratio)", "{{asset}}"), unit="percentunit"),
        ]),
        ("Liquidation map: where the forced selling sits", [
            Heatmap(title="Liquidation map: $underlying", description="Per price level of the underlying (move from "
                    "the current prices, the y axis) the notional of the accounts that would be liquidated if its "
                    "prices moved there and not at the level next nearer to the current price: where forced sells "
                    "(below, longs) and buys (above, shorts) are waiting. From the real accounts in cross margin, "
                    "round 1 of the shock without impact (liqwatch liqmap prints the same map).",
                    dataSource=DATASOURCE, gridPos=GridPos(h=10, w=24, x=0, y=0), dataFormat="tsbuckets",
                    targets=[target('sum by (move) (liqwatch_liquidation_map_usd{underlying=~"$underlying"})',
                                    "{{move}}", format="heatmap")],
                    hideZeroBuckets=True, repeat=Repeat("h", "underlying", 1), maxDataPoints=200),
        ]),
        ("Stress cascades: what a shock would do now", [
            series("Cascade amplification", "Simulated liquidation cascade per stress scenario and shock severity: "
                   "total ÷ round-1 liquidated notional. 1 = no feedback; 2 = the venue's own forced selling, through "
                   "its own books and indices, doubled what the shock alone liquidates.",
                   target(f"max by (scenario, severity) (liqwatch_cascade_amplification_ratio{s})",
                          "{{scenario}} @ {{severity}}")),
            series("Cascade liquidated notional", "Total notional the simulated cascade liquidates (all rounds), per "
                   "scenario and shock severity.",
                   target(f"max by (scenario, severity) (liqwatch_cascade_liquidated_notional_usd{s})",
                          "{{scenario}} @ {{severity}}"), unit="currencyUSD"),
            timeline("Runaway cascades", "Firing when the simulated cascade was still liquidating accounts after the "
                     "maximum number of rounds: at that severity the feedback loop does not settle.",
                     target(f"max by (scenario, severity) (liqwatch_cascade_runaway{s})",
                            "{{scenario}} @ {{severity}}"), mappings=FIRING),
            series("Insurance fund and auto-deleveraging", "Smallest tested shock of the scenario whose cascade "
                   "exhausts the venue's insurance fund (liquidation.insurance_fund), and per instrument the one at "
                   "which auto-deleveraging starts on it: what is left of the bankrupt accounts' deficit falls on "
                   "the traders on the other side (1 = none up to the largest shock tested). The insurance_fund and "
                   "adl_risk alerts fire when these fall.",
                   target(f"min by (scenario) (liqwatch_insurance_fund_exhausted_move_ratio{s})", "fund: {{scenario}}"),
                   target("min by (instrument) (liqwatch_adl_move_ratio)", "ADL: {{instrument}}", "B"),
                   unit="percentunit"),
            series("Critical severity", "Smallest shock at which the scenario's cascade runs away or amplifies past "
                   "its limit (1 = none up to the largest shock tested). Falling means the market is getting fragile.",
                   target(f"min by (scenario) (liqwatch_critical_severity_ratio{s})", "{{scenario}}"),
                   unit="percentunit"),
        ]),
        ("Alerts", [
            Table(title="Firing alerts", description="Alerts the monitor fires now (kind, subject, severity). They "
                  "also reach Alertmanager (rule LiqwatchAlert), the liqwatch.alerts topic and the webhooks.",
                  dataSource=DATASOURCE, gridPos=GridPos(h=8, w=12, x=0, y=0),
                  targets=[target("max by (kind, subject, severity) (liqwatch_alert_active == 1)", format="table",
                                  instant=True)],
                  transformations=[{"id": "organize", "options": {"excludeByName": {"Time": True, "Value": True}}}]),
            timeline("Alert timeline", "When each alert was firing over the time range.",
                     target("max by (kind, subject, severity) (liqwatch_alert_active)",
                            "{{severity}} {{kind}} {{subject}}"), mappings=FIRING),
            series("Alerts emitted", "Alert events emitted per interval, by kind and state (firing = a new episode "
                   "started, resolved = it ended).",
                   target("sum by (kind, state) (increase(liqwatch_alerts_total[$__rate_interval]))",
                          "{{kind}} {{state}}"), drawStyle="bars", width=24),
        ]),
    ], [variable("asset", "label_values(liqwatch_index_price_usd, asset)", "Asset"),
        variable("scenario", "label_values(liqwatch_cascade_amplification_ratio, scenario)", "Scenario"),
        variable("underlying", "label_values(liqwatch_liquidation_map_usd, underlying)", "Underlying")])


def operations() -> dict:
    w = '{worker=~"$worker"}'
    rate = "[$__rate_interval]"
    buckets = f"sum by (kernel, le) (rate(liqwatch_kernel_seconds_bucket{w}{rate}))"
    return dashboard("liqwatch-operations", "liqwatch: operations",
                     "Is the monitor running, keeping up and delivering its alerts?", [
        ("Throughput and lag", [
            series("Events processed", "Input events applied per second by topic (ticks, references, accounts), "
                   "summed over the selected workers.",
                   target(f"sum by (topic) (rate(liqwatch_events_processed_total{w}{rate}))", "{{topic}}"),
                   unit="ops"),
            series("Consumer lag", "Messages each worker still has to read, per topic. Growing lag means the worker "
                   "can't keep up: every price, health number and alert it reports is that far behind.",
                   target(f"max by (worker, topic) (liqwatch_consumer_lag_messages{w})", "{{worker}} {{topic}}")),
            series("Events emitted", "Output events produced per second by topic (health, marks, cascades, alerts, "
                   "dead letters).",
                   target(f"sum by (topic) (rate(liqwatch_events_emitted_total{w}{rate}))", "{{topic}}"),
                   unit="ops"),
            series("Dead letters", "Input records rejected per second, by reason (invalid JSON, bad number, unknown "
                   "asset, out of order…). They are on the liqwatch.deadletter topic with their original bytes; the "
                   "state they would have changed is missing from the monitor.",
                   target(f"sum by (reason) (rate(liqwatch_deadletter_total{w}{rate}))", "{{reason}}"),
                   unit="ops"),
        ]),
        ("Alert delivery", [
            series("Webhook deliveries", "Webhook delivery attempts per second by endpoint and outcome: delivered, "
                   "retry (tried again with backoff), failed (given up after every retry).",
                   target(f"sum by (endpoint, outcome) (rate(liqwatch_webhook_deliveries_total{w}{rate}))",
                          "{{endpoint}} {{outcome}}"), unit="ops"),
            series("Webhook queue", "Alert events waiting for delivery, per endpoint. Near 0 normally; a growing "
                   "queue means the receiver is slow or down and alerts arrive late.",
                   target(f"max by (worker, endpoint) (liqwatch_webhook_queue{w})", "{{worker}} {{endpoint}}")),
        ]),
        ("Latency and health", [
            series("Kernel time", "Time of one numba kernel call (margin health of the shard, liquidation severity, "
                   "a cascade), p50 and p99 per kernel. Slower kernels delay health updates and alerts.",
                   target(f"histogram_quantile(0.5, {buckets})", "p50 {{kernel}}"),
                   target(f"histogram_quantile(0.99, {buckets})", "p99 {{kernel}}", "B"), unit="s"),
            series("Event time behind wall clock", "Wall clock minus the event time of the last market event a worker "
                   "processed. Seconds in live operation; when replaying a past day (the Oct-2025 scenario) it is the "
                   "age of the replayed data.",
                   target(f"time() - max by (worker) (liqwatch_event_time_seconds{w})", "{{worker}}"), unit="s"),
            timeline("Workers up", "Whether Prometheus can scrape each worker's /metrics (the LiqwatchWorkerDown alert "
                     "fires after 30 s down).", target('up{job="liqwatch", worker=~"$worker"}', "{{worker}}"),
                     mappings=UP, width=24),
        ]),
    ], [variable("worker", 'label_values(up{job="liqwatch"}, worker)', "Worker")])


def build() -> dict[str, dict]:
    """File name → dashboard JSON."""
    return {"overview.json": overview(), "operations.json": operations()}


def main() -> None:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    for name, data in build().items():
        (OUT_DIR / name).write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
        print(f"wrote {OUT_DIR / name}")


if __name__ == "__main__":
    main()
