"""The post-mortem report's three parts on a tiny hand-built replay (no Kafka, no replay run): the summary is
deterministic, the page escapes what a config or an alert carries, and every plot is written as a PNG.

The whole report on a real replay, and its summary.json byte for byte across runs, is in tests/test_replay.py.
"""

from __future__ import annotations

import json
import math
import re
from functools import cache

from liqwatch import scenarios
from liqwatch.config import load_config
from liqwatch.replay.replayer import Record, Run, Window
from liqwatch.replay.report import build_summary, dumps, write_report
from liqwatch.replay.report.page import render_html
from liqwatch.replay.report.plots import plot_prices
from liqwatch.sinks.metrics import HEALTH_BANDS

T0 = 1_760_126_400_000  # 2025-10-10T20:00:00Z
S = 1000
HOSTILE = "<script>alert('pwned')</script>&co"


def _window() -> Window:
    market = [Record(kind=1, timestamp=T0 + k * 10 * S, value=b"{}", topic="ticks", partition=0, offset=k)
              for k in range(-1, 4)]  # one warm-up record before the window
    return Window(t_from=T0, t_to=T0 + 40 * S, warmup_ms=60 * S, market=market, accounts=[], complete=True,
                  source={"kind": "file", "path": "ev.jsonl"})


def _alert(id_: str, kind: str, ts: int, severity: str, state: str = "firing", value: float = 0.5,
           summary: str = "USDe index 0.66 & falling") -> dict:
    return {"id": id_, "kind": kind, "subject": "USDe" if kind != "cascade_risk" else "risk_off", "ts": ts,
            "severity": severity, "state": state, "value": value, "summary": summary}


@cache
def _config():
    return load_config(scenarios.config_path("oct-2025", "prefix"))


def _run(name: str, wave_at: int, liquidated: float) -> Run:
    cfg = _config()
    scenario = cfg.stress.primary_scenario
    run = Run(config=cfg, name=name, liquidated_usd=liquidated, liquidated_accounts=3,
              every_ms={"evaluate": 10 * S, "cascade": 20 * S})
    for k in range(4):
        t = T0 + k * 10 * S
        run.samples.append({
            "t": t, "index": {"USDe": 1.0 - 0.1 * k if k != 2 else math.nan, "BTC": 110_000.0},
            "reference": {"USDe": 1.0}, "venues": {"binance:USDe/USDT": 1.0 - 0.12 * k, "bybit:USDe/USDT": 0.999},
            "bands": {b: 10 - k if b == "above_3" else k for b, _, _ in HEALTH_BANDS},
            "accounts": 10 + 4 * k, "liquidatable_accounts": k, "liquidatable_usd": 1e8 * k,
            "liquidated_usd": liquidated * k / 3})
    for k in range(2):
        run.cascade_samples.append({"t": T0 + k * 20 * S, "critical_severity": 0.2 - 0.15 * k, "cascades": [
            {"scenario": scenario, "severity": sev, "amplification": 1.5 + k + sev, "liquidated_usd": 1e7 * k,
             "runaway": k == 1} for sev in (0.05, 0.1)]})
    run.alerts = [_alert("cr-1", "cascade_risk", T0 + 10 * S, "warning", value=0.12),
                  _alert("cr-1", "cascade_risk", T0 + 20 * S, "critical", value=0.05),
                  _alert("lq-1", "liquidations", wave_at, "critical", value=2e8),
                  _alert("lq-1", "liquidations", T0 + 40 * S, "critical", state="resolved", value=0.0)]
    run.dropped_sources = [{"asset": "USDe", "source": "binance:USDe/USDT", "reason": "deviation",
                            "from": T0 + 20 * S, "until": None}]
    return run


