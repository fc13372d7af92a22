"""`liqwatch calibrate`: the formulas on three hand-checked bars, the YAML a config accepts, the real slices."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from liqwatch.cli.main import app
from liqwatch.config import LinearImpact, SqrtImpact
from liqwatch.tools.calibrate import calibrate, impact_yaml
from liqwatch.tools.importer import ImportFailed, Mapping, read_rows

REAL = Path(__file__).resolve().parents[2] / "liqwatch" / "data" / "real"
HEADER = "open_time,open,high,low,close,volume,close_time,quote_volume,count,taker_buy_volume," \
         "taker_buy_quote_volume,ignore\n"


def three_bars(tmp_path: Path) -> Path:
    """Closes 100, 110, 99; $1M traded in each minute."""
    t = 1760131200000
    rows = [(100, 101, 99, 100), (100, 111, 100, 110), (110, 110, 98, 99)]
    text = HEADER + "".join(f"{t + i * 60_000},{o},{h},{lo},{c},10000,{t + i * 60_000 + 59_999},1000000,10,0,0,0\n"
                            for i, (o, h, lo, c) in enumerate(rows))
    path = tmp_path / "X-1m.csv"
    path.write_text(text)
    return path


def test_three_bars_by_hand(tmp_path):
    fit = calibrate("X", read_rows(three_bars(tmp_path)), reference_usd=1_000_000)
    # $3M in 3 minutes → $1.44B a day
    assert (fit.bars, fit.interval_ms, fit.window_ms, fit.quote_volume_usd) == (3, 60_000, 180_000, 3e6)
    assert fit.daily_volume_usd == pytest.approx(1.44e9)
    # log returns ln(110/100) = 0.0953102, ln(99/110) = −0.1053605: sample std 0.1418956; × sqrt(1440 minutes)
    assert fit.bar_vol == pytest.approx(0.14189560954670769, rel=1e-12)
    assert fit.daily_vol == pytest.approx(5.3845597937463445, rel=1e-12)
    # selling one minute's volume ($1M) moves the price by one minute's σ: y × daily_vol × sqrt(1M / 1.44B)
    assert fit.move_at_reference == pytest.approx(0.14189560954670769, rel=1e-12)
    # the linear model with that move at $1M: 0.01 × 1M / depth = 0.1418956 → depth = 70,474 per %
    assert fit.depth_usd_per_pct == pytest.approx(70474.34400504341, rel=1e-9)
    assert calibrate("X", read_rows(three_bars(tmp_path)), y=0.5).daily_vol == fit.daily_vol  # y scales the move
    assert calibrate("X", read_rows(three_bars(tmp_path)), y=0.5, reference_usd=1e6).move_at_reference == \
        pytest.approx(fit.move_at_reference / 2)


def test_the_yaml_block_is_a_valid_impact_of_a_config(tmp_path):
    fit = calibrate("X", read_rows(three_bars(tmp_path)))
    doc = yaml.safe_load(impact_yaml([fit]))
    sqrt = SqrtImpact(**doc["assets"]["X"]["impact"])
    assert sqrt.daily_volume_usd == pytest.approx(fit.daily_volume_usd, rel=1e-3)
    assert sqrt.daily_vol == pytest.approx(fit.daily_vol, rel=1e-3) and sqrt.y == 1.0
    linear_line = next(x for x in impact_yaml([fit]).splitlines() if "model: linear" in x)
    linear = yaml.safe_load(linear_line.split("as linear: ", 1)[1].replace("impact: ", "", 1))
    assert LinearImpact(**linear).depth_usd_per_pct == pytest.approx(fit.depth_usd_per_pct, rel=1e-3)


def test_without_a_quote_volume_the_base_volume_times_the_typical_price(tmp_path):
    path = tmp_path / "bars.csv"
    path.write_text("time,open,high,low,close,volume\n"
                    "2025-10-10T21:00:00Z,1.0,1.0,0.9,0.9,100\n"
                    "2025-10-10T21:01:00Z,0.9,1.2,0.9,1.2,200\n"
                    "2025-10-10T21:02:00Z,1.2,1.2,0.6,0.6,300\n")
    fit = calibrate("U", read_rows(path, mapping=Mapping(time_unit="iso")))
    assert fit.volume_from == "volume × (high + low + close) / 3"
    assert fit.quote_volume_usd == pytest.approx(100 * 2.8 / 3 + 200 * 3.3 / 3 + 300 * 2.4 / 3)
    assert fit.interval_ms == 60_000


def test_calibrate_needs_bars(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("ts,price\n1760131200000,1\n1760131201000,2\n1760131202000,3\n")
    with pytest.raises(ImportFailed, match="calibrate reads bars"):
        calibrate("T", read_rows(path))


def test_real_windows_crash_against_calm():
    """The crash evening traded ~9× the calm one's BTC volume at ~10× its volatility."""
    crash = calibrate("BTC", read_rows(REAL / "BTCUSDT-1m-2025-10-10.csv"))
    calm = calibrate("BTC", read_rows(REAL / "BTCUSDT-1m-2025-10-07.csv"))
    assert crash.bars == calm.bars == 361
    assert crash.daily_volume_usd > 5 * calm.daily_volume_usd
    assert crash.daily_vol > 5 * calm.daily_vol
    assert calm.daily_volume_usd == pytest.approx(1.312e10, rel=1e-3)
    assert calm.daily_vol == pytest.approx(0.01656, rel=1e-3)
    usde = calibrate("USDe", read_rows(REAL / "usde_minute_binance-2025-10-07.parquet"))
    assert usde.volume_from.startswith("volume ×") and usde.daily_vol < 0.01


