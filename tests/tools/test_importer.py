"""`liqwatch import`: the real slices of liqwatch/data/real (klines, the USDe Parquet files), small fixtures of the
other Binance layouts, malformed rows named by file, line and column, and the CLI."""

from __future__ import annotations

import gzip
import io
import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from liqwatch.cli.main import app
from liqwatch.events import decode
from liqwatch.tools.importer import (KLINES, ImportFailed, ImportSpec, Mapping, ReferenceSeries, bar_path, import_files,
                                     read_rows)

REAL = Path(__file__).resolve().parents[2] / "liqwatch" / "data" / "real"
BTC_CRASH = REAL / "BTCUSDT-1m-2025-10-10.csv"
BTC_CALM = REAL / "BTCUSDT-1m-2025-10-07.csv"
SOL_CRASH = REAL / "SOLUSDT-1m-2025-10-10.csv"
USDE_CRASH = REAL / "usde_minute_binance-2025-10-10.parquet"
UNISWAP = REAL / "uniswap_usde-2025-10-10.parquet"
T1830 = 1760121000000  # 2025-10-10T18:30:00Z


def run(paths, **kw) -> tuple[list[dict], object]:
    spec = ImportSpec(venue=kw.pop("venue", "binance"), symbol=kw.pop("symbol", "BTCUSDT-PERP"), **kw)
    out = io.BytesIO()
    report = import_files([Path(p) for p in paths], spec, out)
    lines = out.getvalue().splitlines()
    for line in lines:
        decode(line)  # every line passes the door of the workers
    return [json.loads(x) for x in lines], report


def ticks_at(events, ts):
    return [e for e in events if e["type"] == "tick" and e["ts"] == ts]


# -- klines: the real slices ------------------------------------------------------------------------------------

def test_real_klines_crash_window():
    events, report = run([BTC_CRASH])
    f = report.files[0]
    assert (f.layout, f.time_unit, f.interval_ms) == ("klines", "ms", 60_000)
    assert report.files[0].read == 361 and report.rejects == 0
    assert len(events) == 4 * 361 == report.ticks
    ts = [e["ts"] for e in events]
    assert ts == sorted(ts) and ts[0] == T1830 and ts[-1] == T1830 + 360 * 60_000 + 45_000
    assert all(e["bid"] == e["ask"] == e["last"] for e in events)  # bars carry no book
    # the 18:30 bar, an up bar (open 117560.0, high 117623.0, low 117559.7, close 117572.8): open → low → high → close
    assert [(e["ts"] - T1830, e["bid"]) for e in events[:4]] == [
        (0, 117560.0), (15_000, 117559.7), (30_000, 117623.0), (45_000, 117572.8)]
    # the 21:19 bar, a down bar (open 108888.0, high 109568.2, low 102193.6, close 103441.3):
    # open → high → low → close
    t = 1760131140000
    assert [e["bid"] for e in events if t <= e["ts"] < t + 60_000] == [108888.0, 109568.2, 102193.6, 103441.3]
    # the evening's low: 101,516.5 in the 21:20 bar
    low = min(events, key=lambda e: e["bid"])
    assert (low["bid"], low["ts"]) == (101516.5, 1760131200000 + 15_000)


def test_bar_path_keeps_the_close_inside_its_bar():
    assert bar_path(0, 60_000, 10, 12, 9, 11) == [(0, 10), (15_000, 9), (30_000, 12), (45_000, 11)]
    assert bar_path(0, 60_000, 11, 12, 9, 10) == [(0, 11), (15_000, 12), (30_000, 9), (45_000, 10)]
    assert bar_path(0, 60_000, 10, 10, 10, 10)[-1] == (45_000, 10)  # a flat bar is an up bar


def test_calm_day_and_a_time_window():
    events, report = run([BTC_CALM])
    assert report.ticks == 1444 and report.rejects == 0
    start = 1759869000000  # 2025-10-07T20:30Z
    events, report = run([BTC_CALM], start_ms=start, end_ms=start + 120 * 60_000)
    assert report.files[0].read == 361 and report.files[0].outside == 240 and report.ticks == 4 * 121
    assert max(e["bid"] for e in events) - min(e["bid"] for e in events) == pytest.approx(122255.4 - 121710.9)


