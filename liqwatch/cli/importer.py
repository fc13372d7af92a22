"""`liqwatch import` (public exchange data → liqwatch events) and `liqwatch calibrate` (sqrt impact from bars).

    liqwatch import BTCUSDT-1m-2025-10-10.csv --venue binance --symbol BTCUSDT-PERP --out btc.jsonl
    liqwatch calibrate BTC=BTCUSDT-1m-2025-10-07.csv SOL=SOLUSDT-1m-2025-10-07.csv

The main CLI mounts both with `register(app)`. Bad arguments exit 2 naming the option; a file liqwatch cannot use
(empty, unreadable, a bad row without --skip-bad) exits 1 with one line naming the file, line and column.
"""

from __future__ import annotations

import os
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated, NoReturn, Optional

import typer
import yaml
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

from liqwatch.cli.replay import parse_duration, parse_time
from liqwatch.cli.transport import out_file
from liqwatch.events import json_line
from liqwatch.tools.calibrate import calibrate, impact_json, impact_yaml
from liqwatch.tools.importer import (LAYOUTS, TIME_UNITS, ImportFailed, ImportSpec, Mapping, ReferenceSeries, Reject,
                                     import_files, read_rows)

err = Console(stderr=True, soft_wrap=True)


def _fail(message: str, code: int = 2) -> NoReturn:
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    raise typer.Exit(code)


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn(),
                    console=err, transient=True, disable=not err.is_terminal)


def _layout(value: str) -> str:
    if value not in LAYOUTS:
        raise typer.BadParameter(f"'{value}': one of {', '.join(LAYOUTS)}")
    return value


def _unit(value: Optional[str]) -> Optional[str]:
    if value is not None and value not in TIME_UNITS:
        raise typer.BadParameter(f"'{value}': one of {', '.join(TIME_UNITS)}")
    return value


_MAPPING_KEYS = ("ts", "time_unit", "bid", "ask", "price", "open", "high", "low", "close", "interval", "volume",
                 "quote_volume")


def _mapping(path: Optional[Path], **given) -> Mapping:
    """The column mapping: a YAML file's keys, then the options given on the command line (they win)."""
    values: dict = {}
    if path is not None:
        try:
            doc = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            _fail(f"--mapping {path}: {str(e).splitlines()[0]}")
        if not isinstance(doc, dict):
            _fail(f"--mapping {path}: expected a mapping of keys ({', '.join(_MAPPING_KEYS)})")
        unknown = sorted(set(doc) - set(_MAPPING_KEYS))
        if unknown:
            _fail(f"--mapping {path}: unknown key {unknown[0]!r} (known: {', '.join(_MAPPING_KEYS)})")
        values = {k: (None if v is None else str(v)) for k, v in doc.items()}
    values.update({k: v for k, v in given.items() if v is not None})
    unit = values.pop("time_unit", None) or "auto"
    if unit not in TIME_UNITS:
        _fail(f"time unit '{unit}': one of {', '.join(TIME_UNITS)}")
    interval = values.pop("interval", None)
    return Mapping(time_unit=unit, interval_ms=parse_duration(interval, "--interval") if interval else None,
                   **values)


def _reference(text: str) -> ReferenceSeries:
    asset, _, rest = text.partition(":")
    into, _, rate = rest.partition(":")
    try:
        value = float(rate)
    except ValueError:
        value = float("nan")
    if not asset or not into or not (value > 0 and value < float("inf")):
        _fail(f"--reference '{text}': expected ASSET:IN:RATE with a rate > 0 (e.g. USDe:USD:1.0)")
    return ReferenceSeries(asset, into, value)


def _amount(text: str, option: str) -> float:
    scale = {"k": 1e3, "m": 1e6, "b": 1e9}.get(text[-1:].lower(), 1.0)
    try:
        return float(text[:-1] if scale != 1.0 else text) * scale
    except ValueError:
        _fail(f"{option}: '{text}' is not an amount (e.g. 10000000 or 10M)")


