"""`liqwatch bench pipeline` at a small size on the real broker: one and two workers, reading the ticks
themselves and with market stages on two tick partitions, every figure present, and every live tick processed by
every worker (a benchmark whose plumbing breaks would print wrong figures, not fail)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("staged", [False, True], ids=["direct", "staged"])
def test_bench_pipeline_runs_one_and_two_workers(stack, staged):
    mode = ["--tick-partitions", "2", "--market-stage"] if staged else []
    out = subprocess.run(
        [sys.executable, "-m", "liqwatch", "bench", "pipeline", "--accounts", "2000", "--workers", "1", "--workers",
         "2", "--ticks", "20000", "--rate", "2000", "--seconds", "3", "--warmup", "3",
         "--state-dir", str(stack.state_dir), *mode], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout)
    assert [(r["accounts"], r["workers"]) for r in got["runs"]] == [(2000, 1), (2000, 2)]
    for r in got["runs"]:
        assert (r["market_stage"], r["tick_partitions"]) == ((True, 2) if staged else (False, 1))
        assert r["ticks"] >= 20000
        assert set(r["raw_consume_per_s"]) == {"aiokafka", "confluent_kafka"}
        assert len(r["worker_ticks_per_s"]) == r["workers"] and min(r["worker_ticks_per_s"]) > 0
        assert r["all_live_ticks_processed"], r
        # the catch-up: every worker through the firehose written while they were paused, beside the raw figures
        c = r["catch_up"]
        assert c["ticks"] == 20000 and 0 <= c["paused_s"] < 6
        assert set(c["raw_consume_per_s"]) == {"aiokafka", "confluent_kafka"}
        assert len(c["worker_ticks_per_s"]) == r["workers"] and min(c["worker_ticks_per_s"]) > 0
        # the leader published marks in the live phase and they arrived (else: who led, who emitted, the log)
        assert sum(r["marks_emitted"]) > 0 and r["mark_events"] > 0 and r["latency_p50_ms"] is not None, (
            r, out.stderr[-3000:])
        assert r["latency_p50_ms"] <= r["latency_p99_ms"] <= r["latency_max_ms"]
        # the feed's waits, read from every worker's metrics (a metric the worker lacks reads as None)
        for key in ("feed_held_s", "loop_stalls", "loop_stalled_s"):
            assert len(r[key]) == r["workers"] and all(x is not None and x >= 0 for x in r[key]), (key, r[key])
    (scale,) = got["scale_out"]
    assert scale["cluster_ticks_per_s_1"] > 0 and scale["cluster_ticks_per_s_2"] > 0