def _rows(path: Path, n: int) -> list[str]:
    return path.read_text().splitlines()[1:n + 1]


@pytest.mark.parametrize("form", ["microseconds", "gzip", "zip"])
def test_headerless_klines_in_microseconds_gzip_and_zip(tmp_path, form):
    """A spot file of 2025 has no header and microsecond times; the archive ships zips; all read the same."""
    rows = _rows(BTC_CRASH, 10)
    want, _ = run([_write(tmp_path / "ms.csv", "\n".join(rows) + "\n")])
    if form == "microseconds":
        us = []
        for r in rows:
            f = r.split(",")
            f[0], f[6] = f[0] + "000", str(int(f[6]) * 1000 + 999)
            us.append(",".join(f))
        path = _write(tmp_path / "us.csv", "\n".join(us) + "\n")
    elif form == "gzip":
        path = tmp_path / "k.csv.gz"
        path.write_bytes(gzip.compress(("\n".join(rows) + "\n").encode()))
    else:
        path = tmp_path / "BTCUSDT-1m-2025-10-10.zip"
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("BTCUSDT-1m-2025-10-10.csv", "\n".join(rows) + "\n")
    got, report = run([path])
    assert report.files[0].layout == "klines"
    assert report.files[0].time_unit == ("us" if form == "microseconds" else "ms")
    assert got == want and len(got) == 40


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# -- bookTicker and aggTrades fixtures --------------------------------------------------------------------------
# No recorded rows of these layouts were found in public repositories (only made-up test rows): these are written
# by hand in the archive's layouts, with prices inside the real BTCUSDT perpetual 21:20 bar (low 101,516.5,
# high 106,458.8). They are realistic, not recorded.

BOOK_TICKER = """update_id,best_bid_price,best_bid_qty,best_ask_price,best_ask_qty,transaction_time,event_time
8868470915632,103441.2,0.412,103441.3,1.208,1760131200003,1760131200007
8868470915788,103120.0,0.050,103125.5,0.318,1760131200154,1760131200160
8868470916012,102010.4,2.730,102011.0,0.009,1760131201870,1760131201875
8868470916400,101516.5,4.102,101530.0,0.100,1760131215002,1760131215004
8868470917555,104311.1,0.733,104311.2,0.125,1760131259998,1760131260001
"""

AGG_TRADES_FUTURES = """agg_trade_id,price,quantity,first_trade_id,last_trade_id,transact_time,is_buyer_maker
2913005101,103441.3,0.125,6790312001,6790312004,1760131200011,true
2913005102,103410.0,1.002,6790312005,6790312019,1760131200012,true
2913005103,101516.5,3.870,6790312020,6790312101,1760131215004,true
2913005104,104311.2,0.015,6790312102,6790312102,1760131259990,false
"""

# spot: no header, microseconds (from 2025), an 8th column
AGG_TRADES_SPOT = """3711238450,103455.12000000,0.00410000,5301122340,5301122342,1760131200011532,True,True
3711238451,103450.00000000,0.25000000,5301122343,5301122350,1760131200019887,True,True
3711238452,101600.01000000,1.10000000,5301122351,5301122399,1760131215000112,True,True
"""


def test_book_ticker_gives_bid_and_ask_at_transaction_time(tmp_path):
    events, report = run([_write(tmp_path / "BTCUSDT-bookTicker-2025-10-10.csv", BOOK_TICKER)])
    assert report.files[0].layout == "bookTicker" and report.files[0].kind == "book"
    assert len(events) == 5
    assert events[0] == {"type": "tick", "venue": "binance", "symbol": "BTCUSDT-PERP", "ts": 1760131200003,
                         "bid": 103441.2, "ask": 103441.3}
    assert all("last" not in e and e["bid"] <= e["ask"] for e in events)


