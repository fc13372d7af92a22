"""`liqwatch replay` from the real broker: what the live workers emitted, replayed, is what they emitted.

Two workers process the October evening with the index as it was; then `liqwatch replay` reads the same topics by
event time (no consumer group), with the fixed index as `--compare`. The replay's alerts must equal the live
alerts topic (ids, transitions, severities, event times), the report must be complete, the live group's offsets
untouched, and a sub-window must read only its own records.
"""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
import time
import uuid

import pytest

from liqwatch import scenarios
from liqwatch.tools import stack as lwstack
from liqwatch.replay.replayer import compare_alerts
from liqwatch.scenarios import T0
from tests.integration.pipeline import Worker, produce, read_topic, settle
from tests.replay.test_replay import _png_has_data

pytestmark = pytest.mark.integration
PARTITIONS = 4
PRE = scenarios.config_path("oct-2025", "prefix")
FIXED = scenarios.config_path("oct-2025", "fixed")
CASCADE_EVERY_MS = 300_000   # every 5 min of event time, on both sides (keeps the live run short)
MIN = 60_000


def liqwatch(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "liqwatch", *args], capture_output=True, text=True, timeout=600)


async def _groups(bootstrap: str, group: str) -> tuple[list[str], dict]:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        groups = sorted(g[0] if isinstance(g, tuple) else g.group_id for g in await admin.list_consumer_groups())
        offsets = await admin.list_consumer_group_offsets(group)
        return groups, {f"{tp.topic}[{tp.partition}]": m.offset for tp, m in offsets.items()}
    finally:
        await admin.close()


@pytest.fixture(scope="module")
def live(stack, tmp_path_factory):
    """The evening through two live workers; returns (bootstrap, prefix, events file, live alerts)."""
    tmp = tmp_path_factory.mktemp("replay-live")
    bootstrap = lwstack.bootstrap_servers(stack)
    prefix = f"r{uuid.uuid4().hex[:8]}."
    events = tmp / "oct.jsonl"
    with events.open("w") as f:
        for ev in scenarios.generate("oct-2025", 1500, seed=7):
            f.write(json.dumps(ev) + "\n")
    last_ts = max(json.loads(x)["ts"] for x in events.read_text().splitlines())
    extra = ("--cascade-every-ms", str(CASCADE_EVERY_MS), "--idle-s", "5")
    ws = [Worker(PRE, bootstrap, prefix, f"w{i + 1}", PARTITIONS, tmp, extra_args=extra).start() for i in range(2)]
    try:
        settle(ws, PARTITIONS)  # both workers in the group, partitions shared, a leader: only then the data
        time.sleep(3)
        produce(events, bootstrap, prefix, PARTITIONS)
        # done when the leader's idle evaluation has run the cascades at the last event time
        n_cascades = 10  # 2 scenarios × 5 severities in the config
        deadline = time.monotonic() + 420
        while True:
            for w in ws:
                assert w.proc.poll() is None, w.log_tail()
            final = [c for c in read_topic(bootstrap, prefix + "liqwatch.cascades") if c["ts"] == last_ts]
            if len(final) >= n_cascades:
                break
            assert time.monotonic() < deadline, [w.log_tail() for w in ws]
            time.sleep(3)
        time.sleep(2)
        alerts = read_topic(bootstrap, prefix + "liqwatch.alerts")
        yield bootstrap, prefix, events, alerts, last_ts
    finally:
        for w in ws:
            w.kill()


