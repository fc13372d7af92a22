"""Helpers for pipeline tests: worker processes on the real broker, topic reads, comparison with the batch run."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from liqwatch.kafka import Connection
from liqwatch.tools import transport
from liqwatch.replay.batch import load_events
from liqwatch.config import load_config
from tests.conftest import close
from tests.integration.conftest import free_ports


def kafka_of(bootstrap: str | Connection) -> Connection:
    """A bootstrap string is a PLAINTEXT connection; a Connection (an `--auth scram` stack's) is itself."""
    return bootstrap if isinstance(bootstrap, Connection) else Connection.plain(bootstrap)


def produce(path: Path, bootstrap: str | Connection, prefix: str, partitions: int) -> transport.ProduceReport:
    return asyncio.run(transport.produce_file(path, kafka_of(bootstrap), partitions=partitions, prefix=prefix,
                                              progress=False))


def read_topic(bootstrap: str | Connection, topic: str) -> list[dict]:
    buf = io.BytesIO()
    asyncio.run(transport.dump_topic(topic, kafka_of(bootstrap), buf, until_idle=0.3, progress=False))
    return [json.loads(line) for line in buf.getvalue().splitlines() if line.strip()]


OUTPUT_KEYS = {  # what makes an output record one event: none may be on its topic twice
    "alerts": lambda a: (a["id"], a["state"], a["severity"], a["ts"]),
    "marks": lambda m: (m.get("asset") or m.get("instrument"), m["ts"]),
    "cascades": lambda c: (c["scenario"], c["severity"], c["ts"]),
    "health": lambda h: (h["account"], h["isolated"], h["ts"]),
}


def outputs_once(bootstrap: str | Connection, prefix: str) -> dict[str, int]:
    """How many records each output topic holds; AssertionError naming the first record found twice (same key,
    whether or not the content is the same)."""
    counts = {}
    for out, key in OUTPUT_KEYS.items():
        seen: dict = {}
        for rec in read_topic(bootstrap, f"{prefix}liqwatch.{out}"):
            k = key(rec)
            assert k not in seen, (f"{out}: published twice", seen[k], rec)
            seen[k] = rec
        counts[out] = len(seen)
    return counts


@dataclass
class Worker:
    config: Path
    bootstrap: str | Connection
    prefix: str
    worker_id: str
    partitions: int
    log_dir: Path
    port: int = field(default_factory=lambda: free_ports(1)[0])
    proc: subprocess.Popen | None = None
    extra_args: tuple[str, ...] = ()

    def start(self) -> "Worker":
        log = (self.log_dir / f"{self.worker_id}.log").open("ab")
        kafka = kafka_of(self.bootstrap)
        cmd = [sys.executable, "-m", "liqwatch", "worker", "-c", str(self.config), *kafka.options(),
               "--topic-prefix", self.prefix, "--app-id", self.prefix.rstrip("."), "--web-port", str(self.port),
               "--worker-id", self.worker_id, "--partitions", str(self.partitions), "--idle-s", "1.0",
               *self.extra_args]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **kafka.child_env()}
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        return self

    def status(self) -> dict | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=2) as r:
                return json.loads(r.read())
        except OSError:
            return None

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
            return r.read().decode()

    def kill(self, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def log_tail(self, n: int = 40) -> str:
        text = (self.log_dir / f"{self.worker_id}.log").read_text(errors="replace").splitlines()
        return "\n".join(text[-n:])


def metric_sum(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def batch_results(config: Path, events: Path) -> tuple[dict[tuple[str, str | None], dict],
                                                       dict[tuple[str, float], dict]]:
    """Every margin account's health, keyed (account, isolated instrument or None), and every cascade."""
    cfg = load_config(config)
    engine, _ = load_events(cfg, events)
    health = {(r["account"], r["isolated"]): r for r in engine.health_rows()}
    cascades = {(s, v): engine.cascade(s, v) for s in cfg.stress.scenarios for v in cfg.stress.severities}
    return health, cascades


def differences(bootstrap: str, prefix: str, health: dict[tuple[str, str | None], dict], cascades: dict) -> list[str]:
    """What the topics say that the batch run does not (empty when the live run has converged on it)."""
    last: dict[tuple[str, str | None], dict] = {}
    for h in read_topic(bootstrap, prefix + "liqwatch.health"):
        last[(h["account"], h["isolated"])] = h
    out = []
    for aid, want in health.items():
        got = last.get(aid)
        if got is None:
            out.append(f"{aid}: no health event")
            continue
        for f in ("equity", "maintenance", "health", "liquidation_severity"):
            if not close(got[f], want[f], rel=1e-9, abs_=1e-9):
                out.append(f"{aid}.{f}: live {got[f]} batch {want[f]}")
        if got["liquidatable"] != want["liquidatable"]:
            out.append(f"{aid}.liquidatable: live {got['liquidatable']} batch {want['liquidatable']}")
    extra = set(last) - set(health)
    out += [f"{a}: live health event for an account the batch run does not have" for a in sorted(extra)[:5]]
    lastc: dict = {}
    for c in read_topic(bootstrap, prefix + "liqwatch.cascades"):
        lastc[(c["scenario"], c["severity"])] = c
    for key, want in cascades.items():
        got = lastc.get(key)
        if got is None or got["ts"] != want["ts"]:
            out.append(f"cascade {key}: {'none' if got is None else 'ts ' + str(got['ts'])} (batch ts {want['ts']})")
            continue
        for f in ("rounds", "liquidated_accounts", "runaway", "partial_liquidations", "round_partial"):
            if got[f] != want[f]:
                out.append(f"cascade {key}.{f}: live {got[f]} batch {want[f]}")
        for f in ("liquidated_notional", "amplification", "fees_paid_usd", "deficit_usd"):
            if not close(got[f], want[f], rel=1e-9):
                out.append(f"cascade {key}.{f}: live {got[f]} batch {want[f]}")
        fund, book = got.get("insurance_fund") or {}, want.get("insurance_fund") or {}
        for f in ("end_usd", "drawdown_usd", "uncovered_usd", "adl_notional_usd", "adl_closed_notional_usd",
                  "deleveraged_accounts"):
            if not close(fund.get(f), book.get(f), rel=1e-9, abs_=1e-3):
                out.append(f"cascade {key}.insurance_fund.{f}: live {fund.get(f)} batch {book.get(f)}")
    return out


def wait_converged(bootstrap: str, prefix: str, health: dict, cascades: dict, workers: list[Worker],
                   timeout: float = 180.0) -> list[str]:
    deadline = time.monotonic() + timeout
    diff: list[str] = ["not checked"]
    while time.monotonic() < deadline:
        for w in workers:
            if w.proc is not None and w.proc.poll() is not None:
                raise AssertionError(f"{w.worker_id} exited with {w.proc.returncode}:\n{w.log_tail()}")
        time.sleep(3)
        diff = differences(bootstrap, prefix, health, cascades)
        if not diff:
            return diff
    return diff


def settle(ws: list[Worker], partitions: int, timeout: float = 120.0) -> None:
    """Wait until the group has settled: every worker up with partitions, all partitions owned once, one leader,
    no rebalance still in progress in any worker (a worker that joins later would move partitions and the leadership
    in the middle of the data)."""
    deadline = time.monotonic() + timeout
    while True:
        st = [w.status() for w in ws]
        if all(st) and all(s["partitions"] and not s["rebalancing"] for s in st) and \
                sum(len(s["partitions"]) for s in st) == partitions and sum(s["leader"] for s in st) == 1:
            return
        assert time.monotonic() < deadline, (st, [w.log_tail() for w in ws])
        time.sleep(0.5)


def produce_paced(path: Path, bootstrap: str, prefix: str, partitions: int, speed: float) -> subprocess.Popen:
    """`liqwatch produce --speed` as a process (event time `speed`× real time), to break things meanwhile; its
    output goes to `<path>.produce.log` (`producer.log` on the returned process)."""
    log = Path(f"{path}.produce.log")
    with log.open("ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "liqwatch", "produce", str(path), "--bootstrap", bootstrap,
                                 "--topic-prefix", prefix, "--partitions", str(partitions), "--speed", str(speed)],
                                stdout=out, stderr=subprocess.STDOUT)
    proc.log = log  # type: ignore[attr-defined]
    return proc