def test_a_crossed_book_row_is_a_bad_row(tmp_path):
    text = BOOK_TICKER.replace("101516.5,4.102,101530.0", "101540.0,4.102,101530.0")
    path = _write(tmp_path / "bt.csv", text)
    with pytest.raises(ImportFailed, match=r"bt.csv line 5, column best_bid_price: the tick is refused "
                                           r"\(crossed_book\)"):
        run([path])


@pytest.mark.parametrize("text, unit, n", [(AGG_TRADES_FUTURES, "ms", 4), (AGG_TRADES_SPOT, "us", 3)])
def test_agg_trades_futures_and_spot(tmp_path, text, unit, n):
    events, report = run([_write(tmp_path / "aggTrades.csv", text)])
    assert (report.files[0].layout, report.files[0].time_unit, report.files[0].kind) == ("aggTrades", unit, "trades")
    assert len(events) == n
    assert all(e["bid"] == e["ask"] == e["last"] for e in events)
    assert events[2]["ts"] == 1760131215004 if unit == "ms" else 1760131215000


# -- generic Parquet: the USDe slices ----------------------------------------------------------------------------

def test_generic_parquet_minute_bars_of_usde():
    events, report = run([USDE_CRASH], symbol="USDe/USDT")
    f = report.files[0]
    assert (f.layout, f.time_unit, f.kind, f.interval_ms, f.read) == ("generic", "timestamp", "bars", 60_000, 361)
    assert len(events) == 1444
    # the 21:54 bar, a down bar: open 0.8873, high 0.9154, low 0.65, close 0.8304
    t = 1760133240000
    assert [e["bid"] for e in events if t <= e["ts"] < t + 60_000] == [0.8873, 0.9154, 0.65, 0.8304]
    assert min(e["bid"] for e in events) == 0.65


def test_generic_parquet_of_the_uniswap_pool_by_price_column():
    events, report = run([UNISWAP], venue="uniswap", symbol="USDe/USDT",
                         mapping=Mapping(ts="timestamp", price="token1Price"))
    assert (report.files[0].time_unit, report.files[0].kind, len(events)) == ("s", "trades", 1788)
    assert events[0]["ts"] == 1760121011000
    window = [e["bid"] for e in events if 1760128200000 <= e["ts"] <= 1760135400000]
    assert 0.9995 < min(window) < max(window) < 1.0


def test_generic_csv_with_iso_times_with_and_without_a_header(tmp_path):
    body = "2025-10-10T21:20:00Z,1.0,1.1\n2025-10-10 21:20:01,2.0,2.5\n"
    want = [(1760131200000, 1.0, 1.1), (1760131201000, 2.0, 2.5)]
    events, _ = run([_write(tmp_path / "g.csv", "when,b,a\n" + body)],
                    mapping=Mapping(ts="when", time_unit="iso", bid="b", ask="a"))
    assert [(e["ts"], e["bid"], e["ask"]) for e in events] == want
    # without a header the columns are numbered from 1
    events, _ = run([_write(tmp_path / "h.csv", body)], layout="generic",
                    mapping=Mapping(ts="1", time_unit="iso", bid="2", ask="3"))
    assert [(e["ts"], e["bid"], e["ask"]) for e in events] == want


# -- references and merges ----------------------------------------------------------------------------------------

def test_a_constant_reference_series_comes_before_the_ticks_of_its_time():
    events, report = run([USDE_CRASH], symbol="USDe/USDT", references=(ReferenceSeries("USDe", "USD", 1.0),),
                         reference_every_ms=300_000)
    refs = [e for e in events if e["type"] == "reference"]
    assert len(refs) == report.references == 73  # 18:30, 18:35, … 00:30
    assert all(r == {"type": "reference", "asset": "USDe", "ts": r["ts"], "in": "USD", "rate": 1.0} for r in refs)
    first = events.index(refs[1])
    assert events[first + 1]["type"] == "tick" and events[first + 1]["ts"] == refs[1]["ts"]


