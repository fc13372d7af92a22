"""Every dashboard panel query and every alert rule, run by the real Prometheus against a real worker.

One worker processes a small oct-2025 scenario (plus two malformed records, so that dead letters exist) on a
unique topic prefix; Prometheus scrapes it; then each expression, with Grafana's variables filled in, must
return data. For a rule, the whole expression must evaluate and its left side (the signal before the threshold)
must return data: the alert itself only fires when the threshold is crossed.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from liqwatch.tools import stack as lwstack
from tests.integration.pipeline import Worker, produce

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
PARTITIONS = 4
SECRET_ENV = "LIQWATCH_DASHBOARD_TEST_SECRET"
# Grafana's variables, as a dashboard with "All" selected would fill them in.
VARIABLES = {"__rate_interval": "1m", "__interval": "1m", "__range": "5m"}
METRIC = re.compile(r"\bliqwatch_[a-z_]+")
COMPARISON = re.compile(r"^(?P<signal>.+?)\s*(?:==|!=|>=|<=|>|<)\s*[-+0-9.e]+$")


class MetricNotExported(AssertionError):
    """The query is empty because a metric it reads is not on the worker's /metrics."""


def substitute(expr: str) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: VARIABLES.get(m.group(1), ".*"), expr)


def queries() -> list:
    out = []
    for name in ("overview", "operations"):
        board = json.loads((ROOT / "liqwatch" / "data" / "dashboards" / "grafana" / f"{name}.json").read_text())
        for panel in board["panels"]:
            for t in panel.get("targets", []):
                out.append(param(f"{name}/{panel['title']}/{t['refId']}", t["expr"], rule=False))
    rules = yaml.safe_load((ROOT / "liqwatch" / "data" / "dashboards" / "rules" / "liqwatch.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            out.append(param(f"rule/{rule['alert']}", rule["expr"], rule=True))
    return out


def param(ident: str, expr: str, rule: bool):
    return pytest.param(expr, rule, id=ident)


@dataclass
class Live:
    prometheus: str
    worker: Worker

    def query(self, expr: str) -> list:
        url = f"{self.prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # 127.0.0.1 never via a proxy
        with opener.open(url, timeout=10) as r:
            body = json.loads(r.read())
        assert body["status"] == "success", body
        return body["data"]["result"]

    def exported(self) -> set[str]:
        return {line.split("{")[0].split(" ")[0] for line in self.worker.metrics().splitlines()
                if line and not line.startswith("#")}


def wait_for(what: str, check, timeout: float, worker: Worker) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert worker.proc.poll() is None, f"worker exited:\n{worker.log_tail()}"
        assert time.monotonic() < deadline, f"{what} not within {timeout:.0f} s\n{worker.log_tail()}"
        time.sleep(1)


@pytest.fixture(scope="module")
def live(stack, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dashboards")
    events, config = tmp / "oct.jsonl", tmp / "oct-2025-prefix.yaml"
    subprocess.run([sys.executable, "-m", "liqwatch", "scenario", "oct-2025", "--accounts", "500",
                    "--out", str(events), "--config-out", str(config)], check=True, cwd=tmp, capture_output=True)
    last_ts = json.loads(events.read_text().splitlines()[-1])["ts"]
    with events.open("a") as f:  # dead letters, so that their panel and rule have data
        f.write('{"type": "account", "account": "broken", "ts": \n')
        f.write(json.dumps({"type": "account", "account": "doge", "ts": last_ts, "collateral": {"DOGE": 1.0},
                            "borrowed": {}, "positions": []}) + "\n")
    # a webhook endpoint that answers 404 (Prometheus has no /alerts page): deliveries fail permanently, so the
    # webhook panels and the failures rule have data
    cfg = yaml.safe_load(config.read_text())
    cfg["alerts"] = {"webhooks": [{"name": "nowhere", "url": lwstack.prometheus_url(stack) + "/alerts",
                                   "secret_env": SECRET_ENV}]}
    config.write_text(yaml.safe_dump(cfg))
    os.environ[SECRET_ENV] = "dashboard-test"
    prefix = f"d{uuid.uuid4().hex[:8]}."
    bootstrap = lwstack.bootstrap_servers(stack)
    worker = Worker(config, bootstrap, prefix, f"dash-{prefix[:-1]}", PARTITIONS, tmp).start()
    live = Live(lwstack.prometheus_url(stack), worker)
    try:
        lwstack.register_scrape_target(stack.state_dir, worker.worker_id, worker.port)
        produce(events, bootstrap, prefix, PARTITIONS)
        me = f'{{worker="{worker.worker_id}"}}'
        wait_for("scrape", lambda: live.query(f'up{{job="liqwatch", worker="{worker.worker_id}"}} == 1'), 60, worker)
        # The leader runs the stress cascades once the input is idle: the last thing a replay produces.
        wait_for("cascades", lambda: live.query(f"liqwatch_cascade_amplification_ratio{me}"), 240, worker)
        wait_for("dead letters", lambda: live.query(f"liqwatch_deadletter_total{me}"), 60, worker)
        for metric in ("liqwatch_alerts_total", "liqwatch_collateral_share_ratio", "liqwatch_alert_active",
                       "liqwatch_webhook_deliveries_total"):
            wait_for(metric, lambda m=metric: live.query(f"{m}{me}"), 120, worker)
        yield live
    finally:
        lwstack.unregister_scrape_target(stack.state_dir, worker.worker_id)
        worker.kill()


@pytest.mark.parametrize("expr, rule", queries())
def test_query_returns_data(live, expr, rule):
    q = substitute(expr)
    if rule:
        live.query(q)  # the whole rule evaluates; it may rightly be quiet now, so its signal must have data
        q = COMPARISON.match(q).group("signal")
    deadline = time.monotonic() + 15  # rates need a second sample in their window
    while not live.query(q):
        missing = sorted(set(METRIC.findall(q)) - live.exported())
        if missing:
            raise MetricNotExported(f"{q}: no data; the worker does not export {missing}")
        assert time.monotonic() < deadline, f"{q}: no data, though the worker exports its metrics"
        time.sleep(1)
