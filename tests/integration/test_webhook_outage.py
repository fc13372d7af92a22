"""Webhook delivery through a 30 s receiver outage (SPEC §6: retried with backoff, at least once, in order).

No Kafka: a WebhookSender with two endpoints, each a Receiver on its own 127.0.0.1 port. Both receivers are down
while 20 alerts (10 firing/resolved pairs) are submitted over the first 20 s; after 30 s they come up on the same
ports. Every alert must then reach each receiver exactly once after dedup, in submission order, and the delivery
metrics must show the retries. The backoff cap is 2 s (30 s in production) so the test ends in ~35 s.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from liqwatch.sinks.metrics import Metrics
from liqwatch.tools.receiver import Receiver
from liqwatch.sinks.webhooks import Endpoint, WebhookSender

from tests.integration.conftest import free_ports

pytestmark = pytest.mark.integration

SECRET = "outage-test-secret"
OUTAGE_S = 30.0
SUBMIT_OVER_S = 20.0
N_ALERTS = 20
BACKOFF_CAP_S = 2.0


def _alerts() -> list[dict]:
    out = []
    for i in range(N_ALERTS // 2):
        for state in ("firing", "resolved"):
            out.append({"type": "alert", "id": f"depeg:S{i}:1760130000000", "kind": "depeg",
                        "severity": "critical", "subject": f"S{i}", "state": state, "ts": 1760130000000 + 1000 * i,
                        "value": 0.31 if state == "firing" else 0.01, "threshold": 0.05,
                        "summary": f"S{i} depeg {state}", "config_id": "ab12cd34ef56"})
    return out


def _sample(m: Metrics, name: str, **labels) -> float:
    return m.registry.get_sample_value(name, labels) or 0.0


def test_alerts_submitted_during_a_30s_outage_are_all_delivered_in_order(tmp_path, monkeypatch):
    monkeypatch.setenv("LW_OUTAGE_SECRET", SECRET)
    ports = free_ports(2)
    names = ["east", "west"]
    sent = _alerts()

    async def go():
        m = Metrics()
        sender = WebhookSender([Endpoint(n, f"http://127.0.0.1:{p}/alerts", "LW_OUTAGE_SECRET")
                                for n, p in zip(names, ports)], m,
                               timeout_s=2.0, backoff_initial_s=0.2, backoff_cap_s=BACKOFF_CAP_S)
        receivers = [Receiver(SECRET, out=tmp_path / f"{n}.jsonl", quiet=True, alertmanager_token=None)
                     for n in names]
        await sender.start()
        t0 = time.monotonic()
        try:
            for k, a in enumerate(sent):                                 # spread over the first 20 s
                await asyncio.sleep(max(0.0, t0 + k * SUBMIT_OVER_S / N_ALERTS - time.monotonic()))
                sender.submit(a)
            await asyncio.sleep(max(0.0, t0 + OUTAGE_S - time.monotonic()))
            for n in names:
                assert sender.pending(n) == N_ALERTS and _sample(m, "liqwatch_webhook_queue", endpoint=n) == N_ALERTS
                assert _sample(m, "liqwatch_webhook_deliveries_total", endpoint=n, outcome="delivered") == 0
            up = time.monotonic()
            for r, p in zip(receivers, ports):                           # back on the same ports
                assert await r.start("127.0.0.1", p) == p
            left = await sender.drain(BACKOFF_CAP_S + 10)
            drained = time.monotonic() - up
        finally:
            await sender.stop(drain_timeout=1)
            for r in receivers:
                await r.stop()
        return m, receivers, left, drained

    m, receivers, left, drained = asyncio.run(go())
    assert left == 0
    want = [(a["id"], a["state"]) for a in sent]
    for n, r in zip(names, receivers):
        got = [(a["id"], a["state"]) for a in r.received]
        assert got == want, n                                            # all, once each, in submission order
        assert len(r.received) == N_ALERTS and r.rejected == 0
        lines = [json.loads(x) for x in (tmp_path / f"{n}.jsonl").read_text().splitlines()]
        assert [(a["id"], a["state"]) for a in lines] == want
        retries = _sample(m, "liqwatch_webhook_deliveries_total", endpoint=n, outcome="retry")
        delivered = _sample(m, "liqwatch_webhook_deliveries_total", endpoint=n, outcome="delivered")
        failed = _sample(m, "liqwatch_webhook_deliveries_total", endpoint=n, outcome="failed")
        assert retries >= 10 and delivered == N_ALERTS + r.duplicates and failed == 0
        assert _sample(m, "liqwatch_webhook_queue", endpoint=n) == 0
        print(f"{n}: received {len(r.received)}, duplicates {r.duplicates}, retries {retries:.0f}, "
              f"delivered {delivered:.0f}")
    print(f"drained {N_ALERTS} queued alerts per endpoint {drained:.2f} s after the receivers came up "
          f"(backoff cap {BACKOFF_CAP_S:g} s)")
    assert drained < BACKOFF_CAP_S + 5
