"""The Grafana dashboards and Prometheus rules: built from code, and only asking for metrics the workers export."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from liqwatch.tools import dashboards as build
from liqwatch.sinks.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "liqwatch" / "data" / "dashboards" / "grafana"
RULES = ROOT / "liqwatch" / "data" / "dashboards" / "rules" / "liqwatch.yml"
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created")}


def panels(dashboard: dict) -> list[dict]:
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def dashboard_exprs() -> list[tuple[str, str]]:
    """(where, PromQL) for every target of every panel of the committed dashboards."""
    return [(f"{name}: {p['title']}", t["expr"]) for name, d in committed().items()
            for p in panels(d) for t in p["targets"]]


def rule_exprs() -> list[tuple[str, str]]:
    rules = yaml.safe_load(RULES.read_text())
    return [(f"rule {r['alert']}", r["expr"]) for g in rules["groups"] for r in g["rules"]]


def committed() -> dict[str, dict]:
    return {name: json.loads((GRAFANA / name).read_text()) for name in build.build()}


def exported_names() -> set[str]:
    """Every sample name a Metrics() registry can expose (labelled families expose nothing until used)."""
    names = set()
    for family in Metrics().registry.collect():
        names.add(family.name)
        names.update(family.name + s for s in SUFFIXES.get(family.type, ()))
    return names


def test_committed_json_is_a_fresh_build():
    assert committed() == build.build(), "liqwatch/data/dashboards/grafana/*.json differ from the code: run python -m liqwatch.tools.dashboards"


def test_both_dashboards_exist():
    assert set(committed()) == {"overview.json", "operations.json"}


@pytest.mark.parametrize("name", ["overview.json", "operations.json"])
def test_every_panel_has_a_query_and_a_description(name):
    d = committed()[name]
    assert panels(d)
    for p in panels(d):
        assert p["targets"] and all(t["expr"].strip() for t in p["targets"]), p["title"]
        assert len(p.get("description") or "") >= 30, f"{p['title']}: no description a risk engineer can read"
        assert p["datasource"] == {"type": "prometheus", "uid": "prometheus"}, p["title"]


def variable_queries() -> list[tuple[str, str]]:
    return [(f"{name}: ${v['name']}", v["query"]) for name, d in committed().items() for v in d["templating"]["list"]]


def test_queries_and_rules_use_only_exported_metrics():
    exported = exported_names()
    unknown = [(where, m) for where, expr in dashboard_exprs() + rule_exprs() + variable_queries()
               for m in re.findall(r"\bliqwatch_[a-z_]+", expr) if m not in exported]
    assert unknown == []


def test_the_metric_check_can_fail():
    # A guard for the guard: the regex finds metric names and the registry does not accept anything.
    assert re.findall(r"\bliqwatch_[a-z_]+", "rate(liqwatch_nope_total[1m])") == ["liqwatch_nope_total"]
    assert "liqwatch_nope_total" not in exported_names()
    assert {"liqwatch_kernel_seconds_bucket", "liqwatch_alerts_total", "liqwatch_index_price_usd"} <= exported_names()


def test_the_metrics_the_brief_names_are_on_the_dashboards():
    exprs = " ".join(e for _, e in dashboard_exprs())
    for metric in ("liqwatch_index_price_usd", "liqwatch_venue_price_usd", "liqwatch_reference_value_usd",
                   "liqwatch_depeg_ratio", "liqwatch_venue_divergence_ratio", "liqwatch_accounts",
                   "liqwatch_liquidatable_accounts", "liqwatch_liquidatable_notional_usd",
                   "liqwatch_margin_cluster_notional_usd", "liqwatch_cascade_amplification_ratio",
                   "liqwatch_cascade_liquidated_notional_usd", "liqwatch_cascade_runaway",
                   "liqwatch_critical_severity_ratio", "liqwatch_collateral_share_ratio", "liqwatch_alert_active",
                   "liqwatch_alerts_total", "liqwatch_events_processed_total", "liqwatch_consumer_lag_messages",
                   "liqwatch_deadletter_total", "liqwatch_events_emitted_total", "liqwatch_webhook_deliveries_total",
                   "liqwatch_webhook_queue", "liqwatch_kernel_seconds_bucket", "liqwatch_event_time_seconds"):
        assert metric in exprs, metric
    assert 'up{job="liqwatch"' in exprs