FilesArg = Annotated[list[Path], typer.Argument(help="Files to import (CSV, .csv.gz, a .zip of one CSV, Parquet), "
                                                     "all of one market.", show_default=False, exists=True,
                                                dir_okay=False, readable=True, metavar="FILE...")]
LayoutOpt = Annotated[str, typer.Option("--layout", callback=_layout, help="klines, bookTicker, aggTrades (the "
                                        "Binance archive), generic (a column mapping), or auto (told by the "
                                        "header, else by the column count).")]
TsOpt = Annotated[Optional[str], typer.Option("--ts-column", help="The time column (generic; default: a timestamp "
                                              "column, or one named ts/time/timestamp/open_time).")]
UnitOpt = Annotated[Optional[str], typer.Option("--time-unit", callback=_unit, help="auto (by magnitude: "
                                                "s < 1e11 ≤ ms < 1e14 ≤ us < 1e17 ≤ ns), ms, us, ns, s, or iso "
                                                "(ISO-8601 text, UTC unless it says otherwise).",
                                                show_default="auto")]
MappingOpt = Annotated[Optional[Path], typer.Option("--mapping", exists=True, dir_okay=False, readable=True,
                                                    help="A YAML file of the column mapping (keys: "
                                                         + ", ".join(_MAPPING_KEYS) + "); options win over it.")]
IntervalOpt = Annotated[Optional[str], typer.Option("--interval", help="Bar interval of generic bars (1m, 5m, 1h); "
                                                    "default: the median step between bar times.")]
FromOpt = Annotated[Optional[str], typer.Option("--from", help="Keep rows from this time (a bar's open; "
                                                "ISO-8601 UTC or epoch ms).")]
ToOpt = Annotated[Optional[str], typer.Option("--to", help="Keep rows up to this time (inclusive).")]


