"""Ctrl-C on `liqwatch demo` stops everything it started, cleanly (issue #5).

Runs the real CLI as a subprocess in its short mode (2,000 accounts at 600×) with a fresh state dir, so the demo
starts its own stack (Kafka, Prometheus, Alertmanager), the signed webhook receiver on 127.0.0.1:8099 and two
workers. Once the workers serve metrics and the replay has started, the test sends SIGINT (what Ctrl-C sends) and,
a second later, a second one (an impatient user), then checks that the demo exits promptly with its "stopped"
message, no traceback and no error lines, that every process it started is gone, and that every port it used is
free again.

The state dir gets a stack.json naming free ports before the demo starts, so the demo's stack never takes the
default ports a developer's own stack may hold; the receiver port 8099 is fixed by the demo.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from liqwatch.tools.demo import RECEIVER_PORT
from tests.integration.conftest import free_ports
from tests.integration.conftest import port_free as _port_free

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 240      # stack start + scenario generation + workers getting their partitions (numba warm-up)
EXIT_TIMEOUT_S = 90        # workers get 30 s for SIGTERM, then Kafka 30 s and the rest in parallel
SERVICES = ("kafka", "prometheus", "alertmanager")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _workers_of(app_id: str) -> list[int]:
    """Pids of the demo's worker processes (their command line names the demo's own app id)."""
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and _alive(int(p))
            and "-m liqwatch worker" in _cmdline(int(p)) and f"--app-id {app_id} " in _cmdline(int(p)) + " "]


def _event_time(port: int) -> float | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return None
    m = re.search(r"^liqwatch_event_time_seconds(?:\{[^}]*\})? ([0-9.e+]+)$", text, re.M)
    return float(m.group(1)) if m else None


def test_ctrl_c_stops_everything_the_demo_started(tmp_path):
    if not _port_free(RECEIVER_PORT):
        pytest.fail(f"127.0.0.1:{RECEIVER_PORT} is busy before the test: another demo (or demo test) is running")
    state = tmp_path / "state"
    state.mkdir()
    kafka, controller, prometheus, alertmanager = free_ports(4)
    stack_ports = {"kafka": kafka, "controller": controller, "prometheus": prometheus, "alertmanager": alertmanager}
    # StackConfig.resolve takes the ports of an existing stack.json; `up` rewrites it in full
    (state / "stack.json").write_text(json.dumps({"ports": stack_ports}))
    (tmp_path / "tmp").mkdir()
    env = {**os.environ, "LIQWATCH_STATE_DIR": str(state), "TMPDIR": str(tmp_path / "tmp"), "COLUMNS": "140"}
    out_path = tmp_path / "demo.out"
    with out_path.open("wb") as out:
        demo = subprocess.Popen([sys.executable, "-m", "liqwatch", "demo", "--accounts", "2000", "--speed", "600"],
                                cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        # ready: both workers serve metrics with an event time (the replay into Kafka is under way)
        deadline = time.monotonic() + READY_TIMEOUT_S
        worker_ports: list[int] = []
        app_id = ""
        while time.monotonic() < deadline:
            assert demo.poll() is None, f"the demo exited early ({demo.returncode}):\n{out_path.read_text()}"
            text = out_path.read_text(errors="replace")
            worker_ports = [int(p) for p in re.findall(r"metrics: http://127\.0\.0\.1:(\d+)/metrics", text)]
            m = re.search(r"alerts topic: (demo-[0-9a-f]+)\.liqwatch\.alerts", text)
            app_id = m.group(1) if m else ""
            if len(worker_ports) == 2 and all(_event_time(p) for p in worker_ports):
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"the demo was not up after {READY_TIMEOUT_S} s:\n{out_path.read_text(errors='replace')}")
        time.sleep(3)  # a few seconds into the live view
        assert demo.poll() is None, out_path.read_text(errors="replace")

        stack_pids = {svc: int((state / "run" / f"{svc}.pid").read_text()) for svc in SERVICES}
        worker_pids = _workers_of(app_id)
        assert len(worker_pids) == 2, (app_id, worker_pids)
        assert all(_alive(p) for p in stack_pids.values()), stack_pids
        assert not _port_free(RECEIVER_PORT)

        demo.send_signal(signal.SIGINT)
        t0 = time.monotonic()
        time.sleep(1.0)
        if demo.poll() is None:  # an impatient second Ctrl-C must not cut the clean-up short
            demo.send_signal(signal.SIGINT)
        try:
            rc = demo.wait(EXIT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the demo did not exit within {EXIT_TIMEOUT_S} s of SIGINT:\n"
                        f"{out_path.read_text(errors='replace')}")
        took = time.monotonic() - t0
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()

    text = out_path.read_text(errors="replace")
    assert rc == 130, f"exit code {rc}:\n{text}"
    assert "stopped: everything the demo started has been stopped" in text, text
    assert "Traceback" not in text, text
    # quiet: nothing keeps talking to the stack it is stopping (e.g. the replay retrying against a stopped Kafka)
    noise = [line for line in text.splitlines() if re.search(r"\b(ERROR|CRITICAL)\b|WARNING aiokafka", line)]
    assert noise == [], f"{len(noise)} error lines after Ctrl-C, the first: {noise[:5]}"
    print(f"demo exited {took:.1f} s after SIGINT")

    # every process it started is gone, every port it used is free
    left = {f"{svc} ({pid})": pid for svc, pid in stack_pids.items() if _alive(pid)}
    left.update({f"worker ({pid})": pid for pid in worker_pids if _alive(pid)})
    left.update({f"worker ({pid}), found again": pid for pid in _workers_of(app_id)})
    assert not left, f"still running after the demo exited: {sorted(left)}"
    for svc in SERVICES:
        assert not (state / "run" / f"{svc}.pid").exists(), f"{svc} pid file left behind"
    assert not list((state / "targets").glob("demo-worker-*")), "scrape targets left registered"
    busy = [p for p in [RECEIVER_PORT, *stack_ports.values(), *worker_ports] if not _port_free(p)]
    assert busy == [], f"ports still in use: {busy}"