def test_merge_keeps_event_time_order(tmp_path):
    out = io.BytesIO()
    import_files([BTC_CRASH], ImportSpec(venue="binance", symbol="BTCUSDT-PERP"), out)
    btc = _write(tmp_path / "btc.jsonl", out.getvalue().decode())
    out2 = io.BytesIO()
    report = import_files([SOL_CRASH], ImportSpec(venue="binance", symbol="SOLUSDT-PERP"), out2, merge=(btc,))
    events = [json.loads(x) for x in out2.getvalue().splitlines()]
    assert report.merged == 1444 and report.ticks == 1444 and len(events) == 2888
    assert [e["ts"] for e in events] == sorted(e["ts"] for e in events)
    assert {e["symbol"] for e in events[:2]} == {"BTCUSDT-PERP", "SOLUSDT-PERP"}


# -- bad rows -----------------------------------------------------------------------------------------------------

def _damaged(tmp_path: Path) -> Path:
    """The real crash slice with three bad rows: line 50 lost its last column, line 100's high is not a number,
    line 200's open time is in seconds."""
    lines = BTC_CRASH.read_text().splitlines()
    lines[49] = lines[49].rsplit(",", 1)[0]
    f = lines[99].split(",")
    f[2] = "abc"
    lines[99] = ",".join(f)
    f = lines[199].split(",")
    f[0] = f[0][:-3]
    lines[199] = ",".join(f)
    return _write(tmp_path / "BTCUSDT-1m.csv", "\n".join(lines) + "\n")


def test_a_bad_row_fails_the_import_naming_file_line_and_column(tmp_path):
    path = _damaged(tmp_path)
    out = io.BytesIO()
    with pytest.raises(ImportFailed) as e:
        import_files([path], ImportSpec(venue="binance", symbol="BTCUSDT-PERP"), out)
    assert str(e.value).startswith(f"{path} line 50, column ignore: 11 fields, expected 12 (a missing or extra "
                                   f"column) (3 bad rows in all;")
    assert out.getvalue() == b""  # nothing written


def test_skip_bad_reports_every_bad_row_and_drops_nothing_silently(tmp_path):
    path = _damaged(tmp_path)
    rejects = []
    out = io.BytesIO()
    report = import_files([path], ImportSpec(venue="binance", symbol="BTCUSDT-PERP", skip_bad=True), out,
                          rejects_out=rejects.append)
    assert [r.message() for r in rejects] == [
        f"{path} line 50, column ignore: 11 fields, expected 12 (a missing or extra column)",
        f"{path} line 100, column high: 'abc' is not a number",
        f"{path} line 200, column open_time: '1760132880' is not a time in ms (this file's times are in ms)",
    ]
    f = report.files[0]
    assert f.read == 361 == f.used + f.rejected and f.rejected == 3
    assert report.ticks == 4 * f.used == len(out.getvalue().splitlines())


@pytest.mark.parametrize("text, message", [
    ("", "empty file"),
    (",".join(KLINES) + "\n", "no data rows (only a header)"),
    ("1,2,3\n", "cannot tell the layout of a headerless file with 3 columns"),
])
def test_an_empty_or_unreadable_file_fails_with_one_line(tmp_path, text, message):
    path = _write(tmp_path / "x.csv", text)
    with pytest.raises(ImportFailed, match=re.escape(message)) as e:
        run([path])
    assert "\n" not in str(e.value)


def test_a_binary_file_fails_with_one_line(tmp_path):
    path = tmp_path / "x.parquet"
    path.write_bytes(b"PAR1" + bytes(range(256)) * 4)
    with pytest.raises(ImportFailed, match=r"x.parquet: not a Parquet file liqwatch can read") as e:
        run([path])
    assert "\n" not in str(e.value)


def test_empty_price_and_high_below_close_are_bad_rows(tmp_path):
    rows = _rows(BTC_CRASH, 3)
    f = rows[1].split(",")
    f[1] = ""
    rows[1] = ",".join(f)
    f = rows[2].split(",")
    f[2] = "117000.0"  # high below the bar's open and close
    rows[2] = ",".join(f)
    rejects = []
    import_files([_write(tmp_path / "k.csv", "\n".join(rows) + "\n")],
                 ImportSpec(venue="binance", symbol="BTCUSDT-PERP", skip_bad=True), io.BytesIO(),
                 rejects_out=rejects.append)
    assert [(r.number, r.column, r.reason) for r in rejects] == [
        (2, "open", "is empty"), (3, "high", "high 117000 is below close 117587")]