def test_replay_of_the_live_run_gives_its_alerts_and_a_full_report(live, tmp_path):
    bootstrap, prefix, events, live_alerts, last_ts = live
    assert len(live_alerts) > 10
    group = prefix.rstrip(".")
    before = asyncio.run(_groups(bootstrap, group))
    out = tmp_path / "pm"
    r = liqwatch("replay", "--bootstrap", bootstrap, "--topic-prefix", prefix, "--from", "2025-10-10T20:00:00Z",
                 "--to", str(last_ts + 1000), "-c", str(PRE), "--compare", str(FIXED), "--report", str(out),
                 "--cascade-every-ms", str(CASCADE_EVERY_MS))
    assert r.returncode == 0, r.stderr
    groups, offsets = asyncio.run(_groups(bootstrap, group))
    # no group joined, no offset moved (other tests' empty groups may expire meanwhile: the broker drops them at
    # its periodic offsets check)
    assert set(groups) <= set(before[0]) and offsets == before[1]
    summary = json.loads((out / "summary.json").read_text())
    pre, fixed = summary["configs"]
    assert summary["input"]["kind"] == "kafka" and summary["window"]["ends_input"]
    assert summary["input"]["account_snapshots"] == 1500
    # the alerts the live workers emitted, exactly
    only_live, only_replay = compare_alerts(live_alerts, pre["alerts"])
    assert (only_live, only_replay) == ([], []), (only_live[:5], only_replay[:5])
    by_key = {(a["id"], a["state"], a["severity"], a["ts"]): a for a in pre["alerts"]}
    for a in live_alerts:
        b = by_key[(a["id"], a["state"], a["severity"], a["ts"])]
        assert math.isclose(a["value"], b["value"], rel_tol=1e-6, abs_tol=1e-9), (a, b)
        assert a["config_id"] == b["config_id"]
    assert any(a["kind"] == "cascade_risk" and a["severity"] == "critical" for a in live_alerts)
    # the report
    for name in ["index.html", "alerts.png", "cascades.png", "health.png", "limits.png", "liquidatable.png",
                 "prices-USDe.png", "prices-WBETH.png", "prices-BNSOL.png"]:
        assert (out / name).stat().st_size > 0, name
        if name.endswith(".png"):
            _png_has_data(out / name)
    assert 0 < fixed["totals"]["liquidated_usd"] < pre["totals"]["liquidated_usd"]
    assert pre["lead_time_s"] and pre["lead_time_s"] > 0
    # the same window again: byte-identical summary
    again = tmp_path / "again"
    r = liqwatch("replay", "--bootstrap", bootstrap, "--topic-prefix", prefix, "--from", "2025-10-10T20:00:00Z",
                 "--to", str(last_ts + 1000), "-c", str(PRE), "--compare", str(FIXED), "--report", str(again),
                 "--cascade-every-ms", str(CASCADE_EVERY_MS))
    assert r.returncode == 0, r.stderr
    assert (again / "summary.json").read_bytes() == (out / "summary.json").read_bytes()


def test_sub_window_reads_only_its_records(live, tmp_path):
    bootstrap, prefix, events, _, _ = live
    lo, hi = T0 + 60 * MIN, T0 + 90 * MIN
    out = tmp_path / "sub"
    r = liqwatch("replay", "--bootstrap", bootstrap, "--topic-prefix", prefix, "--from", str(lo), "--to", str(hi),
                 "--warmup", "0", "-c", str(PRE), "--report", str(out))
    assert r.returncode == 0, r.stderr
    s = json.loads((out / "summary.json").read_text())
    want = sum(1 for x in events.read_text().splitlines()
               if (e := json.loads(x))["type"] != "account" and lo <= e["ts"] <= hi)
    assert s["input"]["market_events"] == s["input"]["market_events_in_window"] == want
    assert not s["window"]["ends_input"]
    t = s["configs"][0]["series"]["t"]
    assert min(t) >= lo and max(t) <= hi
    # the book at 21:00 is every account's snapshot from 20:00, read although it is before the window
    assert s["configs"][0]["series"]["accounts"][-1] == 1500
    ticks = s["input"]["offsets"][f"{prefix}liqwatch.ticks[0]"]
    assert 0 < ticks[0] < ticks[1]


def test_empty_kafka_window_is_a_clear_error(live, tmp_path):
    bootstrap, prefix, *_ = live
    r = liqwatch("replay", "--bootstrap", bootstrap, "--topic-prefix", prefix, "--from", "2024-01-01T00:00:00Z",
                 "--to", "2024-01-01T01:00:00Z", "-c", str(PRE), "--report", str(tmp_path / "pm"))
    assert r.returncode == 1 and "empty window" in r.stderr and "2025-10-10T20:00:00Z" in r.stderr, r.stderr
    assert not (tmp_path / "pm").exists()