def import_command(
    files: FilesArg,
    venue: Annotated[str, typer.Option(help="Venue of the ticks (binance, okx, uniswap…), as the config's sources "
                                       "name it.", show_default=False)],
    symbol: Annotated[str, typer.Option(help="Symbol of the ticks: BASE/QUOTE for spot (USDe/USDT), the instrument "
                                        "for a derivative (BTCUSDT-PERP).", show_default=False)],
    layout: LayoutOpt = "auto",
    ts_column: TsOpt = None,
    time_unit: UnitOpt = None,
    bid_column: Annotated[Optional[str], typer.Option("--bid-column", help="Generic book: the bid column.")] = None,
    ask_column: Annotated[Optional[str], typer.Option("--ask-column", help="Generic book: the ask column.")] = None,
    price_column: Annotated[Optional[str], typer.Option("--price-column", help="Generic trades or prices: "
                                                        "bid = ask = last = this column.")] = None,
    open_column: Annotated[Optional[str], typer.Option("--open-column", help="Generic bars: open.")] = None,
    high_column: Annotated[Optional[str], typer.Option("--high-column", help="Generic bars: high.")] = None,
    low_column: Annotated[Optional[str], typer.Option("--low-column", help="Generic bars: low.")] = None,
    close_column: Annotated[Optional[str], typer.Option("--close-column", help="Generic bars: close.")] = None,
    interval: IntervalOpt = None,
    mapping: MappingOpt = None,
    t_from: FromOpt = None,
    t_to: ToOpt = None,
    reference: Annotated[Optional[list[str]], typer.Option(
        "--reference", help="Add a constant reference series ASSET:IN:RATE (repeatable), e.g. USDe:USD:1.0: a "
        "statement, not a record.", show_default=False)] = None,
    reference_every: Annotated[str, typer.Option(
        "--reference-every", help="Interval of the reference series; keep it under the config's max_age_ms of the "
        "redemption source.")] = "30s",
    merge: Annotated[Optional[list[Path]], typer.Option(
        "--merge", exists=True, dir_okay=False, readable=True, show_default=False,
        help="An event file (JSONL in event-time order, e.g. an earlier import) to merge into the output by time "
             "(repeatable).")] = None,
    skip_bad: Annotated[bool, typer.Option("--skip-bad", help="Write bad rows to the rejects file and go on "
                                           "(default: fail on the first, writing nothing).")] = False,
    rejects: Annotated[Optional[Path], typer.Option(
        "--rejects", callback=out_file, show_default=False,
        help="With --skip-bad: JSONL of the bad rows (file, line, column, reason, text). Default: OUT.rejects.jsonl "
             "with --out, else each on stderr.")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", callback=out_file, show_default=False,
                                                help="Write the events here (default: stdout).")] = None,
) -> None:
    """Turn public exchange data into liqwatch events (JSONL, one a line, in event-time order).

    Reads the Binance public data archive (`klines` of any interval, spot and futures; `bookTicker`; `aggTrades`;
    with or without a header row, ms or µs times) and any CSV or Parquet file through a column mapping.

    * **Bars** become four ticks each, at 0, ¼, ½ and ¾ of the bar: the open, then the extreme against the bar's
      direction first (up bar: open → low → high → close; down bar: open → high → low → close), then the close.
    * **Bars and trades** have no book: bid = ask = price, and `last` = price.
    * **Bad rows** (not a number, an empty or missing column, a bad time, high below open…) are named by file, line
      and column; the import fails on the first unless `--skip-bad`, which writes them to a rejects file.

    Examples:

    `liqwatch import BTCUSDT-1m-2025-10.csv --venue binance --symbol BTCUSDT-PERP --out btc.jsonl`

    `liqwatch import BTCUSDT-bookTicker-2025-10-10.zip --venue binance --symbol BTCUSDT-PERP
    --from 2025-10-10T20:00:00Z --to 2025-10-10T23:00:00Z`

    `liqwatch import usde_minute_binance.parquet --venue binance --symbol USDe/USDT
    --reference USDe:USD:1.0 --merge btc.jsonl --out real.jsonl`

    `liqwatch import uniswap_usde.parquet --venue uniswap --symbol USDe/USDT
    --ts-column timestamp --price-column token1Price`
    """
    spec = ImportSpec(
        venue=venue, symbol=symbol, layout=layout,
        mapping=_mapping(mapping, ts=ts_column, time_unit=time_unit, bid=bid_column, ask=ask_column,
                         price=price_column, open=open_column, high=high_column, low=low_column, close=close_column,
                         interval=interval),
        references=tuple(_reference(r) for r in reference or ()),
        reference_every_ms=parse_duration(reference_every, "--reference-every"),
        start_ms=parse_time(t_from, "--from") if t_from else None,
        end_ms=parse_time(t_to, "--to") if t_to else None,
        skip_bad=skip_bad,
    )
    if spec.reference_every_ms <= 0:
        _fail("--reference-every: must be positive (e.g. 30s)")
    rejects_path = rejects or (Path(f"{out}.rejects.jsonl") if out is not None and skip_bad else None)
    partial = Path(f"{out}.partial") if out is not None else None
    written: list[Reject] = []

    with _progress() as bar:
        tasks: dict[str, int] = {}

        def tick(name: str, done: int, total: int) -> None:
            if name not in tasks:
                tasks[name] = bar.add_task(Path(name).name, total=total)
            bar.update(tasks[name], completed=done)

        try:
            with (open(partial, "wb") if partial else nullcontext(sys.stdout.buffer)) as sink:
                report = import_files(files, spec, sink, tuple(merge or ()), written.append, tick)
        except ImportFailed as e:
            if partial is not None:
                partial.unlink(missing_ok=True)
            _fail(str(e), 1)
        except BaseException:
            if partial is not None:
                partial.unlink(missing_ok=True)
            raise
    if partial is not None:
        os.replace(partial, out)
    if written:
        if rejects_path is not None:
            with open(rejects_path, "w") as f:
                for r in written:
                    f.write(json_line(r.to_dict()) + "\n")
            where = f"written to {rejects_path}"
        else:
            for r in written:
                err.print(f"rejected: {escape(r.message())}", highlight=False)
            where = "each printed above"
        err.print(f"rejected {len(written):,} bad rows ({where})", highlight=False)
    err.print(escape(report.summary()) + (f" → {out}" if out else ""), highlight=False)


