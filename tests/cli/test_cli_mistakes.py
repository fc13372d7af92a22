"""Closed doors: every CLI mistake ends in one `error:` line naming the argument (exit 2 for usage, 1 for what the
environment refused), never a traceback. Each case is a real `liqwatch` process, as a user runs it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # ~60 CLI processes: the full fast tier runs them, `liqwatch.sh test-fast` does not
from liqwatch.scenarios import config_path

LIQWATCH = [sys.executable, "-m", "liqwatch"]


def _closed_port() -> int:
    """A loopback port nobody listens on (just released by us)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("mistakes")
    cfg = d / "cfg.yaml"
    cfg.write_text(config_path("oct-2025").read_text())
    ev = d / "ev.jsonl"
    ev.write_text(json.dumps({"type": "tick", "venue": "binance", "symbol": "BTC/USDT", "ts": 1760126400000,
                              "bid": 121000, "ask": 121001}) + "\n")
    (d / "adir").mkdir()
    damaged = d / "damaged-state"
    damaged.mkdir()
    (damaged / "stack.json").write_text("{not json")
    # a webhook whose secret is in an environment variable that is not set
    webhook = d / "webhook.yaml"
    text = cfg.read_text()
    assert "\nalerts:\n" in text
    webhook.write_text(text.replace("\nalerts:\n", "\nalerts:\n  webhooks: [{name: ops, url: "
                                    "'http://127.0.0.1:8099/alerts', secret_env: LIQWATCH_TEST_UNSET_SECRET}]\n", 1))
    return {"CFG": str(cfg), "EV": str(ev), "DIR": str(d / "adir"), "FILE": str(ev), "NOPE": str(d / "nope.jsonl"),
            "NODIR": str(d / "no-such-dir" / "out.jsonl"), "DAMAGED": str(damaged), "WEBHOOK": str(webhook),
            "CLOSED": f"127.0.0.1:{_closed_port()}", "STATE": str(d / "no-stack-here")}


