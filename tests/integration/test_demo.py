"""`liqwatch demo` in a short mode on the real stack: liqwatch warns before the cascade, and stays quiet on a calm day."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from rich.console import Console

from liqwatch.tools.demo import RECEIVER_PORT, run_demo
from liqwatch.replay.replayer import compare_alerts
from tests.integration.conftest import port_free as _port_free

pytestmark = pytest.mark.integration


def _demo_workers() -> list[str]:
    out = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if "demo-worker-" in cmd and "liqwatch" in cmd and Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z":
                out.append(cmd)
    return out


def test_demo_warns_before_the_cascade(stack, tmp_path):
    console = Console(file=(tmp_path / "screen.txt").open("w"), width=140)
    r = run_demo(5000, 600.0, no_stack=True, state_dir=stack.state_dir, console=console, live=False,
                 report=tmp_path / "pm")
    assert r.first_critical_cascade_risk is not None and r.first_wave is not None, r.first_alert
    assert r.lead_time_s is not None and r.lead_time_s > 0, (r.first_critical_cascade_risk, r.first_wave)
    depeg = {a["subject"] for a in r.alerts if a["kind"] == "depeg" and a["state"] == "firing"}
    assert "USDe" in depeg and "USDT" not in depeg
    assert r.comparison["fixed"]["liquidated_notional"] < r.comparison["prefix"]["liquidated_notional"]
    # its post-mortem: the replay of the demo's events raises exactly the alerts the webhooks delivered
    summary = json.loads((tmp_path / "pm" / "summary.json").read_text())
    only_live, only_replay = compare_alerts(r.alerts, summary["configs"][0]["alerts"])
    assert (only_live, only_replay) == ([], []), (only_live[:5], only_replay[:5])
    assert (tmp_path / "pm" / "index.html").exists()
    # everything the demo started is stopped
    assert _demo_workers() == []
    assert _port_free(RECEIVER_PORT)
    assert not list((stack.state_dir / "targets").glob("demo-worker-*"))


def test_calm_scenario_raises_no_critical_alert(stack, tmp_path):
    console = Console(file=(tmp_path / "screen.txt").open("w"), width=140)
    r = run_demo(5000, 600.0, no_stack=True, state_dir=stack.state_dir, scenario="calm", console=console,
                 live=False)
    critical = [a for a in r.alerts if a["severity"] == "critical" and a["state"] == "firing"]
    assert critical == [], [(a["kind"], a["subject"], a["summary"]) for a in critical]


def test_real_crash_warns_before_the_first_wave(stack, tmp_path):
    # the recorded 20:30–22:30 UTC of 10 October 2025: 2 h of event time, produced in 24 s at 300×; the leader's
    # stress cascade every minute of event time (~0.6 s each through Kafka) makes the run ~100 s
    console = Console(file=(tmp_path / "screen.txt").open("w"), width=140)
    r = run_demo(3000, 300.0, no_stack=True, state_dir=stack.state_dir, scenario="real-2025-10-10", console=console,
                 live=False, report=tmp_path / "pm")
    assert r.first_critical_cascade_risk is not None and r.first_wave is not None, r.first_alert
    assert r.lead_time_s is not None and r.lead_time_s > 0, (r.first_critical_cascade_risk, r.first_wave)
    # the Uniswap pool held 0.9995 while Binance's book fell to 0.65: the pool is not the one that diverged
    uniswap = [a for a in r.alerts if a["kind"] == "venue_divergence" and a["subject"] == "uniswap:USDe/USDT"
               and a["severity"] == "critical"]
    assert uniswap == [], [(a["state"], a["summary"]) for a in uniswap]
    summary = json.loads((tmp_path / "pm" / "summary.json").read_text())
    only_live, only_replay = compare_alerts(r.alerts, summary["configs"][0]["alerts"])
    assert (only_live, only_replay) == ([], []), (only_live[:5], only_replay[:5])
