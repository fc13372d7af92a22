"""`liqwatch replay` from JSONL files: the report, its determinism, the window's edges, and the numbers behind it.

The Kafka path and the equality with live alerts are in tests/integration/test_replay_kafka.py.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from liqwatch import scenarios
from liqwatch.replay.batch import load_events
from liqwatch.config import load_config
from liqwatch.core.engine import Engine
from liqwatch.events import decode
from liqwatch.core.layout import Layout
from liqwatch.risk.limits import haircut_fraction, liquidity_limits, position_limit
from liqwatch.replay.replayer import read_file, replay
from liqwatch.scenarios import T0

LIQWATCH = [sys.executable, "-m", "liqwatch"]
PRE = str(scenarios.config_path("oct-2025", "prefix"))
FIXED = str(scenarios.config_path("oct-2025", "fixed"))
MIN = 60_000


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*LIQWATCH, *args], capture_output=True, text=True)


def iso(ts: int) -> str:
    from liqwatch.replay.replayer import iso as _iso

    return _iso(ts)


@pytest.fixture(scope="module")
def oct_file(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("replay") / "oct.jsonl"
    with out.open("w") as f:
        for ev in scenarios.generate("oct-2025", 1500, seed=7):
            f.write(json.dumps(ev) + "\n")
    return out


@pytest.fixture(scope="module")
def report(oct_file, tmp_path_factory) -> Path:
    """The evening from 20:30 to the end of the record: the index as it was, compared with the fix."""
    out = tmp_path_factory.mktemp("report") / "pm"
    r = run("replay", "--events", str(oct_file), "--from", "2025-10-10T20:30:00Z", "--to", str(T0 + 181 * MIN),
            "-c", PRE, "--compare", FIXED, "--report", str(out))
    assert r.returncode == 0, r.stderr
    return out


def _png_has_data(path: Path) -> None:
    import matplotlib.image as mpimg

    raw = path.read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n", path
    img = mpimg.imread(str(path))
    assert img.shape[0] > 200 and img.shape[1] > 400, (path, img.shape)
    rgb = img[::3, ::3, :3]
    # a plot with data has many distinct colours and a good share of non-white pixels
    q = (rgb.reshape(-1, 3) * 255).astype(np.int64)
    colours = np.unique(q[:, 0] << 16 | q[:, 1] << 8 | q[:, 2]).shape[0]
    inked = float((rgb.min(axis=2) < 0.9).mean())
    assert colours > 50 and inked > 0.03, (path, colours, inked)


def test_report_has_every_part_and_the_fix_liquidates_less(report):
    summary = json.loads((report / "summary.json").read_text())
    html = (report / "index.html").read_text()
    pngs = sorted(p.name for p in report.glob("*.png"))
    assert pngs == sorted(["alerts.png", "cascades.png", "health.png", "limits.png", "liquidatable.png", "liqmap.png"] +
                          [f"prices-{a}.png" for a in ("BTC", "ETH", "SOL", "USDe", "WBETH", "BNSOL")])
    for p in pngs:
        _png_has_data(report / p)
        assert f"src='{p}'" in html
    pre, fixed = summary["configs"]
    assert (pre["name"], fixed["name"]) == ("oct-2025-prefix", "oct-2025-fixed")
    assert 0 < fixed["totals"]["liquidated_usd"] < pre["totals"]["liquidated_usd"]
    # the liquidation map of every underlying, with longs waiting below the price; the fund's worst cascade
    assert set(pre["liqmap"]["assets"]) == {"BTC", "ETH", "SOL"}
    btc = pre["liqmap"]["assets"]["BTC"]
    assert sum(v for m, v in zip(btc["move"], btc["added_usd"]) if m < 0) > 0
    assert pre["totals"]["max_adl_notional_usd"] >= fixed["totals"]["max_adl_notional_usd"]
    # the positions nearest liquidation, nearest first, each with its price on the page
    near = pre["nearest_liquidation"]
    assert len(near) == 15 and [abs(r["distance"]) for r in near] == sorted(abs(r["distance"]) for r in near)
    assert all(r["liquidation_price"] == pytest.approx(r["mark"] * (1 + r["distance"])) for r in near)
    assert "Positions nearest liquidation" in html and near[0]["account"] in html
    cmp = summary["comparisons"][0]
    assert cmp["liquidated_usd_avoided"] == pytest.approx(pre["totals"]["liquidated_usd"] -
                                                          fixed["totals"]["liquidated_usd"])
    # as it was: a critical cascade_risk before the first wave, still open through the whole wave; the fix raises
    # one only once its (smaller) wave is under way, later, and never a USDe depeg critical
    assert pre["lead_time_s"] is not None and pre["lead_time_s"] > 0
    crisis = [e for e in pre["episodes"] if e["kind"] == "cascade_risk" and e["severity"] == "critical"]
    assert len(crisis) == 1 and crisis[0]["critical_at"] < pre["first_wave"]
    assert crisis[0]["resolved"] is None or crisis[0]["resolved"] > pre["first_wave"] + 15 * 60_000
    assert "%" in crisis[0]["summary"] and "of all accounts' notional" in crisis[0]["summary"]
    fixed_cr = fixed["first_critical"].get("cascade_risk")
    assert fixed_cr is None or fixed_cr >= fixed["first_critical"]["liquidations"]
    assert "depeg" in pre["first_critical"] and not any(
        a["kind"] == "depeg" and a["subject"] == "USDe" and a["severity"] == "critical" for a in fixed["alerts"])
    change = {(r["kind"], r["subject"], r["severity"]): r["change"] for r in cmp["alerts"]}
    assert change[("cascade_risk", "risk_off", "critical")] in ("later", "not at all")
    assert change[("depeg", "USDe", "critical")] == "not at all"
    # USDe under the old index followed Binance's book down; its sources and the limits say why
    usde = [x for x in pre["series"]["index"]["USDe"] if x is not None]
    assert min(usde) < 0.7 and min(x for x in fixed["series"]["index"]["USDe"] if x is not None) > 0.9
    lim = {x["asset"]: x for x in pre["limits"]}
    assert lim["USDe"]["limit_usd"] is not None and {x["asset"]: x for x in fixed["limits"]}["USDe"]["limit_usd"] is None
    for c in (pre, fixed):
        for f in ("alerts", "dropped_sources", "episodes", "series", "cascade_series", "limits"):
            assert c[f], f
        s = c["series"]
        assert len(s["t"]) == len(s["liquidatable_usd"]) == len(s["bands"]["liquidatable"]) > 100
    # every alert also in the live topic's format, one file per config
    lines = (report / "alerts-oct-2025-prefix.jsonl").read_text().splitlines()
    assert [json.loads(x) for x in lines] == pre["alerts"]
    for text in ("What oct-2025-fixed would have changed", "Liquidity-aware position limits", "Alert timeline",
                 "Sources left out of the index", "lead time"):
        assert text in html


@pytest.mark.slow
def test_same_window_twice_gives_identical_summary(oct_file, report, tmp_path):
    out = tmp_path / "again"
    r = run("replay", "--events", str(oct_file), "--from", "2025-10-10T20:30:00Z", "--to", str(T0 + 181 * MIN),
            "-c", PRE, "--compare", FIXED, "--report", str(out))
    assert r.returncode == 0, r.stderr
    assert (out / "summary.json").read_bytes() == (report / "summary.json").read_bytes()


def test_window_edges_are_respected(oct_file, tmp_path):
    """A USDe crash in the minute before the window (no warm-up) and in the minute after it must not show anywhere
    (a minute: depeg fires once it has held for 30 s)."""
    lo, hi = T0 + 10 * MIN, T0 + 40 * MIN   # calm: USDe at 1.00 on every venue
    path = tmp_path / "edges.jsonl"
    crashed = 0
    with path.open("w") as f:
        for line in oct_file.read_text().splitlines(keepends=True):
            ev = json.loads(line)
            if ev["type"] == "tick" and ev["venue"] == "binance" and ev["symbol"] == "USDe/USDT" and \
                    (lo - 60_000 <= ev["ts"] < lo or hi < ev["ts"] <= hi + 60_000):
                line = json.dumps(ev | {"bid": 0.30, "ask": 0.31}) + "\n"
                crashed += 1
            f.write(line)
    assert crashed >= 50
    cfg = load_config(Path(PRE))
    window = read_file(path, lo, hi, warmup_ms=0)
    assert window.skipped_before > 0 and window.skipped_after > 0 and not window.complete
    assert all(lo <= r.timestamp <= hi for r in window.market)
    run_ = replay(cfg, window, "pre")
    ts = [s["t"] for s in run_.samples]
    assert ts and min(ts) >= lo and max(ts) <= hi
    usde = [s["index"]["USDe"] for s in run_.samples if s["index"]["USDe"] is not None]
    assert usde and min(usde) > 0.99
    assert not [a for a in run_.alerts if a["kind"] == "depeg"]
    # the same file with the crash inside the window: it is seen (the test above could fail)
    inside = replay(cfg, read_file(path, lo - 60_000, hi + 60_000, warmup_ms=0), "pre")
    assert any(a["kind"] == "depeg" and a["subject"] == "USDe" for a in inside.alerts)


def test_empty_window_is_a_clear_error(oct_file, tmp_path):
    out = tmp_path / "pm"
    r = run("replay", "--events", str(oct_file), "--from", "2024-01-01T00:00:00Z", "--to", "2024-01-01T01:00:00Z",
            "-c", PRE, "--report", str(out))
    assert r.returncode == 1
    assert "empty window" in r.stderr and "no tick or reference between 2024-01-01T00:00:00Z" in r.stderr
    assert "2025-10-10T20:00:00Z" in r.stderr  # where the data is
    assert not out.exists()


@pytest.mark.parametrize("args, field", [
    (["--from", "yesterday", "--to", "2025-10-10T21:00:00Z"], "--from"),
    (["--from", "2025-10-10T21:00:00Z", "--to", "2025-10-10T20:00:00Z"], "--to"),
    (["--from", "2025-10-10T20:00:00Z", "--to", "2025-10-10T21:00:00Z", "--warmup", "soon"], "--warmup"),
    (["--from", "2025-10-10T20:00:00Z", "--to", "2025-10-10T21:00:00Z", "--compare", "nope.yaml"], "--compare"),
])
def test_bad_arguments_name_the_option(oct_file, tmp_path, args, field):
    r = run("replay", "--events", str(oct_file), "-c", PRE, "--report", str(tmp_path / "pm"), *args)
    assert r.returncode == 2 and field in r.stderr, r.stderr
    assert not (tmp_path / "pm").exists()


def test_final_evaluation_equals_the_batch_commands(oct_file):
    """At the end of the record the replay evaluates like an idle worker: its numbers are `liqwatch health` and
    `liqwatch cascade` on the same events."""
    cfg = load_config(Path(PRE))
    run_ = replay(cfg, read_file(oct_file, T0 + 150 * MIN, T0 + 200 * MIN, warmup_ms=35 * MIN), "pre")
    engine, _ = load_events(cfg, oct_file)
    last = run_.samples[-1]
    assert last["t"] == engine.max_ts
    rows = engine.health_rows()
    assert last["liquidatable_accounts"] == sum(r["liquidatable"] for r in rows)
    assert last["accounts"] == len(rows)
    final = run_.cascade_samples[-1]
    assert final["t"] == engine.max_ts
    for c in final["cascades"]:
        want = engine.cascade(c["scenario"], c["severity"])
        assert c["rounds"] == want["rounds"] and c["runaway"] == want["runaway"]
        assert math.isclose(c["liquidated_usd"], want["liquidated_notional"], rel_tol=1e-9, abs_tol=1e-6)
        assert math.isclose(c["amplification"], want["amplification"], rel_tol=1e-9)


# -- liquidity-aware limits ----------------------------------------------------------------------------------------
def test_haircut_fraction_by_brackets():
    b = [(10e6, 0.05), (None, 0.10)]
    assert haircut_fraction(b, 5e6) == pytest.approx(0.05)
    assert haircut_fraction(b, 20e6) == pytest.approx((0.5e6 + 1e6) / 20e6)
    assert haircut_fraction([], 1e6) == 0.0


def _priced(cfg, ts: int = T0):
    eng = Engine(cfg)
    for ev in scenarios.generate("calm", 50, seed=1):
        if ev["ts"] > ts + 30_000:
            break
        eng.apply(decode(json.dumps(ev)))
    return eng


def test_limit_of_a_single_book_index_is_the_closed_form():
    """USDe as it was: the index is Binance's book alone (weight 1), linear depth $20M per 1%, haircut 5% to $10M
    then 10%. Selling v moves the index by v / (100 × depth) = v / 2e9; the haircut is 0.1 − 5e5 / v above $10M.
    Equal at v² − 2e8·v + 1e15 = 0: v = (2e8 + √3.6e16) / 2 ≈ $194.87M."""
    cfg = load_config(Path(PRE))
    eng = _priced(cfg)
    lay = eng.layout
    limit, per_million = position_limit(cfg, lay, eng.prices(), lay.asset_id["USDe"])
    assert limit == pytest.approx((2e8 + math.sqrt(3.6e16)) / 2, rel=1e-5)
    assert per_million == pytest.approx(1e6 / 2e9, rel=1e-9)


def test_limits_follow_the_index_design():
    """The fixed USDe index reads the redemption rate: selling on Binance cannot push it past the haircut. WBETH
    as it was reads Binance's book at 20%: bounded, but higher than a book read alone would give."""
    pre, fixed = load_config(Path(PRE)), load_config(Path(FIXED))
    for cfg in (pre, fixed):
        eng = _priced(cfg)
        accounts = eng.accounts.view()
        limits = {x["asset"]: x for x in liquidity_limits(cfg, Layout(cfg), eng.prices(), accounts)}
        if cfg is pre:
            assert limits["USDe"]["limit_usd"] is not None and limits["WBETH"]["limit_usd"] is not None
            w = limits["WBETH"]
            # 20% weight on a $600k-per-1% book: 0.2 × v / 6e7 per unit at small size
            assert w["index_drop_per_1m_usd"] == pytest.approx(0.2 * 1e6 / 6e7, rel=0.02)
            assert w["largest_usd"] > 0 and w["held_usd"] >= w["largest_usd"]
        else:
            assert limits["USDe"]["limit_usd"] is None and limits["WBETH"]["limit_usd"] is None