def calibrate_command(
    assets: Annotated[list[str], typer.Argument(help="ASSET=FILE of bars (klines, or a generic file with "
                                                     "open/high/low/close and a volume), repeatable.",
                                                show_default=False, metavar="ASSET=FILE...")],
    layout: LayoutOpt = "auto",
    ts_column: TsOpt = None,
    time_unit: UnitOpt = None,
    volume_column: Annotated[Optional[str], typer.Option("--volume-column", help="Generic bars: the base volume "
                                                         "(× typical price when there is no quote volume).")] = None,
    quote_volume_column: Annotated[Optional[str], typer.Option("--quote-volume-column", help="Generic bars: the "
                                                               "quote (USD) volume.")] = None,
    interval: IntervalOpt = None,
    mapping: MappingOpt = None,
    t_from: FromOpt = None,
    t_to: ToOpt = None,
    y: Annotated[float, typer.Option("--y", help="The square-root law's constant.")] = 1.0,
    reference_size: Annotated[str, typer.Option("--reference-size", help="USD sold at which the equivalent linear "
                                                "model moves the price as much as the sqrt model.")] = "10M",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (every number of the fit) instead of YAML.")]
    = False,
) -> None:
    """Square-root impact parameters per asset from recorded bars (SPEC §5), as a YAML `impact:` block to paste
    into a config (or `--json`).

    * `daily_volume_usd` = the window's quote volume scaled to a day (without a quote volume: volume × (high + low +
      close) / 3).
    * `daily_vol` = the standard deviation of the bars' log returns × sqrt(bars per day).
    * the equivalent linear `depth_usd_per_pct` moves the price as much as the sqrt model at `--reference-size`.

    Volume on the day of a crash overstates depth (forced selling is counted as liquidity); compare a calm window.

    Examples:

    `liqwatch calibrate BTC=BTCUSDT-1m-2025-10-07.csv SOL=SOLUSDT-1m-2025-10-07.csv`

    `liqwatch calibrate USDe=usde_minute_binance.parquet --from 2025-10-10T20:30:00Z
    --to 2025-10-10T22:30:00Z --json`
    """
    size = _amount(reference_size, "--reference-size")
    spec_mapping = _mapping(mapping, ts=ts_column, time_unit=time_unit, interval=interval, volume=volume_column,
                            quote_volume=quote_volume_column)
    start = parse_time(t_from, "--from") if t_from else None
    end = parse_time(t_to, "--to") if t_to else None
    fits = []
    for item in assets:
        asset, sep, file = item.partition("=")
        if not sep or not asset or not file:
            _fail(f"'{item}': expected ASSET=FILE (e.g. BTC=BTCUSDT-1m-2025-10-07.csv)")
        path = Path(file)
        if not path.is_file():
            _fail(f"'{item}': file '{file}' does not exist")
        try:
            rows = read_rows(path, layout, spec_mapping, start, end)
            if rows.rejects:
                r = rows.rejects[0]
                _fail(f"{r.message()} ({len(rows.rejects):,} bad rows; `liqwatch import --skip-bad` lists them)", 1)
            fits.append(calibrate(asset, rows, y=y, reference_usd=size))
        except ImportFailed as e:
            _fail(str(e), 1)
    sys.stdout.write((impact_json(fits) + "\n") if as_json else impact_yaml(fits))


def register(app: typer.Typer) -> None:
    app.command("import")(import_command)
    app.command("calibrate")(calibrate_command)