def run(args: list[str], work: dict[str, str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "50", "LIQWATCH_STATE_DIR": work["STATE"]}  # narrow: a wrapped line shows
    env.pop("LIQWATCH_CONFIG", None)
    env.pop("LIQWATCH_TEST_UNSET_SECRET", None)
    args = [a.format(**work) if "{" in a else a for a in args]
    return subprocess.run([*LIQWATCH, *args], capture_output=True, text=True, env=env, timeout=60)


def error_lines(p: subprocess.CompletedProcess) -> list[str]:
    """stderr without click's usage lines and blank lines."""
    return [line for line in p.stderr.splitlines()
            if line.strip() and not line.startswith(("Usage:", "Try '"))]


ABOUT_EV = "--from 2025-10-10T20:00:00Z --to 2025-10-10T21:00:00Z -c {CFG} --report {DIR}/r".split()

MISTAKES = [
    # (args, exit code, what the one error line must contain)
    # health / cascade: paths
    ("health -c {CFG} {DIR}", 2, "'EVENTS': '{DIR}' is a directory"),
    ("health -c {CFG} {NOPE}", 2, "'EVENTS': file '{NOPE}' does not exist"),
    ("health -c {NOPE} {EV}", 2, "'--config'"),
    ("health -c {DIR} {EV}", 2, "'--config'"),
    ("health -c {CFG} --deadletter {NODIR} {EV}", 2, "'--deadletter': cannot write"),
    ("health -c {CFG} --deadletter {DIR} {EV}", 2, "'--deadletter': "),
    ("health {EV}", 2, "'--config'"),
    ("health -c {CFG}", 2, "'EVENTS'"),
    # times
    ("health -c {CFG} --at yesterday {EV}", 2, "--at: 'yesterday' is neither"),
    ("health -c {CFG} --until 99999999999999999999 {EV}", 2, "--until: '99999999999999999999' is outside"),
    # cascade: scenario and severity
    ("cascade -c {CFG} --scenario nope --severity 0.1 {EV}", 2, "--scenario: unknown scenario 'nope'"),
    ("cascade -c {CFG} --scenario risk_off --severity lots {EV}", 2, "'--severity'"),
    ("cascade -c {CFG} --scenario risk_off --severity -0.1 {EV}", 2, "--severity: must be"),
    ("cascade -c {CFG} --scenario risk_off --severity inf {EV}", 2, "--severity: must be"),
    ("cascade -c {CFG} --scenario risk_off --severity 1 {EV}", 2,
     "--severity: 1 × the direction -1 of BTC in risk_off"),
    # scenario
    ("scenario nope", 2, "NAME: unknown scenario 'nope'"),
    ("scenario oct-2025 --seed -1", 2, "'--seed'"),
    ("scenario oct-2025 --accounts 0", 2, "'--accounts'"),
    ("scenario oct-2025 --accounts 99999999999", 2, "'--accounts'"),
    ("scenario oct-2025 --accounts 10 --out {DIR}", 2, "'--out' / '-o': "),
    ("scenario oct-2025 --accounts 10 --out {NODIR}", 2, "'--out' / '-o': cannot write"),
    ("scenario oct-2025 --no-events --config-out {NODIR}", 2, "'--config-out': cannot write"),
    ("scenario oct-2025 --no-events --config-out {DIR}", 2, "'--config-out': "),
    ("scenario oct-2025 --no-events --config-out {DIR}/c.yaml --index newest", 2, "--index: must be"),
    ("scenario oct-2025 --no-events", 2, "--no-events: nothing to write"),
    # produce / dump
    ("produce {DIR} --bootstrap {CLOSED}", 2, "'FILE': '{DIR}' is a directory"),
    ("produce {EV} --bootstrap 127.0.0.1:70000", 2, "--bootstrap: expected HOST:PORT"),
    ("produce {EV} --bootstrap {CLOSED} --rate -5", 2, "--rate: must be"),
    ("produce {EV} --bootstrap {CLOSED}", 1, "cannot reach Kafka at {CLOSED}: no broker answered"),
    ("produce {EV} --state-dir {FILE}", 2, "'--state-dir'"),
    ("produce {EV} --state-dir {DAMAGED}", 2, "--state-dir: cannot read"),
    ("produce {EV} --bootstrap {CLOSED} --unknown-to a/b", 2, "'--unknown-to': 'a/b' is not a Kafka topic name"),
    ("dump liqwatch.alerts --bootstrap {CLOSED} --out {DIR}", 2, "'--out' / '-o': "),
    ("dump liqwatch.alerts --bootstrap {CLOSED} --out {NODIR}", 2, "'--out' / '-o': cannot write"),
    ("dump liqwatch.alerts --bootstrap {CLOSED} --until-idle 0", 2, "--until-idle: must be"),
    # replay
    (f"replay {' '.join(ABOUT_EV)} --events {{EV}} --from 20:00", 2, "--from: '20:00' is neither"),
    ("replay --from 2025-10-10T22:00:00Z --to 2025-10-10T21:00:00Z -c {CFG} --report {DIR}/r --events {EV}", 2,
     "--to: 2025-10-10T21:00:00Z is before --from"),
    ("replay --from 1 --to 99999999999999999999 -c {CFG} --report {DIR}/r --events {EV}", 2, "--to: "),
    (f"replay {' '.join(ABOUT_EV)} --events {{DIR}}", 2, "'--events': file"),
    (f"replay {' '.join(ABOUT_EV)} --events {{EV}} --compare {{NOPE}}", 2, "'--compare': file"),
    ("replay --from 1 --to 2 -c {CFG} --report {FILE} --events {EV}", 2, "'--report': "),
    (f"replay {' '.join(ABOUT_EV)} --bootstrap {{CLOSED}}", 1, "cannot reach Kafka at {CLOSED}"),
    (f"replay {' '.join(ABOUT_EV)} --bootstrap nohost", 2, "--bootstrap: expected HOST:PORT"),
    # worker: fails at start, in seconds
    ("worker -c {CFG} --bootstrap {CLOSED}", 1,
     "cannot reach Kafka at {CLOSED}: no broker answered (is the stack up? `liqwatch stack status`)"),
    ("worker -c {CFG} --bootstrap 127.0.0.1:70000", 2, "--bootstrap: expected HOST:PORT"),
    ("worker -c {CFG} --bootstrap {CLOSED} --web-port 70000", 2, "'--web-port'"),
    ("worker -c {CFG} --state-dir {STATE}", 2, "--bootstrap: not given and no stack in"),
    ("worker -c {CFG} --bootstrap {CLOSED} --app-id a/b", 2, "'--app-id': 'a/b' is not a Kafka topic name"),
    ("worker -c {CFG} --bootstrap {CLOSED} --partitions 99999999999", 2, "'--partitions'"),
    ("worker -c {WEBHOOK} --bootstrap {CLOSED}", 2,
     "alerts.webhooks[0].secret_env: environment variable LIQWATCH_TEST_UNSET_SECRET is not set"),
    # stack, demo, bench, the receiver
    ("stack status --state-dir {FILE}", 2, "'--state-dir'"),
    ("stack status --state-dir {DAMAGED}", 1, "stack.json"),
    ("stack up --state-dir {DAMAGED}", 1, "stack.json"),
    ("stack up --kafka-port 70000", 2, "'--kafka-port'"),
    ("demo --accounts 10", 2, "'--accounts'"),
    ("demo --scenario nope", 2, "--scenario: unknown scenario 'nope'"),
    ("demo --speed inf", 2, "--speed: must be"),
    ("demo --report {FILE}", 2, "'--report': "),
    ("bench kernels --reference-sample 0", 2, "'--reference-sample'"),
    ("bench pipeline --state-dir {DAMAGED}", 1, "stack.json"),
    ("webhook-receiver --port 70000", 2, "'--port'"),
    ("nosuchcommand", 2, "No such command 'nosuchcommand'"),
]


@pytest.mark.parametrize("args,code,needle", MISTAKES, ids=[m[0] for m in MISTAKES])
def test_mistake_is_one_line_naming_the_argument(work, args, code, needle):
    p = run(args.split(), work)
    assert "Traceback" not in p.stdout + p.stderr, p.stderr
    assert p.returncode == code, p.stderr
    lines = error_lines(p)
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("error: ") and needle.format(**work) in lines[0], p.stderr


def test_config_problems_are_one_line_each_naming_the_field(work, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(Path(work["CFG"]).read_text().replace("venue: binance", "venue: kraken")
                   .replace("settlement: USDT", "settlement: EUR"))
    p = run(["health", "-c", str(bad), work["EV"]], work)
    assert "Traceback" not in p.stderr and p.returncode == 2, p.stderr
    lines = error_lines(p)
    assert len(lines) == 2, p.stderr
    assert all(line.startswith(f"error: --config {bad}: ") for line in lines), p.stderr
    assert any("liquidation.venue: unknown venue 'kraken'" in line for line in lines), p.stderr
    assert any("settlement: unknown asset 'EUR'" in line for line in lines), p.stderr


def test_worker_port_in_use_is_one_line(work):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        p = run(["worker", "-c", work["CFG"], "--bootstrap", work["CLOSED"], "--web-port", str(port)], work)
    assert "Traceback" not in p.stderr and p.returncode == 1, p.stderr
    assert error_lines(p) == [f"error: --web-port: cannot listen on 127.0.0.1:{port}: Address already in use "
                              "(another worker? give each its own --web-port)"], p.stderr


def test_events_from_stdin_still_work(work):
    """`-` is stdin, not a missing file."""
    env = {**os.environ, "LIQWATCH_STATE_DIR": work["STATE"]}
    p = subprocess.run([*LIQWATCH, "health", "-c", work["CFG"], "-"], input=Path(work["EV"]).read_text(),
                       capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr


def test_batch_commands_need_no_webhook_secret(work):
    """The secret is checked when a worker starts, not when the config loads: `health` runs without it."""
    p = run(["health", "-c", work["WEBHOOK"], work["EV"]], work)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr


def test_stack_ports_must_differ(tmp_path):
    from liqwatch.tools.stack import StackConfig, StackPorts
    from liqwatch.cli.stack import _port_clash

    assert _port_clash(StackConfig(tmp_path, StackPorts())) is None
    msg = _port_clash(StackConfig(tmp_path, StackPorts(kafka=9090)))
    assert msg is not None and "--kafka-port" in msg and "--prometheus-port" in msg and "9090" in msg
    # a cluster's nodes 2 and 3 listen 100 and 200 above: they must not land on another service's port
    msg = _port_clash(StackConfig(tmp_path, StackPorts(kafka=9092, prometheus=9192), brokers=3))
    assert msg is not None and "node 2" in msg and "--prometheus-port" in msg and "9192" in msg
    assert _port_clash(StackConfig(tmp_path, StackPorts(), brokers=3)) is None
