"""Scenarios and the batch CLI, end to end through the `liqwatch` command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from liqwatch.replay.batch import load_events
from liqwatch.config import load_config
from liqwatch.scenarios import EVENING_SEVERITY, T0, config_path

LIQWATCH = [sys.executable, "-m", "liqwatch"]
PRE_CRASH = T0 + 45 * 60_000  # 20:45 UTC, five minutes before the tariff post


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([*LIQWATCH, *args], capture_output=True, text=True, check=check)


@pytest.fixture(scope="module")
def oct_events(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("oct") / "oct.jsonl"
    run("scenario", "oct-2025", "--accounts", "5000", "--out", str(out))
    return out


def test_scenario_is_deterministic_and_ordered(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    run("scenario", "calm", "--accounts", "300", "--seed", "3", "--out", str(a))
    run("scenario", "calm", "--accounts", "300", "--seed", "3", "--out", str(b))
    assert a.read_bytes() == b.read_bytes()
    events = [json.loads(x) for x in a.read_text().splitlines()]
    assert [e["ts"] for e in events] == sorted(e["ts"] for e in events)
    assert sum(e["type"] == "account" for e in events) == 300
    assert {e["type"] for e in events} == {"tick", "reference", "account"}


def test_oct_2025_price_path(oct_events):
    cfg = load_config(config_path("oct-2025", "prefix"))
    low = {}
    for line in oct_events.open():
        e = json.loads(line)
        if e["type"] == "tick":
            key = f"{e['venue']}:{e['symbol']}"
            low[key] = min(low.get(key, 1e18), (e["bid"] + e["ask"]) / 2)
    assert 0.6 < low["binance:USDe/USDT"] < 0.7            # $0.65 on Binance
    assert low["bybit:USDe/USDT"] > 0.9                     # elsewhere near $1
    assert 400 < low["binance:WBETH/USDT"] < 480            # WBETH near $430
    assert 30 < low["binance:BNSOL/USDT"] < 40              # BNSOL near $34.90
    assert 100_000 < low["binance:BTC/USDT"] < 103_000      # Binance BTC low ~$101.5k
    assert cfg.assets["USDe"].index.constituents[0].source == "binance:USDe/USDT"


def test_cascade_amplification_prefix_vs_fixed(oct_events):
    """The evening's move from the 20:45 state: the pre-fix index feeds the cascade, the fixed one does not."""
    results = {}
    for variant in ("prefix", "fixed"):
        engine, _ = load_events(load_config(config_path("oct-2025", variant)), oct_events, until=PRE_CRASH)
        results[variant] = engine.cascade("risk_off", EVENING_SEVERITY)
    pre, fixed = results["prefix"], results["fixed"]
    assert pre["amplification"] > 1.5, pre["amplification"]
    assert fixed["amplification"] < 1.1, fixed["amplification"]
    assert pre["liquidated_notional"] > 1.5 * fixed["liquidated_notional"]
    assert pre["final_index"]["USDe"] < 0.5 < 0.97 <= fixed["final_index"]["USDe"]
    # round 1 is the shock alone: the same accounts fall under both index designs
    assert pre["round_notional"][0] == pytest.approx(fixed["round_notional"][0], rel=0.01)


def test_health_cli_fields_and_order(oct_events, tmp_path):
    cfg = tmp_path / "cfg.yaml"
    run("scenario", "oct-2025", "--no-events", "--config-out", str(cfg))
    out = run("health", "--config", str(cfg), "--until", "2025-10-10T20:45:00Z", str(oct_events)).stdout
    rows = [json.loads(x) for x in out.splitlines()]
    assert len(rows) == 5000
    assert [r["account"] for r in rows] == sorted(r["account"] for r in rows)
    assert set(rows[0]) == {"account", "isolated", "equity", "maintenance", "health", "liquidatable",
                            "liquidation_severity"}
    assert all(r["isolated"] is None for r in rows)  # the scenario's positions are all in cross margin
    sev = [r["liquidation_severity"] for r in rows if r["liquidation_severity"] is not None]
    assert sev and all(0 <= s <= 0.2 for s in sev)


def test_health_positions_cli(oct_events, tmp_path):
    cfg = tmp_path / "cfg.yaml"
    run("scenario", "oct-2025", "--no-events", "--config-out", str(cfg))
    out = run("health", "--config", str(cfg), "--until", "2025-10-10T20:45:00Z", "--positions", str(oct_events)).stdout
    rows = [json.loads(x) for x in out.splitlines()]
    assert set(rows[0]) == {"account", "margin", "instrument", "qty", "mark", "liquidation_price",
                            "bankruptcy_price", "adl_rank"}
    assert all(r["adl_rank"] is None or 0 < r["adl_rank"] <= 1 for r in rows)
    assert [r["account"] for r in rows] == sorted(r["account"] for r in rows)
    engine, _ = load_events(load_config(cfg), oct_events, until=PRE_CRASH)
    assert rows == json.loads(json.dumps(engine.position_rows()))
    # the October books: leveraged longs, so most positions have a liquidation price below their mark, and the
    # bankruptcy price of a long lies below its liquidation price
    longs = [r for r in rows if r["qty"] > 0 and r["liquidation_price"] is not None]
    assert len(longs) > 1000
    below = [r for r in longs if r["liquidation_price"] < r["mark"]]
    assert len(below) > 0.9 * len(longs)
    assert all(r["bankruptcy_price"] is None or r["bankruptcy_price"] < r["liquidation_price"] for r in below)