def test_cli_calibrate_yaml_and_json():
    r = CliRunner().invoke(app, ["calibrate", f"BTC={REAL / 'BTCUSDT-1m-2025-10-07.csv'}",
                                 f"USDe={REAL / 'usde_minute_binance-2025-10-10.parquet'}",
                                 "--from", "2025-10-10T20:30:00Z", "--to", "2025-10-10T22:30:00Z"])
    assert r.exit_code == 1 and "BTCUSDT-1m-2025-10-07.csv: 0 bars in the window" in r.stderr
    r = CliRunner().invoke(app, ["calibrate", f"BTC={REAL / 'BTCUSDT-1m-2025-10-07.csv'}",
                                 f"SOL={REAL / 'SOLUSDT-1m-2025-10-07.csv'}"])
    assert r.exit_code == 0, r.output
    doc = yaml.safe_load(r.stdout)
    assert set(doc["assets"]) == {"BTC", "SOL"}
    assert all(SqrtImpact(**a["impact"]).model == "sqrt" for a in doc["assets"].values())
    r = CliRunner().invoke(app, ["calibrate", f"USDe={REAL / 'usde_minute_binance-2025-10-10.parquet'}",
                                 "--from", "2025-10-10T20:30:00Z", "--to", "2025-10-10T22:30:00Z",
                                 "--reference-size", "1M", "--json"])
    assert r.exit_code == 0, r.output
    fit = json.loads(r.stdout)["USDe"]
    assert fit["bars"] == 121 and fit["reference_usd"] == 1e6
    assert fit["depth_usd_per_pct"] == pytest.approx(1e6 / (100 * fit["move_at_reference"]))
    assert math.isclose(fit["daily_vol"], fit["bar_vol"] * math.sqrt(1440), rel_tol=1e-12)


def test_cli_calibrate_mistakes():
    r = CliRunner().invoke(app, ["calibrate", "BTC"])
    assert r.exit_code == 2 and "expected ASSET=FILE" in r.stderr
    r = CliRunner().invoke(app, ["calibrate", "BTC=/nonexistent.csv"])
    assert r.exit_code == 2 and "does not exist" in r.stderr