# -- the CLI ------------------------------------------------------------------------------------------------------

def test_cli_import_with_skip_bad_writes_events_and_rejects(tmp_path):
    path = _damaged(tmp_path)
    out = tmp_path / "ev.jsonl"
    r = CliRunner().invoke(app, ["import", str(path), "--venue", "binance", "--symbol", "BTCUSDT-PERP",
                                 "--skip-bad", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert len(out.read_text().splitlines()) == 4 * 358
    rejects = [json.loads(x) for x in Path(f"{out}.rejects.jsonl").read_text().splitlines()]
    assert [(x["line"], x["column"]) for x in rejects] == [(50, "ignore"), (100, "high"), (200, "open_time")]
    assert "rejected 3 bad rows" in r.stderr and "→ 1,432 ticks; 3 rejected" in r.stderr


def test_cli_import_fails_on_a_bad_row_and_writes_nothing(tmp_path):
    path = _damaged(tmp_path)
    out = tmp_path / "ev.jsonl"
    r = CliRunner().invoke(app, ["import", str(path), "--venue", "binance", "--symbol", "BTCUSDT-PERP",
                                 "--out", str(out)])
    assert r.exit_code == 1
    assert f"error: {path} line 50, column ignore" in r.stderr
    assert not out.exists() and not Path(f"{out}.partial").exists()


def test_cli_import_as_a_process_to_stdout_with_references():
    p = subprocess.run([sys.executable, "-m", "liqwatch", "import", str(USDE_CRASH), "--venue", "binance",
                        "--symbol", "USDe/USDT", "--reference", "USDe:USD:1.0", "--reference-every", "1m",
                        "--from", "2025-10-10T21:00:00Z", "--to", "2025-10-10T21:59:00Z"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    events = [json.loads(x) for x in p.stdout.splitlines()]
    assert sum(e["type"] == "tick" for e in events) == 240 and sum(e["type"] == "reference" for e in events) == 60
    assert "usde_minute_binance-2025-10-10.parquet: 361 rows" in p.stderr and "301 outside the window" in p.stderr


def test_cli_import_help_teaches_with_examples():
    r = CliRunner().invoke(app, ["import", "--help"])
    assert r.exit_code == 0
    text = " ".join(r.output.split())
    assert "open → low → high → close" in text and "--skip-bad" in text
    assert "liqwatch import BTCUSDT-1m-2025-10.csv --venue binance --symbol BTCUSDT-PERP --out btc.jsonl" in text


def test_read_rows_reports_the_klines_volume_for_calibrate():
    rows = read_rows(BTC_CRASH)
    assert rows.kind == "bars" and len(rows) == 361
    assert rows.values["quote_volume"][0] == 11328823.5962


def test_cli_mapping_file_and_rejects_on_stderr(tmp_path):
    mapping = _write(tmp_path / "uniswap.yaml", "ts: timestamp\ntime_unit: s\nprice: token1Price\n")
    r = CliRunner().invoke(app, ["import", str(UNISWAP), "--venue", "uniswap", "--symbol", "USDe/USDT",
                                 "--mapping", str(mapping), "--to", "2025-10-10T18:31:00Z"])
    assert r.exit_code == 0, r.output
    assert [json.loads(x)["ts"] for x in r.stdout.splitlines()] == [1760121011000, 1760121023000, 1760121035000,
                                                                    1760121047000, 1760121059000]
    r = CliRunner().invoke(app, ["import", str(_damaged(tmp_path)), "--venue", "binance", "--symbol", "X",
                                 "--skip-bad"])
    assert r.exit_code == 0 and len(r.stdout.splitlines()) == 4 * 358
    assert r.stderr.count("rejected: ") == 3 and "line 100, column high: 'abc' is not a number" in r.stderr
