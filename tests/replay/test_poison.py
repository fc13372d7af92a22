"""Poison records (tests/fuzz.py) through every entry point that reads input: each is rejected with a reason, none
stops the run, and the valid records give exactly the numbers they give alone."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from liqwatch import scenarios
from liqwatch.config import load_config
from liqwatch.events import BadEvent
from liqwatch.core.ingest import Gate
from liqwatch.scenarios import T0, config_path
from tests import fuzz

LIQWATCH = [sys.executable, "-m", "liqwatch"]
PRE, FIXED = str(config_path("oct-2025", "prefix")), str(config_path("oct-2025", "fixed"))
MIN = 60_000


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*LIQWATCH, *args], capture_output=True, text=True)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> tuple[Path, Path, int]:
    """(clean file, the same with >= 10,000 poison lines spread through it, number of poison lines)."""
    d = tmp_path_factory.mktemp("poison")
    valid = [json.dumps(ev).encode() for ev in scenarios.generate("oct-2025", 400, seed=5)]
    poison = [raw for _, raw in fuzz.corpus(per_kind=220)]
    ts = [json.loads(v)["ts"] for v in valid]
    mixed = fuzz.interleave(valid, poison)
    # a tick of a real book dated a day ahead, right after a valid record: it must not poison its key
    for i, raw in sorted(fuzz.ahead_of_stream(ts), reverse=True):
        mixed.insert(mixed.index(valid[i]) + 1, raw)
    clean, dirty = d / "clean.jsonl", d / "dirty.jsonl"
    clean.write_bytes(b"\n".join(valid) + b"\n")
    dirty.write_bytes(b"\n".join(mixed) + b"\n")
    return clean, dirty, len(mixed) - len(valid)


def test_corpus_covers_every_kind_and_only_bad_events_escape():
    lines = fuzz.corpus()
    assert len(lines) >= 10_000 and len({k for k, _ in lines}) >= 40
    rejected: Counter = Counter()
    for cfg in (PRE, FIXED):
        gate = Gate(load_config(cfg))
        for kind, raw in lines:
            try:
                ev = gate.admit(raw)
            except BadEvent as e:  # the only exception the door lets out
                rejected[e.kind] += 1
                assert e.reason and "\n" not in e.reason, (kind, e.reason)
                continue
            raise AssertionError(f"{kind}: admitted {ev!r}")
    assert set(rejected) >= {"invalid_json", "bad_ts", "out_of_bounds", "unknown_source", "bad_number"}, rejected


@pytest.mark.slow
def test_batch_health_and_cascade_equal_the_clean_run(files, tmp_path):
    clean, dirty, n_poison = files
    at = str(T0 + 150 * MIN)
    want = run("health", "-c", PRE, "--at", at, str(clean))
    assert want.returncode == 0, want.stderr
    dead = tmp_path / "dead.jsonl"
    got = run("health", "-c", PRE, "--at", at, "--deadletter", str(dead), str(dirty))
    assert got.returncode == 0, got.stderr
    assert got.stdout == want.stdout  # byte for byte: poison changed nothing
    assert "Traceback" not in got.stderr
    rows = [json.loads(x) for x in dead.read_text().splitlines()]
    assert len(rows) == n_poison and all(r["reason"] and r["kind"] for r in rows)
    # nothing lost: every poison line is in the dead-letter file, byte for byte
    originals = Counter(r["original"].encode() if "original" in r else base64.b64decode(r["original_base64"])
                        for r in rows)
    lines = dirty.read_bytes().split(b"\n")
    clean_lines = set(clean.read_bytes().split(b"\n"))
    assert originals == Counter(x for x in lines if x and x not in clean_lines)
    kinds = Counter(r["kind"] for r in rows)
    assert kinds["ahead_of_stream"] == 50, kinds

    for cfg in (PRE, FIXED):
        args = ("cascade", "-c", cfg, "--scenario", "risk_off", "--severity", "0.05", "--at", at)
        a, b = run(*args, str(clean)), run(*args, str(dirty))
        assert a.returncode == 0 and b.returncode == 0, b.stderr
        assert b.stdout == a.stdout
        assert "Infinity" not in b.stdout and "NaN" not in b.stdout
        json.loads(b.stdout)


@pytest.mark.slow
def test_replay_of_a_poisoned_file_equals_the_clean_replay(files, tmp_path):
    clean, dirty, _ = files
    out = {}
    for name, path in (("clean", clean), ("dirty", dirty)):
        r = run("replay", "--events", str(path), "--from", str(T0 + 40 * MIN), "--to", str(T0 + 100 * MIN),
                "-c", PRE, "--report", str(tmp_path / name))
        assert r.returncode == 0, r.stderr
        assert "Traceback" not in r.stderr
        out[name] = (tmp_path / name / "alerts-oct-2025-prefix.jsonl").read_text()
    assert out["dirty"] == out["clean"] and out["clean"].count("\n") > 0
