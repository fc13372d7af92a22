"""Every Prometheus metric of liqwatch, in one place (prefix `liqwatch_`, base units, help a risk engineer reads).

    m = Metrics()                        # its own registry: tests and several workers in one process stay apart
    m.index.labels(asset="USDe").set(0.65)
    m.exposition()                       # bytes for GET /metrics
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

HEALTH_BANDS = (("liquidatable", None, 1.0), ("below_1.1", 1.0, 1.1), ("1.1_to_1.5", 1.1, 1.5),
                ("1.5_to_3", 1.5, 3.0), ("above_3", 3.0, None))
CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        r = self.registry = registry or CollectorRegistry()
        # prices
        self.index = Gauge("liqwatch_index_price_usd", "Index price of an asset, in settlement units (SPEC §3).",
                           ["asset"], registry=r)
        self.index_stale = Gauge("liqwatch_index_stale", "1 when no source survived and the index kept its last "
                                 "value.", ["asset"], registry=r)
        self.reference_value = Gauge("liqwatch_reference_value_usd", "Redemption value of an asset: reference rate "
                                     "× price of what it redeems into.", ["asset"], registry=r)
        self.venue_price = Gauge("liqwatch_venue_price_usd", "Mid price of a venue book in settlement units.",
                                 ["venue", "symbol", "asset"], registry=r)
        self.mark = Gauge("liqwatch_mark_price_usd", "Mark price of an instrument.", ["instrument"], registry=r)
        self.sources_dropped = Gauge("liqwatch_index_sources_dropped", "Index constituents dropped at the last "
                                     "evaluation, by reason (stale, deviation, missing).", ["asset", "reason"],
                                     registry=r)
        # accounts (this worker's shard)
        self.accounts = Gauge("liqwatch_accounts", "Accounts of this worker's shard by health band.", ["band"],
                              registry=r)
        self.liquidatable_accounts = Gauge("liqwatch_liquidatable_accounts", "Accounts with equity below "
                                           "maintenance now.", registry=r)
        self.liquidatable_notional = Gauge("liqwatch_liquidatable_notional_usd", "Position notional plus collateral "
                                           "value of liquidatable accounts.", registry=r)
        self.equity_total = Gauge("liqwatch_equity_usd", "Sum of account equity in this shard.", registry=r)
        self.fund_exhausted_move = Gauge("liqwatch_insurance_fund_exhausted_move_ratio", "Smallest tested move of "
                                         "the scenario whose cascade exhausts the insurance fund (1: none).",
                                         ["scenario"], registry=r)
        self.adl_move = Gauge("liqwatch_adl_move_ratio", "Smallest tested move of the primary scenario at which "
                              "auto-deleveraging starts on the instrument (1: none).", ["instrument"], registry=r)
        self.liquidation_map = Gauge("liqwatch_liquidation_map_usd", "Liquidation map cell: notional (positions and "
                                     "collateral) of this shard's accounts that would be liquidated if the "
                                     "underlying's prices moved by `move`, and not at the level next nearer to the "
                                     "current price (move 0: liquidatable now). Round 1 of that shock, no impact.",
                                     ["underlying", "move"], registry=r)
        # cascades
        self.cascade_notional = Gauge("liqwatch_cascade_liquidated_notional_usd", "Stress cascade: total "
                                      "liquidated notional.", ["scenario", "severity"], registry=r)
        self.cascade_amplification = Gauge("liqwatch_cascade_amplification_ratio", "Stress cascade: total / round-1 "
                                           "liquidated notional.", ["scenario", "severity"], registry=r)
        self.cascade_rounds = Gauge("liqwatch_cascade_rounds", "Stress cascade: rounds that liquidated someone.",
                                    ["scenario", "severity"], registry=r)
        self.cascade_runaway = Gauge("liqwatch_cascade_runaway", "1 when the cascade still liquidated after "
                                     "max_rounds.", ["scenario", "severity"], registry=r)
        # alerts (SPEC §6): the signals each alert type watches, and the alerts themselves
        self.alert_active = Gauge("liqwatch_alert_active", "1 while an alert episode is firing (one series per alert "
                                  "kind, subject and severity); Prometheus rules route these to Alertmanager.",
                                  ["kind", "subject", "severity"], registry=r)
        self.alerts_emitted = Counter("liqwatch_alerts_total", "Alert events emitted, by kind and state.",
                                      ["kind", "state"], registry=r)
        self.depeg = Gauge("liqwatch_depeg_ratio", "|index / reference value − 1| of an asset with a redemption rate.",
                           ["asset"], registry=r)
        self.venue_divergence = Gauge("liqwatch_venue_divergence_ratio", "|venue price / median of the other venues "
                                      "− 1| for an asset quoted on several venues.", ["venue", "asset"], registry=r)
        self.source_age = Gauge("liqwatch_source_age_seconds", "Event time since an index constituent last quoted.",
                                ["source"], registry=r)
        self.margin_cluster_notional = Gauge("liqwatch_margin_cluster_notional_usd", "Notional of accounts whose "
                                             "health is below the margin_cluster warning level (not yet "
                                             "liquidatable).", registry=r)
        self.critical_severity = Gauge("liqwatch_critical_severity_ratio", "Smallest shock severity at which the "
                                       "scenario's cascade runs away or amplifies past the limit (1 = none found).",
                                       ["scenario"], registry=r)
        self.collateral_share = Gauge("liqwatch_collateral_share_ratio", "Share of all collateral value held in one "
                                      "asset.", ["asset"], registry=r)
        self.webhook_deliveries = Counter("liqwatch_webhook_deliveries_total", "Webhook delivery attempts by "
                                          "endpoint and outcome (delivered, retry, failed).",
                                          ["endpoint", "outcome"], registry=r)
        self.webhook_queue = Gauge("liqwatch_webhook_queue", "Alert events waiting for webhook delivery.",
                                   ["endpoint"], registry=r)
        # pipeline
        self.events = Counter("liqwatch_events_processed_total", "Input events applied, by topic.", ["topic"],
                              registry=r)
        self.superseded = Counter("liqwatch_events_superseded_total", "Events older than the last of their key "
                                  "(within tolerance): not applied.", ["topic"], registry=r)
        self.late = Counter("liqwatch_market_late_total", "Market records that arrived after the evaluation boundary "
                            "their event time belongs before had been evaluated without them (applied late).",
                            ["topic"], registry=r)
        self.deadletter = Counter("liqwatch_deadletter_total", "Records sent to the dead-letter topic, by reason "
                                  "class.", ["reason"], registry=r)
        self.ignored = Counter("liqwatch_ignored_total", "Input records ignored by rule (ticks of books the config "
                               "does not name, with ingest.unknown_sources: ignore), by reason.", ["reason"],
                               registry=r)
        self.service_restarts = Counter("liqwatch_service_restarts_total", "Restarts of a worker's background "
                                        "service (market feed, cascade shard, …) after a failure.", ["service"],
                                        registry=r)
        self.service_up = Gauge("liqwatch_service_up", "1 while a worker's background service runs.", ["service"],
                                registry=r)
        self.lag = Gauge("liqwatch_consumer_lag_messages", "Messages behind the end of the topic, by topic.",
                         ["topic"], registry=r)
        self.event_time = Gauge("liqwatch_event_time_seconds", "Event time of the last market event processed.",
                                registry=r)
        self.kernel_seconds = Histogram("liqwatch_kernel_seconds", "Time of one kernel call over a batch.",
                                        ["kernel"], buckets=(1e-4, 5e-4, 1e-3, 5e-3, 0.01, 0.05, 0.1, 0.5, 1, 5),
                                        registry=r)
        self.loop_stall_seconds = Histogram(
            "liqwatch_loop_stall_seconds", "Event-loop stalls longer than half a second (the feed waits behind them).",
            buckets=(0.5, 1, 2, 5, 10, 30), registry=r)
        self.feed_held_seconds = Counter(
            "liqwatch_feed_held_seconds", "Time the market feed waited for queued account work (health, severities, "
            "cascades) to catch up.", registry=r)
        self.account_work_lag = Gauge(
            "liqwatch_account_work_lag_seconds", "Event time between the market feed and the boundary whose account "
            "work (shard health, severities, cascades) runs now; 0 when none is queued.", registry=r)
        self.emitted = Counter("liqwatch_events_emitted_total", "Output events produced, by topic.", ["topic"],
                               registry=r)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
