"""An asset depegs and recovers: one firing and one resolved `depeg` alert with one id, on the alerts topic, on the
signed webhook receiver, and through Prometheus → Alertmanager → webhook. Real Kafka, Prometheus, Alertmanager,
worker and HTTP receiver."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid

import pytest
import yaml

from liqwatch.kafka import Connection
from liqwatch.tools import stack as lwstack
from liqwatch.tools import transport
from liqwatch.tools.receiver import Receiver
from tests.integration.pipeline import Worker, read_topic

pytestmark = pytest.mark.integration
T0 = 1_700_000_000_000
SECRET_ENV = "LIQWATCH_E2E_SECRET"


def depeg_config(path, receiver_url):
    path.write_text(yaml.safe_dump({
        "settlement": "USDT",
        "assets": {"USDT": {}, "USDe": {"index": {"constituents": [{"source": "binance:USDe/USDT", "weight": 1.0}]},
                                        "haircut": [{"upto": None, "rate": 0.05}]}},
        "liquidation": {"venue": "binance"},
        "stress": {"scenarios": {"usde_run": {"USDe": -1.0}}, "severities": [0.02, 0.1]},
        "alerts": {"webhooks": [{"name": "e2e", "url": receiver_url, "secret_env": SECRET_ENV}]},
    }))
    return path


def depeg_events(path):
    events = []
    # recovered for 6 minutes: the depeg resolves once clear for its keep_firing_for_s (300 s by default)
    for s in range(0, 481):
        ts = T0 + s * 1000
        if s % 10 == 0:
            events.append({"type": "reference", "asset": "USDe", "ts": ts, "in": "USD", "rate": 1.0})
        price = 0.90 if 60 <= s < 120 else 1.0  # a 10% depeg for one minute
        events.append({"type": "tick", "venue": "binance", "symbol": "USDe/USDT", "ts": ts + 1,
                       "bid": price - 0.0001, "ask": price + 0.0001})
        if s == 0:
            events.append({"type": "account", "account": "a1", "ts": ts + 2, "collateral": {"USDe": 1000.0},
                           "borrowed": {}, "positions": []})
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    return path


class ReceiverThread:
    """The real receiver in its own event loop, so the test can block while it serves."""

    def __init__(self, secret: str, stack):
        # where the stack's Alertmanager sends notifications, with the token it sends
        self.receiver = Receiver(secret, quiet=True, alertmanager_token=lwstack.receiver_token(stack))
        self.port = stack.ports.receiver
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.receiver.start("127.0.0.1", self.port), self.loop).result(10)
        return self.receiver

    def __exit__(self, *exc):
        asyncio.run_coroutine_threadsafe(self.receiver.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def test_depeg_fires_and_resolves_everywhere(stack, tmp_path, monkeypatch):
    secret = uuid.uuid4().hex
    monkeypatch.setenv(SECRET_ENV, secret)
    bootstrap = lwstack.bootstrap_servers(stack)
    prefix = f"e2e{uuid.uuid4().hex[:6]}."
    config = depeg_config(tmp_path / "cfg.yaml", f"{lwstack.receiver_url(stack)}/alerts")
    events = depeg_events(tmp_path / "ev.jsonl")
    with ReceiverThread(secret, stack) as receiver:
        worker = Worker(config, bootstrap, prefix, "e2e-1", 1, tmp_path).start()
        try:
            lwstack.register_scrape_target(stack.state_dir, "e2e-1", worker.port)
            deadline = time.monotonic() + 60
            while not (worker.status() or {}).get("leader"):
                assert time.monotonic() < deadline, worker.log_tail()
                time.sleep(0.5)
            # paced at 10× event time: Prometheus (1 s scrapes) sees the depeg firing for ~33 s (from 30 s into
            # it, the pending time, to 5 minutes after it ended)
            asyncio.run(transport.produce_file(events, Connection.plain(bootstrap), partitions=1, prefix=prefix,
                                               speed=10.0,
                                               progress=False))
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                am = [r for r in receiver.received if r.get("source") == "alertmanager"
                      and r["labels"].get("kind") == "depeg"]
                if {r["status"] for r in am} == {"firing", "resolved"}:
                    break
                time.sleep(1)
            topic = [a for a in read_topic(bootstrap, prefix + "liqwatch.alerts") if a["kind"] == "depeg"]
            hooks = [r for r in receiver.received if r.get("source") != "alertmanager" and r["kind"] == "depeg"]
        finally:
            lwstack.unregister_scrape_target(stack.state_dir, "e2e-1")
            worker.kill()
    assert [(a["state"], a["severity"], a["subject"]) for a in topic] == [
        ("firing", "critical", "USDe"), ("resolved", "critical", "USDe")]
    assert topic[0]["id"] == topic[1]["id"] == f"depeg:USDe:{topic[0]['since']}"
    # fires once the depeg has held for_s (30 s), resolves once clear for keep_firing_for_s (300 s)
    assert T0 + 60_000 <= topic[0]["since"] <= T0 + 70_000 and topic[0]["ts"] - topic[0]["since"] >= 30_000
    assert T0 + 420_000 <= topic[1]["ts"] <= T0 + 440_000
    assert topic[0]["value"] == pytest.approx(0.10, rel=1e-3) and topic[0]["threshold"] == 0.05
    assert [(h["id"], h["state"]) for h in hooks] == [(a["id"], a["state"]) for a in topic]  # signed, deduped
    assert {r["status"] for r in am} == {"firing", "resolved"}, receiver.received
    assert all(r["labels"]["subject"] == "USDe" and r["labels"]["severity"] == "critical" for r in am)