def test_liqmap_cli(oct_events, tmp_path):
    cfg = tmp_path / "cfg.yaml"
    run("scenario", "oct-2025", "--no-events", "--config-out", str(cfg))
    args = ("liqmap", "-c", str(cfg), "--until", str(PRE_CRASH), "--asset", "ETH", "--range", "0.2", "--step", "0.05")
    rows = [json.loads(x) for x in run(*args, "--json", str(oct_events)).stdout.splitlines()]
    assert [r["move"] for r in rows] == pytest.approx([-0.2, -0.15, -0.1, -0.05, 0, 0.05, 0.1, 0.15, 0.2])
    engine, _ = load_events(load_config(cfg), oct_events, until=PRE_CRASH)
    assert rows == json.loads(json.dumps(engine.liquidation_map("ETH", [0.8, 0.85, 0.9, 0.95, 1.05, 1.1, 1.15,
                                                                         1.2])))
    # the October books are long: a fall liquidates more than a rise
    assert rows[0]["long_usd"] > 10 * rows[-1]["long_usd"]
    table = run(*args, str(oct_events)).stdout
    assert "ETH: liquidations" in table and "-20%" in table and "█" in table


def test_cascade_cli_matches_engine(oct_events, tmp_path):
    cfg = tmp_path / "cfg.yaml"
    run("scenario", "oct-2025", "--no-events", "--config-out", str(cfg), "--index", "fixed")
    out = json.loads(run("cascade", "-c", str(cfg), "--scenario", "risk_off", "--severity", "0.05",
                         "--until", str(PRE_CRASH), str(oct_events)).stdout)
    for f in ("rounds", "liquidated_accounts", "liquidated_notional", "net_sold", "final_index", "final_prices",
              "amplification", "runaway"):
        assert f in out
    engine, _ = load_events(load_config(cfg), oct_events, until=PRE_CRASH)
    assert out["liquidated_notional"] == engine.cascade("risk_off", 0.05)["liquidated_notional"]


@pytest.mark.parametrize("args,needle", [
    (["cascade", "-c", "CFG", "--scenario", "nope", "--severity", "0.1", "EV"], "--scenario: unknown scenario 'nope'"),
    (["cascade", "-c", "CFG", "--scenario", "risk_off", "--severity", "-1", "EV"], "--severity: must be"),
    (["health", "-c", "CFG", "--at", "yesterday", "EV"], "--at: 'yesterday' is neither"),
    (["health", "-c", "CFG", "missing.jsonl"], "Invalid value for 'EVENTS': file 'missing.jsonl' does not exist"),
    (["scenario", "nope"], "NAME: unknown scenario 'nope'"),
    (["liqmap", "-c", "CFG", "--asset", "NOPE", "EV"], "--asset: 'NOPE' has no index"),
    (["liqmap", "-c", "CFG", "--range", "1.5", "EV"], "--range: must be between 0 and 1"),
    (["liqmap", "-c", "CFG", "--step", "0", "EV"], "--step: must be > 0"),
    (["health", "-c", "BADCFG", "EV"], "assets.BTC.index.constituents[0].weight: must be > 0"),
])
def test_bad_arguments_name_the_argument(tmp_path, args, needle):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(config_path("oct-2025").read_text())
    bad = tmp_path / "bad.yaml"
    bad.write_text(config_path("oct-2025").read_text().replace('"binance:BTC/USDT", weight: 0.4',
                                                               '"binance:BTC/USDT", weight: 0'))
    ev = tmp_path / "ev.jsonl"
    ev.write_text(json.dumps({"type": "tick", "venue": "binance", "symbol": "BTC/USDT", "ts": 1, "bid": 1,
                              "ask": 1}) + "\n")
    subst = {"CFG": str(cfg), "BADCFG": str(bad), "EV": str(ev)}
    p = run(*[subst.get(a, a) for a in args], check=False)
    assert p.returncode == 2 and needle in p.stderr, p.stderr
    assert "Traceback" not in p.stderr


def test_help_teaches():
    for cmd in ("health", "cascade", "scenario", "liqmap"):
        out = run(cmd, "--help").stdout
        assert "Example" in out