def _limits() -> list[dict]:
    return [{"asset": "USDe", "limit_usd": 5e7, "limit_qty": 5e7 / 0.9, "index_drop_per_1m_usd": 0.0004,
             "largest_usd": 8e7, "accounts_over_limit": 1, "held_usd": 2e8, "sources": ["binance:USDe/USDT"]},
            {"asset": "BTC", "limit_usd": None, "limit_qty": None, "index_drop_per_1m_usd": 0.0,
             "largest_usd": 3e6, "accounts_over_limit": 0, "held_usd": 9e6, "sources": ["binance:BTC/USDT"]}]


def _summary(first: str = "as-it-was", second: str | None = "fixed") -> dict:
    runs = [_run(first, T0 + 30 * S, 3e8)] + ([] if second is None else [_run(second, T0 + 40 * S, 1e8)])
    return build_summary(_window(), runs, [_limits() for _ in runs])


def test_the_summary_is_deterministic_and_json_safe():
    """Built twice from fresh inputs: the same bytes; NaN becomes null; the comparison reads the runs."""
    text = dumps(_summary())
    assert text == dumps(_summary())
    summary = json.loads(text)
    first, fixed = summary["configs"]
    assert first["series"]["index"]["USDe"][2] is None
    assert first["lead_time_s"] == 10.0 and fixed["lead_time_s"] == 20.0
    cmp = summary["comparisons"][0]
    assert cmp["liquidated_usd_avoided"] == 2e8
    assert {(r["kind"], r["severity"]): r["change"] for r in cmp["alerts"]}[("liquidations", "critical")] == "later"
    assert summary["input"]["market_events_in_window"] == 4


def test_the_page_escapes_a_hostile_config_name_once():
    summary = _summary(first=HOSTILE)
    for ep in summary["configs"][0]["episodes"]:
        ep["summary"] = HOSTILE
    plots = {"prices-USDe": "prices-USDe.png", "health": "health.png", "liquidatable": "liquidatable.png",
             "cascades": "cascades.png", "alerts": "alerts.png", "limits": "limits.png"}
    page = render_html(summary, plots, f"liqwatch replay -c '{HOSTILE}'")
    escaped = "&lt;script&gt;alert(&#x27;pwned&#x27;)&lt;/script&gt;&amp;co"
    assert "<script>" not in page
    assert "&amp;lt;" not in page and "&amp;amp;" not in page  # nothing escaped twice
    assert f"<li><b>{escaped}</b>: $300.0M force-liquidated" in page
    assert f"<th>{escaped}</th>" in page  # the key figures' and the comparison's column
    assert f"<h3>{escaped}</h3>" in page
    assert f"<td>{escaped}</td>" in page  # an alert's summary
    assert f"<code>liqwatch replay -c &#x27;{escaped}&#x27;</code>" in page
    # the page's own markup is not escaped
    assert "a critical <b>cascade_risk</b> warning at 20:00:20, 0.2 min before the first liquidation wave" in page
    assert page.startswith("<!doctype html>") and page.endswith("</body></html>")


def test_the_report_writes_every_plot_as_a_png(tmp_path):
    summary = _summary(second=None)  # one config: half the drawing time, and the page without a comparison
    files = write_report(tmp_path / "pm", summary, "liqwatch replay")
    pngs = {k: p for k, p in files.items() if p.suffix == ".png"}
    assert set(pngs) == {"prices-USDe", "prices-BTC", "health", "liquidatable", "cascades", "alerts", "limits"}
    for p in pngs.values():
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", p.name
        assert p.stat().st_size > 5000, p.name  # something drawn, not an empty canvas
    page = files["html"].read_text()
    assert "would have changed" not in page
    assert sorted(re.findall(r"<img src='([^']+)'", page)) == sorted(p.name for p in pngs.values())
    assert files["summary"].read_text() == dumps(summary)
    assert [json.loads(x)["id"] for x in files["alerts-as-it-was"].read_text().splitlines()] == \
        ["cr-1", "cr-1", "lq-1", "lq-1"]


def test_no_prices_plot_for_an_asset_without_an_index(tmp_path):
    assert plot_prices(_summary(), "WBETH", tmp_path / "x.png") is False
    assert not (tmp_path / "x.png").exists()
